"""Directions from text: ranking by alignment, the combined direction, and the SD path end to end."""

from __future__ import annotations

import pytest
import torch

from backend.basis import Basis
from backend.concepts import align
from backend.errors import InputError
from backend.service import EigenfaceService, ServiceConfig
from backend.specs import CONCEPT_K, BasisSpec, SampleSpec


def _basis(k: int = 4, x_shape=(2, 3, 3), h_shape=(5, 2)) -> Basis:
    """A basis with known orthonormal rows and singular values."""
    g = torch.Generator().manual_seed(0)
    n, m = torch.Size(x_shape).numel(), torch.Size(h_shape).numel()
    v = torch.linalg.qr(torch.randn(n, k, generator=g)).Q.T.reshape(k, *x_shape)
    u = torch.linalg.qr(torch.randn(m, k, generator=g)).Q.T.reshape(k, *h_shape)
    return Basis(torch.tensor([4.0, 3.0, 2.0, 1.0][:k]), v, u, 1, True)


def test_ranking_matches_a_brute_force_projection():
    basis = _basis()
    target = torch.randn(basis.v.shape[1:], generator=torch.Generator().manual_seed(1))
    result = align(basis, target, "x")
    brute = torch.tensor([float((basis.v[i] * target).sum()) for i in range(basis.k)])
    assert torch.allclose(result.scores, brute, atol=1e-6)
    assert result.order.tolist() == sorted(range(basis.k), key=lambda i: -abs(brute[i]))


def test_combined_direction_is_unit_and_in_the_span():
    basis = _basis()
    target = torch.randn(basis.v.shape[1:], generator=torch.Generator().manual_seed(2))
    d = align(basis, target, "x").direction.reshape(-1)
    rows = basis.v.reshape(basis.k, -1)
    assert torch.isclose(d.norm(), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(rows.T @ (rows @ d), d, atol=1e-6)  # its projection onto the span is itself


def test_known_answer_in_x_and_h():
    basis = _basis()
    # x: a target made of 3 v_2 - 1 v_0 ranks 2 first, 0 second, and combines to their unit mix
    target = 3 * basis.v[2] - basis.v[0]
    result = align(basis, target, "x")
    assert result.order.tolist()[:2] == [2, 0]
    assert torch.allclose(result.direction, target / target.norm(), atol=1e-6)
    assert result.captured == pytest.approx(1.0, abs=1e-6)
    # h: the h-image of v_1 pulls back to v_1 itself (J v_1 = sigma_1 u_1)
    result = align(basis, basis.sigma[1] * basis.u[1], "h")
    assert result.order.tolist()[0] == 1
    assert torch.allclose(result.direction, basis.v[1], atol=1e-6)


def test_zero_target_and_wrong_size_are_refused():
    basis = _basis()
    with pytest.raises(ValueError, match="changes nothing"):
        align(basis, torch.zeros(basis.v.shape[1:]), "x")
    with pytest.raises(ValueError, match="elements"):
        align(basis, torch.ones(7), "x")


@pytest.fixture(scope="module")
def service(tiny_ddpm_dir, tiny_sd_dir) -> EigenfaceService:
    return EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir), "sd": str(tiny_sd_dir)}, device="cpu"))


def test_find_concept_on_stable_diffusion(service):
    """A concept is aligned on the image's top CONCEPT_K directions whatever the sliders' k (4 here),
    and on k of them when the sliders have more."""
    spec = BasisSpec(SampleSpec(model="sd", prompt="a cat", seed=0, steps=4), 0.6, 4)
    assert "ranges" not in service.budget.concept(spec).parts  # no slider runs along the concept basis's directions
    for space in ("x", "h"):
        alignment, result = service.find_concept(spec, "a horse", space)
        assert result.basis.k == CONCEPT_K and result.cached == (space == "h")  # the widened basis, computed once for both spaces
        assert alignment.scores.shape == (CONCEPT_K,) and sorted(alignment.order.tolist()) == list(range(CONCEPT_K))
        assert alignment.direction.shape == result.x_t.shape
        assert torch.isclose(alignment.direction.norm(), torch.tensor(1.0), atol=1e-5)
    wider = BasisSpec(spec.sample, 0.6, CONCEPT_K + 2)
    assert service.find_concept(wider, "a horse")[0].scores.shape == (CONCEPT_K + 2,)
    # toward and away are one slider with opposite signs: both render, and differ
    toward = service.edit_vector(spec, alignment.direction, 0.3)
    away = service.edit_vector(spec, alignment.direction, -0.3)
    assert toward.tobytes() != away.tobytes()


def test_find_concept_refuses_what_it_cannot_do(service):
    with pytest.raises(InputError, match="text-conditioned"):
        service.find_concept(BasisSpec(SampleSpec(model="ddpm", steps=4), 0.6, 2), "a horse")
    with pytest.raises(InputError, match="non-empty"):
        service.find_concept(BasisSpec(SampleSpec(model="sd", prompt="a cat", steps=4), 0.6, 2), "  ")
