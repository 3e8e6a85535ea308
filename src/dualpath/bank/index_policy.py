"""Which index a bank gets: one policy, shared by the FAISS and the Milvus backends.

A bank asks for an index *kind* (`auto`, `flat`, `ivf`, `hnsw`) or names a backend's own index
(a FAISS factory string, a Milvus index type). `index_kind` resolves `auto` by the bank's size;
each backend only translates the kind into its own index names and parameters.
"""

from __future__ import annotations

import math

KINDS = ("auto", "flat", "ivf", "hnsw")
# `auto`: exact search up to this many vectors. A flat scan of 50k × 384 is ~20 M multiply-adds
# per query (~2-5 ms on one core) and needs no tuning; past that, approximate search pays off.
AUTO_FLAT_MAX = 50_000
# `auto` above AUTO_FLAT_MAX: HNSW below this size. HNSW has the best recall-per-millisecond for small k
# on CPU at this scale, needs no training (so `bank add` never works against stale centroids) and
# costs ~256 bytes of graph per vector. From 1M on, IVF (trained once on a sample, cheap adds, memory ≈
# the codes) is the better trade for generation: its beam must cover the shortlist (efSearch ≥ K), so
# an HNSW search grows with K. Measured at 1M synthetic vectors with nprobe 16 (docs/benchmarks.md,
# 2026-12-05): one generation step 2.59 ms with IVF against 5.47 ms with HNSW at K = 500, 2.22 against
# 2.87 ms at K = 100; 256 streams 1,768 against 551 stream-steps/s at K = 500. At the stated recall
# (bank/tuning.py; a fixed nprobe of 16 finds 58 % of the exact top 500 on real vectors) IVF stays the
# faster on real vectors: one search 502 deep on the 36k wiki-sample bank takes 0.28 ms at nprobe 181
# (recall@500 0.960) against 0.52 ms for HNSW at efSearch 500 (0.984), and a generation step on the quick
# bank 1.45 against 1.86 ms. The graph's build (311 s against 98 s at 1M) and memory point the same way.
AUTO_HNSW_MAX = 1_000_000
HNSW_M = 32
# The graph's build beam. FAISS's default, 40, is fine at 100k vectors (recall@10 0.998 at
# efSearch 128) but not at 1M: 0.908 at efSearch 128 and 0.968 even at 1024 on the benchmark's
# clustered vectors. Built with 100 the same graph gives 0.999 at efSearch 128 (0.994 at 64),
# for 2.6x the build time (575 s against 220 s on two cores).
HNSW_EF_CONSTRUCTION = 100


def index_kind(requested: str, n: int) -> str | None:
    """`flat`, `hnsw` or `ivf` for a kind (`auto` sized by `n` vectors); None for a backend's own index name."""
    kind = requested.strip().lower()
    if kind == "auto":
        return "flat" if n < AUTO_FLAT_MAX else "hnsw" if n < AUTO_HNSW_MAX else "ivf"
    return kind if kind in KINDS else None


def ivf_nlist(n: int) -> int:
    """~4·√n lists (FAISS's guidance is 4-16·√n), but ≥ 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))
