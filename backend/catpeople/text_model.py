"""The built-in text-to-image model's parts, in Stable Diffusion's own layout.

A 64 px ``AutoencoderKL`` (8x downsampling to 8x8x4 latents: the U-Net then trains about
3.5x faster than on 16x16x4, which is what lets it train on a CPU), a two-layer
``CLIPTextModel`` over the caption grammar's vocabulary, a ``UNet2DConditionModel`` with
cross-attention, and Stable Diffusion's own DDIM schedule. Saved with
``StableDiffusionPipeline.save_pretrained``, so it loads wherever an SD 1.x checkpoint does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .captions import WORDS
from ..models import SD_DDIM_CONFIG
from ..vocab import clip_tokenizer, write_clip_tokenizer_files


@dataclass
class TextModelConfig:
    """Sizes of the three networks; the defaults total about 5 M parameters (10 MB in fp16)."""

    resolution: int = 64
    vae_channels: tuple[int, ...] = field(default=(8, 16, 32, 64))  # one block per halving but the last: 64 px -> 8x8
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = field(default=(64, 128))  # latents 8x8 -> 4x4 (h-space, the mid block: 128 x 4 x 4)
    text_width: int = 128  # CLIP hidden size = the U-Net's cross-attention dimension
    text_layers: int = 2
    max_tokens: int = 48  # the longest grammar caption is under 40 tokens

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


def build_vae(config: TextModelConfig):
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=config.latent_channels,
    )


def build_text_encoder(config: TextModelConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_width,
        intermediate_size=2 * config.text_width,
        num_hidden_layers=config.text_layers,
        num_attention_heads=4,
        max_position_embeddings=config.max_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(text_config)


def build_unet(config: TextModelConfig):
    """Cross-attention in every block but the first (at 8x8 it costs most and sees least text)."""
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_scheduler():
    """Stable Diffusion 1.x's own DDIM configuration."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_DDIM_CONFIG)


def build_tokenizer(config: TextModelConfig):
    return clip_tokenizer(WORDS, config.max_tokens)


def save_pipeline(out, vae, text_encoder, tokenizer, unet, dtype: torch.dtype = torch.float16) -> None:
    """Write the parts as ``StableDiffusionPipeline.save_pretrained`` lays them out (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    parts = [module.to("cpu", dtype=dtype).eval() for module in (vae, text_encoder, unet)]
    pipe = StableDiffusionPipeline(
        vae=parts[0],
        text_encoder=parts[1],
        tokenizer=tokenizer,
        unet=parts[2],
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; the vocab.json / merges.txt pair is what older
    # loaders and people read, and CLIPTokenizer builds the same tokenizer from it.
    write_clip_tokenizer_files(Path(out) / "tokenizer", WORDS)
