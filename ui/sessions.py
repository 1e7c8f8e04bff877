"""Each running request's cancellation token and visitor, from Gradio's view of the request.

Every handler runs inside :meth:`Requests.running` (``ui.common.guard`` opens it), which

* makes a :class:`~backend.cancel.Token` the one every U-Net forward of this request checks,
  alive while Gradio still runs the event: a client that disconnects (its stream closes, so
  Gradio marks the event dead) or cancels (``/cancel`` ends the event's task, which takes it
  off the queue's active jobs) stops the work within a fraction of a second;
* cancels the same visitor's previous request to the same endpoint: a newer request replaces
  it (a dragged slider, a second click on "Find directions", a script's retry);
* names the visitor (Gradio's session hash) for the service's slots (:mod:`backend.slots`).

Gradio 6 gives a handler its event id and Blocks through ``gradio.context.LocalContext`` (as
``gr.Progress`` finds them) and keeps the running events in its queue's ``active_jobs``; that
is the liveness read here. Outside a queued event (tests, ``queue=False``) the token has no
liveness check and is cancelled only by a newer request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

from gradio.context import LocalContext

from backend.cancel import Token, scope
from backend.slots import visiting

#: Visitors' running requests tracked at once (the oldest entry is forgotten, never cancelled).
MAX_TRACKED = 2048
REPLACED = "a newer request from the same page replaced this one"


class Requests:
    def __init__(self, max_tracked: int = MAX_TRACKED):
        self.max_tracked = max_tracked
        self._running: OrderedDict[tuple[str, str], Token] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._running)

    @contextmanager
    def running(self, endpoint: str, session: str | None = None, alive: Callable[[], bool] | None = None) -> Iterator[Token]:
        """Run a request to ``endpoint`` from ``session`` (default: Gradio's current request)."""
        session = session if session is not None else current_session()
        token = Token(alive if alive is not None else event_alive())
        key = (session, endpoint) if session is not None else None
        if key is not None:
            with self._lock:
                previous = self._running.pop(key, None)
                if previous is not None:
                    previous.cancel(REPLACED)
                self._running[key] = token
                while len(self._running) > self.max_tracked:
                    self._running.popitem(last=False)
        try:
            with scope(token), visiting(session):
                yield token
        finally:
            if key is not None:
                with self._lock:
                    if self._running.get(key) is token:
                        del self._running[key]


def current_session() -> str | None:
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None)


def event_alive() -> Callable[[], bool] | None:
    """Whether the Gradio event running this handler is still wanted (None outside a queued event)."""
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return None

    def alive() -> bool:
        for job in list(queue.active_jobs):
            for event in job or ():
                if event._id == event_id:
                    return bool(event.alive)
        return False  # no longer an active job: cancelled (its task ended while this thread ran)

    return alive


#: The page's and the API's requests (one process serves one page).
REQUESTS = Requests()
