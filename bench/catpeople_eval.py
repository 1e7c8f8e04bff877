#!/usr/bin/env python3
"""Ground-truth evaluation of the built-in cat-people model, its estimator and its directions.

Sections (``--sections``, all by default):

* ``accuracy``  - estimator R^2 per factor on fresh clean renders (hue: circular error);
* ``samples``   - samples of the built-in model (seeds 0..N-1, batched DDIM at the service's
  default steps): face rate, factor means / stds against the uniform training distribution,
  and a grid of the first 64 in ``docs/samples.png``;
* ``semantic``  - for a few seeds at the default edit timestep: top-k Jacobian directions vs
  random directions of the same strength (total estimated factor change), the label of each
  direction, the issue-8 check, and ``docs/atlas.png`` (service.grid, rows labelled);
* ``sweep``     - the semantic ratio over edit timesteps x strengths on two seeds (defaults);
* ``denoising`` - the model's one-step denoising of noised training renders, per timestep:
  epsilon MSE and the colour bias of its x0 estimate (where training falls short).

Writes a markdown report to stdout and, with ``--out``, to a file; progress and timings go to
stderr. ``--quick`` runs small sizes (a smoke test, a couple of minutes on a laptop CPU).

    python bench/catpeople_eval.py --out bench/results/catpeople_eval.md
    python bench/catpeople_eval.py --quick --docs /tmp/docs
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.catpeople.estimator import FactorEstimator  # noqa: E402
from backend.catpeople.semantics import DEFAULT_ESTIMATOR, label_magnitudes  # noqa: E402
from bench.catpeople_samples import section_accuracy, section_denoising, section_samples  # noqa: E402
from bench.catpeople_semantic import section_atlas, section_semantic, section_sweep  # noqa: E402
from bench.catpeople_sizes import QUICK, Sizes  # noqa: E402
from bench.common import ROOT, Report, log, own_sample, provenance, with_field  # noqa: E402


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="folder for samples.png and atlas.png (default: docs/)")
    parser.add_argument("--sections", default="accuracy,samples,denoising,semantic,atlas,sweep", help="comma-separated subset to run")
    parser.add_argument("--estimator", default=str(DEFAULT_ESTIMATOR), help="factor estimator directory")
    parser.add_argument("--samples", type=int, help="number of samples for (c) (default 256, quick 32)")
    parser.add_argument("--seeds", help="comma-separated seeds for the semantic check (default 0..7, quick 0,1)")
    parser.add_argument("--k", type=int, help="directions per basis (default 8, quick 4)")
    parser.add_argument("--n-random", type=int, help="random directions per seed (default 8, quick 4)")
    parser.add_argument("--timestep", type=float, help="edit timestep of the semantic check and the atlas (default: the model's eigenface.json)")
    parser.add_argument("--strength", type=float, help="edit strength of the semantic check (default: the model's eigenface.json)")
    parser.add_argument("--heldout", type=float, help="held-out strength that verifies labels (default 0.3)")
    parser.add_argument("--sweep-timesteps", help="comma-separated edit timesteps of the sweep (default 0.3,0.4,0.5,0.6,0.8)")
    parser.add_argument("--sweep-strengths", help="comma-separated strengths of the sweep (default 0.1,0.2,0.3,0.5)")
    parser.add_argument("--sweep-seeds", help="comma-separated seeds of the sweep (default 0,1)")
    parser.add_argument("--json", help="write the raw numbers (estimated factors of every edit) to this JSON file")
    parser.add_argument("--atlas-seed", type=int, help="seed of the atlas (default: the model's eigenface.json seed, the page's first image)")
    parser.add_argument("--atlas-strength", type=float, help="largest |strength| in the atlas (default: the semantic check's)")
    parser.add_argument("--model-path", help="evaluate this checkpoint instead of the built-in pixel model (freshly trained weights, or assets/catpeople-text with its own prompt)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("EIGENFACE_THREADS", "2")), help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sizes = Sizes(**QUICK.__dict__) if args.quick else Sizes()
    if args.samples:
        sizes.samples = args.samples
    for name, attr in (("k", "k"), ("n_random", "n_random"), ("timestep", "timestep"), ("strength", "strength"), ("heldout", "heldout_strength")):
        if getattr(args, name) is not None:
            setattr(sizes, attr, getattr(args, name))
    for name, attr in (("seeds", "semantic_seeds"), ("sweep_timesteps", "sweep_timesteps"), ("sweep_strengths", "sweep_strengths"), ("sweep_seeds", "sweep_seeds")):
        if getattr(args, name):
            sizes = with_field(sizes, attr, getattr(args, name))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"accuracy", "samples", "denoising", "semantic", "atlas", "sweep"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    docs = Path(args.docs)

    report = Report(order=["head", "accuracy", "samples", "denoising", "semantic", "atlas", "sweep", "timings"], json_path=Path(args.json) if args.json else None)
    report.section("head")
    wall = time.perf_counter()
    estimator = FactorEstimator.load(args.estimator)
    report.add("# Cat-people evaluation" + (" (quick)" if args.quick else ""), "",
               f"`python bench/catpeople_eval.py {' '.join(sys.argv[1:] if argv is None else argv)}` - torch {torch.__version__}, "
               f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d %H:%M')}, {provenance()}; "
               f"estimator face threshold {estimator.face_threshold:.5f}.", "")

    if "accuracy" in sections:
        section_accuracy(report, estimator, sizes)

    service = None
    if set(sections) & {"samples", "denoising", "semantic", "atlas", "sweep"}:
        from backend.service import EigenfaceService, ServiceConfig
        from backend.specs import BUILTIN_NAME

        start = time.perf_counter()
        service = EigenfaceService(ServiceConfig(models={BUILTIN_NAME: args.model_path}) if args.model_path else ServiceConfig())
        settings = service.model(BUILTIN_NAME).settings
        report.timings.append(("load model", time.perf_counter() - start))
        sizes.timestep = settings.timestep if sizes.timestep is None else sizes.timestep
        sizes.strength = settings.strength if sizes.strength is None else sizes.strength
        sizes.prompt = own_sample(service, BUILTIN_NAME).prompt
        if sizes.heldout_strength in label_magnitudes(sizes.strength):
            parser.error(f"--heldout must differ from the strengths labels are measured at, {label_magnitudes(sizes.strength)}")
    semantic = None
    if "semantic" in sections:
        semantic = section_semantic(report, service, estimator, sizes, docs)
    if "atlas" in sections:
        section_atlas(report, service, estimator, sizes, docs, semantic, args.atlas_seed, args.atlas_strength or sizes.strength)
    if "samples" in sections:
        section_samples(report, service, estimator, sizes, docs)
    if "denoising" in sections:
        section_denoising(report, service, sizes)
    if "sweep" in sections:
        section_sweep(report, service, estimator, sizes, semantic)

    report.timings.append(("total", time.perf_counter() - wall))
    report.timings_section()
    report.flush_raw()
    text = report.text()
    sys.stdout.write(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
