"""Geometry between local bases: principal angles, parallel transport, geodesic shooting.

A :class:`~backend.basis.Basis` at a point x is a k-dimensional tangent space of the map
h = h_fn(x): right singular vectors v_i in x-space and their unit images u_i = J v_i / sigma_i
in h-space.  This module compares such spaces (principal angles, Grassmann distance), carries
a direction from one point's tangent space into another's (parallel transport through
h-space), and follows a direction along the curved latent structure in small steps
(geodesic shooting), re-estimating the basis after each step from a warm start.

Shapes: a basis' rows are stored as (k, *x_shape) / (k, *h_shape); single directions are
(*x_shape) or (*h_shape).  Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator

import torch
from torch import Tensor

from .basis import Basis, HFn, advance, jvp, local_basis


def _rows(t: Tensor) -> Tensor:
    """(k, *shape) -> (k, n): one flattened vector per row."""
    return t.reshape(t.shape[0], -1)


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 for the small dense linear algebra (MPS has no float64, so float32 there)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _orthonormal_columns(rows: Tensor, dtype: torch.dtype) -> Tensor:
    """(k, *shape) rows -> (n, k) orthonormal columns spanning the same space (reduced QR).

    The rows must be linearly independent; QR cannot invent a span that is not there.
    """
    return torch.linalg.qr(_rows(rows).to(dtype).T, mode="reduced").Q


# ---------------------------------------------------------------------------------------------
# Comparing tangent spaces
# ---------------------------------------------------------------------------------------------


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between span(a) and span(b).

    a: (k1, *shape), b: (k2, *shape), rows linearly independent (they are orthonormalised
    here by QR, so raw rows are fine).  Returns (min(k1, k2),).

    Why both cosines and sines (Knyazev & Argentati 2002): arccos of sigma(Qa^T Qb) loses
    every angle below ~sqrt(eps) (1e-8 in float64, 5e-4 in float32), because cos is flat
    there; arcsin of sigma((I - Qa Qa^T) Qb) loses the angles near pi/2 the same way.  Each
    angle is taken from whichever is better conditioned (the sine below pi/4).  The
    arithmetic runs in float64 so float32 bases still resolve tiny angles.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a and b must have rows of equal shape, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"a and b need at least one row each, got {a.shape[0]} and {b.shape[0]}")
    work = _work_dtype(a)
    qa = _orthonormal_columns(a, work)  # (n, k1)
    qb = _orthonormal_columns(b.to(a.device), work)  # (n, k2)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa  # the residual below needs qb to be the smaller space
    overlap = qa.T @ qb  # (k_big, k_small)
    cos = torch.linalg.svdvals(overlap).clamp(max=1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(qb - qa @ overlap).clamp(max=1.0).flip(0)  # ascending
    angles = torch.where(sin < cos, torch.arcsin(sin), torch.arccos(cos))
    return angles.to(torch.promote_types(a.dtype, b.dtype))


def grassmann_distance(a: Tensor, b: Tensor) -> float:
    """Geodesic distance on the Grassmannian, sqrt(sum theta_i^2), between span(a) and span(b).

    a: (k1, *shape), b: (k2, *shape).  For k1 != k2 the sum runs over the min(k1, k2)
    principal angles (the distance from the smaller space to its nearest subspace of the
    larger one).  Ranges over [0, (pi/2) sqrt(min(k1, k2))].
    """
    return float(torch.linalg.vector_norm(principal_angles(a, b).double()))


# ---------------------------------------------------------------------------------------------
# Parallel transport
# ---------------------------------------------------------------------------------------------


def transport(u_source: Tensor, target: Basis, *, inverse_sigma: bool = True, rtol: float = 1e-5) -> Tensor:
    """Carry an h-space vector into the target's tangent space; return a unit x-space direction.

    u_source: (*h_shape), e.g. u_i of another sample's basis or the h-image J_A d of a
    direction.  Returns (*x_shape), unit L2 norm:

        inverse_sigma=True:  v' = V_B Sigma_B^-1 U_B^T u   (the x-direction whose image is
                             the projection U_B U_B^T u, i.e. "the same h-space change")
        inverse_sigma=False: v' = V_B U_B^T u              (the official code's variant)

    The two agree on a single basis direction (u = u_i gives v_i either way) but not on a
    mixture: dropping Sigma^-1 weights component i by sigma_i relative to the first form,
    tilting the result towards the strongest directions (and, repeated step after step,
    towards v_1 alone, as a power iteration would).

    Why the cutoff: a direction with sigma_i <= rtol * sigma_max has no meaningful u_i (J
    annihilates it, so u_i is whatever the SVD picked), and dividing by sigma_i would blow
    noise up; such directions are dropped, as a pseudo-inverse does.

    Raises ValueError when u has (relatively, below ``rtol``) no component in the target's
    tangent space: then there is no direction at the target that does "the same thing".
    """
    h_shape = target.u.shape[1:]
    if u_source.shape != h_shape:
        raise ValueError(f"u_source must have the target's h-shape {tuple(h_shape)}, got {tuple(u_source.shape)}")
    u_rows = _rows(target.u)  # (k, m)
    u = u_source.reshape(-1).to(u_rows)
    sigma = target.sigma.to(u_rows)
    keep = sigma > rtol * sigma.max().clamp(min=torch.finfo(sigma.dtype).tiny)
    coeffs = torch.where(keep, u_rows @ u, torch.zeros_like(sigma))  # (k,) = U_B^T u
    norm_u = float(torch.linalg.vector_norm(u))
    if norm_u == 0.0 or float(torch.linalg.vector_norm(coeffs)) <= rtol * norm_u:
        raise ValueError(
            "cannot transport: the vector has no component in the target's tangent space "
            f"(|U^T u| / |u| <= rtol={rtol}); it lies outside the span of the target's top-{target.k} directions"
        )
    if inverse_sigma:
        coeffs = torch.where(keep, coeffs / sigma.clamp(min=torch.finfo(sigma.dtype).tiny), coeffs)
    v = coeffs @ _rows(target.v).to(u_rows)  # (n,)
    v = v / torch.linalg.vector_norm(v)
    return v.reshape(target.v.shape[1:]).to(target.v.dtype)


def _image_in_span(direction: Tensor, basis: Basis) -> tuple[Tensor, float]:
    """h-image of an x-direction through the basis alone: J d = sum_i c_i sigma_i u_i, c = V d.

    Exact for d in span(V) (J v_i = sigma_i u_i holds for Ritz triplets whether or not the
    iteration converged).  Also returns the relative residual |d - V^T c| / |d|, i.e. how
    far d is from that span, so the caller can tell whether the shortcut is valid.
    """
    v_rows = _rows(basis.v)  # (k, n)
    d = direction.reshape(-1).to(v_rows)
    c = v_rows @ d  # (k,)
    residual = float(torch.linalg.vector_norm(d - c @ v_rows) / torch.linalg.vector_norm(d).clamp(min=1e-30))
    image = (c * basis.sigma.to(v_rows)) @ _rows(basis.u).to(v_rows)  # (m,)
    return image.reshape(basis.u.shape[1:]), residual


def transport_direction(
    direction: Tensor,
    source: Basis | None,
    target: Basis,
    h_fn: HFn | None = None,
    x_source: Tensor | None = None,
    *,
    inverse_sigma: bool = True,
    span_rtol: float = 1e-4,
) -> Tensor:
    """Transport an x-space direction at sample A to sample B; return a unit (*x_shape) direction.

    direction: (*x_shape) at x_source.  Its h-image J_A d is what gets carried over (see
    :func:`transport`).  When d lies in span(source.v) (relative residual <= span_rtol, e.g.
    any combination of source directions) the image is sum_i c_i sigma_i u_i and no model
    call is made; otherwise it costs one exact JVP of ``h_fn`` at ``x_source``.

    Raises ValueError if d is outside the source span and h_fn / x_source are missing, or if
    its image has no component in the target's tangent space.
    """
    if source is not None:
        if direction.shape != source.v.shape[1:]:
            raise ValueError(f"direction must have the source's x-shape {tuple(source.v.shape[1:])}, got {tuple(direction.shape)}")
        image, residual = _image_in_span(direction, source)
        if residual <= span_rtol:
            return transport(image, target, inverse_sigma=inverse_sigma)
    if h_fn is None or x_source is None:
        raise ValueError(
            "direction is not in the span of the source basis (or no source was given): "
            "pass h_fn and x_source so its h-image J d can be computed with one JVP"
        )
    if direction.shape != x_source.shape:
        raise ValueError(f"direction must have x_source's shape {tuple(x_source.shape)}, got {tuple(direction.shape)}")
    image = jvp(h_fn, x_source.detach(), direction.detach().to(x_source)[None])[0]
    return transport(image, target, inverse_sigma=inverse_sigma)


# ---------------------------------------------------------------------------------------------
# Geodesic shooting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeodesicStep:
    """What a step callback sees after each substep of :func:`geodesic_shoot`."""

    step: int  # 1..substeps
    substeps: int
    point: Tensor  # (*x_shape), the point just reached
    basis: Basis  # the (warm-started) basis there


@dataclass(frozen=True)
class GeodesicPath:
    """Result of :func:`geodesic_shoot`."""

    points: Tensor  # (substeps + 1, *x_shape); points[0] is the start, points[-1] the end
    directions: Tensor  # (substeps, *x_shape), unit; step i went points[i] -> points[i] + (|length|/substeps) directions[i]
    basis: Basis  # the basis at points[-1] (at points[-2] when final_basis=False)
    bases: tuple[Basis, ...]  # the basis at every point (substeps + 1 of them) if keep_bases, else ()
    seconds: float  # wall time of the whole shoot, basis updates included


def geodesic_shoot(
    h_fn: HFn,
    x: Tensor,
    direction: Tensor,
    length: float,
    *,
    substeps: int,
    k: int,
    basis: Basis | None = None,
    basis_iters: int = 3,
    keep_bases: bool = False,
    final_basis: bool = True,
    step_callback: Callable[[GeodesicStep], None] | None = None,
    **basis_kwargs: Any,
) -> GeodesicPath:
    """Follow ``direction`` from x for an x-space arc length ``length`` in ``substeps`` steps.

    x: (*x_shape); direction: (*x_shape), any non-zero vector (a basis row, a combination of
    rows, ...), normalised here.  A negative ``length`` shoots the other way (-direction).

    One straight step x + length * d ignores that the tangent space turns as x moves.  Here:

    1. d_0 = the projection of d onto span(V_0) of the top-k basis at x, normalised.
    2. For each substep: x_{i+1} = x_i + (length / substeps) d_i; recompute the basis at
       x_{i+1} warm-started from the previous one (init = V_i, ``basis_iters`` rounds, so
       each update costs a few batched JVP/VJP passes instead of a cold start); carry d_i
       over by parallel transport of its h-image J_i d_i = sum c sigma u (no model call,
       since d_i lies in span(V_i)): d_{i+1} = V Sigma^-1 U^T J_i d_i, normalised.

    The direction is kept in the span of the local top-k basis at every point, the start
    included: when k is smaller than the dimension, whatever part of d (or of its
    transported image) falls outside the top-k directions is dropped, so choose k large
    enough to contain the directions you care about.  Transport uses Sigma^-1 (see
    :func:`transport`); the variant without it would act like a power iteration and drift
    towards v_1 over many steps.

    ``final_basis=False`` skips re-estimating the basis at the end point, which an edit never
    uses (one update in ``substeps`` saved).  ``basis``: the basis at x if already known (with k rows; else it is computed with
    ``basis_kwargs``).  ``basis_kwargs`` go to :func:`~backend.basis.local_basis` (e.g.
    ``block_size``, ``tol``, ``chunk_size``, ``jvp_mode``, ``generator``); the warm updates override
    ``init`` and ``max_iters``.  Raises ValueError where transport finds no component of
    the direction in the new tangent space.
    """
    check_shot(x, direction, length, substeps, basis_iters)
    start = time.perf_counter()
    x = x.detach()
    if basis is None:
        basis = local_basis(h_fn, x, k, **basis_kwargs)
    update_kwargs = {**basis_kwargs, "max_iters": basis_iters}
    shoot = shot(x, direction, length, substeps, k, basis, keep_bases, final_basis, step_callback)
    request, path = advance(shoot, None)
    while path is None:
        point, init = request
        request, path = advance(shoot, local_basis(h_fn, point, k, **{**update_kwargs, "init": init}))
    return replace(path, seconds=time.perf_counter() - start)


def check_shot(x: Tensor, direction: Tensor, length: float, substeps: int, basis_iters: int) -> None:
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    if basis_iters < 1:
        raise ValueError(f"basis_iters must be >= 1, got {basis_iters}")
    if direction.shape != x.shape:
        raise ValueError(f"direction must have x's shape {tuple(x.shape)}, got {tuple(direction.shape)}")
    if not math.isfinite(length):
        raise ValueError(f"length must be finite, got {length}")


#: What a shot asks for before each step: the basis at this point, warm-started from these rows.
BasisRequest = tuple[Tensor, Tensor]


def shot(
    x: Tensor,
    direction: Tensor,
    length: float,
    substeps: int,
    k: int,
    basis: Basis,
    keep_bases: bool,
    final_basis: bool,
    step_callback: Callable[[GeodesicStep], None] | None,
) -> Generator[BasisRequest, Basis, GeodesicPath]:
    """The steps of :func:`geodesic_shoot` as a coroutine: it yields (point, warm-start rows)
    whenever it needs the basis at a new point and is sent that basis, so one caller can solve
    the updates of many shots together. Its ``seconds`` is left 0 for the driver to fill in."""
    d = direction.detach().to(x)
    if length < 0:
        d, length = -d, -length
    if basis.k != min(k, x.numel()) or basis.v.shape[1:] != x.shape:
        raise ValueError(f"basis must hold k={k} directions of shape {tuple(x.shape)}, got {tuple(basis.v.shape)}")

    v0 = _rows(basis.v).to(x)  # (k, n)
    d = (v0 @ d.reshape(-1)) @ v0  # projection onto span(V_0)
    norm = torch.linalg.vector_norm(d)
    if float(norm) <= 1e-6 * float(torch.linalg.vector_norm(direction)):
        raise ValueError(f"direction has no component in the span of the top-{basis.k} directions at x")
    d = (d / norm).reshape(x.shape)

    step = length / substeps
    points, directions, kept = [x], [], [basis]
    for i in range(1, substeps + 1):
        directions.append(d)
        if step == 0.0:  # nothing moves: every point is x, every basis the start basis
            x_next, next_basis = x, basis
        else:
            x_next = points[-1] + step * d
            last = i == substeps and not (final_basis or keep_bases or step_callback is not None)
            # An edit only needs the end point: the basis there would be computed and never used.
            next_basis = basis if last else (yield x_next, basis.v)
            if i < substeps:  # the direction after the last step would go unused
                image, _ = _image_in_span(d, basis)  # J_i d_i, exact: d_i lies in span(V_i)
                d = transport(image, next_basis).to(x)
        points.append(x_next)
        basis = next_basis
        if keep_bases:
            kept.append(basis)
        if step_callback is not None:
            step_callback(GeodesicStep(i, substeps, x_next, basis))
    return GeodesicPath(
        points=torch.stack(points),
        directions=torch.stack(directions),
        basis=basis,
        bases=tuple(kept) if keep_bases else (),
        seconds=0.0,
    )
