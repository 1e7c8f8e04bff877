"""Moving x_t along directions.

Strength unit: a strength of s steps x_t by s * sqrt(n) in L2 norm (n = elements of x_t),
i.e. by an RMS of s per element. x_t at high noise has unit variance per element, so s = 1
is a step as large as the noise itself, whatever the model's resolution or latent size;
the same s therefore means a comparable change across models and directions, where raw L2
units would shrink edits on large models by sqrt(n). Sliders run over the calibrated ranges
(backend/ranges.py), within about [-1, 1].

The direct edit rescales the stepped x_t back to the norm of x_t: a noisy sample at t has a
typical norm, and the excess a straight step adds reads to the later denoising steps as noise
they never remove (speckle). On the built-in model at 0.3 T the rescaled edit kept every end
image's speckle within 1.2x up to strength 1.3, where the straight one failed from 0.6 on
(BENCHMARKS.md, "Calibrated slider ranges").

Every mode is one function of an :class:`EditPoint` (where the edit starts) in :data:`EDITS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from .basis import Basis, HFn
from .errors import EditError
from .geometry import geodesic_shoot
from .hspace import bottleneck_fn
from .models import DiffusionModel
from .sampling import unet_output

EditMode = Literal["direct", "guidance", "geodesic"]


def strength_scale(sample_shape: tuple[int, ...] | torch.Size) -> float:
    """L2 length of a unit-strength edit: sqrt(n)."""
    return math.sqrt(math.prod(sample_shape))


def combine(directions: Tensor, strengths: Tensor) -> tuple[Tensor, float]:
    """Slider values -> (unit direction, total strength): sum_i s_i v_i = strength * direction.

    For orthonormal v_i the total strength is the Euclidean norm of the slider vector, so
    every edit mode can work with one direction and one length.
    """
    total = torch.einsum("k,k...->...", strengths.to(directions), directions)
    norm = float(total.norm())
    if norm == 0.0:
        return torch.zeros_like(total), 0.0
    return total / norm, norm


def direct_edits(x: Tensor, directions: Tensor, strengths: Tensor) -> Tensor:
    """x + s_i * sqrt(n) * v_i for each unit direction v_i (B, *sample_shape) and strength s_i (B,),
    each rescaled to the norm of x: (B, *sample_shape). LOCO-Edit's straight step, kept at the
    typical norm of a sample at t (see the module's docstring)."""
    shape = (-1, *([1] * x.ndim))
    moved = x[None] + (strengths.to(x) * strength_scale(x.shape)).view(shape) * directions.to(x)
    return moved * (x.norm() / moved.flatten(1).norm(dim=1).clamp_min(1e-12)).view(shape)


def direct_edit(x: Tensor, direction: Tensor, strength: float) -> Tensor:
    """One direct edit of x (:func:`direct_edits`)."""
    return direct_edits(x, direction[None], torch.tensor([strength]))[0]


@dataclass(frozen=True)
class EditPoint:
    """Where edits start: x_t on one trajectory, and what the curved modes need to move from it."""

    model: DiffusionModel
    x: Tensor  # (*sample_shape), the unedited x_t
    t: int  # its training timestep
    context: Tensor | None = None  # text conditioning of the Jacobian and the eps response (SD), else None
    basis: Basis | None = None  # the local basis at x (geodesic edits start from it)
    jvp_mode: str = "exact"  # how geodesic basis updates take J v (basis.local_basis)

    def h_fn(self) -> HFn:
        return bottleneck_fn(self.model, self.t, self.context)


def _direct(point: EditPoint, direction: Tensor, strength: float, substeps: int) -> Tensor:
    return direct_edit(point.x, direction, strength)


@torch.no_grad()
def guidance_edit(point: EditPoint, direction: Tensor, strength: float, substeps: int = 16, delta: float = 1.0) -> Tensor:
    """x-space guidance (Park et al. 2023, official code): repeatedly step along the model's
    own response to the direction, eps(x + delta v) - eps(x), rather than along v itself.

    Each of the ``substeps`` moves x by strength * sqrt(n) / substeps along the unit response,
    so a strength means the same step length as in the direct mode (before its rescaling to the
    norm of x); the response is recomputed at
    every substep, which bends the path towards what the model considers plausible.
    """
    x = point.x
    if strength == 0.0:
        return x
    step = strength * strength_scale(x.shape) / substeps
    x = x.to(point.model.device, torch.float32)
    v = direction.to(x)[None]
    for _ in range(substeps):
        both = unet_output(point.model, torch.cat([x[None] + delta * v, x[None]]), point.t, point.context).float()
        response = both[0] - both[1]
        norm = response.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        x = x + step * response / norm
    return x


#: Warm-started basis rounds after each geodesic substep (priced by ``backend.budget``).
GEODESIC_BASIS_ITERS = 2


def geodesic_edit(point: EditPoint, direction: Tensor, strength: float, substeps: int) -> Tensor:
    """Small steps that re-estimate the local basis and parallel-transport the direction after
    each one (geometry.geodesic_shoot), starting from the basis at x."""
    if point.basis is None or point.basis.k == 0:
        raise EditError("geodesic edits need the local basis at x_t")
    x = point.x.to(point.model.device, torch.float32)
    try:
        path = geodesic_shoot(
            point.h_fn(), x, direction.to(x), strength * strength_scale(x.shape), substeps=substeps, k=point.basis.k,
            basis=point.basis.to(x.device), basis_iters=GEODESIC_BASIS_ITERS, final_basis=False, jvp_mode=point.jvp_mode,
            generator=torch.Generator().manual_seed(0),
        )
    except ValueError as exc:
        raise EditError(f"geodesic edit failed: {exc}") from None
    return path.points[-1]


#: Each mode's edit, all with one signature: (point, unit direction, strength, substeps) -> x_t'.
EDITS: dict[str, Callable[[EditPoint, Tensor, float, int], Tensor]] = {"direct": _direct, "guidance": guidance_edit, "geodesic": geodesic_edit}
EDIT_MODES: tuple[str, ...] = tuple(EDITS)
#: Substeps when a mode's caller gives none: guidance follows the official code (16);
#: geodesic shooting's default comes from the quality/time trade-off in BENCHMARKS.md.
DEFAULT_SUBSTEPS = {"direct": 1, "guidance": 16, "geodesic": 4}


def apply_edit(point: EditPoint, direction: Tensor, strength: float, mode: str, substeps: int | None = None) -> Tensor:
    """x_t moved by ``strength`` along unit ``direction`` in the given mode (see :data:`EDITS`)."""
    if mode not in EDITS:
        raise EditError(f"mode must be one of {', '.join(EDIT_MODES)}, got {mode!r}")
    return EDITS[mode](point, direction, strength, substeps or DEFAULT_SUBSTEPS[mode])


def apply_edits(point: EditPoint, edits: Sequence[tuple[Tensor, float]], mode: str, substeps: int | None = None) -> Tensor:
    """Several (unit direction, strength) edits of the same x_t, stacked (B, *sample_shape) on the
    CPU, ready to be rendered as one batch; a zero strength is x_t itself, whatever the mode."""
    return torch.stack([(point.x if strength == 0.0 else apply_edit(point, direction, strength, mode, substeps)).cpu() for direction, strength in edits])
