"""Procedural "cat people": stylised cat faces whose generative factors are known.

The built-in model is trained on these renders so that every direction Eigenface finds can
be checked against ground truth. Each image is drawn from a vector of independent factors in
[0, 1]; the renderer is a pure, batched torch function built from signed distance fields, so
the same code draws one face on a laptop CPU or a million on a GPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Factor names, in the order of the factor vector.  ``hue`` lives on a circle.
FACTORS: tuple[str, ...] = (
    "nose",  # nose size
    "ears",  # ear size
    "smile",  # nap-smile: curvature of the mouth, flat to a wide grin
    "eyes",  # eye size
    "hue",  # fur hue, circular
    "head_x",  # horizontal head position
    "head_y",  # vertical head position
    "background",  # background colour, cool to warm
    "horse",  # 0 = cat, 1 = horse: longer face and muzzle, nostrils, long upright ears, a mane tuft
)
CIRCULAR: frozenset[str] = frozenset({"hue"})
NUM_FACTORS = len(FACTORS)


def sample_factors(n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu", horse: bool = False) -> Tensor:
    """Independent uniform factors, (n, NUM_FACTORS), deterministic given the generator.

    ``horse=False`` is the cat world the built-in pixel model was trained on: the other factors
    are drawn exactly as before the horse factor existed (same generator calls, same values) and
    horse is 0. ``horse=True`` then draws horse uniformly as well.
    """
    where = generator.device if generator is not None else device
    cat = torch.rand(n, NUM_FACTORS - 1, generator=generator, device=where).to(device)
    horses = torch.rand(n, 1, generator=generator, device=where).to(device) if horse else torch.zeros(n, 1, device=device)
    return torch.cat([cat, horses], dim=1)


def render_dataset(
    n: int, resolution: int = 64, seed: int = 0, device: str | torch.device = "cpu", horse: bool = False
) -> tuple[Tensor, Tensor]:
    """``n`` faces and their factors from one seed: images (n, 3, R, R) in [0, 1], factors (n, F)."""
    factors = sample_factors(n, torch.Generator().manual_seed(seed), device, horse=horse)
    return render(factors, resolution), factors


def _hsv_to_rgb(h: Tensor, s: float, v: float) -> Tensor:
    """Hue in [0, 1) (any shape) with fixed saturation and value -> RGB in the last dim."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _coverage(sdf: Tensor, pixel: float) -> Tensor:
    """Anti-aliased coverage of the region sdf < 0."""
    return torch.clamp(0.5 - sdf / pixel, 0.0, 1.0)


def _ellipse(px: Tensor, py: Tensor, cx: Tensor, cy: Tensor, rx: Tensor | float, ry: Tensor | float) -> Tensor:
    """Approximate signed distance to an axis-aligned ellipse (exact for circles)."""
    q = torch.sqrt(((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2)
    return (q - 1) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))


def _triangle(px: Tensor, py: Tensor, verts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Signed distance bound to a triangle (either winding): max of the edge half-planes."""
    (ax, ay), (bx, by), (qx, qy) = verts
    winding = torch.sign((bx - ax) * (qy - ay) - (by - ay) * (qx - ax))
    d = None
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1]):
        ex, ey = bx - ax, by - ay
        length = torch.sqrt(ex**2 + ey**2) + 1e-8
        side = winding * ((px - ax) * ey - (py - ay) * ex) / length
        d = side if d is None else torch.maximum(d, side)
    return d


def _over(canvas: Tensor, colour: Tensor, alpha: Tensor) -> Tensor:
    """Paint ``colour`` (B, 3) onto ``canvas`` (B, 3, R, R) with per-pixel alpha (B, R, R)."""
    return canvas * (1 - alpha[:, None]) + colour[:, :, None, None] * alpha[:, None]


def render(factors: Tensor, resolution: int = 64) -> Tensor:
    """Draw faces from factors (B, NUM_FACTORS) in [0, 1] -> images (B, 3, R, R) in [0, 1].

    The horse factor only ever adds ``horse * change`` to a cat's geometry or fades a layer in
    by ``horse``, so a face with horse = 0 is byte-identical to the cat the pixel model learnt.
    """
    if factors.ndim != 2 or factors.shape[1] != NUM_FACTORS:
        raise ValueError(f"factors must have shape (B, {NUM_FACTORS}), got {tuple(factors.shape)}")
    f = factors.float().clamp(0, 1)
    device, batch = f.device, f.shape[0]
    nose, ears, smile, eyes, hue, head_x, head_y, background, horse = (f[:, i, None, None] for i in range(NUM_FACTORS))

    coords = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.expand(batch, -1, -1), py.expand(batch, -1, -1)
    pixel = 2.0 / resolution

    # Background: a vertical gradient between a cool and a warm pastel.
    cool, warm = torch.tensor([0.62, 0.78, 0.93], device=device), torch.tensor([0.98, 0.80, 0.62], device=device)
    base = cool + (warm - cool) * f[:, 7:8]
    shade = (0.92 + 0.08 * (1 - (py[:1] + 1) / 2))[:, None]  # (1, 1, R, R)
    canvas = base[:, :, None, None] * shade

    # Head-local coordinates: the head is centred at the origin and spans about [-0.5, 0.5].
    scale = 1.25
    cx = (head_x - 0.5) * 0.36
    cy = 0.12 + (head_y - 0.5) * 0.28
    lx, ly = (px - cx) / scale, (py - cy) / scale
    pixel = pixel / scale
    zero = torch.zeros_like(cx)

    fur = _hsv_to_rgb(hue[:, 0, 0], 0.55, 0.88)
    outline = fur * 0.55
    pink = torch.tensor([0.96, 0.66, 0.72], device=device).expand(batch, 3)
    dark = torch.tensor([0.12, 0.10, 0.14], device=device).expand(batch, 3)

    # Ears: triangles on top of the head; their height grows with the factor. A horse's are
    # narrower, upright (tip above the base) and a little longer.
    rx, ry = 0.50, 0.42
    ear_h = (0.12 + 0.38 * ears) * (1 + 0.2 * horse)
    base_y = zero - ry * 0.55
    ear_sdf, inner_sdf = [], []
    for sgn in (-1.0, 1.0):
        tip = (zero + sgn * 0.36 - sgn * 0.10 * horse, base_y - ear_h)
        inner, outer = zero + sgn * 0.10 + sgn * 0.08 * horse, zero + sgn * 0.47 - sgn * 0.08 * horse
        ear_sdf.append(_triangle(lx, ly, [(inner, base_y), tip, (outer, base_y)]))
        inner_tip = (zero + sgn * 0.335 - sgn * 0.09 * horse, base_y - ear_h * 0.72)
        inner_base, outer_base = zero + sgn * 0.18 + sgn * 0.05 * horse, zero + sgn * 0.40 - sgn * 0.07 * horse
        inner_sdf.append(_triangle(lx, ly, [(inner_base, base_y), inner_tip, (outer_base, base_y)]))
    # A horse's head is narrower and reaches further down (the long face).
    head_sdf = _ellipse(lx, ly, zero, zero + 0.09 * horse, rx - 0.08 * horse, ry + 0.12 * horse)
    body_sdf = torch.minimum(torch.minimum(*ear_sdf), head_sdf)
    canvas = _over(canvas, outline, _coverage(body_sdf - 0.022, pixel))
    canvas = _over(canvas, fur, _coverage(body_sdf, pixel))
    canvas = _over(canvas, pink, _coverage(torch.minimum(*inner_sdf), pixel) * (1 - _coverage(head_sdf + 0.01, pixel)))

    # Mane tuft: darker strands between the ears that grow in with the horse factor.
    mane = fur * 0.5
    for lean in (-0.07, 0.0, 0.07):
        strand = _triangle(lx, ly, [(zero + lean - 0.07, zero - 0.30), (zero + lean * 1.8, zero - 0.36 - 0.22 * horse), (zero + lean + 0.07, zero - 0.30)])
        canvas = _over(canvas, mane, _coverage(strand, pixel) * horse)

    # Muzzle and cheeks; a horse's muzzle is long and reaches the chin.
    cream = fur * 0.3 + 0.7
    muzzle_y = zero + 0.16 + 0.20 * horse
    canvas = _over(canvas, cream, _coverage(_ellipse(lx, ly, zero, muzzle_y, 0.25 - 0.02 * horse, 0.16 + 0.14 * horse), pixel))
    blush = torch.tensor([0.97, 0.55, 0.62], device=device).expand(batch, 3)
    for sgn in (-1.0, 1.0):
        canvas = _over(canvas, blush, 0.5 * _coverage(_ellipse(lx, ly, zero + sgn * 0.32, zero + 0.13, 0.08, 0.05), pixel))

    # Eyes: dark ellipses with a highlight; their size grows with the factor.
    eye_r = 0.035 + 0.075 * eyes
    white = torch.ones(batch, 3, device=device)
    for sgn in (-1.0, 1.0):
        ex, ey = zero + sgn * 0.19, zero - 0.07
        canvas = _over(canvas, dark, _coverage(_ellipse(lx, ly, ex, ey, eye_r, eye_r * 1.15), pixel))
        highlight = _ellipse(lx, ly, ex + eye_r * 0.35, ey - eye_r * 0.4, eye_r * 0.32, eye_r * 0.32)
        canvas = _over(canvas, white, _coverage(highlight, pixel))

    # Nose: a pink inverted triangle, further down the longer horse face, with nostrils beside it.
    nose_w = 0.03 + 0.07 * nose
    ny = zero + 0.08 + 0.22 * horse
    nose_sdf = _triangle(lx, ly, [(-nose_w, ny - nose_w * 0.6), (zero, ny + nose_w * 0.6), (nose_w, ny - nose_w * 0.6)])
    canvas = _over(canvas, torch.tensor([0.86, 0.38, 0.50], device=device).expand(batch, 3), _coverage(nose_sdf, pixel))
    for sgn in (-1.0, 1.0):
        nostril = _ellipse(lx, ly, zero + sgn * 0.15, ny + 0.03, 0.035, 0.05)
        canvas = _over(canvas, dark, _coverage(nostril, pixel) * horse)

    # Nap smile: a stroked parabola under the nose, from flat (0) to a wide grin (1).
    curve = 0.3 + 5.2 * smile
    my = ny + nose_w * 0.6 + 0.09
    yc = my - curve * (lx**2 - 0.012)
    dist = torch.abs(ly - yc) / torch.sqrt(1 + (2 * curve * lx) ** 2)
    within = _coverage(torch.abs(lx) - 0.16, pixel)
    canvas = _over(canvas, dark, _coverage(dist - 0.018, pixel) * within)

    # Whiskers: three thin lines per side (decoration, not a factor); horses have none.
    for sgn in (-1.0, 1.0):
        for slope in (-0.25, 0.0, 0.25):
            t = lx * sgn - 0.22
            line = torch.abs(ly - (0.15 + slope * t)) / math.sqrt(1 + slope**2)
            span = _coverage(torch.abs(t - 0.16) - 0.16, pixel)
            canvas = _over(canvas, outline, 0.8 * _coverage(line - 0.007, pixel) * span * (1 - horse))
    return canvas.clamp(0, 1)
