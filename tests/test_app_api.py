"""The app's public API through gradio_client: every endpoint takes explicit inputs, no session state."""

import json
import time

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")

from backend.specs import CONCEPT_K, BasisSpec, SampleSpec  # noqa: E402
from tests.fixtures import app_service, launched  # noqa: E402

SETTINGS = ("tiny", "", 3, 0.6, 4, 10)  # model, prompt, seed, timestep, k, steps
SD_SETTINGS = ("sd", "a photo of a cat", 0, 0.6, 4, 4)
PUBLIC = ["apply_concept", "apply_direction", "find_concept", "find_directions", "geodesic_paths", "name_directions", "render", "save_direction", "saved_directions"]


@pytest.fixture(scope="module")
def demo_and_service(tiny_ddpm_dir, tiny_sd_dir, tmp_path_factory):
    import app

    service = app_service(tiny_ddpm_dir, tiny_sd_dir, tmp_path_factory.mktemp("library"))
    return app.build_demo(service), service


@pytest.fixture(scope="module")
def served(demo_and_service):
    demo, service = demo_and_service
    with launched(demo) as url:
        yield service, gradio_client.Client(url, verbose=False)


def test_every_event_has_an_api_name(demo_and_service):
    demo, _ = demo_and_service
    events = [f for f in demo.fns.values() if f.fn is not None]  # fn None: Gradio's own cancel helpers
    assert len(events) > 20
    assert all(f.api_name and not f.api_name.startswith("unnamed") for f in events), [f.api_name for f in events]
    public = sorted(f.api_name for f in events if f.api_visibility == "public")
    assert public == PUBLIC
    sliders = [f for f in events if f.api_name in ("preview", "settle")]
    assert [f.trigger_mode for f in sliders] == ["always_last", "always_last"]
    names = {f.api_name for f in events}
    assert {"paths_progress", "find_paths", "settle_geodesic"} <= names  # the precompute's progress, its start, the geodesic follow-up


def test_geodesic_paths_endpoint_then_a_geodesic_render(served):
    """The paths start in the background and are polled; then a one-slider geodesic render reads them."""
    import time

    service, client = served
    status = json.loads(client.predict(*SETTINGS, api_name="/geodesic_paths"))
    assert status["state"] in ("running", "ready")
    deadline = time.monotonic() + 300
    while status["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = json.loads(client.predict(*SETTINGS, api_name="/geodesic_paths"))
    assert status["state"] == "ready" and status["done"] == status["total"] > 0
    geodesic = _pixels(client.predict(*SETTINGS, "geodesic", "[0.5]", False, api_name="/render"))
    direct = _pixels(client.predict(*SETTINGS, "direct", "[0.5]", False, api_name="/render"))
    assert geodesic.shape == direct.shape and not np.array_equal(geodesic, direct)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_public_endpoints_take_explicit_inputs(served):
    _, client = served
    info = client.view_api(return_format="dict", print_info=False)
    named = info["named_endpoints"]
    assert set(named) == {f"/{name}" for name in PUBLIC}
    settings = ["model", "prompt", "seed", "timestep", "k", "steps"]
    edit = [*settings, "mode", "sliders"]
    expected = {
        "find_directions": settings,
        "render": [*edit, "preview"],
        "name_directions": settings,
        "save_direction": [*settings, "sliders", "source", "name"],
        "saved_directions": [],
        "apply_direction": [*edit, "name", "strength", "transport"],
        "find_concept": [*settings, "concept"],
        "apply_concept": [*edit, "concept", "strength"],
    }
    for name, parameters in expected.items():
        assert [p["parameter_name"] for p in named[f"/{name}"]["parameters"]] == parameters, name


def test_find_directions_then_render(served):
    service, client = served
    image, sigma, ranges = client.predict(*SETTINGS, api_name="/find_directions")
    sigma = json.loads(sigma)
    assert len(sigma) == 4 and all(a >= b > 0 for a, b in zip(sigma, sigma[1:]))
    ranges = json.loads(ranges)
    assert len(ranges) == 4 and all(lo < 0 < hi for lo, hi in ranges)
    generated = np.asarray(service.generate(SampleSpec(model="tiny", seed=3, steps=10)))
    assert np.array_equal(_pixels(image), generated)

    zero = client.predict(*SETTINGS, "direct", "[0, 0, 0, 0]", False, api_name="/render")
    assert np.array_equal(_pixels(zero), generated)  # pixel for pixel

    edited = client.predict(*SETTINGS, "direct", "[0.5]", False, api_name="/render")
    sparse = client.predict(*SETTINGS, "direct", '{"0": 0.5}', False, api_name="/render")
    assert np.abs(_pixels(edited).astype(int) - generated).max() > 10
    assert np.array_equal(_pixels(edited), _pixels(sparse))

    preview = client.predict(*SETTINGS, "direct", "[0.5]", True, api_name="/render")
    assert _pixels(preview).shape == generated.shape


def test_second_request_is_served_from_the_cache(served):
    service, client = served
    client.predict(*SETTINGS, api_name="/find_directions")
    misses = service.cache.misses
    client.predict(*SETTINGS, api_name="/find_directions")
    assert service.cache.misses == misses


def test_name_directions(served):
    _, client = served
    names = json.loads(client.predict(*SETTINGS, api_name="/name_directions"))
    assert len(names) == 4 and all(isinstance(n, str) and n for n in names)
    assert json.loads(client.predict(*SETTINGS, api_name="/name_directions")) == names  # cached with the basis


def test_save_list_and_apply_a_direction(served):
    service, client = served
    saved = json.loads(client.predict(*SETTINGS[:6], '{"0": 0.5}', "sliders", "api smile", api_name="/save_direction"))
    assert saved["name"] == "api smile" and saved["model"] == "tiny" and saved["sliders"] == {"0": 0.5}
    one = json.loads(client.predict(*SETTINGS[:6], "[]", "2", "api d2", api_name="/save_direction"))
    assert one["index"] == 2
    listed = {d["name"]: d for d in json.loads(client.predict(api_name="/saved_directions"))}
    assert {"api smile", "api d2"} <= set(listed) and listed["api smile"]["seed"] == 3

    # direction 0 saved at 0.5, applied at 0.5 = slider 0 at 0.5
    applied = client.predict(*SETTINGS, "direct", "[]", "api smile", 0.5, False, api_name="/apply_direction")
    slider = client.predict(*SETTINGS, "direct", "[0.5]", False, api_name="/render")
    assert np.abs(_pixels(applied).astype(int) - _pixels(slider)).max() <= 1
    # at zero strength, on top of no sliders: the unedited image
    zero = client.predict(*SETTINGS, "direct", "[]", "api smile", 0, False, api_name="/apply_direction")
    assert np.array_equal(_pixels(zero), np.asarray(service.generate(SampleSpec(model="tiny", seed=3, steps=10))))
    # another seed, carried into its directions
    moved = client.predict("tiny", "", 5, 0.6, 4, 10, "direct", "[]", "api d2", 0.4, True, api_name="/apply_direction")
    assert _pixels(moved).shape == (16, 16, 3)


def test_directions_from_text(served):
    service, client = served
    found = json.loads(client.predict(*SD_SETTINGS, "a horse", api_name="/find_concept"))
    # k = 4 sliders; the concept is aligned on the image's top CONCEPT_K directions
    assert len(found["scores"]) == CONCEPT_K and sorted(found["order"]) == list(range(CONCEPT_K)) and 0 <= found["captured"] <= 1
    toward = client.predict(*SD_SETTINGS, "direct", "[]", "a horse", 0.3, api_name="/apply_concept")
    away = client.predict(*SD_SETTINGS, "direct", "[]", "a horse", -0.3, api_name="/apply_concept")
    assert not np.array_equal(_pixels(toward), _pixels(away))
    still = client.predict(*SD_SETTINGS, "direct", "[]", "a horse", 0, api_name="/apply_concept")
    assert np.array_equal(_pixels(still), np.asarray(service.generate(SampleSpec(model="sd", prompt="a photo of a cat", seed=0, steps=4))))


@pytest.mark.parametrize(
    "endpoint, args, message",
    [
        ("/find_directions", ("tiny", "", 3, 0.6, 0, 10), "k must be within [1, 64], got 0"),
        ("/find_directions", ("tiny", "", 3.5, 0.6, 4, 10), "seed must be a whole number"),
        ("/find_directions", ("/etc", "", 3, 0.6, 4, 10), "not a path"),
        ("/find_directions", ("other", "", 3, 0.6, 4, 10), "unknown model 'other'"),
        ("/find_directions", ("tiny", "a cat", 3, 0.6, 4, 10), "unconditional"),
        ("/render", (*SETTINGS, "direct", "[NaN]", False), "numbers must be finite"),
        ("/render", (*SETTINGS, "direct", "[0, 0, 0, 0, 0.2]", False), "5 slider values given for k = 4"),
        ("/render", (*SETTINGS, "sideways", "[0.2]", False), "mode must be one of"),
        ("/render", (*SETTINGS, "direct", "[0.2", False), "slider values must be a JSON list"),
        ("/name_directions", SD_SETTINGS, "cannot name its directions"),
        ("/save_direction", (*SETTINGS, "[0, 0]", "sliders", "zero"), "every slider is at zero"),
        ("/save_direction", (*SETTINGS, "[0.3]", "sliders", "../evil"), "direction names are"),
        ("/save_direction", (*SETTINGS, "[0.3]", "nose", "x"), "what to save must be 'sliders' or a direction index"),
        ("/save_direction", (*SETTINGS, "[]", "9", "x"), "direction index must be within [0, 3]"),
        ("/apply_direction", (*SETTINGS, "direct", "[]", "no such", 0.3, False), "no saved direction named 'no such'"),
        ("/apply_direction", (*SETTINGS, "direct", "[]", "", 0.3, False), "choose a saved direction"),
        ("/apply_direction", (*SETTINGS, "direct", "[]", "x", None, False), "strength is empty"),
        ("/find_concept", (*SETTINGS, "smiling"), "'tiny' has no text encoder"),
        ("/find_concept", (*SD_SETTINGS, "  "), "the concept must be non-empty text"),
        ("/apply_concept", (*SETTINGS, "direct", "[]", "smiling", 0.3), "'tiny' has no text encoder"),
    ],
)
def test_bad_input_is_a_client_error_with_our_message(served, endpoint, args, message):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(*args, api_name=endpoint)
    assert message in str(info.value)


def test_saving_an_existing_name_is_refused_and_other_models_cannot_use_it(served):
    _, client = served
    client.predict(*SETTINGS, "[0.4]", "sliders", "taken", api_name="/save_direction")
    with pytest.raises(gradio_client.exceptions.AppError, match="a direction named 'taken' already exists"):
        client.predict(*SETTINGS, "[0.2]", "sliders", "taken", api_name="/save_direction")
    with pytest.raises(gradio_client.exceptions.AppError, match="was saved on model 'tiny'; this image is from 'sd'"):
        client.predict(*SD_SETTINGS, "direct", "[]", "taken", 0.3, False, api_name="/apply_direction")


def test_import_does_not_serve():
    import app

    assert callable(app.build_demo) and callable(app.main)
    builtin = app.parse_models(None)  # the text model first (the page opens on it), then the pixel model
    assert list(builtin) == ["catpeople-text", "catpeople"]
    assert app.parse_models("sd=/models/sd, x=y") == {**builtin, "sd": "/models/sd", "x": "y"}
    with pytest.raises(Exception, match="name=path"):
        app.parse_models("justapath")
    with pytest.raises(Exception, match="not a path"):
        app.parse_models("../x=/models/x")


def test_an_abandoned_request_stops_on_the_server(served):
    """A client that cancels mid-labelling: the server's U-Net stops being called, and nothing of
    the half-done work is cached (counted through the model's own forwards, not timed)."""
    service, client = served
    forwards = [0]
    hook = service.model("tiny").unet.register_forward_pre_hook(lambda module, args: forwards.__setitem__(0, forwards[0] + 1))
    spec = BasisSpec(SampleSpec(model="tiny", seed=77, steps=100), timestep=1.0, k=32)
    try:
        job = client.submit("tiny", "", 77, 1.0, 32, 100, api_name="/name_directions")  # 64 renders of 100 steps after the basis
        for _ in range(1200):
            if "basis" not in service.budget.discover(spec).parts and forwards[0] > 0:
                break  # the basis is done: the labelling's renders have begun
            time.sleep(0.1)
        job.cancel()
        settled = -1
        for _ in range(60):
            if forwards[0] == settled:
                break
            settled = forwards[0]
            time.sleep(1.0)
        assert forwards[0] == settled, "the server kept computing after the client cancelled"
        assert forwards[0] < 100 + 30 * 2 + 4 * 100  # fewer than the whole labelling takes
        assert service.budget.labels(spec).total > 0  # no names cached: they were never finished
    finally:
        hook.remove()
