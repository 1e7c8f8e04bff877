"""Time the service's own basis path (what "Find directions" costs once the image is sampled),
and with ``--name-sliders`` what "Name the sliders" then costs (the built-in model's labeller).

    python bench/bench_service.py --threads 2 --k 8 [--name-sliders]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backend.catpeople.semantics import name_by_factor  # noqa: E402
from backend.service import EigenfaceService, ServiceConfig  # noqa: E402
from backend.specs import BasisSpec, SampleSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timestep", default=None, help="edit timestep (default: the model's own, eigenface.json)")
    parser.add_argument("--name-sliders", action="store_true", help="also time naming the directions (fd service only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for mode in ("fd", "exact"):
        service = EigenfaceService(ServiceConfig(jvp_mode=mode))
        spec = BasisSpec(SampleSpec(seed=args.seed), args.timestep, args.k)
        start = time.perf_counter()
        service.trajectory(spec.sample)
        sampled = time.perf_counter()
        result = service.discover(spec)
        done = time.perf_counter()
        print(f"{mode:5s} k={args.k} t={result.timestep}: sampling {sampled - start:.2f} s, basis {done - sampled:.2f} s, {result.basis.iterations} rounds")
        if args.name_sliders and mode == "fd":
            names = name_by_factor(service, spec)
            print(f"      naming {time.perf_counter() - done:.2f} s: {names}")


if __name__ == "__main__":
    main()
