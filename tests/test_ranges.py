"""backend.ranges: calibrated slider ranges and the even-travel map, on the tiny checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from backend.ranges import MAX_END, MIN_END, TRAVEL_POINTS, Calibration, _crossing, _largest_valid, calibration_evals, hf_limit, position_of, strength_at
from backend.service import EigenfaceService, ServiceConfig
from backend.specs import BasisSpec, SampleSpec
from backend.store import load_calibration, save_basis


@pytest.fixture(scope="module")
def svc(tiny_ddpm_dir, tiny_sd_dir) -> EigenfaceService:
    return EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir), "sd": str(tiny_sd_dir)}, device="cpu"))


@pytest.mark.parametrize("model", ["ddpm", "sd"])
def test_discover_returns_one_range_per_direction(svc, model):
    prompt = "a cat" if model == "sd" else ""
    result = svc.discover(BasisSpec(SampleSpec(model, seed=1, prompt=prompt, steps=4), 0.6, 3))
    assert len(result.ranges) == len(result.travel) == 3
    for (lo, hi), travel in zip(result.ranges, result.travel):
        assert -MAX_END <= lo <= -MIN_END and MIN_END <= hi <= MAX_END
        assert len(travel) == 2 * TRAVEL_POINTS + 1
        assert travel[0] == lo and travel[-1] == hi and travel[TRAVEL_POINTS] == 0.0
        assert all(a <= b for a, b in zip(travel, travel[1:]))
    assert svc.discover(BasisSpec(SampleSpec(model, seed=1, prompt=prompt, steps=4), 0.6, 3)).ranges == result.ranges  # cached


def test_rounds_that_would_only_repeat_measured_ends_are_skipped(svc, monkeypatch):
    """On the tiny DDPM every end reaches MAX_END at the probes: the bracketing rounds would
    measure the cap again, so calibrate stops after the probes (the budget's count is a ceiling)."""
    import backend.ranges as ranges

    calls = []
    real = ranges.predicted_x0
    monkeypatch.setattr(ranges, "predicted_x0", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    result = svc.point(BasisSpec(SampleSpec("ddpm", seed=3, steps=4), 0.6, 2))
    basis = svc.discover(BasisSpec(SampleSpec("ddpm", seed=3, steps=4), 0.6, 2)).basis
    calls.clear()
    model = svc.model("ddpm")
    calibration = ranges.calibrate(model, result.x_t, result.timestep, basis.v, limit=100.0)
    assert calibration.ranges == ((-MAX_END, MAX_END),) * 2
    assert len(calls) == 1 + len(ranges.PROBES)  # the unedited x0 and the probes; no bracketing round


def test_slider_position_and_strength_are_inverse():
    travel = (-0.3, -0.1, -0.05, -0.02, 0.0, 0.1, 0.2, 0.25, 0.5)
    assert strength_at(travel, -1.0) == -0.3 and strength_at(travel, 1.0) == 0.5 and strength_at(travel, 0.0) == 0.0
    assert strength_at(travel, 2.0) == 0.5  # clamped
    for u in (-0.9, -0.4, 0.1, 0.6, 0.95):
        assert position_of(travel, strength_at(travel, u)) == pytest.approx(u, abs=1e-6)
    assert position_of(travel, 3.0) == 1.0


def test_crossing_brackets_and_extrapolates():
    # ratio 1 at 0, 1.1 at 0.25, 1.3 at 0.5 -> crossing of 1.2 halfway between the probes
    assert _crossing([(0.0, 1.0, 0.0), (0.25, 1.1, 0.1), (0.5, 1.3, 0.2)], 1.2) == pytest.approx(0.375)
    # everything below: extrapolate along the last segment
    assert _crossing([(0.0, 1.0, 0.0), (0.1, 1.05, 0.1), (0.2, 1.1, 0.2)], 1.15) == pytest.approx(0.3)
    assert _crossing([(0.0, 1.0, 0.0), (0.25, 1.05, 0.1), (0.5, 1.1, 0.2)], 1.2) == MAX_END  # ... never past the cap
    # flat: as far as allowed
    assert _crossing([(0.0, 1.0, 0.0), (0.25, 1.0, 0.1), (0.5, 1.0, 0.2)], 1.2) == MAX_END
    # the end is the largest strength before the first failure, never below MIN_END
    assert _largest_valid([(0.0, 1.0, 0.0), (0.25, 1.1, 0.1), (0.4, 1.3, 0.1), (0.5, 1.15, 0.2)], 1.2) == 0.25
    assert _largest_valid([(0.0, 1.0, 0.0), (0.25, 1.5, 0.1)], 1.2) == MIN_END


def test_basis_file_keeps_ranges_and_old_files_load(svc, tmp_path):
    result = svc.discover(BasisSpec(SampleSpec("ddpm", seed=2, steps=4), 0.6, 2))
    calibration = Calibration(result.ranges, result.travel)
    save_basis(tmp_path / "new", result.basis, result.x_t, {}, calibration)
    loaded = load_calibration(tmp_path / "new" / "basis.safetensors", 2)
    assert loaded is not None
    assert np.allclose(loaded.ranges, calibration.ranges, atol=1e-6) and np.allclose(loaded.travel, calibration.travel, atol=1e-6)
    save_basis(tmp_path / "old", result.basis, result.x_t, {})  # as written before ranges existed
    assert load_calibration(tmp_path / "old" / "basis.safetensors", 2) is None
    assert load_calibration(tmp_path / "new" / "basis.safetensors", 3) is None  # another k: recalibrate


def test_ranges_saved_for_the_straight_edit_are_calibrated_again(svc, tmp_path):
    """A file from before direct edits kept the norm of x_t has ranges but no edit marker: its
    ranges were measured on another edit, so they are not adopted (the basis still is)."""
    from safetensors.torch import load_file, save_file

    result = svc.discover(BasisSpec(SampleSpec("ddpm", seed=2, steps=4), 0.6, 2))
    path = save_basis(tmp_path / "b", result.basis, result.x_t, {}, Calibration(result.ranges, result.travel))
    save_file(load_file(str(path)), str(path))  # the same tensors without the marker
    assert load_calibration(path, 2) is None


def test_the_limit_tightens_with_t_and_loosens_with_boosting():
    assert hf_limit(0.3, True) == 1.25 and hf_limit(0.6, True) == 1.10
    assert hf_limit(0.1, True) == 1.25 and hf_limit(0.9, False) == hf_limit(0.6, False)  # held outside the anchors
    assert hf_limit(0.6, True) < hf_limit(0.45, True) < hf_limit(0.3, True)
    assert all(hf_limit(t, False) < hf_limit(t, True) for t in (0.3, 0.45, 0.6))


#: Where some of the tiny Stable Diffusion's ends lie inside the old cap of 1 (at the cap of 0.4 nearly all end there).
SD_SPEC = BasisSpec(SampleSpec("sd", seed=0, prompt="a cat", steps=4), 0.9, 3)


def test_a_checkpoint_sets_its_own_cap_and_may_end_every_slider_there(tiny_sd_dir, tmp_path):
    """eigenface.json's range_cap bounds the ends; with hf_criterion false every end is the cap,
    where with the criterion some end before it (on this spec one does, below 2)."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_sd_dir, checkpoint)

    def ends(settings: dict) -> list[float]:
        (checkpoint / "eigenface.json").write_text(json.dumps(settings))
        svc = EigenfaceService(ServiceConfig(models={"sd": str(checkpoint)}, device="cpu"))
        return [end for lo, hi in svc.discover(SD_SPEC).ranges for end in (-lo, hi)]

    assert all(MIN_END <= end <= 0.3 for end in ends({"range_cap": 0.3}))
    assert min(ends({"range_cap": 2.0})) < 2.0
    assert ends({"range_cap": 2.0, "hf_criterion": False}) == [2.0] * 6


def test_a_saved_direction_is_calibrated_like_the_basis_direction_it_is(tiny_sd_dir, tmp_path):
    """One criterion and one code path: direction i saved and calibrated on its own gets the
    basis's own range i and travel; the calibration is priced until it is cached. Under a cap of 2
    (the checkpoint's own ``range_cap``), so that some ends are found by the criterion, not clamped."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_sd_dir, checkpoint)
    (checkpoint / "eigenface.json").write_text(json.dumps({"range_cap": 2.0}))
    svc = EigenfaceService(ServiceConfig(models={"sd": str(checkpoint)}, device="cpu", library_dir=str(tmp_path / "library")))
    spec = SD_SPEC
    result = svc.discover(spec)
    assert any(MIN_END < end < 2.0 for lo, hi in result.ranges for end in (-lo, hi))  # not only clamped ends compared
    for i in range(3):
        svc.library.save(f"d{i}", spec, index=i)
        identity = svc.library.identity(f"d{i}")
        assert svc.budget.direction_range(spec, identity).parts == {"ranges": calibration_evals(1) * 2}  # guided: 2 per edit
        own = svc.library.calibration(spec, f"d{i}")
        assert svc.budget.direction_range(spec, identity).total == 0  # cached
        assert own.ranges[0] == pytest.approx(result.ranges[i], abs=1e-4)
        assert own.travel[0] == pytest.approx(result.travel[i], abs=1e-4)
    assert svc.library.identity("d0") != svc.library.identity("d1") != svc.library.identity("d1", transport=True)


def test_the_steer_sliders_span_their_directions_ranges(tiny_sd_dir, tmp_path):
    """u = ±1 on the saved-direction and text sliders is the direction's calibrated range end,
    in the image and in the label; the API's strength stays in strength units."""
    from ui.editor import Editor
    from ui.steer import SteerHandlers

    svc = EigenfaceService(ServiceConfig(models={"sd": str(tiny_sd_dir)}, device="cpu", library_dir=str(tmp_path / "lib")))
    editor = Editor(svc, tmp_path / "export")
    steer = SteerHandlers(editor)

    found = editor.discover(editor.state("sd", "a cat", 0, 0.9, 3, 4))
    svc.library.save("smile", found.state.basis_spec(), [0.3, -0.2, 0.1])
    (lo, hi), = svc.library.calibration(found.state.basis_spec(), "smile").ranges
    assert -MAX_END <= lo < 0 < hi <= MAX_END  # not the old [-1, 1]
    for u, end in ((1.0, hi), (-1.0, lo)):
        image, note, label = steer.apply_saved(found, "direct", "smile", u, False)
        assert image.tobytes() == editor.apply_saved(found.state, "smile", end, False).tobytes()
        assert f"{end:+.3g}" in note
        assert label["label"] == f"Strength of the saved direction · {lo:+.2f}…{hi:+.2f}".replace("-", "−")

    note, concept, update = steer.find_concept(found, "a horse")
    (lo, hi), = svc.concept_calibration(found.state.basis_spec(), "a horse").ranges
    assert update["value"] == 0 and update["label"].endswith(f"{lo:+.2f}…{hi:+.2f}".replace("-", "−"))
    for u, end in ((1.0, hi), (-1.0, lo)):
        image, _ = steer.apply_concept(found, "direct", concept, u)
        assert image.tobytes() == editor.apply_concept(found.state, concept, end).tobytes()
