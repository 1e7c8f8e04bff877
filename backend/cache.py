"""A thread-safe LRU cache bounded in bytes, that computes each missing value once.

Bases and trajectories are tensors of very different sizes (a 64 px model's basis is a few
hundred kB, an SD basis with k = 50 is tens of MB), so the bound is on bytes, not entries.
Two requests for the same missing key (two browser tabs pressing "Find directions") wait for
one computation instead of running it twice.

Every entry stored is also handed to :func:`record_computed`'s list when one is open in the
thread: on a ZeroGPU Space each GPU call runs in a throw-away forked worker, which returns the
entries it computed so that the serving process can keep them (``ui.device``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Hashable, Iterator

import torch

from .cancel import Cancelled

#: The list :func:`record_computed` is filling in this thread, if any.
_RECORDER: ContextVar[list[tuple[Hashable, Any]] | None] = ContextVar("eigenface_recorder", default=None)


@contextmanager
def record_computed() -> Iterator[list[tuple[Hashable, Any]]]:
    """Collect the (key, value) pairs this thread stores in any :class:`ByteLRU` inside the block.

    Per thread (a context variable), so other requests served meanwhile are not mixed in.
    """
    entries: list[tuple[Hashable, Any]] = []
    token = _RECORDER.set(entries)
    try:
        yield entries
    finally:
        _RECORDER.reset(token)


def leaves(value: Any) -> Iterator[Any]:
    """The leaves of a value: tensors and scalars, found through dataclasses, lists, tuples and dicts."""
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from leaves(getattr(value, f.name))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    else:
        yield value


def nbytes(value: Any) -> int:
    """Approximate memory held by a value: tensors exactly, 64 bytes for any other leaf."""
    return sum(leaf.numel() * leaf.element_size() if isinstance(leaf, torch.Tensor) else 64 for leaf in leaves(value))


class ByteLRU:
    """LRU mapping whose values together stay within ``max_bytes`` (the newest entry always stays)."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        if (entries := _RECORDER.get()) is not None:
            entries.append((key, value))
        size = nbytes(value)
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, evicted) = self._items.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The cached value and True, or compute it (once across threads) and False.

        A failed computation is not cached: its exception reaches every waiter, and the next
        request tries again. A cancelled one (:class:`~backend.cancel.Cancelled`) is not the
        waiters' business: one of them takes the computation over.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0], True
            future = self._pending.get(key)
            owner = future is None
            if owner:
                future = self._pending[key] = Future()
                self.misses += 1
        if not owner:
            try:
                return future.result(), True
            except Cancelled:
                # The owner's client left: its cancellation is not this caller's, so compute here.
                return self.get_or_compute(key, compute)
        try:
            value = compute()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            self.put(key, value)
            future.set_result(value)
            return value, False
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
