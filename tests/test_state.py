"""EditState: the edit as JSON / URL query, its round trips and every rejection."""

import json
import math

import pytest

from backend.errors import InputError
from backend.state import MAX_JSON_BYTES, EditState, parse_sliders

FULL = {
    "version": 1,
    "model": "catpeople",
    "prompt": "",
    "seed": 3,
    "timestep": 0.6,
    "k": 8,
    "mode": "direct",
    "steps": 20,
    "sliders": [0.4, 0, -0.3, 0, 0, 0, 0, 0],
}


def test_dict_and_json_round_trip(tmp_path):
    state = EditState.from_dict(FULL)
    assert state.sliders == (0.4, 0.0, -0.3)  # trailing zeros dropped
    assert state.strengths() == {0: 0.4, 2: -0.3}
    assert state.values() == [0.4, 0.0, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert state.to_dict() == FULL
    assert EditState.from_json(state.to_json()) == state
    path = tmp_path / "edit.json"
    state.save(path)
    assert EditState.load(path) == state
    assert json.loads(path.read_text()) == FULL


def test_query_round_trip():
    state = EditState(model="catpeople", prompt="a cat, smiling & old", seed=3, timestep=0.65, k=8, mode="guidance", steps=25, sliders=(0.4, 0, -0.3))
    query = state.to_query()
    assert "s=0:0.4,2:-0.3" in query and "t=0.65" in query
    from urllib.parse import parse_qsl

    assert EditState.from_query(dict(parse_qsl(query))) == state


def test_query_from_the_issue_and_defaults():
    state = EditState.from_query({"seed": "3", "t": "0.6", "k": "8", "s": "0:0.4,2:-0.3", "mode": "direct", "__theme": "dark"})
    assert state == EditState(seed=3, timestep=0.6, k=8, sliders=(0.4, 0.0, -0.3))
    assert EditState.from_query({}) == EditState()


def test_sparse_and_text_sliders():
    assert parse_sliders({"2": 0.5, 0: -0.25}, 4) == (-0.25, 0.0, 0.5)
    assert parse_sliders("[0.1, 0.2]", 4) == (0.1, 0.2)
    assert parse_sliders('{"3": 1}', 4) == (0.0, 0.0, 0.0, 1.0)
    assert parse_sliders("", 4) == ()
    assert parse_sliders([0.1, 0, 0, 0, 0, 0], 2) == (0.1,)  # zeros past k are harmless


def test_minimal_dict_without_optional_keys():
    data = {key: value for key, value in FULL.items() if key not in ("version", "prompt")}
    assert EditState.from_dict(data) == EditState.from_dict(FULL)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown key"),
        ({"model": "/etc/passwd"}, "not a path"),
        ({"model": "../catpeople"}, "not a path"),
        ({"model": "owner/model"}, "not a path"),
        ({"model": 5}, "model must be a name"),
        ({"seed": "3"}, "seed must be a whole number"),
        ({"seed": 3.5}, "seed must be a whole number"),
        ({"seed": True}, "seed must be a whole number"),
        ({"seed": -1}, "seed must be within"),
        ({"k": 0}, "k must be within [1, 64]"),
        ({"k": 65}, "k must be within [1, 64]"),
        ({"steps": 0}, "steps must be within"),
        ({"timestep": 0}, "timestep must be a fraction"),
        ({"timestep": 1.5}, "timestep must be a fraction"),
        ({"timestep": "0.6"}, "timestep must be a number"),
        ({"mode": "sideways"}, "mode must be one of"),
        ({"prompt": 7}, "prompt must be text"),
        ({"prompt": "x" * 5000}, "prompt is 5000 characters"),
        ({"sliders": [0.1] * 9}, "9 slider values given for k = 8"),
        ({"sliders": [11.0]}, "within [-10, 10]"),
        ({"sliders": ["0.4"]}, "strength of direction 0 must be a number"),
        ({"sliders": {"9": 0.1}}, "slider index 9 is outside 0..7"),
        ({"sliders": {"x": 0.1}}, "slider index must be a whole number"),
        ({"sliders": 0.4}, "slider values must be a list or an object"),
        ({"version": 2}, "unsupported edit version"),
    ],
)
def test_rejections(change, message):
    with pytest.raises(InputError, match=_literal(message)):
        EditState.from_dict({**FULL, **change})


def test_missing_keys_and_wrong_top_level():
    with pytest.raises(InputError, match="missing key"):
        EditState.from_dict({"model": "catpeople"})
    with pytest.raises(InputError, match="must be a JSON object"):
        EditState.from_json("[1, 2]")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json(token):
    text = json.dumps(FULL).replace("0.4", token)
    with pytest.raises(InputError, match="numbers must be finite"):
        EditState.from_json(text)
    with pytest.raises(InputError, match="finite"):
        EditState(sliders=(math.nan,))


def test_bad_json_and_oversized_files(tmp_path):
    with pytest.raises(InputError, match="not valid JSON"):
        EditState.from_json("{'model': 1}")
    with pytest.raises(InputError, match="not UTF-8"):
        EditState.from_json(b"\xff\xfe{}")
    big = json.dumps({**FULL, "prompt": "x" * MAX_JSON_BYTES})
    with pytest.raises(InputError, match="limit is 64 kB"):
        EditState.from_json(big)
    path = tmp_path / "big.json"
    path.write_text(big)
    with pytest.raises(InputError, match="limit is 64 kB"):
        EditState.load(path)
    with pytest.raises(InputError, match="cannot read edit file"):
        EditState.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"seed": "-3"}, "seed must be a whole number"),
        ({"seed": "1e3"}, "seed must be a whole number"),
        ({"k": "100"}, "k must be within"),
        ({"t": "nan"}, "t must be a finite number"),
        ({"t": "soon"}, "t must be a number"),
        ({"s": "0=0.4"}, "look like s=0:0.4"),
        ({"s": "0:inf"}, "finite"),
        ({"s": "9:0.1", "k": "8"}, "slider index 9 is outside"),
        ({"model": "../../x"}, "not a path"),
        ({"mode": "fast"}, "mode must be one of"),
    ],
)
def test_query_rejections(params, message):
    with pytest.raises(InputError, match=_literal(message)):
        EditState.from_query(params)


def test_specs_for_the_service():
    state = EditState(seed=5, timestep=0.7, k=4, steps=12, sliders=(0.2,))
    spec = state.basis_spec()
    assert (spec.sample.seed, spec.sample.steps, spec.timestep, spec.k) == (5, 12, 0.7, 4)
    assert state.settings().sliders == () and state.with_sliders("[0, 0.3]").strengths() == {1: 0.3}


def _literal(text: str) -> str:
    import re

    return re.escape(text)
