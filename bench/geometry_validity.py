"""Geometry evaluation, sections (a) and (a'): are large edits still faces, and how many
geodesic substeps are enough (bench/geometry_eval.py runs them)."""

from __future__ import annotations

import time

import numpy as np
import torch

from backend.catpeople.estimator import FactorEstimator, factor_distance
from backend.catpeople.render import FACTORS
from backend.errors import InputError
from backend.images import pil_to_tensor
from backend.specs import BasisSpec, SampleSpec
from bench.geometry_sizes import Sizes
from bench.common import Report, log, pct, table


#: Raw regressor outputs of the linear factors may overshoot [0, 1] by this much and still count
#: as "in range" (estimate() clamps them, so the range check must look at the raw outputs).
RANGE_TOL = 0.05
#: Hue is read from (cos, sin); a resultant shorter than this means "no readable hue".
MIN_HUE_RADIUS = 0.5


# ----------------------------------------------------------------------------------- images
@torch.no_grad()
def validity(estimator: FactorEstimator, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: is_face, factors in range (raw regressor outputs), both; the factors; and the
    re-render error behind is_face, a graded "how far off the face manifold" that still ranks
    edits when the pass/fail check rejects even the unedited sample."""
    x = images.float()
    r = estimator.regressor.resolution
    if x.shape[-1] != r:
        x = torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    raw = estimator.regressor.eval()(x)
    linear = raw[:, : len(FACTORS) - 1]
    hue_radius = torch.hypot(raw[:, -2], raw[:, -1])
    in_range = ((linear >= -RANGE_TOL) & (linear <= 1 + RANGE_TOL)).all(dim=1) & (hue_radius >= MIN_HUE_RADIUS)
    face = estimator.is_face(x)
    return {"face": face, "range": in_range, "valid": face & in_range, "factors": estimator.estimate(x), "error": estimator.reconstruction_error(x)}


# ------------------------------------------------------------------------------------ (a)
def section_validity(service, estimator, sizes: Sizes, report: Report, deadline: float, flush=None) -> dict:
    start = time.perf_counter()
    modes = sizes.validity_modes
    names = [m if s is None else f"{m}-{s}" for m, s in modes]
    # records[name] = list of (|strength|, face, range, valid, seconds, error / unedited error, factor change);
    # failures[name] = messages
    records: dict[str, list[tuple]] = {n: [] for n in names}
    failures: dict[str, list[str]] = {n: [] for n in names}
    base_valid, used, basis_s = [], [], []
    for seed in sizes.validity_seeds:
        if used and time.monotonic() > deadline:
            log(f"validity: budget spent, stopping after seeds {used}")
            break
        spec = BasisSpec(SampleSpec(seed=seed), timestep=sizes.timestep, k=sizes.k)
        res = service.discover(spec)
        basis_s.append(res.seconds)
        base = validity(estimator, pil_to_tensor([service.generate(spec.sample)]))
        base_valid.append(bool(base["valid"][0]))
        base_error = float(base["error"][0])
        for (mode, sub), name in zip(modes, names):
            images, meta = [], []
            for i in range(sizes.validity_dirs):
                for s in sizes.validity_strengths:
                    t0 = time.perf_counter()
                    try:
                        img = service.edit(spec, {i: s}, mode, substeps=sub)
                    except InputError as exc:
                        failures[name].append(f"seed {seed} dir {i} s={s:+g}: {exc}")
                        records[name].append((abs(s), False, False, False, time.perf_counter() - t0, float("nan"), float("nan")))
                        continue
                    images.append(img)
                    meta.append((abs(s), time.perf_counter() - t0))
            if images:
                v = validity(estimator, pil_to_tensor(images))
                change = factor_distance(v["factors"], base["factors"].expand_as(v["factors"]).clone()).sum(dim=1)
                for j, (a, sec) in enumerate(meta):
                    records[name].append((a, bool(v["face"][j]), bool(v["range"][j]), bool(v["valid"][j]), sec, float(v["error"][j]) / base_error,
                                          float(change[j])))
            secs = [m[1] for m in meta]
            log(f"validity seed {seed} {name}: {len(images)} edits, {np.mean(secs) if secs else float('nan'):.2f} s/edit, "
                f"valid {sum(r[3] for r in records[name][-len(meta):]) if meta else 0}/{len(meta)}, failures {len(failures[name])}")
        used.append(seed)
        summary = _validity_lines(sizes, names, records, failures, base_valid, used, basis_s, time.perf_counter() - start, report)
        if flush is not None:
            flush()
    seconds = time.perf_counter() - start
    summary = _validity_lines(sizes, names, records, failures, base_valid, used, basis_s, seconds, report)
    return {"seconds": seconds, "summary": summary, "seeds": used}


def _validity_lines(sizes, names, records, failures, base_valid, used, basis_s, seconds, report) -> dict:
    mags = sorted({abs(s) for s in sizes.validity_strengths})
    lines = ["## (a) Validity of large edits", ""]
    lines.append(
        f"Seeds {used} (asked: {list(sizes.validity_seeds)}), top-{sizes.validity_dirs} directions, strengths "
        f"{', '.join(f'{s:+g}' for s in sizes.validity_strengths)} (RMS per element of x_t), timestep {sizes.timestep:g}, k={sizes.k}. "
        "An edit is *valid* when `estimator.is_face` holds and every raw factor output is in range "
        f"(linear factors within [-{RANGE_TOL}, 1+{RANGE_TOL}] before `estimate()`'s clamp, hue resultant >= {MIN_HUE_RADIUS}). "
        "A failure (InputError) counts as invalid. Seconds per edit = wall time of one `service.edit` call "
        "(edit + denoise + decode; the basis at x_t is cached beforehand). *Error ratio*: the estimator's re-render "
        "error of the edit over that of the unedited sample (median; 1 = as face-like as the sample, lower is better). "
        "*Factor change*: sum over factors of the absolute change of the estimated factors from the unedited sample "
        "(mean; how far the edit moved the face in ground-truth terms, which also pushes factors out of range)."
    )
    lines.append("")
    lines.append(f"Unedited samples valid: {sum(base_valid)}/{len(base_valid)}.")
    lines.append("")
    if base_valid and sum(base_valid) < len(base_valid) / 2:
        lines.append("**Warning:** the estimator rejects most *unedited* samples, so the absolute valid rates below are floored "
                     "by sample quality, not by the edit; compare modes only relative to each other.")
        lines.append("")
    header = (["mode"] + [f"valid \\|s\\|={m:g}" for m in mags] + [f"error ratio \\|s\\|={m:g}" for m in mags]
              + ["valid all", "face", "in range", "factor change", "failures", "s / edit"])
    rows, summary = [], {}
    for name in names:
        rec = records[name]
        row = [name]
        for m in mags:
            sel = [r for r in rec if abs(r[0] - m) < 1e-9]
            row.append(pct(np.mean([r[3] for r in sel])) if sel else "n/a")
        for m in mags:
            ratios = [r[5] for r in rec if abs(r[0] - m) < 1e-9 and np.isfinite(r[5])]
            row.append(f"{np.median(ratios):.2f}" if ratios else "n/a")
        valid = np.mean([r[3] for r in rec]) if rec else float("nan")
        secs = np.mean([r[4] for r in rec]) if rec else float("nan")
        row += [f"{pct(valid)} ({sum(r[3] for r in rec)}/{len(rec)})", pct(np.mean([r[1] for r in rec]) if rec else float("nan")),
                pct(np.mean([r[2] for r in rec]) if rec else float("nan")), f"{np.nanmean([r[6] for r in rec]) if rec else float('nan'):.2f}",
                len(failures[name]), f"{secs:.2f}"]
        rows.append(row)
        ratios = [r[5] for r in rec if np.isfinite(r[5])]
        summary[name] = {"valid": valid, "seconds": secs, "failures": len(failures[name]), "error_ratio": float(np.median(ratios)) if ratios else float("nan")}
    lines += table(header, rows)
    lines.append("By strength (to compare modes at equal face change rather than equal strength):")
    lines.append("")
    by_strength = []
    for name in names:
        for m in mags:
            sel = [r for r in records[name] if abs(r[0] - m) < 1e-9]
            if sel:
                by_strength.append([name, f"{m:g}", f"{np.nanmean([r[6] for r in sel]):.2f}", pct(np.mean([r[2] for r in sel])),
                                    f"{np.nanmedian([r[5] for r in sel]):.2f}"])
    lines += table(["mode", "\\|s\\|", "factor change", "in range", "error ratio"], by_strength)
    for name in names:
        if failures[name]:
            lines.append(f"Failures of {name} ({len(failures[name])}): " + "; ".join(failures[name][:5]) + (" ..." if len(failures[name]) > 5 else ""))
            lines.append("")
    lines.append(f"Section time {seconds:.0f} s (bases already cached by earlier sections are not counted again).")
    lines.append("")
    report.sections["validity"] = lines
    return summary


def section_substeps(service, estimator, sizes: Sizes, report: Report, deadline: float) -> dict:
    start = time.perf_counter()
    values = sorted(sizes.substep_values)
    ref_n = max(values)
    per = {n: {"valid": [], "sec": [], "pix": [], "fac": []} for n in values}
    direct = {"valid": [], "sec": [], "pix": [], "fac": []}
    failures: list[str] = []
    used = []
    for seed in sizes.substep_seeds:
        if used and time.monotonic() > deadline:
            log(f"substeps: budget spent, stopping after seeds {used}")
            break
        spec = BasisSpec(SampleSpec(seed=seed), timestep=sizes.timestep, k=sizes.k)
        service.discover(spec)
        for i in range(sizes.substep_dirs):
            for s in sizes.substep_strengths:
                images, secs = {}, {}
                for n in values:
                    t0 = time.perf_counter()
                    try:
                        images[n] = service.edit(spec, {i: s}, "geodesic", substeps=n)
                    except InputError as exc:
                        failures.append(f"seed {seed} dir {i} s={s:+g} substeps {n}: {exc}")
                    secs[n] = time.perf_counter() - t0
                t0 = time.perf_counter()
                images["direct"] = service.edit(spec, {i: s}, "direct")
                secs["direct"] = time.perf_counter() - t0
                keys = list(images)
                x = pil_to_tensor([images[key] for key in keys])
                v = validity(estimator, x)
                ref = keys.index(ref_n) if ref_n in images else None
                for j, key in enumerate(keys):
                    bucket = direct if key == "direct" else per[key]
                    bucket["valid"].append(bool(v["valid"][j]))
                    bucket["sec"].append(secs[key])
                    if ref is not None:
                        bucket["pix"].append(float(((x[j] - x[ref]) ** 2).mean().sqrt()))
                        bucket["fac"].append(float(factor_distance(v["factors"][j : j + 1], v["factors"][ref : ref + 1].clone()).sum()))
                for n in values:
                    if n not in images:
                        per[n]["valid"].append(False)
                        per[n]["sec"].append(secs[n])
        used.append(seed)
        log(f"substeps seed {seed}: " + ", ".join(f"{n}: {np.mean(per[n]['sec']):.2f} s" for n in values))
    seconds = time.perf_counter() - start

    def mean(xs):
        return float(np.mean(xs)) if xs else float("nan")

    rows, stats = [], {}
    for n in values:
        b = per[n]
        stats[n] = {"valid": mean(b["valid"]), "sec": mean(b["sec"]), "pix": mean(b["pix"]), "fac": mean(b["fac"])}
        rows.append([f"geodesic-{n}", f"{pct(stats[n]['valid'])} ({sum(b['valid'])}/{len(b['valid'])})", f"{stats[n]['sec']:.2f}",
                     f"{stats[n]['pix']:.4f}", f"{stats[n]['fac']:.3f}"])
    rows.append(["direct (reference)", f"{pct(mean(direct['valid']))} ({sum(direct['valid'])}/{len(direct['valid'])})", f"{mean(direct['sec']):.2f}",
                 f"{mean(direct['pix']):.4f}", f"{mean(direct['fac']):.3f}"])

    # Recommendation: the fewest substeps that are as valid as the best setting (within one edit)
    # and whose result is closer to the finest path than half of the 1-substep distance.
    total = len(per[values[0]]["valid"]) or 1
    best_valid = max(stats[n]["valid"] for n in values)
    far = stats[values[0]]["fac"]
    recommended = ref_n
    for n in values:
        ok_valid = stats[n]["valid"] >= best_valid - 1.0 / total - 1e-9
        ok_close = n == ref_n or (far == far and stats[n]["fac"] <= 0.5 * far)
        if ok_valid and ok_close:
            recommended = n
            break
    lines = ["## (a') Geodesic substeps: quality / time", ""]
    lines.append(
        f"Seeds {used} (asked: {list(sizes.substep_seeds)}), top-{sizes.substep_dirs} directions, strengths "
        f"{', '.join(f'{s:+g}' for s in sizes.substep_strengths)}. *pixel RMS* and *factor L1* are the distance of each edit "
        f"to the {ref_n}-substep edit of the same (seed, direction, strength), the finest path here (0 for itself)."
    )
    lines.append("")
    lines += table(["substeps", "valid", "s / edit", f"pixel RMS to {ref_n}", f"factor L1 to {ref_n}"], rows)
    if failures:
        lines.append(f"Failures ({len(failures)}): " + "; ".join(failures[:5]))
        lines.append("")
    lines.append(
        f"**Recommendation: DEFAULT_SUBSTEPS['geodesic'] = {recommended}** (rule: fewest substeps whose valid rate is within one edit "
        f"of the best and whose factor L1 to the {ref_n}-substep path is at most half the 1-substep one). "
        f"Currently 4 in backend/edit.py. Section time {seconds:.0f} s."
    )
    lines.append("")
    report.sections["substeps"] = lines
    return {"seconds": seconds, "stats": stats, "recommended": recommended, "seeds": used}
