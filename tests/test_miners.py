"""Miners: sync and threaded search over any index, timeouts, failures, clean shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.bank.faiss_backend import FaissBackend
from dualpath.decider import (
    Decision,
    DualPathDecoder,
    MinerResult,
    SyncMiner,
    ThreadedMiner,
    load_lanes,
    to_shortlist_batch,
    to_shortlists,
)


class EchoIndex:
    """Returns ids that encode the query (its first component), so a result shows whose it is."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        base = np.rint(queries[:, :1]).astype(np.int64)
        ids = base * 1000 + np.arange(k)
        return ids, np.ones(ids.shape, np.float32)


class FailingIndex:
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("disk on fire")


class BadShapeIndex:
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((1, k), np.int64), np.zeros((2, k), np.float32)


def miner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dualpath-miner")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert miner_threads() == []


def query(value: float, n: int = 1, d: int = 4) -> np.ndarray:
    q = np.zeros((n, d), np.float32)
    q[:, 0] = value
    return q


@pytest.mark.parametrize("make", [SyncMiner, lambda index: ThreadedMiner(index, workers=2, queue_size=4)])
def test_search_returns_the_index_results(make) -> None:
    with make(EchoIndex()) as miner:
        result = miner.search(query(7.0, n=3), k=5)
    assert result.ok and result.error is None
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    assert np.array_equal(result.ids, np.tile(7000 + np.arange(5), (3, 1)))


@pytest.mark.parametrize("make", [SyncMiner, lambda index: ThreadedMiner(index, workers=2, queue_size=4)])
@pytest.mark.parametrize(
    ("index", "message"), [(FailingIndex(), "RuntimeError: disk on fire"), (BadShapeIndex(), "ids")]
)
def test_a_failing_index_is_an_error_result_not_a_raise(make, index, message: str) -> None:
    with make(index) as miner:
        result = miner.search(query(1.0, n=2), k=3)
    assert result.status == "error" and message in result.error
    assert result.ids.shape == (2, 0)


def test_many_concurrent_callers_get_their_own_results() -> None:
    index = EchoIndex(delay_s=0.001)
    errors: list[str] = []
    with ThreadedMiner(index, workers=2, queue_size=3) as miner:

        def caller(who: int) -> None:
            for i in range(25):
                value = who * 100 + i
                result = miner.search(query(float(value)), k=4, timeout=10.0)
                if not result.ok or result.ids[0, 0] != value * 1000:
                    errors.append(f"caller {who} asked {value}, got {result.status} {result.ids[:1, :1]}")

        callers = [threading.Thread(target=caller, args=(w,)) for w in range(12)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
    assert errors == []
    assert index.calls == 12 * 25


def test_slow_index_times_out_without_blocking_the_caller() -> None:
    index = EchoIndex(delay_s=0.6)
    with ThreadedMiner(index, workers=1, queue_size=2) as miner:
        start = time.perf_counter()
        result = miner.search(query(1.0), k=3, timeout=0.05)
        waited = time.perf_counter() - start
        assert result.status == "timeout" and "0.05" in result.error
        assert waited < 0.4  # generous for a loaded machine; the search itself takes 0.6 s
        # The worker finishes the abandoned search; the next caller still gets its own answer.
        later = miner.search(query(2.0), k=3, timeout=5.0)
        assert later.ok and later.ids[0, 0] == 2000
        assert later.request_id > result.request_id


def test_requests_whose_caller_gave_up_are_skipped() -> None:
    index = EchoIndex(delay_s=0.2)
    with ThreadedMiner(index, workers=1, queue_size=8) as miner:
        first = miner.submit(query(1.0), k=2)  # occupies the only worker
        time.sleep(0.02)
        abandoned = [miner.search(query(float(i)), k=2, timeout=0.01) for i in range(3)]
        assert [r.status for r in abandoned] == ["timeout"] * 3
        assert first.result(timeout=5).ok
        assert miner.search(query(9.0), k=2, timeout=5).ok
    # The three abandoned requests were cancelled in the queue, never searched.
    assert index.calls == 2


def test_full_queue_is_a_timeout() -> None:
    index = EchoIndex(delay_s=0.3)
    with ThreadedMiner(index, workers=1, queue_size=1) as miner:
        miner.submit(query(1.0), k=1)
        time.sleep(0.02)  # the worker takes it; the queue is empty again
        miner.submit(query(2.0), k=1)  # fills the one slot
        result = miner.search(query(3.0), k=1, timeout=0.05)
        assert result.status == "timeout" and "queue full" in result.error


def test_close_is_idempotent_and_joins_workers() -> None:
    miner = ThreadedMiner(EchoIndex(delay_s=0.05), workers=3, queue_size=4)
    assert len(miner_threads()) == 3
    pending = [miner.submit(query(float(i)), k=1) for i in range(4)]
    miner.close()
    miner.close()
    assert miner.alive_workers == 0 and miner_threads() == []
    # Every request either ran or was cancelled: none is left hanging.
    for future in pending:
        assert future.done()
    after = miner.search(query(1.0), k=1, timeout=1.0)
    assert after.status == "error" and "closed" in after.error


def test_close_does_not_hang_on_a_stuck_search() -> None:
    index = EchoIndex(delay_s=0.8)
    miner = ThreadedMiner(index, workers=1, queue_size=2)
    miner.submit(query(1.0), k=1)
    time.sleep(0.02)
    start = time.perf_counter()
    miner.close(join_timeout=0.05)
    assert time.perf_counter() - start < 0.5  # the search itself takes 0.8 s
    # The worker is a daemon (it cannot hold the interpreter at exit) and leaves once its search ends.
    assert all(t.daemon for t in miner_threads())
    deadline = time.monotonic() + 2.0
    while miner_threads() and time.monotonic() < deadline:
        time.sleep(0.01)


class ThreadCountIndex:
    """Records how many OpenMP threads a FAISS search on the calling thread may use."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.seen.append(faiss.omp_get_max_threads())
        return np.zeros((queries.shape[0], k), np.int64), np.zeros((queries.shape[0], k), np.float32)


def test_workers_cap_faiss_threads() -> None:
    index = ThreadCountIndex()
    with ThreadedMiner(index, workers=2) as miner:
        for _ in range(4):
            assert miner.search(query(1.0), k=1, timeout=5).ok
    assert index.seen == [1] * 4
    fresh: list[int] = []
    probe = threading.Thread(target=lambda: fresh.append(faiss.omp_get_max_threads()))
    probe.start()
    probe.join()
    index = ThreadCountIndex()
    with ThreadedMiner(index, workers=1, search_threads=None) as miner:
        miner.search(query(1.0), k=1, timeout=5)
    assert index.seen == fresh  # FAISS's own default for a new thread


def test_faiss_index_and_shortlists_feed_the_decoder() -> None:
    # A real FAISS flat index: the miner's results become shortlists the decoder decides on.
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 16)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    index = FaissBackend.exact(bank)
    decoder = DualPathDecoder(load_lanes()["quota-neutral"])
    with ThreadedMiner(index, workers=2, queue_size=4) as miner:
        result = miner.search(bank[[5, 17]], k=10, timeout=5.0)
        assert result.ok and list(result.ids[:, 0]) == [5, 17]
        shortlists = to_shortlists(result, lambda ids: bank[ids], dim=16)
        _, record = decoder.step(bank[5], shortlists[0])
        assert record.decision is Decision.SNAP and record.neighbour_id == 5

        timed_out = MinerResult(np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32), "timeout", "slow")
        _, record = decoder.step(bank[5], to_shortlists(timed_out, lambda ids: bank[ids], dim=16)[0])
        assert record.decision is Decision.NOVEL and record.fallback_reason == "timeout"

        failed = SyncMiner(FailingIndex()).search(bank[:1], k=3)
        _, record = decoder.step(bank[5], to_shortlists(failed, lambda ids: bank[ids], dim=16)[0])
        assert record.fallback_reason == "error: RuntimeError: disk on fire"

        # A query with fewer bank entries than k: FAISS pads with -1; an all -1 row is "empty".
        padded = MinerResult(np.array([[3, -1], [-1, -1]]), np.zeros((2, 2), np.float32))
        shortlists = to_shortlists(padded, lambda ids: bank[ids], dim=16)
        assert list(shortlists[0].ids) == [3] and shortlists[1].fallback == "empty"

        # The context's own ids are removed and k survivors kept.
        result = miner.search(bank[[5]], k=6, timeout=5.0)
        (trimmed,) = to_shortlists(result, lambda ids: bank[ids], 16, exclude=[result.ids[0, :2]], k=3)
        assert list(trimmed.ids) == list(result.ids[0, 2:5])
        assert np.array_equal(trimmed.vectors, bank[result.ids[0, 2:5]])
        (gone,) = to_shortlists(result, lambda ids: bank[ids], 16, exclude=[result.ids[0]])
        assert gone.fallback == "empty"


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5), depth=st.integers(0, 12), k=st.integers(0, 14),
       excluding=st.booleans())
def test_one_querys_shortlist_is_its_row_of_the_batch(seed: int, n: int, depth: int, k: int, excluding: bool) -> None:
    """to_shortlist_batch for one query (its one-row form) gives what the same query gets in a batch: the same
    ids, vectors, fallback and score floor, with missing results (-1), excluded ids, and fewer than k left."""
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(40, 4)).astype(np.float32)
    ids = np.stack([rng.choice(40, depth, replace=False) for _ in range(n)]) if depth else np.zeros((n, 0), np.int64)
    ids = np.where(rng.random(ids.shape) < 0.15, -1, ids).astype(np.int64)
    scores = -np.sort(-rng.random(ids.shape), axis=1).astype(np.float32)
    exclude = [rng.choice(40, int(rng.integers(0, 6)), replace=False) for _ in range(n)] if excluding else None

    def gather(x: np.ndarray) -> np.ndarray:
        return bank[x]

    batch, floors = to_shortlist_batch(MinerResult(ids, scores), gather, 4, exclude, k)
    for i in range(n):
        one, floor = to_shortlist_batch(MinerResult(ids[i : i + 1], scores[i : i + 1]), gather, 4,
                                        None if exclude is None else exclude[i : i + 1], k)
        width = int((batch.ids[i] >= 0).sum())
        assert np.array_equal(one.ids[0], batch.ids[i, :width])
        assert np.array_equal(one.vectors[0], batch.vectors[i, :width])
        assert one.fallbacks == (batch.fallbacks[i],)
        assert np.array_equal(floor, floors[i : i + 1])
