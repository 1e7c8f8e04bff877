"""backend.sampling: schedules, the DDIM update, deterministic trajectories, resumable denoising."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.models import load_model
from backend.sampling import (
    Boost,
    NoiseSchedule,
    Trajectory,
    ddim_step,
    denoise,
    guided_output,
    initial_noise,
    render,
    sample_trajectory,
    schedule,
    sub_schedule,
    unet_output,
)

STEPS = 4


@pytest.fixture(scope="module")
def ddpm(tiny_ddpm_dir):
    return load_model(tiny_ddpm_dir, device="cpu")


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load_model(tiny_sd_dir, device="cpu")


@pytest.fixture(scope="module")
def ddpm_traj(ddpm) -> Trajectory:
    return sample_trajectory(ddpm, seed=0, steps=STEPS)


# ------------------------------------------------------------------------------ schedules
def test_schedule_follows_the_models_scheduler(ddpm, sd):
    from diffusers import DDIMScheduler

    for model in (ddpm, sd):
        ts = schedule(model, STEPS)
        ref = DDIMScheduler.from_config(model.scheduler_config)
        ref.set_timesteps(STEPS)
        assert ts == tuple(int(t) for t in ref.timesteps)
        assert len(ts) == STEPS and list(ts) == sorted(ts, reverse=True)
        assert all(0 <= t < model.num_train_timesteps for t in ts)
    assert schedule(ddpm, STEPS) == (750, 500, 250, 0)
    assert schedule(sd, STEPS) == (751, 501, 251, 1)  # steps_offset=1


@pytest.mark.parametrize(
    "start, steps, expected",
    [
        (0, None, (900, 700, 500, 300, 100)),
        (2, None, (500, 300, 100)),
        (0, 5, (900, 700, 500, 300, 100)),
        (0, 99, (900, 700, 500, 300, 100)),
        (0, 3, (900, 500, 100)),
        (1, 2, (700, 100)),
        (1, 1, (700,)),
        (4, 3, (100,)),
    ],
)
def test_sub_schedule(start, steps, expected):
    assert sub_schedule((900, 700, 500, 300, 100), start, steps) == expected


def test_sub_schedule_keeps_the_first_and_last_in_order():
    full = tuple(range(999, -1, -50))
    for start in range(len(full)):
        for steps in range(1, len(full) + 2):
            sub = sub_schedule(full, start, steps)
            assert sub[0] == full[start]
            if steps >= 2:  # a one-step preview goes straight from x_t to x_0
                assert sub[-1] == full[-1]
            assert list(sub) == sorted(set(sub), reverse=True)
            assert len(sub) == min(steps, len(full) - start)
            assert set(sub) <= set(full[start:])


def test_noise_schedule_from_configs(ddpm, sd):
    pixel = NoiseSchedule.from_config(ddpm.scheduler_config)
    assert pixel.alphas_cumprod.dtype == torch.float64 and pixel.alphas_cumprod.shape == (1000,)
    assert pixel.alpha(-1) == 1.0  # set_alpha_to_one defaults to True
    assert pixel.prediction_type == "epsilon" and pixel.clip_sample
    latent = NoiseSchedule.from_config(sd.scheduler_config)
    assert latent.alpha(-1) == pytest.approx(float(latent.alphas_cumprod[0]))  # set_alpha_to_one=False
    assert not latent.clip_sample
    alphas = latent.alphas_cumprod
    assert bool((alphas[1:] < alphas[:-1]).all()) and 0 < float(alphas[-1]) < float(alphas[0]) < 1


# ------------------------------------------------------------------------------ DDIM update
def _schedule(prediction_type: str, clip: bool = False) -> NoiseSchedule:
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    return NoiseSchedule(alphas, 1.0, prediction_type, clip, 1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_is_exact_for_the_true_model_output(prediction_type):
    """With the exact output for a known (x0, eps), one step lands on sqrt(a') x0 + sqrt(1 - a') eps."""
    noise = _schedule(prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.randn(2, 3, 4, 4, generator=g)
    t, t_prev = 700, 300
    a, a_prev = noise.alpha(t), noise.alpha(t_prev)
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    output = {"epsilon": eps, "v_prediction": a**0.5 * eps - (1 - a) ** 0.5 * x0, "sample": x0}[prediction_type]
    expected = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    torch.testing.assert_close(ddim_step(noise, x_t, output, t, t_prev), expected, atol=1e-5, rtol=1e-5)
    # the last step (t_prev = -1, alpha = 1) returns the clean sample
    torch.testing.assert_close(ddim_step(noise, x_t, output, t, -1), x0, atol=1e-5, rtol=1e-5)


def test_ddim_step_clips_x0_for_pixel_models():
    noise = _schedule("sample", clip=True)
    x_t = torch.zeros(1, 1, 2, 2)
    out = ddim_step(noise, x_t, torch.full((1, 1, 2, 2), 5.0), 500, -1)
    torch.testing.assert_close(out, torch.ones(1, 1, 2, 2))


def test_ddim_step_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_step(_schedule("flow"), torch.zeros(1), torch.zeros(1), 10, 5)


# ------------------------------------------------------------------------------ trajectories
def test_initial_noise_is_seeded_on_the_cpu(ddpm):
    a, b = initial_noise(ddpm, 7), initial_noise(ddpm, 7)
    assert a.shape == ddpm.sample_shape == (3, 16, 16) and a.device.type == "cpu"
    assert torch.equal(a, b) and not torch.equal(a, initial_noise(ddpm, 8))


def test_trajectory_shape_and_start(ddpm, ddpm_traj):
    assert ddpm_traj.timesteps == schedule(ddpm, STEPS)
    assert ddpm_traj.latents.shape == (STEPS + 1, 3, 16, 16)
    assert ddpm_traj.latents.dtype == torch.float32 and ddpm_traj.latents.device.type == "cpu"
    assert torch.equal(ddpm_traj.latents[0], initial_noise(ddpm, 0))
    assert torch.equal(ddpm_traj.x0, ddpm_traj.latents[-1])
    assert torch.isfinite(ddpm_traj.latents).all()
    # consecutive points differ: every step moved x
    assert all(not torch.equal(ddpm_traj.latents[i], ddpm_traj.latents[i + 1]) for i in range(STEPS))


def test_trajectory_is_deterministic(ddpm, ddpm_traj):
    again = sample_trajectory(ddpm, seed=0, steps=STEPS)
    assert again.timesteps == ddpm_traj.timesteps and torch.equal(again.latents, ddpm_traj.latents)
    other = sample_trajectory(ddpm, seed=1, steps=STEPS)
    assert not torch.equal(other.x0, ddpm_traj.x0)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_denoising_from_any_point_resumes_the_trajectory_exactly(ddpm, ddpm_traj, index):
    """What edits rely on: x_t from the trajectory, denoised over the rest of the schedule, is x_0."""
    seen = []
    x0 = denoise(ddpm, ddpm_traj.latents[index][None], ddpm_traj.timesteps[index:], on_step=lambda i, x: seen.append(i))
    assert torch.equal(x0[0].cpu(), ddpm_traj.x0)
    assert seen == list(range(STEPS - index))


def test_quality_boosting_is_stochastic_only_at_the_end_and_repeats_exactly(ddpm):
    """Boosted steps (t <= 0.2 T) add the seed's fixed noise: the same seed gives the same
    trajectory, the steps before 0.2 T are the deterministic ones, and x_0 differs from DDIM's."""
    plain = sample_trajectory(ddpm, seed=0, steps=10)
    boosted = sample_trajectory(ddpm, seed=0, steps=10, boost=True)
    assert torch.equal(boosted.latents, sample_trajectory(ddpm, seed=0, steps=10, boost=True).latents)
    first_boosted = next(i for i, t in enumerate(plain.timesteps) if t <= 0.2 * ddpm.num_train_timesteps)
    assert torch.equal(boosted.latents[: first_boosted + 1], plain.latents[: first_boosted + 1])
    assert not torch.equal(boosted.x0, plain.x0)
    # resuming from any point of the boosted trajectory (as an edit does) reproduces it, in a batch too
    index = first_boosted - 1
    x = boosted.latents[index]
    both = denoise(ddpm, torch.stack([x, -x]), boosted.timesteps[index:], boost=Boost(0))
    torch.testing.assert_close(both[0], boosted.x0, atol=1e-5, rtol=1e-5)
    assert not torch.equal(denoise(ddpm, x[None], boosted.timesteps[index:], boost=Boost(1))[0], both[0])  # another seed's noise


def test_denoise_batches_are_independent(ddpm, ddpm_traj):
    x = ddpm_traj.latents[2]
    both = denoise(ddpm, torch.stack([x, -x]), ddpm_traj.timesteps[2:])
    torch.testing.assert_close(both[0], ddpm_traj.x0, atol=1e-5, rtol=1e-5)
    single = denoise(ddpm, (-x)[None], ddpm_traj.timesteps[2:])
    torch.testing.assert_close(both[1], single[0], atol=1e-5, rtol=1e-5)


def test_pixel_model_decodes_to_unit_range(ddpm, ddpm_traj):
    image = ddpm.decode(ddpm_traj.x0[None])
    assert image.shape == (1, 3, 16, 16) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1


def test_render_is_denoise_then_decode(ddpm, ddpm_traj):
    """The service's render path: x_t from the trajectory renders to the sample's own image, byte for byte."""
    images = render(ddpm, ddpm_traj.latents[1][None], ddpm_traj.timesteps[1:])
    assert torch.equal(images, ddpm.decode(ddpm_traj.x0[None]))


def test_apply_edits_stacks_edits_of_one_point(ddpm, ddpm_traj):
    """Edits of one x_t for one batched render: a zero strength is x_t itself, a direct edit
    direct_edit's point, every row on the CPU."""
    from backend.edit import EditPoint, apply_edits, direct_edit

    x = ddpm_traj.latents[2]
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    edited = apply_edits(EditPoint(ddpm, x, ddpm_traj.timesteps[2]), [(v, 0.0), (v, 0.3), (-v, 0.3)], "direct")
    assert edited.shape == (3, *x.shape) and edited.device.type == "cpu"
    assert torch.equal(edited[0], x)
    assert torch.equal(edited[1], direct_edit(x, v, 0.3)) and torch.equal(edited[2], direct_edit(x, -v, 0.3))
    assert not torch.equal(edited[1], x)


def test_direct_edits_step_along_v_and_keep_the_norm_of_x():
    """x + s sqrt(n) v rescaled to |x|: on the ray of the straight step, at x's own norm, for
    every row of a batch alike; the step grows with s but the point never leaves the sphere."""
    from backend.edit import direct_edit, direct_edits

    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    strengths = torch.tensor([0.4, -1.5])
    edited = direct_edits(x, v, strengths)
    for row, direction, s in zip(edited, v, strengths.tolist()):
        straight = x + s * 192**0.5 * direction
        assert float(row.norm()) == pytest.approx(float(x.norm()), rel=1e-6)
        torch.testing.assert_close(row / row.norm(), straight / straight.norm())
        torch.testing.assert_close(direct_edit(x, direction, s), row)
    near, far = ((direct_edit(x, v[0], s) - x).norm() for s in (0.2, 2.0))
    assert 0 < near < far < 2 * x.norm()


# ------------------------------------------------------------------------------ text conditioning
def test_guided_output_is_classifier_free_guidance(sd):
    cond = sd.encode_prompt("a photo of a cat")
    x = torch.randn(2, *sd.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conditioned = unet_output(sd, x, 501, cond.cond)
        unconditioned = unet_output(sd, x, 501, cond.uncond)
        torch.testing.assert_close(guided_output(sd, x, 501, cond, 1.0), conditioned)
        torch.testing.assert_close(
            guided_output(sd, x, 501, cond, 7.5), unconditioned + 7.5 * (conditioned - unconditioned), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(guided_output(sd, x, 501, cond, 0.0), unconditioned, atol=1e-5, rtol=1e-5)


def test_sd_trajectory_depends_on_prompt_and_guidance(sd):
    a = sample_trajectory(sd, 0, STEPS, sd.encode_prompt("a cat"), 7.5)
    assert a.latents.shape == (STEPS + 1, 4, 8, 8)
    assert torch.equal(a.latents, sample_trajectory(sd, 0, STEPS, sd.encode_prompt("a cat"), 7.5).latents)
    assert not torch.equal(a.x0, sample_trajectory(sd, 0, STEPS, sd.encode_prompt("a dog"), 7.5).x0)
    assert not torch.equal(a.x0, sample_trajectory(sd, 0, STEPS, sd.encode_prompt("a cat"), 1.0).x0)
    image = sd.decode(a.x0[None])
    assert image.shape == (1, 3, 16, 16) and float(image.min()) >= 0 and float(image.max()) <= 1


def test_encode_prompt(sd, ddpm):
    from backend.errors import ModelError

    cond = sd.encode_prompt("a photo of a cat")
    assert cond.cond.shape == cond.uncond.shape == (1, 77, 32) and not cond.truncated
    assert torch.equal(cond.uncond, sd.encode_prompt("").cond)
    assert sd.encode_prompt("cat " * 100).truncated
    with pytest.raises(ModelError, match="unconditional"):
        ddpm.encode_prompt("a cat")


def test_a_tokenizer_without_a_length_pads_to_the_text_encoders(sd, monkeypatch):
    """A tokenizer saved without model_max_length reports int(1e30): padding to that would never end."""
    monkeypatch.setattr(sd.tokenizer, "model_max_length", int(1e30))
    assert sd.max_prompt_tokens == 77  # the tiny CLIP text encoder's max_position_embeddings
    assert sd.encode_prompt("a cat").cond.shape == (1, 77, 32)


def test_dynamic_thresholding_matches_diffusers():
    """DeepFloyd IF's schedulers threshold x_0 per sample instead of clipping it."""
    from diffusers import DDPMScheduler

    from backend.sampling import dynamic_threshold

    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 2.0, 4.0])[:, None, None, None]
    reference = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)._threshold_sample(x0.clone())
    assert torch.allclose(dynamic_threshold(x0, 0.9, 3.0), reference)
    assert torch.equal(dynamic_threshold(x0, 0.9, 3.0)[0], x0[0].clamp(-1, 1))  # in range: s = 1, a plain clip


def _resaved_sd(tiny_sd_dir: Path, path: Path, variant: str | None = None, **unet_config) -> Path:
    """The tiny SD pipeline saved again to ``path``: as a weights ``variant``, and/or with its
    U-Net's config changed (the SD-family checkpoints the loader must handle or refuse)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    if unet_config:
        pipe.register_modules(unet=UNet2DConditionModel.from_config(dict(pipe.unet.config, **unet_config)))
    pipe.save_pretrained(path, safe_serialization=True, variant=variant)
    return path


def _plain_unet(**config):
    """A tiny attention-free UNet2DModel, with ``config`` on top (for checkpoints the loader refuses)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, **config)


@pytest.mark.parametrize("extra", [{"num_class_embeds": 10}, {"class_embed_type": "timestep"}])
def test_unets_needing_more_than_a_prompt_are_refused_at_load(tmp_path, extra):
    """Class-conditional U-Nets (like SDXL's added embeddings) need inputs Eigenface does not
    supply: refused when loaded, with the config entry named, instead of failing mid-render."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from backend.errors import ModelError

    DDPMPipeline(unet=_plain_unet(**extra), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "m")
    key = next(iter(extra))
    with pytest.raises(ModelError, match=f"{key}="):
        load_model(tmp_path / "m", device="cpu")


def test_an_sdxl_style_unet_is_refused_at_load(tmp_path, tiny_sd_dir):
    """SDXL's U-Net wants size and pooled-text embeddings (added_cond_kwargs) at every call."""
    from backend.errors import ModelError

    xl = _resaved_sd(tiny_sd_dir, tmp_path / "xl", addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=32 + 6 * 8)
    with pytest.raises(ModelError, match="addition_embed_type='text_time'"):
        load_model(xl, device="cpu")


def test_image_conditioned_unets_are_refused_at_load(tmp_path, tiny_sd_dir):
    """An inpainting U-Net (9 channels in: latents, mask and masked image; 4 out) needs an image
    Eigenface does not have; it used to fail mid-render on the channel mismatch."""
    from backend.errors import ModelError

    with pytest.raises(ModelError, match="takes 9 input channels but predicts 4"):
        load_model(_resaved_sd(tiny_sd_dir, tmp_path / "inpaint", in_channels=9), device="cpu")


def test_a_pipeline_saved_only_as_an_fp16_variant_loads(tmp_path, tiny_sd_dir):
    """``save_pretrained(variant="fp16")`` writes only ``*.fp16.safetensors``, which diffusers
    loads only when told the variant; the loader finds it (sharded names included)."""
    from backend.models import _only_variant

    model = load_model(_resaved_sd(tiny_sd_dir, tmp_path / "v", variant="fp16"), device="cpu")
    assert model.conditional and model.sample_shape == (4, 8, 8)
    assert _only_variant(tiny_sd_dir) is None
    shards = tmp_path / "shards" / "unet"
    shards.mkdir(parents=True)
    for i in (1, 2):
        (shards / f"diffusion_pytorch_model.fp16-0000{i}-of-00002.safetensors").touch()
    assert _only_variant(shards.parent) == "fp16"


def test_a_transformer_pipeline_is_refused_at_load(tmp_path):
    """DiT (like PixArt, SD3, Flux) denoises with a transformer: no U-Net, so no h-space."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from backend.errors import ModelError

    transformer = DiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, num_embeds_ada_norm=10, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dit", safe_serialization=True)
    with pytest.raises(ModelError, match="unsupported pipeline DiTPipeline .* no U-Net"):
        load_model(tmp_path / "dit", device="cpu")


def test_a_model_without_a_beta_schedule_is_refused_at_load(tmp_path):
    """A score-SDE (variance-exploding) checkpoint would be sampled as if it were a DDPM."""
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    from backend.errors import ModelError

    ScoreSdeVePipeline(unet=_plain_unet(), scheduler=ScoreSdeVeScheduler()).save_pretrained(tmp_path / "ve")
    with pytest.raises(ModelError, match="ScoreSdeVeScheduler"):
        load_model(tmp_path / "ve", device="cpu")
