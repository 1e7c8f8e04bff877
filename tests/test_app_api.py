"""The app's public API through gradio_client: find_directions and render, no session state."""

import json
import socket

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")

from backend.service import EigenfaceService, SampleSpec, ServiceConfig  # noqa: E402

SETTINGS = ("tiny", "", 3, 0.6, 4, 10)  # model, prompt, seed, timestep, k, steps


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_and_service(tiny_ddpm_dir):
    import app

    service = EigenfaceService(ServiceConfig(models={"tiny": str(tiny_ddpm_dir)}))
    return app.build_demo(service), service


@pytest.fixture(scope="module")
def served(demo_and_service):
    demo, service = demo_and_service
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        yield service, client
    finally:
        demo.close()


def test_every_event_has_an_api_name(demo_and_service):
    demo, _ = demo_and_service
    events = [f for f in demo.fns.values() if f.fn is not None]  # fn None: Gradio's own cancel helpers
    assert len(events) > 20
    assert all(f.api_name and not f.api_name.startswith("unnamed") for f in events), [f.api_name for f in events]
    public = sorted(f.api_name for f in events if f.api_visibility == "public")
    assert public == ["find_directions", "render"]
    sliders = [f for f in events if f.api_name in ("preview", "settle")]
    assert [f.trigger_mode for f in sliders] == ["always_last", "always_last"]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_public_endpoints_take_explicit_inputs(served):
    _, client = served
    info = client.view_api(return_format="dict", print_info=False)
    named = info["named_endpoints"]
    assert set(named) == {"/find_directions", "/render"}
    assert [p["parameter_name"] for p in named["/find_directions"]["parameters"]] == ["model", "prompt", "seed", "timestep", "k", "steps"]
    assert [p["parameter_name"] for p in named["/render"]["parameters"]] == ["model", "prompt", "seed", "timestep", "k", "steps", "mode", "sliders", "preview"]


def test_find_directions_then_render(served):
    service, client = served
    image, sigma = client.predict(*SETTINGS, api_name="/find_directions")
    sigma = json.loads(sigma)
    assert len(sigma) == 4 and all(a >= b > 0 for a, b in zip(sigma, sigma[1:]))
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
    ],
)
def test_bad_input_is_a_client_error_with_our_message(served, endpoint, args, message):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(*args, api_name=endpoint)
    assert message in str(info.value)


def test_import_does_not_serve():
    import app

    assert callable(app.build_demo) and callable(app.main)
    assert app.parse_models("sd=/models/sd, x=y") == {"catpeople": app.parse_models(None)["catpeople"], "sd": "/models/sd", "x": "y"}
    with pytest.raises(Exception, match="name=path"):
        app.parse_models("justapath")
    with pytest.raises(Exception, match="not a path"):
        app.parse_models("../x=/models/x")
