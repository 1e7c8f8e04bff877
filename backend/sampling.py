"""DDIM sampling that keeps its trajectory, with optional quality boosting at the end.

An edit at timestep t only has to recompute the steps from t down to 0, so the path from the
seed's noise to every x_t is kept. The DDIM update is written out here rather than taken from
``DDIMScheduler.step`` because that method infers the previous timestep from a fixed step
count, and Eigenface needs arbitrary sub-schedules (short previews that start exactly at the
edit timestep). The noise schedule itself (betas, alphas_cumprod, timestep spacing) comes from
the model's own scheduler object, so any diffusers config is honoured.

Quality boosting (Kwon et al. 2023, Asyrp; the official Pullback code): the last part of the
schedule (t <= 0.2 T) takes stochastic DDPM steps (eta = 1), whose fresh noise lets the model
wash out the speckle an edit leaves; its noise is drawn from the sample's seed and the step's
timestep, the same for every image of a batch, so an edit gives the same image every time and
the unedited image shares its noise (:class:`Boost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .models import DEFAULT_GUIDANCE, Conditioning, DiffusionModel

#: The default number of DDIM steps, shared by the CLI, the service and the app so images match.
DEFAULT_STEPS = 20


@dataclass(frozen=True)
class Trajectory:
    """A deterministic sampling path.

    timesteps: the DDIM schedule, descending, length S.
    latents: (S + 1, *sample_shape), float32 on CPU; latents[i] is x at timesteps[i]
        (before step i) and latents[S] is the clean x_0.
    """

    timesteps: tuple[int, ...]
    latents: Tensor

    @property
    def x0(self) -> Tensor:
        return self.latents[-1]


@dataclass(frozen=True)
class Boost:
    """Stochastic (eta = 1) steps for timesteps t <= ``until`` * T, with noise fixed by ``seed``."""

    seed: int
    until: float = 0.2  # the official code's switch point on pixel models

    def noise(self, t: int, shape: Sequence[int]) -> Tensor:
        """The step's noise: one draw per (seed, timestep), on the CPU like the initial noise."""
        return torch.randn(tuple(shape), generator=torch.Generator().manual_seed((self.seed * 1_000_003 + t) % 2**63))


@dataclass(frozen=True)
class NoiseSchedule:
    """What the DDIM update needs from a diffusers scheduler config."""

    alphas_cumprod: Tensor  # (T,) float64
    final_alpha_cumprod: float
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    thresholding: bool = False  # Imagen's dynamic thresholding (DeepFloyd IF); overrides clip_sample, as in diffusers
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        from diffusers import DDIMScheduler

        ddim = DDIMScheduler.from_config(config)
        alphas = ddim.alphas_cumprod.double()
        set_alpha_to_one = config.get("set_alpha_to_one", True)
        return cls(
            alphas_cumprod=alphas,
            final_alpha_cumprod=1.0 if set_alpha_to_one else float(alphas[0]),
            prediction_type=ddim.config.prediction_type,
            clip_sample=bool(ddim.config.clip_sample),
            clip_sample_range=float(ddim.config.clip_sample_range),
            thresholding=bool(ddim.config.thresholding),
            dynamic_thresholding_ratio=float(ddim.config.dynamic_thresholding_ratio),
            sample_max_value=float(ddim.config.sample_max_value),
        )

    def alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod


def schedule(model: DiffusionModel, steps: int) -> tuple[int, ...]:
    """The model's own DDIM timesteps for ``steps`` steps (its timestep_spacing applies)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(model.scheduler_config)
    ddim.set_timesteps(steps)
    return tuple(int(t) for t in ddim.timesteps)


def _prediction(output: Tensor, x: Tensor) -> Tensor:
    """The part of a U-Net output that predicts epsilon / v / x_0.

    Models with a learned variance (``variance_type="learned_range"``, e.g. improved DDPM or
    DeepFloyd IF) output twice the sample's channels, the variance last, as diffusers'
    schedulers split it; deterministic DDIM has no use for the variance.
    """
    return output[:, : x.shape[1]] if output.shape[1] == 2 * x.shape[1] else output


def unet_output(model: DiffusionModel, x: Tensor, t: int, context: Tensor | None) -> Tensor:
    """U-Net prediction for a batch x at one timestep; ``context`` is (1, tokens, dim) or None."""
    timestep = torch.tensor(t, device=x.device)
    if context is None:
        return _prediction(model.unet(x, timestep).sample, x)
    return _prediction(model.unet(x, timestep, encoder_hidden_states=context.expand(x.shape[0], -1, -1)).sample, x)


def guided_output(model: DiffusionModel, x: Tensor, t: int, cond: Conditioning | None, guidance_scale: float) -> Tensor:
    """U-Net output with classifier-free guidance (one batched call for both branches)."""
    if cond is None:
        return unet_output(model, x, t, None)
    if guidance_scale == 1.0:
        return unet_output(model, x, t, cond.cond)
    both = torch.cat([x, x])
    context = torch.cat([cond.uncond.expand(x.shape[0], -1, -1), cond.cond.expand(x.shape[0], -1, -1)])
    out = _prediction(model.unet(both, torch.tensor(t, device=x.device), encoder_hidden_states=context).sample, both)
    uncond, conditioned = out.chunk(2)
    return uncond + guidance_scale * (conditioned - uncond)


def predict_x0(noise: NoiseSchedule, x: Tensor, output: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """The clean sample and the noise a model output implies at x_t: (x_0, epsilon)."""
    a = noise.alpha(t)
    x, output = x.float(), output.float()
    # 1. predicted x_0 and epsilon from the model output, whatever it parameterises
    if noise.prediction_type == "epsilon":
        x0 = (x - (1 - a) ** 0.5 * output) / a**0.5
        eps = output
    elif noise.prediction_type == "v_prediction":
        x0 = a**0.5 * x - (1 - a) ** 0.5 * output
        eps = a**0.5 * output + (1 - a) ** 0.5 * x
    elif noise.prediction_type == "sample":
        x0 = output
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
    else:
        raise ValueError(f"unsupported prediction_type {noise.prediction_type!r}")
    # 2. pixel models clip or threshold x_0 to the data range; epsilon is re-derived to stay consistent
    if noise.thresholding:
        x0 = dynamic_threshold(x0, noise.dynamic_thresholding_ratio, noise.sample_max_value)
    elif noise.clip_sample:
        x0 = x0.clamp(-noise.clip_sample_range, noise.clip_sample_range)
    if noise.thresholding or noise.clip_sample:
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
    return x0, eps


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022), as diffusers' schedulers apply it.

    Each sample is clamped to the ``ratio`` quantile s of its absolute values (s in [1,
    max_value]) and divided by s: saturated pixels at high guidance are pulled back into range
    instead of being clipped flat.
    """
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)[:, None]
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)


def ddim_step(noise: NoiseSchedule, x: Tensor, output: Tensor, t: int, t_prev: int) -> Tensor:
    """One deterministic DDIM update x_t -> x_{t_prev} (Song et al. 2021, eq. 12 with sigma = 0)."""
    x0, eps = predict_x0(noise, x, output, t)
    # 3. "direction pointing to x_t" plus the rescaled x_0
    a_prev = noise.alpha(t_prev)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def ddpm_step(noise: NoiseSchedule, x: Tensor, output: Tensor, t: int, t_prev: int, z: Tensor) -> Tensor:
    """One stochastic update x_t -> x_{t_prev} with eta = 1 (DDIM eq. 12 with sigma_t at its DDPM
    value), adding the given standard-normal noise ``z``."""
    x0, eps = predict_x0(noise, x, output, t)
    a, a_prev = noise.alpha(t), noise.alpha(t_prev)
    sigma = ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
    return a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps + sigma * z.to(x)


def initial_noise(model: DiffusionModel, seed: int) -> Tensor:
    """x_T for a seed, drawn on the CPU so that every device starts from the same noise."""
    return torch.randn(model.sample_shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def denoise(
    model: DiffusionModel,
    x: Tensor,
    timesteps: Sequence[int],
    cond: Conditioning | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE,
    on_step: Callable[[int, Tensor], None] | None = None,
    boost: Boost | None = None,
) -> Tensor:
    """Run DDIM from x (B, *sample_shape) at timesteps[0] through every listed timestep to x_0
    (with ``boost``, stochastic steps at its timesteps)."""
    noise = NoiseSchedule.from_config(model.scheduler_config)
    x = x.to(model.device, torch.float32)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        with model.autocast():
            output = guided_output(model, x, t, cond, guidance_scale)
        if boost is not None and t <= boost.until * model.num_train_timesteps:
            x = ddpm_step(noise, x, output, t, t_prev, boost.noise(t, x.shape[1:]))
        else:
            x = ddim_step(noise, x, output, t, t_prev)
        if on_step is not None:
            on_step(i, x)
    return x


def render(
    model: DiffusionModel, x: Tensor, timesteps: Sequence[int], cond: Conditioning | None = None, guidance_scale: float = DEFAULT_GUIDANCE, boost: Boost | None = None
) -> Tensor:
    """x (B, *sample_shape) at timesteps[0] -> images (B, 3, H, W) in [0, 1] on the CPU: DDIM to
    x_0 (with ``boost``, quality boosting), then the VAE for latent models. The one way an edit
    or a batch of samples becomes pixels."""
    return model.decode(denoise(model, x, timesteps, cond, guidance_scale, boost=boost))


def sample_trajectory(
    model: DiffusionModel, seed: int, steps: int = DEFAULT_STEPS, cond: Conditioning | None = None, guidance_scale: float = DEFAULT_GUIDANCE, boost: bool = False
) -> Trajectory:
    """Sample from the seed's noise and keep x at every timestep of the schedule (``boost``:
    quality boosting with the seed's noise, :class:`Boost`)."""
    timesteps = schedule(model, steps)
    x_T = initial_noise(model, seed)
    latents = [x_T]
    on_step = lambda _, x: latents.append(x[0].float().cpu())  # noqa: E731
    denoise(model, x_T[None], timesteps, cond, guidance_scale, on_step=on_step, boost=Boost(seed) if boost else None)
    return Trajectory(timesteps, torch.stack(latents))


def sub_schedule(timesteps: Sequence[int], start: int, steps: int | None) -> tuple[int, ...]:
    """The schedule from index ``start`` on, thinned to ``steps`` timesteps (always keeps the first).

    Used for previews: the same start x_t, fewer denoising steps.
    """
    rest = tuple(timesteps[start:])
    if steps is None or steps >= len(rest):
        return rest
    picks = np.unique(np.round(np.linspace(0, len(rest) - 1, max(steps, 1))).astype(int))
    return tuple(rest[i] for i in picks)
