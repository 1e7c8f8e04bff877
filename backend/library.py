"""Named directions: save an edit found on one image, apply it to others.

A saved direction is a unit vector in one model's sample space with its provenance: the image
it was found at (model, prompt, seed, steps, timestep, k), what it was made of, and the total
slider strength, so that it can be checked, traced and transported later. The files live in a
:class:`~backend.store.DirectionLibrary` folder; this module adds what needs a model: finding
the direction to save, checking that a direction fits an image, and moving the image along it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor

from .edit import combine
from .errors import InputError
from .specs import BasisSpec, Renderer, SampleSpec, check_int, check_vector, guidance_scale, slider_vector
from .sampling import DEFAULT_GUIDANCE
from .quota import Quota
from .ranges import Calibration
from .store import VISITOR_KEY, DirectionLibrary, SavedDirection


class Library:
    """Thread-safe: one visitor's save never interleaves with another's."""

    def __init__(self, renderer: Renderer, root: str | Path, quota: Quota | None = None):
        self.renderer = renderer
        self.files = DirectionLibrary(root)
        self.quota = quota or Quota("saved a direction")
        self._lock = threading.Lock()

    def save(
        self,
        name: str,
        spec: BasisSpec,
        strengths: Mapping[int, float] | Sequence[float] | None = None,
        *,
        index: int | None = None,
        overwrite: bool = False,
        visitor: str | None = None,
    ) -> SavedDirection:
        """Save the combined slider edit (``strengths``) or one basis direction (``index``) as ``name``.

        An existing name is refused unless ``overwrite``: the web app's library is shared by its
        visitors. A ``visitor``'s save (the web app's) counts against their :attr:`quota`, is
        marked as theirs, and may evict the least recently used visitor's direction from a full
        library; a save without one (the CLI, the host) is the host's, never evicted.
        """
        if (strengths is None) == (index is None):
            raise InputError("save either slider values or one direction index")
        self.files.check_writable(name, overwrite, evict=visitor is not None)  # before the basis, which may take seconds
        if visitor is not None:
            self.quota.take(visitor)
        model = self.renderer.model(spec.sample.model)
        result = self.renderer.discover(spec)
        if index is not None:
            index = check_int("direction index", index, 0, result.basis.k - 1)
            direction, strength, made_of = result.basis.v[index], 1.0, {"index": index}
        else:
            values = slider_vector(strengths, result.basis.k)
            direction, strength = combine(result.basis.v, values)
            if strength == 0.0:
                raise InputError("every slider is at zero: there is no edit to save; move a slider or save one direction")
            made_of = {"sliders": {str(i): round(float(v), 6) for i, v in enumerate(values.tolist()) if v != 0.0}}
        sample = spec.sample
        provenance = {
            "model": sample.model, "prompt": sample.prompt, "seed": sample.seed, "steps": sample.steps,
            "guidance_scale": guidance_scale(model, sample), "timestep": result.timestep, "k": result.basis.k,
            "edit_prompt": spec.edit_prompt or "", "shape": list(model.sample_shape), **made_of, "strength": round(strength, 6),
            **({VISITOR_KEY: True} if visitor is not None else {}),
        }
        with self._lock:
            return self.files.save(name, direction, provenance, overwrite=overwrite, evict=visitor is not None)

    def delete(self, name: str) -> Path:
        """Remove a saved direction (CLI and library use: the web app's library is shared by its
        visitors, so the app offers no delete)."""
        with self._lock:
            return self.files.delete(name)

    def source(self, name: str) -> BasisSpec:
        """The basis a saved direction was found in (what transporting it needs besides this image's)."""
        return saved_spec(name, self.files.provenance(name))

    def list(self) -> list[SavedDirection]:
        """The library's directions, by name (every model's: :meth:`vector` checks the fit)."""
        return self.files.list()

    def vector(self, name: str, spec: BasisSpec, *, transport: bool = False) -> Tensor:
        """A saved direction, checked against the image it is to move.

        A direction belongs to one model's sample space: another model's (by its provenance) or
        another shape is refused. ``transport`` carries it from the image it was saved at into
        this image's local basis (parallel transport), for a direction saved at another seed or
        timestep; at the image it was saved at, that leaves it as it is (it lies in that span).
        """
        return self._fit(name, *self.files.load(name), spec, transport)

    def _fit(self, name: str, vector: Tensor, provenance: Mapping[str, Any], spec: BasisSpec, transport: bool) -> Tensor:
        """:meth:`vector` of a direction already loaded (so a caller that also needs the stored
        vector reads the file once, and both come from the same version of it)."""
        model = self.renderer.model(spec.sample.model)
        saved_model = provenance.get("model")
        if saved_model is not None and saved_model != spec.sample.model:
            raise InputError(f"direction {name!r} was saved on model {saved_model!r}; this image is from {spec.sample.model!r}, whose sample space it does not belong to")
        if tuple(vector.shape) != tuple(model.sample_shape):
            raise InputError(f"direction {name!r} has shape {tuple(vector.shape)}, but {spec.sample.model!r} samples have shape {tuple(model.sample_shape)}")
        vector = check_vector(vector, model.sample_shape)
        if not transport:
            return vector
        source = self.renderer.discover(saved_spec(name, provenance)).basis
        return self.renderer.transport(source, vector, self.renderer.discover(spec).basis)

    def identity(self, name: str, transport: bool = False) -> tuple[str, str, bool]:
        """What names the direction :meth:`vector` gives at a basis (its calibrated range is cached
        and priced under it): the stored vector's content, so a name saved over is a new direction;
        transported, the result is a function of that and of the two bases its provenance and the
        key name."""
        return saved_id(self.files.load(name)[0], transport)

    def calibration(self, spec: BasisSpec, name: str, *, transport: bool = False) -> Calibration:
        """The saved direction's valid range and even-travel map at this image, by the sliders' own
        criterion (:meth:`~backend.service.EigenfaceService.direction_calibration`)."""
        stored, provenance = self.files.load(name)
        vector = self._fit(name, stored, provenance, spec, transport)
        return self.renderer.direction_calibration(spec, vector, saved_id(stored, transport))

    def edit(self, spec: BasisSpec, name: str, strength: float, strengths: Mapping[int, float] | Sequence[float] = (), mode: str = "direct", *, transport: bool = False, substeps: int | None = None, preview_steps: int | None = None) -> Image.Image:
        """The slider edit plus the saved direction ``name`` at ``strength`` (see :meth:`vector`)."""
        vector = self.vector(name, spec, transport=transport)
        return self.renderer.edit(spec, strengths, mode, vectors=[(vector, strength)], substeps=substeps, preview_steps=preview_steps)


def saved_id(vector: Tensor, transport: bool = False) -> tuple[str, str, bool]:
    """:meth:`Library.identity` of a stored vector: a digest of its float32 values."""
    digest = hashlib.sha1(vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
    return ("saved", digest, bool(transport))


def saved_spec(name: str, provenance: Mapping[str, Any]) -> BasisSpec:
    """The basis a saved direction was found in, from its provenance."""
    try:
        sample = SampleSpec(
            model=provenance["model"], seed=provenance["seed"], prompt=provenance["prompt"], steps=provenance["steps"],
            guidance_scale=float(provenance.get("guidance_scale", DEFAULT_GUIDANCE)),  # older files: SD's default
        )
        return BasisSpec(sample, timestep=provenance["timestep"], k=provenance["k"], edit_prompt=provenance.get("edit_prompt") or None)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"direction {name!r} does not record the image it was found at, so it cannot be transported; apply it as saved") from None
