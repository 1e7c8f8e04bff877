"""The one facade the CLI, the web app and the tests call.

It checks every input at the boundary (raising :class:`InputError` with a message for the
person), then composes the pieces: load -> sample -> basis -> edit -> render, with the
expensive results (trajectories, bases) in one byte-bounded LRU keyed by everything that
determines them. No maths lives here.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .basis import MAX_K, Basis, BasisProgress, default_block_size, local_basis
from .cache import ByteLRU
from .concepts import Alignment, align
from .edit import EDIT_MODES, apply_edit, check_strength, combine
from .errors import InputError
from .geometry import grassmann_distance, transport_direction
from .hspace import bottleneck_fn, jacobian_context
from .models import BUILTIN_MODEL, Conditioning, DiffusionModel, EditSettings, load_model
from .store import DirectionLibrary, SavedDirection
from .sampling import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    NoiseSchedule,
    Trajectory,
    denoise,
    predict_x0,
    sample_trajectory,
    sub_schedule,
    unet_output,
)

logger = logging.getLogger(__name__)

#: Edit timestep as a fraction of the training schedule: early enough for coarse semantics
#: (method.md: t ~ 0.6-0.8 T), late enough that the seed's image is already decided.
#: A checkpoint's eigenface.json may recommend another (models.EditSettings).
DEFAULT_TIMESTEP = EditSettings().timestep
DEFAULT_K = 8
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000
BUILTIN_NAME = "catpeople"
#: Where named directions are saved unless ServiceConfig.library_dir (or $EIGENFACE_LIBRARY) says otherwise.
DEFAULT_LIBRARY = "~/.cache/eigenface/directions"
#: Most edits :meth:`EigenfaceService.render_edits` denoises in one batch (memory, not speed, bounds it).
DEFAULT_RENDER_BATCH = 16


@dataclass(frozen=True)
class SampleSpec:
    """Everything that determines one sampling trajectory."""

    model: str = BUILTIN_NAME
    seed: int = 0
    prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE


@dataclass(frozen=True)
class BasisSpec:
    """Everything that determines one local basis: the sample, where along it, how many directions."""

    sample: SampleSpec
    timestep: int | float | str | None = None  # training timestep (int) or fraction of T (float); None: the model's setting
    k: int = DEFAULT_K
    edit_prompt: str | None = None  # conditioning for the Jacobian, if not the sampling prompt


@dataclass(frozen=True)
class BasisResult:
    basis: Basis
    x_t: Tensor
    timestep: int  # the integer training timestep of the schedule point used
    index: int  # its position in the DDIM schedule
    seconds: float  # time spent on the basis (0 when served from the cache)
    cached: bool
    warnings: tuple[str, ...] = ()


#: Names the directions of a basis: called as ``labeller(service, spec)`` after
#: ``service.discover(spec)``, returns one short name per direction.
Labeller = Callable[["EigenfaceService", BasisSpec], Sequence[str]]


@dataclass
class ServiceConfig:
    models: Mapping[str, str] = field(default_factory=lambda: {BUILTIN_NAME: str(BUILTIN_MODEL)})
    allow_any_model: bool = False  # CLI: any path or hub id; app: the allow-list only
    cache_bytes: int = 1 << 30
    device: str | None = None
    basis_chunk_size: int | None = None  # most directions per batched JVP / VJP
    jvp_mode: str = "fd"  # fd: central differences with the fast kernels; exact: forward AD (math attention)
    library_dir: str = field(default_factory=lambda: os.environ.get("EIGENFACE_LIBRARY") or DEFAULT_LIBRARY)
    #: Model name -> labeller. None: the cat-people labeller for every allow-listed name that
    #: points at the built-in model (its factors are known; other models have no ground truth).
    labellers: Mapping[str, Labeller] | None = None


class EigenfaceService:
    """Thread-safe: models load once, each cache entry is computed once, renders run in parallel."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = config or ServiceConfig()
        self.cache = ByteLRU(self.config.cache_bytes)
        self.library = DirectionLibrary(self.config.library_dir)
        self._models: dict[str, DiffusionModel] = {}
        self._load_lock = threading.Lock()
        self._library_lock = threading.Lock()
        self._chunks: dict[str, int] = {}  # per model: the basis chunk size that fit after an out-of-memory
        if self.config.labellers is None:
            self._labellers = {name: name_by_factor for name, source in self.config.models.items() if _is_builtin(source)}
        else:
            self._labellers = dict(self.config.labellers)

    # ----------------------------------------------------------------------------- models
    @property
    def model_names(self) -> list[str]:
        return list(self.config.models)

    def settings(self, name: str) -> EditSettings:
        """The model's recommended edit timestep, strength and seed. A local checkpoint's file is
        read without loading its weights: the page asks for them while it is being built."""
        source = self._source(name)
        if name not in self._models and (path := _local_path(source)) is not None:
            return EditSettings.read(path)
        return self.model(name).settings

    def model(self, name: str) -> DiffusionModel:
        """The loaded model for an allow-listed name (or, when allowed, any path or hub id)."""
        source = self._source(name)
        with self._load_lock:
            if name not in self._models:
                model = load_model(source, device=self.config.device)
                model.name = name
                self._models[name] = model
            return self._models[name]

    def _source(self, name: str) -> str:
        """Where an allow-listed name (or, when allowed, any path or hub id) loads from."""
        if not isinstance(name, str) or not name.strip():
            raise InputError("model must be a non-empty name")
        if name in self.config.models:
            return self.config.models[name]
        if self.config.allow_any_model:
            return name
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(self.config.models)}")

    # ----------------------------------------------------------------------------- cache
    @contextmanager
    def record_computed(self) -> Iterator[list[tuple[Hashable, Any]]]:
        """Collect the cache entries this thread computes (or adopts) inside the block.

        For a process that computes on behalf of another: a ZeroGPU worker is a throw-away fork,
        so it hands these back and the serving process keeps them (:meth:`adopt_computed`).
        Per thread (a context variable), so other requests served meanwhile are not mixed in.
        """
        entries: list[tuple[Hashable, Any]] = []
        token = _RECORDER.set(entries)
        try:
            yield entries
        finally:
            _RECORDER.reset(token)

    def adopt_computed(self, entries: Iterable[tuple[Hashable, Any]]) -> None:
        """Put entries that :meth:`record_computed` collected elsewhere into this service's cache."""
        for key, value in entries:
            self.cache.put(key, value)

    def _cached(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        value, cached = self.cache.get_or_compute(key, compute)
        if not cached:
            _record(key, value)
        return value, cached

    def _store(self, key: Hashable, value: Any) -> None:
        self.cache.put(key, value)
        _record(key, value)

    # ----------------------------------------------------------------------------- checks
    def check_sample(self, spec: SampleSpec) -> tuple[DiffusionModel, list[str]]:
        model = self.model(spec.model)
        warnings: list[str] = []
        _check_int("seed", spec.seed, 0, MAX_SEED)
        _check_int("steps", spec.steps, 1, min(MAX_STEPS, model.num_train_timesteps))
        if not isinstance(spec.prompt, str):
            raise InputError("prompt must be text")
        if spec.prompt and not model.conditional:
            raise InputError(f"model {spec.model!r} is unconditional: it takes no prompt")
        if not math.isfinite(spec.guidance_scale) or not 0 <= spec.guidance_scale <= 50:
            raise InputError(f"guidance_scale must be within [0, 50], got {spec.guidance_scale}")
        return model, warnings

    def resolve_timestep(self, model: DiffusionModel, timesteps: Sequence[int], value: int | float | str | None) -> int:
        """Index into the schedule of the point nearest a training timestep (int) or a fraction of T
        (float); None is the model's own setting (``eigenface.json``, else 0.6 T)."""
        t = parse_timestep(model.settings.timestep if value is None else value, model.num_train_timesteps)
        return int(np.argmin([abs(s - t) for s in timesteps]))

    # ----------------------------------------------------------------------------- sampling
    def conditioning(self, model: DiffusionModel, prompt: str | None) -> Conditioning | None:
        if not model.conditional:
            return None
        key = ("cond", model.name, prompt or "")
        return self._cached(key, lambda: model.encode_prompt(prompt or ""))[0]

    def trajectory(self, spec: SampleSpec) -> Trajectory:
        model, _ = self.check_sample(spec)
        cond = self.conditioning(model, spec.prompt)

        def compute() -> Trajectory:
            return sample_trajectory(model, spec.seed, spec.steps, cond, spec.guidance_scale)

        return self._cached(("trajectory", spec), compute)[0]

    def generate(self, spec: SampleSpec) -> Image.Image:
        model, _ = self.check_sample(spec)
        return to_pil(model.decode(self.trajectory(spec).x0[None]))[0]

    # ----------------------------------------------------------------------------- bases
    def discover(self, spec: BasisSpec, progress: Callable[[BasisProgress], None] | None = None) -> BasisResult:
        """The local basis at (model, prompt, seed, timestep, k[, edit prompt]), cached."""
        model, warnings = self.check_sample(spec.sample)
        _check_int("k", spec.k, 1, MAX_K)
        if spec.edit_prompt and not model.conditional:
            raise InputError("an edit prompt needs a text-conditioned model")
        traj = self.trajectory(spec.sample)
        index = self.resolve_timestep(model, traj.timesteps, spec.timestep)
        t = traj.timesteps[index]
        cond = self.conditioning(model, spec.edit_prompt or spec.sample.prompt)
        if cond is not None and cond.truncated:
            warnings.append(f"the prompt is longer than {model.max_prompt_tokens} tokens and was truncated")
        key = ("basis", *_basis_id(spec, t))
        x_t = traj.latents[index]

        def compute() -> tuple[Basis, float]:
            start = time.perf_counter()
            basis = self._basis(model, x_t, t, cond, spec.k, progress)
            return basis.to("cpu"), time.perf_counter() - start

        (basis, seconds), cached = self._cached(key, compute)
        return BasisResult(basis, x_t, t, index, 0.0 if cached else seconds, cached, tuple(warnings))

    def _jvp_mode(self, model: DiffusionModel) -> str:
        # fd is the faster of the two on CPU and GPU (BENCHMARKS.md) at ~1e-4 relative sigma error.
        return self.config.jvp_mode

    def _basis(self, model: DiffusionModel, x_t: Tensor, t: int, cond: Conditioning | None, k: int, progress, init: Tensor | None = None) -> Basis:
        """``local_basis`` in chunks that fit the device: on out-of-memory the chunk is halved and the
        solve retried, and the size that worked is kept for the model's later bases. On an H200,
        SD 1.5 with k = 50 peaked at 19 GB in chunks of 20 and 9.5 GB in chunks of 10 at the same
        speed (BENCHMARKS.md), so a smaller GPU loses little by backing off."""
        mode = self._jvp_mode(model)
        h_fn = bottleneck_fn(model, t, None if cond is None else cond.cond)
        chunk = self._chunks.get(model.name, self.config.basis_chunk_size)
        while True:
            try:
                with jacobian_context(mode == "exact"):
                    return local_basis(
                        h_fn,
                        x_t.to(model.device, torch.float32),
                        k,
                        init=None if init is None else init.to(model.device),
                        chunk_size=chunk,
                        jvp_mode=mode,
                        generator=torch.Generator().manual_seed(0),
                        callback=progress,
                    )
            except ValueError as exc:  # k beyond what this model's bottleneck can give
                raise InputError(str(exc)) from None
            except torch.OutOfMemoryError:
                if model.device.type == "cuda":
                    torch.cuda.empty_cache()
                tried = chunk or default_block_size(k, model.device)  # None = the whole block at once
                if tried <= 1:
                    raise InputError(f"out of memory computing {k} directions, even one at a time; try a smaller k") from None
                chunk = tried // 2
                with self._load_lock:
                    self._chunks[model.name] = min(chunk, self._chunks.get(model.name, chunk))
                logger.warning("out of memory computing %d directions on %s: retrying in chunks of %d", k, model.name, chunk)

    def adopt_basis(self, spec: BasisSpec, basis: Basis, x_t: Tensor) -> bool:
        """Use a saved basis for ``spec`` if it was computed at this very x_t (else recompute later)."""
        traj, index = self._schedule_point(spec)
        if basis.k != spec.k or x_t.shape != traj.latents[index].shape or not torch.equal(x_t, traj.latents[index]):
            return False
        self._store(("basis", *_basis_id(spec, traj.timesteps[index])), (basis, 0.0))
        return True

    def _schedule_point(self, spec: BasisSpec) -> tuple[Trajectory, int]:
        """The sample's trajectory and the schedule index of the spec's timestep."""
        model, _ = self.check_sample(spec.sample)
        traj = self.trajectory(spec.sample)
        return traj, self.resolve_timestep(model, traj.timesteps, spec.timestep)

    # ----------------------------------------------------------------------------- labels
    def has_labeller(self, model: str) -> bool:
        """Whether the directions of this model's bases can be named (:meth:`labels`)."""
        return model in self._labellers

    def labels(self, spec: BasisSpec, *, compute: bool = True) -> tuple[str, ...] | None:
        """One name per direction of ``discover(spec)``, from the model's labeller; cached with the basis.

        Naming renders edits along every direction (about twice a basis's time on a CPU for the
        built-in model), so it is a separate call, not part of :meth:`discover`. With
        ``compute=False`` only cached names are returned (None when there are none yet).
        """
        labeller = self._labellers.get(spec.sample.model)
        if labeller is None:
            if not compute:
                return None
            raise InputError(f"model {spec.sample.model!r} cannot name its directions: self-naming sliders need a model with known factors, like the built-in {BUILTIN_NAME!r}")
        if not compute:
            traj, index = self._schedule_point(spec)
            return self.cache.get(("labels", *_basis_id(spec, traj.timesteps[index])))
        result = self.discover(spec)
        key = ("labels", *_basis_id(spec, result.timestep))

        def name_all() -> tuple[str, ...]:
            names = tuple(str(name) for name in labeller(self, spec))
            if len(names) != result.basis.k:
                raise RuntimeError(f"the labeller of {spec.sample.model!r} gave {len(names)} names for {result.basis.k} directions")
            return names

        return self._cached(key, name_all)[0]

    # ----------------------------------------------------------------------------- geometry
    def transport(self, source: Basis, direction: int | Tensor, target: Basis) -> Tensor:
        """A direction of the source basis (an index, or any vector in its span) carried into the target's tangent space."""
        if isinstance(direction, int):
            _check_int("direction index", direction, 0, source.k - 1)
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
        to the concept. "Toward" the concept is the returned direction's positive side.
        """
        model, _ = self.check_sample(spec.sample)
        if not model.conditional:
            raise InputError(f"model {spec.sample.model!r} has no text encoder: directions from text need a text-conditioned model (Stable Diffusion)")
        if not isinstance(concept, str) or not concept.strip():
            raise InputError("the concept must be non-empty text")
        if space not in ("x", "h"):
            raise InputError(f"space must be 'x' or 'h', got {space!r}")
        result = self.discover(spec)
        key = ("concept", *_basis_id(spec, result.timestep), concept, space)
        return self._cached(key, lambda: self._align(model, spec, result, concept, space))[0], result

    def _align(self, model: DiffusionModel, spec: BasisSpec, result: BasisResult, concept: str, space: str) -> Alignment:
        base = self.conditioning(model, spec.sample.prompt)
        target_cond = self.conditioning(model, concept)
        x = result.x_t.to(model.device, torch.float32)[None]
        with torch.no_grad():
            if space == "x":
                noise = NoiseSchedule.from_config(model.scheduler_config)
                outputs = [unet_output(model, x, result.timestep, c.cond) for c in (target_cond, base)]
                target = predict_x0(noise, x, outputs[0], result.timestep)[0] - predict_x0(noise, x, outputs[1], result.timestep)[0]
            else:
                target = bottleneck_fn(model, result.timestep, target_cond.cond)(x) - bottleneck_fn(model, result.timestep, base.cond)(x)
        try:
            return align(result.basis, target[0].cpu(), space)
        except ValueError as exc:
            raise InputError(str(exc)) from None

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
        values = _slider_vector(strengths, spec.k)
        extra = [(_unit(check_vector(v, model.sample_shape)), check_strength(s)) for v, s in _pairs(vectors)]
        uses_basis = bool(values.any()) or mode == "geodesic"
        result = self.discover(spec) if uses_basis else self._point(spec)
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
        return self._render_batch(spec, result, [(direction, strength)], mode, substeps, preview_steps)[0]

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
        _check_int("batch_size", batch_size, 1, 256)
        edits = _pairs(edits, "edits")
        uses_basis = mode == "geodesic" or any(not isinstance(d, Tensor) for d, _ in edits)
        result = self.discover(spec) if uses_basis else self._point(spec)
        moves = []
        for d, strength in edits:
            if isinstance(d, Tensor):
                v = _unit(check_vector(d, model.sample_shape))
            else:
                v = result.basis.v[_check_int("direction index", d, 0, result.basis.k - 1)]
            moves.append((v, check_strength(strength)))
        images: list[Image.Image] = []
        for first in range(0, len(moves), batch_size):
            images += self._render_batch(spec, result, moves[first : first + batch_size], mode, substeps, preview_steps)
        return images

    def _check_edit(self, spec: BasisSpec, mode: str, substeps: int | None, preview_steps: int | None) -> DiffusionModel:
        """Refuse bad edit options before any basis is computed for them."""
        model, _ = self.check_sample(spec.sample)
        _check_int("k", spec.k, 1, MAX_K)
        if mode not in EDIT_MODES:
            raise InputError(f"mode must be one of {', '.join(EDIT_MODES)}, got {mode!r}")
        if substeps is not None:
            _check_int("substeps", substeps, 1, 256)
        if preview_steps is not None:
            _check_int("preview_steps", preview_steps, 1, MAX_STEPS)
        return model

    def _point(self, spec: BasisSpec) -> BasisResult:
        """x_t without a basis (modes that need none)."""
        traj, index = self._schedule_point(spec)
        empty = Basis(torch.zeros(0), torch.zeros(0), torch.zeros(0), 0, True)
        return BasisResult(empty, traj.latents[index], traj.timesteps[index], index, 0.0, True)

    def _render_batch(self, spec: BasisSpec, result: BasisResult, edits: Sequence[tuple[Tensor, float]], mode: str, substeps: int | None, preview_steps: int | None) -> list[Image.Image]:
        """Checked unit directions and strengths -> edited x_t's, denoised together."""
        model, _ = self.check_sample(spec.sample)
        traj = self.trajectory(spec.sample)
        cond = self.conditioning(model, spec.sample.prompt)
        jac_cond = self.conditioning(model, spec.edit_prompt or spec.sample.prompt)
        context = None if jac_cond is None else jac_cond.cond
        h_fn = bottleneck_fn(model, result.timestep, context)
        jvp_mode = self._jvp_mode(model)
        xs = []
        for direction, strength in edits:
            if strength == 0.0:
                xs.append(result.x_t)
                continue
            with jacobian_context(jvp_mode == "exact"):
                xs.append(
                    apply_edit(
                        model, result.x_t, result.timestep, h_fn, direction, strength, mode,
                        context=context, basis=result.basis, substeps=substeps, jvp_mode=jvp_mode,
                    ).cpu()
                )
        timesteps = sub_schedule(traj.timesteps, result.index, preview_steps)
        x0 = denoise(model, torch.stack(xs), timesteps, cond, spec.sample.guidance_scale)
        return to_pil(model.decode(x0))

    def strip(self, spec: BasisSpec, index: int, strengths: Sequence[float], mode: str = "direct", *, preview_steps: int | None = None) -> list[Image.Image]:
        """Edits along one direction at several strengths, rendered in batches (an atlas row)."""
        return self.render_edits(spec, [(index, float(s)) for s in strengths], mode, preview_steps=preview_steps)

    def grid(self, spec: BasisSpec, strength: float = 1.0, columns: int = 5, mode: str = "direct") -> Image.Image:
        """One row per direction, edits from -strength to +strength; the original in the middle column."""
        check_strength(strength)
        _check_int("columns", columns, 3, 15)
        if columns % 2 == 0:
            columns += 1
        result = self.discover(spec)
        values = np.linspace(-strength, strength, columns)
        rows = [self.strip(spec, i, values.tolist(), mode) for i in range(result.basis.k)]
        return image_grid(rows)

    # ----------------------------------------------------------------------------- saved directions
    def save_direction(
        self,
        name: str,
        spec: BasisSpec,
        strengths: Mapping[int, float] | Sequence[float] | None = None,
        *,
        index: int | None = None,
        overwrite: bool = False,
    ) -> SavedDirection:
        """Save the combined slider edit (``strengths``) or one basis direction (``index``) as ``name``.

        The file holds the unit direction; its provenance records the image it was found at
        (model, prompt, seed, steps, timestep, k), what it was made of, and the total slider
        strength, so that it can be checked, traced and transported later. An existing name is
        refused unless ``overwrite``: the web app's library is shared by its visitors.
        """
        if (strengths is None) == (index is None):
            raise InputError("save either slider values or one direction index")
        self.library.check_writable(name, overwrite)  # before the basis, which may take seconds
        model, _ = self.check_sample(spec.sample)
        result = self.discover(spec)
        if index is not None:
            index = _check_int("direction index", index, 0, result.basis.k - 1)
            direction, strength, made_of = result.basis.v[index], 1.0, {"index": index}
        else:
            values = _slider_vector(strengths, result.basis.k)
            direction, strength = combine(result.basis.v, values)
            if strength == 0.0:
                raise InputError("every slider is at zero: there is no edit to save; move a slider or save one direction")
            made_of = {"sliders": {str(i): round(float(v), 6) for i, v in enumerate(values.tolist()) if v != 0.0}}
        sample = spec.sample
        provenance = {
            "model": sample.model, "prompt": sample.prompt, "seed": sample.seed, "steps": sample.steps,
            "guidance_scale": sample.guidance_scale, "timestep": result.timestep, "k": result.basis.k,
            "edit_prompt": spec.edit_prompt or "", "shape": list(model.sample_shape), **made_of, "strength": round(strength, 6),
        }
        with self._library_lock:
            return self.library.save(name, direction, provenance, overwrite=overwrite)

    def delete_direction(self, name: str) -> Path:
        """Remove a saved direction (CLI and library use: the web app's library is shared by its
        visitors, so the app offers no delete)."""
        with self._library_lock:
            return self.library.delete(name)

    def saved_directions(self) -> list[SavedDirection]:
        """The library's directions, by name (every model's: :meth:`saved_vector` checks the fit)."""
        return self.library.list()

    def saved_vector(self, name: str, spec: BasisSpec, *, transport: bool = False) -> Tensor:
        """A saved direction, checked against the image it is to move.

        A direction belongs to one model's sample space: another model's (by its provenance) or
        another shape is refused. ``transport`` carries it from the image it was saved at into
        this image's local basis (parallel transport), for a direction saved at another seed or
        timestep; at the image it was saved at, that leaves it as it is (it lies in that span).
        """
        model, _ = self.check_sample(spec.sample)
        vector, provenance = self.library.load(name)
        saved_model = provenance.get("model")
        if saved_model is not None and saved_model != spec.sample.model:
            raise InputError(f"direction {name!r} was saved on model {saved_model!r}; this image is from {spec.sample.model!r}, whose sample space it does not belong to")
        if tuple(vector.shape) != tuple(model.sample_shape):
            raise InputError(f"direction {name!r} has shape {tuple(vector.shape)}, but {spec.sample.model!r} samples have shape {tuple(model.sample_shape)}")
        vector = check_vector(vector, model.sample_shape)
        if not transport:
            return vector
        source = self.discover(_saved_spec(name, provenance)).basis
        return self.transport(source, vector, self.discover(spec).basis)

    def edit_saved(self, spec: BasisSpec, name: str, strength: float, strengths: Mapping[int, float] | Sequence[float] = (), mode: str = "direct", *, transport: bool = False, substeps: int | None = None, preview_steps: int | None = None) -> Image.Image:
        """The slider edit plus the saved direction ``name`` at ``strength`` (see :meth:`saved_vector`)."""
        vector = self.saved_vector(name, spec, transport=transport)
        return self.edit(spec, strengths, mode, vectors=[(vector, strength)], substeps=substeps, preview_steps=preview_steps)

    def edit_concept(self, spec: BasisSpec, concept: str, strength: float, strengths: Mapping[int, float] | Sequence[float] = (), mode: str = "direct", *, space: str = "x", substeps: int | None = None, preview_steps: int | None = None) -> Image.Image:
        """The slider edit plus a move toward (strength > 0) or away from a text concept (:meth:`find_concept`)."""
        alignment, _ = self.find_concept(spec, concept, space)
        return self.edit(spec, strengths, mode, vectors=[(alignment.direction, strength)], substeps=substeps, preview_steps=preview_steps)


# --------------------------------------------------------------------------------- helpers
#: The list :meth:`EigenfaceService.record_computed` is filling in this thread, if any.
_RECORDER: ContextVar[list[tuple[Hashable, Any]] | None] = ContextVar("eigenface_recorder", default=None)


def _record(key: Hashable, value: Any) -> None:
    entries = _RECORDER.get()
    if entries is not None:
        entries.append((key, value))


def _basis_id(spec: BasisSpec, t: int) -> tuple:
    """What a basis (and everything derived from it: names, concept alignments) is keyed by."""
    return (spec.sample, t, spec.k, spec.edit_prompt or None)


def _is_builtin(source: str) -> bool:
    return _local_path(source) == BUILTIN_MODEL.resolve()


def _local_path(source: str) -> Path | None:
    """The resolved directory a model source names, or None for a hub id (or no such directory)."""
    try:
        path = Path(source).expanduser()
        return path.resolve() if path.is_dir() else None
    except (OSError, RuntimeError, ValueError):
        return None


def canonical_model_name(name: str, models: Mapping[str, str]) -> str:
    """One name per model, however it was typed.

    Caches, saved directions and labellers are keyed by the model name, so ``./my-model``,
    ``my-model/`` and its absolute path must not count as three models, and a path to an
    allow-listed model's directory is that model. Allow-listed names and hub ids pass unchanged.
    """
    if name in models:
        return name
    path = _local_path(name)
    if path is None:
        return name
    for listed, source in models.items():
        if _local_path(source) == path:
            return listed
    return str(path)


def name_by_factor(service: EigenfaceService, spec: BasisSpec) -> list[str]:
    """The built-in model's labeller: each direction is named after the cat-people factor its
    edits move most at half and at the full recommended strength (eigenface.json), or
    "mixed (top: ...)" when no factor dominates at both (backend.catpeople.semantics)."""
    from .catpeople.semantics import MIXED, label_directions

    strength = service.settings(spec.sample.model).strength
    return [label.label if label.label != MIXED else f"{MIXED} (top: {label.top})" for label in label_directions(service, spec, strength=strength)]


def _saved_spec(name: str, provenance: Mapping[str, Any]) -> BasisSpec:
    """The basis a saved direction was found in, from its provenance."""
    try:
        sample = SampleSpec(
            model=provenance["model"], seed=provenance["seed"], prompt=provenance["prompt"], steps=provenance["steps"],
            guidance_scale=float(provenance.get("guidance_scale", DEFAULT_GUIDANCE)),
        )
        return BasisSpec(sample, timestep=provenance["timestep"], k=provenance["k"], edit_prompt=provenance.get("edit_prompt") or None)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"direction {name!r} does not record the image it was found at, so it cannot be transported; apply it as saved") from None


def _pairs(items: Any, what: str = "vectors") -> list[tuple[Any, Any]]:
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, (list, tuple)) and len(item) == 2 for item in items):
        raise InputError(f"{what} must be a list of (direction, strength) pairs")
    return [tuple(item) for item in items]


def _unit(vector: Tensor) -> Tensor:
    return vector / vector.norm()


def parse_timestep(value: int | float | str, num_train_timesteps: int) -> float:
    """A training timestep from an int (0..T-1) or a fraction of T (a float in (0, 1])."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise InputError(f"timestep must be an integer training timestep or a fraction like 0.6, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"timestep must be a number, got {value!r}")
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or not 0 < value <= 1:
            raise InputError(f"a fractional timestep must be within (0, 1], got {value}")
        return value * (num_train_timesteps - 1)
    if not 0 <= value < num_train_timesteps:
        raise InputError(f"timestep must be within [0, {num_train_timesteps - 1}], got {value}")
    return float(value)


def check_vector(vector: Tensor, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(vector, Tensor) or not vector.is_floating_point():
        raise InputError("a direction must be a floating-point tensor")
    if tuple(vector.shape) != tuple(shape):
        raise InputError(f"direction has shape {tuple(vector.shape)}, this model's samples have shape {tuple(shape)}")
    vector = vector.float()
    if not torch.isfinite(vector).all():
        raise InputError("direction contains NaN or inf")
    if float(vector.norm()) == 0.0:
        raise InputError("direction is all zeros")
    return vector


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be within [{low}, {high}], got {value}")
    return int(value)


def _slider_vector(strengths: Mapping[int, float] | Sequence[float], k: int) -> Tensor:
    """Slider values as a (k,) tensor, from a full list or a sparse {index: value} mapping."""
    values = torch.zeros(k)
    if not isinstance(strengths, (Mapping, list, tuple, Tensor)):
        raise InputError(f"slider values must be a list of numbers or an {{index: value}} mapping, got {type(strengths).__name__}")
    items = strengths.items() if isinstance(strengths, Mapping) else enumerate(strengths)
    for index, value in items:
        _check_int("direction index", index, 0, k - 1)
        values[int(index)] = check_strength(value, f"strength of direction {index}")
    return values


def to_pil(images: Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [0, 1] -> RGB PIL images (rounded, so equal tensors give equal bytes).

    Always RGB, so every strip, grid and GIF can mix images freely: a grayscale model (one
    channel, or gray plus alpha) is shown as gray, an RGBA one without its alpha.
    """
    if images.shape[1] < 3:
        images = images[:, :1].expand(-1, 3, -1, -1)
    images = images[:, :3]
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def image_grid(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * w, r * h))
    return grid

