"""Tensors to pictures and back: the one place Eigenface converts between torch and PIL."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_pil(images: Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [0, 1] -> RGB PIL images (rounded, so equal tensors give equal bytes).

    Always RGB, so every strip, grid and GIF can mix images freely: a grayscale model (one
    channel, or gray plus alpha) is shown as gray, an RGBA one without its alpha.
    """
    if images.shape[1] < 3:
        images = images[:, :1].expand(-1, 3, -1, -1)
    images = images[:, :3]
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def pil_to_tensor(images: Image.Image | Sequence[Image.Image]) -> Tensor:
    """PIL image(s) -> float tensor (B, 3, H, W) in [0, 1]."""
    if isinstance(images, Image.Image):
        images = [images]
    arrays = [np.array(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def image_grid(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """Rows of equal-sized images pasted into one picture (short rows leave white space)."""
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * w, r * h))
    return grid
