"""Milvus (a standalone server, and Milvus Lite) against FAISS, same vectors, same run: build, latency, recall@10.

100k synthetic clustered unit vectors (d = 384, like sentence embeddings: a few thousand topics
with spread around each), 12 domains, held-out queries from the same distribution. Both go
through the bank's own backends (`FaissBackend`, `MilvusBackend`), so this is what a bank pays.
For each index kind (flat = exact, hnsw with the same M / efConstruction / efSearch) it reports
single-query latency p50/p99 with and without a domain filter, batched throughput, recall@10
against exact search, and the Milvus/FAISS ratios. FAISS runs one OpenMP thread (Milvus Lite's
FAISS indexes too, same process): the right setting for single-query latency, and on a shared
2-core machine a 2-thread team spins while the other core is busy.

The server is the standalone Milvus embedded in the PyPI package `milvus` (started here in a temporary
directory, reached through http://127.0.0.1:PORT like a cluster); `--backends` picks which run.

    .venv/bin/python bench/bench_milvus.py [--n 100000] [--queries 200] [--backends faiss,server,lite]
                                           [--kinds flat,hnsw] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from dualpath.bank.faiss_backend import FaissBackend
from dualpath.bank.milvus_backend import MilvusBackend
from dualpath.bank.tuning import recall_at_k
from dualpath.benchsuite.synthetic import clustered_unit_vectors
from dualpath.config import BankConfig
from dualpath.fileio import write_json_atomic

K = 10
DOMAINS = [f"domain_{i:02d}" for i in range(12)]


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int, members: np.ndarray | None = None) -> np.ndarray:
    pool = vectors if members is None else vectors[members]
    top = np.argsort(-(queries @ pool.T), axis=1)[:, :k]
    return top if members is None else members[top]


def latencies_ms(search: Callable[[np.ndarray], object], queries: np.ndarray, warmup: int = 3) -> np.ndarray:
    for q in queries[:warmup]:
        search(q[None, :])
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        search(q[None, :])
        out[i] = (time.perf_counter() - start) * 1000.0
    return out


def start_server(base_dir: Path) -> str:
    """Start the Milvus standalone server of the `milvus` package; its http://127.0.0.1:PORT URI."""
    from milvus import default_server

    default_server.set_base_dir(str(base_dir))
    default_server.start()
    return f"http://127.0.0.1:{default_server.listen_port}"


def measure(
    name: str,
    build: Callable[[], object],
    queries: np.ndarray,
    truth: np.ndarray,
    filtered_truth: np.ndarray,
    domain: str,
    single: int,
) -> dict[str, float]:
    start = time.perf_counter()
    backend = build()
    build_s = time.perf_counter() - start
    plain = latencies_ms(lambda q: backend.search(q, K), queries[:single])
    filtered = latencies_ms(lambda q: backend.search(q, K, domain=domain), queries[:single])
    start = time.perf_counter()
    ids, _ = backend.search(queries, K)
    batch_s = time.perf_counter() - start
    filtered_ids, _ = backend.search(queries, K, domain=domain)
    backend.close()
    row = {
        "build_s": build_s,
        "p50_ms": float(np.median(plain)),
        "p99_ms": float(np.percentile(plain, 99)),
        "filtered_p50_ms": float(np.median(filtered)),
        "filtered_p99_ms": float(np.percentile(filtered, 99)),
        "batch_qps": len(queries) / batch_s,
        "recall_at_10": recall_at_k(ids, truth),
        "filtered_recall_at_10": recall_at_k(filtered_ids, filtered_truth),
    }
    print(
        f"{name:<14} build {row['build_s']:7.1f} s   p50 {row['p50_ms']:8.2f} ms   p99 {row['p99_ms']:8.2f} ms   "
        f"domain p50 {row['filtered_p50_ms']:8.2f} ms   batch {row['batch_qps']:8.0f} q/s   "
        f"R@10 {row['recall_at_10']:.3f} (domain {row['filtered_recall_at_10']:.3f})",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200, help="held-out queries (recall, batch)")
    parser.add_argument("--single", type=int, default=100, help="of them, searched one at a time (latency)")
    parser.add_argument("--backends", default="faiss,server,lite", help="faiss, server (Milvus standalone), lite")
    parser.add_argument("--kinds", default="flat,hnsw", help="index kinds to compare")
    parser.add_argument("--quick", action="store_true", help="20k vectors, 50 queries: a smoke run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.single = 20_000, 50, 30
    logging.basicConfig(level=logging.WARNING)
    faiss.omp_set_num_threads(1)

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, args.n // 30), args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered_unit_vectors(args.n, args.dim, centres, rng)
    queries = clustered_unit_vectors(args.queries, args.dim, centres, rng)
    domains = [DOMAINS[i] for i in rng.integers(0, len(DOMAINS), args.n)]
    domain = DOMAINS[0]
    members = np.flatnonzero(np.asarray(domains) == domain)
    truth = exact_top_k(queries, vectors, K)
    filtered_truth = exact_top_k(queries, vectors, K, members)
    ids = np.arange(args.n, dtype=np.int64)
    print(
        f"{args.n} vectors, d={args.dim}, {len(DOMAINS)} domains ({len(members)} in {domain}), "
        f"{args.queries} queries ({args.single} timed one at a time), k={K}",
        flush=True,
    )

    backends = args.backends.split(",")
    kinds = args.kinds.split(",")
    results: dict[str, dict[str, float]] = {}
    names = {"faiss": "FAISS", "server": "Milvus server", "lite": "Milvus Lite"}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "server") if "server" in backends else None
        uris = {"lite": f"{tmp}/bench.db", "server": server}
        try:
            for kind in kinds:
                for backend_name in backends:
                    if backend_name == "faiss":
                        faiss_cfg = BankConfig(index=kind, dtype="float32")

                        def build(cfg: BankConfig = faiss_cfg) -> FaissBackend:
                            backend = FaissBackend.create(args.dim, cfg)
                            backend.add(ids, vectors, domains)
                            return backend
                    else:
                        milvus_cfg = BankConfig(backend="milvus", index=kind, dtype="float32",
                                                milvus_uri=uris[backend_name])

                        def build(cfg: BankConfig = milvus_cfg) -> MilvusBackend:
                            backend = MilvusBackend.create(args.dim, cfg)
                            backend.add(ids, vectors, domains)
                            backend.save(Path(tmp))
                            if not backend.wait_until_indexed(1800.0):  # measure the finished, served index
                                raise TimeoutError("Milvus index build did not finish")
                            return backend

                    results[f"{backend_name}_{kind}"] = measure(
                        f"{names[backend_name]} {kind}", build, queries, truth, filtered_truth, domain, args.single
                    )
        finally:
            if server is not None:
                from milvus import default_server

                default_server.stop()

    print("\nMilvus / FAISS (same index kind, same run):")
    ratios: dict[str, dict[str, float]] = {}
    for kind in kinds:
        for other in (b for b in backends if b != "faiss"):
            if "faiss" not in backends:
                break
            f, m = results[f"faiss_{kind}"], results[f"{other}_{kind}"]
            ratios[f"{other}_{kind}"] = r = {
                "build": m["build_s"] / f["build_s"],
                "p50": m["p50_ms"] / f["p50_ms"],
                "p99": m["p99_ms"] / f["p99_ms"],
                "filtered_p50": m["filtered_p50_ms"] / f["filtered_p50_ms"],
                "batch_qps": m["batch_qps"] / f["batch_qps"],
                "recall_at_10_diff": m["recall_at_10"] - f["recall_at_10"],
            }
            print(
                f"  {names[other]:<13} {kind:<5} build ×{r['build']:.2f}   p50 ×{r['p50']:.2f}   p99 ×{r['p99']:.2f}   "
                f"domain p50 ×{r['filtered_p50']:.2f}   batch throughput ×{r['batch_qps']:.3f}   "
                f"R@10 {r['recall_at_10_diff']:+.3f}"
            )
    if args.json:
        write_json_atomic(args.json, {"args": vars(args), "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
