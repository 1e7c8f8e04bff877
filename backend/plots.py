"""Small figures drawn with Pillow alone (no plotting library needed on a Space or in CI)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Viridis at 6 anchors, interpolated: perceptually even and readable in greyscale.
_VIRIDIS = np.array([[68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37]], dtype=float)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (viridis)."""
    pos = np.clip(values, 0, 1) * (len(_VIRIDIS) - 1)
    low = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - low)[..., None]
    return (_VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac).round().astype(np.uint8)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str = "", cell: int = 28) -> Image.Image:
    """A labelled square heatmap with each cell's value written in it."""
    n = matrix.shape[0]
    margin = 8 + 7 * max((len(label) for label in labels), default=0)
    top = 24 if title else 8
    image = Image.new("RGB", (margin + n * cell + 8, top + margin + n * cell), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((8, 6), title, fill="black")
    high = float(matrix.max()) or 1.0
    colours = colormap(matrix / high)
    for i in range(n):
        draw.text((4, top + margin + i * cell + cell // 3), labels[i], fill="black")
        for j in range(n):
            x0, y0 = margin + j * cell, top + margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=tuple(int(c) for c in colours[i, j]))
            shade = "black" if matrix[i, j] / high > 0.6 else "white"
            draw.text((x0 + 3, y0 + cell // 3), f"{matrix[i, j]:.1f}", fill=shade)
    # column labels, written vertically
    for j, label in enumerate(labels):
        strip = Image.new("RGB", (margin, 12), "white")
        ImageDraw.Draw(strip).text((2, 0), label, fill="black")
        image.paste(strip.rotate(90, expand=True), (margin + j * cell + cell // 3, top))
    return image
