"""The page: builds the sections and wires the events that cross between them.

Each section knows only its own components, the :class:`~ui.sliders.SliderPool` and the
:class:`~ui.editor.Editor`. What links two sections lives here: a new basis or mode refreshes
the atlas and the steering controls; a model's own strength reaches the atlas and the GIF; a
share link (page load) or an uploaded edit file restores every section.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from backend.service import EigenfaceService
from backend.state import EditState

from . import atlas, explore, export, steer
from .api import ApiHandlers, build_api, wire_api
from .editor import Editor
from .restore import Restorer, outputs


class Page:
    """Build inside ``with demo:``; the sections' components are attributes for tests and tools."""

    def __init__(self, demo: gr.Blocks, service: EigenfaceService):
        editor = Editor(service)
        first = service.model_names[0]
        settings = service.settings(first)
        self.restorer = Restorer(editor, EditState(model=first, prompt=settings.prompt, seed=settings.seed, timestep=settings.timestep))
        self.explore_h = explore.ExploreHandlers(editor)
        self.atlas_h = atlas.AtlasHandlers(editor)
        self.steer_h = steer.SteerHandlers(editor)
        self.export_h = export.ExportHandlers(editor)
        self.api_h = ApiHandlers(editor)

        self.explore = explore.build_explore(service)
        self.steer = steer.build_steer(service)
        self.atlas = atlas.build_atlas(service)
        self.export = export.build_export(service)
        self.api = build_api()
        self._wire(demo)

    def after_basis(self, dep: Any, prefix: str) -> None:
        """Append to ``dep`` (an event that changed the displayed basis or mode) the start of its
        geodesic paths' precompute (a no-op when they are cached or running), then the refresh
        of the atlas and of the steering controls."""
        pool, ex = self.explore.pool, self.explore
        dep = dep.then(
            self.explore_h.start_paths, pool.found, [ex.mode, ex.paths, ex.paths_timer],
            api_name=f"{prefix}_paths", api_visibility="private", show_progress="hidden", queue=False,
        )
        for i, step in enumerate([atlas.refresh_step(self.atlas_h, self.atlas, pool), steer.refresh_step(self.steer_h, self.steer, pool)]):
            dep = dep.then(**step, api_name=f"{prefix}_after_{i}", api_visibility="private")

    def _wire(self, demo: gr.Blocks) -> None:
        ex, pool = self.explore, self.explore.pool
        explore.wire_explore(self.explore_h, ex, self.after_basis)
        atlas.wire_atlas(self.atlas_h, self.atlas, pool)
        steer.wire_steer(self.steer_h, self.steer, pool)
        export.wire_export(self.export_h, self.export, pool)
        wire_api(self.api_h, self.api, ex.controls, ex.mode)

        restored = outputs(ex)
        loaded = self.export.load.upload(
            self.restorer.read, self.export.load, self.export.pending, api_name="read_edit", api_visibility="private", show_progress="hidden",
        ).then(
            self.restorer.load, [self.export.pending, ex.page_url], restored,
            api_name="load_edit", api_visibility="private", concurrency_id="basis", show_progress_on=[ex.image],
        )
        self.after_basis(loaded, "load")
        opened = demo.load(
            self.restorer.on_load, None, [ex.page_url, *restored],
            api_name="on_load", api_visibility="private", concurrency_id="basis", show_progress_on=[ex.image],
        )
        self.after_basis(opened, "on_load")  # a link may have restored a basis
        demo.load(self.steer_h.refresh, None, self.steer.saved, api_name="saved_on_load", api_visibility="private", queue=False)
