"""Geodesic paths along every basis direction, computed once so geodesic sliders are instant.

A geodesic edit (:func:`~backend.edit.geodesic_edit`) re-estimates the basis after each small
step, a few seconds per release on a CPU. But a slider only ever moves along one direction
of one basis, so its whole geodesic can be shot in advance: :func:`precompute_paths` follows
every direction both ways out to its range end in ``steps`` equal steps and keeps x_t at each
step (the grid). A slider value then costs what a direct edit costs: :meth:`CachedPaths.at`
interpolates x_t between the two nearest grid points and the caller denoises it.

Why the grid points are exact geodesic edits: a shot of length j * delta in j substeps takes
the same steps as the first j of a longer shot with step delta (the same warm-started basis
updates, the same random generator), so grid point j *is* ``geodesic_shoot(length = j delta,
substeps = j)``. Between grid points the straight line is the one-substep geodesic from the
lower point, up to the turn of the direction within one step.

Cost: all 2k shots move in lockstep and every step's basis updates are solved together
(:func:`~backend.lockstep.geodesic_shoots`), one batched U-Net pass per product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .basis import Products
from .edit import DEFAULT_SUBSTEPS, GEODESIC_BASIS_ITERS, EditPoint, apply_edits, strength_scale
from .errors import EditError
from .lockstep import geodesic_shoots
from .hspace import jacobian_context

#: Relative tolerance at a path's ends: float32 rounding of a strength (about 6e-8 relative).
END_SLACK = 1e-6
#: Grid steps per sign: the substeps a geodesic edit of the range end takes by default; each
#: step costs one batched basis update of all shots.
DEFAULT_GRID_STEPS = DEFAULT_SUBSTEPS["geodesic"]
#: Warm-started rounds per basis update: :func:`~backend.edit.geodesic_edit`'s own, which the
#: grid points must share to be its exact edits.
BASIS_ITERS = GEODESIC_BASIS_ITERS

Ends = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class CachedPaths:
    """x_t along each direction's geodesic at ``steps + 1`` equally spaced strengths per sign.

    ``minus[i, j]`` is x_t after j steps from x towards ``ends[i][0]`` (< 0), ``plus[i, j]``
    after j steps towards ``ends[i][1]`` (> 0); ``[i, 0]`` is the unedited x_t.
    """

    minus: Tensor  # (k, steps + 1, *x_shape)
    plus: Tensor  # (k, steps + 1, *x_shape)
    ends: Ends  # (lo, hi) per direction, strength units
    seconds: float  # wall time of the precompute

    @property
    def k(self) -> int:
        return len(self.ends)

    @property
    def steps(self) -> int:
        return self.plus.shape[1] - 1

    def covers(self, index: int, strength: float) -> bool:
        """Whether direction ``index`` at ``strength`` lies on a cached path. A range end that
        went through float32 (slider values are a float32 tensor) still counts as the end."""
        if not 0 <= index < self.k:
            return False
        lo, hi = self.ends[index]
        slack = END_SLACK * max(-lo, hi)
        return lo - slack <= strength <= hi + slack

    def at(self, index: int, strength: float) -> Tensor:
        """x_t at ``strength`` along direction ``index``: linear between the two nearest grid points.

        Continuous in the strength (both signs start at the unedited x_t), exact at grid points.
        """
        if not self.covers(index, strength):
            raise EditError(f"strength {strength:g} of direction {index} is outside its cached path {self.ends[index]}")
        path, end = (self.plus, self.ends[index][1]) if strength >= 0 else (self.minus, self.ends[index][0])
        position = min(strength / end * self.steps, self.steps)
        j = min(int(math.floor(position)), self.steps - 1)
        w = position - j
        return torch.lerp(path[index, j], path[index, j + 1], w)


def precompute_paths(
    point: EditPoint,
    ends: Ends,
    steps: int = DEFAULT_GRID_STEPS,
    *,
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CachedPaths:
    """Shoot every basis direction of ``point`` both ways to its ends, keeping the grid points.

    ``progress(done, total)`` follows the batched basis updates (``steps - 1`` of them); an
    exception raised from it abandons the whole precompute, leaving nothing behind.
    Raises EditError where a direction cannot be followed (no component left to transport).
    """
    basis = point.basis
    if basis is None or basis.k == 0:
        raise EditError("geodesic paths need the local basis at x_t")
    if len(ends) != basis.k or not all(lo < 0 < hi for lo, hi in ends):
        raise EditError(f"need one range (lo < 0 < hi) per direction, got {len(ends)} for {basis.k} directions")
    if steps < 1:
        raise EditError(f"steps must be >= 1, got {steps}")
    x = point.x.to(point.model.device, torch.float32)
    scale = strength_scale(x.shape)
    v = basis.v.to(x)
    lengths = [hi * scale for _, hi in ends] + [lo * scale for lo, _ in ends]
    products = Products(point.h_fn(), point.jvp_mode, chunk_size=chunk_size)
    try:
        with jacobian_context(point.jvp_mode == "exact"):
            shots = geodesic_shoots(
                products, x, torch.cat([v, v]), lengths, substeps=[steps] * len(lengths), basis=basis.to(x.device),
                basis_iters=BASIS_ITERS, seed=0, step_callback=progress,
            )
    except ValueError as exc:
        raise EditError(f"geodesic paths failed: {exc}") from None
    points = torch.stack([shot.points for shot in shots]).cpu()  # (2k, steps + 1, *x_shape)
    return CachedPaths(minus=points[basis.k :], plus=points[: basis.k], ends=tuple(ends), seconds=shots[0].seconds)


def edits_on_paths(point: EditPoint, paths: CachedPaths, edits: Sequence[tuple[Tensor, float]], sliders: Sequence[tuple[int, float] | None]) -> Tensor:
    """Geodesic edits of ``point`` stacked like :func:`~backend.edit.apply_edits`, read off the
    cached paths where one moves a single basis direction within its range.

    ``sliders``: per edit, (basis index, signed strength) when it moves one basis direction,
    else None. Every other edit (several sliders, a saved or text direction, past a range
    end) is shot afresh as :func:`~backend.edit.geodesic_edit` shoots it.
    """
    xs = []
    for (direction, strength), slider in zip(edits, sliders, strict=True):
        if strength != 0.0 and slider is not None and paths.covers(*slider):
            xs.append(paths.at(*slider))
        else:
            xs.append(apply_edits(point, [(direction, strength)], "geodesic")[0])
    return torch.stack(xs)
