"""Compiled loops (numba) of a stream's decision, alone or in a batch, and of the checks both share.

A generation step of one stream decides on one shortlist, a few candidates and a dozen features each: a
few hundred operations, which as numpy calls cost several microseconds apiece in the cold caches an index
search leaves, and made its decide stage 3-4x the floor of its one pass over the shortlist. Here that work
is a few calls: q and v̂ at unit length (`unit_pair`), the masks, candidates, features, p and the pick
(`ground_stream`), and the paraphrase check (`paraphrase_rows`, which the c_max lanes' batches call too).
A batch of streams that ground on evidence runs the same loop over its streams in one call
(`ground_streams_in_turn`, then `pick_outside` for those with candidates outside their shortlists), where
the whole-array form (`gather_candidates`, `choose_grounding`) paid a few dozen calls and their
temporaries: calibration and evaluation still use that form, and the tests hold the two equal.

Each loop is the array form's arithmetic in the same order on the same float types (numpy's pairwise sum
for a row's length, `gather_candidates`' features, `SnapConfidence.linear` for p, `best_first`'s order), so
a stream decides alike alone, in a batch, and in the array form: tests/test_grounding.py holds the forms
equal, and `unit_rows` equal to numpy's normalisation bit for bit. The products over the shortlist stay
numpy's BLAS calls.

The loops compile once (about 15 s on 2 cores: `warm`, which `make setup` runs, or else the first
generation) into the package's __pycache__ (numba's cache; a user cache directory where that is
read-only) and load from there in a fraction of a second in later processes.
"""

from __future__ import annotations

import math
import time

import numba
import numpy as np

# cache: compiled once per installed copy, then loaded by each process (module docstring).
# error_model "numpy": a division by zero gives inf or NaN, as numpy's does, instead of raising.
_compiled = numba.njit(cache=True, nogil=True, error_model="numpy")


@_compiled
def _block_sum(a: np.ndarray, lo: int, n: int) -> np.float32:
    """numpy's float32 pairwise sum of a block of at most 128 (its loops_utils.h): eight running sums."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@_compiled
def _pairwise_sum(a: np.ndarray, frames: np.ndarray, left: np.ndarray) -> np.float32:
    """numpy's float32 pairwise sum of a (n,), bit for bit: blocks of up to 128 summed by `_block_sum`, longer
    runs split in two halves (the first a multiple of 8) and their sums added, as numpy recurses. Walked with
    an explicit stack (`frames` (64, 3) int64 and `left` (64,) float32 scratch): numba's cache cannot load a
    recursive function."""
    frames[0, 0], frames[0, 1], frames[0, 2] = 0, len(a), 0  # start, size, stage
    top, value = 1, np.float32(0.0)
    while top:
        f = top - 1
        start, size, stage = frames[f, 0], frames[f, 1], frames[f, 2]
        half = size // 2
        half -= half % 8
        if size <= 128:
            value = _block_sum(a, start, size)
            top -= 1
        elif stage == 0:  # the first half
            frames[f, 2] = 1
            frames[top, 0], frames[top, 1], frames[top, 2] = start, half, 0
            top += 1
        elif stage == 1:  # the first half's sum is in: the second half
            left[f], frames[f, 2] = value, 2
            frames[top, 0], frames[top, 1], frames[top, 2] = start + half, size - half, 0
            top += 1
        else:
            value = left[f] + value
            top -= 1
    return value


@_compiled
def _unit_row(x: np.ndarray, eps: float, unit: np.ndarray, squares: np.ndarray, frames: np.ndarray,
              left: np.ndarray) -> np.float32:
    """Row x (d,) at unit length into `unit`, as numpy's `x / np.maximum(np.sqrt(np.square(x).sum()), eps)`;
    returns its length. `squares` (d,) float32 scratch, `frames` and `left` `_pairwise_sum`'s."""
    for j in range(len(x)):
        squares[j] = x[j] * x[j]
    norm = np.sqrt(np.float32(0.0) + _pairwise_sum(squares, frames, left))
    floor = np.float32(eps)
    scale = floor if norm < floor else norm  # np.maximum's: a NaN length stays NaN
    for j in range(len(x)):
        unit[j] = x[j] / scale
    return norm


@_compiled
def _unit_rows(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    unit, norms = np.empty(x.shape, np.float32), np.empty(x.shape[0], np.float32)
    squares, frames, left = np.empty(x.shape[1], np.float32), np.empty((64, 3), np.int64), np.empty(64, np.float32)
    for i in range(x.shape[0]):
        norms[i] = _unit_row(x[i], eps, unit[i], squares, frames, left)
    return unit, norms


@_compiled
def _unit_pair(a: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    unit, norms = np.empty((2, len(a)), np.float32), np.empty(2, np.float32)
    squares, frames, left = np.empty(len(a), np.float32), np.empty((64, 3), np.int64), np.empty(64, np.float32)
    norms[0] = _unit_row(a, eps, unit[0], squares, frames, left)
    norms[1] = _unit_row(b, eps, unit[1], squares, frames, left)
    return unit, norms


NORM_EPS = 1e-12  # the least length a row is divided by (`normalize_rows`): a zero row stays zero


def unit_rows(x: np.ndarray, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x (n, d) at unit length (float32) and their lengths (n,): bit for bit numpy's
    `x / np.maximum(np.sqrt(np.square(x).sum(axis=-1)), eps)[:, None]` (`normalize_rows` with its eps,
    `_row_norms` with none), in one call instead of six."""
    return _unit_rows(np.asarray(x, dtype=np.float32), float(eps))


def unit_pair(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`unit_rows` of the two rows a and b (d,) each, without stacking them first: (2, d) and (2,)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"unit_pair takes two rows of one length, got {a.shape} and {b.shape}")
    return _unit_pair(a, b, float(eps))


@_compiled
def _argmax(x: np.ndarray) -> int:
    """np.argmax of a 1-d array: the first maximum, or the first NaN where there is one."""
    best = 0
    for i in range(1, len(x)):
        if math.isnan(x[best]):
            break
        if math.isnan(x[i]) or x[i] > x[best]:
            best = i
    return best


@_compiled
def _is_said(picked: np.ndarray, avoid: np.ndarray, limits: np.ndarray, unit: np.ndarray) -> bool:
    """`picked` (d,) at unit length is at `limits[j]`'s cosine or closer to avoid row j (m, d) (an inf limit:
    an empty row). Summed in float64, four running sums a row; `unit` (d,) float64 scratch."""
    d = len(picked)
    top = d - d % 4
    s0 = s1 = s2 = s3 = 0.0
    for x in range(0, top, 4):
        s0 += float(picked[x]) * float(picked[x])
        s1 += float(picked[x + 1]) * float(picked[x + 1])
        s2 += float(picked[x + 2]) * float(picked[x + 2])
        s3 += float(picked[x + 3]) * float(picked[x + 3])
    for x in range(top, d):
        s0 += float(picked[x]) * float(picked[x])
    norm = math.sqrt((s0 + s1) + (s2 + s3))
    for x in range(d):
        unit[x] = float(picked[x]) / norm
    for j in range(avoid.shape[0]):
        if limits[j] == np.inf:
            continue
        s0 = s1 = s2 = s3 = 0.0
        for x in range(0, top, 4):
            s0 += float(avoid[j, x]) * unit[x]
            s1 += float(avoid[j, x + 1]) * unit[x + 1]
            s2 += float(avoid[j, x + 2]) * unit[x + 2]
            s3 += float(avoid[j, x + 3]) * unit[x + 3]
        for x in range(top, d):
            s0 += float(avoid[j, x]) * unit[x]
        if (s0 + s1) + (s2 + s3) >= limits[j]:
            return True
    return False


@_compiled
def paraphrase_rows(picked: np.ndarray, avoid: np.ndarray, limits: np.ndarray, rows: np.ndarray,
                    out: np.ndarray) -> None:
    """`out[i]`: picked row i (n, d) is a paraphrase of one of its stream's avoid rows `avoid[rows[i]]`
    (b, m, d) at its limits `limits[rows[i]]` (b, m) (`_is_said`): a row's answer is the same in any batch,
    however it is padded. The streams are indexed here, not gathered by the caller: a batch's avoid rows
    are megabytes, and copying them for the few streams still to check cost more than the check."""
    unit = np.empty(picked.shape[1])
    for i in range(picked.shape[0]):
        out[i] = _is_said(picked[i], avoid[rows[i]], limits[rows[i]], unit)


FEW_USED_SCANNED = 8  # used ids a candidate is compared with one by one; more are sorted and searched


@_compiled
def allowed_scores(
    row: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: bool,
    table: np.ndarray,
    anchors: np.ndarray,
    tower: np.ndarray,
    lvm: np.ndarray,
    successors: np.ndarray,
) -> float:
    """One stream's shortlist masked for grounding: `tower` and `lvm` (K,) receive the raw scores where a
    candidate is allowed (a real id, not `used`, retrieval not `failed`) and -inf elsewhere; `successors` (A,)
    each anchor's successor in `table` (A', N), -1 where there is none or it is used or `blocked`. Returns
    c_max, the best allowed lvm score (NaN where one is NaN, as np.max gives; -inf for none)."""
    k, m = len(row), len(used)
    # A stream's used ids grow with its generation (its repeat window: 64 steps and their paraphrases): past a
    # few, each of K candidates is looked up in one sorted copy instead of compared with every one of them.
    look = np.sort(used) if m > FEW_USED_SCANNED else used
    c_max = -np.inf
    for x in range(k):
        ok = row[x] >= 0 and not failed
        if ok and m > FEW_USED_SCANNED:
            at = np.searchsorted(look, row[x])
            ok = not (at < m and look[at] == row[x])
        elif ok:
            for u in used:
                if u >= 0 and row[x] == u:
                    ok = False
                    break
        tower[x] = tower_raw[x] if ok else -np.inf
        lvm[x] = lvm_raw[x] if ok else -np.inf
        if not math.isnan(c_max) and (math.isnan(lvm[x]) or lvm[x] > c_max):
            c_max = float(lvm[x])
    reach = min(len(anchors), table.shape[0]) if table.shape[1] else 0
    for j in range(len(successors)):
        s = -1
        if j < reach and 0 <= anchors[j] < table.shape[1]:
            s = table[j, anchors[j]]
        if s >= 0:
            for u in used:
                if u >= 0 and u == s:
                    s = -1
                    break
        if s >= 0:
            for u in blocked:
                if u == s:
                    s = -1
                    break
        successors[j] = s
    return c_max


@_compiled
def one_stream_candidates(
    row: np.ndarray,
    tower: np.ndarray,
    lvm: np.ndarray,
    successors: np.ndarray,
    cand: np.ndarray,
    at_row: np.ndarray,
    tower_score: np.ndarray,
    cos: np.ndarray,
) -> tuple[float, float, float, int, int]:
    """`gather_candidates`' candidates for one stream: the tower's and the LVM's favourites among the allowed
    (-inf: not) scores `tower` and `lvm` (K,), then the `successors` (A,; -1: none). Fills `cand` (2 + A) with
    their ids (-1: none), `at_row` with each one's place in the shortlist (-1: none, or a successor outside
    it) and `tower_score` / `cos` with its scores read there (0 for no candidate; a successor outside the
    shortlist is left at 0 for its caller to score). Returns the best tower score, the runner-up, the best
    lvm score (-inf where missing), and the two favourites' ids."""
    k = len(row)
    t_at = _argmax(tower) if k else 0
    t_top = float(tower[t_at]) if k else -np.inf
    t_second = -np.inf
    if k > 1 and math.isfinite(t_top):  # no NaN in the row: argmax would have stopped at it
        for x in range(k):
            if x != t_at and tower[x] > t_second:
                t_second = float(tower[x])
    l_at = _argmax(lvm) if k else 0
    l_top = float(lvm[l_at]) if k else -np.inf
    tower_id = row[t_at] if math.isfinite(t_top) else -1
    lvm_id = row[l_at] if math.isfinite(l_top) else -1
    cand[0], cand[1] = tower_id, lvm_id
    at_row[0] = t_at if tower_id >= 0 else -1
    at_row[1] = l_at if lvm_id >= 0 else -1
    for j in range(len(successors)):
        s = successors[j]
        cand[2 + j] = s if s >= 0 else -1
        at_row[2 + j] = -1
        if s >= 0:
            for x in range(k):
                if row[x] == s and math.isfinite(lvm[x]):
                    at_row[2 + j] = x
                    break
    for j in range(len(cand)):
        listed = max(at_row[j], 0)
        tower_score[j] = float(tower[listed]) if k and cand[j] >= 0 else 0.0
        cos[j] = float(lvm[listed]) if k and cand[j] >= 0 else 0.0
        if at_row[j] < 0:
            tower_score[j] = cos[j] = 0.0
    return t_top, t_second, l_top, tower_id, lvm_id


@_compiled
def _pick_into(
    cand: np.ndarray,
    successors: np.ndarray,
    tower_score: np.ndarray,
    cos: np.ndarray,
    tops: tuple[float, float, float, int, int],
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    coefficients: np.ndarray,
    offset: float,
    exact_anchor: float,
    rows: np.ndarray,
    at_row: np.ndarray,
    fresh: np.ndarray,
    from_fresh: np.ndarray,
    avoid: np.ndarray,
    limits: np.ndarray,
    chosen_features: np.ndarray,
    vector: np.ndarray,
    features: np.ndarray,
    p: np.ndarray,
    taken: np.ndarray,
    unit: np.ndarray,
) -> tuple[int, int, int, float]:
    """`choose_grounding` for one stream: each candidate's FEATURES and p, as `gather_candidates` and
    `SnapConfidence.linear` give them (`tops`: `one_stream_candidates`' favourites), and the most probable
    one (p rounded to float32, the first of equal ones first: `best_first`'s order) that is no paraphrase of
    the stream's `avoid` rows at their `limits` (`_is_said`; none: an empty `avoid`).

    A candidate's vector is shortlist row `rows[at_row[j]]` (its place there, 0 for none), or `fresh[j]`
    where `from_fresh[j]`. Returns (the chosen candidate's place, -1 for none; its id; how many more probable
    ones it passed over; its p) and writes its features to `chosen_features` (F,), zeros for none, and its
    vector, or candidate 0's where none, to `vector` (d,). `features` (m, F), `p` (m,), `taken` (m,) bool and `unit`
    (d,) float64 are scratch (a batch's loop allocates them once)."""
    t_top, t_second, l_top, tower_id, lvm_id = tops
    m = len(cand)
    t_ref, l_ref = t_top, l_top
    if not math.isfinite(t_top):  # with no shortlist favourite, gaps are to the best candidate
        t_ref = -np.inf
        for j in range(m):
            if cand[j] >= 0 and tower_score[j] > t_ref:
                t_ref = tower_score[j]
        if t_ref == -np.inf:
            t_ref = 0.0
    if not math.isfinite(l_top):
        l_ref = -np.inf
        for j in range(m):
            if cand[j] >= 0 and cos[j] > l_ref:
                l_ref = cos[j]
        if l_ref == -np.inf:
            l_ref = 0.0
    margin = t_top - t_second if math.isfinite(t_second) and math.isfinite(t_top) else 1.0
    a = len(successors)
    for j in range(m):
        c = cand[j]
        features[j, :] = 0.0
        if c < 0:
            p[j] = -np.inf
            continue
        votes, first, which, best = 0, -1, 0, -np.inf
        for i in range(a):  # the anchors it continues; the best of them (the first of equal ones)
            value = 0.0
            if successors[i] == c:
                votes += 1
                if first < 0:
                    first = i
                value = anchor_cos[i]
            if value > best:
                which, best = i, value
        best_anchor = lead = 0.0
        if votes:
            best_anchor = max(best, 0.0)
            if successors[which] == c and anchor_cos[which] < exact_anchor:
                lead = anchor_margin[which]
        row = features[j]
        row[0], row[1], row[2] = tower_score[j], tower_score[j] - t_ref, margin
        row[3], row[4] = cos[j], cos[j] - l_ref
        row[5], row[6] = 1.0 if c == tower_id else 0.0, 1.0 if c == lvm_id else 0.0
        row[7], row[8] = 1.0 if votes else 0.0, best_anchor
        row[9] = 1.0 if best_anchor >= exact_anchor else 0.0
        row[10] = float(first) if votes else 0.0
        row[11], row[12] = lead, float(votes)
        z = 0.0
        for f in range(len(coefficients)):  # w / scale · x in feature order, then the offset (SnapConfidence.linear)
            z += row[f] * coefficients[f]
        z += offset
        z = -40.0 if z < -40.0 else z
        z = 40.0 if z > 40.0 else z
        p[j] = 1.0 / (1.0 + math.exp(-z))
    passed = 0
    taken[:m] = False
    while True:
        at, top = -1, np.float32(-np.inf)
        for j in range(m):
            value = np.float32(p[j])
            if not taken[j] and math.isfinite(value) and (at < 0 or value > top):
                at, top = j, value
        if at < 0:
            break
        taken[at] = True
        picked = fresh[at] if from_fresh[at] else rows[max(at_row[at], 0)]
        if not _is_said(picked, avoid, limits, unit):
            vector[:] = picked
            chosen_features[:] = features[at]
            return at, cand[at], passed, p[at]
        passed += 1
    vector[:] = fresh[0] if from_fresh[0] else rows[max(at_row[0], 0)]
    chosen_features[:] = 0.0
    return -1, -1, passed, 0.0


@_compiled
def _pick_scratch(m: int, f: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_pick_into`'s scratch for m candidates of f features in d dimensions (a batch's loop makes it once)."""
    return np.empty((m, f)), np.empty(m), np.empty(m, np.bool_), np.empty(d)


@_compiled
def _candidates_into(
    row: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: bool,
    table: np.ndarray,
    anchor_ids: np.ndarray,
    tower: np.ndarray,
    lvm: np.ndarray,
    successors: np.ndarray,
    cand: np.ndarray,
    at_row: np.ndarray,
    tower_score: np.ndarray,
    cos: np.ndarray,
) -> tuple[float, tuple[float, float, float, int, int]]:
    """`allowed_scores` then `one_stream_candidates`, into the arrays given (`tower` / `lvm` (K,) float32
    scratch): (c_max, the favourites' (t_top, t_second, l_top, tower_id, lvm_id))."""
    c_max = allowed_scores(row, tower_raw, lvm_raw, used, blocked, failed, table, anchor_ids, tower, lvm, successors)
    return c_max, one_stream_candidates(row, tower, lvm, successors, cand, at_row, tower_score, cos)


@_compiled
def stream_candidates(
    row: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: bool,
    table: np.ndarray,
    anchor_ids: np.ndarray,
):  # a tuple of seven: see the docstring
    """`allowed_scores` then `one_stream_candidates` on their own arrays: (c_max, successors (A,), candidate ids
    (2 + A,), their places in the shortlist, their tower scores and cosines, and the favourites'
    (t_top, t_second, l_top, tower_id, lvm_id))."""
    k, a = len(row), len(anchor_ids)
    successors, cand, at_row = np.empty(a, np.int64), np.empty(2 + a, np.int64), np.empty(2 + a, np.int64)
    tower_score, cos = np.empty(2 + a), np.empty(2 + a)
    c_max, tops = _candidates_into(row, tower_raw, lvm_raw, used, blocked, failed, table, anchor_ids,
                                   np.empty(k, np.float32), np.empty(k, np.float32), successors, cand, at_row,
                                   tower_score, cos)
    return c_max, successors, cand, at_row, tower_score, cos, tops


@_compiled
def _dot32(x: np.ndarray, y: np.ndarray) -> np.float32:
    """x · y of two float32 rows, summed in float32 by eight running sums (as `_block_sum` sums): one fixed
    order wherever a candidate read from the bank is scored, alone, in a batch or in the array form."""
    n = len(x)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    i = 0
    while i + 8 <= n:
        s0 += x[i] * y[i]
        s1 += x[i + 1] * y[i + 1]
        s2 += x[i + 2] * y[i + 2]
        s3 += x[i + 3] * y[i + 3]
        s4 += x[i + 4] * y[i + 4]
        s5 += x[i + 5] * y[i + 5]
        s6 += x[i + 6] * y[i + 6]
        s7 += x[i + 7] * y[i + 7]
        i += 8
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while i < n:
        total += x[i] * y[i]
        i += 1
    return total


@_compiled
def _score_read(fresh: np.ndarray, q: np.ndarray, v: np.ndarray, outside: np.ndarray, tower_score: np.ndarray,
                cos: np.ndarray) -> None:
    """Candidates `outside` their shortlist scored from their bank rows `fresh` (m, d) against the unit q and v̂
    (d,): `tower_score` and `cos` (m,) receive q·n and v̂·n there (`_dot32`)."""
    for j in range(len(outside)):
        if outside[j]:
            tower_score[j] = float(_dot32(fresh[j], q))
            cos[j] = float(_dot32(fresh[j], v))


@_compiled
def score_outside(fresh: np.ndarray, queries: np.ndarray, v_hat: np.ndarray, outside: np.ndarray,
                  tower_score: np.ndarray, cos: np.ndarray) -> None:
    """`_score_read` on each of b streams: bank rows `fresh` (b, m, d), unit `queries` and `v_hat` (b, d), the
    mask `outside` and the scores `tower_score` / `cos` (b, m) written where it is set (`gather_candidates`)."""
    for i in range(fresh.shape[0]):
        _score_read(fresh[i], queries[i], v_hat[i], outside[i], tower_score[i], cos[i])


@_compiled
def _to_read(k: int, cand: np.ndarray, at_row: np.ndarray, wanted: np.ndarray, outside: np.ndarray,
             from_fresh: np.ndarray) -> bool:
    """Which candidates a stream reads from the bank: `outside` (m,) marks a real candidate that is no shortlist
    row, `from_fresh` a candidate whose vector is its bank row (every one where the shortlist is empty, K = 0),
    and `wanted` (m,) the bank id each of those is read at (the candidate's; 0 for no candidate, a row never
    picked) and -1 for the rest, which need no read. Returns whether any candidate is outside (a successor, or
    every real one where K = 0)."""
    any_outside = False
    for j in range(len(cand)):
        outside[j] = at_row[j] < 0 <= cand[j]
        from_fresh[j] = outside[j] or k == 0
        wanted[j] = max(cand[j], 0) if from_fresh[j] else -1
        any_outside = any_outside or outside[j]
    return any_outside


@_compiled
def ground_stream(
    row: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: bool,
    table: np.ndarray,
    anchor_ids: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    coefficients: np.ndarray,
    offset: float,
    exact_anchor: float,
    rows: np.ndarray,
    avoid: np.ndarray,
    limits: np.ndarray,
    features: np.ndarray,
    vector: np.ndarray,
    wanted: np.ndarray,
) -> tuple[float, int, int, int, float]:
    """One stream's grounding in one call where every candidate is a shortlist row (`rows` (K, d)):
    `stream_candidates` and `_pick_into`. Returns (c_max, the chosen candidate's place among the candidates
    (-1: none), its id, how many it passed over, its p) and writes its features to `features` (F,) and its
    vector to `vector` (d,). The place is -2 where a candidate lies outside the shortlist (a successor, or every
    one when the shortlist is empty): `wanted` (2 + A,) then holds the bank ids to read (`_to_read`), and
    `ground_stream_read` picks once they are read."""
    c_max, successors, cand, at_row, tower_score, cos, tops = stream_candidates(
        row, tower_raw, lvm_raw, used, blocked, failed, table, anchor_ids
    )
    m = len(cand)
    outside, from_fresh = np.empty(m, np.bool_), np.empty(m, np.bool_)
    if _to_read(len(row), cand, at_row, wanted, outside, from_fresh) or len(row) == 0:
        return c_max, -2, -1, 0, 0.0
    scratch = _pick_scratch(m, len(coefficients), len(vector))
    chosen, chosen_id, passed, p = _pick_into(cand, successors, tower_score, cos, tops, anchor_cos, anchor_margin,
                                              coefficients, offset, exact_anchor, rows, at_row, rows, from_fresh, avoid,
                                              limits, features, vector, *scratch)
    return c_max, chosen, chosen_id, passed, p


@_compiled
def ground_stream_read(
    row: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: bool,
    table: np.ndarray,
    anchor_ids: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    coefficients: np.ndarray,
    offset: float,
    exact_anchor: float,
    rows: np.ndarray,
    fresh: np.ndarray,
    q: np.ndarray,
    v: np.ndarray,
    avoid: np.ndarray,
    limits: np.ndarray,
    features: np.ndarray,
    vector: np.ndarray,
) -> tuple[int, int, int, float]:
    """`ground_stream`'s pick for a stream it left at place -2, once the rows it asked for are read: `fresh`
    (2 + A, d), bank row `wanted[j]` at j (any values where it is -1). The candidates outside the shortlist are
    scored against the unit q and v̂ (d,) (`_score_read`); returns (place, id, passed, p) as `ground_stream`
    does."""
    _, successors, cand, at_row, tower_score, cos, tops = stream_candidates(
        row, tower_raw, lvm_raw, used, blocked, failed, table, anchor_ids
    )
    m = len(cand)
    wanted, outside, from_fresh = np.empty(m, np.int64), np.empty(m, np.bool_), np.empty(m, np.bool_)
    _to_read(len(row), cand, at_row, wanted, outside, from_fresh)
    _score_read(fresh, q, v, outside, tower_score, cos)
    return _pick_into(cand, successors, tower_score, cos, tops, anchor_cos, anchor_margin, coefficients, offset,
                      exact_anchor, rows if len(row) else fresh, at_row, fresh, from_fresh, avoid, limits, features,
                      vector, *_pick_scratch(m, len(coefficients), len(vector)))


@_compiled
def ground_streams_in_turn(
    ids: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: np.ndarray,
    table: np.ndarray,
    anchor_ids: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    coefficients: np.ndarray,
    offset: float,
    exact_anchor: float,
    vectors: np.ndarray,
    avoid: np.ndarray,
    limits: np.ndarray,
    c_max: np.ndarray,
    place: np.ndarray,
    chosen: np.ndarray,
    passed: np.ndarray,
    p: np.ndarray,
    features: np.ndarray,
    chosen_vectors: np.ndarray,
    successors: np.ndarray,
    cand: np.ndarray,
    at_row: np.ndarray,
    tower_score: np.ndarray,
    cos: np.ndarray,
    tops: np.ndarray,
    top_ids: np.ndarray,
    wanted: np.ndarray,
) -> None:
    """`ground_stream` on each of b streams, row i of every argument (ids (b, K), used / blocked (b, m)
    padded with -1, anchors (b, A), vectors (b, K, d), avoid (b, m, d) and limits (b, m) padded with inf);
    its results go to row i of the outputs (b,) and `features` (b, F), `chosen_vectors` (b, d). A stream with
    a candidate outside its shortlist gets place -2 and the bank ids to read in row i of `wanted` (b, 2 + A),
    and its candidates stay in row i of `successors` (b, A), `cand`, `at_row`, `tower_score`, `cos` (b, 2 + A)
    and its favourites in `tops` (b, 3) and `top_ids` (b, 2), for `pick_outside` once the rows are read.
    A batch grounds as its streams do alone, at a few microseconds a stream instead of the array form's few
    dozen whole-batch calls and their temporaries; scratch is allocated once for the batch."""
    b, k = ids.shape
    m = cand.shape[1]
    tower, lvm = np.empty(k, np.float32), np.empty(k, np.float32)
    scratch = _pick_scratch(m, len(coefficients), vectors.shape[2])
    outside, from_fresh = np.empty(m, np.bool_), np.empty(m, np.bool_)
    for i in range(b):
        c, t = _candidates_into(ids[i], tower_raw[i], lvm_raw[i], used[i], blocked[i], failed[i], table,
                                anchor_ids[i], tower, lvm, successors[i], cand[i], at_row[i], tower_score[i], cos[i])
        c_max[i] = c
        tops[i, 0], tops[i, 1], tops[i, 2], top_ids[i, 0], top_ids[i, 1] = t
        if _to_read(k, cand[i], at_row[i], wanted[i], outside, from_fresh) or k == 0:
            place[i], chosen[i], passed[i], p[i] = -2, -1, 0, 0.0
            continue
        at, chosen_id, over, prob = _pick_into(
            cand[i], successors[i], tower_score[i], cos[i], t, anchor_cos[i], anchor_margin[i], coefficients, offset,
            exact_anchor, vectors[i], at_row[i], vectors[i], from_fresh, avoid[i], limits[i], features[i],
            chosen_vectors[i], *scratch,
        )
        place[i], chosen[i], passed[i], p[i] = at, chosen_id, over, prob


@_compiled
def pick_outside(
    streams: np.ndarray,
    fresh: np.ndarray,
    queries: np.ndarray,
    v_hat: np.ndarray,
    cand: np.ndarray,
    successors: np.ndarray,
    tower_score: np.ndarray,
    cos: np.ndarray,
    tops: np.ndarray,
    top_ids: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    coefficients: np.ndarray,
    offset: float,
    exact_anchor: float,
    vectors: np.ndarray,
    at_row: np.ndarray,
    avoid: np.ndarray,
    limits: np.ndarray,
    place: np.ndarray,
    chosen: np.ndarray,
    passed: np.ndarray,
    p: np.ndarray,
    features: np.ndarray,
    chosen_vectors: np.ndarray,
) -> None:
    """`ground_stream_read` for the batch's streams `streams` (n,) that `ground_streams_in_turn` left at place
    -2: row j of `fresh` (n, 2 + A, d) holds the rows it asked for of stream `streams[j]` (any values elsewhere),
    whose candidates are scored against its unit q and v̂ (rows of `queries`, `v_hat` (b, d)) and picked. Every
    other argument is the batch's, as `ground_streams_in_turn` left it; the results go to the stream's rows."""
    k, m = vectors.shape[1], cand.shape[1]
    scratch = _pick_scratch(m, len(coefficients), fresh.shape[2])
    wanted, outside, from_fresh = np.empty(m, np.int64), np.empty(m, np.bool_), np.empty(m, np.bool_)
    for j in range(len(streams)):
        i = streams[j]
        _to_read(k, cand[i], at_row[i], wanted, outside, from_fresh)
        _score_read(fresh[j], queries[i], v_hat[i], outside, tower_score[i], cos[i])
        at, chosen_id, over, prob = _pick_into(
            cand[i], successors[i], tower_score[i], cos[i],
            (tops[i, 0], tops[i, 1], tops[i, 2], top_ids[i, 0], top_ids[i, 1]), anchor_cos[i], anchor_margin[i],
            coefficients, offset, exact_anchor, vectors[i] if k else fresh[j], at_row[i], fresh[j], from_fresh,
            avoid[i], limits[i], features[i], chosen_vectors[i], *scratch,
        )
        place[i], chosen[i], passed[i], p[i] = at, chosen_id, over, prob


# The loops Python calls (the rest are compiled into them).
ENTRY_POINTS = (_unit_pair, _unit_rows, ground_stream, ground_stream_read, paraphrase_rows, ground_streams_in_turn,
                pick_outside, score_outside)


def warm() -> float:
    """Compile the loops, or load them from numba's cache, for the types a generation step passes them
    (float32 vectors and scores, float64 said rows and limits, int64 ids, C order); returns the seconds it
    took. `make setup` runs it once after installing, so that no generation pays the first compile."""
    start = time.perf_counter()
    d, k = 8, 4
    rows = np.eye(k, d, dtype=np.float32)
    ids, scores, nothing = np.arange(k, dtype=np.int64), np.ones(k, np.float32), np.zeros(0, np.int64)
    table = np.full((2, k), -1, np.int64)
    anchor_ids, anchor_cos, anchor_margin = np.array([0, -1], np.int64), np.ones(2), np.zeros(2)
    coefficients, said, limits = np.zeros(13), np.zeros((1, d)), np.full(1, 0.9)
    features, vector = np.empty(13), np.empty(d, np.float32)
    unit_pair(rows[0], rows[1], NORM_EPS)
    unit_rows(rows[:1], NORM_EPS)
    m = 2 + len(anchor_ids)
    wanted, fresh = np.empty(m, np.int64), rows[:m]
    ground_stream(ids, scores, scores, nothing, nothing, False, table, anchor_ids, anchor_cos, anchor_margin,
                  coefficients, 0.0, 0.995, rows, said, limits, features, vector, wanted)
    ground_stream_read(ids, scores, scores, nothing, nothing, False, table, anchor_ids, anchor_cos, anchor_margin,
                       coefficients, 0.0, 0.995, rows, fresh, rows[0], rows[1], said, limits, features, vector)
    batch_ids, batch_scores, batch_rows = ids[None], scores[None], rows[None]
    padded, failed, streams = np.full((1, 1), -1, np.int64), np.zeros(1, np.bool_), np.zeros(1, np.int64)
    batch_anchors = (anchor_ids[None], anchor_cos[None], anchor_margin[None])
    outputs = (np.empty(1, np.int64), np.empty(1, np.int64), np.empty(1, np.int64), np.empty(1), features[None],
               vector[None])
    cand, at_row, scored = np.full((1, m), -1, np.int64), np.full((1, m), -1, np.int64), np.zeros((1, m))
    kept = (np.full((1, 2), -1, np.int64), cand, at_row, scored, scored.copy(), np.zeros((1, 3)),
            np.zeros((1, 2), np.int64))
    for avoid, bounds in ((said[None], limits[None]), (np.zeros((2, 3, d))[:, :2], np.ones((2, 3))[:, :2])):
        # a batch's avoid rows as they are kept (C order) and as a step reads them before its rings fill (a
        # slice of them, in no single order)
        paraphrase_rows(rows[:1], avoid, bounds, np.zeros(1, np.int64), np.empty(1, np.bool_))
        ground_streams_in_turn(batch_ids, batch_scores, batch_scores, padded, padded, failed, table, *batch_anchors,
                               coefficients, 0.0, 0.995, batch_rows, avoid, bounds, np.empty(1), *outputs, *kept,
                               wanted[None])
        pick_outside(streams, fresh[None], rows[:1], rows[1:2], cand, kept[0], *kept[3:], anchor_cos[None],
                     anchor_margin[None], coefficients, 0.0, 0.995, batch_rows, at_row, avoid, bounds, *outputs)
    score_outside(fresh[None], rows[:1], rows[1:2], np.zeros((1, m), np.bool_), scored, scored.copy())
    return time.perf_counter() - start
