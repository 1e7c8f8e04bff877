"""Opening a saved edit (a share link on page load, or an uploaded JSON file): every control,
the basis, the sliders and the image come back as they were.

Both ways end in :meth:`Restorer.restore`, whose outputs are :func:`outputs` in this order.
"""

from __future__ import annotations

import gradio as gr

from backend.errors import InputError
from backend.state import EditState

from .common import N_SLIDERS, guard
from .editor import Editor
from .explore import Explore
from .sliders import shown
from .status import NO_DIRECTIONS, found_status, page_url, share_link

#: The order of the outputs of :meth:`Restorer.restore` (then the 64 sliders).
FIELDS = ("model", "prompt", "seed", "timestep", "k", "steps", "mode", "found", "image", "compare", "status", "share", "name")
#: Query keys that make a page address a share link.
LINK_KEYS = ("model", "seed", "t", "k", "steps", "mode", "s", "prompt")


def outputs(ex: Explore) -> list:
    """The components :meth:`Restorer.restore` updates, in its order."""
    return [getattr(ex, name) for name in FIELDS] + ex.pool.sliders


class Restorer:
    """``default``: what a plain page load (no share link) shows."""

    def __init__(self, editor: Editor, default: EditState):
        self.editor = editor
        self.default = default

    @guard
    def on_load(self, request: gr.Request, progress=gr.Progress()):
        """Page load: restore the edit in the URL query if there is one, else show the default image."""
        url = page_url(request)
        params = dict(request.query_params) if request is not None else {}
        if any(key in params for key in LINK_KEYS):
            try:
                state = self.check(EditState.from_query(params))
            except InputError as exc:  # a broken link still opens the page, with a warning
                gr.Warning(f"Could not open the edit in this link: {exc}", title="Link not restored")
            else:
                return (url, *self.restore(state, url, progress))
        state = self.default
        updates = {name: gr.skip() for name in FIELDS}
        updates["prompt"] = gr.update(visible=self.editor.conditional(state.model))
        updates["image"] = self.editor.original(state)
        updates["status"] = NO_DIRECTIONS
        return (url, *(updates[name] for name in FIELDS), *(gr.skip() for _ in range(N_SLIDERS)))

    @guard
    def read(self, path: str | None) -> EditState:
        """An uploaded edit file -> a checked EditState (a bad file only gets a toast)."""
        if not path:
            raise InputError("no file received")
        return self.check(EditState.load(path))

    @guard
    def load(self, state: EditState | None, url: str, progress=gr.Progress()):
        """The checked edit from :meth:`read` -> every control, the sliders and the image."""
        if state is None:
            return (gr.skip(),) * (len(FIELDS) + N_SLIDERS)
        return self.restore(state, url, progress)

    def check(self, state: EditState) -> EditState:
        """A saved edit (file or link) this server and page can show; else InputError."""
        self.editor.state(state.model, state.prompt, state.seed, state.timestep, state.k, state.steps, state.mode)  # allow-list
        if state.prompt and not self.editor.conditional(state.model):
            raise InputError(f"model {state.model!r} is unconditional: it takes no prompt")
        return self.editor.for_page(state)

    def restore(self, state: EditState, url: str, progress=None) -> tuple:
        """Everything the page shows for a checked edit: controls, basis, sliders, image."""
        found = self.editor.discover(state, progress)
        image = self.editor.render(state)
        original = self.editor.original(state)
        conditional = self.editor.conditional(state.model)
        values = {
            "name": gr.update(visible=self.editor.can_name(state.model)),
            "model": state.model,
            "prompt": gr.update(value=state.prompt, visible=conditional),
            "seed": state.seed,
            "timestep": state.timestep,
            "k": state.k,
            "steps": state.steps,
            "mode": state.mode,
            "found": found,
            "image": image,
            "compare": (original, image),
            "status": found_status(found),
            "share": share_link(url, state),
        }
        return (*(values[name] for name in FIELDS), *shown(found, state.sliders, self.editor.labels(state, compute=False)))
