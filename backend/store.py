"""Files Eigenface writes and reads: bases, single directions, and a library of named directions.

Everything is safetensors (no pickles), with provenance (model, prompt, seed, timestep, index)
kept next to the tensors so a direction found once can be re-applied, and traced, later.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .basis import Basis
from .errors import InputError
from .ranges import CALIBRATED_EDIT, Calibration

#: Names of saved directions: they become file names, so no separators, no leading dot and no
#: trailing space or dot (which some file systems drop, so two names would share one file).
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.\- ]{0,62}[A-Za-z0-9_\-])?$")
MAX_FILE_BYTES = 512 << 20
#: Most directions a library holds: the web app lets anyone save, so the folder must not grow
#: without bound (a 64 px direction is 48 kB, an SD latent one 64 kB).
MAX_LIBRARY_ENTRIES = 1000
#: Provenance key marking a direction a web visitor saved. Only those may be evicted; anything
#: else was placed by the host (the CLI, a copied file) and is read-only to visitors.
VISITOR_KEY = "saved_by_visitor"


def save_basis(directory: str | Path, basis: Basis, x_t: Tensor, meta: dict, calibration: Calibration | None = None) -> Path:
    """DIR/basis.safetensors (v, u, sigma, x_t as float32; with a calibration also ``range``
    (k, 2) and ``travel``) and DIR/meta.json (with a calibration, ``"range": [[lo, hi], ...]``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"v": basis.v, "u": basis.u, "sigma": basis.sigma, "x_t": x_t}
    header = None
    if calibration is not None:
        tensors.update(range=torch.tensor(calibration.ranges), travel=torch.tensor(calibration.travel))
        meta = {**meta, "range": [[round(lo, 6), round(hi, 6)] for lo, hi in calibration.ranges]}
        header = {"range_edit": CALIBRATED_EDIT}
    save_file({k: t.detach().float().contiguous().cpu() for k, t in tensors.items()}, directory / "basis.safetensors", metadata=header)
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory / "basis.safetensors"


def load_basis(path: str | Path) -> tuple[Basis, Tensor, dict]:
    """A basis file (and the meta.json beside it, if any) -> (basis, x_t, meta)."""
    tensors = _load(path, required=("v", "u", "sigma", "x_t"))
    meta_path = Path(path).with_name("meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    v, u, sigma = tensors["v"], tensors["u"], tensors["sigma"]
    if not (v.shape[0] == u.shape[0] == sigma.shape[0]) or sigma.ndim != 1:
        raise InputError(f"{path}: v, u and sigma disagree on k ({v.shape[0]}, {u.shape[0]}, {tuple(sigma.shape)})")
    basis = Basis(sigma, v, u, int(meta.get("iterations", 0)), bool(meta.get("converged", True)))
    return basis, tensors["x_t"], meta


def load_calibration(path: str | Path, k: int) -> Calibration | None:
    """The ranges saved in a basis file, or None for a file written before they existed, with
    ranges measured on another edit (ranges.CALIBRATED_EDIT) or a malformed pair of tensors:
    the caller then calibrates again."""
    with safe_open(str(path), "pt") as handle:
        names = set(handle.keys())
        if not {"range", "travel"} <= names or (handle.metadata() or {}).get("range_edit") != CALIBRATED_EDIT:
            return None
        ranges, travel = handle.get_tensor("range").double(), handle.get_tensor("travel").double()
    if ranges.shape != (k, 2) or travel.ndim != 2 or travel.shape[0] != k or travel.shape[1] < 3 or not torch.isfinite(travel).all():
        return None
    if not ((ranges[:, 0] < 0).all() and (ranges[:, 1] > 0).all() and (travel.diff(dim=1) >= 0).all()):
        return None
    return Calibration(tuple((float(lo), float(hi)) for lo, hi in ranges.tolist()), tuple(tuple(row) for row in travel.tolist()))


def save_direction(path: str | Path, v: Tensor, provenance: dict) -> Path:
    """A single direction ``v`` (sample shape) with its provenance in the file's metadata.

    Written to a temporary file and renamed into place, so a reader (the web app listing the
    library while someone saves) never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({"v": v.detach().float().contiguous().cpu()}, temporary, metadata={"provenance": json.dumps(provenance)})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_direction(path: str | Path) -> tuple[Tensor, dict]:
    """A file holding a tensor ``v`` -> (v, provenance)."""
    tensors = _load(path, required=("v",))
    return tensors["v"], read_provenance(path)


def read_provenance(path: str | Path) -> dict:
    """The provenance in a direction file's header, without reading its tensors ({} if unreadable JSON)."""
    try:
        with safe_open(str(path), "pt") as handle:
            raw = (handle.metadata() or {}).get("provenance", "{}")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        provenance = json.loads(raw)
    except json.JSONDecodeError:
        provenance = {}
    return provenance if isinstance(provenance, dict) else {}


def _load(path: str | Path, required: tuple[str, ...]) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: only .safetensors files are read (pickled tensors can run code)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MB")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    missing = [name for name in required if name not in tensors]
    if missing:
        raise InputError(f"{path}: missing tensor(s) {', '.join(missing)}")
    for name in required:
        if not tensors[name].is_floating_point() or not torch.isfinite(tensors[name]).all():
            raise InputError(f"{path}: tensor {name!r} must be finite floating point")
    return {name: tensors[name].float() for name in required}


@dataclass(frozen=True)
class SavedDirection:
    name: str
    path: Path
    provenance: dict


class DirectionLibrary:
    """A folder of named directions: ``<name>.safetensors`` each, provenance inside.

    Messages name directions, never the folder: the web app shows them to strangers. A file's
    modification time is its last use (saving or loading touches it), so when the library is
    full a visitor's save replaces the least recently used visitor's direction; the host's
    directions are never evicted.
    """

    def __init__(self, root: str | Path, max_entries: int = MAX_LIBRARY_ENTRIES):
        self.root = Path(root).expanduser()
        self.max_entries = max_entries

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
            raise InputError(
                f"direction names are 1-64 letters, digits, spaces, '-', '_' or '.', starting with a letter or digit "
                f"and not ending in a space or '.', got {name!r}"
            )
        return self.root / f"{name}.safetensors"

    def check_writable(self, name: str, overwrite: bool = True, evict: bool = False) -> Path:
        """The path ``name`` would be saved at, or the reason it cannot be: callers check before
        they spend a basis computation on a direction that could not be saved."""
        return self._writable(name, overwrite, evict)[0]

    def _writable(self, name: str, overwrite: bool, evict: bool) -> tuple[Path, Path | None]:
        """:meth:`check_writable`'s path, and the direction to evict first to make room (None:
        there is room), from one scan of the folder's headers."""
        path = self._path(name)
        if path.is_file():
            if not overwrite:
                raise InputError(f"a direction named {name!r} already exists; choose another name")
            return path, None
        if self._count() < self.max_entries:
            return path, None
        evictable = self._evictable() if evict else []
        if not evictable:
            raise InputError(f"the direction library is full ({self.max_entries} directions, none of them a visitor's that could make room)")
        return path, evictable[0]

    def save(self, name: str, v: Tensor, provenance: dict, overwrite: bool = True, evict: bool = False) -> SavedDirection:
        """Write ``name``; with ``overwrite=False`` an existing name is refused (the web app's
        library is shared, and one visitor must not replace another's direction). With ``evict``
        a full library first drops its least recently used visitor's direction."""
        path, evicted = self._writable(name, overwrite, evict)
        if evicted is not None:
            evicted.unlink(missing_ok=True)
        save_direction(path, v, provenance)
        return SavedDirection(name, path, provenance)

    def _count(self) -> int:
        return sum(1 for _ in self.root.glob("*.safetensors")) if self.root.is_dir() else 0

    def _evictable(self) -> list[Path]:
        """Visitors' directions, least recently used first."""
        paths = []
        for path in self.root.glob("*.safetensors"):
            try:
                if read_provenance(path).get(VISITOR_KEY):
                    paths.append((path.stat().st_mtime, path.name, path))
            except (InputError, OSError):
                continue
        return [path for *_, path in sorted(paths)]

    def delete(self, name: str) -> Path:
        """Remove ``name`` from the folder; the path it had."""
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise InputError(f"no saved direction named {name!r}") from None
        return path

    def load(self, name: str) -> tuple[Tensor, dict]:
        """The direction and its provenance; counts as a use (see the class docstring)."""
        path = self._path(name)
        if not path.is_file():
            raise InputError(f"no saved direction named {name!r}")
        try:
            loaded = load_direction(path)
        except InputError:
            raise InputError(f"saved direction {name!r} is not a readable direction file") from None
        try:
            os.utime(path)
        except OSError:  # a read-only library still serves its directions
            pass
        return loaded

    def provenance(self, name: str) -> dict:
        """A saved direction's provenance, from its header alone."""
        path = self._path(name)
        if not path.is_file():
            raise InputError(f"no saved direction named {name!r}")
        try:
            return read_provenance(path)
        except InputError:
            raise InputError(f"saved direction {name!r} is not a readable direction file") from None

    def list(self) -> list[SavedDirection]:
        """Every readable direction, by name. Reads headers only; a file that is not a readable
        direction (or has a name :meth:`save` would refuse) is left out, so that one bad file
        does not hide the rest."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob("*.safetensors")):
            if not _NAME.fullmatch(path.stem):
                continue
            try:
                provenance = read_provenance(path)
            except InputError:
                continue
            found.append(SavedDirection(path.stem, path, provenance))
        return found
