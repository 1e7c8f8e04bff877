"""Cat-people evaluation, sections (a) to (c) and the denoising table: how well the estimator
reads the factors, what the built-in model samples, and where its training falls short
(bench/catpeople_eval.py runs them)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from backend.catpeople.estimator import FactorEstimator, factor_distance
from backend.catpeople.render import CIRCULAR, FACTORS, render_dataset
from bench.catpeople_sizes import Sizes
from bench.common import Report, log, mark, sample_batch


UNIFORM_MEAN, UNIFORM_STD = 0.5, 1 / math.sqrt(12)


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
        images.append(sample_batch(service, model, seeds, DEFAULT_STEPS))
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
