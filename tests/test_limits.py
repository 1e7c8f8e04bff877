"""Hardening, round two: budgets, page ranges, cancellation, slots, the shared library's quotas.

A real tiny U-Net counts its own evaluations (a forward pre-hook adds each batch's size), so the
tests check what work ran, or did not, never how long it took.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.budget import BudgetError
from backend.cache import ByteLRU
from backend.cancel import Cancelled, Token, scope
from backend.catpeople.semantics import name_by_factor
from backend.errors import InputError
from backend.quota import Quota
from backend.service import EigenfaceService, ServiceConfig
from backend.slots import Slots, visiting
from backend.specs import BasisSpec, SampleSpec
from backend.state import EditState, parse_sliders
from backend.store import DirectionLibrary
from ui.editor import Editor
from ui.sessions import REPLACED, Requests

SETTINGS = ("tiny", "", 3, 0.6, 4, 4)  # model, prompt, seed, timestep, k, steps


def make_service(tiny_ddpm_dir: Path, library: Path, **config) -> EigenfaceService:
    return EigenfaceService(ServiceConfig(
        models={"tiny": str(tiny_ddpm_dir)}, device="cpu", library_dir=str(library), labellers={"tiny": name_by_factor}, **config,
    ))


class Counter:
    """U-Net evaluations (samples through a forward) of one model, and an optional action at the n-th forward."""

    def __init__(self, service: EigenfaceService):
        self.evaluations = self.forwards = 0
        self.at: tuple[int, object] | None = None
        self.heavy_or_render = []  # per forward: was a slot held by someone?
        self.slots = service.slots
        service.model("tiny").unet.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.forwards += 1
        self.evaluations += int(args[0].shape[0])
        self.heavy_or_render.append((self.slots.busy("heavy"), self.slots.busy("render")))
        if self.at is not None and self.forwards == self.at[0]:
            self.at[1]()


@pytest.fixture
def service(tiny_ddpm_dir, tmp_path) -> EigenfaceService:
    return make_service(tiny_ddpm_dir, tmp_path / "library")


def spec(seed: int = 3, k: int = 4, steps: int = 4) -> BasisSpec:
    return BasisSpec(SampleSpec(model="tiny", seed=seed, steps=steps), timestep=0.6, k=k)


# ------------------------------------------------------------------------------ budget
@pytest.mark.parametrize("mode", ["direct", "guidance", "geodesic"])
def test_the_price_bounds_the_evaluations_and_a_cached_part_is_free(service, mode):
    counter = Counter(service)
    s = spec()
    found = service.budget.discover(s)
    assert found.parts["sampling"] == 4 and found.parts["basis"] > 0
    service.discover(s)
    assert 0 < counter.evaluations <= found.total
    assert service.budget.discover(s).total == 0  # trajectory and basis cached

    price = service.budget.render(s, 1, mode)
    before = counter.evaluations
    service.edit(s, {0: 0.5}, mode)
    assert 0 < counter.evaluations - before <= price.total
    assert "basis" not in price.parts


def test_labelling_is_priced_and_bounded(service):
    counter = Counter(service)
    price = service.budget.labels(spec())
    assert set(price.parts) >= {"sampling", "basis", "rendering"}
    service.labels.names(spec())
    assert counter.evaluations <= price.total
    assert service.budget.labels(spec()).total == 0


def test_over_budget_is_refused_before_any_evaluation(tiny_ddpm_dir, tmp_path):
    service = make_service(tiny_ddpm_dir, tmp_path, budget=200)
    counter = Counter(service)
    editor = Editor(service, tmp_path / "exports")
    state = editor.state(*SETTINGS)
    with pytest.raises(BudgetError) as refused:
        editor.discover(state)
    message = str(refused.value)
    assert "U-Net evaluations" in message and "allows 200" in message and "lower k" in message
    assert counter.evaluations == 0
    for call in (lambda: editor.labels(state), lambda: editor.render(state.with_sliders([0.3])), lambda: editor.save_direction(state, "0", "x")):
        with pytest.raises(BudgetError):
            call()
    assert counter.evaluations == 0
    assert editor.original(state)  # sampling alone (4 evaluations) is within the budget


def test_every_endpoint_holds_to_the_page_ranges(service, tmp_path):
    editor = Editor(service, tmp_path)
    for index, name, value in ((5, "steps", 1000), (5, "steps", 1), (4, "k", 65), (3, "timestep", 0.01)):
        settings_ = list(SETTINGS)
        settings_[index] = value
        with pytest.raises(InputError, match=f"{name} must be within"):
            editor.state(*settings_)
    with pytest.raises(InputError, match="steps must be within"):
        editor.for_page(EditState(model="tiny", steps=500))


# ------------------------------------------------------------------------------ cancellation
def test_cancelled_is_not_an_input_error():
    assert not issubclass(Cancelled, ValueError)


OPERATIONS = {
    "basis": lambda s: s.discover(spec(seed=7)),
    "denoising": lambda s: s.generate(SampleSpec(model="tiny", seed=8, steps=12)),
    "labelling": lambda s: s.labels.names(spec(seed=3, steps=12)),
    "geodesic": lambda s: s.edit(spec(seed=3, steps=12), {0: 0.5}, "geodesic"),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_work_stops_at_the_next_forward_and_nothing_half_done_is_cached(service, operation):
    if operation in ("labelling", "geodesic"):
        service.discover(spec(seed=3, steps=12))  # these cancel in their own work, not in the basis
    counter = Counter(service)
    token = Token()
    counter.at = (3, lambda: token.cancel("the client disconnected"))
    cached = len(service.cache)
    with pytest.raises(Cancelled, match="disconnected"), scope(token):
        OPERATIONS[operation](service)
    assert counter.forwards == 3  # the fourth forward never ran
    assert len(service.cache) == cached
    counter.at = None
    OPERATIONS[operation](service)  # later, uncancelled: computed afresh, in full


def test_a_client_that_is_gone_stops_the_work(service):
    counter = Counter(service)
    alive = [True]
    counter.at = (2, lambda: alive.__setitem__(0, False))
    with pytest.raises(Cancelled), scope(Token(lambda: alive[0], poll_s=0.0)):
        service.discover(spec(seed=11))
    assert counter.forwards == 2


def test_a_newer_request_of_the_same_page_replaces_the_older():
    requests = Requests()
    with requests.running("render", session="a") as first:
        with requests.running("render", session="b") as other, requests.running("find", session="a") as find:
            with requests.running("render", session="a"):
                assert first.cancelled and not other.cancelled and not find.cancelled
                with pytest.raises(Cancelled, match=REPLACED):
                    first.check()
    assert len(requests) == 0


def test_a_waiter_takes_over_a_computation_whose_client_left():
    cache = ByteLRU(1 << 20)
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def owner() -> None:
        def compute():
            started.set()
            release.wait()
            raise Cancelled("the client disconnected")

        try:
            cache.get_or_compute("key", compute)
        except Cancelled:
            outcome["owner"] = "cancelled"

    thread = threading.Thread(target=owner)
    thread.start()
    started.wait()
    waiter = threading.Thread(target=lambda: outcome.setdefault("waiter", cache.get_or_compute("key", lambda: 42)))
    waiter.start()
    release.set()
    thread.join()
    waiter.join()
    assert outcome == {"owner": "cancelled", "waiter": (42, False)}
    assert cache.get("key") == 42


# ------------------------------------------------------------------------------ slots
@contextmanager
def held_elsewhere(slots: Slots, kind: str, visitor: str):
    """A thread holding a slot until the block ends."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with visiting(visitor), slots.hold(kind):
            holding.set()
            done.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_a_cached_result_takes_no_slot(service):
    s = spec()
    service.discover(s)
    service.edit(s, {0: 0.2})
    with held_elsewhere(service.slots, "heavy", "someone"), held_elsewhere(service.slots, "render", "someone else"):
        with held_elsewhere(service.slots, "render", "a third"):
            worker = threading.Thread(target=lambda: (service.discover(s), service.generate(s.sample)))
            worker.start()
            worker.join(timeout=60)
            assert not worker.is_alive(), "a cache hit waited for a slot"


def test_one_visitor_holds_at_most_one_heavy_slot():
    slots = Slots(heavy=2, render=2)
    with held_elsewhere(slots, "heavy", "a"):
        assert slots.busy("heavy") == 1
        assert not slots._free("heavy", "a")  # a slot is free, but not for "a", who holds one
        assert slots._free("heavy", "b") and slots._free("render", "a")
        with visiting("b"), slots.hold("heavy"):
            assert slots.busy("heavy") == 2
    with visiting("a"), slots.hold("heavy"), slots.hold("heavy"):  # nested in one request: the same slot
        assert slots.busy("heavy") == 1


def test_background_work_hands_the_heavy_slot_to_a_waiting_request():
    slots = Slots(heavy=1, render=1)
    order: list[str] = []

    def request() -> None:
        with visiting("person"), slots.hold("heavy"):
            order.append("request")

    with visiting("job"), slots.hold("heavy", background=True):
        person = threading.Thread(target=request)
        person.start()
        while not slots._waiting["heavy"]:  # the person is in line behind the job's step
            time.sleep(0.01)
        assert order == []
        slots.yield_to_waiters("heavy")  # between two steps: the person goes first
        order.append("job resumes")
        assert slots.busy("heavy") == 1
        person.join(timeout=10)
    assert order == ["request", "job resumes"]
    assert slots.busy("heavy") == 0
    slots.yield_to_waiters("heavy")  # nobody waits: a no-op outside any slot


def test_background_work_does_not_jump_the_line():
    slots = Slots(heavy=1, render=1)
    order: list[str] = []

    def take(visitor: str, background: bool) -> None:
        with visiting(visitor), slots.hold("heavy", background=background):
            order.append(visitor)

    person = threading.Thread(target=take, args=("person", False))
    job = threading.Thread(target=take, args=("job", True))
    with held_elsewhere(slots, "heavy", "someone"):
        person.start()
        while not slots._waiting["heavy"]:  # the person is in line first
            time.sleep(0.01)
        job.start()
    person.join(timeout=10)
    job.join(timeout=10)
    assert order == ["person", "job"]  # whenever the job's thread got to look, the person was still in line


def test_a_render_computes_its_basis_in_the_heavy_slot(service):
    counter = Counter(service)
    service.edit(spec(seed=21), {1: 0.4})
    assert counter.heavy_or_render and all(heavy + render >= 1 for heavy, render in counter.heavy_or_render)
    basis_forwards = [busy for busy in counter.heavy_or_render if busy == (1, 0)]
    assert len(basis_forwards) > 4  # the trajectory and the basis: heavy; the denoising alone: render


# ------------------------------------------------------------------------------ library
def test_visitor_saves_are_paced_and_counted(service, tmp_path):
    service.library.quota = Quota("saved a direction", per_visitor=2, min_interval_s=3600)
    s = spec()
    service.library.save("first", s, index=0, visitor="v")
    with pytest.raises(InputError, match="too fast"):
        service.library.save("second", s, index=1, visitor="v")
    service.library.save("other", s, index=1, visitor="w")  # another visitor has their own pace
    service.library.quota = Quota("saved a direction", per_visitor=1, min_interval_s=0)
    service.library.save("again", s, index=1, visitor="v")
    with pytest.raises(InputError, match="the most one visitor may"):
        service.library.save("more", s, index=2, visitor="v")


def test_a_full_library_evicts_the_least_recently_used_visitor_direction(tmp_path):
    library = DirectionLibrary(tmp_path / "lib", max_entries=3)
    library.save("host", torch.randn(3), {})  # placed by the host: never evicted
    library.save("old", torch.randn(3), {"saved_by_visitor": True}, evict=True)
    library.save("new", torch.randn(3), {"saved_by_visitor": True}, evict=True)
    os.utime(library.root / "old.safetensors", (1, 1))
    os.utime(library.root / "new.safetensors", (2, 2))
    library.load("old")  # a use: "new" is now the least recently used
    library.save("newest", torch.randn(3), {"saved_by_visitor": True}, evict=True)
    assert sorted(d.name for d in library.list()) == ["host", "newest", "old"]
    with pytest.raises(InputError, match="already exists"):
        library.save("host", torch.randn(3), {"saved_by_visitor": True}, overwrite=False, evict=True)


def test_a_library_full_of_host_directions_refuses_without_showing_a_path(tmp_path):
    library = DirectionLibrary(tmp_path / "lib", max_entries=1)
    library.save("host", torch.randn(3), {})
    with pytest.raises(InputError) as refused:
        library.save("visitor", torch.randn(3), {"saved_by_visitor": True}, evict=True)
    (library.root / "broken.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError) as unreadable:
        library.load("broken")
    for error in (refused, unreadable):
        assert str(tmp_path) not in str(error.value) and "/" not in str(error.value)


def test_a_saved_index_must_be_ascii_digits(service, tmp_path):
    editor = Editor(service, tmp_path)
    with pytest.raises(InputError, match="what to save must be 'sliders' or a direction index"):
        editor.save_direction(editor.state(*SETTINGS), "²", "squared")


# ------------------------------------------------------------------------------ JSON parsers
deep = st.integers(1000, 40000).map(lambda n: "[" * n + "]" * n)
huge = st.integers(4400, 6000).map(lambda n: "[" + "7" * n + "]")
unicode_digits = st.sampled_from(["²", "٣", "３", "߁", "𝟙"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(deep, huge, unicode_digits.map(lambda d: json.dumps({d: 0.4})), unicode_digits.map(lambda d: f'{{"0": "{d}"}}')))
def test_slider_json_errors_name_the_field(text):
    with pytest.raises(InputError) as refused:
        parse_sliders(text, 8)
    assert any(field in str(refused.value) for field in ("slider values", "slider index", "strength of direction"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(["seed", "k", "steps", "timestep", "sliders"]),
    value=st.one_of(st.integers(4400, 6000).map(lambda n: "9" * n), st.integers(100, 5000).map(lambda n: "[" * n + "]" * n), unicode_digits.map(json.dumps)),
)
def test_edit_file_errors_name_the_field(field, value):
    text = EditState(model="tiny").to_json().replace(f'"{field}": ', f'"{field}": {value}, "_": ', 1)
    with pytest.raises(InputError) as refused:
        EditState.from_json(text)
    assert "edit file" in str(refused.value) or field in str(refused.value) or "unknown key" in str(refused.value)


@settings(max_examples=15, deadline=None)
@given(field=st.sampled_from(["seed", "k", "steps", "t", "s"]), value=st.one_of(st.integers(20, 6000).map(lambda n: "9" * n), unicode_digits))
def test_link_errors_name_the_field(field, value):
    if field == "s":
        value = f"{value}:0.4"
    with pytest.raises(InputError) as refused:
        EditState.from_query({"model": "tiny", field: value})
    name = {"t": "t", "s": "slider"}.get(field, field)
    assert name in str(refused.value)


def test_a_broken_allow_listed_model_does_not_show_the_hosts_path(tmp_path):
    (tmp_path / "broken").mkdir()
    app_mode = EigenfaceService(ServiceConfig(models={"broken": str(tmp_path / "broken")}, device="cpu"))
    with pytest.raises(InputError, match="cannot be loaded on this server") as refused:
        app_mode.model("broken")
    assert str(tmp_path) not in str(refused.value)
    cli_mode = EigenfaceService(ServiceConfig(models={}, allow_any_model=True, device="cpu"))
    with pytest.raises(InputError, match="model_index.json"):  # whoever may name a path is told why
        cli_mode.model(str(tmp_path / "broken"))


def test_background_geodesic_paths_run_in_the_heavy_slot(service, tmp_path):
    editor = Editor(service, tmp_path)
    state = editor.state("tiny", "", 3, 0.6, 2, 4, "geodesic")
    editor.discover(state)
    counter = Counter(service)
    editor.start_paths(state, "visitor")
    assert service.paths.wait("visitor", timeout=600).state == "ready"
    assert counter.heavy_or_render and all(heavy == 1 for heavy, _ in counter.heavy_or_render)


def test_a_geodesic_preview_of_an_unfound_basis_is_priced_first(tiny_ddpm_dir, tmp_path):
    service = make_service(tiny_ddpm_dir, tmp_path, budget=200)
    counter = Counter(service)
    editor = Editor(service, tmp_path / "exports")
    state = editor.state("tiny", "", 5, 0.6, 4, 4, "geodesic", "[0.3]")
    with pytest.raises(BudgetError):
        editor.render(state, preview=True)
    assert counter.evaluations == 0
