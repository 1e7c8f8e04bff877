"""The built-in text-to-image model's world: the horse factor, captions, tokenizer, trainer.

The trainer test trains a tiny configuration for seconds; it checks the layout and resuming,
not image quality (bench/text_eval.py measures that on the shipped weights).
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from backend.catpeople.captions import ATTRIBUTES, DROP, WORDS, caption, captions, colour_name
from backend.catpeople.render import FACTORS, NUM_FACTORS, render, render_dataset, sample_factors
from backend.catpeople.text_model import TextModelConfig
from backend.catpeople.train_text import TextTrainConfig, train_text
from backend.vocab import clip_tokenizer, write_clip_tokenizer_files
from backend.models import BUILTIN_TEXT_MODEL, EditSettings

HORSE = FACTORS.index("horse")
#: sha256 of render_dataset(16, seed=0) before the horse factor existed: the pixel model and
#: the estimator were trained on exactly these pixels.
CAT_RENDERS_SHA256 = "320bdbc69bc5aafa92016973d7548e4acbcaa20ae81688b97f9a256be6eeccb3"


# ------------------------------------------------------------------------------ horse factor
def test_cat_world_is_unchanged_by_the_horse_factor():
    images, factors = render_dataset(16, seed=0)
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == CAT_RENDERS_SHA256
    assert bool((factors[:, HORSE] == 0).all())
    # The other factors are drawn exactly as without horses.
    with_horse = sample_factors(16, torch.Generator().manual_seed(0), horse=True)
    assert torch.equal(with_horse[:, :HORSE], factors[:, :HORSE]) and bool((with_horse[:, HORSE] > 0).any())


def test_horse_morphs_smoothly():
    base = torch.full((11, NUM_FACTORS), 0.5)
    base[:, HORSE] = torch.linspace(0, 1, 11)
    images = render(base)
    steps = (images[1:] - images[:-1]).abs().mean(dim=(1, 2, 3))
    total = (images[-1] - images[0]).abs().mean()
    assert float(total) > 0.05  # a horse looks different from a cat
    assert float(steps.max()) < 0.35 * float(total)  # no jump: the change is spread over the way


# ---------------------------------------------------------------------------------- captions
def test_captions_follow_the_factors():
    rng = random.Random(0)
    factors = torch.full((NUM_FACTORS,), 0.5)
    factors[FACTORS.index("ears")], factors[HORSE] = 0.95, 1.0
    texts = [caption(factors, rng) for _ in range(200)]
    assert all(t.startswith(("a horse person", "a horse")) for t in texts)
    ears = next(a for a in ATTRIBUTES if a.factor == "ears")
    assert any(p in t for t in texts for p in ears.high) and not any(p in t for t in texts for p in ears.low)
    # A factor in its middle third is never named.
    eyes = next(a for a in ATTRIBUTES if a.factor == "eyes")
    assert not any(p in t for t in texts for p in (*eyes.low, *eyes.high))
    assert colour_name(0.99) == "red" and colour_name(0.33) == "green"


def test_captions_are_deterministic_and_some_are_dropped():
    factors = sample_factors(2000, torch.Generator().manual_seed(1), horse=True)
    a = captions(factors, torch.Generator().manual_seed(2))
    assert a == captions(factors, torch.Generator().manual_seed(2))
    assert abs(a.count("") / len(a) - DROP) < 0.03


def test_tokenizer_has_one_token_per_grammar_word_and_real_files(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = clip_tokenizer(WORDS, 48)
    assert all(len(tokenizer(word).input_ids) == 3 for word in WORDS)  # start, the word, end
    assert len(tokenizer("a zebra").input_ids) > 3  # other text still tokenizes, byte by byte
    vocab, merges = write_clip_tokenizer_files(tmp_path, WORDS)
    again = CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    text = "a horse person with big ears and a wide smile, green fur, on a warm background"
    assert again(text).input_ids == tokenizer(text).input_ids


# ----------------------------------------------------------------------------------- trainer
def _tiny(out, minutes: float) -> TextTrainConfig:
    model = TextModelConfig(resolution=16, vae_channels=(8, 8), unet_channels=(32, 32), text_width=32, text_layers=1)
    return TextTrainConfig(out=str(out), minutes=minutes, vae_minutes=0.05, pool=64, vae_batch_size=4, batch_size=8,
                           checkpoint_minutes=0.02, model=model)


def test_train_text_saves_a_stable_diffusion_pipeline_and_resumes(tmp_path):
    from diffusers import StableDiffusionPipeline

    from backend.models import load_model

    out = tmp_path / "run"
    train_text(_tiny(out, 0.12))
    first = json.loads((out / "training.json").read_text())
    assert first["stage"] == "unet" and first["denoiser_steps"] > 0
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (out / "tokenizer").iterdir()}
    train_text(_tiny(out, 0.16))  # resumes: more steps on the same run
    assert json.loads((out / "training.json").read_text())["denoiser_steps"] > first["denoiser_steps"]

    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    image = pipe("a horse person", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    model = load_model(out)  # Eigenface's path for any SD checkpoint
    assert model.conditional and model.sample_shape == (4, 8, 8)
    assert model.vae.config.scaling_factor != 0.18215  # set from the pool's latents


def test_train_text_refuses_bad_budgets(tmp_path):
    from backend.errors import InputError

    with pytest.raises(InputError, match="--vae-minutes"):
        train_text(TextTrainConfig(out=str(tmp_path), minutes=1.0, vae_minutes=2.0))
    with pytest.raises(InputError, match="--minutes"):
        train_text(TextTrainConfig(out=str(tmp_path), minutes=0.0))


# --------------------------------------------------------------------- the shipped text model
needs_text_model = pytest.mark.skipif(
    not (BUILTIN_TEXT_MODEL / "model_index.json").is_file(), reason="this checkout has no built-in text model weights"
)


@needs_text_model
def test_builtin_text_model_is_a_stable_diffusion_checkpoint_within_budget():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_TEXT_MODEL, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    for part in ("unet", "vae", "text_encoder"):  # fp16 on disk
        weights = load_file(next((BUILTIN_TEXT_MODEL / part).glob("*.safetensors")))
        assert {t.dtype for t in weights.values()} == {torch.float16}, part
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (BUILTIN_TEXT_MODEL / "tokenizer").iterdir()}
    assets = BUILTIN_TEXT_MODEL.parent
    assert sum(p.stat().st_size for p in assets.rglob("*") if p.is_file()) <= 25 * 2**20  # all built-in models together
    recipe = json.loads((BUILTIN_TEXT_MODEL / "training.json").read_text())
    assert recipe["cpu_minutes"] <= 150
    settings = EditSettings.read(BUILTIN_TEXT_MODEL)
    assert settings.prompt and settings.guidance_scale != EditSettings().guidance_scale


@needs_text_model
@pytest.mark.parametrize("high, low, factor", [
    ("a horse person", "a cat person", "horse"),
    ("a cat person with a wide smile", "a cat person with a flat mouth", "smile"),
    ("a cat person with big ears", "a cat person with small ears", "ears"),
])
def test_builtin_text_model_draws_faces_that_follow_the_prompt(high: str, low: str, factor: str):
    """A small version of bench/text_eval.py's adherence check: 8 seeds of a phrase and its
    opposite, through the service as the page draws them; the estimated factor moves the right
    way on at least 7 and at least half of the images pass the face check."""
    from backend.catpeople.estimator import FactorEstimator
    from backend.catpeople.semantics import DEFAULT_ESTIMATOR
    from backend.images import pil_to_tensor
    from backend.registry import builtin_models
    from backend.service import EigenfaceService, ServiceConfig
    from backend.specs import BUILTIN_TEXT_NAME, SampleSpec

    service = EigenfaceService(ServiceConfig(models=builtin_models()))
    estimator = FactorEstimator.load(DEFAULT_ESTIMATOR)
    column = FACTORS.index(factor)

    def read(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = pil_to_tensor([service.generate(SampleSpec(model=BUILTIN_TEXT_NAME, seed=s, prompt=prompt, steps=10)) for s in range(8)])
        return estimator.estimate(images)[:, column], estimator.is_face(images)

    (highs, high_faces), (lows, low_faces) = read(high), read(low)
    assert int((highs > lows).sum()) >= 7, (highs, lows)
    assert int(high_faces.sum() + low_faces.sum()) >= 8, (high_faces, low_faces)


def test_an_estimator_from_before_the_horse_factor_grows_a_horse_output(tmp_path):
    """``train-estimator --init`` starts from an estimator trained before the horse factor: its
    outputs are kept and the new one starts at the middle of its range."""
    from safetensors.torch import load_file, save_file

    from backend.catpeople.estimator import FactorEstimator
    from backend.catpeople.semantics import DEFAULT_ESTIMATOR

    state = load_file(DEFAULT_ESTIMATOR / "estimator.safetensors")
    config = json.loads((DEFAULT_ESTIMATOR / "estimator.json").read_text())
    # Outputs: the linear factors (all but hue, horse last), then cos and sin of hue.
    keep = [i for i in range(state["head.3.bias"].shape[0]) if i != NUM_FACTORS - 2]
    old = dict(state, **{"head.3.weight": state["head.3.weight"][keep], "head.3.bias": state["head.3.bias"][keep]})
    save_file(old, tmp_path / "estimator.safetensors")
    (tmp_path / "estimator.json").write_text(json.dumps(config | {"factors": list(FACTORS[:HORSE])}))
    with pytest.raises(ValueError, match="trained for factors"):
        FactorEstimator.load(tmp_path)
    grown = FactorEstimator.load(tmp_path, grow=True)
    current = FactorEstimator.load(DEFAULT_ESTIMATOR)
    images = render_dataset(4, seed=3)[0]
    a, b = grown.estimate(images), current.estimate(images)
    assert torch.allclose(a[:, :HORSE], b[:, :HORSE], atol=1e-5) and bool((a[:, HORSE] == 0.5).all())
