"""Steering past the sliders: saved directions (the shared library) and toward / away from text.

Both add one more direction, at its own strength, to the current slider edit. The result goes
to this section's own image, so that the main image, the share link and the exports keep
meaning exactly the slider edit they encode. Like the direction sliders, each strength slider
spans its direction's calibrated range at this image (backend/ranges.py), evenly in x0 change,
and its label shows the range's ends in strength units.
"""

from __future__ import annotations

from dataclasses import dataclass
import gradio as gr

from backend.errors import InputError
from backend.ranges import Calibration, strength_at
from backend.service import EigenfaceService
from backend.store import SavedDirection

from .common import SLIDER_MAX, SLIDER_MIN, SLIDER_STEP, guard
from .editor import SAVE_SLIDERS, Editor, Found
from .sliders import SliderPool, range_text

NO_IMAGE = "Press **Find directions** first: there is no image to steer yet."
TEXT_WAITING = "Press **Find directions** first; then type a concept (e.g. *smiling*) and press **Find**."
SAVED_LABEL = "Strength of the saved direction"
CONCEPT_LABEL = "away ← → toward"
TEXT_READY = "Type a concept (e.g. *smiling*) and press **Find**: the sliders' directions are ranked by how much they carry it and combined into one."


# ================================================================================= handlers
class SteerHandlers:
    def __init__(self, editor: Editor):
        self.editor = editor

    @guard
    def basis_shown(self, found: Found | None):
        """After a new basis or mode: what can be saved, whether text can steer this model, and
        both strengths back at zero (the section's image belongs to the previous edit)."""
        if found is None:
            return (gr.skip(),) * 9
        choices = [("current sliders", SAVE_SLIDERS)] + [(f"direction {i}", str(i)) for i in range(found.state.k)]
        text = self.editor.conditional(found.state.model)
        note = TEXT_READY if text else no_text(found.state.model)
        return (
            gr.update(choices=choices, value=SAVE_SLIDERS), gr.update(value=0, label=SAVED_LABEL),
            gr.update(interactive=text), gr.update(interactive=text), gr.update(value=0, interactive=text, label=CONCEPT_LABEL), note,
            None, "", "Move a strength slider to steer the image above.",
        )

    @guard
    def save(self, found: Found | None, mode: str, source: str, name: str, *values: float):
        """Save the slider edit or one direction under a name; the new name is selected."""
        saved = self.editor.save_direction(SliderPool.state(found, mode, values, NO_IMAGE), source, name)
        what = "the slider edit" if "sliders" in saved.provenance else f"direction {saved.provenance['index']}"
        note = f"Saved {what} as **{saved.name}**. Choose it above to apply it to any image of this model."
        return note, gr.update(choices=self.choices(), value=saved.name)

    @guard
    def refresh(self):
        return gr.update(choices=self.choices())

    def choices(self) -> list[tuple[str, str]]:
        return [(describe(saved), saved.name) for saved in self.editor.saved_directions()]

    @guard
    def apply_saved(self, found: Found | None, mode: str, name: str | None, position: float, transport: bool, *values: float):
        """The slider edit plus the chosen saved direction at the slider's position in its
        calibrated range; the slider's label shows that range."""
        if not name:
            return gr.skip(), "Choose a saved direction.", gr.skip()
        state = SliderPool.state(found, mode, values, NO_IMAGE)
        calibration = self.editor.saved_calibration(state, name, transport)
        strength = at(calibration, position)
        image = self.editor.apply_saved(state, name, strength, transport)
        how = ", carried into this image's directions" if transport else ""
        return image, f"Slider edit + saved direction **{name}** at {strength:+.3g}{how}.", gr.update(label=ranged(SAVED_LABEL, calibration))

    @guard
    def find_concept(self, found: Found | None, concept: str):
        """Rank the directions by a text concept; the slider then moves along their combination."""
        state = SliderPool.state(found, "direct", (), NO_IMAGE)
        concept = (concept or "").strip()
        alignment = self.editor.find_concept(state, concept)
        top = ", ".join(f"{int(i)} ({float(alignment.scores[i]):+.2f})" for i in alignment.order[:3])
        note = (
            f"**{concept}**: {alignment.captured:.0%} of the change it asks for lies in this image's top {len(alignment.scores)} "
            f"directions (the sliders are the first {state.k}), mostly in directions {top}. Slide right to move toward it, left to move away."
        )
        calibration = self.editor.concept_calibration(state, concept)
        return note, concept, gr.update(value=0, label=ranged(CONCEPT_LABEL, calibration))

    @guard
    def apply_concept(self, found: Found | None, mode: str, concept: str | None, position: float, *values: float):
        """The slider edit plus a move toward or away from the found concept, at the slider's
        position in the concept direction's calibrated range."""
        if not concept:
            raise InputError("Type a concept and press Find first.")
        state = SliderPool.state(found, mode, values, NO_IMAGE)
        strength = at(self.editor.concept_calibration(state, concept), position)
        image = self.editor.apply_concept(state, concept, strength)
        side = "toward" if strength >= 0 else "away from"
        return image, f"Slider edit + {abs(strength):.3g} {side} **{concept}**."


def at(calibration: Calibration, position: float) -> float:
    """The strength at a one-direction slider's position u in [-1, 1] (None, as Gradio may send: 0)."""
    return strength_at(calibration.travel[0], float(position or 0.0))


def ranged(label: str, calibration: Calibration) -> str:
    """A one-direction slider's label with its calibrated range."""
    return f"{label} · {range_text(*calibration.ranges[0])}"


def no_text(model: str) -> str:
    return (
        f"**{model}** has no text encoder, so there is no direction *toward a text* here: "
        "that needs a text-conditioned model (Stable Diffusion). Saved directions and the sliders work as usual."
    )


def describe(saved: SavedDirection) -> str:
    """A dropdown entry: the name, and the image it was found at when the file says so."""
    p = saved.provenance
    if "model" in p and "seed" in p:
        return f"{saved.name} · {p['model']}, seed {p['seed']}"
    return saved.name


# ================================================================================= layout
@dataclass
class Steer:
    source: gr.Dropdown
    name: gr.Textbox
    save: gr.Button
    saved: gr.Dropdown
    refresh: gr.Button
    saved_strength: gr.Slider
    transport: gr.Checkbox
    concept: gr.Textbox
    find: gr.Button
    concept_strength: gr.Slider
    concept_note: gr.Markdown
    concept_found: gr.State
    image: gr.Image
    note: gr.Markdown


def build_steer(service: EigenfaceService) -> Steer:
    with gr.Accordion("Saved directions and text", open=True, elem_id="eigen-steer"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                gr.Markdown("#### Saved directions")
                with gr.Row(equal_height=True):
                    source = gr.Dropdown([("current sliders", SAVE_SLIDERS)], value=SAVE_SLIDERS, label="Save", min_width=120, elem_id="save-source")
                    name = gr.Textbox("", label="Name", placeholder="e.g. wide smile", max_lines=1, min_width=120, elem_id="save-name")
                save = gr.Button("Save", size="md", elem_id="save-direction")
                with gr.Row(equal_height=True):
                    saved = gr.Dropdown([], value=None, label="Saved directions", scale=4, elem_id="saved-directions")
                    refresh = gr.Button("↻", size="sm", scale=1, min_width=40)
                saved_strength = gr.Slider(SLIDER_MIN, SLIDER_MAX, value=0, step=SLIDER_STEP, label=SAVED_LABEL, elem_id="saved-strength")
                transport = gr.Checkbox(False, label="Carry it into this image's directions (for another seed or timestep)")
            with gr.Column(scale=1, min_width=260):
                gr.Markdown("#### Toward / away from text")
                concept_note = gr.Markdown(TEXT_WAITING, elem_id="concept-note")
                with gr.Row(equal_height=True):
                    concept = gr.Textbox("", label="Concept", placeholder="smiling", max_lines=1, interactive=False, scale=3, elem_id="concept")
                    find = gr.Button("Find", size="md", interactive=False, scale=1, min_width=60, elem_id="find-concept")
                concept_strength = gr.Slider(SLIDER_MIN, SLIDER_MAX, value=0, step=SLIDER_STEP, label=CONCEPT_LABEL, interactive=False, elem_id="concept-strength")
            with gr.Column(scale=1, min_width=260):
                image = gr.Image(label="Steered image", type="pil", format="png", interactive=False, height=300, buttons=["download"], elem_id="eigen-steer-image")
                note = gr.Markdown("Move a strength slider to steer the image above.", elem_id="steer-note")
    return Steer(source, name, save, saved, refresh, saved_strength, transport, concept, find, concept_strength, concept_note, gr.State(""), image, note)


# ================================================================================= events
def refresh_step(h: SteerHandlers, steer: Steer, pool: SliderPool) -> dict:
    """A ``.then`` step (keywords) run whenever the displayed basis or mode changes."""
    return dict(
        fn=h.basis_shown, inputs=[pool.found],
        outputs=[steer.source, steer.saved_strength, steer.concept, steer.find, steer.concept_strength, steer.concept_note, steer.image, steer.concept_found, steer.note],
        show_progress="hidden",
    )


def wire_steer(h: SteerHandlers, steer: Steer, pool: SliderPool) -> None:
    steer.save.click(
        h.save, [pool.found, pool.mode, steer.source, steer.name, *pool.sliders], [steer.note, steer.saved],
        api_name="steer_save", api_visibility="private", concurrency_id="render",
    )
    steer.refresh.click(h.refresh, None, steer.saved, api_name="steer_refresh", api_visibility="private", queue=False)
    gr.on(
        [steer.saved.input, steer.saved_strength.release, steer.transport.input], h.apply_saved,
        [pool.found, pool.mode, steer.saved, steer.saved_strength, steer.transport, *pool.sliders], [steer.image, steer.note, steer.saved_strength],
        api_name="steer_apply", api_visibility="private", trigger_mode="always_last", concurrency_id="render", show_progress_on=[steer.image],
    )
    gr.on(
        [steer.find.click, steer.concept.submit], h.find_concept, [pool.found, steer.concept], [steer.concept_note, steer.concept_found, steer.concept_strength],
        api_name="steer_find_concept", api_visibility="private", concurrency_id="render",
    )
    steer.concept_strength.release(
        h.apply_concept, [pool.found, pool.mode, steer.concept_found, steer.concept_strength, *pool.sliders], [steer.image, steer.note],
        api_name="steer_apply_concept", api_visibility="private", trigger_mode="always_last", concurrency_id="render", show_progress_on=[steer.image],
    )
