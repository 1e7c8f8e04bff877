"""How much one visitor may write to what every visitor shares: a count and a pace per visitor.

The saved-direction library is shared by everyone who opens the page, so one visitor (or one
script) must not be able to fill it or churn it. :class:`Quota` allows each visitor at most
``per_visitor`` actions, at least ``min_interval_s`` apart; it remembers at most ``max_visitors``
visitors (least recently active forgotten first), so its own memory is bounded too.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from .errors import InputError

#: Saves one visitor (one page session) may make.
SAVES_PER_VISITOR = 20
#: Seconds between two saves of one visitor.
SAVE_INTERVAL_S = 2.0
MAX_VISITORS = 4096


class Quota:
    """Thread-safe counts per visitor; :meth:`take` refuses with a message for the person."""

    def __init__(self, what: str, per_visitor: int = SAVES_PER_VISITOR, min_interval_s: float = SAVE_INTERVAL_S, max_visitors: int = MAX_VISITORS):
        self.what = what
        self.per_visitor = per_visitor
        self.min_interval_s = min_interval_s
        self.max_visitors = max_visitors
        self._used: OrderedDict[str, tuple[int, float]] = OrderedDict()  # visitor -> (count, last time)
        self._lock = threading.Lock()

    def take(self, visitor: str) -> None:
        """Count one action for ``visitor``, or refuse it (over the quota, or too soon after the last)."""
        now = time.monotonic()
        with self._lock:
            count, last = self._used.get(visitor, (0, -float("inf")))
            if count >= self.per_visitor:
                raise InputError(f"this page has {self.what} {self.per_visitor} times already, the most one visitor may")
            wait = last + self.min_interval_s - now
            if wait > 0:
                raise InputError(f"too fast: wait {wait:.1f} s before the next one (one every {self.min_interval_s:g} s)")
            self._used[visitor] = (count + 1, now)
            self._used.move_to_end(visitor)
            while len(self._used) > self.max_visitors:
                self._used.popitem(last=False)
