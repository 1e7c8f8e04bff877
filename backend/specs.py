"""What a request names, and the checks every entry point shares.

A :class:`SampleSpec` determines one sampling trajectory and a :class:`BasisSpec` one local
basis; both are frozen, so they are the cache keys. The checks raise :class:`InputError` with a
message for the person who sent the value. The service, the saved-edit state, the CLI and the
page all import from here, so none of them needs another for a constant or a spec type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Mapping, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .basis import MAX_K, Basis, BasisProgress
from .errors import InputError
from .models import DiffusionModel, EditSettings
from .ranges import Calibration
from .sampling import DEFAULT_STEPS

#: Edit timestep as a fraction of the training schedule: early enough for coarse semantics
#: (method.md: t ~ 0.6-0.8 T), late enough that the seed's image is already decided.
#: A checkpoint's eigenface.json may recommend another (models.EditSettings).
DEFAULT_TIMESTEP = EditSettings().timestep
DEFAULT_K = 8
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000
BUILTIN_NAME = "catpeople"
BUILTIN_TEXT_NAME = "catpeople-text"
#: Largest |strength| accepted: ten times the noise's own scale is already far off the data.
MAX_STRENGTH = 10.0
#: Denoising steps of the quick image shown while a slider is being dragged (the page and the load test's check).
PREVIEW_STEPS = 5


@dataclass(frozen=True)
class SampleSpec:
    """Everything that determines one sampling trajectory."""

    model: str = BUILTIN_NAME
    seed: int = 0
    prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance_scale: float | None = None  # classifier-free guidance; None: the model's own (eigenface.json, else 7.5)


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
    #: Per direction, the calibrated valid range (lo, hi), strength units, lo < 0 < hi
    #: (backend/ranges.py); empty for a result without a basis.
    ranges: tuple[tuple[float, float], ...] = ()
    #: Per direction, strengths at evenly spaced slider positions u = -1 .. 1 (ranges.strength_at).
    travel: tuple[tuple[float, ...], ...] = ()


class Renderer(Protocol):
    """What the parts built on the service (names, the saved-direction library, the cat-people
    labeller) need from it; they depend on this, never on the service module."""

    def model(self, name: str) -> DiffusionModel: ...

    def settings(self, name: str) -> EditSettings: ...

    def generate(self, spec: SampleSpec) -> Image.Image: ...

    def point(self, spec: BasisSpec) -> BasisResult: ...

    def discover(self, spec: BasisSpec, progress: Callable[[BasisProgress], None] | None = None) -> BasisResult: ...

    def render_edits(self, spec: BasisSpec, edits: Sequence[tuple[int | Tensor, float]], mode: str = "direct", **options: Any) -> list[Image.Image]: ...

    def edit(self, spec: BasisSpec, strengths: Mapping[int, float] | Sequence[float], mode: str = "direct", **options: Any) -> Image.Image: ...

    def transport(self, source: Basis, direction: int | Tensor, target: Basis) -> Tensor: ...

    def direction_calibration(self, spec: BasisSpec, vector: Tensor, identity: Hashable) -> Calibration: ...


#: Names the directions of a basis: called as ``labeller(renderer, spec)``, returns one short
#: name per direction of ``renderer.discover(spec)``. Hosts register one per model they know.
Labeller = Callable[[Renderer, BasisSpec], Sequence[str]]


def basis_id(spec: BasisSpec, t: int) -> tuple:
    """What a basis (and everything derived from it: names, concept alignments) is keyed by."""
    return (spec.sample, t, spec.k, spec.edit_prompt or None)


#: A text concept is aligned on at least this many of the image's directions, whatever k the
#: sliders use: a concept's change spreads over many of them. On the built-in text model, "a
#: horse person" projected on the top 8 moves fur hue and smile more than horse on most seeds
#: (horse the largest change on 0 of 8 seeds at strength 1; 16: 5, 24: 6, 32: 7 of 8), and a
#: basis of 24 costs 0.26 s there against 0.15 s for 8 (BENCHMARKS.md, "Built-in text model").
CONCEPT_K = 24


def concept_basis_spec(spec: BasisSpec) -> BasisSpec:
    """The basis a concept is aligned on: the spec's own, widened to :data:`CONCEPT_K` directions."""
    return spec if spec.k >= CONCEPT_K else replace(spec, k=CONCEPT_K)


def cache_key(kind: str, spec: BasisSpec, t: int, *extra: Hashable) -> tuple:
    """The cache key of a basis ("basis") or of what is derived from it ("labels", "concept"):
    the service stores under it and the budget looks it up to price only what is missing."""
    return (kind, *basis_id(spec, t), *extra)


def guidance_scale(model: DiffusionModel, sample: SampleSpec) -> float:
    """The sample's guidance scale; None is the model's own (``eigenface.json``, else 7.5). The
    service samples with it, the budget prices with it, a saved direction records it."""
    return model.settings.guidance_scale if sample.guidance_scale is None else sample.guidance_scale


def timestep_index(model: DiffusionModel, timesteps: Sequence[int], value: int | float | str | None) -> int:
    """Index into the schedule of the point nearest a training timestep (int) or a fraction of T
    (float); None is the model's own setting (``eigenface.json``, else 0.6 T)."""
    t = parse_timestep(model.settings.timestep if value is None else value, model.num_train_timesteps)
    return int(np.argmin([abs(s - t) for s in timesteps]))


# --------------------------------------------------------------------------------- page ranges
@dataclass(frozen=True)
class Range:
    """A setting's allowed values: the page's control shows exactly these, and every public
    endpoint refuses what lies outside (a program gets no more than a visitor)."""

    low: float
    high: float
    step: float = 1

    def check(self, name: str, value: float) -> float:
        if not self.low <= value <= self.high:
            raise InputError(f"{name} must be within [{self.low:g}, {self.high:g}] (the page's range), got {value:g}")
        return value


#: The page's ranges of the basis settings, shared by its sliders (ui.explore) and the API checks (ui.editor).
PAGE_RANGES: dict[str, Range] = {
    "timestep": Range(0.05, 1.0, 0.01),
    "k": Range(1, MAX_K, 1),
    "steps": Range(2, 100, 1),
}


# --------------------------------------------------------------------------------- checks
def describe(value: Any, limit: int = 40) -> str:
    """A short repr for a message; safe for any value (an int past Python's digit limit has no repr)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {describe(value)}")
    if not low <= value <= high:
        raise InputError(f"{name} must be within [{low}, {high}], got {describe(value)}")
    return int(value)


def check_strength(value: Any, what: str = "strength") -> float:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value}")
    if abs(value) > MAX_STRENGTH:
        raise InputError(f"{what} must be within [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {value:g}")
    return value


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


def check_vector(vector: Any, shape: tuple[int, ...]) -> Tensor:
    """A finite, non-zero float direction of the model's sample shape."""
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


def unit(vector: Tensor) -> Tensor:
    return vector / vector.norm()


def slider_vector(strengths: Mapping[int, float] | Sequence[float], k: int) -> Tensor:
    """Slider values as a (k,) tensor, from a full list or a sparse {index: value} mapping."""
    values = torch.zeros(k)
    if not isinstance(strengths, (Mapping, list, tuple, Tensor)):
        raise InputError(f"slider values must be a list of numbers or an {{index: value}} mapping, got {type(strengths).__name__}")
    items = strengths.items() if isinstance(strengths, Mapping) else enumerate(strengths)
    for index, value in items:
        check_int("direction index", index, 0, k - 1)
        values[int(index)] = check_strength(value, f"strength of direction {index}")
    return values


def pairs(items: Any, what: str = "vectors") -> list[tuple[Any, Any]]:
    """A list of (direction, strength) pairs, or an InputError naming ``what``."""
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, (list, tuple)) and len(item) == 2 for item in items):
        raise InputError(f"{what} must be a list of (direction, strength) pairs")
    return [tuple(item) for item in items]
