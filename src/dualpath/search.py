"""Searching with a context removed: "search, drop the context, keep k", written once.

A pair's (or a prompt's) own context concepts must never come back as its answer: the last
sentence would find itself. So every caller asks for `k + len(exclude)` results, drops the
excluded ids and the missing ones (-1), and keeps the first k that survive. Ranking, the
teacher-forced evaluation, the shortlists and the text renderer all go through here.

Pure numpy over anything with the bank's contract, `search(queries, k) -> (ids, scores)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def excluded_depth(k: int, exclude: Sequence[np.ndarray]) -> int:
    """How many results to ask for so that `k` survive removing any row's `exclude`."""
    return k + max((len(e) for e in exclude), default=0)


def surviving(ids: np.ndarray, exclude: np.ndarray | None = None, k: int | None = None) -> np.ndarray:
    """Positions in one result row that survive: real results (id ≥ 0) not in `exclude`, the first `k`."""
    keep = ids >= 0
    if exclude is not None:
        keep &= ~np.isin(ids, exclude)
    return np.flatnonzero(keep)[:k]


def search_excluding(
    search: SearchFn,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray],
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` ids (n, k) int64 and scores (n, k) float32 of each query with `exclude[i]` removed.

    Rows with fewer survivors end in id -1 / score -inf, like the bank's own missing results.
    """
    n = len(queries)
    ids = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    depth = excluded_depth(k, exclude)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        found, found_scores = search(np.ascontiguousarray(queries[start:stop], dtype=np.float32), depth)
        for row, i in enumerate(range(start, stop)):
            kept = surviving(found[row], exclude[i], k)
            ids[i, : kept.size] = found[row, kept]
            scores[i, : kept.size] = found_scores[row, kept]
    return ids, scores
