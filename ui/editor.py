"""What the page's handlers do, without the page: inputs -> EditState -> service -> images/files.

The sections in ``ui/`` turn these results into component updates; the tests can call them
directly. Every computing service call goes through :class:`ui.device.Device` (ZeroGPU-safe).
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from backend.basis import BasisProgress
from backend.budget import Cost
from backend.concepts import Alignment, concept_id
from backend.errors import InputError
from backend.models import EditSettings
from backend.precompute import PathStatus
from backend.ranges import Calibration, position_of, strength_at
from backend.service import EigenfaceService
from backend.specs import PAGE_RANGES, PREVIEW_STEPS
from backend.state import EditState, as_number
from backend.store import SavedDirection

from .device import Device
from .sessions import current_session
from .grid import label_font, labelled_grid, signed
from .common import ATLAS_COLUMNS, MAX_UI_SEED, SLIDER_MAX, SLIDER_MIN

#: Cached atlases (a labelled grid image each) kept per process.
ATLAS_CACHE_ENTRIES = 32
#: Exported files older than this are deleted when the next one is written.
EXPORT_MAX_AGE_S = 3600
#: Displayed/exported GIF frames are at least this many pixels wide.
GIF_MIN_SIZE = 256
#: What to save: the slider edit, or else a direction index.
SAVE_SLIDERS = "sliders"

Progress = Callable[..., Any]


@dataclass(frozen=True)
class Found:
    """A basis the page shows sliders for: its settings and what the service said about it."""

    state: EditState  # settings; its sliders are always empty
    sigma: tuple[float, ...]
    timestep: int  # the training timestep of the schedule point used
    seconds: float
    cached: bool
    warnings: tuple[str, ...] = ()
    ranges: tuple[tuple[float, float], ...] = ()  # per direction (lo, hi), strength units (backend/ranges.py)
    travel: tuple[tuple[float, ...], ...] = ()  # per direction, strengths at even slider positions

    def strength(self, index: int, position: float) -> float:
        """The strength of direction ``index`` at slider position u in [-1, 1] (its calibrated range;
        without one, the position is the strength)."""
        return strength_at(self.travel[index], position) if index < len(self.travel) else float(position)

    def position(self, index: int, strength: float) -> float:
        """The slider position that shows ``strength`` (the inverse of :meth:`strength`)."""
        return position_of(self.travel[index], strength) if index < len(self.travel) else float(strength)


class Editor:
    def __init__(self, service: EigenfaceService, export_dir: str | Path | None = None):
        self.service = service
        self.device = Device(service.cache)
        self.export_dir = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="eigenface-export-"))
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self._atlases: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._atlas_lock = threading.Lock()

    # ----------------------------------------------------------------------------- inputs
    def state(self, model: Any, prompt: Any, seed: Any, timestep: Any, k: Any, steps: Any, mode: Any = "direct", sliders: Any = ()) -> EditState:
        """An EditState from raw request values (numbers may arrive as 3.0; the box may be empty)."""
        state = EditState(
            model=_text("model", model),
            prompt=_text("prompt", "" if prompt is None else prompt),
            seed=_whole("seed", seed),
            timestep=as_number("timestep", timestep),
            k=_whole("k", k),
            mode=_text("mode", mode),
            steps=_whole("steps", steps),
            sliders=sliders,
        )
        if state.model not in self.service.model_names:
            raise InputError(f"unknown model {state.model!r}; choose one of: {', '.join(self.service.model_names)}")
        return in_ranges(state)

    def for_page(self, state: EditState) -> EditState:
        """Refuse what the page's controls cannot show (files and links may hold any valid state)."""
        if state.seed > MAX_UI_SEED:
            raise InputError(f"seed {state.seed} is too large for the page (browsers hold at most {MAX_UI_SEED}); use the command line")
        in_ranges(state)
        for index, value in enumerate(state.sliders):
            if not SLIDER_MIN <= value <= SLIDER_MAX:
                raise InputError(f"strength {value:g} of direction {index} is outside the page's slider range [{SLIDER_MIN:g}, {SLIDER_MAX:g}]")
        return state

    def conditional(self, model: str) -> bool:
        return self.service.model(model).conditional

    def settings(self, model: str) -> EditSettings:
        """The model's recommended edit timestep and strength (its eigenface.json)."""
        return self.service.settings(model)

    def can_name(self, model: str) -> bool:
        return self.service.labels.available(model)

    # ----------------------------------------------------------------------------- compute
    def discover(self, state: EditState, progress: Progress | None = None) -> Found:
        if progress is not None:
            progress(0.0, desc="Sampling the image")

        def report(p: BasisProgress) -> None:
            progress((p.iteration, p.max_iters), desc=f"Finding directions (round {p.iteration} of at most {p.max_iters})", unit="rounds")

        self._afford(self.service.budget.discover(state.basis_spec()))
        result = self.device.call(self.service.discover, state.basis_spec(), progress=report if progress is not None else None)
        sigma = tuple(float(s) for s in result.basis.sigma.tolist())
        return Found(
            state.settings(), sigma, int(result.timestep), float(result.seconds), bool(result.cached), tuple(result.warnings), result.ranges, result.travel
        )

    def original(self, state: EditState) -> Image.Image:
        self._afford(self.service.budget.trajectory(state.sample_spec()))
        return self.device.call(self.service.generate, state.sample_spec())

    def _afford(self, cost: Cost) -> None:
        """Refuse, before any work, a request that costs more than the host's per-request budget."""
        self.service.budget.check(cost)

    def render(self, state: EditState, preview: bool = False) -> Image.Image:
        """The edited image; with every slider at zero, exactly the generated one."""
        strengths = state.strengths()
        if not strengths:
            return self.original(state)
        mode = state.mode
        if preview and not self.instant(state):
            mode = "direct"  # the straight step stands in while dragging; release shows the geodesic
        kwargs: dict[str, Any] = {"preview_steps": PREVIEW_STEPS} if preview else {}
        if preview and mode == "guidance":
            kwargs["substeps"] = 4
        self._afford(self.service.budget.render(state.basis_spec(), 1, mode, **kwargs))
        return self.device.call(self.service.edit, state.basis_spec(), strengths, mode, **kwargs)

    def start_paths(self, state: EditState, session: str) -> PathStatus:
        """Precompute the state's geodesic paths in the background (see backend.precompute:
        the job takes the requesting visitor's heavy slot and gives it up to waiting requests)."""
        return self.service.paths.start(session, state.basis_spec(), call=self.device.call, visitor=current_session() or session)

    def path_status(self, session: str) -> PathStatus:
        return self.service.paths.status(session)

    def instant(self, state: EditState) -> bool:
        """Whether the state's image comes without a geodesic shoot: any mode but geodesic, no
        slider moved, or one slider read off the cached paths."""
        strengths = state.strengths()
        if state.mode != "geodesic" or not strengths:
            return True
        spec = state.basis_spec()
        self._afford(self.service.budget.discover(spec))  # the basis may not be found yet (an API call)
        return self.service.paths.covers(spec, self.device.call(self.service.discover, spec), strengths)

    def labels(self, state: EditState, compute: bool = True) -> tuple[str, ...] | None:
        """Names of the state's directions (None: not computed yet, with ``compute=False``).

        Looking up names already computed needs no accelerator, so it skips the device call
        (on ZeroGPU every device call is a GPU allocation).
        """
        if not compute:
            return self.service.labels.names(state.basis_spec(), compute=False)
        self._afford(self.service.budget.labels(state.basis_spec()))
        return self.device.call(self.service.labels.names, state.basis_spec())

    # ----------------------------------------------------------------------------- steering
    def save_direction(self, state: EditState, source: Any, name: Any) -> SavedDirection:
        """Save the state's slider edit (source "sliders") or one direction (source: its index)."""
        name = _text("name", name).strip()
        source = _text("what to save", source).strip()
        if source != SAVE_SLIDERS and not re.fullmatch(r"[0-9]{1,3}", source):  # str.isdigit takes "²", int() does not
            raise InputError(f"what to save must be 'sliders' or a direction index (0 to {state.k - 1}), got {source[:40]!r}")
        self._afford(self.service.budget.discover(state.basis_spec()))
        visitor = current_session() or "anonymous"
        if source == SAVE_SLIDERS:
            return self.device.call(self.service.library.save, name, state.basis_spec(), state.strengths(), visitor=visitor)
        return self.device.call(self.service.library.save, name, state.basis_spec(), index=int(source), visitor=visitor)

    def saved_directions(self) -> list[SavedDirection]:
        return self.service.library.list()

    def apply_saved(self, state: EditState, name: Any, strength: Any, transport: Any = False) -> Image.Image:
        """The state's slider edit plus a saved direction at ``strength``."""
        name, transport = _saved(name, transport)
        strength = as_number("strength", strength)
        spec = state.basis_spec()
        cost = self.service.budget.render(spec, 1, state.mode, uses_basis=bool(state.strengths()) or transport)
        if transport:
            cost += self.service.budget.discover(self.service.library.source(name))
        self._afford(cost)
        return self.device.call(self.service.library.edit, state.basis_spec(), name, strength, state.strengths(), state.mode, transport=transport)

    def saved_calibration(self, state: EditState, name: Any, transport: Any = False) -> Calibration:
        """A saved direction's valid range and even travel at the state's image (its slider spans them)."""
        name, transport = _saved(name, transport)
        spec = state.basis_spec()
        cost = self.service.budget.direction_range(spec, self.service.library.identity(name, transport))
        if transport:
            cost += self.service.budget.discover(spec) + self.service.budget.discover(self.service.library.source(name))
        self._afford(cost)
        return self.device.call(self.service.library.calibration, spec, name, transport=transport)

    def find_concept(self, state: EditState, concept: Any) -> Alignment:
        self._afford(self.service.budget.concept(state.basis_spec()))
        return self.device.call(self.service.find_concept, state.basis_spec(), _text("concept", "" if concept is None else concept))[0]

    def concept_calibration(self, state: EditState, concept: Any) -> Calibration:
        """A concept direction's valid range and even travel at the state's image (its slider spans them)."""
        concept = _text("concept", "" if concept is None else concept)
        spec = state.basis_spec()
        self._afford(self.service.budget.concept(spec) + self.service.budget.direction_range(spec, concept_id(concept)))
        return self.device.call(self.service.concept_calibration, spec, concept)

    def apply_concept(self, state: EditState, concept: Any, strength: Any) -> Image.Image:
        """The state's slider edit plus a move toward (strength > 0) or away from a text concept."""
        concept = _text("concept", "" if concept is None else concept)
        self._afford(self.service.budget.concept(state.basis_spec()) + self.service.budget.render(state.basis_spec(), 1, state.mode))
        return self.device.call(self.service.edit_concept, state.basis_spec(), concept, as_number("strength", strength), state.strengths(), state.mode)

    def strip(self, state: EditState, index: int, strengths: Sequence[float]) -> list[Image.Image]:
        self._afford(self.service.budget.render(state.basis_spec(), len(strengths), state.mode))
        return self.device.call(self.service.strip, state.basis_spec(), index, [float(s) for s in strengths], state.mode)

    def atlas(self, found: Found, mode: str, reach: float, progress: Progress | None = None) -> Image.Image:
        """One labelled row per direction, edits across ``reach`` (a fraction) of each direction's
        own calibrated range, the unedited image in the middle (cached)."""
        state = replace(found.state, mode=mode)
        reach = as_number("atlas reach", reach)
        if not 0 < reach <= 1:
            raise InputError(f"atlas reach must be within (0, 1], got {reach:g}")
        names = self.labels(state, compute=False)  # rows carry the directions' names once they exist
        key = (state, round(reach, 6), ATLAS_COLUMNS, names)
        with self._atlas_lock:
            if key in self._atlases:
                self._atlases.move_to_end(key)
                return self._atlases[key]
        positions = np.linspace(-reach, reach, ATLAS_COLUMNS).tolist()
        self._afford(self.service.budget.render(state.basis_spec(), state.k * ATLAS_COLUMNS, mode))  # the whole atlas, not row by row
        rows = []
        for i in range(state.k):
            if progress is not None:
                progress((i, state.k), desc=f"Atlas: direction {i}", unit="directions")
            rows.append(self.strip(state, i, [found.strength(i, u) for u in positions]))
        sigma = "σ" if label_font(12)[1] else "sigma"
        titles = []
        for i, s in enumerate(found.sigma):
            lo, hi = found.strength(i, -reach), found.strength(i, reach)
            titles.append(f"{i}{'' if names is None else ': ' + names[i]}  {sigma}={s:.3g}  [{signed(lo)}, {signed(hi)}]")
        grid = labelled_grid(rows, titles, [signed(u) for u in positions])
        with self._atlas_lock:
            self._atlases[key] = grid
            while len(self._atlases) > ATLAS_CACHE_ENTRIES:
                self._atlases.popitem(last=False)
        return grid

    # ----------------------------------------------------------------------------- files
    def export_png(self, state: EditState) -> str:
        path = self._path(state, "png")
        self.render(state).save(path, format="PNG")
        return str(path)

    def export_json(self, state: EditState) -> str:
        path = self._path(state, "json")
        state.save(path)
        return str(path)

    def export_gif(self, found: Found, state: EditState, index: Any, reach: Any, frames: int = 9) -> str:
        """A loop along one direction across ``reach`` (a fraction) of its calibrated range,
        -reach -> +reach -> back, through the unedited image."""
        index = _whole("GIF direction", index)
        if not 0 <= index < state.k:
            raise InputError(f"GIF direction must be within 0..{state.k - 1}, got {index}")
        reach = as_number("GIF reach", reach)
        if not 0 < reach <= 1:
            raise InputError(f"GIF reach must be within (0, 1], got {reach:g}")
        values = [found.strength(index, u) for u in np.linspace(-reach, reach, frames)]
        images = self.strip(replace(state, sliders=()), index, values)
        scale = max(1, math.ceil(GIF_MIN_SIZE / images[0].width))
        images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]
        loop = images + images[-2:0:-1]  # ping-pong
        path = self._path(state, "gif", tag=f"d{index}-r{reach:g}")
        loop[0].save(path, format="GIF", save_all=True, append_images=loop[1:], duration=120, loop=0)
        return str(path)

    def _path(self, state: EditState, suffix: str, tag: str = "") -> Path:
        self._prune()
        digest = hashlib.sha1(f"{state.to_query()}&{tag}".encode()).hexdigest()[:8]
        name = f"eigenface-{state.model}-seed{state.seed}{'-' + tag if tag else ''}-{digest}.{suffix}"
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))  # one folder per file: no clashes between users
        return folder / name

    def _prune(self) -> None:
        cutoff = time.time() - EXPORT_MAX_AGE_S
        for folder in self.export_dir.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    for file in folder.iterdir():
                        file.unlink()
                    folder.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------------- inputs
def in_ranges(state: EditState) -> EditState:
    """Refuse settings outside the page's controls (:data:`~backend.specs.PAGE_RANGES`): every
    public endpoint, the page's own and the API's, holds to them."""
    for name, allowed in PAGE_RANGES.items():
        allowed.check(name, getattr(state, name))
    return state


def _saved(name: Any, transport: Any) -> tuple[str, bool]:
    """A request's saved-direction name and transport flag, checked."""
    name = _text("saved direction", "" if name is None else name)
    if not name:
        raise InputError("choose a saved direction first")
    if not isinstance(transport, bool):
        raise InputError(f"transport must be true or false, got {transport!r}")
    return name, transport


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {type(value).__name__}")
    return value


def _whole(name: str, value: Any) -> int:
    """An integer from an int or an integral float (browsers send 8 as 8.0)."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    as_number(name, value)  # empty / not a number / not finite: its own message
    raise InputError(f"{name} must be a whole number, got {value!r}")
