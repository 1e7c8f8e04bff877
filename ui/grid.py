"""The atlas picture: rows of image tiles with a label left of each row and above each column."""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def labelled_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str], min_tile: int = 96) -> Image.Image:
    """Rows of equal-size tiles on white, with a label left of each row and above each column."""
    w, h = rows[0][0].size
    scale = max(1, math.ceil(min_tile / w))
    tw, th = w * scale, h * scale
    size = max(12, th // 7)
    font, _ = label_font(size)
    longest = max((font.getlength(text) for text in row_labels), default=0)
    margin_left, margin_top, gap = max(int(size * 7.5), int(longest) + 12), int(size * 1.8), max(2, tw // 32)
    columns = max(len(r) for r in rows)
    grid = Image.new("RGB", (margin_left + columns * (tw + gap), margin_top + len(rows) * (th + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(column_labels):
        draw.text((margin_left + c * (tw + gap) + tw // 2, margin_top // 2), text, fill="black", font=font, anchor="mm")
    for r, row in enumerate(rows):
        y = margin_top + r * (th + gap)
        draw.text((6, y + th // 2), row_labels[r] if r < len(row_labels) else str(r), fill="black", font=font, anchor="lm")
        for c, tile in enumerate(row):
            grid.paste(tile.resize((tw, th), Image.Resampling.LANCZOS), (margin_left + c * (tw + gap), y))
    return grid


def label_font(size: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, bool]:
    """A font for labels, and whether it has Greek letters (Pillow's built-in one has none)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size), False
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default(), False


def signed(value: float) -> str:
    return "0" if abs(value) < 1e-9 else f"{value:+.2g}"
