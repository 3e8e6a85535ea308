"""Searching with a context removed (dualpath.search): the batch's one exclusion pass keeps what one row's does."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.search import excluded_depth, first_survivors, id_rows, search_excluding, surviving


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), k=st.integers(1, 12), pool=st.integers(1, 40),
       batch_size=st.sampled_from([1, 3, 1024]))
def test_search_excluding_keeps_each_rows_first_k_survivors_in_order(
    seed: int, n: int, k: int, pool: int, batch_size: int
) -> None:
    """Every row keeps the first k of its results that are real (id ≥ 0) and not among its excluded ids, in the
    order the index gave them, as `surviving` keeps them one row at a time; a row with fewer ends in -1 / -inf.
    Results may be missing (-1) or repeated, exclude lists empty, long or holding ids the index never gives."""
    rng = np.random.default_rng(seed)
    exclude = [rng.choice(pool + 5, size=int(rng.integers(0, 8))).astype(np.int64) for _ in range(n)]
    depth = excluded_depth(k, exclude)
    table = np.where(rng.random((n, depth)) < 0.15, -1, rng.integers(0, pool, size=(n, depth))).astype(np.int64)
    table_scores = -np.sort(rng.random((n, depth)), axis=1).astype(np.float32)
    calls = []

    def search(queries: np.ndarray, asked: int) -> tuple[np.ndarray, np.ndarray]:
        rows = queries[:, 0].astype(np.int64)  # each query names its row of results
        calls.append((len(rows), asked))
        return table[rows, :asked], table_scores[rows, :asked]

    queries = np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)
    ids, scores = search_excluding(search, queries, k, exclude, batch_size)
    assert ids.shape == scores.shape == (n, k)
    assert all(asked == depth for _, asked in calls) and sum(rows for rows, _ in calls) == n
    for i in range(n):
        kept = surviving(table[i], exclude[i], k)
        np.testing.assert_array_equal(ids[i, : kept.size], table[i, kept])
        np.testing.assert_array_equal(scores[i, : kept.size], table_scores[i, kept])
        assert (ids[i, kept.size :] == -1).all() and np.isneginf(scores[i, kept.size :]).all()


def test_first_survivors_without_exclusions_keeps_the_real_results() -> None:
    ids = np.array([[5, -1, 7, 9], [-1, -1, -1, -1], [1, 2, 3, 4]], np.int64)
    order, kept = first_survivors(ids, id_rows(None, 3, "exclude list"), 2)
    taken = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
    np.testing.assert_array_equal(taken, [[5, 7], [-1, -1], [1, 2]])
