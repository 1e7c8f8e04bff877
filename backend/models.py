"""Loading diffusers checkpoints into one small interface the rest of Eigenface uses.

Two families are supported, told apart by their U-Net class rather than by name, so any
checkpoint saved in diffusers layout works: pixel-space models (``UNet2DModel`` + scheduler,
as ``DDPMPipeline``/``DDIMPipeline`` save them) and latent text-to-image models
(``UNet2DConditionModel`` + VAE + CLIP text encoder, Stable Diffusion 1.x/2.x).

Weights stay in float32 on every device; rendering on CUDA runs under fp16/bf16 autocast, so
the Jacobian code always has exact fp32 weights to differentiate and no second copy is kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .cancel import watch
from .errors import ModelError, first_line

logger = logging.getLogger(__name__)

#: Where the built-in models live, relative to the repository root: the pixel model, and the
#: text-to-image model in Stable Diffusion's layout (it loads like any SD checkpoint).
BUILTIN_MODEL = Path(__file__).resolve().parent.parent / "assets" / "catpeople"
BUILTIN_TEXT_MODEL = BUILTIN_MODEL.parent / "catpeople-text"

#: A checkpoint's own edit settings live in this file beside model_index.json (optional).
SETTINGS_FILE = "eigenface.json"

#: Classifier-free guidance scale when neither the request nor the checkpoint names one (SD's usual).
DEFAULT_GUIDANCE = 7.5
#: Stable Diffusion 1.x's own DDIM configuration (its scheduler_config.json), shared by the built-in
#: text model, the tiny test pipelines and the random SD-1.5 benchmark model.
SD_DDIM_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)

_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class Conditioning:
    """Text conditioning for one prompt: the prompt's embedding and, for CFG, the empty one."""

    prompt: str
    cond: Tensor  # (1, tokens, dim)
    uncond: Tensor  # (1, tokens, dim)
    truncated: bool = False  # the prompt was longer than the tokenizer allows


@dataclass(frozen=True)
class EditSettings:
    """Where along the schedule a checkpoint's directions are worth editing, and how far.

    The method's generic choice (0.6 T: coarse semantics, strengths up to about 0.5) suits
    Stable Diffusion; a small 64 px model keeps its nameable features (ears, eyes) at lower
    noise and leaves its data manifold at smaller strengths. So a checkpoint may say so in
    ``eigenface.json`` (``{"timestep": 0.3, "strength": 0.2, "seed": 72}``), and the CLI, the
    service and the app start from it; an explicit timestep or strength always wins. ``seed``
    only picks the page's first image. A text model may add the prompt the page opens with and
    the guidance scale it was trained for (a small model wants less than SD's 7.5), and any
    checkpoint the strength its sliders stop at (``range_cap``): how far an edit stays an image
    of the data depends on the model, and only a measurement on it says (bench/slider_ranges.py).
    ``hf_criterion: false`` ends every slider at that cap: for a model on which the calibration's
    high-frequency reading was measured not to track its images (the built-in text model's latents).
    """

    timestep: float = 0.6  # fraction of T in (0, 1]
    strength: float = 0.5  # a typical |strength| for atlases, GIFs and naming directions
    seed: int = 0  # the seed the web page opens with: a sample that shows the model well
    prompt: str = ""  # the prompt the web page opens with (text models)
    guidance_scale: float = DEFAULT_GUIDANCE  # classifier-free guidance when a request names none
    range_cap: float | None = None  # the furthest a calibrated slider reaches; None: ranges.MAX_END
    hf_criterion: bool = True  # whether the calibration's high-frequency reading may end a slider before the cap

    @classmethod
    def read(cls, directory: Path) -> "EditSettings":
        path = directory / SETTINGS_FILE
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ValueError(f"expected an object, got {type(values).__name__}")
            numbers = {key: float(values[key]) for key in ("timestep", "strength", "guidance_scale", "range_cap") if key in values}
            seed = values.get("seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
            prompt = values.get("prompt", "")
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be text, got {prompt!r}")
            hf_criterion = values.get("hf_criterion", True)
            if not isinstance(hf_criterion, bool):
                raise ValueError(f"hf_criterion must be true or false, got {hf_criterion!r}")
            settings = cls(**numbers, seed=seed, prompt=prompt, hf_criterion=hf_criterion)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: not an Eigenface settings file ({{\"timestep\": 0.6, \"strength\": 0.5, \"seed\": 0}}): {exc}") from None
        if not 0 < settings.timestep <= 1:
            raise ModelError(f"{path}: timestep must be a fraction of T in (0, 1], got {settings.timestep}")
        if not (math.isfinite(settings.strength) and settings.strength > 0):
            raise ModelError(f"{path}: strength must be positive, got {settings.strength}")
        if not (math.isfinite(settings.guidance_scale) and 0 <= settings.guidance_scale <= 50):
            raise ModelError(f"{path}: guidance_scale must be within [0, 50], got {settings.guidance_scale}")
        if settings.range_cap is not None and not (math.isfinite(settings.range_cap) and settings.range_cap > 0):
            raise ModelError(f"{path}: range_cap must be a positive strength, got {settings.range_cap}")
        return settings


@dataclass
class DiffusionModel:
    """A loaded checkpoint: its U-Net, scheduler config and, for latent models, VAE and text encoder."""

    name: str
    unet: torch.nn.Module
    scheduler_config: dict
    device: torch.device
    render_dtype: torch.dtype  # autocast dtype for rendering (float32 = no autocast)
    vae: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: object | None = None
    settings: EditSettings = field(default_factory=EditSettings)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        watch(self.unet)  # every forward checks the current cancellation token (backend.cancel)

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one x_t (C, H, W): pixels for pixel models, VAE latents otherwise."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)

    @property
    def max_prompt_tokens(self) -> int:
        """The tokenizer's length, as pipelines pad prompts; a tokenizer saved without one reports
        transformers' "very large integer", and then the text encoder's position limit is used."""
        if self.tokenizer is None:
            return 0
        length = int(getattr(self.tokenizer, "model_max_length", 77))
        if length > 100_000:
            length = int(getattr(self.text_encoder.config, "max_position_embeddings", None) or 77)
        return length

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> Conditioning:
        """CLIP embeddings of the prompt and of the empty prompt (for classifier-free guidance)."""
        if not self.conditional:
            raise ModelError("this model is unconditional: it takes no prompt")
        limit = self.max_prompt_tokens
        full = self.tokenizer(prompt, truncation=False)["input_ids"]
        embeds = []
        for text in (prompt, ""):
            ids = self.tokenizer(text, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
            embeds.append(self.text_encoder(ids.to(self.device))[0].float())
        return Conditioning(prompt, embeds[0], embeds[1], truncated=len(full) > limit)

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Clean samples (B, *sample_shape) -> images (B, 3, H, W) in [0, 1], float32 on CPU."""
        if self.vae is not None:
            scale = self.vae.config.scaling_factor
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            with self.autocast():
                x0 = self.vae.decode(x0.to(self.device) / scale + shift).sample
        return ((x0.float() + 1) / 2).clamp(0, 1).cpu()

    def autocast(self):
        """Reduced-precision context for rendering (a no-op in float32)."""
        enabled = self.render_dtype != torch.float32 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=self.render_dtype, enabled=enabled)


def parse_device(device: str | torch.device | None) -> torch.device:
    """A torch device from a user's text; None or "auto": CUDA when present, else the CPU.

    Whether the device is usable is learnt when a model moves there (a ZeroGPU Space has CUDA
    only inside its GPU workers), so only the spelling is checked here.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None


def hub_allowed() -> bool:
    """Hub downloads only when the environment has not switched them off."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in {"1", "true", "yes"}


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and all(set(p) <= _HUB_ID_CHARS for p in parts)


def load_model(name: str | os.PathLike | None = None, device: str | torch.device | None = None, render_dtype: torch.dtype | None = None) -> DiffusionModel:
    """Load a diffusers checkpoint from a local directory, or from the hub when that is allowed.

    Only safetensors weights are accepted: pickled ``.bin`` files can run code when loaded.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # its "Loading weights" bar (text encoders) would break the CLI's one-line errors

    source = str(BUILTIN_MODEL if name is None else name)
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelError(f"{source} is not a diffusers pipeline directory (no model_index.json)")
        source, local_only = str(local), True
    elif _looks_like_hub_id(source):
        if not hub_allowed():
            raise ModelError(f"model {source!r} is not a local directory and hub downloads are off (HF_HUB_OFFLINE=1)")
        local_only = False
    else:
        raise ModelError(f"model {source!r} not found: give a diffusers pipeline directory or a hub id 'owner/name'")

    device = parse_device(device)
    if render_dtype is None:
        render_dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        index = DiffusionPipeline.load_config(source, local_files_only=local_only)
        extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
        if local_only and (variant := _only_variant(local)):
            extra["variant"] = variant
        pipe = DiffusionPipeline.from_pretrained(source, local_files_only=local_only, use_safetensors=True, dtype=torch.float32, **extra)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelError(f"could not load model {source!r}: {first_line(exc)}") from None

    unet = getattr(pipe, "unet", None)
    kind = type(unet).__name__ if unet is not None else "no U-Net (a transformer denoiser?)"
    # Latent-diffusion pipelines name their parts differently: LDMPipeline's autoencoder is a
    # VQModel called "vqvae", LDMTextToImagePipeline's text encoder is "bert".
    vae = _component(pipe, "vae", "vqvae")
    if kind == "UNet2DModel":
        text_encoder = tokenizer = None
    elif kind == "UNet2DConditionModel":
        text_encoder, tokenizer = _component(pipe, "text_encoder", "bert"), _component(pipe, "tokenizer")
        if text_encoder is None or tokenizer is None:  # no VAE is fine: a pixel-space text model (DeepFloyd IF's first stage)
            raise ModelError(f"{source}: a conditional U-Net needs a text encoder and a tokenizer")
    else:
        raise ModelError(f"{source}: unsupported pipeline {type(pipe).__name__} (needs a UNet2DModel or UNet2DConditionModel, got {kind})")
    _check_channels(source, unet.config, vae)
    if "beta_schedule" not in pipe.scheduler.config:  # variance-exploding, EDM / consistency, flow matching
        raise ModelError(f"{source}: its scheduler ({type(pipe.scheduler).__name__}) has no beta schedule; Eigenface samples "
                         "with DDIM, which needs the discrete variance-preserving schedule of DDPM-family schedulers")
    extra = _extra_conditioning(unet.config)
    if extra:
        raise ModelError(f"{source}: its U-Net needs conditioning beyond the timestep and a text prompt ({extra}; e.g. SDXL's "
                         "size and pooled-text embeddings, or class labels), which Eigenface does not supply")

    try:
        for module in (unet, vae, text_encoder):
            if module is not None:
                module.to(device).eval().requires_grad_(False)
    except (AssertionError, RuntimeError) as exc:  # torch's "not compiled with CUDA", no such GPU, out of memory
        raise ModelError(f"could not move model {source!r} to device {device}: {first_line(exc)}") from None
    return DiffusionModel(
        name=str(name) if name is not None else "builtin:catpeople",
        unet=unet,
        scheduler_config=dict(pipe.scheduler.config),
        device=device,
        render_dtype=render_dtype,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        settings=EditSettings.read(local) if local_only else _hub_settings(source),
    )


def _only_variant(directory: Path) -> str | None:
    """The weights variant of a local pipeline saved with only variant files (``save_pretrained(variant="fp16")``
    writes ``*.fp16.safetensors``), which diffusers will not load unless told; None when plain weights exist."""
    names = [path.name for path in directory.glob("*/*.safetensors")]
    # "model.fp16.safetensors", or a shard of it: "model.fp16-00001-of-00002.safetensors"
    variants = {re.sub(r"-\d+-of-\d+$", "", name.split(".")[-2]) for name in names if name.count(".") >= 2}
    if names and len(variants) == 1 and all(name.count(".") >= 2 for name in names):
        return variants.pop()
    return None


def _component(pipe, *names: str):
    """The first of the pipeline's components called one of ``names`` that is present."""
    return next((part for name in names if (part := getattr(pipe, name, None)) is not None), None)


def _check_channels(source: str, config, vae) -> None:
    """Refuse U-Nets whose input is more than the sample they denoise.

    Inpainting (9 channels in, 4 out), InstructPix2Pix (8 in) and upscalers concatenate an
    image to x_t; Eigenface has no such image to give. A U-Net may output twice its input
    (a learned variance, see ``sampling._prediction``).
    """
    c_in, c_out = config.in_channels, config.out_channels
    if c_out not in (c_in, 2 * c_in):
        raise ModelError(f"{source}: its U-Net takes {c_in} input channels but predicts {c_out}: it needs an image concatenated "
                         "to the sample (inpainting, InstructPix2Pix, upscaling), which Eigenface does not supply")
    latent = vae.config.get("latent_channels") if vae is not None else None
    if latent is not None and latent != c_in:
        raise ModelError(f"{source}: its autoencoder has {latent} latent channels but the U-Net takes {c_in}")


#: U-Net config values that make its forward pass need inputs besides (x_t, t, text states):
#: class labels, or ``added_cond_kwargs`` (SDXL's "text_time", Kandinsky's image embeddings).
#: A "text" addition or a "text_proj" projection works from the text states alone (DeepFloyd IF).
_NEEDS_MORE = {
    "class_embed_type": None,  # any value: class labels
    "num_class_embeds": None,
    "addition_embed_type": {"text_time", "text_image", "image", "image_hint"},
    "encoder_hid_dim_type": {"text_image_proj", "image_proj", "ip_image_proj"},
}


def _extra_conditioning(config) -> str:
    """The U-Net config entries that ask for inputs Eigenface does not supply, as "key=value" text."""
    found = []
    for key, values in _NEEDS_MORE.items():
        value = config.get(key)
        if value is not None and (values is None or value in values):
            found.append(f"{key}={value!r}")
    return ", ".join(found)


def _hub_settings(repo_id: str) -> EditSettings:
    """A hub checkpoint's eigenface.json, if it has one (most do not: then the defaults)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(repo_id, SETTINGS_FILE)
    except EntryNotFoundError:
        return EditSettings()
    except Exception as exc:  # noqa: BLE001 - network or cache trouble with an optional file must not lose the loaded weights
        logger.warning("could not read %s of %s (%s); using the default edit settings", SETTINGS_FILE, repo_id, first_line(exc))
        return EditSettings()
    return EditSettings.read(Path(path).parent)
