"""Smoke tests of the benchmark and evidence scripts, in-process at tiny settings.

bench_basis on sd-tiny: it runs the reference, the official baseline and both Eigenface variants
on one model and x_t, writes the markdown table and the JSON, and Eigenface's directions agree
with the long-converged reference (timings are not judged here). geometry_eval and catpeople_eval
on the built-in model: every section they are asked for runs and reports.
"""

import json

import pytest
import torch

from bench import bench_basis

K = 4
ARGS = [
    "--model", "sd-tiny", "--k", str(K), "--steps", "10", "--threads", "1",
    "--ref-k", "8", "--reference", "exact:tol=1e-6:iters=10",
    "--baseline-min-iters", "3", "--baseline-max-iters", "3",
    "--ours", "fd:iters=6", "exact:iters=6",
]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_basis_sd_tiny(tmp_path, restore_threads):
    result = bench_basis.main([*ARGS, "--out", str(tmp_path), "--name", "smoke"])

    table = (tmp_path / "smoke.md").read_text()
    assert "## bench_basis: sd-tiny (random weights)" in table
    assert bench_basis.TABLE_HEADER in table
    rows = [line for line in table.splitlines() if line.startswith(f"| {K} |")]
    methods = [line.split("|")[2].strip() for line in rows]
    assert len(rows) == 3, table
    assert methods[0].startswith("official baseline")
    assert methods[1].startswith("eigenface fd (fast attn)")
    assert methods[2].startswith("eigenface exact (math attn)")
    assert json.loads((tmp_path / "smoke.json").read_text())["rows"] == result["rows"]

    by_method = {row["method"].split(" ")[1]: row for row in result["rows"] if row["method"].startswith("eigenface")}
    for mode, limit in (("exact", 0.01), ("fd", 0.05)):
        row = by_method[mode]
        assert row["status"] == "ok" and row["seconds"] > 0
        acc = row["accuracy"]
        assert acc["n_separated"] >= 1, acc
        assert acc["angle_max_separated"] < limit, (mode, acc)
        assert acc["sigma_rel_err_max"] < 1e-2, (mode, acc)
    baseline = result["rows"][0]
    assert baseline["status"] == "ok" and baseline["rounds"] == 3


def test_bench_edit_sd_tiny(tmp_path, restore_threads):
    from bench import bench_edit

    result = bench_edit.main(["--model", "sd-tiny", "--threads", "1", "--steps", "6", "--preview-steps", "2", "--batch", "1", "2",
                              "--repeats", "1", "--out", str(tmp_path), "--name", "edit"])
    table = (tmp_path / "edit.md").read_text()
    assert "## bench_edit: sd-tiny (random weights)" in table
    assert json.loads((tmp_path / "edit.json").read_text())["rows"] == result["rows"]
    paths = {(row["path"], row["batch"]) for row in result["rows"]}
    assert paths == {("preview", 1), ("preview", 2), ("full", 1), ("full", 2)}
    assert all(row["status"] == "ok" and row["median_s"] > 0 for row in result["rows"])


def test_geometry_eval_quick(tmp_path, restore_threads):
    """The issue-4 evidence script end to end at tiny sizes on the built-in model (two source seeds)."""
    from bench import geometry_eval

    out = tmp_path / "geometry.md"
    argv = ["--quick", "--sections", "transport,validity", "--threads", "1", "--out", str(out), "--heatmap", str(tmp_path / "heat.png"),
            "--set", "timestep=0.3", "--set", "transport_strength=0.2", "--set", "transport_sources=0,1"]
    assert geometry_eval.main(argv) == 0
    text = out.read_text()
    assert "## (a) Validity of large edits" in text and "By strength" in text
    assert "## (b) Transport of directions between seeds" in text and "Sources: seeds [0, 1]" in text
    assert "| all |" in text and "named" in text


def test_catpeople_eval_quick(tmp_path, restore_threads):
    """The issue-3/8 evidence script: semantic check, two-magnitude slider labels, atlas, denoising table."""
    from bench import catpeople_eval

    out, docs = tmp_path / "catpeople.md", tmp_path / "docs"
    argv = ["--quick", "--sections", "semantic,atlas,denoising", "--threads", "1", "--out", str(out), "--docs", str(docs)]
    assert catpeople_eval.main(argv) == 0
    text = out.read_text()
    assert "## (d) Semantic check" in text and "### Issue 8: sliders that name themselves" in text
    assert text.index("## Denoising by timestep") < text.index("## (d) Semantic check")
    assert "| 999 |" in text
    assert "+-0.1 and +-0.2" in text  # labels measured at half and full strength (the model's 0.2)
    assert (docs / "atlas.png").is_file()
