"""Decider and miner speed, each beside a baseline measured in the same run.

Decisions: per-step latency at K = 500 for d = 384 and 768, single stream (`choose_next_vector`,
`DualPathDecoder.step`) and batched (`choose_next_vectors`), against the bare minimum any decider
does (one BLAS mat-vec + argmax) and against the reference system's 5 ms budget per decision
(`dualpath.benchsuite.decider`, which `dualpath bench` runs too).
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

import faiss
import numpy as np

from dualpath.bank.faiss_backend import FaissBackend
from dualpath.benchsuite.decider import BASELINE, HOT_BASELINE, K, bench_decisions
from dualpath.benchsuite.timing import stats, timings_ms
from dualpath.decider import SyncMiner, ThreadedMiner
from dualpath.fileio import write_json_atomic
from dualpath.models.heuristics import normalize_rows

REFERENCE_BUDGET_MS = 5.0


def bench_miners(n_bank: int, d: int, n_queries: int, callers: int = 2) -> dict[str, dict[str, float]]:
    # One OpenMP thread per search: a one-query search gains nothing from a team, and on a busy
    # machine the team's spin-waits cost tens of ms (measured: 1.3 ms with one thread, 30-40 ms
    # with two on a loaded 2-core box). The miners' parallelism is their worker threads.
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    index = FaissBackend.exact(normalize_rows(rng.normal(size=(n_bank, d))))
    queries = normalize_rows(rng.normal(size=(n_queries, d)))
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
        # A shortlist in cache is compared with the mat-vec in cache (see dualpath.benchsuite.decider).
        ratio = r["median_ms"] / (rows[HOT_BASELINE]["median_ms"] if name.endswith("in cache") else base)
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
        print(table(f"Decision, K={K}, {d}", rows, BASELINE, budget=True), end="\n\n")
    miner_title = f"Miner, FAISS flat, {results['setup']['bank']:,} × 384, K={K}, one query per request"
    print(table(miner_title, results["miner"], "index.search direct (baseline)", budget=False), end="\n\n")
    print(table("Miner overhead alone (an index that answers instantly)", results["miner_overhead"],
                "index.search direct (baseline)", budget=False), end="\n\n")
    print(f"machine: {results['machine']}")
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
