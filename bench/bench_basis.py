"""Local-basis benchmark (issue 6): the official algorithm against Eigenface's ``local_basis``.

Everything runs in one process on one device, on the same model and the same x_t:

* **reference**: ``local_basis`` run long (tol 1e-7, exact JVPs by default) for k_ref > k
  directions, so that the top k are well resolved;
* **baseline**: the official algorithm (Park et al. 2023, ``local_encoder_pullback_zt``)
  re-implemented faithfully: J V by ``torch.func.jacfwd`` over a scalar step in chunks of 5
  directions (math attention), J^T U by ``torch.autograd.functional.jacobian``, i.e. one reverse
  pass per direction, an SVD to re-orthonormalise, fp32, at least 11 iterations, stop when V
  moves less than 1e-4 elementwise;
* **eigenface**: ``backend.basis.local_basis`` in the variants given by ``--ours``
  (``fd`` = central differences with the fast attention kernels, ``exact`` = forward AD with
  the math kernel; chunk sizes, tolerances, fixed round counts).

Each row reports wall time, peak memory (``torch.cuda.max_memory_allocated`` on CUDA; peak RSS
on the CPU, from ``VmHWM`` after resetting it through ``/proc/self/clear_refs``) and accuracy
against the reference: the largest relative error of the top-k singular values and the angles
between each v_i and the reference's v_i. Angles are only meaningful, and only counted, for
directions whose reference singular value is separated from both neighbours by more than
``--gap`` (relative); the angle of the whole top-k subspace is reported too, marked when the
k-th gap itself is not separated.

Results are appended as a markdown section to ``<out>/<name>.md`` and written as JSON to
``<out>/<name>.json``.

Models: ``builtin`` (assets/catpeople), ``sd15`` (an SD 1.5-architecture U-Net and VAE with
random weights and a random 77x768 text context; for the GPU), ``sd-tiny`` (the same
architecture scaled down, to smoke-test the GPU settings on a CPU), or a diffusers directory.

Usage:
  python bench/bench_basis.py --model builtin --k 8
  python bench/bench_basis.py --model sd-tiny --k 10
  python bench/bench_basis.py --model sd15 --k 10 50 --device cuda     # bench/gpu_bench.sh
  python bench/bench_basis.py --model builtin --k 8 --sweep 8 --ours exact fd   # rounds needed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.basis import MAX_K  # noqa: E402
from backend.hspace import bottleneck_fn  # noqa: E402
from bench.basis_methods import Estimate, Variant, accuracy, eigenface_basis, fd_check, official_basis, product_timings, reference_basis  # noqa: E402
from bench.common import add_common_arguments, bench_model, bench_point, environment, environment_lines, fmt, measure, start_run  # noqa: E402


# ------------------------------------------------------------------------------ report
TABLE_HEADER = (
    "| k | method | rounds | conv | time (s) | CPU time (s) | s/round | peak MiB | +MiB | sigma rel err (max) | separated dirs | "
    "max angle, sep. (rad) | median angle, sep. (rad) | top-k subspace angle (rad) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(row: dict) -> str:
    acc = row.get("accuracy") or {}
    status = row.get("status", "ok")
    if status != "ok":
        return f"| {row['k']} | {row['method']} | {status} | | | | | | | | | | | |"
    sub = acc.get("subspace_angle")
    sub_text = fmt(sub) + ("" if acc.get("subspace_separated") else " (k-th gap < threshold)") if sub is not None else "-"
    return (
        f"| {row['k']} | {row['method']} | {row['rounds']} | {'yes' if row['converged'] else 'no'} | {fmt(row['seconds'], '.2f')} | {fmt(row['cpu_seconds'], '.1f')} | "
        f"{fmt(row['seconds'] / max(row['rounds'], 1), '.2f')} | {fmt(row['peak_mib'], '.0f')} | {fmt(row['work_mib'], '.0f')} | "
        f"{fmt(acc.get('sigma_rel_err_max'), '.1e')} | {acc.get('n_separated', '-')}/{row['k']} | {fmt(acc.get('angle_max_separated'), '.2e')} | "
        f"{fmt(acc.get('angle_median_separated'), '.2e')} | {sub_text} |"
    )


def markdown(result: dict) -> str:
    env, info = result["environment"], result["setup"]
    ref = result["reference"]
    lines = [
        f"## bench_basis: {info['model']}, k = {', '.join(map(str, info['ks']))} ({env['date']})",
        "",
        *environment_lines(env),
        f"- model: {info['model']} ({info['params_m']:.1f} M U-Net parameters), x_t {info['x_shape']} at t = {info['t']} "
        f"(index {info['index']} of a {info['steps']}-step DDIM schedule; {info['x_source']}), h {info['h_shape']}",
        f"- reference: {ref['variant']}, k_ref = {ref['k']}, {ref['rounds']} rounds, converged: {ref['converged']}, "
        f"{fmt(ref['seconds'], '.1f')} s{' (from cache)' if ref.get('cached') else ''}; last-round subspace change {fmt(ref.get('last_round_angle'), '.1e')} rad",
        f"- accuracy: sigma error is relative to the reference; angles are between v_i and the reference's v_i and are counted only "
        f"for separated directions (relative sigma gap to both neighbours > {info['gap']:g}); the top-k subspace angle is the largest "
        "principal angle to the reference's top-k span.",
        f"- baseline: the official algorithm (jacfwd in chunks of {info['baseline_chunk']}, one reverse pass per direction, SVD, fp32, "
        f"elementwise tol {info['baseline_tol']:g}, at least {info['baseline_min_iters']} iterations; cap per k: {info['baseline_caps']}).",
    ]
    if result.get("fd_check"):
        checks = ", ".join(f"eps {c['eps']:g}: {c['random_rel_err_max']:.1e} / {c['top_rel_err_max']:.1e}" for c in result["fd_check"])
        lines.append(f"- finite-difference JVP vs exact, max relative error over {info['fd_check_count']} random unit tangents / "
                     f"the reference's top {info['fd_check_count']} directions: {checks}")
    lines += ["", TABLE_HEADER, *(table_row(r) for r in result["rows"])]
    if result.get("products"):
        lines += [
            "",
            f"Jacobian products for one block of {result['products'][0]['block']} directions (after a warm-up; error relative to the batched exact product):",
            "",
            "| product | how | time (s) | CPU time (s) | peak MiB | rel err (max) |",
            "|---|---|---|---|---|---|",
        ]
        for p in result["products"]:
            if "error" in p:
                lines.append(f"| {p['product']} | {p['how']} | failed: {p['error']} | | | |")
            else:
                lines.append(f"| {p['product']} | {p['how']} | {p['seconds']:.3f} | {fmt(p['cpu_seconds'], '.2f')} | {fmt(p['peak_mib'], '.0f')} | {p['rel_err_max']:.1e} |")
    if result.get("sweep"):
        lines += [
            "",
            "Rounds sweep (fixed number of rounds, tol = 0; time is for that many rounds):",
            "",
            "| k | variant | rounds | time (s) | CPU time (s) | sigma rel err (max) | max angle, sep. (rad) | median angle, sep. (rad) | top-k subspace angle (rad) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in result["sweep"]:
            a = s["accuracy"]
            lines.append(
                f"| {s['k']} | {s['method']} | {s['rounds']} | {s['seconds']:.2f} | {fmt(s['cpu_seconds'], '.1f')} | {a['sigma_rel_err_max']:.1e} | "
                f"{fmt(a['angle_max_separated'], '.2e')} | {fmt(a['angle_median_separated'], '.2e')} | {a['subspace_angle']:.2e} |"
            )
    return "\n".join(lines) + "\n\n"


def write_results(result: dict, out: Path, name: str, md_prefix: str) -> None:
    """Rewrite ``<name>.json`` and this run's section of ``<name>.md`` (earlier runs' sections are kept),
    after every row, so that a run cut off by a timeout still leaves its finished rows."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    if "reference" in result:
        (out / f"{name}.md").write_text(md_prefix + markdown(result))


# ------------------------------------------------------------------------------ main
def parse_caps(text: str) -> Callable[[int], int]:
    """``20`` (every k) or ``10:20,50:11`` (per k; the largest listed k <= k applies, else the first)."""
    if ":" not in text:
        value = int(text)
        return lambda k: value
    pairs = sorted((int(a), int(b)) for a, b in (item.split(":") for item in text.split(",")))
    return lambda k: next((cap for kk, cap in reversed(pairs) if kk <= k), pairs[0][1])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "basis")
    p.add_argument("--k", type=int, nargs="+", default=[8])
    p.add_argument("--ours", nargs="+", default=["fd", "exact"], help="local_basis variants: mode[:chunk=N][:eps=E][:block=B][:tol=T][:iters=I][:krylov=K][:vjp=bf16][:vmap=0|1]")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--baseline-chunk", type=int, default=5)
    p.add_argument("--baseline-tol", type=float, default=1e-4)
    p.add_argument("--baseline-min-iters", type=int, default=11)
    p.add_argument("--baseline-max-iters", default="20", help="'N' or per k 'k:N,...' (e.g. 10:20,50:11)")
    p.add_argument("--reference", nargs="+", default=["exact:tol=1e-7:iters=60"], help="reference variants, tried in order (the next on OOM)")
    p.add_argument("--ref-k", type=int, default=None, help="default min(64, max(k) + 20)")
    p.add_argument("--ref-cache", type=Path, default=None, help="save/reuse the reference here (keyed by model, x_t and settings)")
    p.add_argument("--gap", type=float, default=0.01, help="relative sigma gap that makes a direction 'separated'")
    p.add_argument("--sweep", type=int, default=0, help="also run each --ours variant for 1..N fixed rounds (cost grows as N^2)")
    p.add_argument("--fd-check", default="", help="comma-separated fd_eps values to check against the exact JVP, e.g. 1e-3,1e-2,1e-1,1")
    p.add_argument("--fd-check-count", type=int, default=4)
    p.add_argument("--products", type=int, default=0, help="also time J V / J^T U implementations for a block of this many directions")
    p.add_argument("--tf32", action="store_true", help="leave TF32 on (CUDA); off by default since it ruins finite differences")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    device, started = start_run(args)
    if device.type == "cuda" and not args.tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if any(not 1 <= k <= MAX_K for k in args.k):
        raise SystemExit(f"--k values must be within [1, {MAX_K}], got {args.k}")
    variants = [Variant.parse(v) for v in args.ours]
    ref_specs = [Variant.parse(v) for v in args.reference]
    k_ref = args.ref_k or min(MAX_K, max(args.k) + 20)
    caps = parse_caps(args.baseline_max_iters)
    label = Path(args.model).name if Path(args.model).is_dir() else args.model
    name = args.name or f"basis-{label}-{device.type}"
    md_file = args.out / f"{name}.md"
    md_prefix = md_file.read_text() if md_file.is_file() else ""  # this run's section goes after earlier runs'

    bm = bench_model(args.model, device, args.seed, args.prompt, args.sample_size)
    point = bench_point(bm, args.t_frac, args.steps, args.seed)
    h_fn = bottleneck_fn(bm.model, point.t, bm.context)
    x = point.x
    with torch.no_grad():
        h_shape = tuple(h_fn(x[None]).shape[1:])
    result = {
        "environment": environment(device, argv, "bench_basis.py"),
        "setup": {
            "model": bm.model.name, "params_m": sum(p.numel() for p in bm.model.unet.parameters()) / 1e6, "x_shape": "x".join(map(str, x.shape)),
            "h_shape": "x".join(map(str, h_shape)), "t": point.t, "index": point.index, "steps": args.steps, "x_source": point.source,
            "ks": args.k, "gap": args.gap, "baseline_chunk": args.baseline_chunk, "baseline_tol": args.baseline_tol,
            "baseline_min_iters": args.baseline_min_iters, "baseline_caps": {k: max(caps(k), args.baseline_min_iters) for k in args.k},
            "fd_check_count": args.fd_check_count,
        },
        "rows": [],
    }
    print(f"[bench_basis] {bm.model.name}: x {tuple(x.shape)} -> h {h_shape} at t={point.t}; {result['environment']['machine']}", flush=True)

    # Warm-up (kernel selection, lazy init) so that the first method timed does not pay for it.
    eigenface_basis(h_fn, x, 1, Variant("fd", tol=0, iters=2, block=2), args.seed)
    eigenface_basis(h_fn, x, 1, Variant("exact", tol=0, iters=1, block=2), args.seed)

    key_src = f"{bm.model.name}|{args.seed}|{point.t}|{k_ref}|{[s.label() for s in ref_specs]}|{float(x.double().sum()):.10e}|{torch.__version__}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    ref, ref_info = reference_basis(h_fn, x, k_ref, ref_specs, args.seed + 1000, device, args.ref_cache, key)
    result["reference"] = ref_info
    print(f"[bench_basis] reference: {ref_info}", flush=True)
    if args.fd_check:
        result["fd_check"] = fd_check(h_fn, x, [float(e) for e in args.fd_check.split(",")], args.fd_check_count, args.seed, ref.v)
        print(f"[bench_basis] fd check: {result['fd_check']}", flush=True)
    write_results(result, args.out, name, md_prefix)

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - started > args.budget_s

    def record(k: int, method: str, run: Callable[[list], Estimate]) -> None:
        row = {"k": k, "method": method}
        trace: list[dict] = []  # per round (local_basis only): largest angle to the previous round's span, top-k sigma
        if over_budget():
            row["status"] = "skipped (time budget)"
        else:
            try:
                with measure(device) as m:
                    est = run(trace)
                row.update(status="ok", rounds=est.rounds, converged=est.converged, seconds=m.seconds, cpu_seconds=m.cpu_seconds, peak_mib=m.peak_mib, work_mib=m.work_mib,
                           sigma=est.sigma.tolist(), accuracy=accuracy(est, ref, args.gap), trace=trace)
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        result["rows"].append(row)
        print(f"[bench_basis] {table_row(row)}", flush=True)
        write_results(result, args.out, name, md_prefix)

    for k in args.k:
        if not args.no_baseline:
            cap = max(caps(k), args.baseline_min_iters)
            record(k, f"official baseline (cap {cap} it)", lambda _: official_basis(
                h_fn, x, k, chunk=args.baseline_chunk, tol=args.baseline_tol, min_iters=args.baseline_min_iters, max_iters=cap,
                generator=torch.Generator().manual_seed(args.seed)))
        for variant in variants:
            record(k, f"eigenface {variant.label()}", lambda trace: eigenface_basis(
                h_fn, x, k, variant, args.seed, callback=lambda p: trace.append({"round": p.iteration, "angle": p.angle, "sigma": p.sigma.tolist()})))

    if args.products and not over_budget():
        result["products"] = product_timings(h_fn, x, args.products, device, args.seed)
        write_results(result, args.out, name, md_prefix)
    if args.sweep:
        result["sweep"] = []
        for k in args.k:
            for variant in variants:
                for rounds in range(1, args.sweep + 1):
                    if over_budget():
                        break
                    with measure(device) as m:
                        est = eigenface_basis(h_fn, x, k, replace(variant, tol=0.0), args.seed, max_iters=rounds)
                    entry = {"k": k, "method": variant.label().rsplit(" tol=", 1)[0], "rounds": rounds, "seconds": m.seconds, "cpu_seconds": m.cpu_seconds, "accuracy": accuracy(est, ref, args.gap)}
                    result["sweep"].append(entry)
                    print(f"[bench_basis] sweep {entry['method']} r={rounds}: {m.seconds:.2f} s, max sep angle {fmt(entry['accuracy']['angle_max_separated'])}", flush=True)
    result["seconds_total"] = time.perf_counter() - started
    write_results(result, args.out, name, md_prefix)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
