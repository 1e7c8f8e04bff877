"""Cat-people evaluation, sections (d), (e) and the sweep: do the top Jacobian directions move
the known factors more than random directions do, which factor each one names, and the atlas
(bench/catpeople_eval.py runs them). The responses come from
``backend.catpeople.semantics.seed_responses``, the function the library's own semantic check uses."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw

from backend.catpeople.estimator import FactorEstimator
from backend.catpeople.render import FACTORS
from backend.catpeople.semantics import MIXED, EditResponse, label_directions, label_from_response, label_magnitudes, seed_responses
from bench.catpeople_sizes import Sizes
from bench.common import Report, log, mark


SHORT = {"nose": "nose", "ears": "ears", "smile": "smile", "eyes": "eyes", "hue": "hue", "head_x": "hx", "head_y": "hy", "background": "bg", "horse": "horse"}


def _semantic_seed(service, estimator, spec, sizes: Sizes, random_seed: int = 0, magnitudes: list[float] | None = None) -> dict:
    """One seed: responses of each top direction and each random direction at the label
    magnitudes (+-s/2, +-s) and +-s_heldout (or at +- each of ``magnitudes``)."""
    magnitudes = sorted({*label_magnitudes(sizes.strength), sizes.heldout_strength} if magnitudes is None else set(magnitudes))
    strengths = tuple([-m for m in reversed(magnitudes)] + magnitudes)
    t0 = time.perf_counter()
    basis = service.discover(spec)
    t1 = time.perf_counter()
    directions, randoms = seed_responses(service, spec, sizes.n_random, strengths, estimator=estimator, random_seed=random_seed)
    t2 = time.perf_counter()
    return {"seed": spec.sample.seed, "directions": directions, "randoms": randoms, "basis": basis,
            "seconds": {"trajectory+basis": t1 - t0, "edits": t2 - t1}}


def _raw_seed(res: dict) -> dict:
    def one(r: EditResponse) -> dict:
        return {"base": [round(float(v), 5) for v in r.base], "edited": [[round(float(v), 5) for v in row] for row in r.edited],
                "edited_is_face": [bool(v) for v in r.edited_is_face]}

    return {"base_is_face": res["directions"][0].base_is_face, "sigma": [round(float(v), 5) for v in res["basis"].basis.sigma],
            "directions": [one(r) for r in res["directions"]], "random": [one(r) for r in res["randoms"]],
            "seconds": {k: round(v, 2) for k, v in res["seconds"].items()}}


def _response_at(r: EditResponse, strength: float) -> torch.Tensor:
    """(F,) mean change over the edits at +-strength."""
    keep = [i for i, s in enumerate(r.strengths) if abs(abs(s) - strength) < 1e-9]
    return r.changes[keep].mean(dim=0)


def _faces_at(r: EditResponse, strength: float) -> torch.Tensor:
    keep = [i for i, s in enumerate(r.strengths) if abs(abs(s) - strength) < 1e-9]
    return r.edited_is_face[keep]


def _ratio(dirs: list[EditResponse], rands: list[EditResponse], strength: float) -> tuple[float, float, float]:
    d = torch.stack([_response_at(r, strength).sum() for r in dirs])
    n = torch.stack([_response_at(r, strength).sum() for r in rands])
    return float(d.mean()) / float(n.mean()), float(d.mean()), float(n.mean())


def _plus_minus(magnitudes: Sequence[float]) -> str:
    """"+-0.1 and +-0.2": the edit magnitudes a label was measured at, for the report."""
    return " and ".join(f"+-{m:g}" for m in magnitudes)


def _short(label: str) -> str:
    return SHORT.get(label, "mixed" if label == MIXED else label)


def section_semantic(report: Report, service, estimator: FactorEstimator, sizes: Sizes, docs: Path) -> dict:
    from backend.specs import BasisSpec, SampleSpec

    report.section("semantic")
    s, h = sizes.strength, sizes.heldout_strength
    edit_t = sizes.timestep
    seeds = list(sizes.semantic_seeds)
    results = []
    start = time.perf_counter()
    for seed in seeds:
        spec = BasisSpec(SampleSpec(seed=seed, prompt=sizes.prompt), timestep=edit_t, k=sizes.k)
        res = _semantic_seed(service, estimator, spec, sizes)
        results.append(res)
        report.raw.setdefault("semantic", {"timestep": edit_t, "strengths": list(res["directions"][0].strengths), "factors": list(FACTORS), "seeds": {}})
        report.raw["semantic"]["seeds"][str(seed)] = _raw_seed(res)
        report.flush_raw()
        ratio, _, _ = _ratio(res["directions"], res["randoms"], s)
        log(f"semantic: seed {seed} ratio {ratio:.2f} (" + ", ".join(f"{k} {v:.1f}s" for k, v in res["seconds"].items()) + ")")
    seconds = time.perf_counter() - start
    report.timings.append((f"semantic: {len(seeds)} seeds x (basis k={sizes.k} + {sizes.k} dirs x 6 strengths + {sizes.n_random} random x 6)", seconds))
    timestep = results[0]["basis"].timestep

    # --- ratio per seed
    report.add("## (d) Semantic check: top Jacobian directions vs random directions", "",
               f"Seeds {seeds}, edit timestep {edit_t} (training t = {timestep}), basis k = {sizes.k}, direct edits. "
               f"For every direction: edits at -s and +s; change = sum over factors of the mean absolute change of the "
               f"estimated factors (hue circular) from the unedited sample. Random: {sizes.n_random} random unit directions "
               f"per seed at the same strengths. Ratio = mean over top-k / mean over random. Pass: ratio >= 3 on every seed "
               f"at s = {s}. Face columns: fraction of edited images the estimator still reads as a face "
               f"(base = the unedited sample).", "")
    rows, pass_all, pooled = [], True, {s: ([], []), h: ([], [])}
    for res in results:
        row = [str(res["seed"]), "yes" if res["directions"][0].base_is_face else "no"]
        for strength in (s, h):
            ratio, d, n = _ratio(res["directions"], res["randoms"], strength)
            pooled[strength][0].append(d)
            pooled[strength][1].append(n)
            row += [f"{d:.3f}", f"{n:.3f}", f"{ratio:.2f}"]
            if strength == s:
                pass_all &= ratio >= 3
                ok = ratio >= 3
        dir_faces = float(torch.cat([_faces_at(r, s) for r in res["directions"]]).float().mean())
        rnd_faces = float(torch.cat([_faces_at(r, s) for r in res["randoms"]]).float().mean())
        rows.append(row + [f"{dir_faces:.0%}", f"{rnd_faces:.0%}", mark(ok)])
    overall = {st: sum(p[0]) / sum(p[1]) for st, p in pooled.items()}
    rows.append(["all", "", f"{sum(pooled[s][0]) / len(seeds):.3f}", f"{sum(pooled[s][1]) / len(seeds):.3f}", f"**{overall[s]:.2f}**",
                 f"{sum(pooled[h][0]) / len(seeds):.3f}", f"{sum(pooled[h][1]) / len(seeds):.3f}", f"{overall[h]:.2f}", "", "", mark(pass_all)])
    report.table(["seed", "base is face", f"top-k change (s={s})", f"random change (s={s})", f"ratio (s={s})",
                  f"top-k (s={h})", f"random (s={h})", f"ratio (s={h})", f"faces, top-k edits (s={s})", f"faces, random edits (s={s})", "check"], rows)

    # --- per-direction change, to see the spectrum of semantic strength
    per_dir = torch.stack([torch.stack([_response_at(r, s).sum() for r in res["directions"]]) for res in results])
    report.add(f"Mean total change per direction index over the seeds (s = {s}); random directions: "
               f"{sum(pooled[s][1]) / len(seeds):.3f}.", "")
    report.table(["direction"] + [str(i) for i in range(sizes.k)], [["change"] + [f"{float(v):.3f}" for v in per_dir.mean(dim=0)]])

    # --- label table: seed x direction
    mags = label_magnitudes(s)
    labels = [[label_from_response(i, torch.stack([_response_at(r, m) for m in mags])) for i, r in enumerate(res["directions"])] for res in results]
    report.add("### Which factor each top direction moves (label_directions)", "",
               f"Label = the factor whose change is >= 2x any other factor's at each of the edit magnitudes "
               f"{_plus_minus(mags)} (as `label_directions` names the sliders); `mixed` otherwise, "
               "shown as `(top)` with the top factor in brackets. Number = top/second ratio, the least over the magnitudes.", "")
    rows = []
    for res, row in zip(results, labels):
        rows.append([str(res["seed"])] + [(_short(l.label) if l.label != MIXED else f"({_short(l.top)})") + f" {l.ratio:.1f}" for l in row])
    report.table(["seed"] + [f"v{i}" for i in range(sizes.k)], rows)

    # Direction-index view: does slider i mean the same thing on every seed?
    mean_resp = torch.stack([torch.stack([_response_at(r, s) for r in res["directions"]]) for res in results]).mean(dim=0)
    rows = []
    for i in range(sizes.k):
        agg = label_from_response(i, mean_resp[i])
        same = sum(1 for row in labels if row[i].label == agg.label and agg.label != MIXED)
        top_same = sum(1 for row in labels if row[i].top == agg.top)
        rows.append([f"v{i}", agg.label, f"{agg.ratio:.2f}", agg.top, f"{same}/{len(seeds)}" if agg.label != MIXED else "-", f"{top_same}/{len(seeds)}",
                     ", ".join(f"{_short(n)} {float(v):.3f}" for n, v in sorted(zip(FACTORS, mean_resp[i]), key=lambda p: -float(p[1]))[:3])])
    report.add("By direction index, responses averaged over the seeds (bases are local, so index i need not mean the same "
               "thing on every seed; this shows how far it does):", "")
    report.table(["direction", "label (mean response)", "ratio", "top factor", "seeds with that label", "seeds with that top factor", "largest mean changes"], rows)

    # --- issue 8: per factor, seeds where a direction labelled with it exists, verified on held-out edits
    report.add("### Issue 8: sliders that name themselves", "",
               f"For each factor: on how many seeds one of the top-{sizes.k} directions is labelled with it (edits at "
               f"{_plus_minus(mags)}), "
               f"and on how many of those the label holds up on held-out renders: edits along the same direction at +-{h} "
               f"change that factor >= 2x more than any other factor. Pass: verified on >= 6 of 8 seeds "
               f"(scaled: >= {math.ceil(0.75 * len(seeds))} of {len(seeds)}).", "")
    rows, issue8 = [], {}
    for fi, name in enumerate(FACTORS):
        labelled, verified, ratios, which = 0, 0, [], []
        for res, row in zip(results, labels):
            hits = [l for l in row if l.label == name]
            if not hits:
                which.append("-")
                continue
            labelled += 1
            best = None
            for l in hits:
                held = label_from_response(l.index, _response_at(res["directions"][l.index], h))
                if best is None or (held.label == name) > (best[1].label == name) or held.ratio > best[1].ratio:
                    best = (l, held)
            ok = best[1].label == name
            verified += ok
            ratios.append(best[1].ratio if best[1].top == name else 0.0)
            which.append(f"v{best[0].index}" + ("" if ok else "x"))
        if labelled == 0:
            continue
        passed = verified >= math.ceil(0.75 * len(seeds))
        issue8[name] = {"labelled": labelled, "verified": verified, "pass": passed}
        rows.append([name, f"{labelled}/{len(seeds)}", f"{verified}/{len(seeds)}", f"{sum(ratios) / len(ratios):.2f}", " ".join(which), mark(passed)])
    never = [n for n in FACTORS if n not in issue8]
    if not rows:
        rows.append(["(none)", "-", "-", "-", "-", mark(False)])
    report.table(["factor", "seeds labelled", "seeds verified (held-out)", "mean held-out ratio", "direction per seed (x = not verified)", "check"], rows)
    report.add(f"Factors no top-{sizes.k} direction is labelled with on any seed: {', '.join(never) or 'none'}.", "")
    log(f"semantic: overall ratio {overall[s]:.2f} at s={s}, {overall[h]:.2f} at s={h}; {seconds:.0f}s")
    report.raw["semantic"].update({"ratio": overall, "pass": pass_all, "issue8": issue8})
    return {"results": results, "labels": labels, "ratio": overall, "pass": pass_all, "issue8": issue8, "timestep": timestep, "edit_t": edit_t}


def section_atlas(report: Report, service, estimator: FactorEstimator, sizes: Sizes, docs: Path, semantic: dict | None, seed: int | None, strength: float) -> None:
    from backend.specs import BUILTIN_NAME, BasisSpec, SampleSpec

    report.section("atlas")
    if seed is None:
        seed = service.settings(BUILTIN_NAME).seed  # the sample the web page opens with
    edit_t = sizes.timestep
    spec = BasisSpec(SampleSpec(seed=seed, prompt=sizes.prompt), timestep=edit_t, k=sizes.k)
    labels = next((row for res, row in zip(semantic["results"], semantic["labels"]) if res["seed"] == seed), None) if semantic else None
    if labels is None:
        labels = label_directions(service, spec, estimator, strength=sizes.strength)
    start = time.perf_counter()
    grid = service.grid(spec, strength=strength, columns=5)
    seconds = time.perf_counter() - start
    report.timings.append((f"atlas: service.grid seed {seed} ({sizes.k} rows x 5)", seconds))
    scale, margin = 2, 84
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (grid.width + margin, grid.height), "white")
    canvas.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = grid.height // sizes.k
    for i in range(sizes.k):
        l = labels[i]
        text = f"v{i}\nmixed\n({l.top} {l.ratio:.1f}x)" if l.label == MIXED else f"v{i}\n{l.label}\n{l.ratio:.1f}x"
        draw.multiline_text((4, i * row_h + row_h // 2 - 18), text, fill="black")
    docs.mkdir(parents=True, exist_ok=True)
    canvas.save(docs / "atlas.png")
    report.add("## (e) Atlas", "", f"`{docs / 'atlas.png'}`: seed {seed}, timestep {edit_t}, one row per direction, "
               f"edits from -{strength} to +{strength} (5 columns, original in the middle), rows named by label_directions "
               f"(at {_plus_minus(label_magnitudes(sizes.strength))}).", "")
    log(f"atlas: {seconds:.0f}s")


def section_sweep(report: Report, service, estimator: FactorEstimator, sizes: Sizes, semantic: dict | None) -> None:
    from backend.specs import BasisSpec, SampleSpec

    report.section("sweep")
    strengths = sorted(set(sizes.sweep_strengths))
    rows = []
    start = time.perf_counter()
    table: dict[tuple[float, float], list[float]] = {}
    label_counts: dict[float, list[int]] = {}
    for t in sizes.sweep_timesteps:
        for seed in sizes.sweep_seeds:
            reuse = None
            if semantic is not None and t == semantic["edit_t"] and {*label_magnitudes(sizes.strength), sizes.heldout_strength} >= set(strengths):
                reuse = next((r for r in semantic["results"] if r["seed"] == seed), None)
            if reuse is None:
                spec = BasisSpec(SampleSpec(seed=seed, prompt=sizes.prompt), timestep=t, k=sizes.k)
                reuse = _semantic_seed(service, estimator, spec, sizes, magnitudes=strengths)
                report.raw.setdefault("sweep", {})[f"{t}/{seed}"] = _raw_seed(reuse)
                report.flush_raw()
            for st in strengths:
                ratio, _, _ = _ratio(reuse["directions"], reuse["randoms"], st)
                table.setdefault((t, st), []).append(ratio)
                faces = float(torch.cat([_faces_at(r, st) for r in reuse["directions"]]).float().mean())
                named = sum(label_from_response(i, _response_at(r, st)).label != MIXED for i, r in enumerate(reuse["directions"]))
                label_counts.setdefault((t, st), []).append(named)
                table.setdefault(("faces", t, st), []).append(faces)
            log(f"sweep: t={t} seed {seed}: " + ", ".join(f"s={st}: {table[(t, st)][-1]:.2f}" for st in strengths))
    seconds = time.perf_counter() - start
    report.timings.append((f"sweep: {len(sizes.sweep_timesteps)} timesteps x {len(sizes.sweep_seeds)} seeds", seconds))
    for t in sizes.sweep_timesteps:
        for st in strengths:
            r = table[(t, st)]
            rows.append([f"{t}", f"{st}"] + [f"{v:.2f}" for v in r] + [f"{sum(r) / len(r):.2f}",
                        "/".join(str(n) for n in label_counts[(t, st)]), f"{sum(table[('faces', t, st)]) / len(r):.0%}"])
    report.add("## Sweep: edit timestep x strength", "",
               f"Semantic ratio (top-{sizes.k} vs {sizes.n_random} random directions, per seed) for seeds {list(sizes.sweep_seeds)}; "
               f"'named' = directions with a non-mixed label (per seed); 'faces' = fraction of top-k edits read as faces.", "")
    report.table(["timestep", "strength"] + [f"ratio seed {s}" for s in sizes.sweep_seeds] + ["mean ratio", "named (of k)", "faces"], rows)
    log(f"sweep: {seconds:.0f}s")
