"""Export and import: the image (PNG), a traversal (GIF), the edit itself (JSON, loadable)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.basis import MAX_K
from backend.service import EigenfaceService
from backend.state import MAX_JSON_BYTES

from .common import SLIDER_MAX, SLIDER_STEP, guard
from .editor import Editor, Found
from .sliders import SliderPool

NOTHING_YET = "Press Find directions first: there is no edit to export yet."


# ================================================================================= handlers
class ExportHandlers:
    def __init__(self, editor: Editor):
        self.editor = editor

    @guard
    def png(self, found: Found | None, mode: str, *values: float):
        return self.editor.export_png(SliderPool.state(found, mode, values, NOTHING_YET))

    @guard
    def json(self, found: Found | None, mode: str, *values: float):
        return self.editor.export_json(SliderPool.state(found, mode, values, NOTHING_YET))

    @guard
    def gif(self, found: Found | None, mode: str, direction, reach):
        return self.editor.export_gif(found, SliderPool.state(found, mode, (), NOTHING_YET), direction, reach)


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
            gif_strength = gr.Slider(SLIDER_STEP, SLIDER_MAX, value=SLIDER_MAX, step=SLIDER_STEP, label="GIF: reach (fraction of the direction's range)", min_width=160)
            gif = gr.Button("Traversal (GIF)", size="md")
        files = gr.File(label="Download", interactive=False, elem_id="eigen-download")
    return Export(png, json, gif, gif_direction, gif_strength, load, files, gr.State(None))


# ================================================================================= events
def wire_export(h: ExportHandlers, export: Export, pool: SliderPool) -> None:
    """The downloads. Loading a file restores the whole page, so the page wires :attr:`Export.load`."""
    export.png.click(h.png, pool.inputs, export.files, api_name="export_png", api_visibility="private", concurrency_id="render")
    export.json.click(h.json, pool.inputs, export.files, api_name="export_json", api_visibility="private", queue=False)
    export.gif.click(
        h.gif, [pool.found, pool.mode, export.gif_direction, export.gif_strength], export.files,
        api_name="export_gif", api_visibility="private", concurrency_id="batch",
    )
