"""What an edit does, in ground-truth terms: the cat-people factors it moves.

The built-in model draws faces whose generative factors are known, and the factor estimator
reads them back from any image. That turns "is this direction semantic?" into numbers:

* :func:`factor_response` - how much each estimated factor changes when the sample is edited
  along one basis direction (or any vector) at a few strengths;
* :func:`label_directions` - a name for every slider: the factor its direction mostly moves
  at every strength measured, or ``"mixed"`` when no factor dominates (issue 8, "sliders that
  name themselves");
* :func:`semantic_ratio` - top Jacobian directions against random directions of the same
  strength: a semantic basis moves the factors several times more than noise does.

Every change is an absolute difference of estimated factors in [0, 1], circular for ``hue``
(:func:`~backend.catpeople.estimator.factor_distance`), averaged over the strengths given.
Everything renders through the :class:`~backend.specs.Renderer` protocol (the service), so the
cache and the input checks of the service apply unchanged, and this module never imports it.
:func:`labellers_for` is how a host registers the labeller for the built-in model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..images import pil_to_tensor
from ..registry import is_builtin
from ..specs import BUILTIN_NAME, BasisSpec, Labeller, Renderer, SampleSpec
from .estimator import FactorEstimator, factor_distance
from .render import FACTORS, NUM_FACTORS

#: The estimator shipped with the built-in model.
DEFAULT_ESTIMATOR = Path(__file__).resolve().parents[2] / "assets" / "estimator"
#: Edit strength (RMS per element of x_t) used for labels and the semantic check: clear
#: semantic edits without the noise that strengths above ~0.7 bring (backend/edit.py).
DEFAULT_STRENGTH = 0.5
#: A direction is named after its top factor when that factor changes at least this many
#: times more than the runner-up.
DEFAULT_DOMINANCE = 2.0
MIXED = "mixed"


@lru_cache(maxsize=4)
def _load_estimator(directory: str) -> FactorEstimator:
    return FactorEstimator.load(directory)


def default_estimator() -> FactorEstimator:
    """The shipped factor estimator (loaded once per process)."""
    return _load_estimator(str(DEFAULT_ESTIMATOR))


# ------------------------------------------------------------------------------- responses
@dataclass(frozen=True)
class EditResponse:
    """Estimated factors of an unedited image and of its edits."""

    base: Tensor  # (F,) factors of the unedited image
    edited: Tensor  # (S, F) factors of the edits, one row per strength
    strengths: tuple[float, ...]
    base_is_face: bool
    edited_is_face: Tensor  # (S,) bool

    @property
    def changes(self) -> Tensor:
        """(S, F) absolute factor change of each edit (circular for hue)."""
        return factor_distance(self.edited, self.base.expand_as(self.edited).clone())

    @property
    def response(self) -> Tensor:
        """(F,) mean absolute change over the strengths."""
        return self.changes.mean(dim=0)

    @property
    def total(self) -> float:
        """Sum over factors of :attr:`response`."""
        return float(self.response.sum())


def _check_strengths(strengths: Iterable[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in strengths)
    if not values:
        raise InputError("give at least one strength")
    return values


def edit_responses(
    service: Renderer,
    spec: BasisSpec,
    directions: Sequence[int | Tensor],
    strengths: Sequence[float] = (-DEFAULT_STRENGTH, DEFAULT_STRENGTH),
    *,
    estimator: FactorEstimator | None = None,
    mode: str = "direct",
    batch_size: int = 16,
) -> list[EditResponse]:
    """:class:`EditResponse` for several directions at once, rendered in batches.

    Each item of ``directions`` is an index into ``service.discover(spec)`` or a vector of the
    model's sample shape (normalised, as :meth:`EigenfaceService.edit_vector` does).
    """
    estimator = estimator or default_estimator()
    strengths = _check_strengths(strengths)
    if not directions:
        return []
    # One batched render: many edits of one sample share each U-Net call (much faster on a CPU).
    images = service.render_edits(spec, [(d, st) for d in directions for st in strengths], mode, batch_size=batch_size)
    base = pil_to_tensor(service.generate(spec.sample))
    edited = pil_to_tensor(images)
    factors = estimator.estimate(torch.cat([base, edited]))
    faces = estimator.is_face(torch.cat([base, edited]))
    s = len(strengths)
    return [
        EditResponse(factors[0], factors[1 + i * s : 1 + (i + 1) * s], strengths, bool(faces[0]), faces[1 + i * s : 1 + (i + 1) * s])
        for i in range(len(directions))
    ]


def factor_response(
    service: Renderer,
    spec: BasisSpec,
    direction_index: int | None = None,
    vector: Tensor | None = None,
    strengths: Sequence[float] = (-DEFAULT_STRENGTH, DEFAULT_STRENGTH),
    *,
    estimator: FactorEstimator | None = None,
    mode: str = "direct",
) -> Tensor:
    """(F,) mean absolute change of each estimated factor between the sample and its edits.

    Exactly one of ``direction_index`` (a direction of ``service.discover(spec)``) and
    ``vector`` (any tensor of the model's sample shape; it is normalised) must be given.
    Factors are in the order of :data:`~backend.catpeople.render.FACTORS`; hue changes take
    the short way round the circle.
    """
    if (direction_index is None) == (vector is None):
        raise InputError("give exactly one of direction_index and vector")
    return edit_responses(service, spec, [direction_index if vector is None else vector], strengths, estimator=estimator, mode=mode)[0].response


# ---------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class DirectionLabel:
    """The name of one slider: the factor its direction mostly moves, or ``"mixed"``."""

    index: int
    label: str  # a factor name, or "mixed"
    response: Tensor  # (F,) mean absolute change of each factor
    ratio: float  # top factor's change / the runner-up's (inf when the runner-up is 0); the least over magnitudes

    @property
    def top(self) -> str:
        """The factor that changes most, whether or not it dominates."""
        return FACTORS[int(self.response.argmax())]

    @property
    def total(self) -> float:
        return float(self.response.sum())

    def as_dict(self) -> dict:
        """JSON-friendly form (for the CLI and the web app)."""
        return {
            "index": self.index,
            "label": self.label,
            "top": self.top,
            "ratio": None if math.isinf(self.ratio) else round(self.ratio, 4),
            "response": {name: round(float(r), 5) for name, r in zip(FACTORS, self.response)},
        }


def label_from_response(index: int, response: Tensor, dominance: float = DEFAULT_DOMINANCE) -> DirectionLabel:
    """Name a direction from its factor response, (F,) or (M, F) with one row per edit magnitude.

    The candidate is the factor that changes most on average; it names the direction only if,
    at every magnitude, it changes at least ``dominance`` times more than any other factor: a
    slider keeps its name over its range, not just at the one strength it was measured at.
    """
    rows = response.reshape(-1, response.shape[-1]).double()
    if rows.shape[-1] != NUM_FACTORS or rows.shape[0] == 0:
        raise ValueError(f"response must have shape ({NUM_FACTORS},) or (M, {NUM_FACTORS}), got {tuple(response.shape)}")
    if not dominance >= 1.0:
        raise InputError(f"dominance must be at least 1, got {dominance}")
    mean = rows.mean(dim=0)
    top = int(mean.argmax())
    first, second = rows[:, top], torch.cat([rows[:, :top], rows[:, top + 1 :]], dim=1).amax(dim=1)
    per_row = torch.where(second > 0, first / second.clamp_min(1e-300), torch.where(first > 0, math.inf, 1.0))
    ratio = float(per_row.min())
    label = FACTORS[top] if float(first.min()) > 0 and ratio >= dominance else MIXED
    return DirectionLabel(index, label, mean.to(response.dtype), ratio)


def label_magnitudes(strength: float) -> tuple[float, float]:
    """The edit magnitudes a label is measured at: half the strength and the full strength."""
    return (strength / 2, strength)


def label_directions(
    service: Renderer,
    spec: BasisSpec,
    estimator: FactorEstimator | None = None,
    strength: float = DEFAULT_STRENGTH,
    dominance: float = DEFAULT_DOMINANCE,
    *,
    mode: str = "direct",
) -> list[DirectionLabel]:
    """One :class:`DirectionLabel` per direction of ``service.discover(spec)``, from edits at
    +-strength / 2 and +-strength (:func:`label_magnitudes`)."""
    k = service.discover(spec).basis.k
    magnitudes = label_magnitudes(strength)
    strengths = tuple(sign * m for m in magnitudes for sign in (-1, 1))
    responses = edit_responses(service, spec, list(range(k)), strengths, estimator=estimator, mode=mode)
    # (M, F): mean change over the two signs of each magnitude
    return [label_from_response(i, r.changes.reshape(len(magnitudes), 2, -1).mean(dim=1), dominance) for i, r in enumerate(responses)]


# ---------------------------------------------------------------------------- semantic ratio
@dataclass(frozen=True)
class SeedSemantics:
    """Top-k directions vs random directions at one sample."""

    seed: int
    direction_response: Tensor  # (k, F)
    random_response: Tensor  # (n_random, F)
    base_is_face: bool
    direction_face_rate: float  # fraction of direction edits the estimator still reads as a face
    random_face_rate: float

    @property
    def direction_total(self) -> Tensor:
        """(k,) total factor change (sum over factors) of each top direction."""
        return self.direction_response.sum(dim=1)

    @property
    def random_total(self) -> Tensor:
        """(n_random,) total factor change of each random direction."""
        return self.random_response.sum(dim=1)

    @property
    def ratio(self) -> float:
        """Mean total change along the top directions / along the random ones."""
        return _ratio(self.direction_total, self.random_total)

    def labels(self, dominance: float = DEFAULT_DOMINANCE) -> list[DirectionLabel]:
        return [label_from_response(i, r, dominance) for i, r in enumerate(self.direction_response)]


@dataclass(frozen=True)
class SemanticRatio:
    """Result of :func:`semantic_ratio` over several seeds."""

    per_seed: tuple[SeedSemantics, ...]
    k: int
    n_random: int
    strength: float
    timestep: int | float | str
    seconds: float = field(default=0.0, compare=False)

    @property
    def seeds(self) -> list[int]:
        return [s.seed for s in self.per_seed]

    @property
    def direction_total(self) -> Tensor:
        """(seeds, k) total factor change along each top direction."""
        return torch.stack([s.direction_total for s in self.per_seed])

    @property
    def random_total(self) -> Tensor:
        """(seeds, n_random) total factor change along each random direction."""
        return torch.stack([s.random_total for s in self.per_seed])

    @property
    def ratio(self) -> float:
        """Mean over all seeds' top-k totals / mean over all seeds' random totals."""
        return _ratio(self.direction_total, self.random_total)

    @property
    def per_seed_ratio(self) -> list[float]:
        return [s.ratio for s in self.per_seed]


def _ratio(directions: Tensor, random: Tensor) -> float:
    denominator = float(random.mean())
    return float(directions.mean()) / denominator if denominator > 0 else math.inf


#: Mixes the seed of random directions, so that their generator never replays a sample's own
#: initial noise: ``initial_noise(model, s)`` is ``randn`` from ``manual_seed(s)``, and a
#: "random" direction equal to x_T is far from random (moving along it scales the noise).
_STREAM = 0x9E3779B97F4A7C15


def random_directions(shape: Sequence[int], n: int, seed: int) -> Tensor:
    """``n`` random unit directions (n, *shape), standard normal then normalised; seeded.

    The generator is seeded from ``seed`` through a mixing constant, so that it is not the
    stream that draws the initial noise of sample ``seed`` (see :data:`_STREAM`).
    """
    g = torch.Generator().manual_seed((seed * _STREAM + 0x5EED) % (2**63))
    v = torch.randn(n, *shape, generator=g)
    return v / v.flatten(1).norm(dim=1).reshape(n, *([1] * len(shape)))


def seed_responses(
    service: Renderer,
    spec: BasisSpec,
    n_random: int,
    strengths: Sequence[float],
    *,
    estimator: FactorEstimator | None = None,
    random_seed: int = 0,
    mode: str = "direct",
) -> tuple[list[EditResponse], list[EditResponse]]:
    """The :class:`EditResponse` of each top-``spec.k`` direction and of ``n_random`` random
    directions at one sample, edits at each of ``strengths``, rendered in one batched call:
    what :func:`seed_semantics` sums up, and what the evaluation (bench/catpeople_eval.py)
    tabulates strength by strength."""
    if n_random < 1:
        raise InputError(f"n_random must be at least 1, got {n_random}")
    model = service.model(spec.sample.model)
    k = service.discover(spec).basis.k
    # Random directions depend on the sample's seed too, so different seeds see different ones.
    vectors = random_directions(model.sample_shape, n_random, random_seed * 1_000_003 + spec.sample.seed)
    responses = edit_responses(service, spec, list(range(k)) + list(vectors), strengths, estimator=estimator, mode=mode)
    return responses[:k], responses[k:]


def seed_semantics(
    service: Renderer,
    spec: BasisSpec,
    n_random: int,
    strength: float = DEFAULT_STRENGTH,
    *,
    estimator: FactorEstimator | None = None,
    random_seed: int = 0,
    mode: str = "direct",
) -> SeedSemantics:
    """Top-``spec.k`` directions and ``n_random`` random directions at one sample, edits at +-strength."""
    directions, randoms = seed_responses(service, spec, n_random, (-strength, strength), estimator=estimator, random_seed=random_seed, mode=mode)
    return SeedSemantics(
        seed=spec.sample.seed,
        direction_response=torch.stack([r.response for r in directions]),
        random_response=torch.stack([r.response for r in randoms]),
        base_is_face=directions[0].base_is_face,
        direction_face_rate=float(torch.cat([r.edited_is_face for r in directions]).float().mean()),
        random_face_rate=float(torch.cat([r.edited_is_face for r in randoms]).float().mean()),
    )


def semantic_ratio(
    service: Renderer,
    seeds: Sequence[int],
    k: int = 8,
    n_random: int = 8,
    strength: float = DEFAULT_STRENGTH,
    estimator: FactorEstimator | None = None,
    *,
    timestep: int | float | str | None = None,
    model: str | None = None,
    random_seed: int = 0,
    mode: str = "direct",
    progress=None,
) -> SemanticRatio:
    """Total factor change along each top-k direction vs along random unit directions.

    For every seed: the sample's basis at ``timestep`` (the model's setting when None), edits
    at +-``strength`` along each of its k directions and along ``n_random`` random directions.
    ``progress`` (optional) is called with each seed's :class:`SeedSemantics` as it finishes.
    """
    start = time.perf_counter()
    results = []
    for seed in seeds:
        spec = BasisSpec(SampleSpec(model=model or BUILTIN_NAME, seed=int(seed)), timestep=timestep, k=k)
        result = seed_semantics(service, spec, n_random, strength, estimator=estimator, random_seed=random_seed, mode=mode)
        results.append(result)
        if progress is not None:
            progress(result)
    return SemanticRatio(tuple(results), k, n_random, strength, timestep, time.perf_counter() - start)


def name_by_factor(service: Renderer, spec: BasisSpec) -> list[str]:
    """The built-in model's labeller: each direction is named after the cat-people factor its
    edits move most at half and at the full recommended strength (eigenface.json), or
    "mixed (top: ...)" when no factor dominates at both."""
    strength = service.settings(spec.sample.model).strength
    return [label.label if label.label != MIXED else f"{MIXED} (top: {label.top})" for label in label_directions(service, spec, strength=strength)]


def labellers_for(models: Mapping[str, str]) -> dict[str, Labeller]:
    """The labeller for every model name that points at the built-in model: its factors are known;
    other models have no ground truth to name directions by."""
    return {name: name_by_factor for name, source in models.items() if is_builtin(source)}
