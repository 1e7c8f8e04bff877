"""Training the built-in cat-people diffusion model.

A plain DDPM recipe (epsilon prediction, 1000 training steps, linear betas) on renders drawn
fresh every step, so there is no dataset on disk and no epoch to overfit. The learning rate
follows a cosine over the *time* budget, which keeps a resumed run on the same schedule.
The result is saved exactly as ``DDPMPipeline.save_pretrained`` lays it out, so the built-in
model loads through the same path as any diffusers checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from ..errors import InputError, first_line
from .checks import check_budget, resolve_device
from .render import render, sample_factors


@dataclass
class TrainConfig:
    out: str  # output directory (diffusers layout); a checkpoint/ inside makes it resumable
    resolution: int = 64
    minutes: float = 10.0  # wall-clock budget, resumes included
    batch_size: int = 128
    lr: float = 3e-4
    warmup_steps: int = 200
    ema_decay: float = 0.9995
    seed: int = 0
    device: str = "auto"
    weights_dtype: str = "float32"  # dtype of the saved weights; float16 halves the file
    checkpoint_minutes: float = 2.0
    init: str | None = None  # a pipeline directory whose U-Net weights to start from (fine-tuning)
    compile: bool = False  # torch.compile the training forward: fuses the GroupNorm/SiLU kernels that bound a GPU step
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting; None = the plain epsilon MSE
    block_out_channels: tuple[int, ...] = field(default=(32, 64, 96, 128))
    layers_per_block: int = 2


def build_unet(config: TrainConfig) -> UNet2DModel:
    """A small pixel U-Net: self-attention at 1/4 resolution, bottleneck (h-space) at 1/8."""
    down = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    return UNet2DModel(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=down[: len(config.block_out_channels)],
        up_block_types=up[-len(config.block_out_channels) :],
        norm_num_groups=16,
        attention_head_dim=32,
    )


def train(config: TrainConfig) -> Path:
    """Train (or resume) for the configured budget and save the EMA weights as a pipeline."""
    # the U-Net halves the image once per block but the last
    check_budget(config.minutes, config.batch_size, config.resolution, 2 ** (len(config.block_out_channels) - 1))
    if config.snr_gamma is not None and not config.snr_gamma > 0:
        raise InputError(f"--snr-gamma must be positive, got {config.snr_gamma}")
    out = Path(config.out)
    ckpt = out / "checkpoint"
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    unet = build_unet(config)
    if config.init is not None:
        try:
            unet.load_state_dict(UNet2DModel.from_pretrained(config.init, subfolder="unet", dtype=torch.float32).state_dict())
        except (OSError, ValueError, RuntimeError) as exc:  # missing, not a pipeline, or another architecture
            raise InputError(f"--init {config.init}: cannot start from its U-Net ({first_line(exc)})") from None
    # Benchmark mode picks the fastest convolution once per shape (they never change in training).
    # (channels_last was measured 25 % slower on an H200: the step is bound by GroupNorm/SiLU
    # elementwise kernels, which are slower in that layout; BENCHMARKS.md.)
    unet = unet.to(device)
    torch.backends.cudnn.benchmark = True
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, foreach=True, model_cls=UNet2DModel, model_config=unet.config)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=1e-2)
    step, elapsed = 0, 0.0
    generator = torch.Generator(device).manual_seed(config.seed)
    if (ckpt / "state.pt").exists():
        # Our own checkpoint, written by this function: weights_only keeps unpickling safe.
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
        unet.load_state_dict(state["unet"])
        optimiser.load_state_dict(state["optimiser"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        step, elapsed = state["step"], state["elapsed"]
        generator.set_state(state["generator"])
        print(f"resuming at step {step} ({elapsed / 60:.1f} of {config.minutes} minutes)", flush=True)

    budget = config.minutes * 60
    alphas = scheduler.alphas_cumprod.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    forward = torch.compile(unet) if config.compile else unet  # shares unet's parameters
    bar = tqdm(total=int(budget), initial=int(elapsed), unit="s", desc="training")
    last_ckpt, start = time.monotonic(), time.monotonic() - elapsed
    while (elapsed := time.monotonic() - start) < budget:
        factors = sample_factors(config.batch_size, generator, device)
        x0 = render(factors, config.resolution) * 2 - 1
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=generator, device=device)
        a = alphas[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = learning_rate(config.lr, step, config.warmup_steps, elapsed / budget)
        for group in optimiser.param_groups:
            group["lr"] = lr
        with autocast:
            prediction = forward(xt, t).sample.float()
        loss = (loss_weights(scheduler, t, config.snr_gamma) * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        ema.step(unet.parameters())
        step += 1
        if step % 50 == 0:
            bar.set_postfix(step=step, loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", steps_per_s=f"{step / max(elapsed, 1e-9):.1f}")
            bar.update(int(elapsed) - bar.n)
        if time.monotonic() - last_ckpt > config.checkpoint_minutes * 60:
            _checkpoint(ckpt, unet, optimiser, ema, step, elapsed, generator)
            last_ckpt = time.monotonic()
    bar.close()
    _checkpoint(ckpt, unet, optimiser, ema, step, elapsed, generator)
    return save_pipeline(unet, ema, scheduler, out, config, step)


def learning_rate(peak: float, step: int, warmup: int, done: float) -> float:
    """Linear warm-up, then a cosine over the fraction ``done`` of the time budget down to a tenth of the peak."""
    return peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0))))


def loss_weights(scheduler: DDPMScheduler, t: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """Per-sample weights of the epsilon MSE.

    Min-SNR-gamma (Hang et al. 2023, diffusers' ``--snr_gamma``) weights timestep t by
    min(SNR, gamma) / SNR: the nearly clean timesteps, whose epsilon is easy and whose gradients
    dominate a plain MSE, count less, and the noisy ones that fix an image's layout and colours
    (where ``catpeople_eval --sections denoising`` finds the shipped model's x0 biased) keep full weight.
    """
    if snr_gamma is None:
        return torch.ones(t.shape, device=t.device)
    snr = compute_snr(scheduler, t)
    return snr.clamp(max=snr_gamma) / snr


def _checkpoint(ckpt: Path, unet, optimiser, ema: EMAModel, step: int, elapsed: float, generator: torch.Generator) -> None:
    write_state(ckpt, {"unet": unet.state_dict(), "optimiser": optimiser.state_dict(), "ema": ema.state_dict(), "step": step, "elapsed": elapsed, "generator": generator.get_state()})


def write_state(ckpt: Path, state: dict) -> None:
    """Write ``ckpt/state.pt`` through a temporary file and a rename, so a run killed mid-write
    leaves the previous checkpoint whole and the next start resumes from it."""
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(state, ckpt / "state.pt.tmp")
    (ckpt / "state.pt.tmp").replace(ckpt / "state.pt")


def save_pipeline(unet: UNet2DModel, ema: EMAModel, scheduler: DDPMScheduler, out: Path, config: TrainConfig, step: int) -> Path:
    """Write the EMA weights as a ``DDPMPipeline`` (model_index.json, unet/, scheduler/)."""
    ema.copy_to(unet.parameters())
    unet = unet.to("cpu", dtype=getattr(torch, config.weights_dtype)).eval()
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    info = asdict(config) | {"steps_trained": step}
    (out / "training.json").write_text(json.dumps(info, indent=2, default=list))
    return out
