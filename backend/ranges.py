"""Calibrated slider ranges: how far each direction can move x_t before its image breaks.

A direction's edit stops being valid where the denoised image turns to speckle (coloured
noise). That shows one U-Net call after the edit, already at t: the high-frequency energy of
the predicted clean sample x0 of the edited x_t (mean |Laplacian|, per channel) rises above the
unedited sample's. On the built-in model this ratio tracked the final image's speckle ratio
with correlation 0.87-0.94 for straight edits (BENCHMARKS.md), and it needs no factor
estimator and no decoder, so the same test holds on Stable Diffusion's latents. The edit
measured is the direct mode's (edit.direct_edits, norm-preserving), which on the built-in model
rarely speckles below the strength cap (:data:`MAX_END`, or the checkpoint's own
``range_cap``); the cap then sets the range.

:func:`calibrate` finds, for every direction and both signs at once, the largest strength
whose ratio stays under a limit (:func:`hf_limit`): one batch of probes, then bracketing rounds on a
batch of all 2k ends. The same evaluations give the change of the predicted x0 at each
strength, from which :attr:`Calibration.travel` maps a slider position u in [-1, 1] to a
strength so that equal slider steps give about equal x0 change (:func:`strength_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .edit import direct_edits, strength_scale
from .models import Conditioning, DiffusionModel
from .sampling import DEFAULT_GUIDANCE, NoiseSchedule, guided_output, predict_x0

#: Largest ratio of the edited to the unedited predicted x0's high-frequency energy that still
#: counts as valid, at edit timesteps 0.3 T and 0.6 T (interpolated between, held outside),
#: chosen on the built-in model's face check and speckle (BENCHMARKS.md). The later steps from a
#: higher t amplify an edit's speckle more, so the limit tightens with t; quality boosting
#: (sampling.Boost) washes part of it out, so it loosens the limit. Measured on straight edits
#: (before direct edits kept the norm of x_t): 1.12 plain and 1.25 boosted at 0.3 T, 1.10
#: boosted at 0.6 T; plain at 0.6 T is scaled like the boosted one. Re-derive them with
#: ``python bench/slider_ranges.py --limits 1.0,1.05,1.1,1.25,1.5 --seeds 0,1,2,3`` (the share of
#: first-crossing ends whose final speckle stays within 1.2x, per limit). With norm-preserving
#: edits below MAX_END every limit from 1.05 to 1.5 keeps >= 98 % of the built-in model's ends
#: speckle-free, so these stay as the guard for models whose edits do speckle (BENCHMARKS.md).
HF_LIMITS = {False: ((0.3, 1.12), (0.6, 1.05)), True: ((0.3, 1.25), (0.6, 1.10))}


def hf_limit(t_fraction: float, boosted: bool) -> float:
    """The validity limit of :func:`calibrate` at an edit timestep (a fraction of T)."""
    (t0, l0), (t1, l1) = HF_LIMITS[boosted]
    return float(np.interp(t_fraction, [t0, t1], [l0, l1]))


#: The edit the ranges are measured on, saved beside them (backend/store.py): ranges saved for
#: another edit (files from before direct edits kept the norm of x_t) are calibrated again.
CALIBRATED_EDIT = "direct, norm-preserving"

#: Range ends are kept within these (strength units): never a zero-width slider, and never past
#: MAX_END (a checkpoint may set its own cap, models.EditSettings.range_cap), which is what binds
#: on the built-in pixel model. Its norm-preserving direct edits hardly
#: raise the predicted x0's high-frequency energy (at 0.3 T the median ratio falls, 0.95 at
#: strength 0.2, 0.52 at 1.0), yet from about 0.5 on a growing share of end images fails the face
#: check (faded, blurred faces): valid at a uniform strength of 0.4 / 0.5 / 0.6 / 1.0, 94 / 89 /
#: 88 / 77 % of 64 ends (4 seeds x 8 directions x 2 signs, BENCHMARKS.md). No one-call reading
#: tried (the ratio on either side, the x0 change, the eps norm, the x0 contrast) picked
#: per-direction ends better than this cap, so the cap is 0.4: the largest strength tried with
#: >= 90 % of those ends valid.
MIN_END, MAX_END = 0.05, 0.4
#: First probes, as fractions of the cap (both signs, every direction, one batch): half-way and the cap.
PROBES = (0.5, 1.0)
#: Bracketing rounds after the probes (each one batch of the 2k current ends).
ROUNDS = 2
#: Slider positions per side at which :attr:`Calibration.travel` holds a strength.
TRAVEL_POINTS = 4
#: Edits evaluated per U-Net call.
BATCH = 32


def calibration_evals(k: int) -> int:
    """U-Net evaluations :func:`calibrate` spends on k directions at most (the budget prices with
    it; rounds whose guesses were all measured already are skipped)."""
    return 1 + 2 * k * (len(PROBES) + ROUNDS)


@dataclass(frozen=True)
class Calibration:
    """Per direction: the valid range, and the strengths at evenly spaced slider positions.

    ranges[i] = (lo, hi), lo < 0 < hi, in strength units (edit.py).
    travel[i] = strengths at u = -1, ..., 0, ..., 1 (2 * TRAVEL_POINTS + 1 values, increasing,
    travel[i][0] = lo, the middle one 0, the last hi).
    """

    ranges: tuple[tuple[float, float], ...]
    travel: tuple[tuple[float, ...], ...]


def high_frequency(x0: Tensor) -> Tensor:
    """(B,) mean |Laplacian| of a batch of samples (per channel, every channel averaged; edges
    replicated, so that even a 2 x 2 latent has one)."""
    c = x0.shape[1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x0.device).expand(c, 1, 3, 3)
    padded = torch.nn.functional.pad(x0.float(), (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel, groups=c).abs().mean(dim=(1, 2, 3))


@torch.no_grad()
def predicted_x0(model: DiffusionModel, noise: NoiseSchedule, xs: Tensor, t: int, cond: Conditioning | None, guidance_scale: float) -> Tensor:
    """x0 predicted at x_t for a batch of edited x_t's, BATCH at a time (float32, on the CPU)."""
    out = []
    for first in range(0, xs.shape[0], BATCH):
        x = xs[first : first + BATCH].to(model.device, torch.float32)
        with model.autocast():
            output = guided_output(model, x, t, cond, guidance_scale)
        out.append(predict_x0(noise, x, output, t)[0].cpu())
    return torch.cat(out)


def calibrate(
    model: DiffusionModel,
    x_t: Tensor,
    t: int,
    directions: Tensor,
    cond: Conditioning | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE,
    *,
    limit: float = HF_LIMITS[False][0][1],
    cap: float = MAX_END,
) -> Calibration:
    """The valid range and the even-travel map of every unit direction (k, *sample_shape) at x_t,
    no end past ``cap``."""
    noise = NoiseSchedule.from_config(model.scheduler_config)
    x_t = x_t.float().cpu()
    directions = directions.float().cpu()
    k = directions.shape[0]
    scale = strength_scale(x_t.shape)
    ends = 2 * k  # row j: direction j // 2, sign + for even j, - for odd j
    signs = torch.tensor([1.0, -1.0]).repeat(k)
    rows = directions.repeat_interleave(2, dim=0)

    def evaluate(strengths: Tensor) -> tuple[Tensor, Tensor]:
        """(hf ratio, x0 change) of the edits rows * signs * strengths (one column per call)."""
        xs = direct_edits(x_t, rows, signs * strengths)
        x0 = predicted_x0(model, noise, xs, t, cond, guidance_scale)
        change = (x0 - base_x0).flatten(1).norm(dim=1) / scale
        return high_frequency(x0) / base_hf, change

    base_x0 = predicted_x0(model, noise, x_t[None], t, cond, guidance_scale)
    base_hf = high_frequency(base_x0).clamp_min(1e-12)
    # measured[j]: (strength, hf ratio, x0 change) points of row j, starting at the unedited point
    measured: list[list[tuple[float, float, float]]] = [[(0.0, 1.0, 0.0)] for _ in range(ends)]
    cap = max(cap, MIN_END)
    for fraction in PROBES:
        probe = fraction * cap
        ratio, change = evaluate(torch.full((ends,), probe))
        for j in range(ends):
            measured[j].append((probe, float(ratio[j]), float(change[j])))
    for _ in range(ROUNDS):
        guesses = [_crossing(points, limit, cap) for points in measured]
        if all(any(s == g for s, _, _ in points) for g, points in zip(guesses, measured)):
            break  # every guess measured already (typically all ends at the cap): nothing to learn
        guess = torch.tensor(guesses)
        ratio, change = evaluate(guess)
        for j in range(ends):
            measured[j].append((float(guess[j]), float(ratio[j]), float(change[j])))
    hi_lo = [_largest_valid(points, limit, cap) for points in measured]
    ranges = tuple((-hi_lo[2 * i + 1], hi_lo[2 * i]) for i in range(k))
    travel = tuple(
        tuple(-s for s in reversed(_even_travel(measured[2 * i + 1], hi_lo[2 * i + 1])[1:])) + _even_travel(measured[2 * i], hi_lo[2 * i])
        for i in range(k)
    )
    return Calibration(ranges, travel)


def _crossing(points: list[tuple[float, float, float]], limit: float, cap: float = MAX_END) -> float:
    """Where the hf ratio crosses ``limit``, interpolated between the points that bracket it,
    or extrapolated along the last segment when every point is below (within MIN_END..cap)."""
    points = sorted(points)
    below = [p for p in points if p[1] <= limit]
    above = [p for p in points if p[1] > limit]
    (s0, r0, _) = below[-1]
    if above:
        s1, r1, _ = min(above)
        if s1 < s0:  # not monotone: trust the nearer failure
            return max(MIN_END, s1 / 2)
    else:
        s1, r1 = s0, r0
        s0, r0 = below[-2][:2] if len(below) > 1 else (0.0, 1.0)
    slope = (r1 - r0) / (s1 - s0) if s1 > s0 else 0.0
    if slope <= 0:
        return cap if not above else (s0 + s1) / 2
    return float(min(cap, max(MIN_END, s0 + (limit - r0) / slope)))


def _largest_valid(points: list[tuple[float, float, float]], limit: float, cap: float = MAX_END) -> float:
    """The largest measured strength below the first one over ``limit`` (at least MIN_END)."""
    best = MIN_END
    for s, ratio, _ in sorted(points):
        if ratio > limit:
            break
        best = max(best, min(s, cap))
    return best


def _even_travel(points: list[tuple[float, float, float]], end: float) -> tuple[float, ...]:
    """Strengths 0 = s_0 < ... < s_P = end at which the x0 change is j / P of the change at ``end``.

    The change is interpolated piecewise-linearly between measured strengths (made monotone,
    since a slider must not turn back); where it is flat the strengths are spread evenly.
    """
    ordered = sorted(points)
    s_all, d_all = np.array([p[0] for p in ordered]), np.maximum.accumulate(np.array([p[2] for p in ordered]))
    s = np.append(s_all[s_all < end], end)
    d = np.interp(s, s_all, d_all)
    if d[-1] <= 0 or not np.all(np.isfinite(d)):
        return tuple(float(v) for v in np.linspace(0.0, end, TRAVEL_POINTS + 1))
    d = d + np.linspace(0.0, 1e-9 * d[-1], len(d))  # strictly increasing for the inverse
    targets = np.linspace(0.0, d[-1], TRAVEL_POINTS + 1)
    knots = np.interp(targets, d, s)
    knots[0], knots[-1] = 0.0, end
    return tuple(float(v) for v in np.maximum.accumulate(knots))


# --------------------------------------------------------------------------------- slider <-> strength
def strength_at(travel: tuple[float, ...], u: float) -> float:
    """The strength at slider position u in [-1, 1] (clamped) for one direction's travel."""
    grid = np.linspace(-1.0, 1.0, len(travel))
    return float(np.interp(max(-1.0, min(1.0, u)), grid, travel))


def position_of(travel: tuple[float, ...], strength: float) -> float:
    """The slider position of a strength (the inverse of :func:`strength_at`); strengths past
    the range land on its ends."""
    grid = np.linspace(-1.0, 1.0, len(travel))
    values = np.asarray(travel) + np.linspace(0.0, 1e-12, len(travel))  # strictly increasing
    return float(np.interp(strength, values, grid))
