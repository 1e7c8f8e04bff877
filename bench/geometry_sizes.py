"""How much bench/geometry_eval.py measures (its sections read these sizes; ``--quick`` uses QUICK)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sizes:
    validity_seeds: tuple[int, ...] = tuple(range(8))
    validity_dirs: int = 4
    validity_strengths: tuple[float, ...] = (-1.2, -0.8, 0.8, 1.2)
    validity_modes: tuple[tuple[str, int | None], ...] = (("direct", None), ("geodesic", 2), ("geodesic", 4), ("guidance", None))
    substep_seeds: tuple[int, ...] = (0, 1, 2, 3)
    substep_dirs: int = 2
    substep_strengths: tuple[float, ...] = (-1.0, 1.0)
    substep_values: tuple[int, ...] = (1, 2, 4, 8)
    transport_dirs: int = 4
    transport_sources: tuple[int, ...] = (0,)
    transport_targets: tuple[int, ...] = tuple(range(1, 9))
    transport_strength: float = 0.5
    transport_target_k: int = 0  # directions of the target bases a direction is carried into (0: k)
    compare_seeds: tuple[int, ...] = (0, 1, 2, 3)
    compare_timesteps: tuple[float, ...] = (0.8, 0.6, 0.4, 0.2)
    k: int = 8
    #: edit timestep of (a), (a') and (b); fixed rather than the model's eigenface.json so that
    #: the recorded results stay reproducible (`--set timestep=0.3` for the built-in's setting)
    timestep: float = 0.6


QUICK = Sizes(
    validity_seeds=(0,), validity_dirs=1, validity_strengths=(-1.2, 1.2),
    substep_seeds=(0,), substep_dirs=1, substep_strengths=(1.0,), substep_values=(1, 2, 4),
    transport_dirs=2, transport_targets=(1, 2),
    compare_seeds=(0, 1, 2),
)
