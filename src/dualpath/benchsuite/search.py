"""Search speed and recall of each index kind, on the bank's real vectors and on synthetic clustered ones.

For every set of vectors, each kind (`flat` = exact, the baseline; `hnsw`; `ivf`) is built as a real
bank (`ConceptBank.from_vectors`, the bank's dtype: float16 by default, so `flat` is FAISS's fp16
scalar quantizer) and measured through `bank.search`:

- single query: k = 10, one query per call, FAISS on one OpenMP thread (what each of the
  miners' workers uses: a one-query search gains nothing from a thread team, and on a busy
  machine the team's spin-waits cost more than the search);
- batched: all queries in batches, FAISS on every core, time per query;
- recall@10 against exact float32 search over the same vectors;
- the opened bank's resident memory, measured in a fresh process (see `memory`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dualpath.bank.tuning import recall_at_k
from dualpath.benchsuite.memory import opened_bank_rss
from dualpath.benchsuite.synthetic import exact_top_k, vector_bank
from dualpath.benchsuite.timing import stats, timings_ms
from dualpath.config import DualPathConfig

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")  # flat first: it is every other kind's baseline
K = 10
BATCH = 256  # queries per batched call


@dataclass
class VectorSet:
    name: str  # "wiki bank" / "synthetic 100k"
    vectors: np.ndarray  # (n, d), any float dtype (a bank's memory map is fine)
    queries: np.ndarray  # (q, d) float32 unit-norm, not in `vectors`


@contextlib.contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """FAISS's OpenMP team size for searches from this thread (OpenMP settings are per thread)."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def bench_vector_set(
    data: VectorSet, workdir: Path, single: int, cfg: DualPathConfig | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(search rows, memory rows) for every index kind over one set of vectors."""
    n, dim = data.vectors.shape
    truth = exact_top_k(data.queries, data.vectors, K)
    search_rows: list[dict[str, Any]] = []
    memory_rows: list[dict[str, Any]] = []
    for kind in KINDS:
        path = workdir / f"{data.name.replace(' ', '-')}-{kind}"
        shutil.rmtree(path, ignore_errors=True)
        log.info("search: %s, %s index over %d vectors", data.name, kind, n)
        start = time.perf_counter()
        bank = vector_bank(path, data.vectors, kind, cfg)
        build_s = time.perf_counter() - start
        try:
            queries = data.queries
            with faiss_threads(1):
                one = stats(timings_ms(lambda i, b=bank, q=queries: b.search(q[i % len(q)][None], K), single))
            with faiss_threads(os.cpu_count() or 1):
                batches = np.array_split(queries, -(-len(queries) // BATCH))  # equal sizes, at most BATCH
                found = np.concatenate([bank.search(b, K)[0] for b in batches])  # also the warm-up
                calls = max(5, len(batches))
                batched = timings_ms(lambda i, b=bank, bs=batches: b.search(bs[i % len(bs)], K), calls, 0)
            index = bank.index_spec
        finally:
            bank.close()
        rss = opened_bank_rss(path)
        shutil.rmtree(path, ignore_errors=True)
        per_query = stats(batched, per_call=len(queries) / len(batches))
        search_rows.append({
            "vectors": data.name, "n": n, "name": kind, "index": index, "build_s": build_s,
            "median_ms": one["median_ms"], "p99_ms": one["p99_ms"],
            "batch_median_ms": per_query["median_ms"], "batch_per_s": per_query["per_s"],
            "recall_at_10": recall_at_k(found, truth),
        })
        raw_mib = n * dim * 4 / 2**20
        memory_rows.append({
            "vectors": data.name, "n": n, "name": kind, "index": index, "bank_mib": rss["bank_mib"],
            "per_million_mib": rss["bank_mib"] / n * 1e6, "raw_float32_mib": raw_mib,
            "x_raw": rss["bank_mib"] / raw_mib,
        })
    base = search_rows[0]
    for row in search_rows:
        row["x_flat"] = row["median_ms"] / base["median_ms"]
        row["x_flat_batch"] = row["batch_median_ms"] / base["batch_median_ms"]
    return search_rows, memory_rows


def add_marginal_memory(rows: list[dict[str, Any]], dim: int) -> None:
    """Per kind, the memory each extra million vectors costs between consecutive sizes of `rows`.

    An opened bank's resident memory is a fixed part (the SQLite connection, document table,
    allocator arenas) plus a part per vector; at 10k vectors the fixed part dominates, so the
    difference between two sizes is the honest per-vector figure.
    """
    raw_per_million = dim * 4 * 1e6 / 2**20
    for kind in KINDS:
        same = sorted((r for r in rows if r["name"] == kind), key=lambda r: r["n"])
        for small, large in itertools.pairwise(same):
            marginal = (large["bank_mib"] - small["bank_mib"]) / (large["n"] - small["n"]) * 1e6
            large["marginal_per_million_mib"] = marginal
            large["x_raw_marginal"] = marginal / raw_per_million


SEARCH_COLUMNS = {
    "vectors": "vectors", "name": "index kind", "index": "FAISS index", "build_s": "build s",
    "median_ms": "1 query median ms", "p99_ms": "1 query p99 ms", "x_flat": "× flat",
    "batch_median_ms": f"batch of {BATCH}, ms/query", "x_flat_batch": "× flat (batch)",
    "recall_at_10": "recall@10 vs exact",
}
MEMORY_COLUMNS = {
    "vectors": "vectors", "name": "index kind", "index": "FAISS index", "bank_mib": "opened bank MiB",
    "per_million_mib": "MiB per million vectors", "raw_float32_mib": "raw float32 MiB",
    "x_raw": "× raw float32", "marginal_per_million_mib": "marginal MiB per million",
    "x_raw_marginal": "marginal × raw float32",
}
