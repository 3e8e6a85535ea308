"""Shortlist providers over any index with `search(queries, k) -> (ids, scores)`.

Retrieval is advisory: a miner never raises for a failed or slow search. It returns a
`MinerResult` whose status says what happened, and `to_shortlists` turns a result that did not
deliver into shortlists the decider reads as NOVEL with the reason.

`ThreadedMiner` runs searches on worker threads (FAISS releases the GIL, so a search overlaps
the caller's own work) behind a bounded queue. Each request carries its own id and its own
future, so a result can only ever reach the caller that asked for it; a caller that stops
waiting cancels its request, and a worker skips requests whose caller has gone. Threads only,
never processes: the reference's FAISS + multiprocessing runs are what crashed.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from dualpath.decider.decision import (
    FALLBACK_EMPTY,
    FALLBACK_TIMEOUT,
    NO_ID,
    Shortlist,
    ShortlistBatch,
    fallback_error,
    id_member,
    id_rows,
)
from dualpath.runtime import limit_search_threads
from dualpath.search import first_survivors, surviving

log = logging.getLogger(__name__)

Status = Literal["ok", "timeout", "error"]


class SearchIndex(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class MinerResult:
    """ids (n, k) int64 and scores (n, k) float32 when status is "ok"; empty (n, 0) arrays otherwise."""

    ids: np.ndarray
    scores: np.ndarray
    status: Status = "ok"
    error: str | None = None
    request_id: int = 0
    latency_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _failed(n: int, status: Status, error: str, request_id: int, start: float) -> MinerResult:
    return MinerResult(
        np.zeros((n, 0), np.int64),
        np.zeros((n, 0), np.float32),
        status,
        error,
        request_id,
        (time.perf_counter() - start) * 1000.0,
    )


def _run_search(
    index: SearchIndex, queries: np.ndarray, k: int, request_id: int, start: float
) -> MinerResult:
    n = queries.shape[0]
    try:
        ids, scores = index.search(queries, k)
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        if ids.shape != scores.shape or ids.ndim != 2 or ids.shape[0] != n:
            raise ValueError(f"index returned ids {ids.shape} and scores {scores.shape} for {n} queries")
    except Exception as err:  # retrieval is advisory: any failure becomes a result, never a raise
        log.warning("search request %d failed: %s: %s", request_id, type(err).__name__, err)
        return _failed(n, "error", f"{type(err).__name__}: {err}", request_id, start)
    return MinerResult(ids, scores, "ok", None, request_id, (time.perf_counter() - start) * 1000.0)


def _as_queries(queries: np.ndarray) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    return q[None, :] if q.ndim == 1 else q


class SyncMiner:
    """Searches in the caller's thread. A sync call cannot be abandoned, so `timeout` is not enforced."""

    def __init__(self, index: SearchIndex) -> None:
        self.index = index
        self._ids = itertools.count(1)

    def search(self, queries: np.ndarray, k: int, timeout: float | None = None) -> MinerResult:
        start = time.perf_counter()
        return _run_search(self.index, _as_queries(queries), k, next(self._ids), start)

    def close(self) -> None:
        """Nothing to release; here so both miners can be used the same way."""

    def __enter__(self) -> SyncMiner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Request:
    request_id: int
    queries: np.ndarray
    k: int
    start: float
    future: Future


_STOP = None  # queue sentinel: one per worker at close()


class ThreadedMiner:
    """Searches on `workers` daemon threads behind a queue of at most `queue_size` waiting requests.

    `search_threads` caps the OpenMP threads each worker's FAISS searches use (None: FAISS's
    default, one per core, in every worker). The default 1 keeps workers × teams within the
    cores: the miner's parallelism is its workers, and on a busy machine an OpenMP team's
    spin-waits made a one-query search several times slower than with one thread.
    """

    def __init__(
        self, index: SearchIndex, workers: int = 2, queue_size: int = 64, search_threads: int | None = 1
    ) -> None:
        if workers < 1 or queue_size < 1 or (search_threads is not None and search_threads < 1):
            raise ValueError("workers, queue_size and search_threads must be ≥ 1")
        self.index = index
        self.search_threads = search_threads
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=queue_size)
        self._ids = itertools.count(1)
        self._closed = False
        self._close_lock = threading.Lock()
        # Daemon threads: a search stuck inside the index can never hold the interpreter at exit.
        self._workers = [
            threading.Thread(target=self._work, name=f"dualpath-miner-{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    def _work(self) -> None:
        if self.search_threads is not None:
            limit_search_threads(self.search_threads)
        while True:
            request = self._queue.get()
            if request is _STOP:
                return
            # A request whose caller gave up (timeout, close) is cancelled: skip it unsearched.
            if not request.future.set_running_or_notify_cancel():
                continue
            request.future.set_result(
                _run_search(self.index, request.queries, request.k, request.request_id, request.start)
            )

    def _submit(self, queries: np.ndarray, k: int, timeout: float | None) -> _Request:
        start = time.perf_counter()
        request = _Request(next(self._ids), _as_queries(queries), k, start, Future())
        n = request.queries.shape[0]
        if self._closed:
            request.future.set_result(_failed(n, "error", "miner is closed", request.request_id, start))
            return request
        try:
            self._queue.put(request, timeout=timeout)
        except queue.Full:
            request.future.set_result(
                _failed(n, "timeout", f"queue full for {timeout:g} s", request.request_id, start)
            )
            return request
        if self._closed:
            # close() ran while this request was being queued, perhaps after the workers' stop
            # signals: cancel it so no caller waits on a request no worker will take.
            request.future.cancel()
        return request

    def submit(self, queries: np.ndarray, k: int, timeout: float | None = None) -> Future:
        """Queue a search; the future yields a MinerResult. Waits at most `timeout` for queue space."""
        return self._submit(queries, k, timeout).future

    def search(self, queries: np.ndarray, k: int, timeout: float | None = None) -> MinerResult:
        """Search and wait at most `timeout` seconds in all (None: no limit); never raises for the index."""
        request = self._submit(queries, k, timeout)
        n, rid, start = request.queries.shape[0], request.request_id, request.start
        remaining = None if timeout is None else max(0.0, timeout - (time.perf_counter() - start))
        try:
            return request.future.result(timeout=remaining)
        except FutureTimeout:
            request.future.cancel()  # succeeds only if no worker started it; a running search is discarded
            return _failed(n, "timeout", f"no result within {timeout:g} s", rid, start)
        except CancelledError:
            return _failed(n, "error", "miner closed before the search ran", rid, start)

    def close(self, join_timeout: float = 5.0) -> None:
        """Cancel waiting requests, stop the workers and join them (at most `join_timeout` s). Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._cancel_waiting()
        deadline = time.monotonic() + join_timeout
        for _ in self._workers:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("miner worker %s still inside a search after %.1f s", worker.name, join_timeout)
        if not self.alive_workers:  # otherwise a late worker still needs its stop signal
            self._cancel_waiting()

    def _cancel_waiting(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not _STOP:
                request.future.cancel()

    @property
    def alive_workers(self) -> int:
        return sum(w.is_alive() for w in self._workers)

    def __enter__(self) -> ThreadedMiner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_shortlists(
    result: MinerResult,
    gather: Callable[[np.ndarray], np.ndarray],
    dim: int,
    exclude: Sequence[np.ndarray] | None = None,
    k: int | None = None,
) -> list[Shortlist]:
    """One Shortlist per query row; `gather(ids) -> (m, d)` looks up vectors (e.g. `bank.vectors`).

    `exclude[i]` are ids removed from row i (a context must not find itself); `k` keeps at most
    the first k survivors (so a caller can ask the miner for k + len(exclude) and still get k). A
    row left without results, or a result that did not deliver, becomes a fallback shortlist, so
    the decider records NOVEL with "empty", "timeout" or "error: ...".
    """
    n = result.ids.shape[0]
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} rows for {n} queries")
    if result.status == "timeout":
        return [Shortlist.failed(FALLBACK_TIMEOUT, dim) for _ in range(n)]
    if result.status == "error":
        return [Shortlist.failed(fallback_error(result.error or "unknown"), dim) for _ in range(n)]
    shortlists = []
    for i, row in enumerate(result.ids):
        present = row[surviving(row, None if exclude is None else exclude[i], k)]
        if present.size == 0:
            shortlists.append(Shortlist.failed(FALLBACK_EMPTY, dim))
        else:
            shortlists.append(Shortlist(present, np.asarray(gather(present), dtype=np.float32)))
    return shortlists


def to_shortlist_batch(
    result: MinerResult,
    gather: Callable[[np.ndarray], np.ndarray],
    dim: int,
    exclude: Sequence[np.ndarray] | None = None,
    k: int | None = None,
    unit: bool = False,
) -> tuple[ShortlistBatch, np.ndarray]:
    """`to_shortlists` for a whole batch at once: one exclusion pass, one `gather` of every row's ids.

    Returns the batch (ids -1 past a row's survivors; `unit` says the gathered vectors are
    unit-norm) and each row's score floor: the score against the query that no concept outside
    the row's shortlist exceeds (the k-th survivor's: the index returns results best first; +inf,
    no claim, for a row with fewer than k survivors). Rows hold the same ids in the same order as
    `to_shortlists` gives.
    """
    n = result.ids.shape[0]
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} rows for {n} queries")
    if not result.ok:
        reason = FALLBACK_TIMEOUT if result.status == "timeout" else fallback_error(result.error or "unknown")
        empty = ShortlistBatch(np.zeros((n, 0), np.int64), np.zeros((n, 0, dim), np.float32), (reason,) * n)
        return empty, np.full(n, -np.inf, np.float32)
    ids = result.ids
    excluded = id_rows(exclude, n, "exclude list")
    limit = ids.shape[1] if k is None else k
    if n == 1:
        keep = ids[0] >= 0
        if excluded.shape[1]:
            keep &= ~id_member(ids, excluded)[0]
        return _one_shortlist(result, keep, limit, gather, dim, unit)
    order, kept = first_survivors(ids, excluded, limit)  # each row's survivors first, in order
    counts = kept.sum(axis=1)
    width = order.shape[1]
    out_ids = np.where(kept, np.take_along_axis(ids, order, axis=1), NO_ID)
    vectors = np.asarray(gather(np.where(kept, out_ids, 0).reshape(-1)), dtype=np.float32).reshape(n, width, dim)
    scores = np.take_along_axis(result.scores, order, axis=1)
    # A full row: nothing outside it scores above its last survivor. A short row claims nothing
    # (+inf): an approximate index may return fewer results than the bank holds.
    last = scores[np.arange(n), np.maximum(counts - 1, 0)] if width else np.full(n, np.inf, np.float32)
    floor = np.where(counts < limit, np.inf, last).astype(np.float32)
    fallbacks = tuple(None if c else FALLBACK_EMPTY for c in counts.tolist())
    return ShortlistBatch(out_ids, vectors, fallbacks, unit), floor


def _one_shortlist(
    result: MinerResult, keep: np.ndarray, limit: int, gather: Callable[[np.ndarray], np.ndarray], dim: int,
    unit: bool,
) -> tuple[ShortlistBatch, np.ndarray]:
    """`to_shortlist_batch` for one query whose surviving results are `keep` (k,): its first `limit`
    survivors taken by one index, where the batch sorts every row's survivors first (one stream's search
    stage spent more on that bookkeeping than on reading its rows). The same ids, vectors and floor."""
    positions = np.flatnonzero(keep)[:limit]
    out_ids = result.ids[0, positions][None]
    vectors = np.asarray(gather(out_ids.reshape(-1)), dtype=np.float32).reshape(1, len(positions), dim)
    last = float(result.scores[0, positions[-1]]) if len(positions) else math.inf
    floor = np.array([math.inf if len(positions) < limit else last], np.float32)
    return ShortlistBatch(out_ids, vectors, (None if len(positions) else FALLBACK_EMPTY,), unit), floor
