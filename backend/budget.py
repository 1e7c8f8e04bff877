"""What a request will cost, in U-Net evaluations, before any of it runs; and the host's limit.

Everything expensive Eigenface does is U-Net forwards (and the backward passes of VJPs), so
one unit prices every request: one *evaluation* is one sample through the U-Net forward (a
batch of 8 is 8), a reverse pass counting as :data:`VJP_EVALS`. Prices are upper bounds taken
from the same numbers the engine runs with (the DDIM schedule of the request, the basis
block size and round cap, the edit mode's substeps), and what the cache already holds costs
nothing, so a visitor moving sliders on a found basis pays for the denoising only.

A request over the host's per-request limit is refused before it starts, with the price, the
limit and what to lower. The web app sets the limit (``app.py --budget``, env
``EIGENFACE_BUDGET``, default :data:`DEFAULT_BUDGET`); the CLI and library callers have none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping

from .basis import MAX_ITERS, default_block_size
from .cache import ByteLRU
from .edit import DEFAULT_SUBSTEPS, GEODESIC_BASIS_ITERS
from .errors import InputError
from .models import DiffusionModel
from .ranges import calibration_evals
from .registry import ModelRegistry
from .sampling import schedule, sub_schedule
from .specs import BasisSpec, SampleSpec, cache_key, concept_basis_spec, guidance_scale, timestep_index

#: Evaluations per basis column and round: a finite-difference JVP (two forwards) and a VJP.
JVP_EVALS = 2
VJP_EVALS = 2
#: Edits a labeller renders per direction (the built-in one: -s and +s).
LABEL_RENDERS_PER_DIRECTION = 2
#: The default per-request limit, for a public Space: every request the page offers fits at the
#: page's default settings (built-in model, k = 8, 20 steps, 0.3 T: a basis is priced at 980
#: plus 65 for its calibrated ranges, naming its directions 1 141, the atlas 1 285, a geodesic
#: edit 1 307), and so does a basis of k = 32; k = 64 (about 8 200 at 20 steps) and the old API
#: maxima (k = 64, 1 000 steps: about 9 200) do not. A host with a GPU, or patient visitors, raises it (``app.py --budget``).
DEFAULT_BUDGET = 4_000


class BudgetError(InputError):
    """A request that would cost more U-Net evaluations than the host allows per request."""


@dataclass(frozen=True)
class Cost:
    """A request's price, by part (``{"basis": 960, "rendering": 30}``); ``lower`` says what reduces it."""

    parts: Mapping[str, int] = field(default_factory=dict)
    lower: str = "k, the DDIM steps or the edit timestep"

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def __add__(self, other: "Cost") -> "Cost":
        parts = dict(self.parts)
        for name, value in other.parts.items():
            parts[name] = parts.get(name, 0) + value
        return Cost({name: value for name, value in parts.items() if value}, self.lower)


class Budget:
    """Prices requests against what ``cache`` holds, and refuses those over ``limit`` (None: no limit)."""

    def __init__(self, models: ModelRegistry, cache: ByteLRU, limit: int | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"the budget must be a positive number of U-Net evaluations, got {limit}")
        self.models = models
        self.cache = cache
        self.limit = limit

    def check(self, cost: Cost) -> Cost:
        """``cost``, or a :class:`BudgetError` saying the price, the limit and what to lower."""
        if self.limit is not None and cost.total > self.limit:
            parts = ", ".join(f"{name} {value:,}" for name, value in cost.parts.items())
            raise BudgetError(
                f"this request would cost up to {cost.total:,} U-Net evaluations ({parts}); this server allows "
                f"{self.limit:,} per request: lower {cost.lower}"
            )
        return cost

    # ----------------------------------------------------------------------------- parts
    def _model(self, sample: SampleSpec) -> DiffusionModel:
        return self.models.get(sample.model)

    def _cfg(self, sample: SampleSpec) -> int:
        """Evaluations per sample and step: two with classifier-free guidance (sampling.guided_output)."""
        model = self._model(sample)
        guidance = guidance_scale(model, sample)
        return 2 if model.conditional and guidance != 1.0 else 1

    def _index(self, spec: BasisSpec) -> tuple[tuple[int, ...], int]:
        """The request's DDIM schedule and the index of its edit timestep (as the service resolves it)."""
        model = self._model(spec.sample)
        timesteps = schedule(model, spec.sample.steps)
        return timesteps, timestep_index(model, timesteps, spec.timestep)

    def trajectory(self, sample: SampleSpec) -> Cost:
        if ("trajectory", sample) in self.cache:
            return Cost()
        return Cost({"sampling": sample.steps * self._cfg(sample)})

    def discover(self, spec: BasisSpec) -> Cost:
        """The trajectory, the basis and its calibrated ranges, each unless cached."""
        timesteps, index = self._index(spec)
        return self.local_basis(spec) + self._ranges(spec, spec.k, cache_key("ranges", spec, timesteps[index]))

    def local_basis(self, spec: BasisSpec) -> Cost:
        """The trajectory and the basis (the service's ``local_basis``), each unless cached."""
        cost = self.trajectory(spec.sample)
        timesteps, index = self._index(spec)
        if cache_key("basis", spec, timesteps[index]) in self.cache:
            return cost
        rounds = MAX_ITERS  # no early convergence assumed: the price is an upper bound
        return cost + Cost({"basis": rounds * self._block(spec) * (JVP_EVALS + VJP_EVALS)})

    def direction_range(self, spec: BasisSpec, identity: Hashable) -> Cost:
        """Calibrating one more direction at the spec's x_t (a saved one, a concept's; the service's
        ``direction_calibration``): the trajectory and the calibration, each unless cached."""
        timesteps, index = self._index(spec)
        return self.trajectory(spec.sample) + self._ranges(spec, 1, cache_key("ranges", spec, timesteps[index], identity))

    def _ranges(self, spec: BasisSpec, k: int, key: Hashable) -> Cost:
        """Calibrating k directions (backend/ranges.py), nothing once ``key`` is cached."""
        return Cost() if key in self.cache else Cost({"ranges": calibration_evals(k) * self._cfg(spec.sample)})

    def _block(self, spec: BasisSpec) -> int:
        return default_block_size(spec.k, self._model(spec.sample).device)

    def render(self, spec: BasisSpec, images: int, mode: str = "direct", *, uses_basis: bool = True, substeps: int | None = None, preview_steps: int | None = None) -> Cost:
        """``images`` edits of one sample: the basis if one is used, each edit's moves, the denoising."""
        cost = self.discover(spec) if uses_basis or mode == "geodesic" else self.trajectory(spec.sample)
        timesteps, index = self._index(spec)
        denoising = len(sub_schedule(timesteps, index, preview_steps)) * images * self._cfg(spec.sample)
        substeps = substeps or DEFAULT_SUBSTEPS.get(mode, 1)
        moves = {
            "guidance": substeps * 2,  # eps(x + v) and eps(x), batched
            "geodesic": substeps * GEODESIC_BASIS_ITERS * self._block(spec) * (JVP_EVALS + VJP_EVALS),
        }.get(mode, 0) * images
        return cost + Cost({"edits": moves, "rendering": denoising}, "k, the DDIM steps, the edit timestep or the number of images")

    def labels(self, spec: BasisSpec) -> Cost:
        """Naming the directions: the basis, then the labeller's renders (nothing once named)."""
        timesteps, index = self._index(spec)
        if cache_key("labels", spec, timesteps[index]) in self.cache:
            return Cost()
        return Cost(dict(self.render(spec, LABEL_RENDERS_PER_DIRECTION * spec.k).parts), "k or the DDIM steps")

    def concept(self, spec: BasisSpec) -> Cost:
        """A concept alignment: its basis (at least CONCEPT_K directions) and the two U-Net calls of the concept's change."""
        return self.local_basis(concept_basis_spec(spec)) + Cost({"concept": 2 * self._cfg(spec.sample)})
