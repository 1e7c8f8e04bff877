"""Stopping work nobody waits for: a cancellation token checked before every U-Net forward.

A request that its client abandoned (or that the same visitor replaced with a newer one) must
not keep the server busy for minutes. Every expensive path of Eigenface (basis iterations,
denoising loops, labelling renders, geodesic substeps, concept changes) is made of U-Net
forwards, so one forward pre-hook on each loaded U-Net (:func:`watch`, installed by
:class:`~backend.models.DiffusionModel`) is the single place that checks: no loop can forget.

The token travels in a context variable, so the engine stays free of requests and sessions:
whoever starts work on behalf of someone opens :func:`scope` with a :class:`Token`, and every
forward made in that thread (or a context copied from it) checks it. A token may also poll a
liveness function (the web app asks Gradio whether the client is still connected), at most
every ``poll_s`` seconds, so the check costs nothing measurable per forward.

:class:`Cancelled` is deliberately not a ``ValueError``: it is not the requester's mistake, so
no error handler may turn it into an "invalid input" message, and the cache never stores a
half-computed value (``ByteLRU.get_or_compute`` caches only completed computations).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch

#: Seconds between two calls of a token's liveness function (a U-Net forward of the built-in
#: model takes ~10-50 ms on a CPU, so work stops well within a second of a disconnect).
DEFAULT_POLL_S = 0.25


class Cancelled(Exception):
    """The work was cancelled: its client left, or a newer request replaced it."""


class Token:
    """Cancelled by :meth:`cancel`, or once ``alive()`` returns False."""

    def __init__(self, alive: Callable[[], bool] | None = None, poll_s: float = DEFAULT_POLL_S):
        self._alive = alive
        self._poll_s = poll_s
        self._next_poll = 0.0
        self._reason: str | None = None
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._reason is not None

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason

    def check(self) -> None:
        """Raise :class:`Cancelled` if this token is (or has just become) cancelled."""
        if self._reason is None and self._alive is not None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + self._poll_s
                if not self._alive():
                    self.cancel("the client disconnected")
        if self._reason is not None:
            raise Cancelled(self._reason)


_CURRENT: ContextVar[Token | None] = ContextVar("eigenface_cancel_token", default=None)


@contextmanager
def scope(token: Token) -> Iterator[Token]:
    """Make ``token`` the one every U-Net forward in this context checks."""
    reset = _CURRENT.set(token)
    try:
        token.check()
        yield token
    finally:
        _CURRENT.reset(reset)


def current() -> Token | None:
    return _CURRENT.get()


def check() -> None:
    """Raise :class:`Cancelled` if the current token is cancelled (no token: never)."""
    token = _CURRENT.get()
    if token is not None:
        token.check()


def _before_forward(module: torch.nn.Module, args: tuple) -> None:
    check()


def watch(unet: torch.nn.Module) -> None:
    """Check the current token before every forward of ``unet`` (once per module, idempotent)."""
    if not getattr(unet, "_eigenface_cancel_hook", False):
        unet.register_forward_pre_hook(_before_forward)
        unet._eigenface_cancel_hook = True  # type: ignore[assignment]
