"""Training the built-in text-to-image model on a CPU, resumably, in four stages.

1. **pool**: draw a fixed pool of renders (cat, horse and in between) once. Rendering costs
   about as much as an autoencoder step on a CPU, so both later stages reuse the pool.
2. **vae**: fit the ``AutoencoderKL`` (MSE plus Stable Diffusion's tiny KL weight).
3. **encode**: encode the pool to latents once and set the VAE's ``scaling_factor`` to
   1 / std of the latents, as Stable Diffusion's is.
4. **unet**: fit the ``UNet2DConditionModel`` and the ``CLIPTextModel`` together on the
   latents with captions re-drawn from the factors at every step (new paraphrases, 10 %
   empty for classifier-free guidance); epsilon prediction with Min-SNR weighting, EMA.

One wall-clock budget covers everything, resumes included; a checkpoint is written every few
minutes and at each stage's end, and the run picks up where it stopped when started again
with the same ``--out``. During the last stage each checkpoint also writes the current EMA
weights as a loadable pipeline, so a model can be evaluated while it trains.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from torch import Tensor

from ..errors import InputError
from .captions import captions
from .checks import resolve_device
from .render import render, sample_factors
from .text_model import TextModelConfig, build_scheduler, build_text_encoder, build_tokenizer, build_unet, build_vae, save_pipeline
from .train import learning_rate, loss_weights, write_state

STAGES = ("pool", "vae", "encode", "unet")


@dataclass
class TextTrainConfig:
    out: str  # output directory (StableDiffusionPipeline layout); checkpoint/ inside makes it resumable
    minutes: float = 60.0  # wall-clock budget of the whole run, resumes included
    vae_minutes: float = 12.0  # of which the autoencoder gets this much
    pool: int = 40_000  # renders drawn once and shared by both training stages
    vae_batch_size: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # Stable Diffusion's KL weight: latents stay nearly deterministic
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    seed: int = 0
    device: str = "auto"
    checkpoint_minutes: float = 3.0
    model: TextModelConfig = field(default_factory=TextModelConfig)


class _Run:
    """The networks, optimisers and progress of one run, with checkpoint save and restore."""

    def __init__(self, config: TextTrainConfig, device: torch.device):
        torch.manual_seed(config.seed)
        self.config, self.device = config, device
        self.tokenizer = build_tokenizer(config.model)
        self.vae = build_vae(config.model).to(device)
        self.text_encoder = build_text_encoder(config.model, self.tokenizer).to(device)
        self.unet = build_unet(config.model).to(device)
        self.vae_optimiser = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=1e-4)
        self.denoiser_params = [*self.unet.parameters(), *self.text_encoder.parameters()]
        self.optimiser = torch.optim.AdamW(self.denoiser_params, lr=config.lr, weight_decay=1e-2)
        self.ema = EMAModel(self.denoiser_params, decay=config.ema_decay, use_ema_warmup=True, foreach=True)
        self.generator = torch.Generator(device).manual_seed(config.seed)
        self.stage, self.step, self.elapsed = "pool", 0, 0.0
        self.cpu_seconds = 0.0  # CPU time of this process and the runs it resumes (a niced run gets less than its wall time)
        self.marks: dict[str, float] = {}  # elapsed seconds at which each stage ended
        self.ckpt = Path(config.out) / "checkpoint"

    def save(self) -> None:
        write_state(self.ckpt, {
            "stage": self.stage, "step": self.step, "elapsed": self.elapsed, "marks": self.marks, "cpu_seconds": self.cpu_seconds,
            "vae": self.vae.state_dict(), "text_encoder": self.text_encoder.state_dict(), "unet": self.unet.state_dict(),
            "vae_optimiser": self.vae_optimiser.state_dict(), "optimiser": self.optimiser.state_dict(),
            "ema": self.ema.state_dict(), "generator": self.generator.get_state(),
            "scaling_factor": float(self.vae.config.scaling_factor),
        })

    def restore(self) -> bool:
        if not (self.ckpt / "state.pt").exists():
            return False
        # Our own checkpoint, written by save(): weights_only keeps unpickling safe.
        state = torch.load(self.ckpt / "state.pt", map_location=self.device, weights_only=True)
        for name in ("vae", "text_encoder", "unet", "vae_optimiser", "optimiser", "ema"):
            getattr(self, name).load_state_dict(state[name])
        self.ema.to(self.device)
        self.vae.register_to_config(scaling_factor=state["scaling_factor"])
        self.generator.set_state(state["generator"])
        self.stage, self.step, self.elapsed, self.marks = state["stage"], state["step"], state["elapsed"], state["marks"]
        self.cpu_seconds = state.get("cpu_seconds", 0.0)
        return True


def train_text(config: TextTrainConfig) -> Path:
    """Train (or resume) within the budget and save a ``StableDiffusionPipeline`` to ``config.out``."""
    if not (math.isfinite(config.minutes) and config.minutes > 0):
        raise InputError(f"--minutes must be a positive number, got {config.minutes}")
    if not 0 < config.vae_minutes < config.minutes:
        raise InputError(f"--vae-minutes must be between 0 and --minutes ({config.minutes}), got {config.vae_minutes}")
    if config.pool < config.batch_size or config.batch_size < 1 or config.vae_batch_size < 1:
        raise InputError(f"--pool ({config.pool}) must hold at least one batch (--batch-size {config.batch_size})")
    out = Path(config.out)
    run = _Run(config, resolve_device(config.device))
    if run.restore():
        print(f"resuming in stage {run.stage} at step {run.step} ({run.elapsed / 60:.1f} of {config.minutes} minutes)", flush=True)
    start, cpu_start = time.monotonic() - run.elapsed, time.process_time() - run.cpu_seconds

    def clock() -> float:
        run.elapsed, run.cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
        return run.elapsed

    if run.stage == "pool":
        _draw_pool(run, out)
        _next_stage(run, clock())
    pool = torch.load(out / "checkpoint" / "pool.pt", weights_only=True)
    if run.stage == "vae":
        _train_vae(run, pool["images"], clock, end=run.marks["pool"] + config.vae_minutes * 60)
        _next_stage(run, clock())
    if run.stage == "encode":
        _encode_pool(run, pool["images"], out)
        _next_stage(run, clock())
    latents = torch.load(out / "checkpoint" / "latents.pt", weights_only=True)
    _train_denoiser(run, latents, pool["factors"], clock)
    _write_pipeline(run, out)
    print(f"saved {out} after {run.step} denoiser steps, {run.elapsed / 60:.1f} minutes", flush=True)
    return out


def _next_stage(run: _Run, elapsed: float) -> None:
    run.marks[run.stage] = elapsed
    run.stage, run.step = STAGES[STAGES.index(run.stage) + 1], 0
    run.save()
    print(f"stage {run.stage} begins at {elapsed / 60:.1f} minutes", flush=True)


def _draw_pool(run: _Run, out: Path) -> None:
    """Render the pool once (uint8 keeps 40 000 faces under 0.5 GB); horse drawn uniformly too."""
    config = run.config
    generator = torch.Generator().manual_seed(config.seed + 1)
    factors = sample_factors(config.pool, generator, horse=True)
    images = torch.cat([(render(chunk, config.model.resolution) * 255).round().to(torch.uint8) for chunk in factors.split(500)])
    (out / "checkpoint").mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "factors": factors}, out / "checkpoint" / "pool.pt")


def _to_model(images: Tensor, device: torch.device) -> Tensor:
    return images.to(device).float() / 127.5 - 1


def _train_vae(run: _Run, images: Tensor, clock, end: float) -> None:
    config, begin = run.config, run.marks["pool"]
    last_ckpt = time.monotonic()
    run.vae.train()
    while clock() < end:
        index = torch.randint(0, images.shape[0], (config.vae_batch_size,), generator=run.generator, device=run.generator.device).cpu()
        x = _to_model(images[index], run.device)
        posterior = run.vae.encode(x).latent_dist
        recon = run.vae.decode(posterior.sample(generator=run.generator)).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + config.kl_weight * posterior.kl().mean()
        for group in run.vae_optimiser.param_groups:
            group["lr"] = learning_rate(config.vae_lr, run.step, config.warmup_steps, (run.elapsed - begin) / (end - begin))
        run.vae_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.vae.parameters(), 1.0)
        run.vae_optimiser.step()
        run.step += 1
        if run.step % 100 == 0:
            print(f"vae step {run.step} mse {mse.item():.5f} ({run.elapsed / 60:.1f} min)", flush=True)
        if time.monotonic() - last_ckpt > config.checkpoint_minutes * 60:
            run.save()
            last_ckpt = time.monotonic()
    run.vae.eval()


@torch.no_grad()
def _encode_pool(run: _Run, images: Tensor, out: Path) -> None:
    """Posterior means of the whole pool, and the scaling factor that gives them unit variance."""
    run.vae.eval()
    means = torch.cat([run.vae.encode(_to_model(chunk, run.device)).latent_dist.mean.cpu() for chunk in images.split(256)])
    run.vae.register_to_config(scaling_factor=float(1 / means.std()))
    torch.save(means, out / "checkpoint" / "latents.pt")
    print(f"encoded {means.shape[0]} latents, scaling factor {run.vae.config.scaling_factor:.4f}", flush=True)


def _train_denoiser(run: _Run, latents: Tensor, factors: Tensor, clock) -> None:
    config, begin, end = run.config, run.marks["encode"], run.config.minutes * 60
    scheduler = build_scheduler()
    alphas = scheduler.alphas_cumprod.to(run.device)
    scale = float(run.vae.config.scaling_factor)
    last_ckpt = time.monotonic()
    run.unet.train()
    run.text_encoder.train()
    while clock() < end:
        index = torch.randint(0, latents.shape[0], (config.batch_size,), generator=run.generator, device=run.generator.device).cpu()
        z0 = latents[index].to(run.device) * scale
        ids = run.tokenizer(captions(factors[index], run.generator), padding="max_length", max_length=config.model.max_tokens,
                            truncation=True, return_tensors="pt").input_ids.to(run.device)
        states = run.text_encoder(ids)[0]
        noise = torch.randn(z0.shape, generator=run.generator, device=run.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=run.generator, device=run.device)
        a = alphas[t][:, None, None, None]
        prediction = run.unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, states).sample
        loss = (loss_weights(scheduler, t, config.snr_gamma) * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in run.optimiser.param_groups:
            group["lr"] = learning_rate(config.lr, run.step, config.warmup_steps, (run.elapsed - begin) / max(end - begin, 1e-9))
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.denoiser_params, 1.0)
        run.optimiser.step()
        run.ema.step(run.denoiser_params)
        run.step += 1
        if run.step % 50 == 0:
            print(f"unet step {run.step} loss {loss.item():.4f} ({run.elapsed / 60:.1f} min)", flush=True)
        if time.monotonic() - last_ckpt > config.checkpoint_minutes * 60:
            run.save()
            _write_pipeline(run, Path(config.out))
            last_ckpt = time.monotonic()
    run.save()


def _write_pipeline(run: _Run, out: Path) -> None:
    """The VAE and the EMA denoiser as a pipeline, plus the recipe; the training copies are untouched."""
    unet, text_encoder = copy.deepcopy(run.unet), copy.deepcopy(run.text_encoder)
    run.ema.copy_to([*unet.parameters(), *text_encoder.parameters()])
    save_pipeline(out, copy.deepcopy(run.vae), text_encoder, run.tokenizer, unet)
    threads = torch.get_num_threads() if run.device.type == "cpu" else None
    recipe = asdict(run.config) | {
        "stage": run.stage, "denoiser_steps": run.step, "stage_ends_minutes": {k: round(v / 60, 2) for k, v in run.marks.items()},
        "minutes_trained": round(run.elapsed / 60, 2), "device": str(run.device), "threads": threads,
        "cpu_minutes": round(run.cpu_seconds / 60, 1),  # measured: process CPU time, resumes included
    }
    (out / "training.json").write_text(json.dumps(recipe, indent=2, default=list))
