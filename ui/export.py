"""Export and import: the image (PNG), a traversal (GIF), the edit itself (JSON, loadable)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr

from backend.basis import MAX_K
from backend.errors import InputError
from backend.service import EigenfaceService
from backend.state import MAX_JSON_BYTES, EditState

from .common import N_SLIDERS, SLIDER_MAX, SLIDER_STEP, guard
from .editor import Editor, Found
from .explore import RESTORE_FIELDS, Explore, ExploreHandlers, current

NOTHING_YET = "Press Find directions first: there is no edit to export yet."


# ================================================================================= handlers
class ExportHandlers:
    def __init__(self, editor: Editor, explore: ExploreHandlers):
        self.editor = editor
        self.explore = explore

    @guard
    def png(self, found: Found | None, mode: str, *values: float):
        return self.editor.export_png(_state(found, mode, values))

    @guard
    def json(self, found: Found | None, mode: str, *values: float):
        return self.editor.export_json(_state(found, mode, values))

    @guard
    def gif(self, found: Found | None, mode: str, direction, strength):
        return self.editor.export_gif(_state(found, mode, ()), direction, strength)

    @guard
    def read(self, path: str | None):
        """An uploaded edit file -> a checked EditState (a bad file only gets a toast)."""
        if not path:
            raise InputError("no file received")
        return self.explore.check(EditState.load(path))

    @guard
    def load(self, state: EditState | None, page_url: str, progress=gr.Progress()):
        """The checked edit -> every control, the sliders and the image."""
        if state is None:
            return (gr.skip(),) * (len(RESTORE_FIELDS) + N_SLIDERS)
        return self.explore.restore(state, page_url, progress)


def _state(found: Found | None, mode: str, values) -> EditState:
    if found is None:
        raise InputError(NOTHING_YET)
    return current(found, mode, values) if values else replace(found.state, mode=mode)


# ================================================================================= layout
@dataclass
class Export:
    png: gr.Button
    json: gr.Button
    gif: gr.Button
    gif_direction: gr.Number
    gif_strength: gr.Slider
    load: gr.UploadButton
    files: gr.File
    pending: gr.State


def build_export(service: EigenfaceService) -> Export:
    with gr.Accordion("Export & load", open=True, elem_id="eigen-export"):
        with gr.Row(equal_height=True):
            png = gr.Button("Image (PNG)", size="md")
            json = gr.Button("Edit (JSON)", size="md")
            load = gr.UploadButton(f"Load edit (JSON, ≤ {MAX_JSON_BYTES // 1024} kB)", file_types=[".json"], size="md", elem_id="load-edit")
        with gr.Row(equal_height=True):
            gif_direction = gr.Number(0, precision=0, minimum=0, maximum=MAX_K - 1, label="GIF: direction", min_width=100)
            gif_strength = gr.Slider(SLIDER_STEP, SLIDER_MAX, value=service.settings(service.model_names[0]).strength, step=SLIDER_STEP, label="GIF: strength (−s … +s)", min_width=160)
            gif = gr.Button("Traversal (GIF)", size="md")
        files = gr.File(label="Download", interactive=False, elem_id="eigen-download")
    return Export(png, json, gif, gif_direction, gif_strength, load, files, gr.State(None))


# ================================================================================= events
def wire_export(h: ExportHandlers, export: Export, ex: Explore, then_after) -> None:
    state_in = [ex.found, ex.mode, *ex.sliders]
    export.png.click(h.png, state_in, export.files, api_name="export_png", api_visibility="private", concurrency_id="render")
    export.json.click(h.json, state_in, export.files, api_name="export_json", api_visibility="private", queue=False)
    export.gif.click(
        h.gif, [ex.found, ex.mode, export.gif_direction, export.gif_strength], export.files,
        api_name="export_gif", api_visibility="private", concurrency_id="batch", concurrency_limit=1,
    )
    loaded = export.load.upload(
        h.read, export.load, export.pending, api_name="read_edit", api_visibility="private", show_progress="hidden",
    ).then(
        h.load, [export.pending, ex.page_url], ex.restore_outputs(),
        api_name="load_edit", api_visibility="private", concurrency_id="basis", concurrency_limit=1, show_progress_on=[ex.image],
    )
    then_after(loaded, "load")
