"""backend.store: basis files, single directions and the named-direction library."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from backend.basis import Basis
from backend.errors import InputError
from backend.store import DirectionLibrary, load_basis, load_direction, save_basis, save_direction


def _basis(k: int = 3, x_shape=(3, 4, 4), h_shape=(5, 2, 2)) -> tuple[Basis, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(k, *x_shape, generator=g)
    u = torch.randn(k, *h_shape, generator=g)
    sigma = torch.tensor([3.0, 2.0, 1.0])[:k]
    return Basis(sigma, v, u, iterations=7, converged=True), torch.randn(*x_shape, generator=g)


def test_basis_round_trip(tmp_path):
    basis, x_t = _basis()
    meta = {"model": "tiny", "prompt": "", "seed": 3, "timestep": 500, "iterations": 7, "converged": False}
    path = save_basis(tmp_path / "b", basis, x_t, meta)
    assert path == tmp_path / "b" / "basis.safetensors"
    loaded, x_loaded, meta_loaded = load_basis(path)
    assert torch.equal(loaded.v, basis.v) and torch.equal(loaded.u, basis.u) and torch.equal(loaded.sigma, basis.sigma)
    assert torch.equal(x_loaded, x_t)
    assert meta_loaded == meta
    assert loaded.iterations == 7 and loaded.converged is False
    assert all(t.dtype == torch.float32 for t in (loaded.v, loaded.u, loaded.sigma, x_loaded))


def test_basis_is_stored_as_float32(tmp_path):
    basis, x_t = _basis()
    double = Basis(basis.sigma.double(), basis.v.double(), basis.u.double(), 1, True)
    path = save_basis(tmp_path, double, x_t.double(), {})
    from safetensors.torch import load_file

    raw = load_file(str(path))
    assert set(raw) == {"v", "u", "sigma", "x_t"}
    assert all(t.dtype == torch.float32 for t in raw.values())


def test_basis_without_meta_loads_with_defaults(tmp_path):
    basis, x_t = _basis()
    path = save_basis(tmp_path, basis, x_t, {})
    (tmp_path / "meta.json").unlink()
    loaded, _, meta = load_basis(path)
    assert meta == {} and loaded.k == 3


def test_basis_with_inconsistent_k_refused(tmp_path):
    basis, x_t = _basis()
    save_file({"v": basis.v, "u": basis.u[:2].contiguous(), "sigma": basis.sigma, "x_t": x_t}, str(tmp_path / "basis.safetensors"))
    with pytest.raises(InputError, match="disagree on k"):
        load_basis(tmp_path / "basis.safetensors")


def test_basis_missing_tensor_refused(tmp_path):
    basis, x_t = _basis()
    save_file({"v": basis.v, "sigma": basis.sigma, "x_t": x_t}, str(tmp_path / "basis.safetensors"))
    with pytest.raises(InputError, match="missing tensor.*u"):
        load_basis(tmp_path / "basis.safetensors")


def test_basis_nan_refused(tmp_path):
    basis, x_t = _basis()
    v = basis.v.clone()
    v[0, 0, 0, 0] = float("nan")
    save_file({"v": v, "u": basis.u, "sigma": basis.sigma, "x_t": x_t}, str(tmp_path / "basis.safetensors"))
    with pytest.raises(InputError, match="finite"):
        load_basis(tmp_path / "basis.safetensors")


def test_direction_round_trip_with_provenance(tmp_path):
    v = torch.randn(3, 4, 4)
    provenance = {"model": "tiny", "seed": 1, "index": 2}
    path = save_direction(tmp_path / "sub" / "d.safetensors", v, provenance)
    loaded, prov = load_direction(path)
    assert torch.equal(loaded, v) and prov == provenance


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".safetensor"])
def test_direction_with_wrong_suffix_refused(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    save_file({"v": torch.randn(3)}, str(path))  # even a valid safetensors payload
    with pytest.raises(InputError, match="only .safetensors"):
        load_direction(path)


def test_direction_missing_file_refused(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_direction(tmp_path / "nope.safetensors")


def test_direction_missing_tensor_refused(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"w": torch.randn(3)}, str(path))
    with pytest.raises(InputError, match="missing tensor"):
        load_direction(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_direction_non_finite_refused(tmp_path, bad):
    path = tmp_path / "d.safetensors"
    v = torch.randn(3, 4, 4)
    v[1, 2, 3] = bad
    save_file({"v": v}, str(path))
    with pytest.raises(InputError, match="finite"):
        load_direction(path)


def test_direction_integer_tensor_refused(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"v": torch.arange(6)}, str(path))
    with pytest.raises(InputError, match="floating point"):
        load_direction(path)


def test_garbage_file_refused(tmp_path):
    path = tmp_path / "d.safetensors"
    path.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_direction(path)


def test_direction_with_unreadable_provenance_loads(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"v": torch.ones(3)}, str(path), metadata={"provenance": "{not json"})
    v, prov = load_direction(path)
    assert torch.equal(v, torch.ones(3)) and prov == {}


def test_library_save_load_list(tmp_path):
    lib = DirectionLibrary(tmp_path / "lib")
    assert lib.list() == []
    a, b = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    saved = lib.save("smile", a, {"index": 0})
    assert saved.path == tmp_path / "lib" / "smile.safetensors"
    lib.save("old age-2.v1", b, {"index": 1})
    loaded, prov = lib.load("smile")
    assert torch.equal(loaded, a) and prov == {"index": 0}
    listed = lib.list()
    assert [s.name for s in listed] == ["old age-2.v1", "smile"]
    assert [s.provenance for s in listed] == [{"index": 1}, {"index": 0}]
    with pytest.raises(InputError, match="no saved direction"):
        lib.load("missing")
    assert lib.delete("smile") == saved.path and not saved.path.exists()
    assert [s.name for s in lib.list()] == ["old age-2.v1"]
    with pytest.raises(InputError, match="no saved direction named 'smile'"):
        lib.delete("smile")


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "..", "a..b", "", ".hidden", "x" * 65, "tab\there", "a\\b", "new\nline", "trailing\n", "trailing ", "dot.", " lead"])
def test_library_refuses_unsafe_names(tmp_path, name):
    lib = DirectionLibrary(tmp_path / "lib")
    with pytest.raises(InputError, match="direction names"):
        lib.save(name, torch.randn(3), {})
    with pytest.raises(InputError, match="direction names"):
        lib.load(name)
    with pytest.raises(InputError, match="direction names"):
        lib.delete(name)
    assert not (tmp_path / "evil.safetensors").exists()
    assert not any(tmp_path.rglob("*.safetensors"))


def test_library_refuses_non_string_names(tmp_path):
    with pytest.raises(InputError):
        DirectionLibrary(tmp_path).save(None, torch.randn(3), {})  # type: ignore[arg-type]


def test_meta_json_is_valid_json(tmp_path):
    basis, x_t = _basis()
    save_basis(tmp_path, basis, x_t, {"sigma": [1.0, 2.0], "prompt": "a \"quoted\" cat"})
    assert json.loads((tmp_path / "meta.json").read_text())["prompt"] == 'a "quoted" cat'


def test_library_refuses_an_existing_name_unless_overwriting(tmp_path):
    lib = DirectionLibrary(tmp_path)
    first, second = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    lib.save("a", first, {"n": 1}, overwrite=False)
    with pytest.raises(InputError, match="already exists"):
        lib.save("a", second, {"n": 2}, overwrite=False)
    assert torch.equal(lib.load("a")[0], first)
    lib.save("a", second, {"n": 2})
    assert torch.equal(lib.load("a")[0], second) and lib.load("a")[1] == {"n": 2}


def test_library_is_bounded(tmp_path):
    lib = DirectionLibrary(tmp_path, max_entries=2)
    lib.save("a", torch.randn(3), {})
    lib.save("b", torch.randn(3), {})
    with pytest.raises(InputError, match="library is full"):
        lib.save("c", torch.randn(3), {})
    lib.save("b", torch.randn(3), {})  # replacing one is not growing
    assert [d.name for d in lib.list()] == ["a", "b"]


def test_library_list_skips_unreadable_files_and_reads_headers_only(tmp_path):
    lib = DirectionLibrary(tmp_path)
    lib.save("good", torch.randn(3, 4, 4), {"seed": 3})
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    save_file({"v": torch.randn(2)}, str(tmp_path / ".hidden.safetensors"))
    assert [(d.name, d.provenance) for d in lib.list()] == [("good", {"seed": 3})]
    with pytest.raises(InputError, match="not a readable"):
        lib.load("broken")


def test_direction_is_written_whole_or_not_at_all(tmp_path):
    save_direction(tmp_path / "d.safetensors", torch.randn(3, 4, 4), {})
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]  # no temporary file left behind
    with pytest.raises(Exception):
        save_direction(tmp_path / "e.safetensors", "not a tensor", {})  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]
