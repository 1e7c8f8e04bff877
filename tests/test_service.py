"""backend.service.EigenfaceService end to end on the tiny checkpoints (CPU, 4 DDIM steps)."""

from __future__ import annotations

import io
import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import backend.service as service_module
from backend.basis import Basis, jvp
from backend.concepts import concept_change
from backend.hspace import bottleneck_fn
from backend.errors import InputError
from backend.geometry import principal_angles
from backend.cache import record_computed
from backend.service import EigenfaceService, ServiceConfig
from backend.specs import BasisSpec, SampleSpec, parse_timestep
from backend.testing import save_tiny_ddpm, save_tiny_ldm, save_tiny_pixel_text

STEPS = 4
K = 4


@pytest.fixture(scope="module")
def make_service(tiny_ddpm_dir, tiny_sd_dir):
    def make(**overrides) -> EigenfaceService:
        return EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir), "sd": str(tiny_sd_dir)}, device="cpu", **overrides))

    return make


@pytest.fixture(scope="module")
def svc(make_service) -> EigenfaceService:
    return make_service()


DDPM = SampleSpec(model="ddpm", seed=0, steps=STEPS)
DDPM_BASIS = BasisSpec(DDPM, timestep=0.5, k=K)
SD = SampleSpec(model="sd", seed=0, prompt="a photo of a cat", steps=STEPS, guidance_scale=7.5)
SD_BASIS = BasisSpec(SD, timestep=0.5, k=K)


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


@pytest.fixture
def recorded_render(monkeypatch):
    """Record the x_t batches the service hands to render (i.e. the edited points)."""
    calls = []
    real = service_module.render

    def spy(model, x, timesteps, *args, **kwargs):
        calls.append((x.detach().clone(), tuple(timesteps)))
        return real(model, x, timesteps, *args, **kwargs)

    monkeypatch.setattr(service_module, "render", spy)
    return calls


# ------------------------------------------------------------------------------ generate / discover
def test_generate(svc):
    image = svc.generate(DDPM)
    assert image.size == (16, 16) and image.mode == "RGB"
    assert svc.generate(DDPM) is not image  # a fresh image each call, from the cached trajectory
    assert png(svc.generate(DDPM)) == png(image)
    assert png(svc.generate(SampleSpec(model="ddpm", seed=1, steps=STEPS))) != png(image)


def test_identical_requests_give_identical_bytes(svc, make_service):
    fresh = make_service()
    assert png(fresh.generate(DDPM)) == png(svc.generate(DDPM))
    assert png(fresh.edit(DDPM_BASIS, {0: 0.5, 1: -0.3})) == png(svc.edit(DDPM_BASIS, {0: 0.5, 1: -0.3}))
    assert png(fresh.generate(SD)) == png(svc.generate(SD))


def test_identical_requests_give_identical_bases(svc, make_service):
    a = svc.discover(DDPM_BASIS).basis
    b = make_service().discover(DDPM_BASIS).basis
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.v, b.v) and torch.equal(a.u, b.u)


def test_discover(svc):
    result = svc.discover(DDPM_BASIS)
    traj = svc.trajectory(DDPM)
    assert traj.timesteps == (750, 500, 250, 0)
    assert result.timestep == 500 and result.index == 1  # 0.5 * 999 -> nearest schedule point
    assert torch.equal(result.x_t, traj.latents[1])
    basis = result.basis
    assert basis.k == K and basis.v.shape == (K, 3, 16, 16) and basis.u.shape == (K, 32, 8, 8)
    assert basis.v.device.type == "cpu" and basis.converged
    assert bool((basis.sigma[:-1] >= basis.sigma[1:]).all())
    again = svc.discover(DDPM_BASIS)
    assert again.cached and again.seconds == 0.0 and again.basis is basis
    # an int timestep and a fraction naming the same schedule point share the basis
    assert svc.discover(BasisSpec(DDPM, timestep=500, k=K)).basis is basis
    assert svc.discover(BasisSpec(DDPM, timestep="0.5", k=K)).basis is basis


def test_discover_reports_progress(make_service):
    rounds = []
    result = make_service().discover(BasisSpec(DDPM, timestep=0.5, k=2), progress=rounds.append)
    assert len(rounds) == result.basis.iterations and rounds[-1].sigma.shape == (2,)


# ------------------------------------------------------------------------------ edits
@pytest.mark.parametrize("mode", ["direct", "guidance", "geodesic"])
def test_zero_strength_reproduces_generate(svc, mode):
    original = png(svc.generate(DDPM))
    assert png(svc.edit(DDPM_BASIS, {0: 0.0}, mode)) == original
    assert png(svc.edit(DDPM_BASIS, [0.0] * K, mode)) == original
    assert png(svc.edit(DDPM_BASIS, {}, mode)) == original
    v0 = svc.discover(DDPM_BASIS).basis.v[0]
    assert png(svc.edit_vector(DDPM_BASIS, v0, 0.0, mode)) == original


def test_zero_strength_reproduces_generate_sd(svc):
    original = png(svc.generate(SD))
    for mode in ("direct", "guidance"):
        assert png(svc.edit(SD_BASIS, {1: 0.0}, mode)) == original


def directly(x_t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Where a direct edit puts x_t: x_t + step, rescaled to the norm of x_t (backend.edit.direct_edits)."""
    moved = x_t + step
    return moved * (x_t.norm() / moved.norm())


def test_direct_edit_steps_x_t_by_strength_sqrt_n_and_keeps_its_norm(svc, recorded_render):
    result = svc.discover(DDPM_BASIS)
    image = svc.edit(DDPM_BASIS, {0: 0.3})
    (x, timesteps), = recorded_render
    assert x.shape == (1, 3, 16, 16)
    assert float(x[0].norm()) == pytest.approx(float(result.x_t.norm()), rel=1e-5)
    torch.testing.assert_close(x[0], directly(result.x_t, 0.3 * math.sqrt(result.x_t.numel()) * result.basis.v[0]), atol=1e-5, rtol=1e-5)
    assert timesteps == (500, 250, 0)  # denoised from the edit timestep on
    assert png(image) != png(svc.generate(DDPM))


def test_negative_strength_moves_the_other_way(svc, recorded_render):
    result = svc.discover(DDPM_BASIS)
    svc.edit(DDPM_BASIS, {2: -0.25})
    torch.testing.assert_close(recorded_render[0][0][0], directly(result.x_t, -0.25 * math.sqrt(768) * result.basis.v[2]), atol=1e-5, rtol=1e-5)


def test_two_sliders_combine(svc, recorded_render):
    result = svc.discover(DDPM_BASIS)
    v = result.basis.v
    svc.edit(DDPM_BASIS, {0: 0.3, 2: -0.4})
    step = math.sqrt(768) * (0.3 * v[0] - 0.4 * v[2])
    torch.testing.assert_close(recorded_render[0][0][0], directly(result.x_t, step), atol=1e-5, rtol=1e-5)
    assert float(step.norm()) == pytest.approx(0.5 * math.sqrt(768), rel=1e-5)  # orthonormal: |(0.3, -0.4)| = 0.5
    # the full slider list means the same as the sparse mapping
    svc.edit(DDPM_BASIS, [0.3, 0.0, -0.4, 0.0])
    torch.testing.assert_close(recorded_render[1][0], recorded_render[0][0], atol=1e-6, rtol=0)


def test_edit_vector_direct_matches_slider_edit(svc, recorded_render):
    result = svc.discover(DDPM_BASIS)
    svc.edit_vector(DDPM_BASIS, 5.0 * result.basis.v[1], 0.4)  # the vector's length does not matter
    torch.testing.assert_close(recorded_render[0][0][0], directly(result.x_t, 0.4 * math.sqrt(768) * result.basis.v[1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode, substeps", [("guidance", 4), ("geodesic", 2)])
def test_curved_modes_run_and_change_the_image(svc, recorded_render, mode, substeps):
    result = svc.discover(DDPM_BASIS)
    original = svc.generate(DDPM)
    image = svc.edit(DDPM_BASIS, {0: 0.5}, mode, substeps=substeps)
    assert image.size == original.size
    assert np.abs(pixels(image) - pixels(original)).max() > 0
    x = recorded_render[0][0][0]
    assert torch.isfinite(x).all()
    moved = float((x - result.x_t).norm())
    assert 0.05 * 0.5 * math.sqrt(768) < moved < 2 * 0.5 * math.sqrt(768)
    assert not torch.allclose(x, result.x_t + 0.5 * math.sqrt(768) * result.basis.v[0], atol=1e-4)  # not a straight step
    assert not torch.allclose(x, directly(result.x_t, 0.5 * math.sqrt(768) * result.basis.v[0]), atol=1e-4)  # nor the direct edit
    assert png(svc.edit(DDPM_BASIS, {0: 0.5}, mode, substeps=substeps)) == png(image)  # deterministic


def test_geodesic_path_length_is_the_strength(svc, recorded_render):
    """Geodesic shooting moves in `substeps` steps of |strength| sqrt(n) / substeps each."""
    result = svc.discover(DDPM_BASIS)
    svc.edit(DDPM_BASIS, {1: 0.2}, "geodesic", substeps=1)  # one step: a straight move along v_1
    delta = recorded_render[0][0][0] - result.x_t
    torch.testing.assert_close(delta, 0.2 * math.sqrt(768) * result.basis.v[1], atol=1e-4, rtol=1e-4)


def test_preview_steps(svc, recorded_render):
    full = svc.edit(DDPM_BASIS, {0: 0.3})
    preview = svc.edit(DDPM_BASIS, {0: 0.3}, preview_steps=1)
    assert preview.size == full.size and preview.mode == full.mode
    assert recorded_render[0][1] == (500, 250, 0) and recorded_render[1][1] == (500,)
    torch.testing.assert_close(recorded_render[1][0], recorded_render[0][0])  # the same edited x_t
    assert svc.edit(DDPM_BASIS, {0: 0.3}, preview_steps=99).size == full.size


def test_strip_and_grid(svc):
    original = pixels(svc.generate(DDPM))
    strip = svc.strip(DDPM_BASIS, 1, [-0.5, 0.0, 0.5])
    assert len(strip) == 3 and all(im.size == (16, 16) for im in strip)
    assert np.abs(pixels(strip[1]) - original).max() <= 1  # batched render of the unedited point
    grid = svc.grid(DDPM_BASIS, strength=0.5, columns=3)
    assert grid.size == (3 * 16, K * 16)
    middle = pixels(grid)[:, 16:32]
    for row in range(K):
        assert np.abs(middle[16 * row : 16 * (row + 1)] - original).max() <= 1


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.generate(SampleSpec(model="nope")), "unknown model"),
        (lambda s: s.generate(SampleSpec(model="")), "non-empty"),
        (lambda s: s.generate(SampleSpec(model="ddpm", prompt="a cat", steps=STEPS)), "unconditional"),
        (lambda s: s.generate(SampleSpec(model="ddpm", steps=0)), "steps"),
        (lambda s: s.generate(SampleSpec(model="ddpm", steps=1001)), "steps"),
        (lambda s: s.generate(SampleSpec(model="ddpm", seed=-1, steps=STEPS)), "seed"),
        (lambda s: s.generate(SampleSpec(model="ddpm", seed=1.5, steps=STEPS)), "seed"),
        (lambda s: s.generate(SampleSpec(model="sd", steps=STEPS, guidance_scale=float("nan"))), "guidance_scale"),
        (lambda s: s.generate(SampleSpec(model="sd", steps=STEPS, guidance_scale=-1.0)), "guidance_scale"),
        (lambda s: s.discover(BasisSpec(DDPM, k=0)), "k must be"),
        (lambda s: s.discover(BasisSpec(DDPM, k=65)), "k must be"),
        (lambda s: s.discover(BasisSpec(DDPM, timestep=1000, k=K)), "timestep"),
        (lambda s: s.discover(BasisSpec(DDPM, timestep=-1, k=K)), "timestep"),
        (lambda s: s.discover(BasisSpec(DDPM, timestep=1.5, k=K)), "timestep"),
        (lambda s: s.discover(BasisSpec(DDPM, timestep="abc", k=K)), "timestep"),
        (lambda s: s.discover(BasisSpec(DDPM, k=K, edit_prompt="a cat")), "text-conditioned"),
        (lambda s: s.edit(DDPM_BASIS, {0: float("nan")}), "finite"),
        (lambda s: s.edit(DDPM_BASIS, {0: float("inf")}), "finite"),
        (lambda s: s.edit(DDPM_BASIS, {0: 11.0}), "within"),
        (lambda s: s.edit(DDPM_BASIS, {K: 0.3}), "direction index"),
        (lambda s: s.edit(DDPM_BASIS, {-1: 0.3}), "direction index"),
        (lambda s: s.edit(DDPM_BASIS, [0.1] * (K + 1)), "direction index"),
        (lambda s: s.edit(DDPM_BASIS, {0: 0.3}, "sideways"), "mode"),
        (lambda s: s.edit(DDPM_BASIS, {0: 0.3}, substeps=0), "substeps"),
        (lambda s: s.edit(DDPM_BASIS, {0: 0.3}, preview_steps=0), "preview_steps"),
        (lambda s: s.edit_vector(DDPM_BASIS, torch.ones(4, 8, 8), 0.3), "shape"),
        (lambda s: s.edit_vector(DDPM_BASIS, torch.zeros(3, 16, 16), 0.3), "all zeros"),
        (lambda s: s.edit_vector(DDPM_BASIS, torch.full((3, 16, 16), float("nan")), 0.3), "NaN"),
        (lambda s: s.edit_vector(DDPM_BASIS, torch.ones(3, 16, 16, dtype=torch.int64), 0.3), "floating-point"),
        (lambda s: s.edit_vector(DDPM_BASIS, torch.ones(3, 16, 16), float("nan")), "finite"),
        (lambda s: s.strip(DDPM_BASIS, K, [0.1]), "direction index"),
        (lambda s: s.grid(DDPM_BASIS, columns=2), "columns"),
        (lambda s: s.compare([DDPM_BASIS], space="z"), "space"),
        (lambda s: s.transport(s.discover(DDPM_BASIS).basis, K, s.discover(DDPM_BASIS).basis), "direction index"),
    ],
)
def test_bad_input_raises_input_error(svc, call, message):
    with pytest.raises(InputError, match=message):
        call(svc)


def test_any_model_only_when_allowed(make_service, tiny_ddpm_dir):
    with pytest.raises(InputError, match="unknown model"):
        make_service().generate(SampleSpec(model=str(tiny_ddpm_dir), steps=STEPS))
    anything = EigenfaceService(ServiceConfig(models={}, allow_any_model=True, device="cpu"))
    assert anything.generate(SampleSpec(model=str(tiny_ddpm_dir), steps=STEPS)).size == (16, 16)
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        anything.generate(SampleSpec(model="someone/some-model", steps=STEPS))
    with pytest.raises(InputError, match="not found"):
        anything.generate(SampleSpec(model="/no/such/dir", steps=STEPS))


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0.0), (999, 999.0), ("500", 500.0), (" 250 ", 250.0), (1.0, 999.0), (0.5, 499.5), ("0.6", 0.6 * 999), ("1e-1", 99.9), (np.int64(7), 7.0)],
)
def test_parse_timestep(value, expected):
    assert parse_timestep(value, 1000) == pytest.approx(expected)


@pytest.mark.parametrize("value", [1000, -1, 1.5, 0.0, -0.5, "abc", "", "1.5", "-1", float("nan"), float("inf"), True, None, [1]])
def test_parse_timestep_rejects(value):
    with pytest.raises(InputError):
        parse_timestep(value, 1000)


# ------------------------------------------------------------------------------ SD path
def _max_angle(a: Basis, b: Basis) -> float:
    return float(principal_angles(a.v, b.v).max())


def test_sd_different_prompt_gives_a_different_basis(svc):
    cat = svc.discover(SD_BASIS)
    assert cat.basis.v.shape == (K, 4, 8, 8) and cat.basis.u.shape == (K, 64, 4, 4)
    assert cat.warnings == ()
    dog = svc.discover(BasisSpec(SampleSpec(model="sd", seed=0, prompt="a red horse", steps=STEPS), timestep=0.5, k=K))
    assert _max_angle(cat.basis, dog.basis) > 0.1


def test_sd_edit_prompt_changes_the_basis(svc):
    base = svc.discover(SD_BASIS)
    edited = svc.discover(BasisSpec(SD, timestep=0.5, k=K, edit_prompt="a painting of an old man"))
    assert torch.equal(edited.x_t, base.x_t)  # the same point, a different Jacobian
    assert _max_angle(base.basis, edited.basis) > 0.05
    image = svc.edit(BasisSpec(SD, timestep=0.5, k=K, edit_prompt="a painting of an old man"), {0: 0.5})
    assert image.size == (16, 16)


def test_sd_edit_prompt_orders_directions_by_the_prompts_change(svc):
    """The edit prompt's own directions come first, each signed toward the edit prompt."""
    spec = BasisSpec(SD, timestep=0.5, k=K, edit_prompt="a painting of an old man")
    result = svc.discover(spec)
    model = svc.check_sample(SD)
    change = concept_change(model, result.x_t, result.timestep, svc.conditioning(model, SD.prompt).cond,
                            svc.conditioning(model, spec.edit_prompt).cond)
    scores = result.basis.v.reshape(K, -1) @ change.reshape(-1)
    assert (scores >= 0).all()
    assert torch.equal(scores, scores.sort(descending=True).values)
    h = bottleneck_fn(model, result.timestep, svc.conditioning(model, spec.edit_prompt).cond)
    jv = jvp(h, result.x_t, result.basis.v, mode="fd", fd_eps=1e-2)  # u and v were flipped together: J v_i = sigma_i u_i
    expected = result.basis.u * result.basis.sigma.view(-1, 1, 1, 1)
    assert torch.allclose(jv, expected, atol=0.05 * float(expected.abs().max()))


def test_sd_edit_prompt_equal_to_the_prompt_keeps_the_sigma_order(svc):
    """The prompt's change toward itself is zero: nothing to rank by, so the basis stays as found."""
    same = svc.discover(BasisSpec(SD, timestep=0.5, k=K, edit_prompt=SD.prompt))
    plain = svc.discover(SD_BASIS)
    assert torch.equal(same.basis.sigma, plain.basis.sigma) and torch.equal(same.basis.v, plain.basis.v)


def test_sd_classifier_free_guidance(svc, make_service):
    guided = svc.generate(SD)
    plain = svc.generate(SampleSpec(model="sd", seed=0, prompt="a photo of a cat", steps=STEPS, guidance_scale=1.0))
    assert guided.size == plain.size == (16, 16)
    assert png(guided) != png(plain)
    assert not torch.equal(svc.trajectory(SD).x0, svc.trajectory(SampleSpec(model="sd", seed=0, prompt="a photo of a cat", steps=STEPS, guidance_scale=1.0)).x0)
    assert png(make_service().generate(SD)) == png(guided)


def test_sd_long_prompt_warns_and_works(svc):
    prompt = "a photo of a smiling cat " * 20
    result = svc.discover(BasisSpec(SampleSpec(model="sd", seed=0, prompt=prompt, steps=STEPS), timestep=0.5, k=2))
    assert len(result.warnings) == 1 and "truncated" in result.warnings[0] and "77" in result.warnings[0]
    assert result.basis.k == 2 and torch.isfinite(result.basis.v).all()
    assert svc.generate(SampleSpec(model="sd", seed=0, prompt=prompt, steps=STEPS)).size == (16, 16)


def test_sd_empty_prompt(svc):
    spec = SampleSpec(model="sd", seed=0, prompt="", steps=STEPS)
    assert svc.generate(spec).size == (16, 16)
    result = svc.discover(BasisSpec(spec, timestep=0.5, k=2))
    assert result.warnings == () and result.basis.k == 2
    assert svc.edit(BasisSpec(spec, timestep=0.5, k=2), {0: 0.3}).size == (16, 16)


# ------------------------------------------------------------------------------ geometry through the service
def test_transport_and_compare(svc):
    b_spec = BasisSpec(SampleSpec(model="ddpm", seed=1, steps=STEPS), timestep=0.5, k=K)
    a, b = svc.discover(DDPM_BASIS), svc.discover(b_spec)
    # transporting a direction into its own basis is the identity
    torch.testing.assert_close(svc.transport(a.basis, 2, a.basis), a.basis.v[2], atol=1e-5, rtol=1e-5)
    moved = svc.transport(a.basis, 0, b.basis)
    assert moved.shape == (3, 16, 16) and float(moved.norm()) == pytest.approx(1.0, abs=1e-5)
    coords = b.basis.v.reshape(K, -1) @ moved.reshape(-1)  # it lies in the target's span
    assert float(coords.norm()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InputError, match="different models"):
        svc.transport(a.basis, 0, svc.discover(SD_BASIS).basis)

    dist = svc.compare([DDPM_BASIS, b_spec])
    assert dist.shape == (2, 2) and dist[0, 0] == dist[1, 1] == 0 and dist[0, 1] == dist[1, 0] > 0
    assert dist[0, 1] <= math.pi / 2 * math.sqrt(K) + 1e-9
    assert svc.compare([DDPM_BASIS, b_spec], space="h").shape == (2, 2)


def test_adopt_basis(make_service, svc):
    result = svc.discover(DDPM_BASIS)
    fresh = make_service()
    assert fresh.adopt_basis(DDPM_BASIS, result.basis, result.x_t)
    adopted = fresh.discover(DDPM_BASIS)
    assert adopted.cached and adopted.basis is result.basis
    other = BasisSpec(SampleSpec(model="ddpm", seed=2, steps=STEPS), timestep=0.5, k=K)
    assert not fresh.adopt_basis(other, result.basis, result.x_t)  # computed at another x_t
    assert not fresh.adopt_basis(BasisSpec(DDPM, timestep=0.5, k=K + 1), result.basis, result.x_t)


def test_finite_difference_jvp_mode(make_service, svc):
    """ServiceConfig(jvp_mode="fd") (the CUDA default) finds the same directions as exact JVPs."""
    spec = BasisSpec(DDPM, timestep=0.5, k=2)
    exact = svc.discover(spec).basis
    fd = make_service(jvp_mode="fd", basis_chunk_size=3).discover(spec).basis
    torch.testing.assert_close(fd.sigma, exact.sigma, rtol=1e-3, atol=0)
    assert float(principal_angles(fd.v[:1], exact.v[:1])[0]) < 1e-2


# ------------------------------------------------------------------------------ batches of edits
def test_render_edits_matches_one_edit_at_a_time(svc):
    vector = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))
    edits = [(0, 0.4), (2, -0.3), (vector, 0.5), (1, 0.0)]
    images = svc.render_edits(DDPM_BASIS, edits, batch_size=3)  # two batches: 3 + 1
    singles = [svc.edit(DDPM_BASIS, {0: 0.4}), svc.edit(DDPM_BASIS, {2: -0.3}), svc.edit_vector(DDPM_BASIS, vector, 0.5), svc.generate(DDPM)]
    assert len(images) == 4
    for batched, single in zip(images, singles):
        assert np.abs(pixels(batched) - pixels(single)).max() <= 1  # batch composition: at most one grey level
    assert svc.render_edits(DDPM_BASIS, []) == []


@pytest.mark.parametrize(
    "edits, kwargs, message",
    [
        ([(K, 0.3)], {}, "direction index"),
        ([(0, float("nan"))], {}, "finite"),
        ([(torch.ones(4, 8, 8), 0.3)], {}, "shape"),
        ([0.3], {}, "pairs"),
        ("0=0.3", {}, "pairs"),
        ([(0, 0.3)], {"batch_size": 0}, "batch_size"),
        ([(0, 0.3)], {"mode": "sideways"}, "mode"),
    ],
)
def test_render_edits_refuses_bad_input(svc, edits, kwargs, message):
    with pytest.raises(InputError, match=message):
        svc.render_edits(DDPM_BASIS, edits, **kwargs)


def test_vectors_add_to_the_slider_edit(svc, recorded_render):
    v = svc.discover(DDPM_BASIS).basis.v
    x_t = svc.discover(DDPM_BASIS).x_t
    svc.edit(DDPM_BASIS, {0: 0.3}, vectors=[(7.0 * v[1], -0.4)])  # a vector's length does not matter
    torch.testing.assert_close(recorded_render[0][0][0], directly(x_t, math.sqrt(768) * (0.3 * v[0] - 0.4 * v[1])), atol=1e-5, rtol=1e-5)


def test_a_vector_edit_computes_no_basis(make_service):
    fresh = make_service()
    fresh.edit_vector(DDPM_BASIS, torch.ones(3, 16, 16), 0.3)
    assert fresh.cache.misses == len(fresh.cache) == 1  # the trajectory only


# ------------------------------------------------------------------------------ saved directions
@pytest.fixture
def library_service(make_service, tmp_path) -> EigenfaceService:
    return make_service(library_dir=str(tmp_path / "library"))


def test_save_the_slider_edit_and_apply_it(library_service, recorded_render):
    s = library_service
    result = s.discover(DDPM_BASIS)
    saved = s.library.save("wide smile", DDPM_BASIS, {0: 0.3, 2: -0.4})
    assert saved.path.parent == s.library.files.root and saved.path.name == "wide smile.safetensors"
    p = saved.provenance
    assert (p["model"], p["seed"], p["steps"], p["timestep"], p["k"], p["shape"]) == ("ddpm", 0, STEPS, 500, K, [3, 16, 16])
    assert p["sliders"] == {"0": 0.3, "2": -0.4} and p["strength"] == pytest.approx(0.5)
    vector, provenance = s.library.files.load("wide smile")
    assert provenance == p and float(vector.norm()) == pytest.approx(1.0, abs=1e-5)
    assert [d.name for d in s.library.list()] == ["wide smile"]

    # At its own image, the saved direction at the saved strength is the slider edit again.
    s.library.edit(DDPM_BASIS, "wide smile", 0.5)
    s.edit(DDPM_BASIS, {0: 0.3, 2: -0.4})
    torch.testing.assert_close(recorded_render[0][0], recorded_render[1][0], atol=1e-5, rtol=1e-5)
    # On top of the sliders: one summed move.
    s.library.edit(DDPM_BASIS, "wide smile", 0.5, {1: 0.2})
    expected = math.sqrt(768) * (0.3 * result.basis.v[0] + 0.2 * result.basis.v[1] - 0.4 * result.basis.v[2])
    torch.testing.assert_close(recorded_render[2][0][0], directly(result.x_t, expected), atol=1e-5, rtol=1e-5)


def test_save_one_direction(library_service):
    s = library_service
    saved = s.library.save("d1", DDPM_BASIS, index=1)
    assert saved.provenance["index"] == 1 and "sliders" not in saved.provenance
    torch.testing.assert_close(s.library.files.load("d1")[0], s.discover(DDPM_BASIS).basis.v[1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.library.save("z", DDPM_BASIS, {0: 0.0}), "every slider is at zero"),
        (lambda s: s.library.save("z", DDPM_BASIS, []), "every slider is at zero"),
        (lambda s: s.library.save("z", DDPM_BASIS), "either"),
        (lambda s: s.library.save("z", DDPM_BASIS, {0: 0.3}, index=0), "either"),
        (lambda s: s.library.save("z", DDPM_BASIS, index=K), "direction index"),
        (lambda s: s.library.save("../z", DDPM_BASIS, index=0), "direction names"),
        (lambda s: s.library.save("z/y", DDPM_BASIS, index=0), "direction names"),
        (lambda s: s.library.save("z", DDPM_BASIS, {0: float("nan")}), "finite"),
        (lambda s: s.library.edit(DDPM_BASIS, "missing", 0.3), "no saved direction"),
        (lambda s: s.library.edit(DDPM_BASIS, "../../etc/passwd", 0.3), "direction names"),
    ],
)
def test_saving_refuses_bad_input(library_service, call, message):
    with pytest.raises(InputError, match=message):
        call(library_service)
    assert library_service.library.list() == []


def test_an_unsavable_name_is_refused_before_the_basis_is_computed(library_service):
    spec = BasisSpec(SampleSpec(model="ddpm", seed=97, steps=DDPM_BASIS.sample.steps), DDPM_BASIS.timestep, K)
    misses = library_service.cache.misses
    with pytest.raises(InputError, match="direction names"):
        library_service.library.save("../z", spec, index=0)
    assert library_service.cache.misses == misses  # no trajectory, no basis


def test_an_existing_name_is_kept_unless_overwritten(library_service):
    s = library_service
    s.library.save("mine", DDPM_BASIS, index=0)
    with pytest.raises(InputError, match="already exists"):
        s.library.save("mine", DDPM_BASIS, index=1)
    torch.testing.assert_close(s.library.files.load("mine")[0], s.discover(DDPM_BASIS).basis.v[0])
    s.library.save("mine", DDPM_BASIS, index=1, overwrite=True)
    torch.testing.assert_close(s.library.files.load("mine")[0], s.discover(DDPM_BASIS).basis.v[1])


def test_a_direction_of_another_model_is_refused(library_service):
    s = library_service
    s.library.save("pixels", DDPM_BASIS, index=0)
    with pytest.raises(InputError, match="saved on model 'ddpm'; this image is from 'sd'"):
        s.library.edit(SD_BASIS, "pixels", 0.3)
    s.library.files.save("no record", torch.randn(4, 8, 8), {})  # e.g. copied in by hand: only the shape can be checked
    with pytest.raises(InputError, match=r"has shape \(4, 8, 8\), but 'ddpm' samples have shape \(3, 16, 16\)"):
        s.library.edit(DDPM_BASIS, "no record", 0.3)
    assert s.library.edit(SD_BASIS, "no record", 0.3).size == (16, 16)
    with pytest.raises(InputError, match="cannot be transported"):
        s.library.edit(SD_BASIS, "no record", 0.3, transport=True)


def test_transport_carries_a_saved_direction_into_another_image(library_service, recorded_render):
    s = library_service
    other = BasisSpec(SampleSpec(model="ddpm", seed=1, steps=STEPS), timestep=0.5, k=K)
    s.library.save("d0", DDPM_BASIS, index=0)
    target = s.discover(other)
    s.library.edit(other, "d0", 0.3)
    s.library.edit(other, "d0", 0.3, transport=True)
    as_saved, transported = (x[0][0] for x in recorded_render)
    torch.testing.assert_close(as_saved, directly(target.x_t, 0.3 * math.sqrt(768) * s.discover(DDPM_BASIS).basis.v[0]), atol=1e-5, rtol=1e-5)
    unit = s.transport(s.discover(DDPM_BASIS).basis, 0, target.basis)
    in_span = target.basis.v.reshape(K, -1) @ unit.reshape(-1)
    assert float(unit.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(in_span.norm()) == pytest.approx(1.0, abs=1e-4)  # it now lies in the target's directions
    torch.testing.assert_close(transported, directly(target.x_t, 0.3 * math.sqrt(768) * unit), atol=1e-4, rtol=1e-4)


def test_library_location_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EIGENFACE_LIBRARY", str(tmp_path / "env-lib"))
    assert EigenfaceService(ServiceConfig(models={})).library.files.root == tmp_path / "env-lib"
    monkeypatch.delenv("EIGENFACE_LIBRARY")
    assert EigenfaceService(ServiceConfig(models={})).library.files.root == Path("~/.cache/eigenface/directions").expanduser()


# ------------------------------------------------------------------------------ text concepts through the service
def test_edit_concept_moves_along_the_found_direction(svc, recorded_render):
    alignment, result = svc.find_concept(SD_BASIS, "a horse")
    assert svc.find_concept(SD_BASIS, "a horse")[0] is alignment  # cached with the basis
    svc.edit_concept(SD_BASIS, "a horse", -0.3)
    torch.testing.assert_close(recorded_render[0][0][0], directly(result.x_t, -0.3 * math.sqrt(256) * alignment.direction), atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="'ddpm' has no text encoder"):
        svc.edit_concept(DDPM_BASIS, "a horse", 0.3)


# ------------------------------------------------------------------------------ self-naming directions
class BrightestChannel:
    """A labeller for the tiny model: the colour channel each direction brightens most."""

    def __init__(self):
        self.calls = 0

    def __call__(self, service: EigenfaceService, spec: BasisSpec) -> list[str]:
        self.calls += 1
        k = service.discover(spec).basis.k
        base = pixels(service.generate(spec.sample)).mean(axis=(0, 1))
        images = service.render_edits(spec, [(i, 0.5) for i in range(k)])
        return ["RGB"[int(np.argmax(pixels(im).mean(axis=(0, 1)) - base))] for im in images]


def test_labels_are_computed_once_and_cached_with_the_basis(make_service):
    labeller = BrightestChannel()
    s = make_service(labellers={"ddpm": labeller})
    assert s.labels.available("ddpm") and not s.labels.available("sd")
    s.discover(DDPM_BASIS)
    assert s.labels.names(DDPM_BASIS, compute=False) is None
    labels = s.labels.names(DDPM_BASIS)
    assert len(labels) == K and set(labels) <= {"R", "G", "B"}
    assert s.labels.names(DDPM_BASIS) == labels and s.labels.names(DDPM_BASIS, compute=False) == labels and labeller.calls == 1
    assert s.labels.names(BasisSpec(DDPM, timestep=500, k=K)) == labels  # the same schedule point, the same basis
    assert s.labels.names(SD_BASIS, compute=False) is None
    with pytest.raises(InputError, match="cannot name its directions"):
        s.labels.names(SD_BASIS)


def test_the_builtin_model_gets_the_factor_labeller(tiny_ddpm_dir, tmp_path):
    from backend.catpeople.render import FACTORS
    from backend.models import BUILTIN_MODEL
    from backend.catpeople.semantics import labellers_for, name_by_factor

    assert labellers_for({"catpeople": str(BUILTIN_MODEL)}) == {"catpeople": name_by_factor}
    renamed = labellers_for({"cats": str(BUILTIN_MODEL), "catpeople": str(tiny_ddpm_dir)})
    assert list(renamed) == ["cats"]  # by what it is, not by name
    # The labeller itself (renders edits, reads the factors with the shipped estimator) runs on any model.
    s = EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir)}, device="cpu", labellers={"ddpm": name_by_factor}))
    for label in s.labels.names(BasisSpec(DDPM, timestep=0.5, k=2)):
        assert label in FACTORS or (label.startswith("mixed (top: ") and label[12:-1] in FACTORS)


# ------------------------------------------------------------------------------ computed entries (ZeroGPU)
def test_record_computed_collects_only_this_threads_new_entries(make_service):
    s = make_service()
    spec = BasisSpec(SampleSpec(model="ddpm", seed=11, steps=STEPS), timestep=0.5, k=2)
    other = BasisSpec(SampleSpec(model="ddpm", seed=12, steps=STEPS), timestep=0.5, k=2)
    with record_computed() as entries:
        s.discover(spec)
        worker = threading.Thread(target=s.discover, args=(other,))
        worker.start()
        worker.join()
        s.discover(spec)  # cached: nothing new
    assert [key[0] for key, _ in entries] == ["trajectory", "basis", "ranges"]
    assert all(key[1] == spec.sample for key, _ in entries)
    fresh = make_service()
    for key, value in entries:
        fresh.cache.put(key, value)
    assert fresh.discover(spec).cached and fresh.cache.misses == 0


# ------------------------------------------------------------------------- per-model settings
@pytest.fixture(scope="module")
def tuned_ddpm(tmp_path_factory) -> Path:
    """A tiny DDPM that recommends its own edit timestep and strength (eigenface.json)."""
    path = save_tiny_ddpm(tmp_path_factory.mktemp("tuned") / "ddpm")
    (path / "eigenface.json").write_text('{"timestep": 0.3, "strength": 0.2}')
    return path


def test_a_model_brings_its_edit_settings(tuned_ddpm, tiny_ddpm_dir):
    from backend.models import EditSettings

    service = EigenfaceService(ServiceConfig(models={"tuned": str(tuned_ddpm), "plain": str(tiny_ddpm_dir)}, device="cpu"))
    assert service.settings("tuned") == EditSettings(timestep=0.3, strength=0.2)
    assert not service.models.is_loaded("tuned")  # read from the directory: building the page loads no weights
    assert service.settings("plain") == EditSettings() == EditSettings(timestep=0.6, strength=0.5, seed=0)
    # No timestep in the spec: the model's own; the same point as asking for it explicitly.
    own = service.discover(BasisSpec(SampleSpec(model="tuned", steps=10), k=2))
    explicit = service.discover(BasisSpec(SampleSpec(model="tuned", steps=10), timestep=0.3, k=2))
    assert own.timestep == explicit.timestep and explicit.cached
    assert own.timestep != service.discover(BasisSpec(SampleSpec(model="tuned", steps=10), timestep=0.6, k=2)).timestep
    assert service.discover(BasisSpec(SampleSpec(model="plain", steps=10), k=2)).timestep == service.discover(
        BasisSpec(SampleSpec(model="plain", steps=10), timestep=0.6, k=2)).timestep


@pytest.mark.parametrize(
    "text, message",
    [("not json", "not an Eigenface settings file"), ('{"timestep": 1.5}', "within|in \\(0, 1\\]"), ('{"timestep": 0}', "in \\(0, 1\\]"),
     ('{"strength": -1}', "strength must be positive"), ('{"strength": "nan"}', "strength must be positive"), ('[0.3]', "not an Eigenface settings file"),
     ('{"seed": -1}', "seed must be a whole number"), ('{"seed": 1.5}', "seed must be a whole number"), ('{"seed": true}', "seed must be a whole number"),
     ('{"guidance_scale": 80}', "guidance_scale must be within"), ('{"prompt": 3}', "prompt must be text"),
     ('{"range_cap": 0}', "range_cap must be a positive strength"), ('{"hf_criterion": 1}', "hf_criterion must be true or false"), ('{"range_cap": "inf"}', "range_cap must be a positive strength"),
     ('{"timestep": 0.3, "colour": 1}', None)],
)
def test_bad_settings_files_are_refused_clearly(tmp_path, text, message):
    from backend.errors import ModelError
    from backend.models import EditSettings

    (tmp_path / "eigenface.json").write_text(text)
    if message is None:  # unknown keys are left for newer versions
        assert EditSettings.read(tmp_path).timestep == 0.3
        return
    with pytest.raises(ModelError, match=message):
        EditSettings.read(tmp_path)


def test_a_text_model_brings_its_prompt_and_guidance(tiny_sd_dir, tmp_path):
    """A text model's eigenface.json names the page's first prompt and its own guidance scale,
    which applies whenever a request names none."""
    import shutil

    from backend.models import EditSettings

    tuned = tmp_path / "tuned_sd"
    shutil.copytree(tiny_sd_dir, tuned)
    (tuned / "eigenface.json").write_text('{"prompt": "a cat", "guidance_scale": 3.0}')
    service = EigenfaceService(ServiceConfig(models={"tuned": str(tuned)}, device="cpu"))
    assert service.settings("tuned") == EditSettings(prompt="a cat", guidance_scale=3.0)
    own = service.trajectory(SampleSpec(model="tuned", prompt="a cat", steps=STEPS))
    assert torch.equal(own.x0, service.trajectory(SampleSpec(model="tuned", prompt="a cat", steps=STEPS, guidance_scale=3.0)).x0)
    assert not torch.equal(own.x0, service.trajectory(SampleSpec(model="tuned", prompt="a cat", steps=STEPS, guidance_scale=7.5)).x0)


def test_hub_checkpoints_read_their_settings_too(tmp_path, monkeypatch):
    """A hub id's eigenface.json is fetched beside the weights; none, or trouble fetching it, means the defaults."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from backend.models import EditSettings, _hub_settings

    (tmp_path / "eigenface.json").write_text('{"timestep": 0.4}')
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(tmp_path / name))
    assert _hub_settings("org/model") == EditSettings(timestep=0.4, strength=0.5)

    def missing(repo, name):
        raise EntryNotFoundError(f"{name} not in {repo}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    assert _hub_settings("org/model") == EditSettings()

    def offline(repo, name):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert _hub_settings("org/model") == EditSettings()


def _service_of(checkpoint: Path) -> EigenfaceService:
    """A CPU service offering one unusual checkpoint, as model "m"."""
    return EigenfaceService(ServiceConfig(models={"m": str(checkpoint)}, device="cpu"))


def test_more_directions_than_a_tiny_model_has(tmp_path):
    """A model too small for the k asked (2x2 px here): a clear error, and the service goes on."""
    service = _service_of(save_tiny_ddpm(tmp_path / "m", sample_size=2))
    spec = BasisSpec(SampleSpec(model="m", seed=0, steps=STEPS), timestep=0.5, k=40)
    with pytest.raises(InputError, match="x has only 12 elements"):
        service.discover(spec)
    assert service.discover(replace(spec, k=8)).basis.k == 8


@pytest.mark.parametrize("variant", [{"channels": 1}, {"channels": 2}, {"channels": 4}, {"learned_variance": True}],
                         ids=["grayscale", "gray-alpha", "rgba", "learned-variance"])
def test_pixel_models_beyond_rgb_epsilon(tmp_path, variant):
    """A grayscale model (with or without alpha) renders as gray RGB and an RGBA one as RGB; a
    learned-variance model (6 output channels) is sampled, explored and edited from its
    prediction half, as diffusers' schedulers split it."""
    service = _service_of(save_tiny_ddpm(tmp_path / "m", **variant))
    spec = BasisSpec(SampleSpec(model="m", seed=0, steps=STEPS), timestep=0.5, k=K)
    image = service.generate(spec.sample)
    assert image.mode == "RGB" and image.size == (16, 16)
    if variant.get("channels", 3) < 3:
        assert len(set(image.getpixel((3, 5)))) == 1  # gray
    assert service.discover(spec).basis.v.shape[1] == variant.get("channels", 3)
    for mode in ("direct", "guidance", "geodesic"):
        edited = service.edit(spec, {0: 0.5}, mode)
        assert edited.mode == "RGB" and edited.size == (16, 16) and edited.tobytes() != image.tobytes()


@pytest.mark.parametrize("text", [False, True], ids=["LDMPipeline", "LDMTextToImagePipeline"])
def test_latent_diffusion_pipelines(tmp_path, text):
    """CompVis's LDM layout: the autoencoder is a VQModel called "vqvae" (and the text encoder
    "bert"). The sample lives in its latent space and is decoded to an image twice its size,
    not shown as pixels."""
    service = _service_of(save_tiny_ldm(tmp_path / "m", text=text))
    spec = BasisSpec(SampleSpec(model="m", seed=0, steps=STEPS, prompt="a cat" if text else ""), timestep=0.5, k=K)
    image = service.generate(spec.sample)
    assert image.size == (16, 16)  # 8x8 latents through the VQ decoder
    assert service.discover(spec).basis.v.shape == (K, 3, 8, 8)
    assert service.edit(spec, {0: 0.5}, "direct").tobytes() != image.tobytes()
    if text:  # the prompt reaches the U-Net (compared on latents: the VQ decoder snaps this random model's to one image)
        from backend.sampling import sample_trajectory

        model = service.model("m")
        cat, dog = (sample_trajectory(model, 0, STEPS, model.encode_prompt(p)).x0 for p in ("a cat", "a dog"))
        assert not torch.allclose(cat, dog)


def test_a_text_conditioned_pixel_model(tmp_path):
    """DeepFloyd IF's layout: a prompt but no VAE. Samples are pixels (thresholded as its scheduler
    asks), and discovery, edits and directions from text work as for Stable Diffusion."""
    service = _service_of(save_tiny_pixel_text(tmp_path / "m"))
    spec = BasisSpec(SampleSpec(model="m", seed=0, steps=STEPS, prompt="a cat"), timestep=0.5, k=K)
    image = service.generate(spec.sample)
    assert image.size == (16, 16) and image.tobytes() != service.generate(replace(spec.sample, prompt="a dog")).tobytes()
    assert service.discover(spec).basis.v.shape == (K, 3, 16, 16)
    for mode in ("direct", "geodesic"):
        assert service.edit(spec, {0: 0.5}, mode).tobytes() != image.tobytes()
    alignment, _ = service.find_concept(spec, "a horse")
    assert alignment.direction.shape == (3, 16, 16)
