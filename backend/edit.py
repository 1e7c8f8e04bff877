"""Moving x_t along directions.

Strength unit: a strength of s moves x_t by s * sqrt(n) in L2 norm (n = elements of x_t),
i.e. by an RMS of s per element. x_t at high noise has unit variance per element, so s = 1
is a change as large as the noise itself, whatever the model's resolution or latent size;
the same s therefore means a comparable change across models and directions, where raw L2
units would shrink edits on large models by sqrt(n). Sliders run over about [-1, 1].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .errors import InputError
from .models import DiffusionModel
from .sampling import unet_output

EditMode = Literal["direct", "guidance", "geodesic"]
EDIT_MODES: tuple[str, ...] = ("direct", "guidance", "geodesic")
#: Largest |strength| accepted: ten times the noise's own scale is already far off the data.
MAX_STRENGTH = 10.0


def strength_scale(sample_shape: tuple[int, ...] | torch.Size) -> float:
    """L2 length of a unit-strength edit: sqrt(n)."""
    return math.sqrt(math.prod(sample_shape))


def check_strength(value: float, what: str = "strength") -> float:
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


def direct_edit(x: Tensor, direction: Tensor, strength: float) -> Tensor:
    """x + strength * sqrt(n) * direction (one straight step; LOCO-Edit's edit)."""
    return x + strength * strength_scale(x.shape) * direction.to(x)


@torch.no_grad()
def guidance_edit(model: DiffusionModel, x: Tensor, t: int, context: Tensor | None, direction: Tensor, strength: float, substeps: int = 16, delta: float = 1.0) -> Tensor:
    """x-space guidance (Park et al. 2023, official code): repeatedly step along the model's
    own response to the direction, eps(x + delta v) - eps(x), rather than along v itself.

    Each of the ``substeps`` moves x by strength * sqrt(n) / substeps along the unit response,
    so a strength means the same distance as in the direct mode; the response is recomputed at
    every substep, which bends the path towards what the model considers plausible.
    """
    if strength == 0.0:
        return x
    step = strength * strength_scale(x.shape) / substeps
    x = x.to(model.device, torch.float32)
    v = direction.to(x)[None]
    for _ in range(substeps):
        both = unet_output(model, torch.cat([x[None] + delta * v, x[None]]), t, context).float()
        response = both[0] - both[1]
        norm = response.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        x = x + step * response / norm
    return x


#: Substeps when a mode's caller gives none: guidance follows the official code (16);
#: geodesic shooting's default comes from the quality/time trade-off in BENCHMARKS.md.
DEFAULT_SUBSTEPS = {"guidance": 16, "geodesic": 4}


def apply_edit(
    model: DiffusionModel,
    x: Tensor,
    t: int,
    h_fn,
    direction: Tensor,
    strength: float,
    mode: str,
    *,
    context: Tensor | None = None,
    basis=None,
    substeps: int | None = None,
    jvp_mode: str = "exact",
) -> Tensor:
    """x_t moved by ``strength`` along unit ``direction`` in the given mode.

    ``direct``: one straight step.  ``guidance``: along the model's eps response.
    ``geodesic``: small steps that re-estimate the local basis and parallel-transport the
    direction after each one (needs ``basis``, the basis at x).
    """
    if mode not in EDIT_MODES:
        raise InputError(f"mode must be one of {', '.join(EDIT_MODES)}, got {mode!r}")
    n = substeps or DEFAULT_SUBSTEPS.get(mode, 1)
    if mode == "direct":
        return direct_edit(x, direction, strength)
    if mode == "guidance":
        return guidance_edit(model, x, t, context, direction, strength, substeps=n)
    from .geometry import geodesic_shoot

    if basis is None or basis.k == 0:
        raise InputError("geodesic edits need the local basis at x_t")
    x = x.to(model.device, torch.float32)
    try:
        path = geodesic_shoot(
            h_fn, x, direction.to(x), strength * strength_scale(x.shape), substeps=n, k=basis.k, basis=basis.to(x.device),
            basis_iters=2, final_basis=False, jvp_mode=jvp_mode, generator=torch.Generator().manual_seed(0),
        )
    except ValueError as exc:
        raise InputError(f"geodesic edit failed: {exc}") from None
    return path.points[-1]
