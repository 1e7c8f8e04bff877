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
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from backend.catpeople.estimator import FactorEstimator, factor_distance  # noqa: E402
from backend.catpeople.render import CIRCULAR, FACTORS, render_dataset  # noqa: E402
from backend.catpeople.semantics import (  # noqa: E402
    DEFAULT_ESTIMATOR,
    MIXED,
    EditResponse,
    edit_responses,
    label_directions,
    label_from_response,
    label_magnitudes,
    random_directions,
)

UNIFORM_MEAN, UNIFORM_STD = 0.5, 1 / math.sqrt(12)
SHORT = {"nose": "nose", "ears": "ears", "smile": "smile", "eyes": "eyes", "hue": "hue", "head_x": "hx", "head_y": "hy", "background": "bg", "horse": "horse"}


@dataclass
class Sizes:
    renders: int = 1024
    samples: int = 256
    grid: int = 64
    batch: int = 32
    semantic_seeds: tuple[int, ...] = tuple(range(8))
    k: int = 8
    n_random: int = 8
    strength: float | None = None  # edit strength of the semantic check (None: the model's eigenface.json)
    heldout_strength: float = 0.3
    timestep: float | None = None  # edit timestep of the semantic check (None: the model's eigenface.json)
    sweep_seeds: tuple[int, ...] = (0, 1)
    sweep_timesteps: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.8)
    sweep_strengths: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    denoise_renders: int = 128
    denoise_timesteps: tuple[int, ...] = (50, 150, 300, 500, 700, 850, 950, 999)


QUICK = Sizes(renders=256, samples=32, grid=16, batch=16, semantic_seeds=(0, 1), k=4, n_random=4, denoise_renders=16,
              sweep_seeds=(0,), sweep_timesteps=(0.6, 0.8), sweep_strengths=(0.3, 0.5))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # numbers behind the tables (--json)
    current: str = "head"

    def section(self, name: str) -> None:
        """Lines added from now on belong to ``name`` (sections print in ORDER, whatever order they ran in)."""
        self.current = name
        self.lines = self.sections.setdefault(name, [])

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        self.lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        self.lines.append("")

    json_path: Path | None = None

    def flush_raw(self) -> None:
        if self.json_path is not None:
            import json

            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps(self.raw, indent=1))

    def text(self) -> str:
        order = ["head", "accuracy", "samples", "denoising", "semantic", "atlas", "sweep", "timings"]
        names = order + [n for n in self.sections if n not in order]
        return "\n".join(line for n in names for line in self.sections.get(n, [])) + "\n"


def mark(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


# --------------------------------------------------------------------------------- statistics
def r_squared(estimated: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-factor R^2 = 1 - SSE / SST; circular factors use the circular error and the
    squared circular deviation from the circular mean."""
    err = factor_distance(estimated, truth)
    sse = (err**2).sum(dim=0)
    sst = ((truth - truth.mean(dim=0)) ** 2).sum(dim=0)
    for name in CIRCULAR:
        i = FACTORS.index(name)
        mean = circular_mean(truth[:, i])
        d = (truth[:, i] - mean).abs()
        d = torch.minimum(d, 1 - d)
        sst[i] = (d**2).sum()
    return 1 - sse / sst


def circular_mean(x: torch.Tensor) -> float:
    angle = x.double() * 2 * math.pi
    return float((torch.atan2(angle.sin().mean(), angle.cos().mean()) / (2 * math.pi)) % 1.0)


def resultant_length(x: torch.Tensor) -> float:
    """Mean resultant length of values on the unit circle [0, 1): 0 for uniform, 1 for a point."""
    angle = x.double() * 2 * math.pi
    return float(torch.hypot(angle.sin().mean(), angle.cos().mean()))


# ------------------------------------------------------------------------------------ sections
def section_accuracy(report: Report, estimator: FactorEstimator, sizes: Sizes) -> dict:
    report.section("accuracy")
    start = time.perf_counter()
    images, truth = render_dataset(sizes.renders, seed=20240)  # seeds 0-2 trained / calibrated it
    rendered = time.perf_counter() - start
    estimated = torch.cat([estimator.estimate(part) for part in images.split(256)])
    r2 = r_squared(estimated, truth)
    mae = factor_distance(estimated, truth).mean(dim=0)
    faces = torch.cat([estimator.is_face(part) for part in images.split(256)])
    seconds = time.perf_counter() - start
    report.timings.append((f"accuracy: render {sizes.renders} + estimate", seconds))
    report.add("## (a) Estimator accuracy on clean renders", "",
               f"{sizes.renders} fresh renders (`render_dataset(seed=20240)`); R^2 = 1 - SSE/SST per factor, hue with the "
               f"circular error and the circular deviation from its circular mean. Pass: R^2 >= 0.9. "
               f"is_face on the clean renders: {float(faces.float().mean()):.1%}.", "")
    report.table(["factor", "R^2", "MAE", "check"],
                 [[name, f"{float(r2[i]):.4f}", f"{float(mae[i]):.4f}", mark(float(r2[i]) >= 0.9)] for i, name in enumerate(FACTORS)])
    log(f"accuracy: {seconds:.1f}s (render {rendered:.1f}s); R^2 " + " ".join(f"{n}={float(v):.3f}" for n, v in zip(FACTORS, r2)))
    report.raw["accuracy"] = {"r2": dict(zip(FACTORS, r2.tolist())), "mae": dict(zip(FACTORS, mae.tolist())), "clean_face_rate": float(faces.float().mean())}
    return {"r2": r2, "clean_face_rate": float(faces.float().mean())}


def generate_batch(model, seeds: list[int], steps: int) -> torch.Tensor:
    """Samples exactly as the service draws them (seed -> initial noise -> DDIM), batched."""
    from backend.sampling import denoise, initial_noise, schedule

    x = torch.stack([initial_noise(model, s) for s in seeds])
    return model.decode(denoise(model, x, schedule(model, steps)))


def pixel_statistics(images: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean and std, and speckle (mean |Laplacian|): how far samples are from the
    training renders in colour and noise, whether or not they still read as faces."""
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(images.shape[1], 1, 3, 3)
    speckle = torch.nn.functional.conv2d(images.float(), laplacian, groups=images.shape[1]).abs().mean(dim=(0, 2, 3))
    return {"mean": images.mean(dim=(0, 2, 3)).tolist(), "std": images.std(dim=(0, 2, 3)).tolist(), "speckle": speckle.tolist()}


def section_samples(report: Report, service, estimator: FactorEstimator, sizes: Sizes, docs: Path) -> dict:
    from backend.sampling import DEFAULT_STEPS
    from backend.images import image_grid, to_pil

    report.section("samples")
    model = service.model("catpeople")
    start = time.perf_counter()
    images = []
    for first in range(0, sizes.samples, sizes.batch):
        seeds = list(range(first, min(first + sizes.batch, sizes.samples)))
        images.append(generate_batch(model, seeds, DEFAULT_STEPS))
        done = seeds[-1] + 1
        elapsed = time.perf_counter() - start
        log(f"samples: {done}/{sizes.samples} ({elapsed:.0f}s, {elapsed / done:.2f}s per sample)")
    images = torch.cat(images)
    gen_seconds = time.perf_counter() - start
    report.timings.append((f"samples: generate {sizes.samples} ({DEFAULT_STEPS} DDIM steps, batches of {sizes.batch})", gen_seconds))

    docs.mkdir(parents=True, exist_ok=True)
    n_grid = min(sizes.grid, sizes.samples)
    cols = int(math.ceil(math.sqrt(n_grid)))
    pils = to_pil(images[:n_grid])
    image_grid([pils[r * cols:(r + 1) * cols] for r in range(int(math.ceil(n_grid / cols)))]).save(docs / "samples.png")

    factors = estimator.estimate(images)
    errors = estimator.reconstruction_error(images, factors)
    faces = errors <= estimator.face_threshold
    rate = float(faces.float().mean())
    report.add("## (b, c) Samples of the built-in model", "",
               f"Seeds 0..{sizes.samples - 1}, {DEFAULT_STEPS} DDIM steps (as `service.generate`), batched. "
               f"Grid of the first {n_grid}: `{docs / 'samples.png'}`.", "",
               f"**Face rate** (estimator re-renders within its threshold {estimator.face_threshold:.4f}): "
               f"**{int(faces.sum())}/{sizes.samples} = {rate:.1%}** (target >= 95%: {mark(rate >= 0.95)}).", "",
               "Re-render error (mean squared, [0, 1] pixels) quantiles: "
               + ", ".join(f"q{int(q * 100)}={float(torch.quantile(errors, q)):.4f}" for q in (0.1, 0.25, 0.5, 0.75, 0.9)), "")
    renders, _ = render_dataset(sizes.samples, seed=1, resolution=images.shape[-1])
    stats = {"samples": pixel_statistics(images), "training renders": pixel_statistics(renders)}
    report.add(f"Pixel statistics, the {sizes.samples} samples against as many training renders (R, G, B; [0, 1] pixels; "
               "speckle = mean |Laplacian|, residual noise):", "")
    report.table(["images", "mean", "std", "speckle"],
                 [[name] + [" ".join(f"{v:.3f}" for v in st[key]) for key in ("mean", "std", "speckle")] for name, st in stats.items()])
    rows = []
    for i, name in enumerate(FACTORS):
        row = [name]
        for subset in (factors, factors[faces]):
            if subset.shape[0] < 2:
                row += ["-", "-"]
                continue
            mean, std = float(subset[:, i].mean()), float(subset[:, i].std())
            row += [f"{mean:.3f}", f"{std:.3f}"]
        mean, std = float(factors[:, i].mean()), float(factors[:, i].std())
        ok = abs(mean - UNIFORM_MEAN) <= 0.2 * UNIFORM_MEAN and abs(std - UNIFORM_STD) <= 0.2 * UNIFORM_STD
        note = f"R={resultant_length(factors[:, i]):.3f}, circ. mean {circular_mean(factors[:, i]):.3f}" if name in CIRCULAR else ""
        rows.append(row + [mark(ok), note])
    report.add(f"Estimated factors vs the training distribution (uniform: mean {UNIFORM_MEAN}, std {UNIFORM_STD:.4f}); "
               "pass when the mean and the std of all samples are both within 20%. Hue, circular: linear mean/std are "
               f"shown too (uniform on [0, 1) has the same), R = mean resultant length (uniform: ~{1 / math.sqrt(sizes.samples):.3f}).", "")
    report.table(["factor", "mean (all)", "std (all)", "mean (faces)", "std (faces)", "check (all)", "circular"], rows)
    report.raw["samples"] = {"face_rate": rate, "pixels": stats, "errors": [round(float(e), 5) for e in errors], "factors": [[round(float(v), 4) for v in row] for row in factors]}
    report.flush_raw()
    log(f"samples: face rate {rate:.1%}, generation {gen_seconds:.0f}s")
    return {"face_rate": rate, "images": images, "faces": faces}


@torch.no_grad()
def section_denoising(report: Report, service, sizes: Sizes) -> None:
    """Noise fresh training renders to t and denoise them in one step, as a sampler's first step does.

    Sampling starts at t = T, where x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) multiplies any epsilon
    error by up to 1 / sqrt(a) (~160 at T for linear betas): a bias there is what sets a sample's
    colours. The table says where the model's training falls short, on the data it was trained on.
    """
    from backend.sampling import NoiseSchedule, predict_x0, unet_output

    report.section("denoising")
    start = time.perf_counter()
    model = service.model("catpeople")
    noise = NoiseSchedule.from_config(model.scheduler_config)
    renders, _ = render_dataset(sizes.denoise_renders, seed=2, resolution=model.sample_shape[-1])
    x0 = renders * 2 - 1
    generator = torch.Generator().manual_seed(0)
    rows, raw = [], {}
    for t in sizes.denoise_timesteps:
        eps = torch.randn(x0.shape, generator=generator)
        a = noise.alpha(t)
        xt = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        predicted = torch.cat([unet_output(model, xt[i:i + sizes.batch].to(model.device), t, None).float().cpu() for i in range(0, len(xt), sizes.batch)])
        estimate, _ = predict_x0(noise, xt, predicted, t)  # as the sampler reads it, clipping included
        mse = float(((predicted - eps) ** 2).mean())
        bias = ((estimate - x0) / 2).mean(dim=(0, 2, 3)).tolist()  # [0, 1] pixel units
        rmse = float((((estimate - x0) / 2) ** 2).mean().sqrt())
        raw[t] = {"eps_mse": mse, "x0_bias": bias, "x0_rmse": rmse}
        rows.append([str(t), f"{mse:.4f}", " ".join(f"{b:+.3f}" for b in bias), f"{rmse:.3f}"])
    report.add("## Denoising by timestep", "",
               f"{sizes.denoise_renders} fresh training renders noised to t and denoised in one U-Net call; x0 estimates "
               "clipped to the image range as the sampler clips them, bias and RMS error in [0, 1] pixel units (R, G, B). "
               "An unbiased model has bias ~0 at every t; a sample's colours are set at the largest t.", "")
    report.table(["t", "epsilon MSE", "x0 bias (R G B)", "x0 RMS error"], rows)
    report.raw["denoising"] = raw
    report.timings.append(("denoising", time.perf_counter() - start))


def _semantic_seed(service, estimator, spec, sizes: Sizes, random_seed: int = 0, magnitudes: list[float] | None = None) -> dict:
    """One seed: responses of each top direction and each random direction at the label
    magnitudes (+-s/2, +-s) and +-s_heldout (or at +- each of ``magnitudes``)."""
    magnitudes = sorted({*label_magnitudes(sizes.strength), sizes.heldout_strength} if magnitudes is None else set(magnitudes))
    strengths = tuple([-m for m in reversed(magnitudes)] + magnitudes)
    model = service.model(spec.sample.model)
    t0 = time.perf_counter()
    basis = service.discover(spec)
    t1 = time.perf_counter()
    directions = edit_responses(service, spec, list(range(basis.basis.k)), strengths, estimator=estimator)
    t2 = time.perf_counter()
    vectors = random_directions(model.sample_shape, sizes.n_random, random_seed * 1_000_003 + spec.sample.seed)
    randoms = edit_responses(service, spec, list(vectors), strengths, estimator=estimator)
    t3 = time.perf_counter()
    return {"seed": spec.sample.seed, "directions": directions, "randoms": randoms, "basis": basis,
            "seconds": {"trajectory+basis": t1 - t0, "direction edits": t2 - t1, "random edits": t3 - t2}}


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
        spec = BasisSpec(SampleSpec(seed=seed), timestep=edit_t, k=sizes.k)
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
    spec = BasisSpec(SampleSpec(seed=seed), timestep=edit_t, k=sizes.k)
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
                spec = BasisSpec(SampleSpec(seed=seed), timestep=t, k=sizes.k)
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


def _provenance() -> str:
    """The commit the numbers come from, and the files that differed from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head or 'unknown'}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


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
    parser.add_argument("--model-path", help="evaluate this checkpoint instead of the built-in one (e.g. freshly trained weights)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("EIGENFACE_THREADS", "2")), help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sizes = Sizes(**QUICK.__dict__) if args.quick else Sizes()
    if args.samples:
        sizes.samples = args.samples
    if args.seeds:
        sizes.semantic_seeds = tuple(int(s) for s in args.seeds.split(","))
    for name, attr in (("k", "k"), ("n_random", "n_random"), ("timestep", "timestep"), ("strength", "strength"), ("heldout", "heldout_strength")):
        if getattr(args, name) is not None:
            setattr(sizes, attr, getattr(args, name))
    for name in ("sweep_timesteps", "sweep_strengths"):
        if getattr(args, name):
            setattr(sizes, name, tuple(float(v) for v in getattr(args, name).split(",")))
    if args.sweep_seeds:
        sizes.sweep_seeds = tuple(int(v) for v in args.sweep_seeds.split(","))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"accuracy", "samples", "denoising", "semantic", "atlas", "sweep"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    docs = Path(args.docs)

    report = Report(json_path=Path(args.json) if args.json else None)
    report.section("head")
    wall = time.perf_counter()
    estimator = FactorEstimator.load(args.estimator)
    report.add("# Cat-people evaluation" + (" (quick)" if args.quick else ""), "",
               f"`python bench/catpeople_eval.py {' '.join(sys.argv[1:] if argv is None else argv)}` - torch {torch.__version__}, "
               f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d %H:%M')}, {_provenance()}; "
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

    report.section("timings")
    report.add("## Timings", "")
    report.timings.append(("total", time.perf_counter() - wall))
    report.table(["step", "seconds"], [[name, f"{sec:.1f}"] for name, sec in report.timings])
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
