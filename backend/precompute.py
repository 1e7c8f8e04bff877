"""Geodesic paths computed in the background after a basis is found, cached beside it.

:func:`~backend.paths.precompute_paths` takes seconds to tens of seconds on a CPU, so nobody
should wait for it: :meth:`PathPrecompute.start` runs it on a worker thread and returns at
once; the first image and direct edits never touch it; a geodesic edit uses the paths once
they are in the cache (:meth:`PathPrecompute.cached`) and shoots afresh until then.

Rules that keep the cache honest:

* one job per path key (everything that determines the paths), shared by every session that
  asks for it;
* a session's newer request supersedes its older one: the old job is cancelled at its next
  step when no other session still wants it;
* only a finished, uncancelled job writes to the cache, so nothing half-computed is ever read;
* a job is heavy work like a basis: it runs in the heavy slot, attributed to the visitor who
  asked, as background work that hands the slot to any waiting request between its steps
  (:meth:`~backend.slots.Slots.yield_to_waiters`), so it never holds up a Find directions for
  more than one step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Protocol, Sequence

from .cache import ByteLRU
from .edit import EditPoint
from .errors import EigenfaceError
from .paths import BASIS_ITERS, DEFAULT_GRID_STEPS, CachedPaths, Ends, precompute_paths
from .slots import Slots, visiting
from .specs import BasisResult, BasisSpec, cache_key

logger = logging.getLogger(__name__)

#: Sessions whose latest request is remembered (older ones fall back to "no paths asked").
MAX_SESSIONS = 4096

#: How a job makes its one call: ``call(fn, *args, **kwargs)``; the page passes its device runner.
Call = Callable[..., Any]


def direction_ends(result: BasisResult) -> Ends:
    """Where each direction's paths end, (lo, hi) in strength units: its calibrated range
    (backend/ranges.py), which is also its slider's span, so every slider position lies on a path."""
    return tuple((float(lo), float(hi)) for lo, hi in result.ranges)


class PointSource(Protocol):
    """What the precompute needs from the service."""

    def discover(self, spec: BasisSpec) -> BasisResult: ...

    def edit_point(self, spec: BasisSpec, result: BasisResult) -> EditPoint: ...


class Superseded(Exception):
    """Raised inside a job's progress callback once no session wants its paths any more."""


@dataclass(frozen=True)
class PathStatus:
    """What a page shows about one session's paths."""

    state: str  # "none" (never asked), "running", "ready", "failed"
    done: int = 0  # batched basis updates finished
    total: int = 0
    seconds: float = 0.0  # running: so far; ready: the precompute's wall time
    message: str = ""  # failed: why


@dataclass
class _Job:
    key: Hashable
    sessions: set[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    total: int = 0
    thread: threading.Thread | None = None


class PathPrecompute:
    """Background geodesic paths per basis (see the module docstring); thread-safe."""

    def __init__(self, source: PointSource, cache: ByteLRU, slots: Slots, *, jvp_mode: str, steps: int = DEFAULT_GRID_STEPS, chunk_size: int | None = None):
        self.source = source
        self.jvp_mode = jvp_mode  # the service's (ServiceConfig.jvp_mode): part of the key, as it is of every EditPoint
        self.cache = cache
        self.slots = slots
        self.steps = steps
        self.chunk_size = chunk_size
        self._jobs: dict[Hashable, _Job] = {}
        self._sessions: OrderedDict[str, Hashable] = OrderedDict()
        self._failed: dict[Hashable, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lookups
    def key(self, spec: BasisSpec, result: BasisResult) -> tuple:
        """Everything that determines the paths: the basis, the ends, the grid, the updates."""
        return cache_key("paths", spec, result.timestep, direction_ends(result), self.steps, BASIS_ITERS, self.jvp_mode)

    def cached(self, spec: BasisSpec, result: BasisResult) -> CachedPaths | None:
        """The finished paths of this basis, or None (not asked, still running, failed, evicted)."""
        return self.cache.get(self.key(spec, result))

    def covers(self, spec: BasisSpec, result: BasisResult, strengths: Mapping[int, float] | Sequence[float]) -> bool:
        """Whether a geodesic edit by these slider values is read off cached paths (instant):
        exactly one slider moved, within its path's range."""
        paths = self.cached(spec, result)
        items = strengths.items() if isinstance(strengths, Mapping) else enumerate(strengths)
        moved = [(int(i), float(s)) for i, s in items if s]
        return paths is not None and len(moved) == 1 and paths.covers(*moved[0])

    # ------------------------------------------------------------------ computing
    def compute(self, spec: BasisSpec, progress: Callable[[int, int], None] | None = None) -> CachedPaths:
        """The paths of ``spec``'s basis, computed here and now (not cached: the caller decides)."""
        result = self.source.discover(spec)
        point = self.source.edit_point(spec, result)
        return precompute_paths(point, direction_ends(result), self.steps, chunk_size=self.chunk_size, progress=progress)

    def start(self, session: str, spec: BasisSpec, call: Call | None = None, visitor: str | None = None) -> PathStatus:
        """Compute ``spec``'s paths in the background for ``session``; returns at once.

        The session's earlier request, if for other paths, is dropped (and its job cancelled
        when no other session wants it). ``call`` runs the computation (default: directly);
        ``visitor`` is whose heavy slot it takes (default: the session).
        """
        result = self.source.discover(spec)  # the caller has just found it: a cache hit
        key = self.key(spec, result)
        with self._lock:
            if self._sessions.get(session) != key:  # asking again for the same paths keeps the job
                self._leave(session)
            self._sessions[session] = key
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._leave(next(iter(self._sessions)))
            running = self._jobs.get(key)
            if running is not None and not running.cancel.is_set():
                running.sessions.add(session)
            elif key not in self.cache:  # a cancelled job still winding down is replaced
                self._failed.pop(key, None)
                job = self._jobs[key] = _Job(key, {session})
                job.thread = threading.Thread(target=self._run, args=(job, spec, call, visitor or session), name="eigenface-paths", daemon=True)
                job.thread.start()
        return self.status(session)

    def _leave(self, session: str) -> None:
        """Forget the session's request; cancel its job if nobody else waits for it (lock held)."""
        key = self._sessions.pop(session, None)
        job = self._jobs.get(key) if key is not None else None
        if job is not None:
            job.sessions.discard(session)
            if not job.sessions:
                job.cancel.set()

    def _run(self, job: _Job, spec: BasisSpec, call: Call | None, visitor: str) -> None:
        def progress(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise Superseded
            job.done, job.total = done, total
            self.slots.yield_to_waiters("heavy")

        try:
            with visiting(visitor), self.slots.hold("heavy", background=True):
                paths = (call or _direct)(self.compute, spec, progress=progress)
            if not job.cancel.is_set():
                self.cache.put(job.key, paths)
        except Superseded:
            pass
        except EigenfaceError as exc:
            self._failed[job.key] = str(exc)
        except Exception as exc:  # a worker thread has nobody to raise to: log it, tell the page
            logger.exception("geodesic path precompute failed")
            self._failed[job.key] = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]

    def wait(self, session: str, timeout: float | None = None) -> PathStatus:
        """Block until the session's job ends (tests and benchmarks; the page polls :meth:`status`)."""
        with self._lock:
            job = self._jobs.get(self._sessions.get(session))
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return self.status(session)

    def status(self, session: str) -> PathStatus:
        with self._lock:
            key = self._sessions.get(session)
            job = self._jobs.get(key) if key is not None else None
        if key is None:
            return PathStatus("none")
        if job is not None:
            return PathStatus("running", job.done, job.total, time.perf_counter() - job.started)
        paths = self.cache.get(key)
        if paths is not None:
            return PathStatus("ready", paths.steps - 1, paths.steps - 1, paths.seconds)
        if key in self._failed:
            return PathStatus("failed", message=self._failed[key])
        return PathStatus("none")  # evicted from the cache, or cancelled


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)
