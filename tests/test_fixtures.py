"""The tiny stand-in checkpoints load like any diffusers checkpoint and behave."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.testing import make_tiny_clip_tokenizer, random_sd, save_tiny_ddpm


def _load(path: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ddpm(tiny_ddpm_dir):
    return _load(tiny_ddpm_dir)


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return _load(tiny_sd_dir)


@pytest.mark.parametrize("name", ["tiny_ddpm_dir", "tiny_sd_dir"])
def test_standard_layout_safetensors_only(name, request):
    root = request.getfixturevalue(name)
    assert (root / "model_index.json").is_file()
    assert (root / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(root.rglob("*.bin")), "pickle weights written"
    assert not list(root.rglob("*.pt")) and not list(root.rglob("*.ckpt"))


def test_ddpm_loads_and_has_expected_shapes(ddpm):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    assert isinstance(ddpm, DDPMPipeline)
    assert isinstance(ddpm.unet, UNet2DModel) and isinstance(ddpm.scheduler, DDPMScheduler)
    assert ddpm.scheduler.config.num_train_timesteps == 1000
    # attention code paths are present (down/up blocks and mid block)
    assert any("Attn" in t for t in ddpm.unet.config.down_block_types)
    # (UNet2DModel, unlike UNet2DConditionModel, has no `attn_processors`)
    from diffusers.models.attention_processor import Attention

    n_attn = sum(isinstance(m, Attention) for m in ddpm.unet.modules())
    assert n_attn >= 3  # down + up + mid

    seen = {}
    hook = ddpm.unet.mid_block.register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    try:
        with torch.no_grad():
            out = ddpm.unet(torch.randn(2, 3, 16, 16), torch.tensor([10, 500])).sample
    finally:
        hook.remove()
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    assert seen["h"].shape == (2, 32, 8, 8)


def test_ddpm_build_is_deterministic(tiny_ddpm_dir, tmp_path):
    again = save_tiny_ddpm(tmp_path / "again")
    assert _digests(again) == _digests(tiny_ddpm_dir)
    other = save_tiny_ddpm(tmp_path / "other", seed=1)
    key = "unet/diffusion_pytorch_model.safetensors"
    assert _digests(other)[key] != _digests(tiny_ddpm_dir)[key]


def test_builders_leave_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    save_tiny_ddpm(tmp_path / "x")
    random_sd("sd-tiny", torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_random_sd_is_seeded_and_shaped_like_sd():
    model, cond = random_sd("sd-tiny", torch.device("cpu"), seed=3)
    again, _ = random_sd("sd-tiny", torch.device("cpu"), seed=3)
    assert model.sample_shape == (4, 16, 16) and cond.cond.shape == (1, 77, 32) and not torch.equal(cond.cond, cond.uncond)
    assert all(torch.equal(a, b) for a, b in zip(model.unet.state_dict().values(), again.unet.state_dict().values()))
    with torch.no_grad():
        image = model.decode(torch.zeros(1, *model.sample_shape))
    assert image.shape == (1, 3, 128, 128)


def test_handwritten_tokenizer():
    tok = make_tiny_clip_tokenizer()
    assert len(tok) > 2
    assert tok.model_max_length == 77
    a, b = tok("a cat").input_ids, tok("a horse").input_ids
    assert a != b
    assert a[0] == tok.bos_token_id and a[-1] == tok.eos_token_id
    assert tok.unk_token_id not in tok("a Portrait of an old man, 42!").input_ids[1:-1]


def test_sd_loads_with_working_tokenizer(sd):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(sd, StableDiffusionPipeline)
    assert isinstance(sd.unet, UNet2DConditionModel)
    assert isinstance(sd.vae, AutoencoderKL) and isinstance(sd.text_encoder, CLIPTextModel)
    assert isinstance(sd.scheduler, DDIMScheduler)
    assert sd.safety_checker is None
    tok = sd.tokenizer
    assert len(tok) > 2 and tok.model_max_length == 77
    ids = tok(["a cat", "a horse"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (2, 77) and not torch.equal(ids[0], ids[1])
    assert len(tok) <= sd.text_encoder.config.vocab_size
    assert sd.vae_scale_factor == 2


def test_sd_pipeline_runs(sd):
    out = sd(
        prompt="a cat",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    img = out.images
    assert img.shape == (1, 16, 16, 3)
    assert np.isfinite(img).all()


def test_sd_hspace_depends_on_prompt(sd):
    tok, enc = sd.tokenizer, sd.text_encoder
    ids = tok(
        ["a cat", "a horse"], padding="max_length", max_length=tok.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    seen = []
    hook = sd.unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            emb = enc(ids)[0]
            assert emb.shape == (2, 77, 32)
            latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
            eps = sd.unet(latents, torch.tensor([500, 500]), encoder_hidden_states=emb).sample
    finally:
        hook.remove()
    assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
    (h,) = seen
    assert h.shape == (2, 64, 4, 4)
    assert not torch.allclose(h[0], h[1], atol=1e-6)
