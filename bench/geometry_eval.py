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
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.catpeople import semantics  # noqa: E402
from backend.catpeople.estimator import FactorEstimator, factor_distance  # noqa: E402
from backend.catpeople.render import FACTORS  # noqa: E402
from backend.errors import InputError  # noqa: E402
from backend.plots import heatmap  # noqa: E402
from backend.service import EigenfaceService, ServiceConfig  # noqa: E402
from backend.specs import BUILTIN_NAME, BasisSpec, SampleSpec  # noqa: E402

#: Raw regressor outputs of the linear factors may overshoot [0, 1] by this much and still count
#: as "in range" (estimate() clamps them, so the range check must look at the raw outputs).
RANGE_TOL = 0.05
#: Hue is read from (cos, sin); a resultant shorter than this means "no readable hue".
MIN_HUE_RADIUS = 0.5
_HUE = FACTORS.index("hue")


@dataclass
class Sizes:
    validity_seeds: tuple[int, ...] = tuple(range(8))
    validity_dirs: int = 4
    validity_strengths: tuple[float, ...] = (-1.2, -0.8, 0.8, 1.2)
    validity_modes: tuple[tuple[str, int | None], ...] = (("direct", None), ("geodesic", 2), ("geodesic", 4), ("guidance", None))
    substep_seeds: tuple[int, ...] = (0, 1, 2, 3)
    substep_dirs: int = 2
    substep_strengths: tuple[float, ...] = (-1.0, 1.0)
    substep_values: tuple[int, ...] = (1, 2, 4, 8)
    transport_dirs: int = 4
    transport_sources: tuple[int, ...] = (0,)
    transport_targets: tuple[int, ...] = tuple(range(1, 9))
    transport_strength: float = 0.5
    transport_target_k: int = 0  # directions of the target bases a direction is carried into (0: k)
    compare_seeds: tuple[int, ...] = (0, 1, 2, 3)
    compare_timesteps: tuple[float, ...] = (0.8, 0.6, 0.4, 0.2)
    k: int = 8
    #: edit timestep of (a), (a') and (b); fixed rather than the model's eigenface.json so that
    #: the recorded results stay reproducible (`--set timestep=0.3` for the built-in's setting)
    timestep: float = 0.6


QUICK = Sizes(
    validity_seeds=(0,), validity_dirs=1, validity_strengths=(-1.2, 1.2),
    substep_seeds=(0,), substep_dirs=1, substep_strengths=(1.0,), substep_values=(1, 2, 4),
    transport_dirs=2, transport_targets=(1, 2),
    compare_seeds=(0, 1, 2),
)


def override(sizes: Sizes, item: str) -> Sizes:
    """A copy of ``sizes`` with one field set from text: ``name=1,2,3`` / ``name=0.5`` / ``validity_modes=direct,geodesic-2``."""
    name, _, text = item.partition("=")
    name = name.strip()
    if name not in Sizes.__dataclass_fields__:
        raise ValueError(f"unknown field {name!r}; fields: {', '.join(Sizes.__dataclass_fields__)}")
    current = getattr(sizes, name)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if name == "validity_modes":
        modes = []
        for p in parts:
            mode, _, sub = p.partition("-")
            modes.append((mode, int(sub) if sub else None))
        value = tuple(modes)
    elif isinstance(current, tuple):
        kind = type(current[0]) if current else float
        value = tuple(kind(p) for p in parts)
    else:
        value = type(current)(text)
    return replace(sizes, **{name: value})


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Report:
    sections: dict[str, list[str]] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)

    def text(self) -> str:
        order = ["validity", "substeps", "transport", "compare", "timings"]
        body = [line for name in order for line in self.sections.get(name, [])]
        return "\n".join(self.header + body) + "\n"


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


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
        base = validity(estimator, semantics.pil_to_tensor([service.generate(spec.sample)]))
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
                v = validity(estimator, semantics.pil_to_tensor(images))
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
                x = semantics.pil_to_tensor([images[key] for key in keys])
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


# ------------------------------------------------------------------------------------ (b)
def response(service, spec, estimator, strength: float, index: int | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
    """(F,) mean absolute factor change over edits at +-strength (direct mode)."""
    return semantics.factor_response(service, spec, index, vector, (-strength, strength), estimator=estimator)


@dataclass
class Carried:
    """One source direction applied to one target sample, transported and raw."""

    source: int  # source seed
    target: int  # target seed
    index: int  # direction index in the source basis
    source_response: torch.Tensor  # (F,) what it moves on the source
    label: str  # its slider name on the source (label_directions' rule), or "mixed"
    transported: torch.Tensor | None  # (F,) response on the target; None if transport failed
    raw: torch.Tensor  # (F,) response of the untransported vector on the target

    @property
    def top(self) -> int:
        return int(self.source_response.argmax())

    def response(self, kind: str) -> torch.Tensor | None:
        return self.transported if kind == "transported" else self.raw


def section_transport(service, estimator, sizes: Sizes, report: Report, deadline: float) -> dict:
    start = time.perf_counter()
    strength = sizes.transport_strength
    dirs = range(sizes.transport_dirs)
    magnitudes = semantics.label_magnitudes(strength)

    target_k = sizes.transport_target_k or sizes.k

    def spec_of(seed: int, k: int = sizes.k) -> BasisSpec:
        return BasisSpec(SampleSpec(seed=seed), timestep=sizes.timestep, k=k)

    carried: list[Carried] = []
    overlap, cosine, failures, sources = [], [], [], []
    for src_seed in sizes.transport_sources:
        if sources and time.monotonic() > deadline:
            log(f"transport: budget spent, stopping after sources {sources}")
            break
        source_spec = spec_of(src_seed)
        source = service.discover(source_spec).basis
        # Responses at the label magnitudes (strength / 2, strength): the last row is the one compared on
        # the targets; both name the directions that have a meaning to carry, by the sliders' own rule.
        rows = {i: torch.stack([response(service, source_spec, estimator, m, index=i) for m in magnitudes]) for i in dirs}
        src_resp = {i: r[-1] for i, r in rows.items()}
        src_label = {i: semantics.label_from_response(i, r).label for i, r in rows.items()}
        log(f"transport: seed {src_seed} directions move " + ", ".join(f"v{i} {FACTORS[int(r.argmax())]} ({src_label[i]})" for i, r in src_resp.items()))
        for seed in sizes.transport_targets:
            if seed == src_seed:
                continue
            spec = spec_of(seed, target_k)
            target = service.discover(spec).basis
            for i in dirs:
                u = source.u[i].reshape(-1).double()
                overlap.append(float((target.u.reshape(target.k, -1).double() @ u).norm() / u.norm()))
                raw = source.v[i]
                try:
                    moved = service.transport(source, i, target)
                except InputError as exc:
                    failures.append(f"seed {src_seed} -> {seed} dir {i}: {exc}")
                    moved = None
                if moved is not None:
                    cosine.append(float(torch.nn.functional.cosine_similarity(moved.reshape(1, -1).double(), raw.reshape(1, -1).double())))
                carried.append(Carried(src_seed, seed, i, src_resp[i], src_label[i],
                                       None if moved is None else response(service, spec, estimator, strength, vector=moved),
                                       response(service, spec, estimator, strength, vector=raw)))
            log(f"transport {src_seed} -> {seed}: " + ", ".join(
                f"{kind} {[FACTORS[int(c.response(kind).argmax())] if c.response(kind) is not None else '-' for c in carried if (c.source, c.target) == (src_seed, seed)]}"
                for kind in ("transported", "raw")))
        sources.append(src_seed)
    seconds = time.perf_counter() - start
    kinds = ("transported", "raw")

    def hit(c: Carried, kind: str) -> bool:  # a failed transport counts as a miss
        r = c.response(kind)
        return r is not None and int(r.argmax()) == c.top

    def share(kind: str, among: list[Carried]) -> float:
        return sum(hit(c, kind) for c in among) / len(among) if among else float("nan")

    def rate(kind: str, among: list[Carried]) -> str:
        return f"{pct(share(kind, among))} ({sum(hit(c, kind) for c in among)}/{len(among)})"

    def others(c: Carried) -> list[Carried]:  # the other directions carried between the same two samples
        return [o for o in carried if (o.source, o.target) == (c.source, c.target) and o.index != c.index]

    def cross(kind: str) -> float:  # chance-like baseline: a target response vs another direction's source top factor
        xs = [int(c.response(kind).argmax()) == o.top for c in carried if c.response(kind) is not None for o in others(c)]
        return float(np.mean(xs)) if xs else float("nan")

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(np.corrcoef(a.double().numpy(), b.double().numpy())[0, 1])

    def profile(kind: str, matched: bool) -> float:  # graded: Pearson correlation of the factor-response profiles
        xs = [correlation(c.response(kind), o.source_response) for c in carried if c.response(kind) is not None
              for o in ([c] if matched else others(c))]
        return float(np.mean(xs)) if xs else float("nan")

    named = [c for c in carried if c.label != semantics.MIXED]
    lines = ["## (b) Transport of directions between seeds", ""]
    lines.append(
        f"Sources: seeds {sources} (asked: {list(sizes.transport_sources)}), timestep {sizes.timestep:g}, k={sizes.k}; targets (k={target_k}): "
        f"seeds {list(sizes.transport_targets)} other than the source. Each of a source's top-{sizes.transport_dirs} directions "
        "v_i is carried to each target by `service.transport(source.basis, i, target.basis)` and applied there with "
        f"`edit_vector` (direct mode) at +-{strength:g}; the factor response is the mean absolute change of the estimated "
        "factors over the two signs (sign-free, so the arbitrary sign of a singular vector does not matter). A *hit* is a "
        "target edit whose most-moved factor equals the one v_i moves most on its source. *raw* applies the source's v_i "
        "unchanged. *Named*: only the directions that have a meaning to carry, those `label_directions` names on the source "
        f"(one factor moves >= 2x any other at each of {' and '.join(f'+-{m:g}' for m in magnitudes)}); the others move a mix, "
        "whose top factor is a weak target."
    )
    lines.append("")
    rows = []
    for src_seed in sources:
        mine = [c for c in carried if c.source == src_seed]
        names = sorted({f"v{c.index} {c.label}" for c in mine if c.label != semantics.MIXED})
        mine_named = [c for c in mine if c.label != semantics.MIXED]
        rows.append([str(src_seed), ", ".join(names) or "none"] + [rate(kind, mine) for kind in kinds] + [rate(kind, mine_named) for kind in kinds])
    rows.append(["all", f"{len({(c.source, c.index) for c in named})} named"] + [f"**{rate(kind, carried)}**" for kind in kinds]
                + [f"**{rate(kind, named)}**" for kind in kinds])
    lines += table(["source seed", "named directions", "transported: hits", "raw v_i: hits", "named, transported", "named, raw"], rows)
    per_factor = []
    for name in sorted({c.label for c in named}):
        group = [c for c in named if c.label == name]
        per_factor.append([name, str(len({(c.source, c.index) for c in group}))] + [rate(kind, group) for kind in kinds])
    if per_factor:
        lines += table(["named factor", "source directions", "transported: hits", "raw v_i: hits"], per_factor)

    def carried_to_most(kind: str) -> int:  # named source directions that hit on more than half of their targets
        by_direction: dict[tuple[int, int], list[bool]] = {}
        for c in named:
            by_direction.setdefault((c.source, c.index), []).append(hit(c, kind))
        return sum(sum(h) > len(h) / 2 for h in by_direction.values())

    if named:
        n_named = len({(c.source, c.index) for c in named})
        lines.append(f"Named directions that move their factor on most of their targets: transported {carried_to_most('transported')} "
                     f"of {n_named}, raw {carried_to_most('raw')} of {n_named}.")
        lines.append("")
    lines.append(
        f"Baseline (a target's top factor vs *another* direction's source top factor): transported {pct(cross('transported'))}, "
        f"raw {pct(cross('raw'))}; uniform chance over {len(FACTORS)} factors is {pct(1 / len(FACTORS))}."
    )
    lines.append("")
    lines.append(
        "Graded: the Pearson correlation, over the factors, between the target's response and the source direction's "
        "response (1 = the same mix of factors moves in the same proportions; the hit rate only compares the top factor, "
        "which is fragile when directions move several factors). Mean over the pairs; the baseline pairs a target "
        "response with *another* source direction's response."
    )
    lines.append("")
    lines += table(["", "same direction", "baseline (other direction)"],
                   [[kind, f"**{profile(kind, True):+.3f}**", f"{profile(kind, False):+.3f}"] for kind in kinds])
    if cosine:
        lines.append(
            f"|U_target^T u_i| / |u_i| (how much of the source direction's h-image lies in the target's top-{target_k} h-space): "
            f"mean {np.mean(overlap):.3f}, min {np.min(overlap):.3f}. Cosine(transported, raw v_i): mean {np.mean(cosine):+.3f}, "
            f"mean |cos| {np.mean(np.abs(cosine)):.3f}."
        )
        lines.append("")
    if failures:
        lines.append(f"Transport failures (InputError, {len(failures)}): " + "; ".join(failures[:5]))
        lines.append("")
    lines.append(f"Section time {seconds:.0f} s.")
    lines.append("")
    report.sections["transport"] = lines

    return {"seconds": seconds, "sources": sources, "transported": share("transported", carried), "raw": share("raw", carried),
            "named": {kind: share(kind, named) for kind in kinds},
            "profile": {kind: profile(kind, True) for kind in kinds}, "profile_baseline": {kind: profile(kind, False) for kind in kinds}}


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

    report = Report()
    report.header = [
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

    timings = [("model load", load_s)]
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
        timings.append((name, results[name]["seconds"]))
        log(f"section {name}: {results[name]['seconds']:.1f} s")
        report.sections["timings"] = ["## Timings", ""] + table(["step", "seconds"], [[n, f"{s:.1f}"] for n, s in timings]) + [
            f"Total wall time {time.perf_counter() - wall:.0f} s.", ""]
        flush()
    log(f"wrote {out} (total {time.perf_counter() - wall:.0f} s)")
    print(report.text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
