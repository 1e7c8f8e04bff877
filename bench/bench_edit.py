"""Edit-path benchmark (issue 6): the time from a slider value to an image, direct mode.

The trajectory from the seed's noise to x_t is cached in the app, so an edit costs: combine the
slider values into one direction, step x_t along it (``direct_edit``), denoise from the edit
timestep to 0 (DDIM, eta = 0, classifier-free guidance for text models), VAE-decode for latent
models, and convert to a PIL image. Two paths are timed:

* **preview**: the same start x_t with only ``--preview-steps`` DDIM steps (``sub_schedule``);
* **full**: every remaining step of the ``--steps`` schedule from t = ``--t-frac`` T;

each for several slider values rendered in one batch (``--batch``) and, on CUDA, in float32 and
under fp16 autocast (``DiffusionModel.render_dtype``). ``--full-sample`` adds a whole generation
from x_T for comparison. Times are the median of ``--repeats`` calls after one warm-up call.
The directions are random orthonormal stand-ins for a basis: the cost does not depend on them.

Usage:
  python bench/bench_edit.py --model builtin
  python bench/bench_edit.py --model sd15 --steps 25 --batch 1 4 --dtypes fp32 fp16   # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.edit import EditPoint, apply_edits, combine  # noqa: E402
from backend.images import to_pil  # noqa: E402
from backend.sampling import DEFAULT_GUIDANCE, initial_noise, render, sub_schedule  # noqa: E402
from bench.common import BenchModel, Point, add_common_arguments, bench_model, bench_point, environment, environment_lines, measure, start_run  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def slider_to_images(bm: BenchModel, point: Point, directions: torch.Tensor, sliders: torch.Tensor, timesteps, guidance: float):
    """Slider vectors (B, k) -> B PIL images, as the service renders an edit: combine the sliders
    into one direction (``combine``), move x_t (``apply_edits``, direct mode), denoise and decode
    (``sampling.render``)."""
    start = EditPoint(bm.model, point.x, point.t, bm.context)
    edited = apply_edits(start, [combine(directions, values) for values in sliders], "direct")
    return to_pil(render(bm.model, edited, timesteps, bm.cond, guidance))


def time_calls(device: torch.device, fn, repeats: int) -> dict:
    fn()  # warm-up: kernel selection, autocast caches
    times, cpu, peaks = [], [], []
    for _ in range(repeats):
        with measure(device) as m:
            fn()
        times.append(m.seconds)
        cpu.append(m.cpu_seconds)
        peaks.append(m.peak_mib)
    return {
        "median_s": statistics.median(times), "min_s": min(times), "times_s": times,
        "cpu_median_s": None if device.type == "cuda" else statistics.median(cpu),
        "peak_mib": max((p for p in peaks if p is not None), default=None),
    }


def markdown(result: dict) -> str:
    env, info = result["environment"], result["setup"]
    lines = [
        f"## bench_edit: {info['model']} ({env['date']})",
        "",
        *environment_lines(env),
        f"- model: {info['model']}, x_t {info['x_shape']} at t = {info['t']} (index {info['index']} of a {info['steps']}-step DDIM schedule), "
        f"images {info['image_size']}; guidance {info['guidance']}{' (CFG, batch doubled)' if info['cfg'] else ''}; direct mode, "
        f"{info['k']} sliders over random orthonormal directions; median of {info['repeats']} calls after a warm-up",
        "",
        "| path | DDIM steps | dtype | sliders per batch | time per call (s) | per image (s) | min (s) | CPU time per call (s) | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r.get("status", "ok") != "ok":
            lines.append(f"| {r['path']} | {r['steps']} | {r['dtype']} | {r['batch']} | {r['status']} | | | | |")
            continue
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        cpu = "-" if r["cpu_median_s"] is None else f"{r['cpu_median_s']:.3f}"
        lines.append(
            f"| {r['path']} | {r['steps']} | {r['dtype']} | {r['batch']} | {r['median_s']:.3f} | {r['median_s'] / r['batch']:.3f} | {r['min_s']:.3f} | {cpu} | {peak} |"
        )
    return "\n".join(lines) + "\n\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p, "edit")
    p.add_argument("--preview-steps", type=int, default=5)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES), help="render dtypes (default fp32 on CPU, fp32 fp16 on CUDA)")
    p.add_argument("--k", type=int, default=8, help="number of sliders")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-sample", action="store_true", help="also time a whole generation from x_T (batch 1)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    device, started = start_run(args)
    dtypes = args.dtypes or (["fp32", "fp16"] if device.type == "cuda" else ["fp32"])
    label = Path(args.model).name if Path(args.model).is_dir() else args.model
    name = args.name or f"edit-{label}-{device.type}"

    bm = bench_model(args.model, device, args.seed, args.prompt, args.sample_size)
    point = bench_point(bm, args.t_frac, args.steps, args.seed, args.guidance)
    model = bm.model
    gen = torch.Generator().manual_seed(args.seed)
    directions = torch.linalg.qr(torch.randn(point.x.numel(), args.k, generator=gen)).Q.T.reshape(args.k, *point.x.shape)
    full = point.timesteps[point.index :]
    preview = sub_schedule(point.timesteps, point.index, args.preview_steps)
    probe = slider_to_images(bm, point, directions, torch.zeros(1, args.k), preview, args.guidance)[0]
    result = {
        "environment": environment(device, argv, "bench_edit.py"),
        "setup": {
            "model": model.name, "x_shape": "x".join(map(str, point.x.shape)), "t": point.t, "index": point.index, "steps": args.steps,
            "image_size": f"{probe.width}x{probe.height}", "guidance": args.guidance, "cfg": bm.cond is not None and args.guidance != 1.0,
            "k": args.k, "repeats": args.repeats, "preview_timesteps": list(preview), "full_timesteps": list(full),
        },
        "rows": [],
    }
    print(f"[bench_edit] {model.name} on {result['environment']['machine']}: preview {preview}, full {len(full)} steps", flush=True)

    # In order of priority (a time budget cuts from the end): the edit paths per dtype, then full samples.
    jobs = [(path, ts, dtype, batch) for dtype in dtypes for path, ts in (("preview", preview), ("full", full)) for batch in args.batch]
    if args.full_sample:
        jobs += [("sample from x_T", point.timesteps, dtype, 1) for dtype in dtypes]
    for path, timesteps, dtype, batch in jobs:
        row = {"path": path, "steps": len(timesteps), "dtype": dtype, "batch": batch}
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            row["status"] = "skipped (time budget)"
        elif dtype != "fp32" and device.type != "cuda":
            row["status"] = "skipped (DiffusionModel autocasts on CUDA only)"
        else:
            model.render_dtype = DTYPES[dtype]
            if path == "sample from x_T":
                x_T = initial_noise(model, args.seed)[None]

                def call():
                    return to_pil(render(model, x_T, timesteps, bm.cond, args.guidance))
            else:
                # Slider values: each batch element moves a different slider by 0.5 (strength units of edit.py).
                sliders = torch.zeros(batch, args.k)
                sliders[torch.arange(batch), torch.arange(batch) % args.k] = 0.5

                def call():
                    return slider_to_images(bm, point, directions, sliders, timesteps, args.guidance)
            try:
                row.update(status="ok", **time_calls(device, call, args.repeats))
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
                torch.cuda.empty_cache()
        result["rows"].append(row)
        print(f"[bench_edit] {row}", flush=True)
    result["seconds_total"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    with open(args.out / f"{name}.md", "a") as f:
        f.write(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
