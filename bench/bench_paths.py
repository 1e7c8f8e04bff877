"""Geodesic paths in real time (issue 15, part 2): precompute time, slider-to-image time, and
whether geodesic edits are better than direct ones at the range ends.

Sections (``--sections``):

* **speed**: on a model (``--model``, the built-in pixel model unless named) at its own settings
  (for the pixel model seed 72, 0.3 T; k = 8): the basis, then
  the background precompute of the 2k paths exactly as the page starts it
  (``service.paths.start``), its progress polled and printed as the page shows it; then the time
  from a slider value to a full-quality image (``service.edit``, every remaining DDIM step) in
  geodesic mode read off the paths, next to a direct edit, and a two-slider geodesic edit (shot
  afresh along the combined direction). Median of ``--repeats`` after one warm-up.
* **quality**: for ``--seeds`` x the top ``--k`` directions x both range ends, the direct and the
  geodesic (cached-path) edit are rendered and scored against the unedited image by the face
  check's graded quantity (the factor estimator's re-render error) and by speckle (mean
  |Laplacian|); the table gives the mean ratios, the share of end images within 1.2x of the
  unedited one on both (the issue's validity bar) and the share that pass the absolute face check
  with speckle within 1.2x (the bar that means something on a model whose unedited images are
  clean faces, like the text model: BENCHMARKS "On the text model"), per mode and timestep.

Usage:
  python bench/bench_paths.py --sections speed
  python bench/bench_paths.py --sections quality --seeds 0 1 2 3 4 5 6 7 --timesteps 0.3 0.6
  python bench/bench_paths.py --model catpeople-text --timesteps 0.4 0.6   # with its own prompt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.images import pil_to_tensor  # noqa: E402
from backend.precompute import direction_ends  # noqa: E402
from backend.service import EigenfaceService, ServiceConfig  # noqa: E402
from backend.specs import BUILTIN_NAME, BasisSpec  # noqa: E402
from bench.common import environment, environment_lines, own_sample  # noqa: E402

#: The issue's validity bar: an end image scores within this factor of the unedited one.
WITHIN = 1.2


def precompute(service: EigenfaceService, spec: BasisSpec, session: str, poll: float = 0.25, log=print) -> dict:
    """Start the page's background precompute and poll it to the end, printing its progress."""
    start, cpu = time.perf_counter(), time.process_time()
    service.paths.start(session, spec)
    shown = None
    while (status := service.paths.status(session)).state == "running":
        if (status.done, status.total) != shown:
            shown = (status.done, status.total)
            log(f"  paths: step {status.done} of {status.total or '?'} ({status.seconds:.1f} s)")
        time.sleep(poll)
    if status.state != "ready":
        raise RuntimeError(f"precompute ended {status.state}: {status.message}")
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "engine_s": status.seconds}


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "cpu_median_s": statistics.median(cpus)}


def section_speed(service: EigenfaceService, args, lines: list[str]) -> dict:
    settings = service.settings(args.model)
    seed = settings.seed if args.seed is None else args.seed
    spec = BasisSpec(own_sample(service, args.model, seed, args.prompt), args.timestep, args.k)
    start = time.perf_counter()
    result = service.discover(spec)
    basis_s = time.perf_counter() - start
    print(f"basis: {basis_s:.2f} s")
    pre = precompute(service, spec, "bench-speed")
    print(f"precompute: {pre['wall_s']:.2f} s wall, {pre['cpu_s']:.1f} s CPU")
    ends = direction_ends(result)
    hi = ends[0][1]
    cases = {
        "geodesic, on a grid point (0.5 end)": ([hi / 2], "geodesic"),
        "geodesic, between grid points (0.6 end)": ([0.6 * hi], "geodesic"),
        "geodesic, at the range end": ([hi], "geodesic"),
        "direct, 0.6 end": ([0.6 * hi], "direct"),
        "geodesic, two sliders (shot afresh)": ([0.3 * hi, 0.3 * ends[1][1]], "geodesic"),
    }
    rows = {}
    for name, (values, mode) in cases.items():
        rows[name] = timed(lambda: service.edit(spec, values, mode), args.repeats)
        print(f"{name}: {rows[name]['median_s']:.3f} s")
    lines += [
        f"Model {args.model}, prompt {spec.sample.prompt!r}, seed {seed}, timestep {result.timestep} (index {result.index}), k = {args.k}, paths to ({ends[0][0]:g}, {ends[0][1]:g}) "
        f"in {service.paths.steps} grid steps per sign:",
        "",
        f"- basis: {basis_s:.2f} s",
        f"- precompute of {2 * args.k} paths (background thread, polled): {pre['wall_s']:.2f} s wall ({pre['cpu_s']:.1f} s process CPU)",
        "",
        "| slider to full-quality image | median s | min s | CPU s (median) |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_median_s']:.2f} |" for name, r in rows.items()],
        "",
    ]
    return {"basis_s": basis_s, "precompute": pre, "edits": rows, "seed": seed, "timestep": result.timestep, "k": args.k}


def speckle(images: torch.Tensor) -> torch.Tensor:
    """Mean |Laplacian| per image (B,): residual noise (as bench/catpeople_eval.py's statistic)."""
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(images.shape[1], 1, 3, 3)
    return torch.nn.functional.conv2d(images, laplacian, groups=images.shape[1]).abs().mean(dim=(1, 2, 3))


def section_quality(service: EigenfaceService, args, lines: list[str]) -> dict:
    from backend.catpeople.semantics import default_estimator

    estimator = default_estimator()
    out: dict = {}
    for timestep in args.timesteps:
        ratios: dict[str, list[tuple[float, float, bool]]] = {"direct": [], "geodesic": []}
        for seed in args.seeds:
            spec = BasisSpec(own_sample(service, args.model, seed, args.prompt), timestep, args.k)
            result = service.discover(spec)
            precompute(service, spec, f"bench-quality-{seed}-{timestep}", log=lambda _: None)
            edits = [(i, end) for i, pair in enumerate(direction_ends(result)) for end in pair]
            original = pil_to_tensor([service.generate(spec.sample)])
            base_error = float(estimator.reconstruction_error(original)[0])
            base_speckle = float(speckle(original)[0])
            for mode in ratios:
                images = pil_to_tensor(service.render_edits(spec, edits, mode))
                errors = estimator.reconstruction_error(images) / base_error
                specks = speckle(images) / base_speckle
                ratios[mode] += list(zip(errors.tolist(), specks.tolist(), estimator.is_face(images).tolist()))
            print(f"t={timestep} seed {seed}: " + ", ".join(f"{m} {np.mean([e for e, _, _ in r[-len(edits):]]):.2f}" for m, r in ratios.items()))
        out[str(timestep)] = {
            mode: {
                "error_ratio": float(np.mean([e for e, _, _ in r])),
                "speckle_ratio": float(np.mean([s for _, s, _ in r])),
                "within": float(np.mean([e <= WITHIN and s <= WITHIN for e, s, _ in r])),
                "face": float(np.mean([f and s <= WITHIN for _, s, f in r])),
                "n": len(r),
            }
            for mode, r in ratios.items()
        }
    lines += [
        f"Seeds {', '.join(map(str, args.seeds))}, top {args.k} directions, both range ends (`direction_ends`), "
        "each end image against its unedited image:",
        "",
        f"| timestep | mode | re-render error ratio (mean) | speckle ratio (mean) | within {WITHIN}x on both | a face, speckle within {WITHIN}x | edits |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {t} T | {mode} | {r['error_ratio']:.2f} | {r['speckle_ratio']:.2f} | {100 * r['within']:.0f} % | {100 * r['face']:.0f} % | {r['n']} |"
          for t, modes in out.items() for mode, r in modes.items()],
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", nargs="+", default=["speed", "quality"], choices=["speed", "quality"])
    p.add_argument("--model", default=BUILTIN_NAME, help="a model name the service knows, or any diffusers checkpoint's path")
    p.add_argument("--prompt", default=None, help="the prompt of a text model (default: its own, eigenface.json)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="speed: the image (default: the model's own, 72)")
    p.add_argument("--timestep", type=float, default=None, help="speed: fraction of T (default: the model's own, 0.3)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)), help="quality: images")
    p.add_argument("--timesteps", type=float, nargs="+", default=[0.3, 0.6], help="quality: fractions of T")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(torch.device("cpu"), argv, "bench_paths.py")
    service = EigenfaceService(ServiceConfig(allow_any_model=True))
    lines = ["## Geodesic paths (bench/bench_paths.py)", "", *environment_lines(env), f"- torch threads: {torch.get_num_threads()}", ""]
    results = {"environment": env}
    for section in args.sections:
        results[section] = {"speed": section_speed, "quality": section_quality}[section](service, args, lines)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
