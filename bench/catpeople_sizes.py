"""How much bench/catpeople_eval.py measures (its sections read these sizes; ``--quick`` uses QUICK)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sizes:
    renders: int = 1024
    samples: int = 256
    grid: int = 64
    batch: int = 32
    semantic_seeds: tuple[int, ...] = tuple(range(8))
    k: int = 8
    n_random: int = 8
    strength: float | None = None  # edit strength of the semantic check (None: the model's eigenface.json)
    heldout_strength: float = 0.3
    timestep: float | None = None  # edit timestep of the semantic check (None: the model's eigenface.json)
    prompt: str = ""  # the sampling prompt of a text model (its eigenface.json's; --model-path)
    sweep_seeds: tuple[int, ...] = (0, 1)
    sweep_timesteps: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.8)
    sweep_strengths: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    denoise_renders: int = 128
    denoise_timesteps: tuple[int, ...] = (50, 150, 300, 500, 700, 850, 950, 999)


QUICK = Sizes(renders=256, samples=32, grid=16, batch=16, semantic_seeds=(0, 1), k=4, n_random=4, denoise_renders=16,
              sweep_seeds=(0,), sweep_timesteps=(0.6, 0.8), sweep_strengths=(0.3, 0.5))
