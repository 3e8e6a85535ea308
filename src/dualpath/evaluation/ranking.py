"""Where the true next concept ranks when a query searches the bank, with the context removed.

Every retrieval-style number in dualpath (tower Recall@K and MRR, LVM Hit@K, end-to-end Hit@5)
comes from `target_ranks`, so they all honour the same rule: a pair's own context concepts are
dropped from its result list before ranking (otherwise the last sentence finds itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dualpath.search import SearchFn, search_excluding

MISSING = np.iinfo(np.int64).max  # rank of a target not found within the searched depth


def target_ranks(
    search: SearchFn,
    queries: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    depth: int,
    batch_size: int = 1024,
) -> np.ndarray:
    """1-based rank of `targets[i]` among the results of `queries[i]` after removing `exclude[i]`.

    Searches `depth + max(len(exclude))` results so that `depth` survive the removal; a target
    beyond `depth` (or absent) gets rank MISSING.
    """
    ranks = np.full(len(targets), MISSING, dtype=np.int64)
    ids, _ = search_excluding(search, queries, depth, exclude, batch_size)
    for i, kept in enumerate(ids):
        hit = np.flatnonzero(kept == targets[i])
        if hit.size:
            ranks[i] = hit[0] + 1
    return ranks


def recall_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    return {f"R@{k}": float(np.mean(ranks <= k)) if len(ranks) else 0.0 for k in ks}


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    if not len(ranks):
        return 0.0
    reciprocal = np.where(ranks == MISSING, 0.0, 1.0 / np.minimum(ranks, MISSING).astype(np.float64))
    return float(reciprocal.mean())


def retrieval_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 10, 100, 500, 1000)) -> dict[str, float]:
    """Recall@K for each K and MRR (over the searched depth; deeper ranks count as 0)."""
    return {**recall_at(ranks, ks), "MRR": mean_reciprocal_rank(ranks)}
