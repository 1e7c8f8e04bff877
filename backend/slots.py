"""Who may compute now: a few render slots, fewer heavy (basis) slots, one of each per visitor.

Gradio's queue limits how many *events* run at once, but an event is not its cost: a
``find_directions`` whose basis is cached costs a dictionary look-up, and a ``render`` whose
basis is not cached costs a basis. So the service takes a slot only around the computation
itself, at the point where the cache has missed (:meth:`Slots.hold`), and:

* a cached result never waits behind anyone's computation (it takes no slot);
* a basis, a trajectory, a labelling or a concept alignment takes the *heavy* slot, wherever
  the request came from (a ``render`` or ``save_direction`` that needs a basis included);
* denoising takes a *render* slot; work already holding the heavy slot renders inside it
  (labelling renders edits), so a heavy holder never waits for a render slot and the two kinds
  cannot deadlock;
* one visitor (the context's :func:`visiting` id, the web app's session) holds at most one slot
  of each kind: a second request of theirs waits for their first, not for everyone's;
* background work (geodesic paths precomputed after a basis) holds a slot with
  ``background=True``: it never takes one while a request waits for it, and it hands the slot
  over between its steps (:meth:`Slots.yield_to_waiters`), so a person's Find directions waits
  for at most one step of someone's precompute, not all of it.

Waiting checks the current cancellation token, so an abandoned request leaves the line.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Literal

from .cancel import check

Kind = Literal["heavy", "render"]

#: Seconds between two checks of the cancellation token while waiting for a slot.
WAIT_POLL_S = 0.2

_VISITOR: ContextVar[str | None] = ContextVar("eigenface_visitor", default=None)
_HELD: ContextVar[frozenset[str]] = ContextVar("eigenface_slots_held", default=frozenset())


@contextmanager
def visiting(visitor: str | None) -> Iterator[None]:
    """Attribute the slots taken in this context to ``visitor`` (None: an anonymous caller)."""
    reset = _VISITOR.set(visitor)
    try:
        yield
    finally:
        _VISITOR.reset(reset)


class Slots:
    """``heavy`` and ``render`` slots shared by every caller of one service (thread-safe)."""

    def __init__(self, heavy: int = 1, render: int = 2):
        if heavy < 1 or render < 1:
            raise ValueError(f"slot counts must be at least 1, got heavy={heavy}, render={render}")
        self.limits: dict[str, int] = {"heavy": heavy, "render": render}
        self._busy: dict[str, int] = {"heavy": 0, "render": 0}
        self._holders: dict[str, dict[str, int]] = {"heavy": {}, "render": {}}
        self._waiting: dict[str, int] = {"heavy": 0, "render": 0}  # requests (not background work) in line
        self._changed = threading.Condition()

    def busy(self, kind: Kind) -> int:
        with self._changed:
            return self._busy[kind]

    @contextmanager
    def hold(self, kind: Kind, *, background: bool = False) -> Iterator[None]:
        """Run the block in a ``kind`` slot (at once if this context already holds one that covers it).

        ``background``: wait until no request is in line, too (see :meth:`yield_to_waiters`).
        """
        held = _HELD.get()
        if kind in held or "heavy" in held:
            yield
            return
        visitor = _VISITOR.get()
        self._acquire(kind, visitor, background)
        reset = _HELD.set(held | {kind})
        try:
            yield
        finally:
            _HELD.reset(reset)
            self._release(kind, visitor)

    def yield_to_waiters(self, kind: Kind) -> None:
        """Between two steps of background work holding ``kind``: if a request waits for the
        slot, hand it over and take it back once nobody waits (the work's state stays as it is)."""
        visitor = _VISITOR.get()
        with self._changed:
            if not self._waiting[kind]:
                return
        self._release(kind, visitor)
        self._acquire(kind, visitor, background=True)

    def _acquire(self, kind: str, visitor: str | None, background: bool) -> None:
        with self._changed:
            if not background:
                self._waiting[kind] += 1
            try:
                while not self._free(kind, visitor) or (background and self._waiting[kind]):
                    self._changed.wait(WAIT_POLL_S)
                    check()  # an abandoned request leaves the line (the lock is released while raising)
            finally:
                if not background:
                    self._waiting[kind] -= 1
            self._busy[kind] += 1
            if visitor is not None:
                self._holders[kind][visitor] = self._holders[kind].get(visitor, 0) + 1

    def _release(self, kind: str, visitor: str | None) -> None:
        with self._changed:
            self._busy[kind] -= 1
            if visitor is not None:
                left = self._holders[kind].pop(visitor) - 1
                if left:
                    self._holders[kind][visitor] = left
            self._changed.notify_all()

    def _free(self, kind: str, visitor: str | None) -> bool:
        if self._busy[kind] >= self.limits[kind]:
            return False
        return visitor is None or visitor not in self._holders[kind]
