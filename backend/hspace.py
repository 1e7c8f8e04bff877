"""h-space: the U-Net bottleneck as a function of x_t.

``bottleneck_fn`` turns a loaded model into a closure h(x_t) with the timestep and the text
conditioning fixed (k-diffusion wraps models the same way), so the basis code sees a plain
batched map. Only the encoder half runs: a forward hook on the bottleneck stores its output
and raises, which also works inside ``torch.func.jvp``. The hook is armed per thread, so a
render on another thread through the same U-Net is never interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .basis import Basis, BasisProgress, HFn, default_block_size, local_basis
from .models import DiffusionModel

logger = logging.getLogger(__name__)

_armed = threading.local()


class _Reached(Exception):
    """Carries the bottleneck activation out of the U-Net forward pass."""

    def __init__(self, h: Tensor):
        super().__init__("bottleneck reached")
        self.h = h


def _capture(module: torch.nn.Module, args: tuple, output: Tensor | tuple) -> None:
    if getattr(_armed, "on", False):
        raise _Reached(output[0] if isinstance(output, tuple) else output)


def bottleneck_module(unet: torch.nn.Module) -> torch.nn.Module:
    """The mid block, or the last down block for U-Nets built without one."""
    return unet.mid_block if getattr(unet, "mid_block", None) is not None else unet.down_blocks[-1]


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    # CPU forward-mode AD through GroupNorm fails on channels-last strided inputs.
    return tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)


def _install_hooks(unet: torch.nn.Module) -> None:
    if getattr(unet, "_eigenface_hooks", False):
        return
    bottleneck_module(unet).register_forward_hook(_capture)
    for module in unet.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.register_forward_pre_hook(_contiguous_input)
    unet._eigenface_hooks = True


def bottleneck_fn(model: DiffusionModel, t: int, context: Tensor | None = None) -> HFn:
    """h(x): (B, *sample_shape) -> (B, *h_shape) at timestep t, conditioned on ``context`` (1, tokens, dim)."""
    unet = model.unet
    _install_hooks(unet)
    timestep = torch.tensor(t, device=model.device)

    def h_fn(x: Tensor) -> Tensor:
        _armed.on = True
        try:
            if context is None:
                unet(x, timestep)
            else:
                unet(x, timestep, encoder_hidden_states=context.expand(x.shape[0], -1, -1).to(x.dtype))
        except _Reached as reached:
            return reached.h
        finally:
            _armed.on = False
        raise RuntimeError("the U-Net finished without passing its bottleneck")

    return h_fn


@contextlib.contextmanager
def jacobian_context(exact_jvp: bool) -> Iterator[None]:
    """Kernels for differentiating the U-Net: forward-mode AD has no flash / memory-efficient
    attention, so exact JVPs use the math kernel; finite differences keep the fast ones."""
    if not exact_jvp:
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def model_basis(
    model: DiffusionModel,
    x_t: Tensor,
    t: int,
    context: Tensor | None,
    k: int,
    *,
    chunk_size: int | None = None,
    jvp_mode: str = "fd",
    init: Tensor | None = None,
    callback: Callable[[BasisProgress], None] | None = None,
) -> tuple[Basis, int | None]:
    """The model's local basis at x_t, in chunks that fit the device, and the chunk size that did.

    On out-of-memory the chunk is halved and the solve retried, so a caller can keep the size
    that worked for the model's later bases. On an H200, SD 1.5 with k = 50 peaked at 19 GB in
    chunks of 20 and 9.5 GB in chunks of 10 at the same speed (BENCHMARKS.md), so a smaller GPU
    loses little by backing off. Raises ValueError for a k the bottleneck cannot give, and
    torch.OutOfMemoryError when even one direction at a time does not fit.
    """
    h_fn = bottleneck_fn(model, t, context)
    chunk = chunk_size
    while True:
        try:
            with jacobian_context(jvp_mode == "exact"):
                basis = local_basis(
                    h_fn,
                    x_t.to(model.device, torch.float32),
                    k,
                    init=None if init is None else init.to(model.device),
                    chunk_size=chunk,
                    jvp_mode=jvp_mode,
                    generator=torch.Generator().manual_seed(0),
                    callback=callback,
                )
            return basis, chunk
        except torch.OutOfMemoryError:
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            tried = chunk or default_block_size(k, model.device)  # None = the whole block at once
            if tried <= 1:
                raise
            chunk = tried // 2
            logger.warning("out of memory computing %d directions on %s: retrying in chunks of %d", k, model.name, chunk)
