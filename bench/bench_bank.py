"""Concept bank benchmark: build throughput, and search latency / recall / memory per index kind.

    python bench/bench_bank.py                 # 100k synthetic vectors (about 5 minutes on 2 cores)
    python bench/bench_bank.py --n 1000000     # the full run
    python bench/bench_bank.py --json out.json # also write the numbers

1. Build throughput on the wiki sample: concepts/s of `ConceptBank.build`, against the encoder alone
   on the same concepts in the same run (the ratio is what segmentation, SQLite, the index and the
   atomic write cost on top of encoding).
2. On synthetic clustered unit vectors (dim 384, from `dualpath.benchsuite.synthetic`): for each
   index kind, a bank is written with `ConceptBank.from_vectors`, then opened in a fresh process
   that measures resident memory after opening and searching, single-query latency p50/p99,
   batched throughput, and recall@10 against exact float32 search. The baseline is the exact
   float32 flat index measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.bank.tuning import recall_at_k
from dualpath.benchsuite.synthetic import exact_top_k, synthetic_set, vector_bank
from dualpath.config import DualPathConfig

KINDS = {  # name → (index, dtype); the first is the baseline
    "flat/f32": ("flat", "float32"),
    "flat": ("flat", "float16"),
    "ivf": ("ivf", "float16"),
    "hnsw": ("hnsw", "float16"),
}
K = 10


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# -- 1. build throughput -------------------------------------------------------------------------------


def bench_build(workdir: Path, n_docs: int) -> dict:
    from dualpath.corpus import WIKI_SAMPLE, load_documents
    from dualpath.encoding import load_encoder

    encoder = load_encoder()
    documents = list(load_documents(WIKI_SAMPLE, limit=n_docs))
    started = time.perf_counter()
    bank = ConceptBank.build(documents, workdir / "wiki", encoder=encoder)
    build_s = time.perf_counter() - started
    texts = bank.texts(np.arange(len(bank)))
    started = time.perf_counter()
    encoder.encode(texts)
    encode_s = time.perf_counter() - started
    result = {
        "documents": n_docs,
        "concepts": len(bank),
        "build_s": build_s,
        "build_concepts_per_s": len(bank) / build_s,
        "encode_only_concepts_per_s": len(bank) / encode_s,
    }
    bank.close()
    return result


# -- 2. search, per index kind (measured in a child process for clean memory numbers) -------------------


def measure_opened_bank(bank_dir: str, queries_file: str, truth_file: str) -> dict:
    queries, truth = np.load(queries_file), np.load(truth_file)
    before = rss_bytes()
    bank = ConceptBank.open(bank_dir)
    opened = rss_bytes()
    single = []
    for q in queries:
        started = time.perf_counter()
        bank.search(q[None, :], K)
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    ids, _ = bank.search(queries, K)
    batch_s = time.perf_counter() - started
    recall = recall_at_k(ids, truth)
    return {
        "factory": bank.index_spec,
        "rss_open": opened - before,
        "rss_after_search": rss_bytes() - before,
        "p50_ms": 1e3 * float(np.percentile(single, 50)),
        "p99_ms": 1e3 * float(np.percentile(single, 99)),
        "batch_qps": len(queries) / batch_s,
        "recall_at_10": recall,
    }


def bench_search(workdir: Path, n: int, dim: int, n_queries: int, kinds: list[str], seed: int) -> dict:
    base, queries = synthetic_set(n, n_queries, dim, seed)  # queries: same clusters, not in the bank
    truth = exact_top_k(queries, base, K)
    np.save(workdir / "queries.npy", queries)
    np.save(workdir / "truth.npy", truth)
    results = {}
    for name in kinds:
        index, dtype = KINDS[name]
        cfg = DualPathConfig.from_dict({"bank": {"dtype": dtype}})
        started = time.perf_counter()
        vector_bank(workdir / name.replace("/", "_"), base, index, cfg).close()
        build_s = time.perf_counter() - started
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(workdir / name.replace("/", "_")),
                str(workdir / "queries.npy"),
                str(workdir / "truth.npy"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = {"build_s": build_s, **json.loads(child.stdout.strip().splitlines()[-1])}
        print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def print_tables(build: dict | None, search: dict, n: int, dim: int) -> None:
    if build:
        print(
            f"\nbuild on wiki-sample ({build['documents']} articles, {build['concepts']} concepts): "
            f"{build['build_concepts_per_s']:.0f} concepts/s, encoder alone {build['encode_only_concepts_per_s']:.0f} "
            f"concepts/s (build/encode = {build['build_concepts_per_s'] / build['encode_only_concepts_per_s']:.2f})"
        )
    raw = n * dim * 4
    baseline = search[next(iter(search))]
    print(f"\nsearch on {n:,} clustered unit vectors, dim {dim}, k={K}; baseline = exact float32 flat, same run")
    print(
        "| index | factory | build s | p50 ms | p99 ms | p50 vs flat | batch q/s | recall@10 "
        "| RSS MB per 1M | RSS / raw f32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in search.items():
        rss = r["rss_after_search"]
        print(
            f"| {name} | {r['factory']} | {r['build_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['p50_ms'] / baseline['p50_ms']:.2f}× | {r['batch_qps']:.0f} | {r['recall_at_10']:.3f} "
            f"| {rss / (n / 1e6) / 2**20:.0f} | {rss / raw:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="synthetic vectors in the bank")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    parser.add_argument("--wiki-docs", type=int, default=1000, help="articles for the build benchmark (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where banks are written (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("BANK", "QUERIES", "TRUTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_opened_bank(*args.child)))
        return
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)  # a new --workdir is created, not an error
    with tempfile.TemporaryDirectory(prefix="bench_bank.", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        build = bench_build(workdir, args.wiki_docs) if args.wiki_docs else None
        search = bench_search(workdir, args.n, args.dim, args.queries, kinds, args.seed)
    print_tables(build, search, args.n, args.dim)
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "dim": args.dim, "build": build, "search": search}, indent=2))


if __name__ == "__main__":
    main()
