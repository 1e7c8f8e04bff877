"""Tiny, seeded, random-weight diffusers models for the tests and the benchmarks.

Eigenface must work on *any* diffusers checkpoint, and neither the tests nor a CPU smoke run of
the benchmarks can reach the model hub, so these builders make stand-ins in code, as diffusers'
own tests do with ``get_dummy_components()``. The ``save_tiny_*`` builders write checkpoints to
disk in the standard diffusers layout (``model_index.json`` + one sub-folder per component,
weights as ``*.safetensors`` only); the weights are random but seeded, so repeated builds give
byte-identical files, and a U-Net forward takes a few milliseconds on a laptop CPU.
:func:`random_sd` builds Stable Diffusion 1.5's architecture (or the same scaled down) in
memory, for timing the real sizes on a GPU without a download.

Shapes (defaults):

* ``save_tiny_ddpm(sample_size=16)``: pixel-space ``UNet2DModel``; sample
  ``(B, 3, 16, 16)``; h-space (``unet.mid_block`` output) ``(B, 32, 8, 8)``.
* ``save_tiny_sd(sample_size=8)``: latent ``(B, 4, 8, 8)``; h-space
  ``(B, 64, 4, 4)``; the tiny VAE downsamples by 2 (not 8 as in real SD), so
  images are ``2 * sample_size`` = 16 px; text embeddings ``(B, 77, 32)``.
* ``random_sd("sd-tiny")``: latent ``(4, 16, 16)``, h ``(64, 2, 2)``, 128 px images;
  ``random_sd("sd15")``: SD 1.5's 860 M-parameter U-Net and its VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .models import SD_DDIM_CONFIG, Conditioning, DiffusionModel
from .vocab import clip_tokenizer, write_clip_tokenizer_files

# Words that get whole-word BPE merges in the hand-written tokenizer.  Anything
# else still tokenizes (byte-level fallback to single characters), so every
# prompt maps to distinct, non-unk ids.
_TOKENIZER_WORDS = (
    "a", "an", "the", "of", "photo", "portrait", "cat", "dog", "horse", "person",
    "man", "woman", "face", "smiling", "old", "young", "red", "blue", "painting",
)

_DDPM_HSPACE_CHANNELS = 32
_SD_HSPACE_CHANNELS = 64


def make_tiny_clip_tokenizer():
    """Build the hand-written CLIP tokenizer (no hub access needed): whole-word tokens for
    ``_TOKENIZER_WORDS``, byte-level fallback for anything else."""
    tok = clip_tokenizer(_TOKENIZER_WORDS, 77)
    a, b = tok("a cat").input_ids, tok("a horse").input_ids
    assert a != b, "tokenizer maps distinct prompts to identical ids"
    return tok


def dummy_ddpm_components(sample_size: int = 16, seed: int = 0, channels: int = 3, learned_variance: bool = False) -> dict:
    """The components of a tiny unconditional pixel-space ``DDPMPipeline`` (diffusers'
    ``get_dummy_components``), seeded without touching the caller's RNG.

    The U-Net has one attention down/up block (plus the attention in its mid block) so attention
    code paths (processors, hooks) are exercised; h-space is ``(B, 32, sample_size // 2,
    sample_size // 2)``. ``channels`` = 1 makes a grayscale model; ``learned_variance`` doubles
    the output channels, as improved-DDPM checkpoints do.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):  # don't disturb the caller's RNG
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=channels,
            out_channels=2 * channels if learned_variance else channels,
            block_out_channels=(16, _DDPM_HSPACE_CHANNELS),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
    scheduler = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range" if learned_variance else "fixed_small")
    return {"unet": unet, "scheduler": scheduler}


def save_tiny_ddpm(path: Path, sample_size: int = 16, seed: int = 0, channels: int = 3, learned_variance: bool = False) -> Path:
    """Save the :func:`dummy_ddpm_components` pipeline to ``path``."""
    from diffusers import DDPMPipeline

    path = Path(path)
    DDPMPipeline(**dummy_ddpm_components(sample_size, seed, channels, learned_variance)).save_pretrained(path, safe_serialization=True)
    return path


def _tiny_clip_text_encoder(tokenizer):
    """A 2-layer, 32-wide CLIP text encoder (diffusers' dummy components), in eval mode; draws from torch's RNG."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
                            max_position_embeddings=77, vocab_size=1000)
    return CLIPTextModel(config).eval()


def dummy_sd_components(seed: int = 0, sample_size: int = 8) -> dict:
    """The components of a tiny text-conditioned ``StableDiffusionPipeline``.

    Modelled on diffusers' own ``get_dummy_components``, but with a hand-written
    tokenizer (no hub).  ``sample_size`` is the *latent* size; the VAE has two
    blocks, so it downsamples by 2 and the default image is ``2 * sample_size``
    px.  h-space is ``(B, 64, sample_size // 2, sample_size // 2)`` and the mid
    block has cross-attention, so it depends on the prompt.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    tokenizer = make_tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, _SD_HSPACE_CHANNELS),
            layers_per_block=1,
            norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            sample_size=2 * sample_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            norm_num_groups=8,
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
        )
        torch.manual_seed(seed + 2)
        text_encoder = _tiny_clip_text_encoder(tokenizer)
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG)  # steps_offset=1 as in real SD configs; 0 triggers a deprecation warning
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def save_tiny_sd(path: Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Save the :func:`dummy_sd_components` pipeline to ``path``."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    StableDiffusionPipeline(**dummy_sd_components(seed, sample_size)).save_pretrained(path, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; real SD checkpoints also ship the
    # slow-tokenizer files, so add them for loaders that want vocab.json/merges.txt.
    write_clip_tokenizer_files(path / "tokenizer", _TOKENIZER_WORDS)
    return path


def save_tiny_ldm(path: Path, text: bool = False, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a tiny latent-diffusion pipeline (CompVis's LDM layout) to ``path``.

    ``text=False``: ``LDMPipeline`` (unconditional UNet2DModel on the latents of a VQModel named
    "vqvae", as ldm-celebahq-256); ``text=True``: ``LDMTextToImagePipeline`` (UNet2DConditionModel,
    an LDMBert text encoder named "bert", as ldm-text2im-large-256). Images are 2 * sample_size px.
    """
    from diffusers import DDIMScheduler, LDMPipeline, LDMTextToImagePipeline, UNet2DConditionModel, UNet2DModel, VQModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    path = Path(path)
    blocks = {"block_out_channels": (16, 32), "layers_per_block": 1, "sample_size": sample_size, "in_channels": 3, "out_channels": 3}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vqvae = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=1, latent_channels=3, num_vq_embeddings=32, norm_num_groups=8,
                        sample_size=2 * sample_size)
        scheduler = DDIMScheduler(clip_sample=False)
        if not text:
            unet = UNet2DModel(norm_num_groups=8, attention_head_dim=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                               up_block_types=("AttnUpBlock2D", "UpBlock2D"), **blocks)
            LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(path, safe_serialization=True)
            return path
        unet = UNet2DConditionModel(norm_num_groups=16, cross_attention_dim=32, attention_head_dim=8,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
        tokenizer = make_tiny_clip_tokenizer()
        bert = LDMBertModel(LDMBertConfig(vocab_size=1000, encoder_layers=1, encoder_ffn_dim=37, encoder_attention_heads=4, head_dim=8, d_model=32))
    LDMTextToImagePipeline(vqvae=vqvae, bert=bert.eval(), tokenizer=tokenizer, unet=unet, scheduler=scheduler).save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_pixel_text(path: Path, seed: int = 0, sample_size: int = 16) -> Path:
    """Save a tiny text-conditioned *pixel* model in DeepFloyd IF's layout (``IFPipeline``: no VAE,
    a learned variance, a cosine schedule with dynamic thresholding, text projected into the time
    embedding). A CLIP text encoder stands in for IF's T5, which needs a tokenizer file from the hub."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    path = Path(path)
    tokenizer = make_tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _tiny_clip_text_encoder(tokenizer)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=3, out_channels=6, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
            down_block_types=("DownBlock2D", "SimpleCrossAttnDownBlock2D"), up_block_types=("SimpleCrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, attention_head_dim=8, encoder_hid_dim=32,
            encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=4, resnet_time_scale_shift="scale_shift")
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                              dynamic_thresholding_ratio=0.95, sample_max_value=1.0)
    IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler, safety_checker=None,
               feature_extractor=None, watermarker=None, requires_safety_checker=False).save_pretrained(path, safe_serialization=True)
    return path


# ------------------------------------------------------------------------ random SD, in memory
#: SD 1.5's U-Net (860 M parameters at these settings), VAE and DDIM schedule.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(_class_name="DDIMScheduler", **SD_DDIM_CONFIG, prediction_type="epsilon", timestep_spacing="leading")
#: The same architecture scaled down (latent 4x16x16, h 64x2x2, 128 px images) for CPU smoke runs.
SD_TINY_UNET = dict(SD15_UNET, sample_size=16, layers_per_block=1, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32)
SD_TINY_VAE = dict(SD15_VAE, block_out_channels=(32, 64, 64, 64), layers_per_block=1, sample_size=128)
#: name -> (U-Net config, VAE config, text tokens of the random context)
RANDOM_SD = {"sd15": (SD15_UNET, SD15_VAE, 77), "sd-tiny": (SD_TINY_UNET, SD_TINY_VAE, 77)}


def random_sd(name: str, device: torch.device, seed: int = 0, sample_size: int | None = None) -> tuple[DiffusionModel, Conditioning]:
    """An SD-architecture U-Net + VAE (``RANDOM_SD[name]``) with seeded random weights, built on
    ``device`` directly (an 860 M-parameter model is not worth a CPU detour), and a random prompt
    and empty-prompt context in place of a text encoder.

    ``sample_size`` overrides the latent size. Below 16 for sd-tiny h is 64x1x1, where GroupNorm
    normalises groups of two values and finite differences break down (measured: sigma 12x off).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg, vae_cfg, tokens = RANDOM_SD[name]
    if sample_size:
        unet_cfg = dict(unet_cfg, sample_size=sample_size)
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.device(device):
        torch.manual_seed(seed)  # seeded weights without disturbing the caller's global RNG
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
    for module in (unet, vae):
        module.to(device).eval().requires_grad_(False)  # .to: in case a buffer was made off-device
    render = torch.float16 if device.type == "cuda" else torch.float32
    model = DiffusionModel(name=f"{name} (random weights)", unet=unet, scheduler_config=dict(SD15_SCHEDULER), device=device, render_dtype=render, vae=vae)
    gen = torch.Generator().manual_seed(seed + 1)
    dim = unet_cfg["cross_attention_dim"]
    cond, uncond = (torch.randn(1, tokens, dim, generator=gen).to(device) for _ in range(2))
    return model, Conditioning("<random context>", cond, uncond)
