"""Smoke test of the issue-6 benchmark harness: bench/bench_basis.py on sd-tiny, in-process, tiny settings.

It checks that the harness runs the reference, the official baseline and both Eigenface variants
on one model and x_t, writes the markdown table and the JSON, and that Eigenface's directions
agree with the long-converged reference. The timings themselves are not judged here.
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
