"""The page's editor layer: atlas rows carry the directions' names once they have been computed."""

from backend.catpeople.semantics import name_by_factor
from backend.service import EigenfaceService, ServiceConfig
from ui.editor import Editor


def test_atlas_rows_show_names_once_computed(tiny_ddpm_dir, tmp_path):
    service = EigenfaceService(ServiceConfig(models={"tiny": str(tiny_ddpm_dir)}, device="cpu", labellers={"tiny": name_by_factor}))
    editor = Editor(service, tmp_path)
    state = editor.state("tiny", "", 1, 0.6, 2, 6)
    found = editor.discover(state)

    plain = editor.atlas(found, "direct", 0.5)
    assert editor.atlas(found, "direct", 0.5) is plain  # cached
    names = editor.labels(state)
    named = editor.atlas(found, "direct", 0.5)
    assert named is not plain  # names invalidate the cached atlas
    # the rows are the same edits; only the label margin grows to fit "0: <name>  σ=..."
    assert named.height == plain.height and named.width >= plain.width
    assert len(names) == 2


def test_the_page_starts_from_each_models_settings(tiny_ddpm_dir, tmp_path):
    """Choosing a model moves the timestep to its eigenface.json; the atlas and the GIF span each
    direction's own calibrated range (a fraction of it), whatever the model."""
    import gradio as gr

    from app import build_demo
    from backend.testing import save_tiny_ddpm, save_tiny_sd
    from ui.explore import ExploreHandlers

    tuned = save_tiny_ddpm(tmp_path / "tuned")
    (tuned / "eigenface.json").write_text('{"timestep": 0.35, "strength": 0.25, "seed": 7}')
    service = EigenfaceService(ServiceConfig(models={"tuned": str(tuned), "tiny": str(tiny_ddpm_dir)}, device="cpu"))
    editor = Editor(service, tmp_path)
    explore = ExploreHandlers(editor)
    prompt, timestep, status = explore.model_changed("tiny", None, 0, 4, 10)
    assert timestep == 0.6
    assert explore.model_changed("tuned", None, 0, 4, 10)[1] == 0.35

    # A text model's own prompt fills the prompt box when it is chosen; a pixel model's box is empty and hidden.
    sd = tmp_path / "sd"
    save_tiny_sd(sd)
    (sd / "eigenface.json").write_text('{"prompt": "a cat"}')
    with_text = ExploreHandlers(Editor(EigenfaceService(ServiceConfig(models={"sd": str(sd), "tiny": str(tiny_ddpm_dir)}, device="cpu")), tmp_path))
    assert with_text.model_changed("sd", None, 0, 4, 10)[0] == {"__type__": "update", "visible": True, "value": "a cat"}
    assert with_text.model_changed("tiny", None, 0, 4, 10)[0]["value"] == ""

    demo = build_demo(service)  # the first model's settings are the page's initial values
    values = {c.elem_id or c.label: c.value for c in demo.blocks.values() if isinstance(c, (gr.Slider, gr.Number))}
    assert values["Edit timestep (fraction of T)"] == 0.35 and values["Seed"] == 7
    assert values["Atlas reach"] == values["GIF: reach (fraction of the direction's range)"] == 1.0


def test_the_slider_pool_is_the_one_way_back_to_an_edit_state():
    """Every event that needs the edit on screen rebuilds it here: the first k values, None as 0."""
    import pytest

    from backend.errors import InputError
    from backend.state import EditState
    from ui.editor import Found
    from ui.sliders import SliderPool

    found = Found(EditState(model="tiny", seed=3, timestep=0.6, k=2), sigma=(2.0, 1.0), timestep=600, seconds=0.1, cached=False)
    state = SliderPool.state(found, "guidance", [0.4, None, 0.7])
    assert state == EditState(model="tiny", seed=3, timestep=0.6, k=2, mode="guidance", sliders=(0.4, 0.0))
    assert SliderPool.state(found, "direct").sliders == () and state.strengths() == {0: 0.4}
    with pytest.raises(InputError, match="nothing here yet"):
        SliderPool.state(None, "direct", (), "nothing here yet")
    # with calibrated ranges, a slider position is a point of its direction's travel
    travel = ((-0.2, -0.15, -0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.3), (-0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4))
    ranged = Found(found.state, found.sigma, 600, 0.1, False, (), ((-0.2, 0.3), (-0.4, 0.4)), travel)
    assert SliderPool.state(ranged, "direct", [1.0, -0.5]).sliders == (0.3, -0.2)
    assert SliderPool.state(ranged, "direct", [0.25]).sliders == (0.02,)
    assert ranged.position(0, 0.05) == pytest.approx(0.5) and ranged.position(1, -0.4) == -1.0


def test_geodesic_paths_on_the_page_progress_then_instant_and_latest_wins(tiny_ddpm_dir, tmp_path):
    """Find directions starts the paths (the timer polls them, the mode note drops "(slow)");
    a two-slider geodesic release shows the direct image first and the geodesic one after,
    unless a newer release came meanwhile."""
    import gradio as gr
    import numpy as np

    from ui.explore import ExploreHandlers

    service = EigenfaceService(ServiceConfig(models={"tiny": str(tiny_ddpm_dir)}, device="cpu"))
    explore = ExploreHandlers(Editor(service, tmp_path))
    request = gr.Request(session_hash="tab-1")
    *_, found = explore.find_directions("tiny", "", 3, 0.6, 4, 10)
    mode, note, timer = explore.start_paths(request, found)
    assert timer.active or "ready" in note
    service.paths.wait("tab-1", timeout=300)
    mode, note, timer = explore.path_progress(request)
    assert not timer.active and note.startswith("Geodesic paths ready") and "(slow)" not in mode["info"]

    values = [0.4, -0.3, 0.0, 0.0]
    first, _, _ = explore.settle(request, found, "geodesic", "", *values)
    direct, _, _ = explore.settle(request, found, "direct", "", *values)
    explore.settle(request, found, "geodesic", "", *values)
    geodesic, _ = explore.settle_geodesic(request, found, "geodesic", *values)
    assert np.array_equal(np.asarray(first), np.asarray(direct))  # the stand-in is the direct edit
    assert not np.array_equal(np.asarray(geodesic), np.asarray(direct))
    explore.settle(request, found, "geodesic", "", 0.2, 0.0, 0.0, 0.0)  # a newer release: one slider, read off the paths
    assert explore.settle_geodesic(request, found, "geodesic", *values) == (gr.skip(), gr.skip())
