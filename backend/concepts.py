"""Steering by meaning: the local-basis directions a text concept points along.

The concept's effect at x_t is measured as a change the model itself predicts, either in
x-space (how the predicted clean sample x_0 moves when the conditioning switches from the
base prompt to the concept) or in h-space (how the bottleneck moves). Projecting that change
onto the local basis ranks the unsupervised directions by how much they carry the concept,
and the projection itself is one combined direction that stays inside the model's own local
geometry (the span of the top-k directions) instead of an arbitrary pixel-space difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .basis import Basis
from .geometry import transport
from .hspace import bottleneck_fn
from .models import DiffusionModel
from .sampling import NoiseSchedule, predict_x0, unet_output

Space = Literal["x", "h"]


@dataclass(frozen=True)
class Alignment:
    """How a target change decomposes on a basis."""

    scores: Tensor  # (k,) signed component of the target along each direction (x: <v_i, d>, h: <u_i, d>)
    order: Tensor  # (k,) direction indices by decreasing |score|
    direction: Tensor  # (*x_shape) unit: the target's projection onto span(v), pulled back for h
    captured: float  # fraction of the target's norm inside the basis' span (0..1)


def align(basis: Basis, target: Tensor, space: Space = "x") -> Alignment:
    """Decompose a target change (x-space or h-space) on the basis.

    x: scores_i = <v_i, target>; the combined direction is sum_i scores_i v_i, normalised,
    i.e. the orthogonal projection onto the span of the v_i.
    h: scores_i = <u_i, target>; the combined direction is V Sigma^-1 U^T target, normalised,
    the x-space direction whose image under J best reproduces the target (parallel transport).
    """
    rows = (basis.v if space == "x" else basis.u).reshape(basis.k, -1).to(torch.float64)
    flat = target.reshape(-1).to(torch.float64)
    if flat.shape[0] != rows.shape[1]:
        raise ValueError(f"target has {flat.shape[0]} elements, the basis' {space}-space has {rows.shape[1]}")
    norm = float(flat.norm())
    if norm == 0.0:
        raise ValueError("the concept changes nothing at this point (zero target)")
    scores = rows @ flat
    order = torch.argsort(scores.abs(), descending=True)
    if space == "x":
        combined = (scores @ rows).reshape(basis.v.shape[1:])
        combined = combined / combined.norm()
    else:
        combined = transport(target.reshape(basis.u.shape[1:]).to(basis.u), basis).to(torch.float64)
    captured = float(scores.norm() / norm)
    return Alignment(scores.float(), order, combined.float(), min(captured, 1.0))


@torch.no_grad()
def concept_change(model: DiffusionModel, x_t: Tensor, t: int, base: Tensor, concept: Tensor, space: Space = "x") -> Tensor:
    """What switching the conditioning from ``base`` to ``concept`` (text embeddings, (1, tokens,
    dim)) changes at x_t: the predicted clean sample x_0 (space "x") or the bottleneck (space "h")."""
    x = x_t.to(model.device, torch.float32)[None]
    if space == "x":
        noise = NoiseSchedule.from_config(model.scheduler_config)
        x0 = [predict_x0(noise, x, unet_output(model, x, t, c), t)[0] for c in (concept, base)]
        return (x0[0] - x0[1])[0].cpu()
    return (bottleneck_fn(model, t, concept)(x) - bottleneck_fn(model, t, base)(x))[0].cpu()


def order_by_change(basis: Basis, change: Tensor) -> Basis:
    """The basis re-ordered by how much of an x-space change each direction carries, each v_i
    (and u_i) signed so that its positive side moves along the change.

    An edit-prompt basis is found under the edit prompt's conditioning, but its largest singular
    values are mostly what the model varies under any prompt (fur hue, position); ranked by
    sigma, the directions the edit prompt is about need not come first. Ranked by their share
    of the prompt's own change at x_t, they do: the k directions stay the model's own, only
    their order and signs change (BENCHMARKS.md, "Built-in text model").
    """
    scores = basis.v.reshape(basis.k, -1).to(torch.float64) @ change.reshape(-1).to(torch.float64)
    order = torch.argsort(scores.abs(), descending=True, stable=True)  # no change (edit prompt = prompt): sigma order
    signs = torch.where(scores[order] < 0, -1.0, 1.0)

    def signed(rows: Tensor) -> Tensor:
        return rows[order] * signs.view(-1, *[1] * (rows.dim() - 1)).to(rows)

    return Basis(basis.sigma[order], signed(basis.v), signed(basis.u), basis.iterations, basis.converged)


def concept_id(concept: str, space: Space = "x") -> tuple[str, str, str]:
    """What names a concept's combined direction at one basis (its calibrated range is cached and
    priced under it): the direction is a function of the basis, the text and the space."""
    return ("concept", concept, space)
