"""The atlas: for each direction, a row of edits from -s to +s, to see at a glance what it does.

Computed only when the accordion is open (it renders k x 5 images), and cached by the editor.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.service import EigenfaceService

from .common import ATLAS_COLUMNS, SLIDER_MAX, SLIDER_STEP, guard
from .editor import Editor, Found
from .sliders import SliderPool

NO_BASIS = "Press **Find directions** first; the atlas shows the directions of the current image."


# ================================================================================= handlers
class AtlasHandlers:
    def __init__(self, editor: Editor):
        self.editor = editor

    @guard
    def opened(self, found: Found | None, mode: str, strength: float, progress=gr.Progress()):
        image, note = self._atlas(found, mode, strength, progress)
        return image, note, True

    @guard
    def refresh(self, found: Found | None, mode: str, strength: float, is_open: bool, progress=gr.Progress()):
        """After a new basis, mode or strength: recompute if the atlas is open (else leave it stale)."""
        if not is_open:
            return gr.skip(), gr.skip()
        return self._atlas(found, mode, strength, progress)

    @guard
    def closed(self):
        return False

    def _atlas(self, found: Found | None, mode: str, strength: float, progress) -> tuple:
        if found is None:
            return None, NO_BASIS
        # k x 4 geodesic edits would hold the server for minutes on a CPU; the straight step
        # shows what a direction does just as well at a glance.
        used = "direct" if mode == "geodesic" else mode
        image = self.editor.atlas(found, used, strength, progress)
        s = found.state
        note = (
            f"Seed {s.seed}, t = {s.timestep:g} T, {used} edits across {strength:.0%} of each direction's calibrated range "
            f"(strengths in brackets; middle column: unedited). Rows in order of σ, the direction's stretch factor."
        )
        if used != mode:
            note += " The atlas shows geodesic edits as direct steps; the sliders use the geodesic."
        return image, note


# ================================================================================= layout
@dataclass
class Atlas:
    accordion: gr.Accordion
    strength: gr.Slider
    image: gr.Image
    note: gr.Markdown
    is_open: gr.State


def build_atlas(service: EigenfaceService) -> Atlas:
    with gr.Accordion("Atlas: what each direction does", open=False, elem_id="eigen-atlas") as accordion:
        with gr.Row():
            strength = gr.Slider(SLIDER_STEP, SLIDER_MAX, value=SLIDER_MAX, step=SLIDER_STEP, label="Atlas reach", info=f"{ATLAS_COLUMNS} edits per row across this fraction of each direction's range", scale=1)
            note = gr.Markdown(NO_BASIS)
        image = gr.Image(label="Atlas", type="pil", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="eigen-atlas-image")
    return Atlas(accordion, strength, image, note, gr.State(False))


# ================================================================================= events
def refresh_step(h: AtlasHandlers, atlas: Atlas, pool: SliderPool) -> dict:
    """A ``.then`` step (keywords) that refreshes the atlas if it is open."""
    return dict(
        fn=h.refresh, inputs=[pool.found, pool.mode, atlas.strength, atlas.is_open], outputs=[atlas.image, atlas.note],
        concurrency_id="batch", show_progress_on=[atlas.image],
    )


def wire_atlas(h: AtlasHandlers, atlas: Atlas, pool: SliderPool) -> None:
    atlas.accordion.expand(
        h.opened, [pool.found, pool.mode, atlas.strength], [atlas.image, atlas.note, atlas.is_open],
        api_name="atlas_open", api_visibility="private", concurrency_id="batch", show_progress_on=[atlas.image],
    )
    atlas.accordion.collapse(h.closed, None, atlas.is_open, api_name="atlas_close", api_visibility="private", queue=False)
    atlas.strength.release(**refresh_step(h, atlas, pool), api_name="atlas_strength", api_visibility="private", trigger_mode="always_last")
