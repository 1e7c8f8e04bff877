"""Smoke tests of the benchmark and evidence scripts, run as a person runs them
(``python -m bench.X ...``, a subprocess at tiny settings), judged by the numbers they write.

bench_basis on sd-tiny: the reference, the official baseline and both Eigenface variants run on
one model and x_t, and Eigenface's directions agree with the long-converged reference (timings
are only checked to be real numbers). bench_edit: every path renders at the image size of the
model. geometry_eval and catpeople_eval on the built-in model: each section asked for reports
counts that add up and values in their possible range, and the semantic check passes.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend.ranges import MAX_END
from backend.testing import save_tiny_sd

ROOT = Path(__file__).resolve().parents[1]
K = 4

pytestmark = pytest.mark.slow


def run_bench(module: str, *args: str) -> str:
    """Run ``python -m bench.<module> args`` from the repository root; its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is ``first_cell``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


def counted(cell: str) -> tuple[int, int]:
    """``"**50% (3/6)**"`` -> (3, 6), checking that the percentage is the fraction."""
    found = re.search(r"(\d+)% \((\d+)/(\d+)\)", cell)
    assert found, cell
    pct, hits, total = map(int, found.groups())
    assert 0 <= hits <= total and total > 0 and abs(pct - 100 * hits / total) <= 0.5, cell
    return hits, total


def test_bench_basis_sd_tiny(tmp_path):
    run_bench("bench_basis", "--model", "sd-tiny", "--k", str(K), "--steps", "10", "--threads", "1",
              "--ref-k", "8", "--reference", "exact:tol=1e-6:iters=10", "--baseline-min-iters", "3", "--baseline-max-iters", "3",
              "--ours", "fd:iters=6", "exact:iters=6", "--out", str(tmp_path), "--name", "smoke")

    table = (tmp_path / "smoke.md").read_text()
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert "## bench_basis: sd-tiny (random weights)" in table
    rows = [line for line in table.splitlines() if line.startswith(f"| {K} |")]
    methods = [line.split("|")[2].strip() for line in rows]
    assert len(rows) == 3, table
    assert methods[0].startswith("official baseline")
    assert methods[1].startswith("eigenface fd (fast attn)")
    assert methods[2].startswith("eigenface exact (math attn)")
    assert [row["method"] for row in result["rows"]] == methods

    assert result["setup"]["x_shape"] == "4x16x16" and result["setup"]["h_shape"] == "64x2x2"
    assert result["reference"]["k"] == 8 and result["reference"]["rounds"] <= 10
    by_method = {row["method"].split(" ")[1]: row for row in result["rows"] if row["method"].startswith("eigenface")}
    for mode, limit in (("exact", 0.01), ("fd", 0.05)):
        row = by_method[mode]
        assert row["status"] == "ok" and finite(row["seconds"]) and row["seconds"] > 0
        assert len(row["sigma"]) == K and all(finite(s) and s > 0 for s in row["sigma"])
        assert row["sigma"] == sorted(row["sigma"], reverse=True)
        acc = row["accuracy"]
        assert acc["n_separated"] >= 1, acc
        assert acc["angle_max_separated"] < limit, (mode, acc)
        assert acc["sigma_rel_err_max"] < 1e-2, (mode, acc)
    baseline = result["rows"][0]
    assert baseline["status"] == "ok" and baseline["rounds"] == 3
    assert baseline["accuracy"]["sigma_rel_err_max"] < 0.5  # three rounds of the power method: roughly there, not converged


def test_bench_edit_sd_tiny(tmp_path):
    run_bench("bench_edit", "--model", "sd-tiny", "--threads", "1", "--steps", "6", "--preview-steps", "2", "--batch", "1", "2",
              "--repeats", "1", "--out", str(tmp_path), "--name", "edit")
    table = (tmp_path / "edit.md").read_text()
    result = json.loads((tmp_path / "edit.json").read_text())
    assert "## bench_edit: sd-tiny (random weights)" in table
    assert result["setup"]["image_size"] == "128x128"  # latent 16 x 16, the SD VAE's factor 8
    assert len(result["setup"]["preview_timesteps"]) == 2 and result["setup"]["cfg"]
    paths = {(row["path"], row["batch"]) for row in result["rows"]}
    assert paths == {("preview", 1), ("preview", 2), ("full", 1), ("full", 2)}
    for row in result["rows"]:
        assert row["status"] == "ok" and finite(row["median_s"]) and 0 < row["min_s"] <= row["median_s"], row
        assert f"| {row['path']} | {row['steps']} | fp32 | {row['batch']} | {row['median_s']:.3f} |" in table


def test_geometry_eval_quick(tmp_path):
    """The issue-4 evidence script end to end at tiny sizes on the built-in model (two source seeds)."""
    out = tmp_path / "geometry.md"
    run_bench("geometry_eval", "--quick", "--sections", "transport,validity", "--threads", "1", "--out", str(out),
              "--heatmap", str(tmp_path / "heat.png"), "--set", "timestep=0.3", "--set", "transport_strength=0.2",
              "--set", "transport_sources=0,1")
    text = out.read_text()
    assert "## (a) Validity of large edits" in text and "By strength" in text
    assert "## (b) Transport of directions between seeds" in text and "Sources: seeds [0, 1]" in text

    # (a): each mode judged 1 direction x 2 strengths on one seed; seconds per edit are real.
    for mode in ("direct", "geodesic-2", "geodesic-4", "guidance"):
        row = table_rows(text, mode)[0]
        assert counted(next(c for c in row if "/" in c))[1] == 2, row  # "valid all"
        assert float(row[-1]) > 0 and float(row[-3]) >= 0, row  # s / edit, factor change
    # (b): 2 directions carried from seed 0 to seeds 1 and 2, and from seed 1 to seed 2.
    (all_row,) = table_rows(text, "all")
    for cell in all_row[2:4]:
        assert counted(cell)[1] == 6, all_row
    (transported,) = table_rows(text, "transported")
    assert all(-1 <= float(c.strip("*")) <= 1 for c in transported[1:3]), transported  # correlations


def test_catpeople_eval_quick(tmp_path):
    """The issue-3/8 evidence script: semantic check, two-magnitude slider labels, atlas, denoising table."""
    out, docs, raw = tmp_path / "catpeople.md", tmp_path / "docs", tmp_path / "raw.json"
    run_bench("catpeople_eval", "--quick", "--sections", "semantic,atlas,denoising", "--threads", "1", "--out", str(out),
              "--docs", str(docs), "--json", str(raw))
    text = out.read_text()
    numbers = json.loads(raw.read_text())
    assert "## (d) Semantic check" in text and "### Issue 8: sliders that name themselves" in text
    assert text.index("## Denoising by timestep") < text.index("## (d) Semantic check")
    assert "+-0.1 and +-0.2" in text  # labels measured at half and full strength (the model's 0.2)

    # The trained model predicts the noise of its own training renders well at every timestep
    # (predicting zero would score 1), and its x0 estimates stay within the pixel range.
    denoising = numbers["denoising"]
    assert set(denoising) == {"50", "150", "300", "500", "700", "850", "950", "999"}
    for t, row in denoising.items():
        assert finite(row["eps_mse"]) and 0 < row["eps_mse"] < 0.1, (t, row)
        assert finite(row["x0_rmse"]) and 0 <= row["x0_rmse"] <= 1, (t, row)
    assert f"| 999 | {denoising['999']['eps_mse']:.4f} |" in text

    # The semantic check itself: top directions move the factors >= 3x more than random ones.
    semantic = numbers["semantic"]
    assert set(semantic["seeds"]) == {"0", "1"}
    for seed in semantic["seeds"].values():
        assert len(seed["directions"]) == 4 and len(seed["random"]) == 4
        assert all(len(d["edited"]) == 6 for d in seed["directions"])  # +-0.1, +-0.2 and the held-out +-0.3
    ratio = semantic["ratio"]["0.2"]
    assert finite(ratio) and ratio >= 3 and semantic["pass"], semantic["ratio"]
    assert f"**{ratio:.2f}**" in text
    assert (docs / "atlas.png").is_file()


def test_text_eval_quick(tmp_path):
    """The issue-16 evidence script on the shipped text model: the edit-prompt basis under both
    readings, the concept checks on CONCEPT_K directions, the horse strip and the speed table."""
    from backend.specs import CONCEPT_K

    out, docs, raw = tmp_path / "text.md", tmp_path / "docs", tmp_path / "raw.json"
    run_bench("text_eval", "--quick", "--sections", "directions,strip,speed,concept_width", "--threads", "1", "--out", str(out),
              "--docs", str(docs), "--json", str(raw))
    text, numbers = out.read_text(), json.loads(raw.read_text())
    directions = numbers["directions"]
    assert all(directions[key] in (0, 1, 2) for key in ("edit_prompt_passes", "edit_prompt_horse_leads"))  # of the 2 quick seeds
    assert set(directions["concepts"]) == {"a horse person", "a cat person with big ears", "a cat person with a wide smile"}
    assert all(len(ratios) == 2 and all(finite(r) for r in ratios) for ratios in directions["concepts"].values())
    assert f"over the top {CONCEPT_K} directions" in text and "raises horse most" in text
    horse = numbers["strip"]["horse"]
    assert len(horse) == 6 and horse[-1] > horse[0] + 0.2  # toward "a horse person": more of a horse
    assert (docs / "more_like_horses.png").is_file() and (docs / "more_like_horses.gif").is_file()
    assert all(finite(v) and v > 0 for v in numbers["speed"].values())
    width = numbers["concept_width"]
    assert set(width) == {"8", "16", "24", "32"} and all(len(w["horse"]) == 2 and 0 <= w["horse_top"] <= 2 for w in width.values())


def test_bench_paths_on_the_text_model(tmp_path):
    """The geodesic-path bench on any model with its own prompt: the precompute, the timed slider
    edits, and direct against geodesic ends on both validity readings."""
    raw = tmp_path / "paths.json"
    text = run_bench("bench_paths", "--model", "catpeople-text", "--seeds", "0", "--timesteps", "0.4", "--k", "2", "--repeats", "1",
                     "--threads", "1", "--json", str(raw))
    numbers = json.loads(raw.read_text())
    assert "Model catpeople-text, prompt 'a cat person'" in text
    assert numbers["speed"]["precompute"]["wall_s"] > 0 and all(finite(r["median_s"]) for r in numbers["speed"]["edits"].values())
    for mode in ("direct", "geodesic"):
        row = numbers["quality"]["0.4"][mode]
        assert row["n"] == 4 and all(0 <= row[key] <= 1 for key in ("within", "face"))  # 2 directions x 2 ends


def test_slider_ranges(tmp_path):
    """The ends' validity table: percentages and factor changes in range, one row per timestep, raw numbers beside it."""
    out = tmp_path / "ranges.md"
    text = run_bench("slider_ranges", "--seeds", "72", "--timesteps", "0.3", "--k", "2", "--fixed", "0.2,0.4", "--threads", "1", "--out", str(out))
    assert "# Calibrated slider ranges on catpeople" in text and "prompt '', boost on" in text
    row, face = table_rows(text, "0.3")
    percents = [float(cell.rstrip("%")) for cell in row if cell.endswith("%")]
    assert len(percents) == 6 and all(0 <= p <= 100 for p in percents)
    assert float(row[5].rstrip("%")) >= float(row[4].rstrip("%"))  # "valid or a face" only adds to "valid"
    capped, by_criterion = map(int, row[3].split("/"))
    assert capped + by_criterion == 4  # 2 directions x 2 ends
    assert len(face) == 5 and all(0 <= float(cell.rstrip("%")) <= 100 for cell in face[1:])  # unedited, ends, +-0.2, +-0.4
    raw = json.loads(out.with_suffix(".json").read_text())["0.3"][0]
    assert len(raw["ranges"]) == 2 and all(lo < 0 < hi for lo, hi in raw["ranges"])
    assert sum(-lo >= MAX_END for lo, _ in raw["ranges"]) + sum(hi >= MAX_END for _, hi in raw["ranges"]) == capped
    assert all(len(row) == 6 and all(finite(v) and v > 0 for v in row) for row in raw["speckle"])
    assert all(len(row) == 6 and all(isinstance(v, bool) for v in row) for row in raw["face"])


def test_slider_ranges_any_checkpoint(tmp_path):
    """--model takes a Stable Diffusion checkpoint's path (latents, a text encoder): it samples with
    the checkpoint's own prompt (eigenface.json) and calibrates and scores as on the built-in model,
    no end past the checkpoint's own range cap."""
    checkpoint = save_tiny_sd(tmp_path / "sd")
    (checkpoint / "eigenface.json").write_text('{"prompt": "a cat", "guidance_scale": 2.0, "range_cap": 0.3}')
    out = tmp_path / "ranges.md"
    text = run_bench("slider_ranges", "--model", str(checkpoint), "--seeds", "3", "--timesteps", "0.4", "--k", "2", "--fixed", "0.2",
                     "--threads", "1", "--out", str(out))
    assert f"# Calibrated slider ranges on {checkpoint}" in text and "prompt 'a cat', boost off" in text  # latent models: no boost
    row, face = table_rows(text, "0.4")
    capped, by_criterion = map(int, row[3].split("/"))
    assert capped + by_criterion == 4 and len(face) == 4 and "ends set by cap 0.3 " in text
    raw = json.loads(out.with_suffix(".json").read_text())["0.4"][0]
    assert len(raw["ranges"]) == 2 and all(-0.3 <= lo < 0 < hi <= 0.3 for lo, hi in raw["ranges"])
    assert all(len(row) == 4 and all(finite(v) for v in row) for row in raw["predicted_hf"])


def test_slider_ranges_limits_sweep(tmp_path):
    """The HF_LIMITS sweep: one row per candidate limit, ends no larger for a tighter limit."""
    text = run_bench("slider_ranges", "--limits", "0.5,1.25,100", "--strengths", "0.1,0.3", "--seeds", "72", "--timesteps", "0.3", "--k", "2",
                     "--threads", "1", "--out", str(tmp_path / "limits.md"))
    rows = table_rows(text, "0.3")
    assert [row[1] for row in rows] == ["0.5", "1.25", "100"]
    assert rows[2][2] == "0.300" and rows[2][3] == "0"  # nothing crosses 100: every end at the grid's last strength
    assert rows[0][3] == "4" and rows[0][2] == "-"  # everything crosses 0.5 (2 directions x 2 signs): no end on the grid
    assert all(cell.endswith("%") for cell in rows[2][4:])
