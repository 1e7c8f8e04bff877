"""Run service calls where the accelerator is, keeping the cache in the serving process.

On a ZeroGPU Space every ``@spaces.GPU`` call runs in a forked worker: whatever it adds to
the service's cache dies with the worker. So the worker records the entries it computes
(:func:`backend.cache.record_computed`), returns them (CPU tensors only) with the result,
and the serving process adopts them into its own cache; the next call forks from a process
that has them. Elsewhere the decorator is inert and this is a plain method call.
"""

from __future__ import annotations

from typing import Any

import torch

from backend.cache import leaves, record_computed
from backend.service import EigenfaceService

from .common import ZERO_GPU, gpu

_SERVICES: dict[int, EigenfaceService] = {}


def call(service: EigenfaceService, method: str, *args: Any, **kwargs: Any) -> Any:
    """``getattr(service, method)(*args, **kwargs)``, on the GPU worker when there is one."""
    _SERVICES[id(service)] = service
    if ZERO_GPU:
        kwargs.pop("progress", None)  # a callback cannot reach back across the fork
    result, entries = _on_device(id(service), method, args, kwargs, ZERO_GPU)
    for key, value in entries:
        service.cache.put(key, value)
    return result


@gpu(duration=120)
def _on_device(service_id: int, method: str, args: tuple, kwargs: dict, record: bool) -> tuple[Any, list[tuple[Any, Any]]]:
    """The call's result and, if ``record`` (in a worker process), the cache entries it computed."""
    service = _SERVICES[service_id]
    if not record:
        return _method(service, method)(*args, **kwargs), []
    with record_computed() as entries:
        result = _method(service, method)(*args, **kwargs)
    return result, [(key, value) for key, value in entries if _on_cpu(value)]


def _on_cpu(value: Any) -> bool:
    return all(leaf.device.type == "cpu" for leaf in leaves(value) if isinstance(leaf, torch.Tensor))

def _method(service: EigenfaceService, path: str) -> Any:
    """``service.a.b`` for the path "a.b" (the service's parts: labels, library)."""
    target: Any = service
    for name in path.split("."):
        target = getattr(target, name)
    return target
