"""backend.geometry on analytic maps whose answers are known in closed form.

* linear h = A x with A = U diag(s) V^T built in code: the tangent space is the same
  everywhere, so transport is a projection and a geodesic is a straight line;
* radial projection h(x) = D x / |x| (onto a sphere / ellipsoid): J has rank n - 1 with the
  radial direction as null space, so following the tangent space should keep |x| nearly
  constant where a straight step leaves the sphere.
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.basis import local_basis
from backend.geometry import (
    GeodesicStep,
    geodesic_shoot,
    grassmann_distance,
    principal_angles,
    transport,
    transport_direction,
)

F64 = torch.float64


def _eye_rows(idx: list[int], n: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.eye(n, dtype=dtype)[idx]


def _linear_map(n: int = 8, m: int = 15, x_shape=(2, 4), h_shape=(3, 5), seed: int = 0):
    """h(x) = A x on flattened x, A = U diag(s) V^T with distinct singular values."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64)).Q  # (m, n)
    v = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q  # (n, n)
    s = torch.tensor([5.0, 4.0, 3.0, 1.0, 0.5, 0.25, 0.1, 0.05], dtype=F64)[:n]
    a = u @ torch.diag(s) @ v.T

    def h_fn(xb: torch.Tensor) -> torch.Tensor:
        return (xb.reshape(xb.shape[0], n) @ a.T).reshape(xb.shape[0], *h_shape)

    v_rows = v.T.reshape(n, *x_shape)  # true right singular vectors as rows
    return h_fn, a, s, v_rows, u


def _radial_map(scale: list[float]):
    """h(x) = D x / |x| for a batch (B, n): J = D (I - xx^T/|x|^2) / |x|, null space = x."""
    d = torch.tensor(scale)

    def h_fn(xb: torch.Tensor) -> torch.Tensor:
        return d.to(xb) * xb / xb.norm(dim=-1, keepdim=True)

    return h_fn


def _tangent(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape, generator=g, dtype=x.dtype)
    d = d - (d @ x) / (x @ x) * x
    return d / d.norm()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- principal angles


def test_principal_angles_identical_and_orthogonal():
    a = _eye_rows([0, 1, 2], 8)
    assert torch.allclose(principal_angles(a, a), torch.zeros(3, dtype=F64), atol=1e-12)
    b = _eye_rows([3, 4, 5], 8)
    assert torch.allclose(principal_angles(a, b), torch.full((3,), math.pi / 2, dtype=F64), atol=1e-12)
    assert grassmann_distance(a, b) == pytest.approx(math.pi / 2 * math.sqrt(3), abs=1e-12)
    assert grassmann_distance(a, a) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("theta", [1e-6, 1e-3, 0.3, 1.2, math.pi / 2 - 1e-6])
def test_principal_angles_known_rotation(theta):
    # span{e0, e1} vs span{cos t e0 + sin t e2, e1}: angles (0, t).
    a = _eye_rows([0, 1], 5)
    b = torch.zeros(2, 5, dtype=F64)
    b[0, 0], b[0, 2], b[1, 1] = math.cos(theta), math.sin(theta), 1.0
    angles = principal_angles(a, b)
    assert angles.shape == (2,)
    assert angles[0] == pytest.approx(0.0, abs=1e-12)
    assert angles[1] == pytest.approx(theta, rel=1e-9)
    assert grassmann_distance(a, b) == pytest.approx(theta, rel=1e-9)


def test_principal_angles_small_angle_in_float32():
    # float32 inputs: cos(1e-5) == 1.0 in float32, so float32 arccos would give 0; the float64
    # sine path recovers the angle.
    theta = 1e-5
    a = _eye_rows([0, 1], 6, torch.float32).reshape(2, 2, 3)
    b = torch.zeros(2, 6)
    b[0, 0], b[0, 4], b[1, 1] = math.cos(theta), math.sin(theta), 1.0
    angles = principal_angles(a, b.reshape(2, 2, 3))
    assert angles.dtype == torch.float32
    assert float(angles[1]) == pytest.approx(theta, rel=1e-4)


def test_principal_angles_unnormalised_rows_unequal_k_and_reference():
    g = _gen(3)
    a = torch.randn(5, 20, generator=g, dtype=F64)
    b = torch.randn(3, 20, generator=g, dtype=F64)
    qa, qb = torch.linalg.qr(a.T).Q, torch.linalg.qr(b.T).Q
    reference = torch.arccos(torch.linalg.svdvals(qa.T @ qb).clamp(max=1)).sort().values  # fine away from 0
    angles = principal_angles(a, b)
    assert angles.shape == (3,)
    assert torch.allclose(angles, reference, atol=1e-10)
    assert torch.allclose(principal_angles(b, a), angles, atol=1e-12)  # symmetric
    assert torch.allclose(principal_angles(3.0 * a + a[[1, 2, 3, 4, 0]], b), angles, atol=1e-10)  # same spans
    assert bool((angles[1:] >= angles[:-1]).all())


def test_principal_angles_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rows of equal shape"):
        principal_angles(torch.zeros(2, 4), torch.zeros(2, 5))


# ------------------------------------------------------------------------------ linear map


def test_local_basis_recovers_known_svd():
    h_fn, _, s, v_rows, _ = _linear_map()
    basis = local_basis(h_fn, torch.randn(2, 4, dtype=F64), 3, tol=1e-10, generator=_gen())
    assert torch.allclose(basis.sigma, s[:3], rtol=1e-8)
    assert principal_angles(basis.v, v_rows[:3]).max() < 1e-7


def test_transport_on_linear_map_is_projection():
    h_fn, _, _, v_rows, u = _linear_map()
    g = _gen(1)
    x_a, x_b = torch.randn(2, 4, generator=g, dtype=F64), torch.randn(2, 4, generator=g, dtype=F64)
    basis_a = local_basis(h_fn, x_a, 3, tol=1e-10, generator=_gen(2))
    basis_b = local_basis(h_fn, x_b, 3, tol=1e-10, generator=_gen(3))

    # A direction already in the span comes back unchanged (J is the same at both points).
    d = (0.6 * v_rows[0] - 0.3 * v_rows[1] + 0.74 * v_rows[2]).to(F64)
    d = d / d.norm()
    out = transport_direction(d, basis_a, basis_b)  # no h_fn: the span shortcut, no model call
    assert out.shape == (2, 4)
    assert torch.allclose(out, d, atol=1e-8)

    # The same through the h-image computed with a JVP.
    assert torch.allclose(transport_direction(d, None, basis_b, h_fn, x_a), d, atol=1e-8)

    # A direction outside the span is projected onto it (and normalised).
    e = torch.randn(2, 4, generator=g, dtype=F64)
    vb = basis_b.v.reshape(3, -1)
    proj = ((vb @ e.reshape(-1)) @ vb).reshape(2, 4)
    out = transport_direction(e, basis_a, basis_b, h_fn, x_a)
    assert torch.allclose(out, proj / proj.norm(), atol=1e-8)
    assert out.norm() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="pass h_fn and x_source"):
        transport_direction(e, basis_a, basis_b)

    # An h-vector orthogonal to the target's tangent space (range of A minus top-3) cannot go.
    with pytest.raises(ValueError, match="no component"):
        transport(u[:, 5].reshape(3, 5), basis_b)


def test_inverse_sigma_variants_on_the_span():
    h_fn, _, _, _, _ = _linear_map()
    basis_a = local_basis(h_fn, torch.randn(2, 4, generator=_gen(4), dtype=F64), 3, tol=1e-10, generator=_gen(5))
    basis_b = local_basis(h_fn, torch.randn(2, 4, generator=_gen(6), dtype=F64), 3, tol=1e-10, generator=_gen(7))
    # On each basis direction both variants agree: u_i (or v_i) goes to v_i.
    for i in range(3):
        for inverse_sigma in (True, False):
            out = transport(basis_a.u[i], basis_b, inverse_sigma=inverse_sigma)
            assert torch.allclose(out, basis_a.v[i], atol=1e-8)
            out = transport_direction(basis_a.v[i], basis_a, basis_b, inverse_sigma=inverse_sigma)
            assert torch.allclose(out, basis_a.v[i], atol=1e-8)
    # On a mixture both stay in the span, but only the Sigma^-1 form returns the mixture itself;
    # without it component i is weighted by sigma_i (here 5 : 3).
    d = (basis_a.v[0] + basis_a.v[2]) / math.sqrt(2)
    exact = transport_direction(d, basis_a, basis_b, inverse_sigma=True)
    official = transport_direction(d, basis_a, basis_b, inverse_sigma=False)
    assert torch.allclose(exact, d, atol=1e-8)
    expected = 5.0 * basis_a.v[0] + 3.0 * basis_a.v[2]
    assert torch.allclose(official, expected / expected.norm(), atol=1e-8)


def test_geodesic_on_linear_map_is_straight_line():
    h_fn, _, _, v_rows, _ = _linear_map()
    x = torch.randn(2, 4, generator=_gen(8), dtype=F64)
    d = 0.8 * v_rows[0] + 0.6 * v_rows[2]
    steps: list[GeodesicStep] = []
    path = geodesic_shoot(
        h_fn, x, d, 2.5, substeps=5, k=3, basis_iters=2, keep_bases=True, step_callback=steps.append,
        tol=1e-10, generator=_gen(9),
    )
    s = torch.linspace(0, 2.5, 6, dtype=F64).reshape(6, 1, 1)
    assert path.points.shape == (6, 2, 4) and path.directions.shape == (5, 2, 4)
    assert torch.allclose(path.points, x + s * d, atol=1e-8)
    assert torch.allclose(path.directions, d.expand(5, 2, 4), atol=1e-8)
    assert len(path.bases) == 6 and path.basis is path.bases[-1]
    assert all(b.iterations <= 2 for b in path.bases[1:])  # warm updates stay within basis_iters
    assert [st.step for st in steps] == [1, 2, 3, 4, 5]
    assert path.seconds > 0

    # Negative length goes the other way along the same line.
    back = geodesic_shoot(h_fn, x, d, -2.5, substeps=5, k=3, basis=path.bases[0], tol=1e-10, generator=_gen(9))
    assert torch.allclose(back.points, x - s * d, atol=1e-8)
    assert back.bases == ()


def test_geodesic_projects_direction_into_top_k_span():
    # v_4 is not among the top 3 directions: only the in-span part of d is followed.
    h_fn, _, _, v_rows, _ = _linear_map()
    x = torch.randn(2, 4, generator=_gen(10), dtype=F64)
    d = v_rows[1] + v_rows[4]
    path = geodesic_shoot(h_fn, x, d, 1.0, substeps=3, k=3, tol=1e-10, generator=_gen(11))
    assert torch.allclose(path.points[-1], x + v_rows[1], atol=1e-8)
    with pytest.raises(ValueError, match="no component"):
        geodesic_shoot(h_fn, x, v_rows[4], 1.0, substeps=3, k=3, basis=path.basis)


def test_geodesic_length_zero_returns_start():
    h_fn, _, _, v_rows, _ = _linear_map()
    x = torch.randn(2, 4, generator=_gen(12), dtype=F64)
    path = geodesic_shoot(h_fn, x, v_rows[0], 0.0, substeps=4, k=3, generator=_gen(13))
    assert path.points.shape == (5, 2, 4)
    assert torch.equal(path.points, x.expand(5, 2, 4))
    assert torch.equal(path.points[-1], x)


def test_geodesic_rejects_bad_arguments():
    h_fn, _, _, v_rows, _ = _linear_map()
    x = torch.zeros(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="substeps"):
        geodesic_shoot(h_fn, x, v_rows[0], 1.0, substeps=0, k=3)
    with pytest.raises(ValueError, match="direction must have"):
        geodesic_shoot(h_fn, x, torch.zeros(8, dtype=F64), 1.0, substeps=2, k=3)


# ------------------------------------------------------------------------------ curved maps


def test_transport_direction_span_shortcut_matches_jvp_on_nonlinear_map():
    g = _gen(14)
    w1, w2 = torch.randn(16, 6, generator=g, dtype=F64), torch.randn(10, 16, generator=g, dtype=F64)

    def h_fn(xb: torch.Tensor) -> torch.Tensor:
        return torch.tanh(xb @ w1.T) @ w2.T

    x_a, x_b = torch.randn(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    basis_a = local_basis(h_fn, x_a, 3, max_iters=4, generator=_gen(15))  # need not converge
    basis_b = local_basis(h_fn, x_b, 3, generator=_gen(16))
    d = 0.3 * basis_a.v[0] - basis_a.v[1] + 0.5 * basis_a.v[2]
    shortcut = transport_direction(d, basis_a, basis_b)
    via_jvp = transport_direction(d, None, basis_b, h_fn, x_a)
    assert torch.allclose(shortcut, via_jvp, atol=1e-8)


def test_transport_on_sphere_projects_onto_new_tangent_plane():
    h_fn = _radial_map([1.0, 1.0, 1.0])
    x_a = torch.tensor([1.0, 0.0, 0.0])
    x_b = torch.tensor([0.8, 0.6, 0.0])
    basis_a = local_basis(h_fn, x_a, 2, generator=_gen(17))
    basis_b = local_basis(h_fn, x_b, 2, generator=_gen(18))
    assert basis_a.sigma == pytest.approx([1.0, 1.0], rel=1e-5)  # J = (I - x x^T) at |x| = 1
    d = torch.tensor([0.0, 1.0, 0.0])  # tangent at x_a
    expected = d - (d @ x_b) * x_b
    out = transport_direction(d, basis_a, basis_b)
    assert torch.allclose(out, expected / expected.norm(), atol=1e-5)


@pytest.mark.parametrize("scale", [[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
def test_geodesic_stays_near_sphere_where_straight_step_leaves_it(scale):
    h_fn = _radial_map(scale)
    x = torch.nn.functional.normalize(torch.tensor([1.0, 0.5, -0.3]), dim=0)
    d = _tangent(x)
    length = 1.0
    path = geodesic_shoot(h_fn, x, d, length, substeps=8, k=2, generator=_gen(19))
    radius_error = abs(float(path.points[-1].norm()) - 1.0)
    straight_error = abs(float((x + length * d).norm()) - 1.0)
    # Each step is tangent at its start, so |x|^2 grows by step^2: sqrt(1 + 1/8) - 1 = 0.061 vs 0.414.
    assert radius_error < 0.5 * straight_error
    assert radius_error == pytest.approx(math.sqrt(1 + length**2 / 8) - 1, rel=1e-3)
    for p_i, d_i in zip(path.points[:-1], path.directions):  # every direction tangent at its point
        assert abs(float(d_i @ p_i)) < 1e-4 * float(p_i.norm())

    if scale == [1.0, 1.0, 1.0]:
        # On the round sphere the path also tracks the great circle exp_x(L d) = x cos L + d sin L.
        target = x * math.cos(length) + d * math.sin(length)
        geo_gap = float(torch.arccos((path.points[-1] / path.points[-1].norm() @ target).clamp(max=1)))
        straight = x + length * d
        straight_gap = float(torch.arccos((straight / straight.norm() @ target).clamp(max=1)))
        assert geo_gap < 0.5 * straight_gap

    # Negative length = shooting -d; the path moves against d.
    back = geodesic_shoot(h_fn, x, d, -length, substeps=8, k=2, generator=_gen(19))
    flipped = geodesic_shoot(h_fn, x, -d, length, substeps=8, k=2, generator=_gen(19))
    assert torch.allclose(back.points, flipped.points, atol=1e-5)
    assert float((back.points[-1] - x) @ d) < -0.5
