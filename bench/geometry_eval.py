#!/usr/bin/env python3
"""Geometry checks on the built-in cat-people model (service default config).

Sections (``--sections``, all by default; they run in the order c, b, trade-off, a so that the
cheap ones finish first when a time budget cuts the run short; the report is in a, b, c order):

* ``validity``  - (a) edits at large strengths (+-0.8, +-1.2 strength units) along the top
  directions, modes direct / geodesic (2 and 4 substeps) / guidance: the fraction of edited
  images the factor estimator reads as a face with every factor in range, and seconds per edit;
* ``substeps``  - (a') quality/time trade-off of geodesic substeps {1, 2, 4, 8} at strength
  +-1.0 (the default in backend/edit.py DEFAULT_SUBSTEPS), and a recommendation;
* ``transport`` - (b) a direction of one seed carried to other seeds by parallel transport: does
  it move the same factor there? Against reusing the source's raw vector;
* ``compare``   - (c) mean inter-seed Grassmann distance of the local bases per timestep (the
  paper: bases of different seeds are closer at high noise) and ``docs/compare_heatmap.png``.

Writes markdown to ``--out`` (rewritten after every section, so a cut-short run keeps what it
finished); progress and timings go to stderr. ``--budget`` (seconds) makes the slow sections
stop adding seeds once it is spent, and the report says which seeds were used.

    python bench/geometry_eval.py --quick
    python bench/geometry_eval.py --out bench/results/geometry_eval.md --heatmap docs/compare_heatmap.png
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.catpeople import semantics  # noqa: E402
from backend.plots import heatmap  # noqa: E402
from backend.service import EigenfaceService, ServiceConfig  # noqa: E402
from backend.specs import BUILTIN_NAME, BasisSpec, SampleSpec  # noqa: E402
from bench.geometry_sizes import QUICK, Sizes  # noqa: E402
from bench.common import ROOT, Report, log, table, with_field  # noqa: E402
from bench.geometry_transport import section_transport  # noqa: E402
from bench.geometry_validity import section_substeps, section_validity  # noqa: E402


def override(sizes: Sizes, item: str) -> Sizes:
    """A copy of ``sizes`` with one field set from text: ``name=1,2,3`` / ``name=0.5`` / ``validity_modes=direct,geodesic-2``."""
    name, _, text = item.partition("=")
    name = name.strip()
    if name != "validity_modes":
        return with_field(sizes, name, text)
    modes = []
    for p in (p.strip() for p in text.split(",") if p.strip()):
        mode, _, sub = p.partition("-")
        modes.append((mode, int(sub) if sub else None))
    return replace(sizes, validity_modes=tuple(modes))


def section_compare(service, sizes: Sizes, report: Report, heatmap_path: Path | None) -> dict:
    start = time.perf_counter()
    specs, labels = [], []
    for t in sizes.compare_timesteps:
        for seed in sizes.compare_seeds:
            specs.append(BasisSpec(SampleSpec(seed=seed), timestep=t, k=sizes.k))
            labels.append(f"t{t:g} s{seed}")
    steps, basis_s = {}, []
    for spec in specs:  # discover one by one for progress and the integer timesteps
        t0 = time.perf_counter()
        res = service.discover(spec)
        steps[spec.timestep] = res.timestep
        basis_s.append(res.seconds)
        log(f"compare: basis t={spec.timestep} ({res.timestep}) seed {spec.sample.seed}: {time.perf_counter() - t0:.1f} s, "
            f"converged {res.basis.converged} in {res.basis.iterations} its")
    dist = service.compare(specs)
    seconds = time.perf_counter() - start
    n_seeds = len(sizes.compare_seeds)
    kmax = math.pi / 2 * math.sqrt(sizes.k)
    rows, means = [], []
    for a, t in enumerate(sizes.compare_timesteps):
        block = dist[a * n_seeds : (a + 1) * n_seeds, a * n_seeds : (a + 1) * n_seeds]
        off = block[~np.eye(n_seeds, dtype=bool)]
        means.append(float(off.mean()))
        rows.append([f"{t:g}", steps[t], f"{off.mean():.3f}", f"{off.min():.3f}", f"{off.max():.3f}", f"{off.mean() / kmax:.2f}"])
    # same seed, neighbouring timesteps: how fast one sample's basis turns along its trajectory
    along = []
    for a in range(len(sizes.compare_timesteps) - 1):
        along.append(float(np.mean([dist[a * n_seeds + s, (a + 1) * n_seeds + s] for s in range(n_seeds)])))
    decreasing = all(means[j] < means[j + 1] for j in range(len(means) - 1))  # timesteps listed high -> low noise
    highest_lt_lowest = means[0] < means[-1]
    if decreasing:
        verdict = "**Reproduced**: the mean inter-seed distance grows monotonically from high to low noise."
    elif highest_lt_lowest:
        verdict = "**Partly reproduced**: the highest-noise bases are closer than the lowest-noise ones, but not monotonically."
    else:
        verdict = "**Refuted** on this model: bases of different seeds are not closer at high noise."
    if heatmap_path is not None:
        heatmap_path.parent.mkdir(parents=True, exist_ok=True)
        heatmap(dist, labels, title=f"Grassmann distance, k={sizes.k} (max {kmax:.2f})").save(heatmap_path)
    lines = ["## (c) Inter-seed distance of local bases vs timestep", ""]
    lines.append(
        f"Seeds {list(sizes.compare_seeds)} x timesteps {list(sizes.compare_timesteps)} (fraction of T; integer training timestep in the "
        f"table), k={sizes.k}, x-space bases (v), `service.compare`. Maximum possible distance (pi/2)*sqrt(k) = {kmax:.3f}."
    )
    lines.append("")
    lines += table(["timestep", "t (int)", "mean inter-seed distance", "min", "max", "mean / max possible"], rows)
    lines.append("Same seed, neighbouring timesteps (mean over seeds): " + ", ".join(
        f"{sizes.compare_timesteps[a]:g}->{sizes.compare_timesteps[a + 1]:g}: {d:.3f}" for a, d in enumerate(along)))
    lines.append("")
    lines.append(verdict)
    lines.append("")
    if heatmap_path is not None:
        lines.append(f"Heatmap: `{heatmap_path.name}` (rows/columns ordered timestep, then seed).")
    lines.append(f"Cold basis computation (k={sizes.k}): mean {np.mean(basis_s):.2f} s over {len(basis_s)} bases. Section time {seconds:.0f} s.")
    lines.append("")
    report.sections["compare"] = lines
    return {"seconds": seconds, "means": means, "verdict": verdict}


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--sections", default="compare,transport,substeps,validity", help="comma-separated subset, run in this order")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "geometry_eval.md")
    parser.add_argument("--heatmap", type=Path, default=ROOT / "docs" / "compare_heatmap.png")
    parser.add_argument("--device", default=None, help="service device (default: the service's own choice)")
    parser.add_argument("--model-path", default=None, help="evaluate this checkpoint instead of the built-in one (smoke tests)")
    parser.add_argument("--budget", type=float, default=None, help="seconds; slow sections stop adding seeds once spent")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUES",
                        help="override a size, e.g. --set compare_seeds=0,1 --set validity_modes=direct,geodesic-2 (see Sizes)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    overrides = []
    for item in args.set:
        try:
            sizes = override(sizes, item)
        except (ValueError, TypeError) as exc:
            parser.error(f"--set {item}: {exc}")
        overrides.append(item)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"compare", "transport", "substeps", "validity"}
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")

    wall = time.perf_counter()
    deadline = time.monotonic() + args.budget if args.budget else math.inf
    config = ServiceConfig(device=args.device)
    if args.model_path:
        config.models = {BUILTIN_NAME: args.model_path}
    service = EigenfaceService(config)
    t0 = time.perf_counter()
    model = service.model(BUILTIN_NAME)
    load_s = time.perf_counter() - t0
    estimator = semantics.default_estimator()
    device = str(model.device)
    if model.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(model.device)})"
    jvp_mode = service.config.jvp_mode
    log(f"model loaded in {load_s:.1f} s on {device}, jvp {jvp_mode}")

    report = Report(order=["head", "validity", "substeps", "transport", "compare", "timings"])
    report.sections["head"] = [
        "# Geometry evaluation (built-in cat-people model)",
        "",
        f"`python bench/geometry_eval.py{' --quick' if args.quick else ''}{' --sections ' + args.sections if args.sections != parser.get_default('sections') else ''}"
        f"{f' --budget {args.budget:g}' if args.budget else ''}{''.join(' --set ' + o for o in overrides)}` on {device}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()} with {torch.get_num_threads()} torch threads; service default config "
        f"(20 DDIM steps, timestep {sizes.timestep:g}, k={sizes.k}, jvp mode {jvp_mode}). {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)

    def flush():
        out.write_text(report.text())

    report.timings.append(("model load", load_s))
    results = {}
    for name in sections:
        log(f"section {name} ...")
        if name == "compare":
            results[name] = section_compare(service, sizes, report, args.heatmap)
        elif name == "transport":
            results[name] = section_transport(service, estimator, sizes, report, deadline)
        elif name == "substeps":
            results[name] = section_substeps(service, estimator, sizes, report, deadline)
        elif name == "validity":
            results[name] = section_validity(service, estimator, sizes, report, deadline, flush)
        report.timings.append((name, results[name]["seconds"]))
        log(f"section {name}: {results[name]['seconds']:.1f} s")
        report.timings_section(wall=time.perf_counter() - wall)
        flush()
    log(f"wrote {out} (total {time.perf_counter() - wall:.0f} s)")
    print(report.text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
