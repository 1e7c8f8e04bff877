"""The slider pool: one slider per possible direction, the basis they belong to, and the one
place where the page turns slider values back into an :class:`~backend.state.EditState`.

Gradio cannot add components to a live page, so the pool holds :data:`~ui.common.N_SLIDERS`
sliders and shows the first k. Every event that needs "the edit on screen" takes
:attr:`SliderPool.inputs` (basis, mode, every slider) and calls :meth:`SliderPool.state`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import gradio as gr

from backend.errors import InputError
from backend.state import EditState

from .common import N_SLIDERS, SLIDER_MAX, SLIDER_MIN, SLIDER_STEP
from .editor import Found

#: What an event that needs the edit on screen says before any basis was found.
NO_BASIS = "Press Find directions first: there is no edit yet."


@dataclass
class SliderPool:
    sliders: list[gr.Slider]
    found: gr.State  # the Found the sliders belong to; None before the first Find directions
    mode: gr.Radio  # the edit mode the sliders are rendered with

    @classmethod
    def build(cls, mode: gr.Radio) -> SliderPool:
        """The sliders, placed where this is called (all hidden until a basis is shown)."""
        sliders = [
            gr.Slider(SLIDER_MIN, SLIDER_MAX, value=0, step=SLIDER_STEP, label=f"direction {i}", visible=False, elem_id=f"direction-{i}")
            for i in range(N_SLIDERS)
        ]
        return cls(sliders, gr.State(None), mode)

    @property
    def inputs(self) -> list[gr.components.Component]:
        """Event inputs that carry the edit on screen: basis, mode, then every slider."""
        return [self.found, self.mode, *self.sliders]

    @staticmethod
    def state(found: Found | None, mode: str, values: Sequence[float] = (), missing: str = NO_BASIS) -> EditState:
        """The displayed basis with the page's mode and the first k slider positions turned into
        strengths (each slider spans its direction's calibrated range, evenly in x0 change;
        none: the unedited image). ``missing``: the message when there is no basis yet."""
        if found is None:
            raise InputError(missing)
        strengths = tuple(found.strength(i, float(v or 0.0)) for i, v in enumerate(values[: found.state.k]))
        return replace(found.state, mode=mode, sliders=strengths)


def shown(found: Found, strengths: Sequence[float] = (), labels: Sequence[str] | None = None) -> list[dict]:
    """Updates that show the basis's k sliders at the positions of ``strengths`` (default zero)
    and hide the rest."""
    values = [found.position(i, s) for i, s in enumerate(strengths)] + [0.0] * (N_SLIDERS - len(strengths))
    return [
        gr.update(visible=True, value=values[i], label=slider_label(i, found, labels))
        if i < found.state.k
        else gr.update(visible=False, value=0)
        for i in range(N_SLIDERS)
    ]


def relabelled(found: Found, labels: Sequence[str]) -> list:
    """Updates that put the directions' names on the shown sliders (values untouched)."""
    return [gr.update(label=slider_label(i, found, labels)) if i < found.state.k else gr.skip() for i in range(N_SLIDERS)]


def zeroed() -> list[dict]:
    return [gr.update(value=0) for _ in range(N_SLIDERS)]


def slider_label(index: int, found: Found, labels: Sequence[str] | None = None) -> str:
    """"3 · ears · σ=1.2 · −0.15…+0.21" once the directions are named, "direction 3 · ..." before;
    the range is the strengths the slider's ends stand for."""
    name = f"{index} · {labels[index]}" if labels else f"direction {index}"
    text = f"{name} · σ={found.sigma[index]:.3g}"
    if index < len(found.ranges):
        text += f" · {range_text(*found.ranges[index])}"
    return text


def range_text(lo: float, hi: float) -> str:
    """"−0.15…+0.21": the strengths a calibrated slider's ends stand for."""
    return f"{lo:+.2f}…{hi:+.2f}".replace("-", "−")
