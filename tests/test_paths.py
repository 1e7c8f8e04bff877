"""Precomputed geodesic paths (backend.paths) and their background manager (backend.precompute).

On the tiny random DDPM: the cached grid points are the geodesic edits a fresh shoot gives,
the interpolation between them is continuous, the service reads single-slider geodesic edits
off the cache, and a superseded precompute leaves nothing in the cache.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from backend.basis import Products, local_basis
from backend.lockstep import local_bases
from backend.edit import strength_scale
from backend.geometry import geodesic_shoot
from backend.paths import CachedPaths, precompute_paths
from backend.service import EigenfaceService, ServiceConfig
from backend.specs import BasisSpec, SampleSpec

ENDS = ((-0.8, 1.0), (-0.5, 0.5), (-1.0, 1.0), (-0.3, 0.6))
STEPS = 4


@pytest.fixture(scope="module")
def service(tiny_ddpm_dir) -> EigenfaceService:
    return EigenfaceService(ServiceConfig(models={"tiny": str(tiny_ddpm_dir)}))


def _spec(seed: int = 3) -> BasisSpec:
    return BasisSpec(SampleSpec(model="tiny", seed=seed, steps=10), 0.6, 4)


@pytest.fixture(scope="module")
def point_and_paths(service):
    spec = _spec()
    point = service.edit_point(spec, service.discover(spec))
    return point, precompute_paths(point, ENDS, STEPS)



def _held_until(gate: threading.Event):
    """A device call that runs the real computation only once the test sets ``gate``."""

    def held(fn, *args, **kwargs):
        gate.wait(60)
        return fn(*args, **kwargs)

    return held

def test_local_bases_match_local_basis_point_by_point(service):
    """The batched solve gives each point the basis a solve of that point alone gives."""
    spec = _spec()
    point = service.edit_point(spec, service.discover(spec))
    h_fn, x = point.h_fn(), point.x.float()
    points = [x + 0.3 * point.basis.v[i] for i in range(3)]
    inits = [point.basis.v] * 3
    together = local_bases(Products(h_fn, "fd"), points, 4, inits=inits, generators=[torch.Generator().manual_seed(i) for i in range(3)], max_iters=3)
    for i, (p, basis) in enumerate(zip(points, together)):
        alone = local_basis(h_fn, p, 4, init=inits[i], max_iters=3, jvp_mode="fd", generator=torch.Generator().manual_seed(i))
        assert torch.allclose(basis.sigma, alone.sigma, rtol=1e-4)
        assert torch.allclose(basis.v, alone.v, atol=1e-3)


def test_grid_points_equal_a_fresh_geodesic_shoot(point_and_paths):
    """Grid point j of a path is geodesic_shoot(length j * step, substeps j), as a geodesic edit takes it."""
    point, paths = point_and_paths
    x, basis = point.x.float(), point.basis
    for i, (lo, hi) in enumerate(ENDS):
        for end in (lo, hi):
            for j in (1, 2, STEPS):
                strength = end * j / STEPS
                fresh = geodesic_shoot(
                    point.h_fn(), x, basis.v[i], strength * strength_scale(x.shape), substeps=j, k=basis.k, basis=basis,
                    basis_iters=2, final_basis=False, jvp_mode="fd", generator=torch.Generator().manual_seed(0),
                ).points[-1]
                moved = float((fresh - x).abs().max())
                assert moved > 0.1
                assert torch.allclose(paths.at(i, strength), fresh, atol=1e-3 * moved, rtol=0), (i, strength)  # fd round-off of another batch size


def test_interpolation_is_continuous_and_starts_at_x(point_and_paths):
    point, paths = point_and_paths
    for i, (lo, hi) in enumerate(ENDS):
        assert torch.equal(paths.at(i, 0.0), point.x.float())
        values = np.linspace(lo, hi, 401)
        xs = torch.stack([paths.at(i, float(s)) for s in values])
        jumps = (xs[1:] - xs[:-1]).flatten(1).norm(dim=1)
        step = float(values[1] - values[0])
        # No jump larger than a few times the largest grid segment's slope allows.
        segments = torch.cat([paths.plus[i, 1:] - paths.plus[i, :-1], paths.minus[i, 1:] - paths.minus[i, :-1]]).flatten(1).norm(dim=1)
        slope = float(segments.max()) / (min(-lo, hi) / STEPS)
        assert float(jumps.max()) <= 1.01 * slope * step
        for j in range(1, STEPS):  # both sides of an inner grid point meet there
            g = hi * j / STEPS
            assert torch.allclose(paths.at(i, g - 1e-6), paths.at(i, g + 1e-6), atol=1e-4)
            assert torch.equal(paths.at(i, g), paths.plus[i, j])
        assert not paths.covers(i, hi + 0.01) and not paths.covers(i, lo - 0.01)


def test_service_reads_single_slider_geodesic_edits_off_the_paths(service, monkeypatch):
    spec = _spec(seed=4)
    result = service.discover(spec)
    assert service.paths.cached(spec, result) is None
    lo, hi = result.ranges[0]
    # A fresh geodesic edit takes 4 substeps, as the paths' 4 grid steps reach the range end.
    fresh = {end: np.asarray(service.edit(spec, [end], "geodesic"), dtype=int) for end in (lo, hi)}
    status = service.paths.start("reader", spec)
    assert status.state in ("running", "ready")
    assert service.paths.wait("reader", timeout=300).state == "ready"
    paths = service.paths.cached(spec, result)
    assert isinstance(paths, CachedPaths) and paths.k == 4 and paths.ends == result.ranges
    assert service.paths.covers(spec, result, [hi]) and not service.paths.covers(spec, result, [hi, 0.01])
    assert not service.paths.covers(spec, result, [hi + 0.01])
    import backend.paths
    import backend.service

    with monkeypatch.context() as patched:  # read off the paths, never shot: at the range ends too
        for module in (backend.service, backend.paths):
            patched.setattr(module, "apply_edits", lambda *a, **kw: pytest.fail("shot afresh, not read off the cached path"))
        for end in (lo, hi):
            cached = np.asarray(service.edit(spec, [end], "geodesic"), dtype=int)  # the end, rounded to float32 on its way
            assert np.abs(cached - fresh[end]).max() <= 2  # the same edit, up to a batch's round-off
    # Several sliders: shot afresh along the combined direction, as without paths.
    both = [0.5 * hi, 0.5 * result.ranges[1][1]]
    assert np.array_equal(np.asarray(service.edit(spec, both, "geodesic")), np.asarray(service.edit(spec, both, "geodesic", substeps=4)))


def test_a_superseded_precompute_leaves_nothing_in_the_cache(service):
    first, second = _spec(seed=5), _spec(seed=6)
    first_key = service.paths.key(first, service.discover(first))
    service.discover(second)
    gate = threading.Event()
    held = _held_until(gate)

    assert service.paths.start("tab", first, call=held).state == "running"
    service.paths.start("tab", second)  # the same session asks for another basis: the first is dropped
    gate.set()
    assert service.paths.wait("tab", timeout=300).state == "ready"
    for thread in threading.enumerate():
        if thread.name == "eigenface-paths":
            thread.join(60)
    assert first_key not in service.cache
    assert service.paths.cached(second, service.discover(second)) is not None
    assert service.paths.status("tab").state == "ready"


def test_a_job_another_session_wants_is_not_cancelled(service):
    spec = _spec(seed=7)
    key = service.paths.key(spec, service.discover(spec))
    gate = threading.Event()
    held = _held_until(gate)

    service.paths.start("a", spec, call=held)
    service.paths.start("b", spec)  # joins the running job
    service.paths.start("a", _spec(seed=3))  # a moves on; b still waits for spec's paths
    gate.set()
    assert service.paths.wait("b", timeout=300).state == "ready"
    assert key in service.cache


def test_asking_again_for_the_same_paths_keeps_the_job(service):
    """A page or API client polls by asking again: that must not cancel and restart its job."""
    spec = _spec(seed=8)
    key = service.paths.key(spec, service.discover(spec))
    gate = threading.Event()
    held = _held_until(gate)

    service.paths.start("poller", spec, call=held)
    job = service.paths._jobs[key]
    assert service.paths.start("poller", spec).state == "running"
    assert service.paths._jobs[key] is job and not job.cancel.is_set()
    gate.set()
    assert service.paths.wait("poller", timeout=300).state == "ready"
