"""The ``eigenface`` CLI, in-process through ``backend.cli.main`` (a subprocess per case is too slow).

Bad input: exit status 2, exactly one line on stderr starting with 'eigenface: error:', and
nothing written.  Happy paths: generate, discover (basis.safetensors, meta.json, grid.png),
edit (--basis / --vector / --saved), transport, compare and the direction library (directions
save / list), on the tiny checkpoints with 4 steps.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from backend.cli import main
from backend.store import load_basis, load_direction, save_basis

STEPS = ["--steps", "4"]


@pytest.fixture(scope="module")
def ddpm(tiny_ddpm_dir) -> str:
    return str(tiny_ddpm_dir)


@pytest.fixture(scope="module")
def sd(tiny_sd_dir) -> str:
    return str(tiny_sd_dir)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def original(ddpm, work) -> Path:
    """generate's image for seed 0."""
    out = work / "gen" / "seed0.png"
    _ok(["generate", "--model", ddpm, *STEPS, "--seed", "0", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def basis0(ddpm, work) -> Path:
    """discover at seed 0, t = 500, k = 2: the output directory."""
    out = work / "basis0"
    _ok(["discover", "--model", ddpm, *STEPS, "--seed", "0", "--timestep", "500", "--k", "2", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def basis1(ddpm, work) -> Path:
    out = work / "basis1"
    _ok(["discover", "--model", ddpm, *STEPS, "--seed", "1", "--timestep", "500", "--k", "2", "--grid-columns", "3", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def good_vector(work, basis0) -> Path:
    """A valid direction file for the tiny DDPM: basis0's first direction."""
    path = work / "inputs" / "v0.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"v": load_file(str(basis0 / "basis.safetensors"))["v"][0].contiguous()}, str(path))
    return path


@pytest.fixture(scope="module")
def wrong_shape_vector(work) -> Path:
    path = work / "inputs" / "sd_shaped.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"v": torch.randn(4, 8, 8)}, str(path))
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _run_bad(capsys, argv: list[str], out: Path) -> str:
    capsys.readouterr()  # drop anything printed while fixtures were set up
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, (argv, captured.err)
    assert len(lines) == 1, f"expected one line on stderr, got {captured.err!r}"
    assert lines[0].startswith("eigenface: error:"), lines[0]
    assert captured.out == ""
    assert not out.exists(), f"{out} written despite the error"
    return lines[0]


# ------------------------------------------------------------------------------ bad input
BAD = {
    # name: (argv template, expected fragment of the message); {ddpm}, {sd}, {out}, {basis}, {vector} are filled in
    "unknown path": (["generate", "--model", "{missing}", *STEPS, "--out", "{out}/x.png"], "not found"),
    "dir without model_index": (["generate", "--model", "{inputs}", *STEPS, "--out", "{out}/x.png"], "model_index.json"),
    "hub id offline": (["generate", "--model", "someone/some-model", *STEPS, "--out", "{out}/x.png"], "HF_HUB_OFFLINE"),
    "hub id offline discover": (["discover", "--model", "someone/some-model", *STEPS, "--out", "{out}"], "HF_HUB_OFFLINE"),
    "k 0": (["discover", "--model", "{ddpm}", *STEPS, "--k", "0", "--out", "{out}"], "k must be"),
    "k 65": (["discover", "--model", "{ddpm}", *STEPS, "--k", "65", "--out", "{out}"], "k must be"),
    "compare k 0": (["compare", "--model", "{ddpm}", *STEPS, "--k", "0", "--timesteps", "0.5", "--seeds", "0", "--out", "{out}"], "k must be"),
    "timestep 1000": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "1000", "--k", "2", "--out", "{out}"], "timestep"),
    "timestep -1": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "-1", "--k", "2", "--out", "{out}"], "timestep"),
    "timestep 1.5": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "1.5", "--k", "2", "--out", "{out}"], "timestep"),
    "timestep abc": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "abc", "--k", "2", "--out", "{out}"], "timestep"),
    "timestep nan": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "nan", "--k", "2", "--out", "{out}"], "timestep"),
    "edit timestep 1000": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "1000", "--basis", "{basis}", "--direction", "0=0.3", "--out", "{out}/x.png"], "timestep"),
    "sd timestep 1000": (["discover", "--model", "{sd}", *STEPS, "--timestep", "1000", "--k", "2", "--out", "{out}"], "timestep"),
    "compare timestep abc": (["compare", "--model", "{ddpm}", *STEPS, "--k", "2", "--timesteps", "0.5", "abc", "--seeds", "0", "--out", "{out}"], "timestep"),
    "direction nan": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction", "0=nan", "--out", "{out}/x.png"], "finite"),
    "direction inf": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction", "1=inf", "--out", "{out}/x.png"], "finite"),
    "direction -inf": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction", "0=-inf", "--out", "{out}/x.png"], "finite"),
    "direction too strong": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction", "0=11", "--out", "{out}/x.png"], "within"),
    "vector strength nan": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{vector}", "--strength", "nan", "--out", "{out}/x.png"], "finite"),
    "vector strength inf": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{vector}", "--strength", "inf", "--out", "{out}/x.png"], "finite"),
    "grid strength nan": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--k", "2", "--grid-strength", "nan", "--out", "{out}"], "finite"),
    "direction index 2": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction", "2=0.3", "--out", "{out}/x.png"], "out of range"),
    "direction index -1": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction=-1=0.3", "--out", "{out}/x.png"], "out of range"),
    "transport index 2": (["transport", "--from", "{basis}", "--direction", "2", "--to", "{basis}", "--out", "{out}/v.safetensors"], "direction index"),
    "transport index -1": (["transport", "--from", "{basis}", "--direction", "-1", "--to", "{basis}", "--out", "{out}/v.safetensors"], "direction index"),
    "vector wrong shape": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{wrong}", "--strength", "0.3", "--out", "{out}/x.png"], "shape"),
    "prompt to unconditional generate": (["generate", "--model", "{ddpm}", *STEPS, "--prompt", "a cat", "--out", "{out}/x.png"], "unconditional"),
    "prompt to unconditional discover": (["discover", "--model", "{ddpm}", *STEPS, "--prompt", "a cat", "--out", "{out}"], "unconditional"),
    "prompt to unconditional edit": (["edit", "--model", "{ddpm}", *STEPS, "--prompt", "a cat", "--basis", "{basis}", "--direction", "0=0.3", "--out", "{out}/x.png"], "unconditional"),
    "edit prompt to unconditional": (["discover", "--model", "{ddpm}", *STEPS, "--edit-prompt", "a cat", "--out", "{out}"], "text-conditioned"),
    "steps 0": (["generate", "--model", "{ddpm}", "--steps", "0", "--out", "{out}/x.png"], "steps"),
    "seed -1": (["generate", "--model", "{ddpm}", *STEPS, "--seed", "-1", "--out", "{out}/x.png"], "seed"),
    "guidance nan": (["generate", "--model", "{sd}", *STEPS, "--guidance", "nan", "--out", "{out}/x.png"], "guidance"),
    "out not png": (["generate", "--model", "{ddpm}", *STEPS, "--out", "{out}/x.jpg"], "--out"),
    "transport out not safetensors": (["transport", "--from", "{basis}", "--direction", "0", "--to", "{basis}", "--out", "{out}/v.pt"], "--out"),
    "edit neither basis nor vector": (["edit", "--model", "{ddpm}", *STEPS, "--out", "{out}/x.png"], "either"),
    "edit both basis and vector": (["edit", "--model", "{ddpm}", *STEPS, "--basis", "{basis}", "--vector", "{vector}", "--strength", "1", "--out", "{out}/x.png"], "either"),
    "edit basis without direction": (["edit", "--model", "{ddpm}", *STEPS, "--basis", "{basis}", "--out", "{out}/x.png"], "--direction"),
    "edit malformed direction": (["edit", "--model", "{ddpm}", *STEPS, "--basis", "{basis}", "--direction", "0:0.3", "--out", "{out}/x.png"], "INDEX=STRENGTH"),
    "edit position past the end": (["edit", "--model", "{ddpm}", *STEPS, "--basis", "{basis}", "--direction", "0=1.5r", "--out", "{out}/x.png"], "within -1r .. 1r"),
    "edit vector without strength": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{vector}", "--out", "{out}/x.png"], "--strength"),
    "edit missing basis file": (["edit", "--model", "{ddpm}", *STEPS, "--basis", "{missing}/basis.safetensors", "--direction", "0=0.3", "--out", "{out}/x.png"], "no such file"),
    "edit pickled vector": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{pickled}", "--strength", "0.3", "--out", "{out}/x.png"], "only .safetensors"),
    "edit bad substeps": (["edit", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--basis", "{basis}", "--direction", "0=0.3", "--mode", "guidance", "--substeps", "0", "--out", "{out}/x.png"], "substeps"),
    "grid columns": (["discover", "--model", "{ddpm}", *STEPS, "--timestep", "500", "--k", "2", "--grid-columns", "2", "--out", "{out}"], "columns"),
    "transport across models": (["transport", "--from", "{basis}", "--direction", "0", "--to", "{sd_basis}", "--out", "{out}/v.safetensors"], "different models"),
    "device misspelt": (["generate", "--model", "{ddpm}", *STEPS, "--device", "tpu", "--out", "{out}/x.png"], "not a torch device"),
    "train batch 0": (["train", "--out", "{out}", "--minutes", "0.01", "--batch-size", "0"], "--batch-size"),
    "train odd resolution": (["train", "--out", "{out}", "--minutes", "0.01", "--resolution", "60"], "multiple of 8"),
    "train minutes nan": (["train", "--out", "{out}", "--minutes", "nan"], "--minutes"),
    "train snr gamma -1": (["train", "--out", "{out}", "--minutes", "0.01", "--snr-gamma", "-1"], "--snr-gamma"),
    "train init missing": (["train", "--out", "{out}", "--minutes", "0.01", "--init", "{missing}"], "--init"),
    "train device misspelt": (["train", "--out", "{out}", "--minutes", "0.01", "--device", "tpu"], "not a torch device"),
    "estimator batch 0": (["train-estimator", "--out", "{out}", "--minutes", "0.01", "--batch-size", "0"], "--batch-size"),
    "estimator minutes 0": (["train-estimator", "--out", "{out}", "--minutes", "0"], "--minutes"),
    "estimator init not an estimator": (["train-estimator", "--out", "{out}", "--minutes", "0.01", "--init", "{inputs}"], "not an estimator"),
    "text minutes 0": (["train-text", "--out", "{out}", "--minutes", "0"], "--minutes"),
    "text vae minutes over budget": (["train-text", "--out", "{out}", "--minutes", "1", "--vae-minutes", "2"], "--vae-minutes"),
    "text pool under a batch": (["train-text", "--out", "{out}", "--minutes", "1", "--vae-minutes", "0.5", "--pool", "8"], "--pool"),
    "text device misspelt": (["train-text", "--out", "{out}", "--minutes", "1", "--vae-minutes", "0.5", "--device", "tpu"], "not a torch device"),
}


@pytest.fixture(scope="module")
def sd_basis_file(work) -> Path:
    """A (fake) basis file with SD shapes, for the cross-model transport check."""
    out = work / "inputs" / "sd_basis"
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    v = torch.linalg.qr(torch.randn(256, 2, generator=g)).Q.T.reshape(2, 4, 8, 8).contiguous()
    u = torch.linalg.qr(torch.randn(1024, 2, generator=g)).Q.T.reshape(2, 64, 4, 4).contiguous()
    save_file({"v": v, "u": u, "sigma": torch.tensor([2.0, 1.0]), "x_t": torch.randn(4, 8, 8)}, str(out / "basis.safetensors"))
    return out / "basis.safetensors"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, capsys, tmp_path, ddpm, sd, basis0, good_vector, wrong_shape_vector, sd_basis_file):
    argv_template, fragment = BAD[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pickled = inputs / "v.pt"
    torch.save({"v": torch.randn(3, 16, 16)}, pickled)
    out = tmp_path / "out"
    values = {
        "ddpm": ddpm, "sd": sd, "out": str(out), "basis": str(basis0 / "basis.safetensors"), "vector": str(good_vector),
        "wrong": str(wrong_shape_vector), "missing": str(tmp_path / "missing"), "inputs": str(inputs), "pickled": str(pickled),
        "sd_basis": str(sd_basis_file),
    }
    argv = [a.format(**values) for a in argv_template]
    line = _run_bad(capsys, argv, out)
    assert fragment.lower() in line.lower(), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


# ------------------------------------------------------------------------------ happy paths
def test_generate(capsys, ddpm, original, tmp_path):
    image = Image.open(original)
    assert image.size == (16, 16) and image.mode == "RGB"
    capsys.readouterr()
    again = tmp_path / "nested" / "dir" / "again.png"
    assert main(["generate", "--model", ddpm, *STEPS, "--seed", "0", "--out", str(again)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {again}" and captured.err == ""
    assert again.read_bytes() == original.read_bytes()  # deterministic
    other = tmp_path / "seed1.png"
    _ok(["generate", "--model", ddpm, *STEPS, "--seed", "1", "--out", str(other)])
    assert not np.array_equal(_pixels(other), _pixels(original))


def test_discover_outputs(ddpm, basis0, original):
    tensors = load_file(str(basis0 / "basis.safetensors"))
    assert set(tensors) == {"v", "u", "sigma", "x_t", "range", "travel"}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert tensors["range"].shape == (2, 2) and tensors["travel"].shape == (2, 9)
    assert tensors["v"].shape == (2, 3, 16, 16)
    assert tensors["u"].shape == (2, 32, 8, 8)
    assert tensors["sigma"].shape == (2,)
    assert tensors["x_t"].shape == (3, 16, 16)
    assert float(tensors["sigma"][0]) >= float(tensors["sigma"][1]) > 0
    torch.testing.assert_close(tensors["v"].reshape(2, -1).norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)

    meta = json.loads((basis0 / "meta.json").read_text())
    assert meta["model"] == ddpm and meta["prompt"] == "" and meta["seed"] == 0 and meta["steps"] == 4
    assert meta["timestep"] == 500 and isinstance(meta["timestep"], int)
    assert meta["k"] == 2
    assert isinstance(meta["iterations"], int) and meta["iterations"] >= 1
    assert isinstance(meta["seconds"], float) and meta["seconds"] >= 0
    assert meta["sigma"] == pytest.approx(tensors["sigma"].tolist(), rel=1e-5)
    assert np.allclose(meta["range"], tensors["range"].numpy(), atol=1e-6)
    assert all(lo < 0 < hi for lo, hi in meta["range"])

    grid = Image.open(basis0 / "grid.png")
    assert grid.size == (5 * 16, 2 * 16)  # 5 columns (default), k = 2 rows
    cells = np.asarray(grid.convert("RGB")).astype(int)
    reference = _pixels(original)
    for row in range(2):
        middle = cells[16 * row : 16 * (row + 1), 32:48]
        assert np.abs(middle - reference).max() <= 1, f"row {row}: middle column is not the original"
        left, right = cells[16 * row : 16 * (row + 1), 0:16], cells[16 * row : 16 * (row + 1), 64:80]
        assert not np.array_equal(left, right)


def test_discover_timestep_int_and_fraction_agree(capsys, ddpm, basis0, tmp_path):
    out = tmp_path / "frac"
    capsys.readouterr()
    assert main(["discover", "--model", ddpm, *STEPS, "--seed", "0", "--timestep", "0.5", "--k", "2", "--grid-columns", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}/basis.safetensors") and captured.err == ""
    assert json.loads((out / "meta.json").read_text())["timestep"] == 500  # 0.5 * 999 -> nearest schedule point
    a, b = load_file(str(out / "basis.safetensors")), load_file(str(basis0 / "basis.safetensors"))
    for name in ("v", "u", "sigma", "x_t"):
        assert torch.equal(a[name], b[name]), name
    assert Image.open(out / "grid.png").size == (3 * 16, 2 * 16)


def test_edit_with_basis(capsys, ddpm, basis0, original, tmp_path):
    edited = tmp_path / "edited.png"
    capsys.readouterr()
    assert main(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3", "--out", str(edited)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {edited}"
    assert Image.open(edited).size == (16, 16)
    assert not np.array_equal(_pixels(edited), _pixels(original))
    # strength 0 is generate's image; two directions combine
    zero, both = tmp_path / "zero.png", tmp_path / "both.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0", "--out", str(zero)])
    assert np.array_equal(_pixels(zero), _pixels(original))
    _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "0.5", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3", "--direction", "1=-0.2", "--out", str(both)])
    assert not np.array_equal(_pixels(both), _pixels(edited))
    # the edit is deterministic
    again = tmp_path / "again.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3", "--out", str(again)])
    assert again.read_bytes() == edited.read_bytes()


def test_edit_at_the_calibrated_ends(ddpm, basis0, tmp_path):
    """I=hi / I=lo / I=Pr address the basis's calibrated range (meta.json "range"); an old file
    without ranges is calibrated on the fly, to the same ends."""
    meta = json.loads((basis0 / "meta.json").read_text())
    lo, hi = meta["range"][0]
    basis = str(basis0 / "basis.safetensors")
    names = {"hi": "0=hi", "strength": f"0={hi!r}", "lo": "0=LO", "lo_strength": f"0={lo!r}", "half": "0=0.5r", "one_r": "0=1r"}
    for name, item in names.items():
        _ok(["edit", "--model", ddpm, *STEPS, "--basis", basis, "--direction", item, "--out", str(tmp_path / f"{name}.png")])
    assert np.array_equal(_pixels(tmp_path / "hi.png"), _pixels(tmp_path / "strength.png"))
    assert np.array_equal(_pixels(tmp_path / "hi.png"), _pixels(tmp_path / "one_r.png"))
    assert np.array_equal(_pixels(tmp_path / "lo.png"), _pixels(tmp_path / "lo_strength.png"))
    assert not np.array_equal(_pixels(tmp_path / "half.png"), _pixels(tmp_path / "hi.png"))
    old = tmp_path / "old"
    basis_v, x_t, old_meta = load_basis(basis)
    save_basis(old, basis_v, x_t, {k: v for k, v in old_meta.items() if k != "range"})
    _ok(["edit", "--model", ddpm, *STEPS, "--basis", str(old / "basis.safetensors"), "--direction", "0=hi", "--out", str(tmp_path / "old.png")])
    assert np.array_equal(_pixels(tmp_path / "old.png"), _pixels(tmp_path / "hi.png"))


def test_edit_with_basis_takes_its_timestep_from_the_file(ddpm, basis0, tmp_path):
    """Without --timestep, edit --basis edits where the basis was computed (meta.json), not at the model's default."""
    implicit, explicit = tmp_path / "implicit.png", tmp_path / "explicit.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3", "--out", str(implicit)])
    _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3", "--out", str(explicit)])
    assert np.array_equal(_pixels(implicit), _pixels(explicit))


def test_edit_modes(ddpm, basis0, original, tmp_path):
    for mode, substeps in (("guidance", "4"), ("geodesic", "2")):
        out = tmp_path / f"{mode}.png"
        _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3",
             "--mode", mode, "--substeps", substeps, "--out", str(out)])
        assert Image.open(out).size == (16, 16)
        assert not np.array_equal(_pixels(out), _pixels(original)), mode


def test_transport_then_edit_vector(capsys, ddpm, basis0, basis1, tmp_path):
    moved = tmp_path / "moved.safetensors"
    capsys.readouterr()
    assert main(["transport", "--from", str(basis0 / "basis.safetensors"), "--direction", "0", "--to", str(basis1 / "basis.safetensors"), "--out", str(moved)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {moved}"
    v, provenance = load_direction(moved)
    assert v.shape == (3, 16, 16) and float(v.norm()) == pytest.approx(1.0, abs=1e-5)
    assert provenance["transported_from"]["seed"] == 0 and provenance["transported_from"]["index"] == 0
    assert provenance["transported_to"]["seed"] == 1 and provenance["transported_to"]["timestep"] == 500
    target_v = load_file(str(basis1 / "basis.safetensors"))["v"].reshape(2, -1)
    assert float((target_v @ v.reshape(-1)).norm()) == pytest.approx(1.0, abs=1e-4)  # in the target's span

    generated, edited = tmp_path / "seed1.png", tmp_path / "seed1_edit.png"
    _ok(["generate", "--model", ddpm, *STEPS, "--seed", "1", "--out", str(generated)])
    _ok(["edit", "--model", ddpm, *STEPS, "--seed", "1", "--timestep", "500", "--vector", str(moved), "--strength", "0.3", "--out", str(edited)])
    assert Image.open(edited).size == (16, 16)
    assert not np.array_equal(_pixels(edited), _pixels(generated))
    zero = tmp_path / "seed1_zero.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--seed", "1", "--timestep", "500", "--vector", str(moved), "--strength", "0", "--out", str(zero)])
    assert np.array_equal(_pixels(zero), _pixels(generated))


def test_compare(capsys, ddpm, tmp_path):
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(["compare", "--model", ddpm, *STEPS, "--timesteps", "0.75", "500", "--seeds", "0", "1", "--k", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}/distances.csv, heatmap.png"
    with open(out / "distances.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 5 and all(len(r) == 5 for r in rows)
    assert rows[0][1:] == ["t=0.75 seed=0", "t=0.75 seed=1", "t=500 seed=0", "t=500 seed=1"]
    dist = np.array([[float(c) for c in r[1:]] for r in rows[1:]])
    assert np.allclose(np.diag(dist), 0) and np.allclose(dist, dist.T)
    assert (dist[~np.eye(4, dtype=bool)] > 0).all() and dist.max() <= np.pi / 2 + 1e-6
    assert Image.open(out / "heatmap.png").size[0] > 0


def test_sd_generate_and_long_prompt_warning(capsys, sd, tmp_path):
    image = tmp_path / "sd.png"
    _ok(["generate", "--model", sd, *STEPS, "--prompt", "a photo of a cat", "--out", str(image)])
    assert Image.open(image).size == (16, 16)
    out = tmp_path / "sd_basis"
    capsys.readouterr()
    long_prompt = "a photo of a smiling cat " * 20
    assert main(["discover", "--model", sd, *STEPS, "--prompt", long_prompt, "--k", "2", "--grid-columns", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "truncated" in captured.err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prompt"] == long_prompt and meta["k"] == 2
    assert load_file(str(out / "basis.safetensors"))["v"].shape == (2, 4, 8, 8)


# ------------------------------------------------------------------------------ the direction library
BASIS_AT = [*STEPS, "--seed", "0", "--timestep", "500", "--k", "2"]


@pytest.fixture(scope="module")
def library(ddpm, work) -> Path:
    """A library with a slider edit ('smile') and one basis direction ('d1') saved by the CLI, and two
    files copied in by hand without provenance: one of the tiny DDPM's shape, one of SD's latents."""
    from backend.store import DirectionLibrary

    root = work / "lib" / "directions"
    _ok(["directions", "save", "smile", "--model", ddpm, *BASIS_AT, "--direction", "0=0.3", "--direction", "1=-0.2", "--library", str(root)])
    _ok(["directions", "save", "d1", "--model", ddpm, *BASIS_AT, "--direction", "1", "--library", str(root)])
    DirectionLibrary(root).save("no record", torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0)), {})
    DirectionLibrary(root).save("latent", torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)), {})
    return root


def _library_service(library: Path):
    from backend.service import EigenfaceService, ServiceConfig

    return EigenfaceService(ServiceConfig(models={}, allow_any_model=True, device="cpu", library_dir=str(library)))


def test_directions_save_list_and_edit_saved(capsys, ddpm, basis0, original, library, tmp_path):
    from backend.specs import BasisSpec, SampleSpec

    service = _library_service(library)
    smile = {d.name: d for d in service.library.list()}["smile"].provenance
    assert (smile["model"], smile["seed"], smile["timestep"], smile["k"], smile["sliders"]) == (ddpm, 0, 500, 2, {"0": 0.3, "1": -0.2})

    capsys.readouterr()
    assert main(["directions", "list", "--library", str(library)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines() == [
        f"d1: direction 1 of 2; model {ddpm}, seed 0, timestep 500, prompt ''",
        "latent: origin not recorded; model ?, seed ?, timestep ?, prompt ''",
        "no record: origin not recorded; model ?, seed ?, timestep ?, prompt ''",
        f"smile: sliders 0=0.3 1=-0.2 (strength {smile['strength']}); model {ddpm}, seed 0, timestep 500, prompt ''",
    ]

    # At the image it was saved at, with its own strength (the default): the service's edit_saved, and the slider edit again.
    edited = tmp_path / "smile.png"
    assert main(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--saved", "smile", "--library", str(library), "--out", str(edited)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {edited}"
    spec0 = BasisSpec(SampleSpec(model=ddpm, seed=0, steps=4), timestep="500", k=2)
    assert np.array_equal(_pixels(edited), np.asarray(service.library.edit(spec0, "smile", smile["strength"])).astype(int))
    sliders = tmp_path / "sliders.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--basis", str(basis0 / "basis.safetensors"), "--direction", "0=0.3", "--direction", "1=-0.2", "--out", str(sliders)])
    assert np.abs(_pixels(edited) - _pixels(sliders)).max() <= 1
    assert not np.array_equal(_pixels(edited), _pixels(original))

    # At another seed, carried into its basis, at a given strength.
    moved = tmp_path / "moved.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--seed", "1", "--timestep", "500", "--k", "2", "--saved", "d1", "--saved-strength", "-0.4", "--transport",
         "--library", str(library), "--out", str(moved)])
    spec1 = BasisSpec(SampleSpec(model=ddpm, seed=1, steps=4), timestep="500", k=2)
    assert np.array_equal(_pixels(moved), np.asarray(service.library.edit(spec1, "d1", -0.4, transport=True)).astype(int))
    as_saved = tmp_path / "as_saved.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--seed", "1", "--timestep", "500", "--saved", "d1", "--saved-strength", "-0.4", "--library", str(library), "--out", str(as_saved)])
    assert not np.array_equal(_pixels(as_saved), _pixels(moved))


def test_directions_delete(capsys, tmp_path):
    library = tmp_path / "lib"
    _library_service(library).library.files.save("gone", torch.randn(3, 8, 8), {"index": 0})
    _ok(["directions", "delete", "gone", "--library", str(library)])
    assert capsys.readouterr().out.strip() == f"deleted 'gone' ({library / 'gone.safetensors'})"
    assert main(["directions", "delete", "gone", "--library", str(library)]) != 0
    assert "no saved direction named 'gone'" in capsys.readouterr().err
    assert main(["directions", "delete", "../lib/x", "--library", str(library)]) != 0
    assert "direction names" in capsys.readouterr().err


def test_a_model_typed_as_any_path_is_one_model(capsys, monkeypatch, ddpm, library, tmp_path):
    """A direction saved with the model's absolute path applies when the model is typed relatively."""
    absolute = tmp_path / "absolute.png"
    _ok(["edit", "--model", ddpm, *STEPS, "--timestep", "500", "--saved", "smile", "--library", str(library), "--out", str(absolute)])
    monkeypatch.chdir(Path(ddpm).parent)
    relative = tmp_path / "relative.png"
    _ok(["edit", "--model", f"./{Path(ddpm).name}/", *STEPS, "--timestep", "500", "--saved", "smile", "--library", str(library), "--out", str(relative)])
    assert np.array_equal(_pixels(relative), _pixels(absolute))


def test_canonical_model_name(tmp_path, monkeypatch):
    from backend.models import BUILTIN_MODEL
    from backend.registry import canonical_model_name

    models = {"catpeople": str(BUILTIN_MODEL)}
    monkeypatch.chdir(BUILTIN_MODEL.parent.parent)
    assert canonical_model_name("catpeople", models) == "catpeople"
    assert canonical_model_name("assets/catpeople/", models) == "catpeople"  # the allow-listed model, by its path
    assert canonical_model_name("org/no-such-model", models) == "org/no-such-model"  # a hub id
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    assert canonical_model_name("mine", models) == canonical_model_name(str(tmp_path / "mine"), models) == str((tmp_path / "mine").resolve())


def test_directions_list_reads_the_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EIGENFACE_LIBRARY", str(tmp_path / "env-lib"))
    capsys.readouterr()
    assert main(["directions", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no saved directions in {tmp_path / 'env-lib'}"
    assert not (tmp_path / "env-lib").exists()


LIBRARY_BAD = {
    # name: (argv template, expected fragment); {lib} is the library fixture, {out} must stay unwritten
    "edit unknown name": (["edit", "--model", "{ddpm}", *STEPS, "--saved", "frown", "--library", "{lib}", "--out", "{out}/x.png"], "no saved direction named 'frown'"),
    "edit path-like name": (["edit", "--model", "{ddpm}", *STEPS, "--saved", "../directions/smile", "--library", "{lib}", "--out", "{out}/x.png"], "direction names"),
    "edit other model": (["edit", "--model", "{sd}", *STEPS, "--prompt", "a cat", "--saved", "smile", "--library", "{lib}", "--out", "{out}/x.png"], "was saved on model"),
    "edit other model transported": (["edit", "--model", "{sd}", *STEPS, "--prompt", "a cat", "--saved", "smile", "--transport", "--library", "{lib}", "--out", "{out}/x.png"], "was saved on model"),
    "edit wrong shape": (["edit", "--model", "{ddpm}", *STEPS, "--saved", "latent", "--saved-strength", "0.3", "--library", "{lib}", "--out", "{out}/x.png"], "has shape (4, 8, 8)"),
    "edit transport without record": (["edit", "--model", "{ddpm}", *STEPS, "--saved", "no record", "--transport", "--library", "{lib}", "--out", "{out}/x.png"], "cannot be transported"),
    "edit saved strength nan": (["edit", "--model", "{ddpm}", *STEPS, "--saved", "smile", "--saved-strength", "nan", "--library", "{lib}", "--out", "{out}/x.png"], "finite"),
    "edit saved and vector": (["edit", "--model", "{ddpm}", *STEPS, "--saved", "smile", "--vector", "{lib}/smile.safetensors", "--strength", "1", "--library", "{lib}", "--out", "{out}/x.png"], "either"),
    "edit saved strength alone": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{lib}/smile.safetensors", "--strength", "1", "--saved-strength", "1", "--out", "{out}/x.png"], "go with --saved"),
    "edit transport alone": (["edit", "--model", "{ddpm}", *STEPS, "--vector", "{lib}/smile.safetensors", "--strength", "1", "--transport", "--out", "{out}/x.png"], "go with --saved"),
    "save existing name": (["directions", "save", "smile", "--model", "{ddpm}", *BASIS_AT, "--direction", "0", "--library", "{lib}"], "already exists"),
    "save path-like name": (["directions", "save", "../escape", "--model", "{ddpm}", *BASIS_AT, "--direction", "0", "--library", "{out}"], "direction names"),
    "save name with a slash": (["directions", "save", "a/b", "--model", "{ddpm}", *BASIS_AT, "--direction", "0", "--library", "{out}"], "direction names"),
    "save no direction": (["directions", "save", "z", "--model", "{ddpm}", *BASIS_AT, "--library", "{out}"], "--direction I"),
    "save index and sliders": (["directions", "save", "z", "--model", "{ddpm}", *BASIS_AT, "--direction", "0", "--direction", "1=0.3", "--library", "{out}"], "INDEX=STRENGTH"),
    "save bad index": (["directions", "save", "z", "--model", "{ddpm}", *BASIS_AT, "--direction", "x", "--library", "{out}"], "INDEX or INDEX=STRENGTH"),
    "save index out of range": (["directions", "save", "z", "--model", "{ddpm}", *BASIS_AT, "--direction", "2", "--library", "{out}"], "direction index"),
    "save sliders at zero": (["directions", "save", "z", "--model", "{ddpm}", *BASIS_AT, "--direction", "0=0", "--library", "{out}"], "every slider is at zero"),
}


@pytest.mark.parametrize("case", list(LIBRARY_BAD))
def test_library_bad_input(case, capsys, tmp_path, ddpm, sd, library):
    argv_template, fragment = LIBRARY_BAD[case]
    before = {p.name: p.read_bytes() for p in library.parent.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    argv = [a.format(ddpm=ddpm, sd=sd, lib=library, out=out) for a in argv_template]
    line = _run_bad(capsys, argv, out)
    assert fragment.lower() in line.lower(), line
    assert list(tmp_path.iterdir()) == []
    assert {p.name: p.read_bytes() for p in library.parent.rglob("*") if p.is_file()} == before
