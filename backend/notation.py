"""The command line's notation for slider values: ``--direction I=S``, ``I=Pr``, ``I=hi`` / ``I=lo``.

Its own module because it is a small language with its own errors (and the README documents it);
the page needs none of it: its sliders already are positions on the calibrated ranges.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .errors import InputError
from .ranges import strength_at


def parse_directions(items: list[str], travel: Callable[[], Sequence[Sequence[float]]] | None = None) -> dict[int, float]:
    """--direction values -> {index: strength}.

    ``I=S`` is a strength (edit.py's unit). ``I=Pr`` is slider position P in [-1, 1] on the
    direction's calibrated range, evenly spaced in x0 change as on the page (``0=1r`` is the
    valid end on the positive side, ``0=-0.5r`` half way to the negative one); ``I=hi`` and
    ``I=lo`` are ``1r`` and ``-1r``. ``travel()`` gives the basis's travel maps (ranges.py),
    called only when a calibrated value is used.
    """
    values: dict[int, float] = {}
    for item in items:
        index, sep, text = item.partition("=")
        text = {"hi": "1r", "lo": "-1r"}.get(text.strip().lower(), text.strip())
        try:
            if not sep:
                raise ValueError
            i = int(index)
            if not text.lower().endswith("r"):
                values[i] = float(text)
                continue
            position = float(text[:-1])
        except ValueError:
            raise InputError(f"--direction takes INDEX=STRENGTH, INDEX=POSITIONr (-1r .. 1r) or INDEX=hi / lo, got {item!r}") from None
        if not -1 <= position <= 1:
            raise InputError(f"--direction {item!r}: a position on the calibrated range must be within -1r .. 1r")
        if travel is None:
            raise InputError(f"--direction {item!r}: calibrated positions need a basis (edit --basis, directions save)")
        maps = travel()
        if not 0 <= i < len(maps):
            raise InputError(f"direction index {i} is out of range: the basis has {len(maps)} directions (0..{len(maps) - 1})")
        values[i] = strength_at(tuple(maps[i]), position)
    return values
