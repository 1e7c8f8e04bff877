"""ui.device on a simulated ZeroGPU Space: each service call runs in a forked worker process.

The worker's cache dies with it; what it computed must come back with the result and land in
the serving process's cache, so the next call (forked from the server) finds it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys

import pytest
import torch

from backend.service import EigenfaceService, ServiceConfig
from backend.specs import BasisSpec, SampleSpec
from ui import device

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="ZeroGPU workers are forked processes")

SPEC = BasisSpec(SampleSpec(model="ddpm", seed=4, steps=4), timestep=0.5, k=2)


def _forked(fn):
    """``fn`` run the way ``spaces.GPU`` runs it: in a forked child, the arguments and the result
    pickled across (plain pickle: a copy, not torch's shared-memory handles, which die with the
    child). The arguments must pickle small: the service, models and all, never travels."""

    def run(*args):
        sent = pickle.dumps(args)
        assert len(sent) < 4096, "the call carried more than a function, its owner's id and small arguments"
        args = pickle.loads(sent)
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)

        def child() -> None:
            try:
                send.send_bytes(pickle.dumps(("ok", fn(*args))))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                send.send_bytes(pickle.dumps(("error", repr(exc))))

        process = context.Process(target=child)
        process.start()
        assert receive.poll(120), "the worker sent nothing back"
        status, value = pickle.loads(receive.recv_bytes())
        process.join(30)
        assert status == "ok", value
        return value

    return run


@pytest.fixture
def zero_gpu(monkeypatch):
    monkeypatch.setattr(device, "ZERO_GPU", True)
    monkeypatch.setattr(device, "_on_device", _forked(device._on_device))


def test_worker_entries_reach_the_serving_cache(zero_gpu, tiny_ddpm_dir):
    service = EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir)}, device="cpu"))
    result = device.Device(service.cache).call(service.discover, SPEC, progress=lambda p: None)  # the callback is dropped, not sent
    assert not result.cached and result.basis.k == 2
    assert service.cache.misses == 0  # nothing was computed in this process...
    again = service.discover(SPEC)  # ...yet the basis is here, with the trajectory it came from
    assert again.cached and service.cache.misses == 0
    assert torch.equal(again.basis.v, result.basis.v) and torch.equal(again.x_t, result.x_t)
    # a second call through the worker is served from the cache the fork inherited
    assert device.Device(service.cache).call(service.discover, SPEC).cached


def test_without_zero_gpu_calls_run_in_process(tiny_ddpm_dir):
    service = EigenfaceService(ServiceConfig(models={"ddpm": str(tiny_ddpm_dir)}, device="cpu"))
    rounds = []
    result = device.Device(service.cache).call(service.discover, SPEC, progress=rounds.append)
    assert not result.cached and len(rounds) == result.basis.iterations and service.cache.misses == 3  # trajectory, basis, ranges


def test_only_cpu_values_travel_back():
    assert device._on_cpu((torch.zeros(2), {"a": [torch.ones(1)]}, "text"))
    assert not device._on_cpu((torch.zeros(2), torch.empty(2, device="meta")))
