"""How a host configures the service: which models, how much cache, budget and slots, where the library lives.

Its own module so the app, the CLI and the tests can build a configuration without reading the
service's code; the service only consumes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .quota import SAVE_INTERVAL_S, SAVES_PER_VISITOR
from .registry import builtin_models
from .specs import Labeller

#: Where named directions are saved unless ServiceConfig.library_dir (or $EIGENFACE_LIBRARY) says otherwise.
DEFAULT_LIBRARY = "~/.cache/eigenface/directions"
#: Most edits :meth:`EigenfaceService.render_edits` denoises in one batch (memory, not speed, bounds it).
DEFAULT_RENDER_BATCH = 16


@dataclass
class ServiceConfig:
    models: Mapping[str, str] = field(default_factory=builtin_models)
    allow_any_model: bool = False  # CLI: any path or hub id; app: the allow-list only
    cache_bytes: int = 1 << 30
    device: str | None = None
    basis_chunk_size: int | None = None  # most directions per batched JVP / VJP
    jvp_mode: str = "fd"  # fd: central differences with the fast kernels (faster on CPU and GPU, BENCHMARKS.md); exact: forward AD
    library_dir: str = field(default_factory=lambda: os.environ.get("EIGENFACE_LIBRARY") or DEFAULT_LIBRARY)
    #: Model name -> labeller (self-naming sliders); the host registers them (the app and the
    #: CLI register the cat-people labeller for the built-in model: backend.catpeople.semantics).
    labellers: Mapping[str, Labeller] = field(default_factory=dict)
    budget: int | None = None  # most U-Net evaluations per request (backend.budget); None: no limit
    heavy_slots: int = 1  # bases, trajectories, labellings computed at once (backend.slots)
    render_slots: int = 2  # denoising batches run at once
    saves_per_visitor: int = SAVES_PER_VISITOR  # web visitors' saves to the shared library (backend.quota)
    save_interval_s: float = SAVE_INTERVAL_S
    #: Quality boosting (stochastic steps at t <= 0.2 T, sampling.Boost): None = on for pixel
    #: models, where it measurably cleans the ends of the sliders (BENCHMARKS.md), off for latent
    #: models (the official code leaves it off on Stable Diffusion); True / False force it.
    boost: bool | None = None
