"""Endpoints for programs (``gradio_client``) that the page itself does not click.

``render`` takes every setting as an explicit input (no session state), so a script can
reproduce any edit: the page's visible settings plus two hidden inputs (slider values as JSON,
a preview flag) and a hidden output image.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.errors import InputError
from backend.service import EigenfaceService

from .common import guard
from .editor import Editor
from .explore import Explore


# ================================================================================= handlers
class ApiHandlers:
    def __init__(self, editor: Editor):
        self.editor = editor

    @guard
    def render(self, model, prompt, seed, timestep, k, steps, mode, sliders, preview):
        """The edited image for explicit settings.

        sliders: JSON, a list of strengths per direction ([0.4, 0, -0.3]) or an object
        ({"0": 0.4, "2": -0.3}); strength unit: RMS change of x_t per element, about [-1, 1].
        preview: a quick image (few denoising steps) instead of the full-quality one.
        With every slider at zero the result is exactly the unedited image.
        """
        if not isinstance(preview, bool):
            raise InputError(f"preview must be true or false, got {preview!r}")
        if sliders is not None and not isinstance(sliders, str):
            raise InputError("sliders must be JSON text, like [0.4, 0, -0.3] or {\"0\": 0.4}")
        state = self.editor.state(model, prompt, seed, timestep, k, steps, mode, sliders or "")
        return self.editor.render(state, preview=preview)


# ================================================================================= layout
@dataclass
class Api:
    trigger: gr.Button
    sliders: gr.Textbox
    preview: gr.Checkbox
    image: gr.Image


def build_api(service: EigenfaceService) -> Api:
    with gr.Group(visible=False):
        trigger = gr.Button("render", visible=False)
        sliders = gr.Textbox("[]", label="Slider values (JSON)", visible=False)
        preview = gr.Checkbox(False, label="Preview", visible=False)
        image = gr.Image(label="Rendered image", type="pil", format="png", visible=False)
    return Api(trigger, sliders, preview, image)


# ================================================================================= events
def wire_api(h: ApiHandlers, api: Api, ex: Explore) -> None:
    api.trigger.click(
        h.render, [*ex.controls, ex.mode, api.sliders, api.preview], api.image,
        api_name="render", preprocess=False, concurrency_id="render",
    )
