"""backend.cache.ByteLRU: a byte-bounded LRU that computes each missing value once."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from backend.cache import ByteLRU, nbytes


def _blob(n_bytes: int) -> torch.Tensor:
    """A float32 tensor of exactly ``n_bytes`` bytes."""
    assert n_bytes % 4 == 0
    return torch.zeros(n_bytes // 4, dtype=torch.float32)


def test_nbytes_counts_tensors_exactly_and_containers_recursively():
    assert nbytes(_blob(400)) == 400
    assert nbytes((_blob(400), [_blob(80)], {"a": _blob(40)})) == 520
    assert nbytes(torch.zeros(3, dtype=torch.float64)) == 24


def test_rejects_non_positive_budget():
    with pytest.raises(ValueError):
        ByteLRU(0)
    with pytest.raises(ValueError):
        ByteLRU(-5)


def test_evicts_oldest_first_by_bytes():
    cache = ByteLRU(1000)
    cache.put("a", _blob(400))
    cache.put("b", _blob(400))
    assert cache.bytes == 800 and len(cache) == 2
    cache.put("c", _blob(400))  # 1200 > 1000: the oldest ("a") goes
    assert "a" not in cache and "b" in cache and "c" in cache
    assert cache.bytes == 800 and cache.evictions == 1


def test_recently_used_entries_survive_eviction():
    cache = ByteLRU(1000)
    cache.put("a", _blob(400))
    cache.put("b", _blob(400))
    assert cache.get("a") is not None  # "a" is now the most recent, "b" the oldest
    cache.put("c", _blob(400))
    assert "a" in cache and "b" not in cache and "c" in cache
    # a hit through get_or_compute refreshes recency too
    cache.get_or_compute("a", lambda: pytest.fail("cached value recomputed"))
    cache.put("d", _blob(400))
    assert "a" in cache and "c" not in cache and "d" in cache


def test_newest_entry_is_kept_even_when_over_budget():
    cache = ByteLRU(1000)
    cache.put("a", _blob(400))
    cache.put("b", _blob(400))
    cache.put("huge", _blob(4000))
    assert list(cache._items) == ["huge"]
    assert cache.bytes == 4000 and cache.evictions == 2
    assert cache.get("huge") is not None


def test_replacing_a_key_updates_the_byte_count():
    cache = ByteLRU(10_000)
    cache.put("a", _blob(400))
    cache.put("a", _blob(800))
    assert len(cache) == 1 and cache.bytes == 800
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0 and cache.get("a") is None


def test_hits_and_misses():
    cache = ByteLRU(10_000)
    calls = []

    def compute():
        calls.append(1)
        return _blob(40)

    value, cached = cache.get_or_compute("k", compute)
    assert cached is False and cache.misses == 1 and cache.hits == 0
    again, cached = cache.get_or_compute("k", compute)
    assert cached is True and again is value and cache.hits == 1 and cache.misses == 1
    assert len(calls) == 1
    cache.get_or_compute("other", compute)
    assert cache.misses == 2 and len(calls) == 2
    assert cache.get("missing") is None


class _Arrivals:
    """Counts threads that reached get_or_compute, so compute() can hold until all of them wait on it."""

    def __init__(self, n: int):
        self.n, self.count, self.cond = n, 0, threading.Condition()

    def arrive(self) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_all(self) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.count == self.n, timeout=10)
        time.sleep(0.2)  # from arrival to waiting on the pending computation is a few microseconds


def _run_threads(n: int, target) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)


def test_concurrent_requests_for_one_key_compute_once():
    cache = ByteLRU(10_000)
    arrivals = _Arrivals(8)
    calls, results = [], []

    def compute():
        calls.append(threading.get_ident())
        arrivals.wait_all()  # every other thread is now waiting for this computation
        return _blob(40)

    def worker():
        arrivals.arrive()
        results.append(cache.get_or_compute("same", compute))

    _run_threads(8, worker)
    assert len(calls) == 1 and len(results) == 8
    values = [r[0] for r in results]
    assert all(v is values[0] for v in values)
    assert sum(1 for r in results if r[1] is False) == 1  # exactly one thread computed it
    assert cache.misses == 1 and len(cache) == 1


def test_failed_compute_is_not_cached_and_reraises():
    cache = ByteLRU(10_000)

    def boom():
        raise RuntimeError("compute failed")

    with pytest.raises(RuntimeError, match="compute failed"):
        cache.get_or_compute("k", boom)
    assert "k" not in cache and len(cache) == 0 and cache.bytes == 0
    # the next request tries again, and a success is then cached
    value, cached = cache.get_or_compute("k", lambda: _blob(40))
    assert cached is False and "k" in cache
    assert cache.get_or_compute("k", boom) == (value, True)


def test_failed_compute_reaches_every_waiter():
    cache = ByteLRU(10_000)
    arrivals = _Arrivals(4)
    calls, errors = [], []

    def boom():
        calls.append(1)
        arrivals.wait_all()
        raise RuntimeError("compute failed")

    def worker():
        arrivals.arrive()
        try:
            cache.get_or_compute("k", boom)
        except RuntimeError as exc:
            errors.append(exc)

    _run_threads(4, worker)
    assert len(calls) == 1 and len(errors) == 4
    assert "k" not in cache and len(cache) == 0
