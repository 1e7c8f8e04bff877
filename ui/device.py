"""Run service calls where the accelerator is, keeping the cache in the serving process.

On a ZeroGPU Space every ``@spaces.GPU`` call runs in a forked worker: whatever it adds to
the service's cache dies with the worker. So the worker records the entries it computes
(:func:`backend.cache.record_computed`), returns them (CPU tensors only) with the result,
and the serving process adopts them into its own cache; the next call forks from a process
that has them. Elsewhere the decorator is inert and this is a plain call.

Calls are typed: ``device.call(service.discover, spec)`` checks like ``service.discover(spec)``.
A bound method crosses to the worker as its plain function plus the id of its object (the
service or one of its parts), which the forked worker finds in its copy of :data:`_OWNERS`:
the object itself (models and all) is never pickled.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Callable, ParamSpec, TypeVar

import torch

from backend.cache import ByteLRU, leaves, record_computed
from backend.cancel import check

from .common import ZERO_GPU, gpu

P = ParamSpec("P")
R = TypeVar("R")

#: The objects whose bound methods have been called, by id (inherited by every forked worker).
_OWNERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


class Device:
    """Calls into a service whose cache is ``cache``, on the GPU worker when there is one."""

    def __init__(self, cache: ByteLRU):
        self.cache = cache

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)``; ``fn`` is a bound method of the service or its parts, or a
        module-level function. Entries a ZeroGPU worker computed land in ``self.cache``."""
        check()  # an abandoned request does not start (a forked GPU worker cannot see its token later)
        if ZERO_GPU:
            kwargs.pop("progress", None)  # a callback cannot reach back across the fork
        owner_id = None
        if inspect.ismethod(fn):
            _OWNERS[id(fn.__self__)] = fn.__self__
            owner_id, fn = id(fn.__self__), fn.__func__
        result, entries = _on_device(owner_id, fn, args, kwargs, ZERO_GPU)
        for key, value in entries:
            self.cache.put(key, value)
        return result


@gpu(duration=120)
def _on_device(owner_id: int | None, fn: Callable[..., Any], args: tuple, kwargs: dict, record: bool) -> tuple[Any, list[tuple[Any, Any]]]:
    """The call's result and, if ``record`` (in a worker process), the cache entries it computed."""
    if owner_id is not None:
        args = (_OWNERS[owner_id], *args)
    if not record:
        return fn(*args, **kwargs), []
    with record_computed() as entries:
        result = fn(*args, **kwargs)
    return result, [(key, value) for key, value in entries if _on_cpu(value)]


def _on_cpu(value: Any) -> bool:
    return all(leaf.device.type == "cpu" for leaf in leaves(value) if isinstance(leaf, torch.Tensor))
