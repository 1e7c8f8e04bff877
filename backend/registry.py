"""Which models a host serves, and each loaded once.

The web app serves an allow-list of names (visitors never type a path or hub id); the CLI
also takes any path or hub id. A model loads on first use and stays loaded; a local
checkpoint's ``eigenface.json`` is read without loading its weights, because the page asks for
it while it is being built.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Mapping

from .errors import InputError, ModelError
from .models import BUILTIN_MODEL, BUILTIN_TEXT_MODEL, DiffusionModel, EditSettings, load_model
from .specs import BUILTIN_NAME, BUILTIN_TEXT_NAME

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Thread-safe: two requests for a model that is not loaded yet wait for one load."""

    def __init__(self, models: Mapping[str, str], *, allow_any: bool = False, device: str | None = None):
        self.sources = dict(models)
        self.allow_any = allow_any
        self.device = device
        self._loaded: dict[str, DiffusionModel] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def source(self, name: str) -> str:
        """Where an allow-listed name (or, when allowed, any path or hub id) loads from."""
        if not isinstance(name, str) or not name.strip():
            raise InputError("model must be a non-empty name")
        if name in self.sources:
            return self.sources[name]
        if self.allow_any:
            return name
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(self.sources)}")

    def get(self, name: str) -> DiffusionModel:
        """The loaded model; a checkpoint that cannot be loaded is the request's error."""
        source = self.source(name)
        with self._lock:
            if name not in self._loaded:
                try:
                    model = load_model(source, device=self.device)
                except ModelError as exc:
                    raise self._refusal(name, exc) from None
                model.name = name
                self._loaded[name] = model
            return self._loaded[name]

    def _refusal(self, name: str, exc: ModelError) -> InputError:
        """The error for a model that cannot be loaded. Whoever may name any path (the CLI) sees
        why; the web app's visitors chose a name from the host's allow-list, so they are not shown
        the host's paths: the reason goes to the log."""
        if self.allow_any:
            return InputError(str(exc))
        logger.error("allow-listed model %r could not be loaded: %s", name, exc)
        return InputError(f"model {name!r} cannot be loaded on this server right now (the host's log says why)")

    def settings(self, name: str) -> EditSettings:
        """The model's recommended edit timestep, strength and seed, without loading a local checkpoint."""
        source = self.source(name)
        if name not in self._loaded and (path := local_path(source)) is not None:
            try:
                return EditSettings.read(path)
            except ModelError as exc:
                raise self._refusal(name, exc) from None
        return self.get(name).settings


def canonical_model_name(name: str, models: Mapping[str, str]) -> str:
    """One name per model, however it was typed.

    Caches, saved directions and labellers are keyed by the model name, so ``./my-model``,
    ``my-model/`` and its absolute path must not count as three models, and a path to an
    allow-listed model's directory is that model. Allow-listed names and hub ids pass unchanged.
    """
    if name in models:
        return name
    path = local_path(name)
    if path is None:
        return name
    for listed, source in models.items():
        if local_path(source) == path:
            return listed
    return str(path)


def builtin_models() -> dict[str, str]:
    """The shipped models by name, the text model first: the page opens on the first, and the
    text model's images are clean where the pixel model's speckle, and its sliders stay faces to
    their calibrated ends (BENCHMARKS.md). A checkout without the text model's weights offers the
    pixel model alone."""
    models = {BUILTIN_NAME: str(BUILTIN_MODEL)}
    if (BUILTIN_TEXT_MODEL / "model_index.json").is_file():
        models = {BUILTIN_TEXT_NAME: str(BUILTIN_TEXT_MODEL), **models}
    return models


def is_builtin(source: str) -> bool:
    """Whether a model source is one of the shipped cat-people models' directories."""
    return local_path(source) in {BUILTIN_MODEL.resolve(), BUILTIN_TEXT_MODEL.resolve()}


def local_path(source: str) -> Path | None:
    """The resolved directory a model source names, or None for a hub id (or no such directory)."""
    try:
        path = Path(source).expanduser()
        return path.resolve() if path.is_dir() else None
    except (OSError, RuntimeError, ValueError):
        return None
