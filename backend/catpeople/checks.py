"""Checks of a training run's inputs, shared by the diffusion-model and the estimator trainers.

Both run for minutes before anything is written, so a bad budget, size or device is refused
up front with a one-line :class:`~backend.errors.InputError` rather than a crash deep inside a
network, or an untrained model saved as if it were trained.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..models import parse_device


def resolve_device(device: str | torch.device) -> torch.device:
    """The training device ("auto": CUDA when present); a CUDA device on a machine without one
    is refused before any work."""
    resolved = parse_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this machine has no usable CUDA GPU")
    return resolved


def check_budget(minutes: float, batch_size: int, resolution: int, multiple: int) -> None:
    """Refuse a budget or size that would "train" nothing and save it, or fail deep inside a network."""
    if not (math.isfinite(minutes) and minutes > 0):
        raise InputError(f"--minutes must be a positive number, got {minutes}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if resolution < multiple or resolution % multiple:
        raise InputError(f"--resolution must be a positive multiple of {multiple}, got {resolution}")
