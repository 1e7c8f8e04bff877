"""The facade the CLI, the web app and the tests call: sample, discover, edit, and cache.

Every input is checked at the boundary (raising :class:`InputError` with a message for the
person), then the engine does the work: load -> sample -> basis -> edit -> render, with the
expensive results (trajectories, bases) in one byte-bounded LRU keyed by everything that
determines them. The parts built on top (direction names, the saved-direction library) are
attributes, :attr:`EigenfaceService.labels` and :attr:`EigenfaceService.library`; they reach
back only through the :class:`~backend.specs.Renderer` protocol.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .basis import MAX_K, Basis, BasisProgress
from .budget import Budget
from .cache import ByteLRU
from .config import DEFAULT_RENDER_BATCH, ServiceConfig
from .concepts import Alignment, align, concept_change, concept_id, order_by_change
from .edit import EDIT_MODES, EditPoint, apply_edits, combine
from .errors import EditError, InputError
from .geometry import grassmann_distance, transport_direction
from .hspace import model_basis
from .images import image_grid, to_pil
from .labels import DirectionNames
from .library import Library
from .models import Conditioning, DiffusionModel, EditSettings
from .paths import edits_on_paths
from .precompute import PathPrecompute
from .quota import Quota
from .ranges import MAX_END, Calibration, calibrate, hf_limit
from .registry import ModelRegistry
from .sampling import Boost, Trajectory, render, sample_trajectory, sub_schedule
from .slots import Slots
from .specs import (
    MAX_SEED,
    MAX_STEPS,
    MAX_STRENGTH,
    BasisResult,
    BasisSpec,
    SampleSpec,
    cache_key,
    check_int,
    check_strength,
    check_vector,
    concept_basis_spec,
    guidance_scale,
    pairs,
    timestep_index,
    slider_vector,
    unit,
)

logger = logging.getLogger(__name__)

class EigenfaceService:
    """Thread-safe: models load once, each cache entry is computed once, renders run in parallel."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = config or ServiceConfig()
        self.models = ModelRegistry(self.config.models, allow_any=self.config.allow_any_model, device=self.config.device)
        self.cache = ByteLRU(self.config.cache_bytes)
        self.slots = Slots(self.config.heavy_slots, self.config.render_slots)
        self.budget = Budget(self.models, self.cache, self.config.budget)
        self.labels = DirectionNames(self, self.config.labellers, self.cache, self.slots)
        self.library = Library(self, self.config.library_dir, Quota("saved a direction", self.config.saves_per_visitor, self.config.save_interval_s))
        self.paths = PathPrecompute(self, self.cache, self.slots, jvp_mode=self.config.jvp_mode, chunk_size=self.config.basis_chunk_size)
        self._chunks: dict[str, int] = {}  # per model: the basis chunk size that fit after an out-of-memory
        self._chunks_lock = threading.Lock()

    # ----------------------------------------------------------------------------- models
    @property
    def model_names(self) -> list[str]:
        return self.models.names

    def model(self, name: str) -> DiffusionModel:
        """The loaded model for an allow-listed name (or, when allowed, any path or hub id)."""
        return self.models.get(name)

    def settings(self, name: str) -> EditSettings:
        """The model's recommended edit timestep, strength and seed (its eigenface.json)."""
        return self.models.settings(name)

    # ----------------------------------------------------------------------------- checks
    def check_sample(self, spec: SampleSpec) -> DiffusionModel:
        model = self.model(spec.model)
        check_int("seed", spec.seed, 0, MAX_SEED)
        check_int("steps", spec.steps, 1, min(MAX_STEPS, model.num_train_timesteps))
        if not isinstance(spec.prompt, str):
            raise InputError("prompt must be text")
        if spec.prompt and not model.conditional:
            raise InputError(f"model {spec.model!r} is unconditional: it takes no prompt")
        if spec.guidance_scale is not None and (not math.isfinite(spec.guidance_scale) or not 0 <= spec.guidance_scale <= 50):
            raise InputError(f"guidance_scale must be within [0, 50], got {spec.guidance_scale}")
        return model

    #: :func:`~backend.specs.guidance_scale` (what the CLI and the benches call it by).
    guidance = staticmethod(guidance_scale)

    def _check_edit(self, spec: BasisSpec, mode: str, substeps: int | None, preview_steps: int | None) -> DiffusionModel:
        """Refuse bad edit options before any basis is computed for them."""
        model = self.check_sample(spec.sample)
        check_int("k", spec.k, 1, MAX_K)
        if mode not in EDIT_MODES:
            raise InputError(f"mode must be one of {', '.join(EDIT_MODES)}, got {mode!r}")
        if substeps is not None:
            check_int("substeps", substeps, 1, 256)
        if preview_steps is not None:
            check_int("preview_steps", preview_steps, 1, MAX_STEPS)
        return model

    # ----------------------------------------------------------------------------- sampling
    def _cached(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The cached value, or ``compute()`` in the heavy slot (a hit takes no slot): what is
        cached is what is expensive (trajectories, bases, concept alignments)."""

        def in_slot() -> Any:
            with self.slots.hold("heavy"):
                return compute()

        return self.cache.get_or_compute(key, in_slot)

    def conditioning(self, model: DiffusionModel, prompt: str | None) -> Conditioning | None:
        if not model.conditional:
            return None
        return self._cached(("cond", model.name, prompt or ""), lambda: model.encode_prompt(prompt or ""))[0]

    def trajectory(self, spec: SampleSpec) -> Trajectory:
        model = self.check_sample(spec)
        cond = self.conditioning(model, spec.prompt)
        boost = self.boosted(model)
        return self._cached(("trajectory", spec), lambda: sample_trajectory(model, spec.seed, spec.steps, cond, self.guidance(model, spec), boost))[0]

    def boosted(self, model: DiffusionModel) -> bool:
        """Whether this model's images take quality-boosting steps (ServiceConfig.boost)."""
        return model.vae is None if self.config.boost is None else self.config.boost

    def generate(self, spec: SampleSpec) -> Image.Image:
        model = self.check_sample(spec)
        return to_pil(model.decode(self.trajectory(spec).x0[None]))[0]

    def point(self, spec: BasisSpec) -> BasisResult:
        """x_t at the spec's timestep, without a basis (for what needs none)."""
        model = self.check_sample(spec.sample)
        traj = self.trajectory(spec.sample)
        index = timestep_index(model, traj.timesteps, spec.timestep)  # as the budget prices it
        empty = Basis(torch.zeros(0), torch.zeros(0), torch.zeros(0), 0, True)
        return BasisResult(empty, traj.latents[index], traj.timesteps[index], index, 0.0, True)

    # ----------------------------------------------------------------------------- bases
    def discover(self, spec: BasisSpec, progress: Callable[[BasisProgress], None] | None = None) -> BasisResult:
        """The local basis at (model, prompt, seed, timestep, k[, edit prompt]) with each
        direction's calibrated range, both cached."""
        result = self.local_basis(spec, progress)
        calibration = self.calibration(spec, result.basis, result)
        return replace(result, ranges=calibration.ranges, travel=calibration.travel)

    def local_basis(self, spec: BasisSpec, progress: Callable[[BasisProgress], None] | None = None) -> BasisResult:
        """:meth:`discover` without the ranges, for what uses the directions but no slider along
        each (a concept's alignment)."""
        model = self.check_sample(spec.sample)
        check_int("k", spec.k, 1, MAX_K)
        if spec.edit_prompt and not model.conditional:
            raise InputError("an edit prompt needs a text-conditioned model")
        point = self.point(spec)
        cond = self.conditioning(model, spec.edit_prompt or spec.sample.prompt)
        warnings = []
        if cond is not None and cond.truncated:
            warnings.append(f"the prompt is longer than {model.max_prompt_tokens} tokens and was truncated")

        def compute() -> tuple[Basis, float]:
            start = time.perf_counter()
            basis = self._basis(model, point.x_t, point.timestep, cond, spec.k, progress).to("cpu")
            if spec.edit_prompt:  # the edit prompt's own directions first (concepts.order_by_change)
                base = self.conditioning(model, spec.sample.prompt)
                basis = order_by_change(basis, concept_change(model, point.x_t, point.timestep, base.cond, cond.cond))
            return basis, time.perf_counter() - start

        (basis, seconds), cached = self._cached(cache_key("basis", spec, point.timestep), compute)
        return BasisResult(basis, point.x_t, point.timestep, point.index, 0.0 if cached else seconds, cached, tuple(warnings))

    def calibration(self, spec: BasisSpec, basis: Basis, point: BasisResult) -> Calibration:
        """Each direction's valid range and even-travel map (backend/ranges.py), cached beside the basis."""
        return self._calibrate(spec, point, basis.v, cache_key("ranges", spec, point.timestep))

    def direction_calibration(self, spec: BasisSpec, vector: Tensor, identity: Hashable) -> Calibration:
        """The valid range and even-travel map of one more direction at the spec's x_t (a saved
        direction, a text concept's), by the sliders' own criterion, so that its slider ends are
        as valid as theirs. Cached per (basis, ``identity``): the caller names the vector exactly
        (:func:`~backend.library.saved_id`, :func:`~backend.concepts.concept_id`)."""
        model = self.check_sample(spec.sample)
        vector = unit(check_vector(vector, model.sample_shape))
        point = self.point(spec)
        return self._calibrate(spec, point, vector[None], cache_key("ranges", spec, point.timestep, identity))

    def _calibrate(self, spec: BasisSpec, point: BasisResult, directions: Tensor, key: Hashable) -> Calibration:
        """:func:`~backend.ranges.calibrate` of unit ``directions`` at the spec's x_t, cached under ``key``."""
        model = self.check_sample(spec.sample)
        cond = self.conditioning(model, spec.sample.prompt)
        limit = hf_limit(point.timestep / model.num_train_timesteps, self.boosted(model)) if model.settings.hf_criterion else math.inf

        def compute() -> Calibration:
            return calibrate(model, point.x_t, point.timestep, directions, cond, self.guidance(model, spec.sample), limit=limit, cap=self.range_cap(model))

        return self._cached(key, compute)[0]

    @staticmethod
    def range_cap(model: DiffusionModel) -> float:
        """The furthest a calibrated slider reaches on ``model``: its ``eigenface.json``'s
        ``range_cap``, else ranges.MAX_END, and never past a strength :meth:`edit` accepts."""
        return min(model.settings.range_cap or MAX_END, MAX_STRENGTH)

    def _basis(self, model: DiffusionModel, x_t: Tensor, t: int, cond: Conditioning | None, k: int, progress) -> Basis:
        """:func:`~backend.hspace.model_basis`, starting at the chunk size that last fit this model."""
        chunk = self._chunks.get(model.name, self.config.basis_chunk_size)
        try:
            basis, fitted = model_basis(
                model, x_t, t, None if cond is None else cond.cond, k, chunk_size=chunk, jvp_mode=self.config.jvp_mode, callback=progress
            )
        except ValueError as exc:  # k beyond what this model's bottleneck can give
            raise InputError(str(exc)) from None
        except torch.OutOfMemoryError:
            raise InputError(f"out of memory computing {k} directions, even one at a time; try a smaller k") from None
        if fitted is not None and fitted != chunk:
            with self._chunks_lock:
                self._chunks[model.name] = min(fitted, self._chunks.get(model.name, fitted))
        return basis

    def adopt_basis(self, spec: BasisSpec, basis: Basis, x_t: Tensor, calibration: Calibration | None = None) -> bool:
        """Use a saved basis for ``spec`` if it was computed at this very x_t (else recompute later).

        ``calibration``: its saved ranges, if the file had them (else they are computed when needed).
        """
        point = self.point(spec)
        if basis.k != spec.k or x_t.shape != point.x_t.shape or not torch.equal(x_t, point.x_t):
            return False
        self.cache.put(cache_key("basis", spec, point.timestep), (basis, 0.0))
        if calibration is not None and len(calibration.ranges) == basis.k:
            self.cache.put(cache_key("ranges", spec, point.timestep), calibration)
        return True

    # ----------------------------------------------------------------------------- geometry
    def transport(self, source: Basis, direction: int | Tensor, target: Basis) -> Tensor:
        """A direction of the source basis (an index, or any vector in its span) carried into the target's tangent space."""
        if isinstance(direction, int):
            check_int("direction index", direction, 0, source.k - 1)
            direction = source.v[direction]
        if source.v.shape[1:] != target.v.shape[1:] or source.u.shape[1:] != target.u.shape[1:]:
            raise InputError(f"bases of different models: shapes {tuple(source.v.shape[1:])} and {tuple(target.v.shape[1:])}")
        try:
            return transport_direction(direction, source, target)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def compare(self, specs: Sequence[BasisSpec], space: str = "x") -> np.ndarray:
        """Grassmann distances between the local bases of ``specs`` (x-space v or h-space u)."""
        if space not in ("x", "h"):
            raise InputError(f"space must be 'x' or 'h', got {space!r}")
        bases = [self.discover(spec).basis for spec in specs]
        rows = [b.v if space == "x" else b.u for b in bases]
        n = len(rows)
        dist = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                dist[i, j] = dist[j, i] = grassmann_distance(rows[i], rows[j])
        return dist

    # ----------------------------------------------------------------------------- concepts
    def find_concept(self, spec: BasisSpec, concept: str, space: str = "x") -> tuple[Alignment, BasisResult]:
        """Rank the local directions by how much they carry a text concept, and combine them.

        The concept's effect at x_t is the change of the predicted clean sample (space "x") or
        of the bottleneck (space "h") when the conditioning switches from the sampling prompt
        to the concept. "Toward" the concept is the returned direction's positive side. The
        directions are the image's top max(k, CONCEPT_K) (:func:`~backend.specs.concept_basis_spec`),
        the returned result's basis.
        """
        model = self.check_sample(spec.sample)
        if not model.conditional:
            raise InputError(f"model {spec.sample.model!r} has no text encoder: directions from text need a text-conditioned model (Stable Diffusion)")
        if not isinstance(concept, str) or not concept.strip():
            raise InputError("the concept must be non-empty text")
        if space not in ("x", "h"):
            raise InputError(f"space must be 'x' or 'h', got {space!r}")
        spec = concept_basis_spec(spec)
        result = self.local_basis(spec)

        def compute() -> Alignment:
            base, target = self.conditioning(model, spec.sample.prompt), self.conditioning(model, concept)
            change = concept_change(model, result.x_t, result.timestep, base.cond, target.cond, space)
            try:
                return align(result.basis, change, space)
            except ValueError as exc:
                raise InputError(str(exc)) from None

        return self._cached(cache_key("concept", spec, result.timestep, concept, space), compute)[0], result

    def concept_calibration(self, spec: BasisSpec, concept: str, space: str = "x") -> Calibration:
        """The valid range and even-travel map of a concept's direction (:meth:`direction_calibration`)."""
        alignment, _ = self.find_concept(spec, concept, space)
        return self.direction_calibration(spec, alignment.direction, concept_id(concept, space))

    def edit_concept(self, spec: BasisSpec, concept: str, strength: float, strengths: Mapping[int, float] | Sequence[float] = (), mode: str = "direct", *, space: str = "x", substeps: int | None = None, preview_steps: int | None = None) -> Image.Image:
        """The slider edit plus a move toward (strength > 0) or away from a text concept (:meth:`find_concept`)."""
        alignment, _ = self.find_concept(spec, concept, space)
        return self.edit(spec, strengths, mode, vectors=[(alignment.direction, strength)], substeps=substeps, preview_steps=preview_steps)

    # ----------------------------------------------------------------------------- edits
    def edit(
        self,
        spec: BasisSpec,
        strengths: Mapping[int, float] | Sequence[float],
        mode: str = "direct",
        *,
        vectors: Sequence[tuple[Tensor, float]] = (),
        substeps: int | None = None,
        preview_steps: int | None = None,
    ) -> Image.Image:
        """The image after moving x_t along basis directions by slider values, then denoising.

        ``vectors``: further (direction, strength) pairs moved along at the same time (a saved
        direction, a text concept; any tensor of the sample shape, normalised here). Every move
        is summed into one displacement, so a saved direction at 0.4 on top of the sliders is
        one edit, not two. The basis is computed only when a slider moves or the mode needs it.
        """
        model = self._check_edit(spec, mode, substeps, preview_steps)
        values = slider_vector(strengths, spec.k)
        extra = [(unit(check_vector(v, model.sample_shape)), check_strength(s)) for v, s in pairs(vectors)]
        uses_basis = bool(values.any()) or mode == "geodesic"
        result = self.discover(spec) if uses_basis else self.point(spec)
        rows, weights = [], []
        if values.any():
            rows.append(result.basis.v)
            weights.append(values)
        for vector, strength in extra:
            rows.append(vector[None])
            weights.append(torch.tensor([strength]))
        if rows:
            direction, strength = combine(torch.cat(rows), torch.cat(weights))
        else:
            direction, strength = torch.zeros(model.sample_shape), 0.0
        moved = values.nonzero().flatten().tolist()
        slider = (moved[0], float(values[moved[0]])) if len(moved) == 1 and not extra else None
        return self._render_batch(spec, result, [(direction, strength)], mode, substeps, preview_steps, [slider])[0]

    def edit_vector(self, spec: BasisSpec, vector: Tensor, strength: float, mode: str = "direct", *, substeps: int | None = None, preview_steps: int | None = None) -> Image.Image:
        """The image after moving x_t by ``strength`` along any direction of the sample shape."""
        return self.edit(spec, (), mode, vectors=[(vector, strength)], substeps=substeps, preview_steps=preview_steps)

    def render_edits(
        self,
        spec: BasisSpec,
        edits: Sequence[tuple[int | Tensor, float]],
        mode: str = "direct",
        *,
        substeps: int | None = None,
        preview_steps: int | None = None,
        batch_size: int = DEFAULT_RENDER_BATCH,
    ) -> list[Image.Image]:
        """Many separate edits of one sample, one image each, denoised ``batch_size`` at a time.

        Each edit is (basis direction index or vector of the sample shape, strength); vectors
        are normalised as in :meth:`edit_vector`. Batching shares every U-Net call between the
        edits, which on a CPU is several times faster than one :meth:`edit` after another (the
        atlas, factor responses, direction labels).
        """
        model = self._check_edit(spec, mode, substeps, preview_steps)
        check_int("batch_size", batch_size, 1, 256)
        edits = pairs(edits, "edits")
        uses_basis = mode == "geodesic" or any(not isinstance(d, Tensor) for d, _ in edits)
        result = self.discover(spec) if uses_basis else self.point(spec)
        moves, sliders = [], []
        for d, strength in edits:
            strength = check_strength(strength)
            if isinstance(d, Tensor):
                moves.append((unit(check_vector(d, model.sample_shape)), strength))
                sliders.append(None)
            else:
                index = check_int("direction index", d, 0, result.basis.k - 1)
                moves.append((result.basis.v[index], strength))
                sliders.append((index, strength))
        images: list[Image.Image] = []
        for first in range(0, len(moves), batch_size):
            part = slice(first, first + batch_size)
            images += self._render_batch(spec, result, moves[part], mode, substeps, preview_steps, sliders[part])
        return images

    def edit_point(self, spec: BasisSpec, result: BasisResult) -> EditPoint:
        """Where ``spec``'s edits start: x_t, its basis, and the Jacobian's conditioning."""
        model = self.check_sample(spec.sample)
        jac_cond = self.conditioning(model, spec.edit_prompt or spec.sample.prompt)
        return EditPoint(model, result.x_t, result.timestep, None if jac_cond is None else jac_cond.cond, result.basis, self.config.jvp_mode)

    def _render_batch(
        self, spec: BasisSpec, result: BasisResult, edits: Sequence[tuple[Tensor, float]], mode: str, substeps: int | None, preview_steps: int | None,
        sliders: Sequence[tuple[int, float] | None],
    ) -> list[Image.Image]:
        """Checked unit directions and strengths -> edited x_t's, denoised together.

        ``sliders``: per edit, (basis index, signed strength) when it moves one basis direction.
        Geodesic edits without explicit substeps go through the basis's cached paths
        (:attr:`paths`) once they are ready (:func:`~backend.paths.edits_on_paths`).
        """
        model = self.check_sample(spec.sample)
        traj = self.trajectory(spec.sample)
        cond = self.conditioning(model, spec.sample.prompt)
        point = self.edit_point(spec, result)
        paths = self.paths.cached(spec, result) if mode == "geodesic" and substeps is None and result.basis.k else None
        with self.slots.hold("render"):  # the basis, if any, was found (in the heavy slot) before
            try:
                xs = apply_edits(point, edits, mode, substeps) if paths is None else edits_on_paths(point, paths, edits, sliders)
            except EditError as exc:
                raise InputError(str(exc)) from None
            boost = Boost(spec.sample.seed) if self.boosted(model) else None
            return to_pil(render(model, xs, sub_schedule(traj.timesteps, result.index, preview_steps), cond, self.guidance(model, spec.sample), boost))

    def strip(self, spec: BasisSpec, index: int, strengths: Sequence[float], mode: str = "direct", *, preview_steps: int | None = None) -> list[Image.Image]:
        """Edits along one direction at several strengths, rendered in batches (an atlas row)."""
        return self.render_edits(spec, [(index, float(s)) for s in strengths], mode, preview_steps=preview_steps)

    def grid(self, spec: BasisSpec, strength: float = 1.0, columns: int = 5, mode: str = "direct") -> Image.Image:
        """One row per direction, edits from -strength to +strength; the original in the middle column."""
        check_strength(strength)
        check_int("columns", columns, 3, 15)
        if columns % 2 == 0:
            columns += 1
        result = self.discover(spec)
        values = np.linspace(-strength, strength, columns)
        rows = [self.strip(spec, i, values.tolist(), mode) for i in range(result.basis.k)]
        return image_grid(rows)
