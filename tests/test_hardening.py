"""Strangers' input at the service boundary: every bad request is an InputError that names what was bad, never a crash."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.errors import InputError
from backend.service import EigenfaceService, ServiceConfig
from backend.specs import MAX_SEED, MAX_STRENGTH, BasisSpec, SampleSpec

STEPS = 3


@pytest.fixture(scope="module")
def service(tiny_ddpm_dir, tiny_sd_dir) -> EigenfaceService:
    return EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir), "sd": str(tiny_sd_dir)}, device="cpu", cache_bytes=64 << 20))


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
models = st.one_of(st.sampled_from(["ddpm", "sd", "", "../etc/passwd", "owner/name", "/tmp"]), anything)
prompts = st.one_of(st.just(""), st.text(max_size=100), st.just("word " * 200), anything)


#: How a refusal names each field of a request (the checks' own words for it).
FIELD_WORDS = {
    "model": r"\bmodel\b", "seed": r"\bseed\b", "steps": r"\bsteps\b", "prompt": r"\bprompt\b", "timestep": r"\btimestep\b",
    "k": r"\bk\b", "mode": r"\bmode\b", "strengths": r"\b(slider values|direction index|strength)\b",
}


def _int_within(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _timestep_ok(value) -> bool:
    """The documented timestep forms: an integer training timestep, a fraction in (0, 1], or either as text."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            return False
    if isinstance(value, float):
        return math.isfinite(value) and 0 < value <= 1
    return _int_within(value, 0, 999)


def _strength_ok(value) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value)) and abs(float(value)) <= MAX_STRENGTH
    except (TypeError, ValueError):
        return False


def _sliders_ok(strengths, k) -> bool:
    if not isinstance(strengths, (dict, list, tuple)):
        return False
    items = strengths.items() if isinstance(strengths, dict) else enumerate(strengths)
    return all(_int_within(i, 0, k - 1) and _strength_ok(v) for i, v in items)


def _refused_naming(fn, bad: set[str]) -> None:
    """``fn`` either works, when nothing in the request is bad, or raises an InputError whose
    message names one of the bad fields (so a person knows what to change)."""
    try:
        fn()
    except InputError as exc:
        message = str(exc)
        assert bad, f"a valid request was refused: {message}"
        assert any(re.search(FIELD_WORDS[name], message) for name in bad), f"{message!r} names none of the bad fields {sorted(bad)}"
    else:
        assert not bad, f"accepted although {sorted(bad)} are bad"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=models, seed=anything, prompt=prompts, steps=st.one_of(st.integers(-3, 5), anything))
def test_generate_never_crashes(service, model, seed, prompt, steps):
    bad = {name for name, ok in (
        ("model", model in ("ddpm", "sd")),
        ("seed", _int_within(seed, 0, MAX_SEED)),
        ("steps", _int_within(steps, 1, 1000)),
        ("prompt", isinstance(prompt, str) and (not prompt or model == "sd")),
    ) if not ok}
    _refused_naming(lambda: service.generate(SampleSpec(model=model, seed=seed, prompt=prompt, steps=steps)), bad)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    model=st.sampled_from(["ddpm", "sd"]),
    seed=st.integers(0, 3),
    timestep=st.one_of(st.integers(-5, 1005), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    k=st.one_of(st.integers(-2, 70), anything),
    strengths=st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=5),
        st.dictionaries(st.integers(-3, 70), st.floats(-20, 20), max_size=3),
        anything,
    ),
    mode=st.one_of(st.sampled_from(["direct", "guidance", "geodesic", "sideways"]), anything),
)
def test_edit_never_crashes(service, model, seed, timestep, k, strengths, mode):
    prompt = "a cat" if model == "sd" else ""
    k = k if not isinstance(k, int) or k < 6 else 2
    spec = BasisSpec(SampleSpec(model=model, seed=seed, prompt=prompt, steps=STEPS), timestep, k)
    k_ok = _int_within(k, 1, 64)
    bad = {name for name, ok in (
        ("timestep", _timestep_ok(timestep)),
        ("k", k_ok),
        ("strengths", k_ok and _sliders_ok(strengths, k)),
        ("mode", mode in ("direct", "guidance", "geodesic")),
    ) if not ok}
    _refused_naming(lambda: service.edit(spec, strengths, mode, substeps=2, preview_steps=2), bad)


def test_wrong_vectors_are_refused(service):
    spec = BasisSpec(SampleSpec(model="ddpm", seed=0, steps=STEPS), 0.6, 2)
    shape = service.model("ddpm").sample_shape
    for bad in (torch.zeros(shape), torch.ones(3, 3), torch.full(shape, math.nan), torch.ones(shape, dtype=torch.int64), [1.0, 2.0]):
        with pytest.raises(InputError, match=r"\bdirection\b"):
            service.edit_vector(spec, bad, 0.3)


def test_out_of_memory_backs_off_to_smaller_chunks(service, monkeypatch):
    """A device that holds at most 3 directions at once: the basis is still computed, in chunks of
    at most 3, the same as on a roomy device, and later bases start at the size that fit."""
    import backend.hspace as service_module

    real = service_module.local_basis
    chunks = []

    def small_device(*args, chunk_size=None, **kwargs):
        chunks.append(chunk_size)
        if chunk_size is None or chunk_size > 3:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(*args, chunk_size=chunk_size, **kwargs)

    spec = BasisSpec(SampleSpec(model="ddpm", seed=12, steps=STEPS), 0.6, 4)  # block of 8 columns
    small = EigenfaceService(service.config)
    monkeypatch.setattr(service_module, "local_basis", small_device)
    basis = small.discover(spec).basis
    assert chunks == [None, 4, 2]
    small.discover(BasisSpec(SampleSpec(model="ddpm", seed=13, steps=STEPS), 0.6, 4))
    assert chunks[3:] == [2]  # remembered for the model
    monkeypatch.setattr(service_module, "local_basis", real)
    roomy = EigenfaceService(service.config).discover(spec).basis
    torch.testing.assert_close(basis.sigma, roomy.sigma, rtol=1e-4, atol=0)


def test_out_of_memory_at_one_direction_is_a_clear_error_and_the_service_recovers(service, monkeypatch):
    import backend.hspace as service_module

    real = service_module.local_basis
    spec = BasisSpec(SampleSpec(model="ddpm", seed=11, steps=STEPS), 0.6, 3)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    monkeypatch.setattr(service_module, "local_basis", exhausted)
    with pytest.raises(InputError, match="out of memory"):
        service.discover(spec)
    monkeypatch.setattr(service_module, "local_basis", real)
    assert service.discover(spec).basis.k == 3  # nothing half-computed was cached


def test_cache_stays_within_its_byte_bound(tiny_ddpm_dir):
    small = EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir)}, device="cpu", cache_bytes=200_000))
    for seed in range(6):
        small.discover(BasisSpec(SampleSpec(model="ddpm", seed=seed, steps=STEPS), 0.6, 2))
        assert small.cache.bytes <= 200_000 or len(small.cache) == 1
    assert small.cache.evictions > 0
    # an evicted basis is recomputed identically
    again = small.discover(BasisSpec(SampleSpec(model="ddpm", seed=0, steps=STEPS), 0.6, 2))
    fresh = EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir)}, device="cpu")).discover(
        BasisSpec(SampleSpec(model="ddpm", seed=0, steps=STEPS), 0.6, 2)
    )
    assert torch.equal(again.basis.v, fresh.basis.v)


def test_unlisted_models_are_refused_in_app_mode(service):
    for name in ("../../etc", "/tmp", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        with pytest.raises(InputError, match="unknown model"):
            service.generate(SampleSpec(model=name))


def test_long_prompt_is_truncated_with_a_warning(service):
    result = service.discover(BasisSpec(SampleSpec(model="sd", seed=0, prompt="cat " * 300, steps=STEPS), 0.6, 2))
    assert any("truncated" in w for w in result.warnings)


def test_same_request_gives_identical_png_bytes(service):
    import io

    spec = BasisSpec(SampleSpec(model="ddpm", seed=5, steps=STEPS), 0.6, 2)
    blobs = []
    for _ in range(2):
        buffer = io.BytesIO()
        service.edit(spec, {0: 0.3, 1: -0.2}).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    assert blobs[0] == blobs[1]
