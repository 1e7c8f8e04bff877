"""Endpoints for programs (``gradio_client``) that the page itself does not click.

Each takes every setting as an explicit input (no session state), so a script can reproduce
any edit, and calls the same :class:`~ui.editor.Editor` methods as the page's own events.
Endpoints that answer JSON text are plain typed functions served by ``gr.api``. The three that
answer an image are events of hidden components (the page's settings plus hidden inputs:
slider values as JSON, a preview flag, a name, a strength...), because only an image
component sends a client an image file.

No ``from __future__ import annotations`` here: ``gr.api`` reads the return annotations as types.
"""

import functools
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import gradio as gr

from backend.errors import InputError
from backend.state import EditState

from .common import guard
from .editor import SAVE_SLIDERS, Editor


# ================================================================================= handlers
class ApiHandlers:
    def __init__(self, editor: Editor):
        self.editor = editor

    def _state(self, model, prompt, seed, timestep, k, steps, mode="direct", sliders=None) -> EditState:
        if sliders is not None and not isinstance(sliders, str):
            raise InputError("sliders must be JSON text, like [0.4, 0, -0.3] or {\"0\": 0.4}")
        return self.editor.state(model, prompt, seed, timestep, k, steps, mode, sliders or "")

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
        return self.editor.render(self._state(model, prompt, seed, timestep, k, steps, mode, sliders), preview=preview)

    @guard
    def name_directions(self, model: str, prompt: str, seed: int, timestep: float, k: int, steps: int) -> str:
        """A name for each of the k directions (JSON list): the factor it moves most, or
        "mixed (top: ...)". Only models with known factors (the built-in one) can do this."""
        return json.dumps(list(self.editor.labels(self._state(model, prompt, seed, timestep, k, steps))))

    @guard
    def save_direction(self, model: str, prompt: str, seed: int, timestep: float, k: int, steps: int, sliders: str, source: str, name: str) -> str:
        """Save the slider edit (source "sliders") or one direction (source: its index, "3") under
        a name (letters, digits, space, - _ .); returns the saved provenance as JSON."""
        saved = self.editor.save_direction(self._state(model, prompt, seed, timestep, k, steps, "direct", sliders), source, name)
        return json.dumps({"name": saved.name, **saved.provenance})

    @guard
    def saved_directions(self) -> str:
        """Every saved direction with its provenance (JSON list)."""
        return json.dumps([{"name": saved.name, **saved.provenance} for saved in self.editor.saved_directions()])

    @guard
    def apply_direction(self, model, prompt, seed, timestep, k, steps, mode, sliders, name, strength, transport):
        """The slider edit plus the saved direction ``name`` at ``strength``; ``transport`` carries
        it into this image's directions first (for a direction saved at another seed or timestep).
        ``strength`` is in strength units, like ``sliders`` (the page's slider maps its position
        through the direction's calibrated range first)."""
        return self.editor.apply_saved(self._state(model, prompt, seed, timestep, k, steps, mode, sliders), name, strength, transport)

    @guard
    def find_concept(self, model: str, prompt: str, seed: int, timestep: float, k: int, steps: int, concept: str) -> str:
        """How a text concept decomposes on the image's top max(k, 24) directions (JSON): each
        direction's signed score, the directions by decreasing |score|, and the fraction of the
        concept's change they capture."""
        alignment = self.editor.find_concept(self._state(model, prompt, seed, timestep, k, steps), concept)
        return json.dumps({
            "scores": [round(float(s), 6) for s in alignment.scores],
            "order": [int(i) for i in alignment.order],
            "captured": round(alignment.captured, 6),
        })

    @guard
    def geodesic_paths(self, model: str, prompt: str, seed: int, timestep: float, k: int, steps: int) -> str:
        """Start (or look up) the precompute of the k directions' geodesic paths, in the
        background, and return its status as JSON: state ("running", "ready", "failed"), batched
        steps done and total, seconds. Call again to poll; once "ready", a one-slider ``render``
        in geodesic mode is as fast as a direct one."""
        state = self._state(model, prompt, seed, timestep, k, steps)
        self.editor.discover(state)  # on the accelerator, like the page's Find directions
        status = self.editor.start_paths(state, f"api:{state.to_query()}")
        return json.dumps({"state": status.state, "done": status.done, "total": status.total, "seconds": round(status.seconds, 3), "message": status.message})

    @guard
    def apply_concept(self, model, prompt, seed, timestep, k, steps, mode, sliders, concept, strength):
        """The slider edit plus ``strength`` toward (> 0) or away from (< 0) a text concept
        (strength units, like ``sliders``; the page's slider maps its position through the
        concept direction's calibrated range first)."""
        return self.editor.apply_concept(self._state(model, prompt, seed, timestep, k, steps, mode, sliders), concept, strength)


# ================================================================================= layout
@dataclass
class Api:
    """Hidden inputs and outputs of the image endpoints (their settings are the page's own)."""

    triggers: dict[str, gr.Button]
    sliders: gr.Textbox
    preview: gr.Checkbox
    name: gr.Textbox
    strength: gr.Number
    transport: gr.Checkbox
    concept: gr.Textbox
    image: gr.Image


#: Endpoints answering an image: events of hidden buttons.
IMAGE_ENDPOINTS = ("render", "apply_direction", "apply_concept")
#: The page's basis settings, in the order of every endpoint's first parameters.
SETTINGS = ("model", "prompt", "seed", "timestep", "k", "steps")
#: Defaults of the other parameters (the values of the hidden inputs the image endpoints use).
HIDDEN_DEFAULTS = {"sliders": "[]", "source": SAVE_SLIDERS, "name": "", "concept": ""}
#: Endpoints answering JSON text, served by ``gr.api``: name -> concurrency group (None: not queued).
JSON_ENDPOINTS = {"name_directions": "batch", "save_direction": "render", "saved_directions": None, "find_concept": "render", "geodesic_paths": "render"}


def build_api() -> Api:
    with gr.Group(visible=False):
        triggers = {name: gr.Button(name, visible=False) for name in IMAGE_ENDPOINTS}
        sliders = gr.Textbox("[]", label="Slider values (JSON)", visible=False)
        preview = gr.Checkbox(False, label="Preview", visible=False)
        name = gr.Textbox("", label="Direction name", visible=False)
        strength = gr.Number(0.0, label="Strength", visible=False)
        transport = gr.Checkbox(False, label="Transport", visible=False)
        concept = gr.Textbox("", label="Concept", visible=False)
        image = gr.Image(label="Rendered image", type="pil", format="png", visible=False)
    return Api(triggers, sliders, preview, name, strength, transport, concept, image)


# ================================================================================= events
def wire_api(h: ApiHandlers, api: Api, controls: list[gr.components.Component], mode: gr.Radio) -> None:
    """``controls``: the page's basis settings in API order (model ... steps); ``mode``: its edit mode."""
    edit = [*controls, mode, api.sliders]
    images = {
        "render": [*edit, api.preview],
        "apply_direction": [*edit, api.name, api.strength, api.transport],
        "apply_concept": [*edit, api.concept, api.strength],
    }
    for name, inputs in images.items():
        api.triggers[name].click(getattr(h, name), inputs, api.image, api_name=name, preprocess=False, concurrency_id="render")
    # The JSON endpoints document the same defaults and model choices as the page's components.
    defaults = {**{name: c.value for name, c in zip(SETTINGS, controls)}, **HIDDEN_DEFAULTS}
    models = Literal[tuple(value for _, value in controls[0].choices)]  # type: ignore[valid-type]
    for name, concurrency in JSON_ENDPOINTS.items():
        options = {"concurrency_id": concurrency} if concurrency else {"queue": False}
        gr.api(documented(getattr(h, name), defaults, model=models), api_name=name, **options)


def documented(fn: Callable[..., str], defaults: Mapping[str, Any], **types: Any) -> Callable[..., str]:
    """``fn`` whose signature, as ``gr.api`` reads it, has ``defaults`` and the given parameter types."""

    @functools.wraps(fn)
    def endpoint(*args: Any) -> str:
        return fn(*args)

    signature = inspect.signature(fn)
    endpoint.__signature__ = signature.replace(parameters=[p.replace(default=defaults.get(p.name, p.default)) for p in signature.parameters.values()])  # type: ignore[attr-defined]
    endpoint.__annotations__ = {**fn.__annotations__, **{name: t for name, t in types.items() if name in signature.parameters}}
    return endpoint
