"""Many local bases, many geodesic shots, in lockstep: one batched U-Net pass per product.

:func:`~backend.basis.krylov` and :func:`~backend.geometry.shot` are coroutines that ask for
what they need (J / J^T products; the basis at a new point) instead of computing it, so a
driver can gather the requests of many of them and answer each kind with one batched pass.
:func:`local_bases` does it for bases at several points, :func:`geodesic_shoots` for shots
along several directions; each result is what the one-at-a-time function gives (up to the
round-off of another batch size). :mod:`backend.paths` shoots every basis direction this way.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Generator, Sequence

import torch
from torch import Tensor

from .basis import Basis, Product, Products, advance, krylov
from .geometry import GeodesicPath, check_shot, shot


def _resume(coroutines: Sequence[Generator], i: int, answer: Any, pending: dict[int, Any], results: list) -> None:
    """Send ``answer`` to coroutine i: its next request goes to ``pending``, or, once it has
    finished, its result to ``results`` (and it leaves ``pending``)."""
    request, results[i] = advance(coroutines[i], answer)
    if request is None:
        pending.pop(i, None)
    else:
        pending[i] = request


def local_bases(
    products: Products,
    points: Sequence[Tensor],
    k: int,
    *,
    inits: Sequence[Tensor | None],
    generators: Sequence[torch.Generator | None],
    **solver_kwargs: Any,
) -> list[Basis]:
    """:func:`~backend.basis.local_basis` at several points at once, each round's products of
    one kind in one batched pass (:meth:`~backend.basis.Products.at_many`).

    Each point has its own warm start and random generator, so each basis is what
    ``local_basis`` would give there (up to the round-off of a different batch size).
    ``solver_kwargs`` go to :func:`~backend.basis.krylov`. Points that converge early simply
    leave the batch.
    """
    solvers = [krylov(x.detach(), k, init=init, generator=g, **solver_kwargs) for x, init, g in zip(points, inits, generators)]
    pending: dict[int, Product] = {}
    bases: list[Basis | None] = [None] * len(solvers)
    for i in range(len(solvers)):
        _resume(solvers, i, None, pending, bases)
    while pending:
        for kind in ("jvp", "vjp"):
            group = [i for i, request in pending.items() if request[0] == kind]
            if not group:
                continue
            answers = products.at_many(kind, [points[i].detach() for i in group], [pending[i][1] for i in group])
            for i, answer in zip(group, answers):
                _resume(solvers, i, answer, pending, bases)
    return [b for b in bases if b is not None]


def geodesic_shoots(
    products: Products,
    x: Tensor,
    directions: Tensor,
    lengths: Sequence[float],
    *,
    substeps: Sequence[int],
    basis: Basis,
    basis_iters: int = 3,
    seed: int = 0,
    step_callback: Callable[[int, int], None] | None = None,
    **solver_kwargs: Any,
) -> list[GeodesicPath]:
    """:func:`~backend.geometry.geodesic_shoot` from one x along several directions at once.

    directions: (P, *x_shape); lengths and substeps: P each.  Every shot is the one
    ``geodesic_shoot`` makes with ``generator=torch.Generator().manual_seed(seed)`` and
    ``final_basis=False``, but the basis updates of all shots at each step are solved
    together (:func:`local_bases`): one batched U-Net pass per product instead of P. A GPU
    fills up with the batch; on the 2-core CPU the cost per sample stayed about the same from
    batch 4 to 64 (BENCHMARKS.md), so there the gain is the saved per-call overhead.
    ``step_callback(done, total)`` is called after each round of updates (``total``: the
    longest shot's updates, one fewer than its substeps); raising from it abandons every shot.
    """
    for d, length, n in zip(directions, lengths, substeps, strict=True):
        check_shot(x, d, length, n, basis_iters)
    start = time.perf_counter()
    x = x.detach()
    shots = [shot(x, d, length, n, basis.k, basis, False, False, None) for d, length, n in zip(directions, lengths, substeps)]
    generators = [torch.Generator().manual_seed(seed) for _ in shots]
    pending: dict[int, tuple[Tensor, Tensor]] = {}
    paths: list[GeodesicPath | None] = [None] * len(shots)
    for i in range(len(shots)):
        _resume(shots, i, None, pending, paths)
    total, done = max(substeps) - 1, 0
    while pending:
        order = list(pending)
        bases = local_bases(
            products, [pending[i][0] for i in order], basis.k, inits=[pending[i][1] for i in order],
            generators=[generators[i] for i in order], **{**solver_kwargs, "max_iters": basis_iters},
        )
        for i, new in zip(order, bases):
            _resume(shots, i, new, pending, paths)
        done += 1
        if step_callback is not None:
            step_callback(done, total)
    seconds = time.perf_counter() - start
    return [replace(path, seconds=seconds) for path in paths if path is not None]
