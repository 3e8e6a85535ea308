"""Searching with a context removed: "search, drop the context, keep k", written once.

A pair's (or a prompt's) own context concepts must never come back as its answer: the last
sentence would find itself. So every caller asks for `k + len(exclude)` results, drops the
excluded ids and the missing ones (-1), and keeps the first k that survive. Ranking, the
teacher-forced evaluation, the shortlists and the text renderer all go through here.

Pure numpy over anything with the bank's contract, `search(queries, k) -> (ids, scores)`. The ids to
drop travel as padded rows (`id_rows`) and are found by one membership pass over a whole batch
(`id_member`); the decider masks its candidates with the same two.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from dualpath.errors import DeciderError

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
NO_ID = -1  # no concept: a missing result, a step that picked nothing, a row's padding


def id_rows(rows: Sequence[Sequence[int]] | np.ndarray | None, b: int, what: str) -> np.ndarray:
    """Per-stream id lists as one (b, m) int64 array, right-aligned (most recent last), padded with -1.

    An array is taken as it is (the batched decoder builds one); -1 never matches a candidate.
    """
    if rows is None or (b == 1 and not isinstance(rows, np.ndarray) and not len(rows[0])):
        return np.full((b, 0), NO_ID, np.int64)
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2 or rows.shape[0] != b:
            raise DeciderError(f"need one row of {what} per stream ({b}), got shape {rows.shape}")
        return rows.astype(np.int64, copy=False)
    rows = list(rows)
    if len(rows) != b:
        raise DeciderError(f"need one {what} per stream ({b}), got {len(rows)}")
    lengths = np.fromiter(map(len, rows), np.int64, b)
    if not lengths.any():
        return np.full((b, 0), NO_ID, np.int64)
    if all(isinstance(row, np.ndarray) and row.ndim == 1 for row in rows):
        flat = np.concatenate(rows).astype(np.int64, copy=False)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
    return padded_rows(flat, lengths)


def padded_rows(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`id_rows` of rows given end to end: `flat` ids, `lengths` (b,) of each row in turn. Written through one
    mask of the places they go: a copy per row cost a batch of 256 streams 0.1-0.2 ms a call."""
    width = int(lengths.max(initial=0))
    out = np.full((len(lengths), width), NO_ID, np.int64)
    if width:
        out[np.arange(width) >= (width - lengths)[:, None]] = flat
    return out


SMALL_MEMBER = 512  # ids × used pairs below which one broadcast comparison beats the sort and search
FEW_USED = 8  # used ids per row up to which one comparison per column beats the sort and search, any batch
FEW_USED_BATCH = 64  # the same for a batch of at least BATCH_IDS ids
BATCH_IDS = 4096


def id_member(ids: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(b, k) bool: ids[i, j] is in used[i] (`id_rows`' rows: a stream's shown ids, or a query's ids to drop;
    -1 padding matches nothing real).

    For a few used ids per row, one whole-array comparison per column of `used`: a pass over the ids each
    (a step's shown ids against 256 shortlists of 500: 0.2-0.7 ms for 4-16 columns, where the sort and
    search took 2.2-3.4 ms). Otherwise one sort and one binary search for the whole batch (rows offset
    into disjoint key ranges), instead of a (b, k, m) comparison or `np.isin`'s per-call sort and set-up
    (~60 µs for one stream); the (b, k, m) comparison only for a few pairs (a step's candidates).
    """
    b, m = ids.shape[0], used.shape[1]
    if ids.size * m <= SMALL_MEMBER:
        return (ids[:, :, None] == used[:, None, :]).any(axis=2) & (ids >= 0)
    if m <= FEW_USED or (m <= FEW_USED_BATCH and ids.size >= BATCH_IDS):
        hit = ids == used[:, :1]
        for column in range(1, m):
            hit |= ids == used[:, column : column + 1]
        return hit & (ids >= 0)
    span = int(max(ids.max(initial=0), used.max(initial=0))) + 2
    offsets = (np.arange(b, dtype=np.int64) * span)[:, None]
    keys = (np.sort(used, axis=1) + 1 + offsets).ravel()
    query = ids + 1 + offsets
    pos = np.minimum(np.searchsorted(keys, query.ravel()), keys.size - 1).reshape(query.shape)
    return (keys[pos] == query) & (ids >= 0)


def first_survivors(ids: np.ndarray, excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each result row's first `k` survivors: real results (id ≥ 0) not in its row of `excluded` (`id_rows`'
    padded rows; none when it has no columns). Returns `order` (n, w), the positions to take from each row
    (its survivors first, in their order; w = the most any row keeps), and `kept` (n, w), which of those
    are survivors (a short row's tail is not). One exclusion pass and one sort for the whole batch."""
    keep = ids >= 0
    if excluded.shape[1]:
        keep &= ~id_member(ids, excluded)
    keep &= np.cumsum(keep, axis=1) <= k
    width = int(keep.sum(axis=1).max(initial=0))
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    return order, np.take_along_axis(keep, order, axis=1)


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
    ids = np.full((n, k), NO_ID, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    depth = excluded_depth(k, exclude)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        found, found_scores = search(np.ascontiguousarray(queries[start:stop], dtype=np.float32), depth)
        order, kept = first_survivors(found, id_rows(exclude[start:stop], stop - start, "exclude list"), k)
        width = order.shape[1]
        ids[start:stop, :width] = np.where(kept, np.take_along_axis(found, order, axis=1), NO_ID)
        scores[start:stop, :width] = np.where(kept, np.take_along_axis(found_scores, order, axis=1), -np.inf)
    return ids, scores
