"""The page in a real browser (Debian's Chromium through Playwright), on the tiny test model.

Find directions, move a slider (pointer on the range, and typing into a number box), see the
image change, reset, get the original pixels back; restore an edit from a URL; a bad edit file
gives a toast with our message; name the sliders, save the slider edit as a named direction and
apply it; steer toward a text on the tiny Stable Diffusion model. Screenshots and timings go to artifacts/ (git-ignored).
"""

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")

from tests.fixtures import app_service, launched  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 180_000  # generous: CI machines are shared
IMAGE = "#eigen-image img"


@pytest.fixture(scope="module")
def url(tiny_ddpm_dir, tiny_sd_dir, tmp_path_factory):
    import app

    with launched(app.build_demo(app_service(tiny_ddpm_dir, tiny_sd_dir, tmp_path_factory.mktemp("library")))) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    page.close()


def _src(page) -> str:
    return page.locator(IMAGE).get_attribute("src")


def _pixels(page, src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _wait_src(page, predicate: str, value: str) -> str:
    page.wait_for_function(f"v => {{ const i = document.querySelector('{IMAGE}'); return i && i.src {predicate} v; }}", arg=value)
    return _src(page)


def _share(page) -> str:
    return page.locator("#eigen-share textarea, #eigen-share input").first.input_value()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


@pytest.mark.slow
def test_find_move_reset(page, url):
    timings = {}
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(IMAGE)
    timings["page_load_to_image_s"] = time.perf_counter() - start
    _shot(page, "1-loaded")

    start = time.perf_counter()
    page.click("#find-directions")
    page.wait_for_selector("#direction-0 input[type=range]", state="visible")
    page.wait_for_function("() => document.querySelector('#eigen-share textarea, #eigen-share input').value.includes('k=8')")
    timings["find_directions_s"] = time.perf_counter() - start
    assert page.locator("#direction-7").is_visible() and not page.locator("#direction-8").is_visible()
    assert "σ=" in page.locator("#direction-0 label").first.inner_text()
    original = _src(page)
    original_pixels = _pixels(page, original)
    _shot(page, "2-directions")

    # Pointer on the range: `input` (fast preview) then `release` (full quality, share link updated).
    box = page.locator("#direction-0 input[type=range]").bounding_box()
    start = time.perf_counter()
    page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + box["height"] / 2)
    _wait_src(page, "!==", original)
    page.wait_for_function("() => document.querySelector('#eigen-share textarea, #eigen-share input').value.includes('s=0:')")
    timings["slider_release_to_image_s"] = time.perf_counter() - start
    moved = _src(page)
    value = float(page.locator("#direction-0 input[type=number]").input_value())
    assert 0.4 < value <= 1.0
    assert np.abs(_pixels(page, moved).astype(int) - original_pixels).max() > 0
    _shot(page, "3-moved")

    # The slider's own reset button: back to zero, back to the original pixels.
    page.click("#direction-0 .reset-button")
    assert _wait_src(page, "===", original) == original
    assert np.array_equal(_pixels(page, original), original_pixels)
    _shot(page, "4-reset")

    # Typing into a number box (input, then release on blur) and "Reset all sliders".
    box_input = page.locator("#direction-1 input[type=number]")
    box_input.fill("-0.5")
    box_input.blur()
    _wait_src(page, "!==", original)
    page.click("#reset-all")
    _wait_src(page, "===", original)
    assert page.locator("#direction-1 input[type=number]").input_value() == "0"

    # The atlas fills when opened: one labelled row per direction.
    assert page.locator("#eigen-atlas-image img").count() == 0
    page.get_by_text("Atlas: what each direction does").click()
    page.wait_for_selector("#eigen-atlas-image img")
    atlas = _pixels(page, page.locator("#eigen-atlas-image img").get_attribute("src"))
    assert atlas.shape[0] > 8 * original_pixels.shape[0]  # 8 rows of (upscaled) tiles
    _shot(page, "5-atlas")

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-timings.json").write_text(json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=2))
    print("browser timings:", timings)


def test_url_restores_an_edit(page, url):
    page.goto(url + "?model=tiny&seed=0&t=0.6&k=4&steps=20&mode=direct&s=0:0.4,2:-0.3")
    # sliders show positions on each direction's calibrated range: the signs of the strengths
    page.wait_for_function("() => { const n = document.querySelector('#direction-2 input[type=number]'); return n && Number(n.value) < 0; }")
    assert float(page.locator("#direction-0 input[type=number]").input_value()) > 0
    assert page.locator("#direction-3").is_visible() and not page.locator("#direction-4").is_visible()
    page.wait_for_function("() => document.querySelector('#eigen-share textarea, #eigen-share input').value.includes('s=0:0.4,2:-0.3')")
    _shot(page, "6-restored-from-url")


def test_bad_edit_file_shows_our_message(page, url, tmp_path):
    page.goto(url)
    page.wait_for_selector(IMAGE)
    bad = tmp_path / "edit.json"
    bad.write_text(json.dumps({"model": "tiny", "seed": 0, "timestep": 0.6, "k": 0, "mode": "direct", "steps": 20, "sliders": []}))
    page.locator("#load-edit input[type=file], input[type=file]").first.set_input_files(str(bad))
    toast = page.get_by_text("k must be within [1, 64], got 0")
    toast.first.wait_for(state="visible")
    time.sleep(1)  # let the toast slide in
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-7-bad-file-toast.png"))
    assert page.locator(IMAGE).is_visible()  # the toast only: the image is not covered by an error


def test_broken_link_still_opens_the_page(page, url):
    page.goto(url + "?seed=3&k=999")
    page.get_by_text("k must be within [1, 64], got 999").first.wait_for(state="visible")
    page.wait_for_selector(IMAGE)


def test_name_save_and_apply_a_direction(page, url):
    page.goto(url + "?model=tiny&seed=2&t=0.6&k=4&steps=20&mode=direct&s=0:0.5")
    page.wait_for_function("() => { const n = document.querySelector('#direction-0 input[type=number]'); return n && Number(n.value) > 0; }")
    page.wait_for_function("() => document.querySelector('#eigen-share textarea, #eigen-share input').value.includes('s=0:0.5')")
    # The tiny model has no text encoder: the text controls say so and stay disabled.
    page.locator("#concept-note").get_by_text("has no text encoder").wait_for(state="visible")
    assert page.locator("#concept textarea, #concept input").first.is_disabled()

    page.click("#name-directions")
    page.wait_for_function("() => !document.querySelector('#direction-0 label').innerText.startsWith('direction')")
    assert page.locator("#direction-0 label").first.inner_text().startswith("0 · ")

    page.locator("#save-name textarea, #save-name input").first.fill("browser smile")
    page.click("#save-direction")
    page.get_by_text("Saved the slider edit as browser smile").first.wait_for(state="visible")
    assert page.locator("#saved-directions input").first.input_value().startswith("browser smile")

    strength = page.locator("#saved-strength input[type=number]")
    strength.fill("0.5")
    strength.blur()
    page.wait_for_selector("#eigen-steer-image img")
    page.get_by_text("Slider edit + saved direction browser smile at +").first.wait_for(state="visible")
    assert "…" in page.locator("#saved-strength label").first.inner_text()  # the slider spans the direction's calibrated range
    steered = _pixels(page, page.locator("#eigen-steer-image img").get_attribute("src"))
    main = _pixels(page, _src(page))
    assert steered.shape == main.shape and np.abs(steered.astype(int) - main).max() > 0  # twice the edit, not the edit
    _shot(page, "8-saved-direction")


def test_toward_a_text(page, url):
    page.goto(url + "?model=sd&prompt=a+photo+of+a+cat&seed=0&t=0.6&k=4&steps=4&mode=direct")
    page.locator("#concept-note").get_by_text("press Find").wait_for(state="visible")
    assert not page.locator("#name-directions").is_visible()  # no known factors to name directions by
    concept = page.locator("#concept textarea, #concept input").first
    concept.fill("a horse")
    page.click("#find-concept")
    page.locator("#concept-note").get_by_text("of the change it asks for lies in this image's top 24 directions (the sliders are the first 4)").wait_for(state="visible")
    strength = page.locator("#concept-strength input[type=number]")
    strength.fill("-0.4")
    strength.blur()
    assert "…" in page.locator("#concept-strength label").first.inner_text()  # the concept's calibrated range
    page.get_by_text("away from a horse").first.wait_for(state="visible")
    assert _pixels(page, page.locator("#eigen-steer-image img").get_attribute("src")).shape == _pixels(page, _src(page)).shape
    _shot(page, "9-toward-text")
