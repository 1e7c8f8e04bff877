"""Sliders in a real browser on the built-in models: dragged to either end of their calibrated
range, the image stays a valid face (the factor estimator's face check) without added speckle.

The tiny random test models have no faces to check, so this one serves the built-in models, each
at its own timestep, seed and prompt. Screenshots go to artifacts/ (git-ignored).
"""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")

from tests.fixtures import launched  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 240_000
IMAGE = "#eigen-image img"
SHARE = "#eigen-share textarea, #eigen-share input"
#: Speckle of an end image, at most this many times the unedited image's (bench/slider_ranges.py).
TOLERANCE = 1.2


@pytest.fixture(scope="module")
def url():
    import app
    from backend.service import EigenfaceService, ServiceConfig

    with launched(app.build_demo(EigenfaceService(ServiceConfig(device="cpu")))) as address:
        yield address


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def _image(page) -> tuple[str, torch.Tensor]:
    src = page.locator(IMAGE).get_attribute("src")
    pixels = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), dtype=np.float32) / 255
    return src, torch.from_numpy(pixels).permute(2, 0, 1)[None]


def _share(page) -> str:
    return page.locator(SHARE).first.input_value()


def _drag_to_end(page, index: int, side: int) -> None:
    """Drag slider ``index`` from its middle past its right (side 1) or left (-1) end, release,
    and wait for the full-quality image (it arrives with the new share link)."""
    before = _share(page)
    box = page.locator(f"#direction-{index} input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + side * (box["width"] / 2 + 20), y, steps=8)
    page.mouse.up()
    end = "1" if side > 0 else "-1"
    page.wait_for_function(f"() => document.querySelector('#direction-{index} input[type=number]').value === '{end}'")
    page.wait_for_function(f"v => {{ const s = document.querySelector('{SHARE}').value; return s !== v && s.includes('s={index}:'); }}", arg=before)


#: Each built-in model at its own settings (eigenface.json); the text model is the page's first.
LINKS = {
    "catpeople-text": "?model=catpeople-text&prompt=a+cat+person&seed=0&t=0.4&k=3&steps=20&mode=direct",
    "catpeople": "?model=catpeople&seed=72&t=0.3&k=3&steps=20&mode=direct",
}


@pytest.mark.parametrize("model", LINKS)
def test_sliders_dragged_to_either_end_keep_a_valid_face(page, url, model):
    from backend.catpeople.semantics import default_estimator
    from backend.ranges import high_frequency

    estimator = default_estimator()
    page.goto(url + LINKS[model])
    page.wait_for_selector("#direction-2 input[type=range]", state="visible")
    page.wait_for_function(f"() => document.querySelector('{SHARE}').value.includes('k=3')")
    original_src, original = _image(page)
    assert bool(estimator.is_face(original)[0])
    assert "…" in page.locator("#direction-0 label").first.inner_text()  # the slider names the strengths its ends stand for
    for index in (0, 1):
        for side in (1, -1):
            _drag_to_end(page, index, side)
            _, edited = _image(page)
            where = f"direction {index} at its {'upper' if side > 0 else 'lower'} end"
            assert not torch.equal(edited, original), where
            assert bool(estimator.is_face(edited)[0]), f"{where} is not a face"
            assert float(high_frequency(edited)[0] / high_frequency(original)[0]) <= TOLERANCE, f"{where} is speckled"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"browser-ranges-{model}-{index}-{'hi' if side > 0 else 'lo'}.png"))
        page.click(f"#direction-{index} .reset-button")  # back to the unedited image
        page.wait_for_function(f"v => document.querySelector('{IMAGE}').src === v", arg=original_src)
