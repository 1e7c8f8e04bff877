"""One edit as data: the settings and slider values that reproduce an image exactly.

The web app exports it as JSON (and loads it back), encodes it in the page's URL query,
and the CLI can read the same files. Everything that arrives from outside (an uploaded
file, a URL a stranger sent) passes through :meth:`EditState.from_dict` or
:meth:`EditState.from_query`, which reject anything they do not understand with an
:class:`InputError` whose message says what was wrong.

JSON schema (version 1), every key but ``version`` and ``prompt`` required, no others::

    {
      "version": 1,
      "model": "catpeople",        # a name from the host's allow-list, never a path or hub id
      "prompt": "",                # text; empty for unconditional models
      "seed": 3,                   # integer, 0 .. 2**63 - 1
      "timestep": 0.6,             # edit timestep as a fraction of T, in (0, 1]
      "k": 8,                      # directions, 1 .. 64
      "mode": "direct",            # direct | guidance | geodesic
      "steps": 20,                 # DDIM steps, 1 .. 1000
      "sliders": [0.4, 0, -0.3]    # strength per direction (RMS per element), at most k values;
    }                              #   or a sparse {"index": strength} object

URL query (all keys optional, defaults as above; keys it does not know are ignored, since
hosting pages add their own)::

    ?model=catpeople&seed=3&t=0.6&k=8&steps=20&mode=direct&s=0:0.4,2:-0.3&prompt=...
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

import numpy as np

from .basis import MAX_K
from .edit import EDIT_MODES
from .errors import InputError
from .sampling import DEFAULT_STEPS
from .specs import BUILTIN_NAME, DEFAULT_K, DEFAULT_TIMESTEP, MAX_SEED, MAX_STEPS, MAX_STRENGTH, BasisSpec, SampleSpec, describe

SCHEMA_VERSION = 1
#: Largest edit file accepted: a full state with 64 sliders and a long prompt is under 4 kB.
MAX_JSON_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 2000
#: Model names: what the host's allow-list calls them. No separators, so never a path or hub id.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Slider values are stored rounded to this many decimals (sliders move in steps of 0.05).
DECIMALS = 6

_KEYS = ("version", "model", "prompt", "seed", "timestep", "k", "mode", "steps", "sliders")
_OPTIONAL = ("version", "prompt")
_QUERY_KEYS = {"model": "model", "prompt": "prompt", "seed": "seed", "t": "timestep", "k": "k", "steps": "steps", "mode": "mode", "s": "sliders"}


@dataclass(frozen=True)
class EditState:
    """Everything that determines one edited image. Constructing one validates it."""

    model: str = BUILTIN_NAME
    prompt: str = ""
    seed: int = 0
    timestep: float = DEFAULT_TIMESTEP  # fraction of the training schedule T
    k: int = DEFAULT_K
    mode: str = "direct"
    steps: int = DEFAULT_STEPS
    sliders: tuple[float, ...] = field(default=())  # one strength per direction, length <= k

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", check_model_name(self.model))
        object.__setattr__(self, "prompt", _check_prompt(self.prompt))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0, MAX_SEED))
        object.__setattr__(self, "timestep", _check_timestep(self.timestep))
        object.__setattr__(self, "k", _check_int("k", self.k, 1, MAX_K))
        object.__setattr__(self, "mode", _check_mode(self.mode))
        object.__setattr__(self, "steps", _check_int("steps", self.steps, 1, MAX_STEPS))
        object.__setattr__(self, "sliders", parse_sliders(self.sliders, self.k))

    # ----------------------------------------------------------------------------- views
    def sample_spec(self) -> SampleSpec:
        return SampleSpec(model=self.model, seed=self.seed, prompt=self.prompt, steps=self.steps)

    def basis_spec(self) -> BasisSpec:
        return BasisSpec(self.sample_spec(), self.timestep, self.k)

    def strengths(self) -> dict[int, float]:
        """The non-zero sliders as {direction index: strength}."""
        return {i: v for i, v in enumerate(self.sliders) if v != 0.0}

    def values(self) -> list[float]:
        """All k slider values (zeros filled in)."""
        return list(self.sliders) + [0.0] * (self.k - len(self.sliders))

    def with_sliders(self, sliders: Sequence[float] | Mapping[int, float] | str) -> "EditState":
        return replace(self, sliders=parse_sliders(sliders, self.k))

    def settings(self) -> "EditState":
        """The same state with every slider at zero (what a basis depends on, plus the mode)."""
        return replace(self, sliders=())

    # ----------------------------------------------------------------------------- dicts / JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sliders"] = self.values()
        return {"version": SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Any) -> "EditState":
        if not isinstance(data, Mapping):
            raise InputError(f"an edit must be a JSON object, got {type(data).__name__}")
        unknown = [str(key) for key in data if key not in _KEYS]
        if unknown:
            raise InputError(f"unknown key(s) in edit: {', '.join(sorted(unknown))}; allowed: {', '.join(_KEYS)}")
        missing = [key for key in _KEYS if key not in _OPTIONAL and key not in data]
        if missing:
            raise InputError(f"edit is missing key(s): {', '.join(missing)}")
        version = data.get("version", SCHEMA_VERSION)
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise InputError(f"unsupported edit version {version!r}; this Eigenface reads version {SCHEMA_VERSION}")
        values = {key: data[key] for key in _KEYS if key in data and key != "version"}
        if "timestep" in values:
            values["timestep"] = as_number("timestep", values["timestep"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "EditState":
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, (bytes, bytearray)):
            raise InputError("an edit must be JSON text")
        if len(text) > MAX_JSON_BYTES:
            raise InputError(f"edit file is {len(text) / 1024:.0f} kB; the limit is {MAX_JSON_BYTES // 1024} kB")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("edit file is not UTF-8 text") from None
        return cls.from_dict(load_json(text, "edit file"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EditState":
        """Read an edit file, refusing anything over :data:`MAX_JSON_BYTES` before reading it."""
        try:
            size = os.path.getsize(path)
            if size > MAX_JSON_BYTES:
                raise InputError(f"edit file is {size / 1024:.0f} kB; the limit is {MAX_JSON_BYTES // 1024} kB")
            with open(path, "rb") as handle:
                return cls.from_json(handle.read(MAX_JSON_BYTES + 1))
        except OSError as exc:
            raise InputError(f"cannot read edit file: {exc.strerror or exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())

    # ----------------------------------------------------------------------------- URL query
    def to_query(self) -> str:
        """The URL query (without '?') that :meth:`from_query` turns back into this state."""
        params = {"model": self.model}
        if self.prompt:
            params["prompt"] = self.prompt
        params.update(seed=str(self.seed), t=_format(self.timestep), k=str(self.k), steps=str(self.steps), mode=self.mode)
        sliders = ",".join(f"{i}:{_format(v)}" for i, v in self.strengths().items())
        if sliders:
            params["s"] = sliders
        return urlencode(params, safe=":,")

    @classmethod
    def from_query(cls, params: Mapping[str, Any]) -> "EditState":
        """A state from URL query parameters (already decoded); unknown keys are ignored."""
        values: dict[str, Any] = {}
        for key, name in _QUERY_KEYS.items():
            if key not in params:
                continue
            raw = params[key]
            if isinstance(raw, (list, tuple)):  # a repeated key: the last one wins, as in browsers
                raw = raw[-1] if raw else ""
            text = str(raw).strip() if name != "prompt" else str(raw)
            if name in ("seed", "k", "steps"):
                values[name] = _int_from_text(name, text)
            elif name == "timestep":
                values[name] = _float_from_text("t", text)
            elif name == "sliders":
                values[name] = _sliders_from_query(text)
            else:
                values[name] = text
        return cls(**values)


# --------------------------------------------------------------------------------- checks
def check_model_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InputError(f"model must be a name, got {type(name).__name__}")
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InputError(f"model must be the name of an allowed model (like {BUILTIN_NAME!r}), not a path or hub id: got {name[:80]!r}")
    return name


def parse_sliders(values: Any, k: int) -> tuple[float, ...]:
    """Slider values from a list (length <= k), a sparse {index: value} mapping, or their JSON text.

    Returns a tuple of k values or fewer (trailing zeros dropped), each finite and within
    [-MAX_STRENGTH, MAX_STRENGTH].
    """
    if isinstance(values, (str, bytes)):
        text = values.strip() if isinstance(values, str) else values.decode("utf-8", "replace").strip()
        if not text:
            return ()
        if len(text) > MAX_JSON_BYTES:
            raise InputError(f"slider values are {len(text) / 1024:.0f} kB of text; the limit is {MAX_JSON_BYTES // 1024} kB")
        values = load_json(text, "slider values", 'must be a JSON list like [0.4, 0, -0.3] or an object like {"0": 0.4}: ')
    if isinstance(values, np.ndarray):
        values = values.tolist()
    out = [0.0] * k
    if isinstance(values, Mapping):
        for key, value in values.items():
            index = _index(key, k)
            out[index] = _strength(index, value)
    elif isinstance(values, (list, tuple)):
        if len(values) > k:
            extra = [i for i, v in enumerate(values) if i >= k and _strength(i, v) != 0.0]
            if extra:
                raise InputError(f"{len(values)} slider values given for k = {k} directions")
        for index, value in enumerate(values[:k]):
            out[index] = _strength(index, value)
    else:
        raise InputError(f"slider values must be a list or an object, got {type(values).__name__}")
    while out and out[-1] == 0.0:
        out.pop()
    return tuple(out)


def load_json(text: str, what: str, expected: str = "are not valid JSON: ") -> Any:
    """JSON from a stranger: every way :func:`json.loads` can fail becomes an InputError naming ``what``.

    Besides malformed text, that is nesting deeper than Python's recursion limit (RecursionError)
    and integers longer than ``sys.get_int_max_str_digits()`` (a ValueError that is not a
    JSONDecodeError); NaN and Infinity are refused too.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {expected}{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{what}: nested too deeply to read") from None
    except InputError:  # NaN or Infinity, refused by _reject_constant
        raise
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise InputError(f"{what}: a number has too many digits") from None


def _index(key: Any, k: int) -> int:
    if isinstance(key, str) and re.fullmatch(r"[0-9]{1,3}", key.strip()):
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise InputError(f"a slider index must be a whole number, got {key!r}")
    if not 0 <= key < k:
        raise InputError(f"slider index {key} is outside 0..{k - 1} (k = {k})")
    return int(key)


def _strength(index: int, value: Any) -> float:
    value = as_number(f"strength of direction {index}", value)
    if abs(value) > MAX_STRENGTH:
        raise InputError(f"strength of direction {index} must be within [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {value:g}")
    value = round(value, DECIMALS)
    return 0.0 if value == 0 else value  # no -0.0


def as_number(name: str, value: Any) -> float:
    """A finite float from a request value, or an InputError that names the field (shared by the page)."""
    if value is None or value == "":
        raise InputError(f"{name} is empty")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number, got {describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise InputError(f"{name} must be a finite number, got {describe(value)}") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    return value


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be a whole number, got {describe(value)}")
    if not low <= value <= high:
        raise InputError(f"{name} must be within [{low}, {high}], got {describe(value)}")
    return int(value)


def _check_timestep(value: Any) -> float:
    value = as_number("timestep", value)
    if not 0 < value <= 1:
        raise InputError(f"timestep must be a fraction of T within (0, 1], got {value:g}")
    return value


def _check_mode(value: Any) -> str:
    if not isinstance(value, str) or value not in EDIT_MODES:
        raise InputError(f"mode must be one of {', '.join(EDIT_MODES)}, got {describe(value)}")
    return value


def _check_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"prompt must be text, got {describe(value)}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InputError(f"prompt is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return value


def _int_from_text(name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise InputError(f"{name} must be a whole number, got {text[:40]!r}")
    return int(text)


def _float_from_text(name: str, text: str) -> float:
    try:
        if not text.isascii():  # float() reads "߁" as 1: a link holds ASCII digits only
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise InputError(f"{name} must be a number, got {text[:40]!r}") from None
    return as_number(name, value)


def _sliders_from_query(text: str) -> dict[int, float]:
    """'0:0.4,2:-0.3' -> {0: 0.4, 2: -0.3} (indices checked against k by the state)."""
    out: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        index, sep, value = part.partition(":")
        if not sep or not re.fullmatch(r"[0-9]{1,3}", index.strip()):
            raise InputError(f"slider values in a link look like s=0:0.4,2:-0.3; got {part[:40]!r}")
        out[int(index)] = _float_from_text(f"strength of direction {index.strip()}", value.strip())
    return out


def _reject_constant(name: str) -> float:
    raise InputError(f"non-finite number {name}: numbers must be finite")


def _format(value: float) -> str:
    return f"{value:.{DECIMALS}g}"

