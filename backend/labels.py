"""Self-naming sliders: one short name per direction, from the labeller a host registered.

Naming renders edits along every direction (about twice a basis's time on a CPU for the
built-in model), so it is its own call, cached with the basis it names. Only models with a
registered labeller can be named: a model's factors must be known (the cat-people model's
labeller lives in :mod:`backend.catpeople.semantics` and is registered by the app and the CLI).
"""

from __future__ import annotations

from typing import Mapping

from .cache import ByteLRU
from .errors import InputError
from .slots import Slots
from .specs import BUILTIN_NAME, BasisSpec, Labeller, Renderer, cache_key


class DirectionNames:
    """Names kept in the service's cache (``cache``), so they share its byte bound."""

    def __init__(self, renderer: Renderer, labellers: Mapping[str, Labeller], cache: ByteLRU, slots: Slots):
        self.renderer = renderer
        self.labellers = dict(labellers)
        self.cache = cache
        self.slots = slots  # labelling is heavy work: its renders run inside the heavy slot

    def available(self, model: str) -> bool:
        """Whether the directions of this model's bases can be named."""
        return model in self.labellers

    def names(self, spec: BasisSpec, *, compute: bool = True) -> tuple[str, ...] | None:
        """One name per direction of ``discover(spec)``. With ``compute=False`` only names already
        computed are returned (None when there are none yet)."""
        labeller = self.labellers.get(spec.sample.model)
        if labeller is None:
            if not compute:
                return None
            raise InputError(f"model {spec.sample.model!r} cannot name its directions: self-naming sliders need a model with known factors, like the built-in {BUILTIN_NAME!r}")
        if not compute:
            return self.cache.get(cache_key("labels", spec, self.renderer.point(spec).timestep))
        result = self.renderer.discover(spec)

        def name_all() -> tuple[str, ...]:
            with self.slots.hold("heavy"):
                names = tuple(str(name) for name in labeller(self.renderer, spec))
            if len(names) != result.basis.k:
                raise RuntimeError(f"the labeller of {spec.sample.model!r} gave {len(names)} names for {result.basis.k} directions")
            return names

        return self.cache.get_or_compute(cache_key("labels", spec, result.timestep), name_all)[0]
