"""The main section: settings, "Find directions", the image, one slider per direction.

Handlers first, then the layout (:func:`build_explore`), then the events (:func:`wire_explore`).
The public ``find_directions`` endpoint is the button's own event, with explicit inputs, so a
``gradio_client`` call and a click run the same code. The sliders themselves are the
:class:`~ui.sliders.SliderPool`'s; their events (preview, settle, reset) are wired here.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable

import gradio as gr

from backend.edit import EDIT_MODES
from backend.errors import InputError
from backend.precompute import PathStatus
from backend.sampling import DEFAULT_STEPS
from backend.service import EigenfaceService
from backend.specs import DEFAULT_K, PAGE_RANGES
from backend.state import EditState

from .common import MAX_UI_SEED, N_SLIDERS, RANDOM_SEED_MAX, guard
from .editor import Editor, Found
from .sliders import SliderPool, relabelled, shown, zeroed
from .status import NO_DIRECTIONS, found_status, share_link, stale_status


# ================================================================================= handlers
class ExploreHandlers:
    """Each method is one event's function; ``*values`` are the 64 pool sliders."""

    def __init__(self, editor: Editor):
        self.editor = editor
        self._settled: OrderedDict[str, EditState] = OrderedDict()  # per browser session
        self._settled_lock = threading.Lock()

    def _settle(self, request: gr.Request | None, state: EditState) -> None:
        session = getattr(request, "session_hash", None)
        if session is None:
            return
        with self._settled_lock:
            self._settled[session] = state
            self._settled.move_to_end(session)
            while len(self._settled) > MAX_SESSIONS:
                self._settled.popitem(last=False)

    def _last_settled(self, request: gr.Request | None) -> EditState | None:
        session = getattr(request, "session_hash", None)
        with self._settled_lock:
            return self._settled.get(session) if session is not None else None

    # ---------------------------------------------------------------- the public endpoint
    @guard
    def find_directions(self, model, prompt, seed, timestep, k, steps, progress=gr.Progress()):
        """Compute (or fetch from the cache) the top-k directions of an image.

        Returns the unedited image, the k singular values as a JSON list, and the k calibrated
        ranges as a JSON list of [lo, hi] strengths (each direction's edit is valid within them).
        """
        state = self.editor.state(model, prompt, seed, timestep, k, steps)
        found = self.editor.discover(state, progress)
        image = self.editor.original(state)
        ranges = json.dumps([[round(lo, 6), round(hi, 6)] for lo, hi in found.ranges])
        return image, json.dumps([round(s, 6) for s in found.sigma]), ranges, found

    # ---------------------------------------------------------------- page-only steps
    @guard
    def show_directions(self, found: Found | None, mode: str, page_url: str):
        """After find_directions: label and show the first k sliders (all at zero), status, link,
        and the "Name the sliders" button where the model can name its directions."""
        if found is None:
            return (gr.skip(),) * (4 + N_SLIDERS)
        original = self.editor.original(found.state)
        state = SliderPool.state(found, mode)
        labels = self.editor.labels(found.state, compute=False)
        return (
            found_status(found), (original, original), share_link(page_url, state), gr.update(visible=self.editor.can_name(found.state.model)),
            *shown(found, (), labels),
        )

    @guard
    def name_directions(self, found: Found | None, progress=gr.Progress()):
        """Name each slider after what its direction does (computed once per basis, then cached)."""
        if found is None:
            raise InputError("Press Find directions first: there are no sliders to name yet.")
        progress(0.0, desc="Naming the directions: editing along each one and reading the result")
        start = time.perf_counter()
        labels = self.editor.labels(found.state)
        seconds = time.perf_counter() - start
        status = found_status(found) + f"\n\nSliders named by the factor each direction moves most ({seconds:.1f} s)."
        return (status, *relabelled(found, labels))

    @guard
    def preview(self, request: gr.Request, found: Found | None, mode: str, *values: float):
        """Quick image while dragging; skipped when the full-quality one for these values is
        already there (a drag's last `input` can arrive after its `release`)."""
        if found is None:
            return gr.skip()
        state = SliderPool.state(found, mode, values)
        if self._last_settled(request) == state:
            return gr.skip()
        return self.editor.render(state, preview=True)

    @guard
    def settle(self, request: gr.Request, found: Found | None, mode: str, page_url: str, *values: float):
        """Full-quality image for the current sliders (slider release, mode change). A geodesic
        edit that needs a fresh shoot (several sliders, or paths not ready) shows the direct
        edit here at once; :meth:`settle_geodesic` replaces it when the shoot is done."""
        if found is None:
            return gr.skip(), gr.skip(), gr.skip()
        state = SliderPool.state(found, mode, values)
        self._settle(request, state)
        shown = state if self.editor.instant(state) else replace(state, mode="direct")
        image = self.editor.render(shown)
        return image, (self.editor.original(state), image), share_link(page_url, state)

    @guard
    def settle_geodesic(self, request: gr.Request, found: Found | None, mode: str, *values: float):
        """After :meth:`settle`: the geodesic image it stood in for, unless a newer edit came
        meanwhile (the latest request wins; a superseded result is never shown)."""
        if found is None:
            return gr.skip(), gr.skip()
        state = SliderPool.state(found, mode, values)
        if self.editor.instant(state) or self._last_settled(request) != state:
            return gr.skip(), gr.skip()
        image = self.editor.render(state)
        if self._last_settled(request) != state:
            return gr.skip(), gr.skip()
        return image, (self.editor.original(state), image)

    # ---------------------------------------------------------------- geodesic paths
    @guard
    def start_paths(self, request: gr.Request, found: Found | None):
        """Start the shown basis's geodesic paths in the background; the timer polls them."""
        session = getattr(request, "session_hash", None)
        if found is None or session is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        status = self.editor.start_paths(found.state, session)
        return (*paths_shown(status), gr.Timer(active=status.state == "running"))

    @guard
    def path_progress(self, request: gr.Request):
        """Timer tick: the precompute's progress, and the mode's note once paths are ready."""
        session = getattr(request, "session_hash", None)
        if session is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        status = self.editor.path_status(session)
        return (*paths_shown(status), gr.Timer(active=status.state == "running"))

    @guard
    def reset_all(self, request: gr.Request, found: Found | None, mode: str, page_url: str):
        if found is None:
            return (gr.skip(),) * 3 + tuple(zeroed())
        state = SliderPool.state(found, mode)
        self._settle(request, state)
        original = self.editor.original(state)
        return (original, (original, original), share_link(page_url, state), *zeroed())

    @guard
    def model_changed(self, model: str, found: Found | None, seed, k, steps):
        """Show the prompt box for text-conditioned models, with the model's own prompt, and move the
        timestep to the model's own."""
        conditional = self.editor.conditional(model)
        settings = self.editor.settings(model)
        prompt = settings.prompt if conditional else ""
        return gr.update(visible=conditional, value=prompt), settings.timestep, stale_status(found, model, prompt, seed, settings.timestep, k, steps)

    @guard
    def notice(self, found: Found | None, model, prompt, seed, timestep, k, steps):
        return stale_status(found, model, prompt, seed, timestep, k, steps)

    @guard
    def random_seed(self):
        return random.randint(0, RANDOM_SEED_MAX)

#: Browser sessions whose last full-quality edit is remembered (to drop late previews).
MAX_SESSIONS = 4096
MODE_INFO = "direct: one step · guidance: along the model's response · geodesic: follows the curved space"
#: The page's edit mode until a person picks another. Direct: at the calibrated range ends and the
#: built-in model's own 0.3 T, 94 % of direct end images stay within 1.2x of the unedited one on
#: the face check's error and on speckle against 67 % of geodesic ones (geodesic wins at 0.6 T,
#: 81 % against 64 %; BENCHMARKS.md, bench/bench_paths.py --sections quality, seeds 0-3).
DEFAULT_MODE = "direct"
#: How often the page asks for the precompute's progress while it runs.
PATHS_POLL_S = 0.5


def paths_shown(status: PathStatus) -> tuple[dict, str]:
    """The mode control's note and the progress line for a precompute status."""
    if status.state == "ready":
        return gr.update(info=f"{MODE_INFO} (paths ready: as fast as direct for one slider)"), f"Geodesic paths ready ({status.seconds:.1f} s)."
    if status.state == "running":
        done = f"step {status.done} of {status.total}" if status.total else "starting"
        return gr.update(info=f"{MODE_INFO} (slow until its paths are ready)"), f"Computing geodesic paths in the background: {done} ({status.seconds:.0f} s)."
    if status.state == "failed":
        return gr.update(info=f"{MODE_INFO} (slow)"), f"Geodesic paths failed: {status.message}"
    return gr.update(info=f"{MODE_INFO} (slow)"), ""


# ================================================================================= layout
@dataclass
class Explore:
    model: gr.Dropdown
    prompt: gr.Textbox
    seed: gr.Number
    random_seed: gr.Button
    timestep: gr.Slider
    k: gr.Slider
    steps: gr.Slider
    mode: gr.Radio
    find: gr.Button
    status: gr.Markdown
    image: gr.Image
    compare: gr.ImageSlider
    pool: SliderPool
    reset_all: gr.Button
    name: gr.Button
    share: gr.Textbox
    sigma_json: gr.Textbox
    ranges_json: gr.Textbox
    page_url: gr.State
    paths: gr.Markdown  # the geodesic precompute's progress
    paths_timer: gr.Timer

    @property
    def found(self) -> gr.State:
        return self.pool.found

    @property
    def controls(self) -> list[gr.components.Component]:
        """The basis settings, in the public API's order."""
        return [self.model, self.prompt, self.seed, self.timestep, self.k, self.steps]

    @property
    def shown(self) -> list[gr.components.Component]:
        """Outputs of :meth:`ExploreHandlers.show_directions`, in its order."""
        return [self.status, self.compare, self.share, self.name, *self.pool.sliders]


def build_explore(service: EigenfaceService) -> Explore:
    models = service.model_names
    settings = service.settings(models[0])  # the page opens on the first model's own settings
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            model = gr.Dropdown(models, value=models[0], label="Model", info="Models this server offers")
            # A model whose eigenface.json names a prompt is a text model: the page opens with it.
            prompt = gr.Textbox(settings.prompt, label="Prompt", visible=bool(settings.prompt), max_lines=3, placeholder="a photo of ...")
            with gr.Row(equal_height=True):
                seed = gr.Number(settings.seed, precision=0, minimum=0, maximum=MAX_UI_SEED, label="Seed", scale=3, min_width=100)
                random_seed = gr.Button("Random seed", scale=2, min_width=90, size="md")
            t_range, k_range, steps_range = (PAGE_RANGES[name] for name in ("timestep", "k", "steps"))  # the API holds to these too
            timestep = gr.Slider(t_range.low, t_range.high, value=settings.timestep, step=t_range.step, label="Edit timestep (fraction of T)", info="Early (high) = coarse semantics")
            k = gr.Slider(k_range.low, k_range.high, value=DEFAULT_K, step=k_range.step, precision=0, label="Directions k")
            steps = gr.Slider(steps_range.low, steps_range.high, value=DEFAULT_STEPS, step=steps_range.step, precision=0, label="DDIM steps")
            mode = gr.Radio(list(EDIT_MODES), value=DEFAULT_MODE, label="Edit mode", info=f"{MODE_INFO} (slow)", elem_id="edit-mode")
            find = gr.Button("Find directions", variant="primary", elem_id="find-directions")
            status = gr.Markdown(NO_DIRECTIONS, elem_id="eigen-status")
            paths = gr.Markdown("", elem_id="eigen-paths")
            paths_timer = gr.Timer(PATHS_POLL_S, active=False)
        with gr.Column(scale=2, min_width=320):
            with gr.Tabs():
                with gr.Tab("Image"):
                    image = gr.Image(label="Image", type="pil", format="png", interactive=False, height=440, buttons=["download", "fullscreen"], elem_id="eigen-image")
                with gr.Tab("Before / after"):
                    compare = gr.ImageSlider(label="Before / after", type="pil", format="png", interactive=False, height=440, elem_id="eigen-compare")
            share = gr.Textbox(label="Share link", info="Opens this edit: settings, directions and slider values", interactive=False, buttons=["copy"], elem_id="eigen-share")
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("### Directions")
            with gr.Column(elem_id="eigen-sliders"):
                pool = SliderPool.build(mode)
            with gr.Row():
                reset_all = gr.Button("Reset all sliders", elem_id="reset-all", min_width=120)
                name = gr.Button("Name the sliders", visible=False, elem_id="name-directions", min_width=120)
    sigma_json = gr.Textbox(visible=False, label="σ (JSON)")
    ranges_json = gr.Textbox(visible=False, label="ranges (JSON)")
    return Explore(
        model, prompt, seed, random_seed, timestep, k, steps, mode, find, status, image, compare, pool, reset_all, name, share, sigma_json, ranges_json, gr.State(""),
        paths, paths_timer,
    )


# ================================================================================= events
def wire_explore(h: ExploreHandlers, ex: Explore, after_basis: Callable[[Any, str], Any]) -> None:
    """Wire the section's events. ``after_basis(dependency, prefix)`` appends the page's steps
    (atlas and steering refresh) to an event that changed the displayed basis or mode."""
    share, sliders = ex.share, ex.pool.sliders

    def find_then_show(dep, prefix: str) -> None:
        dep = dep.then(h.show_directions, [ex.found, ex.mode, ex.page_url], ex.shown, api_name=f"{prefix}_show", api_visibility="private", show_progress="hidden")
        after_basis(dep, prefix)

    find = ex.find.click(
        h.find_directions, ex.controls, [ex.image, ex.sigma_json, ex.ranges_json, ex.found],
        api_name="find_directions", preprocess=False, concurrency_id="basis", show_progress_on=[ex.image],
    )
    find_then_show(find, "find")
    seeded = ex.random_seed.click(h.random_seed, None, ex.seed, api_name="random_seed", api_visibility="private", queue=False).then(
        h.find_directions, ex.controls, [ex.image, ex.sigma_json, ex.ranges_json, ex.found],
        api_name="random_seed_find", api_visibility="private", preprocess=False, concurrency_id="basis", show_progress_on=[ex.image],
    )
    find_then_show(seeded, "random")

    preview = gr.on(
        [s.input for s in sliders], h.preview, ex.pool.inputs, ex.image,
        api_name="preview", api_visibility="private", trigger_mode="always_last", show_progress="hidden", concurrency_id="render",
    )
    settle_in = [ex.found, ex.mode, ex.page_url, *sliders]
    geodesic_in, geodesic_out = [ex.found, ex.mode, *sliders], [ex.image, ex.compare]
    gr.on(
        [s.release for s in sliders], h.settle, settle_in, [ex.image, ex.compare, share],
        api_name="settle", api_visibility="private", trigger_mode="always_last", show_progress="hidden", concurrency_id="render", cancels=[preview],
    ).then(h.settle_geodesic, geodesic_in, geodesic_out, api_name="settle_geodesic", api_visibility="private", show_progress="hidden", concurrency_id="geodesic")
    moded = ex.mode.input(
        h.settle, settle_in, [ex.image, ex.compare, share],
        api_name="mode_changed", api_visibility="private", trigger_mode="always_last", concurrency_id="render", cancels=[preview], show_progress_on=[ex.image],
    )
    moded.then(h.settle_geodesic, geodesic_in, geodesic_out, api_name="mode_geodesic", api_visibility="private", show_progress="hidden", concurrency_id="geodesic")
    after_basis(moded, "mode")
    ex.paths_timer.tick(h.path_progress, None, [ex.mode, ex.paths, ex.paths_timer], api_name="paths_progress", api_visibility="private", show_progress="hidden", queue=False)
    ex.reset_all.click(
        h.reset_all, [ex.found, ex.mode, ex.page_url], [ex.image, ex.compare, share, *sliders],
        api_name="reset_all", api_visibility="private", cancels=[preview], concurrency_id="render",
    )
    ex.name.click(
        h.name_directions, ex.found, [ex.status, *sliders],
        api_name="name_sliders", api_visibility="private", concurrency_id="batch", show_progress_on=[ex.status],
    )
    ex.model.input(h.model_changed, [ex.model, ex.found, ex.seed, ex.k, ex.steps], [ex.prompt, ex.timestep, ex.status], api_name="model_changed", api_visibility="private")
    gr.on(
        [ex.prompt.input, ex.seed.input, ex.timestep.input, ex.k.input, ex.steps.input], h.notice, [ex.found, *ex.controls], ex.status,
        api_name="notice", api_visibility="private", trigger_mode="always_last", show_progress="hidden", queue=False,
    )
