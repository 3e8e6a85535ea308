"""Decider and miner speed, each beside a baseline measured in the same run.

Decisions: per-step latency at K = 500 for d = 384 and 768, single stream (`choose_next_vector`,
`DualPathDecoder.step`) and batched (`choose_next_vectors`), against the bare minimum any decider
does (one BLAS mat-vec + argmax) and against the reference system's 5 ms budget per decision.
Miners: FAISS flat search over random unit vectors through SyncMiner and ThreadedMiner against
calling the index directly; the threaded miner single-caller (its overhead) and with concurrent
callers (its throughput).

    .venv/bin/python bench/bench_decider.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

import faiss
import numpy as np

from dualpath.decider import (
    DualPathDecoder,
    Shortlist,
    ShortlistBatch,
    SyncMiner,
    ThreadedMiner,
    choose_next_vector,
    choose_next_vectors,
    load_lanes,
)
from dualpath.fileio import write_json_atomic

REFERENCE_BUDGET_MS = 5.0
K = 500


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def timings_ms(fn: Callable[[int], object], n: int, warmup: int = 5) -> np.ndarray:
    for i in range(warmup):
        fn(i % n)
    out = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - start) * 1000.0
    return out


def stats(ms: np.ndarray, per_call: int = 1) -> dict[str, float]:
    """Median and p99 per item (a call covering `per_call` items), and items per second over the whole run.

    Throughput comes from the mean, not the median: on a busy machine a long batched call is
    almost always preempted somewhere while most short single calls are not, so medians would
    flatter the single path.
    """
    per_item = ms / per_call
    return {
        "median_ms": float(np.median(per_item)),
        "p99_ms": float(np.percentile(per_item, 99)),
        "per_s": float(1000.0 / np.mean(per_item)),
    }


def bench_decisions(d: int, steps: int, batch: int) -> dict[str, dict[str, float]]:
    """Per-step figures over `steps` steps cycling through `batch` distinct shortlists (K × d each)."""
    rng = np.random.default_rng(d)
    lane = load_lanes()["neutral"]
    v_hat = unit_rows(rng.normal(size=(batch, d)))
    vectors = unit_rows(rng.normal(size=(batch, K, d)))
    # One neighbour per stream at a cosine spread over the lane's range, so all decisions occur.
    c = rng.uniform(0.5, 0.9, size=batch)[:, None]
    noise = unit_rows(rng.normal(size=(batch, d)))
    vectors[:, 0] = unit_rows(c * v_hat + np.sqrt(1 - c**2) * noise)
    ids = np.arange(K, dtype=np.int64)
    shortlists = [Shortlist(ids, vectors[i]) for i in range(batch)]

    def bare(i: int) -> None:  # what any decider must do: K cosines and the best
        j = i % batch
        int(np.argmax(vectors[j] @ v_hat[j]))

    def single(i: int) -> None:
        choose_next_vector(v_hat[i % batch], shortlists[i % batch], lane)

    decoder = DualPathDecoder(lane)

    def stateful(i: int) -> None:
        decoder.step(v_hat[i % batch], shortlists[i % batch])

    all_streams = ShortlistBatch(np.tile(ids, (batch, 1)), vectors, (None,) * batch)

    def batched(i: int) -> None:
        choose_next_vectors(v_hat, all_streams, lane)

    return {
        "bare matvec + argmax (baseline)": stats(timings_ms(bare, steps)),
        "choose_next_vector": stats(timings_ms(single, steps)),
        "DualPathDecoder.step": stats(timings_ms(stateful, steps)),
        f"choose_next_vectors, batch {batch}": stats(
            timings_ms(batched, max(5, steps // batch), warmup=1), per_call=batch
        ),
    }


class FlatIndex:
    """FAISS exact inner-product search behind the bank's contract: (ids, scores)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(queries, k)
        return ids, scores


def bench_miners(n_bank: int, d: int, n_queries: int, callers: int = 2) -> dict[str, dict[str, float]]:
    # One OpenMP thread per search: a one-query search gains nothing from a team, and on a busy
    # machine the team's spin-waits cost tens of ms (measured: 1.3 ms with one thread, 30-40 ms
    # with two on a loaded 2-core box). The miners' parallelism is their worker threads.
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    index = FlatIndex(unit_rows(rng.normal(size=(n_bank, d))))
    queries = unit_rows(rng.normal(size=(n_queries, d)))
    sync = SyncMiner(index)
    out = {
        "index.search direct (baseline)": stats(timings_ms(lambda i: index.search(queries[i : i + 1], K), n_queries)),
        "SyncMiner": stats(timings_ms(lambda i: sync.search(queries[i : i + 1], K), n_queries)),
    }
    with ThreadedMiner(index, workers=2, queue_size=8) as miner:
        out["ThreadedMiner, 1 caller"] = stats(
            timings_ms(lambda i: miner.search(queries[i : i + 1], K, timeout=10.0), n_queries)
        )
        # Throughput: `callers` threads each search their share of the queries at once.
        shares = np.array_split(np.arange(n_queries), callers)

        def caller(rows: np.ndarray) -> None:
            for i in rows:
                miner.search(queries[i : i + 1], K, timeout=10.0)

        threads = [threading.Thread(target=caller, args=(rows,)) for rows in shares]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall_ms = (time.perf_counter() - start) * 1000.0
    per_query = wall_ms / n_queries
    out[f"ThreadedMiner, {callers} callers (wall time per query)"] = {
        "median_ms": per_query,
        "p99_ms": float("nan"),
        "per_s": 1000.0 / per_query,
    }
    return out


class NoopIndex:
    """Answers instantly: what remains of a request's time is the miner's own overhead."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = queries.shape[0]
        return np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)


def bench_miner_overhead(n_queries: int) -> dict[str, dict[str, float]]:
    index = NoopIndex()
    query = np.zeros((1, 384), np.float32)
    out = {
        "index.search direct (baseline)": stats(timings_ms(lambda i: index.search(query, K), n_queries)),
        "SyncMiner": stats(timings_ms(lambda i: SyncMiner(index).search(query, K), n_queries)),
    }
    with ThreadedMiner(index, workers=2, queue_size=8) as miner:
        out["ThreadedMiner"] = stats(timings_ms(lambda i: miner.search(query, K, timeout=10.0), n_queries))
    return out


def table(title: str, rows: dict[str, dict[str, float]], baseline: str, budget: bool) -> str:
    base = rows[baseline]["median_ms"]
    head = "| | median ms | p99 ms | per s (mean) | median × baseline |" + (" share of 5 ms |" if budget else "")
    lines = [f"**{title}**", "", head, "|---|---|---|---|---|" + ("---|" if budget else "")]
    for name, r in rows.items():
        ratio = r["median_ms"] / base
        line = f"| {name} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | {r['per_s']:,.0f} | {ratio:.2f} |"
        if budget:
            line += f" {r['median_ms'] / REFERENCE_BUDGET_MS:.3f} |"
        lines.append(line)
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    steps, batch = (200, 32) if quick else (1000, 64)
    n_bank, n_queries = (10_000, 100) if quick else (37_000, 400)
    results = {
        "decision": {f"d={d}": bench_decisions(d, steps, batch) for d in (384, 768)},
        "miner": bench_miners(n_bank, 384, n_queries),
        "miner_overhead": bench_miner_overhead(10 * n_queries),
        "setup": {"K": K, "steps": steps, "batch": batch, "bank": n_bank, "queries": n_queries},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "faiss_threads_for_miner_bench": 1,
        },
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    results = run(args.quick)
    for d, rows in results["decision"].items():
        print(table(f"Decision, K={K}, {d}", rows, "bare matvec + argmax (baseline)", budget=True), end="\n\n")
    miner_title = f"Miner, FAISS flat, {results['setup']['bank']:,} × 384, K={K}, one query per request"
    print(table(miner_title, results["miner"], "index.search direct (baseline)", budget=False), end="\n\n")
    print(table("Miner overhead alone (an index that answers instantly)", results["miner_overhead"],
                "index.search direct (baseline)", budget=False), end="\n\n")
    print(f"machine: {results['machine']}")
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
