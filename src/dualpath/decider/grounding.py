"""Evidence that the bank holds the next concept, and the SNAP confidence fitted on it.

The c_max rule grounds by closeness to v̂ alone. Here each step weighs a few candidates on all the
evidence at hand and asks one question of each: how likely is it to be the true next concept?

Candidates of a step (at most 2 + A, duplicates allowed):
  tower         the retriever's best allowed shortlist candidate (highest q·n)
  lvm           the allowed shortlist candidate nearest v̂ (the c_max rule's n*)
  successor j   the concept that follows, j + 1 places on in its own document, the bank concept that
                the context's (j+1)-th newest concept matched (its *anchor*): the continuation a kNN-LM
                or RETRO reads off its neighbours. A context that is bank text anchors at cosine 1.

Features of a candidate (`FEATURES`), all cosines or flags, so one model fits any unit-norm space:
  tower_score / tower_gap / tower_margin   q·n, its gap to the best q·n, the best's margin over the 2nd
  lvm_cos / lvm_gap                        cos(v̂, n) and its gap to c_max
  tower_top / lvm_top                      the candidate is the tower's / the LVM's first choice
  successor / anchor_cos / anchor_exact / anchor_age
                                           it continues an anchor; the anchor's match cosine; the
                                           match is exact (≥ EXACT_ANCHOR); which context concept
  anchor_margin                            a non-exact anchor's lead over the context concept's
                                           runner-up match (0 for an exact one): a sentence said in
                                           other words matches its original well ahead of the rest,
                                           a sentence the bank does not hold matches many about equally
  anchor_votes                             how many anchors it continues: two when the context's newest
                                           concepts match one document's consecutive concepts

`SnapConfidence` is a logistic regression over them, p = P(candidate is the true next concept), fitted
at calibration on held-out documents (pipeline/calibrate.py), both with their documents in the bank and
kept out of it. A step grounds on its most probable allowed candidate; lanes set thresholds on p.

Plain numpy in and out; no index, model or bank here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from dualpath.decider.kernels import (
    ground_stream,
    ground_stream_read,
    ground_streams_in_turn,
    pick_outside,
    score_outside,
)
from dualpath.errors import ConfigError

FEATURES = (
    "tower_score", "tower_gap", "tower_margin", "lvm_cos", "lvm_gap", "tower_top", "lvm_top",
    "successor", "anchor_cos", "anchor_exact", "anchor_age", "anchor_margin", "anchor_votes",
)
SOURCES = ("none", "tower", "lvm", "successor")  # candidate_source codes (0: no candidate)
ANCHORS = 2  # context concepts (newest first) whose bank matches propose their successors
EXACT_ANCHOR = 0.995  # a context concept this close to a bank concept is that concept
L2 = 1e-4  # ridge on the standardised weights (times n): keeps rare flags from running off to ±inf


class Evidence(Mapping[str, float]):
    """A candidate's FEATURES by name, over its row of values (a list of F floats, which it keeps): what a
    grounded step's record carries, read as a dict is (`DecisionRecord.to_dict` writes one, to 4 places). A
    batch makes one a stream, and a dict each cost the 256-stream step more than the rest of its records."""

    __slots__ = ("_values",)

    def __init__(self, values: list[float]) -> None:
        if len(values) != len(FEATURES):
            raise ValueError(f"evidence needs {len(FEATURES)} values, one per feature, got {len(values)}")
        self._values = values

    def __getitem__(self, name: str) -> float:
        return self._values[_COLUMN[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(FEATURES)

    def __len__(self) -> int:
        return len(FEATURES)

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass(frozen=True)
class Candidates:
    """A step's candidates for b streams: ids (b, m) int64 (-1: none), vectors (b, m, d) float32,
    features (b, m, len(FEATURES)) float64 and sources (b, m) int8 codes into SOURCES."""

    ids: np.ndarray
    vectors: np.ndarray
    features: np.ndarray
    sources: np.ndarray


@dataclass(frozen=True)
class Grounding:
    """Per stream, the candidate a step grounds on: id (-1: none), unit vector, p, source code, features,
    and how many more probable candidates it passed over as paraphrases of what the stream said (None:
    none were checked)."""

    ids: np.ndarray
    vectors: np.ndarray
    confidence: np.ndarray
    sources: np.ndarray
    features: np.ndarray
    passed: np.ndarray | None = None

    def rows(self, rows: list[int] | np.ndarray) -> Grounding:
        """The groundings of streams `rows`, in that order."""
        return Grounding(*(np.asarray(a)[rows] for a in (self.ids, self.vectors, self.confidence, self.sources,
                                                         self.features)),
                         passed=None if self.passed is None else np.asarray(self.passed)[rows])

    def evidence(self, i: int) -> Evidence | None:
        """Stream i's features by name (None when it has no candidate): what its record carries (telemetry
        and the service show them to 4 places, `DecisionRecord.to_dict`)."""
        if self.ids[i] < 0:
            return None
        return Evidence(self.features[i].tolist())


@dataclass(slots=True)
class StreamGrounding:
    """One stream's grounding, as `Grounding` holds each row of a batch's: the candidate's id (-1: none), its
    float32 vector (d,), p, source code, features (F,) and how many more probable ones it passed over."""

    id: int
    vector: np.ndarray
    confidence: float
    source: int
    features: np.ndarray
    passed: int

    @classmethod
    def of(cls, grounding: Grounding, i: int) -> StreamGrounding:
        """Stream i's row of a batch's grounding."""
        return cls(int(grounding.ids[i]), grounding.vectors[i], float(grounding.confidence[i]),
                   int(grounding.sources[i]), grounding.features[i],
                   0 if grounding.passed is None else int(grounding.passed[i]))

    def evidence(self) -> Evidence | None:
        """The features by name, as `Grounding.evidence` gives a batch's row (None when there is no candidate)."""
        if self.id < 0:
            return None
        return Evidence(self.features.tolist())


def successor_table(documents: Mapping[str, np.ndarray], size: int, reach: int = ANCHORS) -> np.ndarray:
    """(reach, size) int64: row j holds, for every concept id, the concept j + 1 places after it in its
    document (-1 past the document's end or for ids no document holds)."""
    table = np.full((reach, size), -1, dtype=np.int64)
    for ids in documents.values():
        ids = np.asarray(ids, dtype=np.int64)
        for j in range(reach):
            if len(ids) > j + 1:
                table[j, ids[: -(j + 1)]] = ids[j + 1 :]
    return table


def successor_ids(table: np.ndarray, anchor_ids: np.ndarray) -> np.ndarray:
    """(b, A) successors of (b, A) anchors: column j is j + 1 places on (-1 where there is none)."""
    reach = min(anchor_ids.shape[1], table.shape[0]) if table.shape[1] else 0
    out = np.full(anchor_ids.shape, -1, dtype=np.int64)
    at = anchor_ids[:, :reach]
    ok = (at >= 0) & (at < table.shape[1])
    out[:, :reach] = np.where(ok, table[np.arange(reach), np.where(ok, at, 0)], -1)
    return out


_COLUMN = {name: j for j, name in enumerate(FEATURES)}
# pick(scores (b, m), vectors (b, m, d)) -> (each row's chosen index, -1 for none; how many it passed over)
Pick = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _top_two(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: index of the best score, the best and the second best (-inf where missing)."""
    b, k = scores.shape
    if k == 0:
        empty = np.full(b, -np.inf)
        return np.zeros(b, np.int64), empty, empty
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(b), best].astype(np.float64)
    if k == 1:
        return best, top, np.full(b, -np.inf)
    rest = scores.copy()
    rest[np.arange(b), best] = -np.inf
    return best, top, rest.max(axis=1).astype(np.float64)


def gather_candidates(
    ids: np.ndarray,
    tower_scores: np.ndarray,
    lvm_cos: np.ndarray,
    successors: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    successor_allowed: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    v_hat: np.ndarray,
    shortlist_vectors: np.ndarray | None = None,
) -> Candidates:
    """The candidates of b streams and their features.

    `ids` (b, k) shortlist ids; `tower_scores` / `lvm_cos` (b, k) q·n and cos(v̂, n) with -inf where
    a candidate is not allowed (padding, shown, the context); `successors` (b, A) successor ids of the
    anchors (`successor_ids`), `anchor_cos` (b, A) the anchors' match cosines, `anchor_margin` (b, A)
    their leads over the runner-up matches (`find_anchors`; 0 where unknown), `successor_allowed` (b, A);
    `vectors_of(ids)` unit float32 vectors of bank ids (any shape); `queries` and `v_hat` (b, d) unit rows;
    `shortlist_vectors` (b, k, d), when the caller holds them, the rows of `ids`.

    One pass over each shortlist: a candidate in it (the two favourites, and a successor that is also a
    shortlist row) takes its scores from `tower_scores` and `lvm_cos` and its vector from
    `shortlist_vectors` (or `vectors_of`); only a successor outside the shortlist is read from the bank
    and scored here. A step calls this for one stream as often as for many, so it is written as few
    whole-array calls (each costs microseconds whatever its size), not as a loop over streams or candidates.
    """
    b, k = ids.shape
    a = successors.shape[1]
    rows = np.arange(b)
    t_best, t_top, t_second = _top_two(tower_scores)
    l_best = np.argmax(lvm_cos, axis=1) if k else np.zeros(b, np.int64)
    l_top = lvm_cos[rows, l_best].astype(np.float64) if k else np.full(b, -np.inf)
    cand = np.empty((b, 2 + a), np.int64)
    cand[:, 0] = np.where(np.isfinite(t_top), ids[rows, t_best], -1) if k else -1
    cand[:, 1] = np.where(np.isfinite(l_top), ids[rows, l_best], -1) if k else -1
    succ = np.where(successor_allowed & (successors >= 0), successors, -1)
    cand[:, 2:] = succ
    tower_id, lvm_id = cand[:, :1], cand[:, 1:2]
    kinds = np.array([SOURCES.index("tower"), SOURCES.index("lvm")] + [SOURCES.index("successor")] * a, np.int8)
    sources = np.where(cand >= 0, kinds, np.int8(0)).astype(np.int8, copy=False)
    # Where each candidate sits in its shortlist (-1: a successor outside it, or no candidate).
    at_row = np.full((b, 2 + a), -1, np.int64)
    if k:
        at_row[:, 0], at_row[:, 1] = t_best, l_best
        hit = (succ[:, :, None] == ids[:, None, :]) & (succ[:, :, None] >= 0) & np.isfinite(lvm_cos)[:, None, :]
        at_row[:, 2:] = np.where(hit.any(axis=2), np.argmax(hit, axis=2), -1)
    at_row[cand < 0] = -1
    inside = at_row >= 0
    listed = np.maximum(at_row, 0)
    tower_score = np.take_along_axis(tower_scores, listed, 1).astype(np.float64) if k else np.zeros((b, 2 + a))
    cos = np.take_along_axis(lvm_cos, listed, 1).astype(np.float64) if k else np.zeros((b, 2 + a))
    outside = ~inside & (cand >= 0)
    if shortlist_vectors is None or not k:  # every candidate read once, from the bank
        vectors = fresh = np.asarray(vectors_of(np.maximum(cand, 0)), dtype=np.float32)
    else:
        vectors = np.asarray(shortlist_vectors[rows[:, None], listed], dtype=np.float32)
        fresh = np.asarray(vectors_of(np.where(outside, cand, 0)), dtype=np.float32) if outside.any() else vectors
    if outside.any():  # successors outside the shortlist: scored here, as the compiled forms score them
        vectors = np.where(outside[:, :, None], fresh, vectors)
        tower_score, cos = np.ascontiguousarray(tower_score), np.ascontiguousarray(cos)
        score_outside(np.ascontiguousarray(fresh, np.float32), np.ascontiguousarray(queries, np.float32),
                      np.ascontiguousarray(v_hat, np.float32), outside, tower_score, cos)
    real = cand >= 0
    tower_score, cos = np.where(real, tower_score, 0.0), np.where(real, cos, 0.0)
    # With no shortlist favourite, gaps are to the best candidate (a successor).
    t_best_real = np.where(real, tower_score, -np.inf).max(axis=1)
    l_best_real = np.where(real, cos, -np.inf).max(axis=1)
    t_ref = np.where(np.isfinite(t_top), t_top, np.where(np.isfinite(t_best_real), t_best_real, 0.0))
    l_ref = np.where(np.isfinite(l_top), l_top, np.where(np.isfinite(l_best_real), l_best_real, 0.0))
    # Successor flags by id, so a shortlist candidate that is also a successor carries that evidence too.
    same = (cand[:, :, None] == succ[:, None, :]) & (succ[:, None, :] >= 0)  # (b, m, A)
    anchor = np.where(same, anchor_cos[:, None, :], 0.0)
    which = np.argmax(anchor, axis=2)  # the best-matching anchor each candidate continues
    at = (rows[:, None], np.arange(2 + a)[None, :], which)
    continues = same.any(axis=2)
    # The margin of the anchor behind the best match; an exact anchor's is 0, as the flag says all.
    lead = np.where(anchor_cos >= EXACT_ANCHOR, 0.0, anchor_margin)
    features = np.empty((b, 2 + a, len(FEATURES)))
    features[:, :, _COLUMN["tower_score"]] = tower_score
    features[:, :, _COLUMN["tower_gap"]] = tower_score - t_ref[:, None]
    two = np.isfinite(t_second) & np.isfinite(t_top)  # rows with fewer than two: no margin to speak of
    features[:, :, _COLUMN["tower_margin"]] = np.where(two, t_top - np.where(two, t_second, 0.0), 1.0)[:, None]
    features[:, :, _COLUMN["lvm_cos"]] = cos
    features[:, :, _COLUMN["lvm_gap"]] = cos - l_ref[:, None]
    features[:, :, _COLUMN["tower_top"]] = (cand == tower_id) & (tower_id >= 0)
    features[:, :, _COLUMN["lvm_top"]] = (cand == lvm_id) & (lvm_id >= 0)
    features[:, :, _COLUMN["successor"]] = continues
    best_anchor = np.maximum(anchor[at], 0.0)
    features[:, :, _COLUMN["anchor_cos"]] = best_anchor
    features[:, :, _COLUMN["anchor_exact"]] = best_anchor >= EXACT_ANCHOR
    features[:, :, _COLUMN["anchor_age"]] = np.where(continues, np.argmax(same, axis=2), 0)
    features[:, :, _COLUMN["anchor_margin"]] = np.where(same[at], lead[rows[:, None], which], 0.0)
    features[:, :, _COLUMN["anchor_votes"]] = same.sum(axis=2)
    features[cand < 0] = 0.0
    return Candidates(cand, vectors, features, sources)


def ground_one(
    row: np.ndarray,
    vectors: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: bool,
    table: np.ndarray,
    anchor_ids: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    v_hat: np.ndarray,
    model: SnapConfidence,
    avoided: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[StreamGrounding, float]:
    """One stream's grounding and c_max, as the batched form (pipeline.grounding.ground_step) finds them.

    `row` (K,) shortlist ids and `vectors` (K, d) their float32 rows; `tower_raw` / `lvm_raw` (K,) every row's
    score against the unit q and v̂ (`queries`, `v_hat` (1, d)), before masking; `used` the ids the stream may
    not show, `blocked` those it may not ground on (its context, hidden ids), `failed` its retrieval failed;
    `table` the successor table (`successor_table`) and the anchors' ids, match cosines and margins (A,);
    `avoided` the stream's own (m, d) said vectors and (m,) limits (None: nothing said).

    The masks, candidates, features, p and the pick are compiled loops (decider/kernels.py): one call where
    every candidate is a shortlist row; else the rows it asks for are read with `vectors_of` (one call) and a
    second loop scores them as every form does (`_dot32`) and picks. The candidate, its features and source
    are the batched ones bit for bit and p equal within float rounding (its sum is in another order). The
    tests hold the forms equal.
    """
    coefficients, offset = model.linear
    said, limits = avoided if avoided is not None else (_NOTHING_SAID, _NO_LIMITS)
    limits = np.asarray(limits, np.float64)
    features, vector = np.empty(len(FEATURES)), np.empty(queries.shape[1], np.float32)
    wanted = np.empty(2 + len(anchor_ids), np.int64)
    stream = (row, tower_raw, lvm_raw, used, blocked, failed, table, anchor_ids, anchor_cos, anchor_margin,
              coefficients, offset, EXACT_ANCHOR, vectors)  # what both loops read of the stream
    c_max, best, chosen, passed, p = ground_stream(*stream, said, limits, features, vector, wanted)
    if best == -2:  # a candidate outside the shortlist (a successor; every one when it is empty): read it
        fresh = np.ascontiguousarray(vectors_of(np.maximum(wanted, 0)), dtype=np.float32)
        best, chosen, passed, p = ground_stream_read(*stream, fresh, queries[0], v_hat[0], said, limits, features,
                                                     vector)
    return StreamGrounding(chosen, vector, p, _SOURCE_OF[min(best, 2)] if best >= 0 else 0, features, passed), c_max


_SOURCE_OF = (SOURCES.index("tower"), SOURCES.index("lvm"), SOURCES.index("successor"))  # by candidate (2+: successors)
_NOTHING_SAID, _NO_LIMITS = np.zeros((0, 1)), np.zeros(0)  # float64, as a generation's said rows are


def ground_batch(
    ids: np.ndarray,
    vectors: np.ndarray,
    tower_raw: np.ndarray,
    lvm_raw: np.ndarray,
    used: np.ndarray,
    blocked: np.ndarray,
    failed: np.ndarray,
    table: np.ndarray,
    anchor_ids: np.ndarray,
    anchor_cos: np.ndarray,
    anchor_margin: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    v_hat: np.ndarray,
    model: SnapConfidence,
    avoided: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Grounding, np.ndarray]:
    """The grounding and c_max (b,) of b streams, each stream's as `ground_one` finds it alone.

    Row i of each argument is stream i's `ground_one` argument: `ids` (b, K) and `vectors` (b, K, d);
    `tower_raw` / `lvm_raw` (b, K); `used` and `blocked` (b, m) right-aligned and padded with -1 (`id_rows`);
    `failed` (b,) bool; the anchors' ids, cosines and margins (b, A); `queries` and `v_hat` (b, d) unit rows;
    `avoided` (b, m, d) said rows and (b, m) limits, padded with inf (`avoid_rows`; None: nothing said).

    The streams are grounded in turn by one compiled loop. The rows that those with a candidate outside their
    shortlist ask for are then read from the bank in one `vectors_of` call, and a second loop scores and picks
    them: `ground_one`'s work in its order, so a stream's grounding is the same in any batch.
    """
    coefficients, offset = model.linear
    b = len(ids)
    d, a = queries.shape[1], anchor_ids.shape[1]
    said, limits = avoided if avoided is not None else (np.zeros((b, 0, 1)), np.zeros((b, 0)))
    ids, failed = np.ascontiguousarray(ids, np.int64), np.asarray(failed, np.bool_)
    tower_raw, lvm_raw = np.ascontiguousarray(tower_raw), np.ascontiguousarray(lvm_raw)
    vectors, limits = np.ascontiguousarray(vectors, np.float32), np.asarray(limits, np.float64)
    m = 2 + a
    c_max, p = np.empty(b), np.empty(b)
    place, chosen, passed = np.empty(b, np.int64), np.empty(b, np.int64), np.empty(b, np.int64)
    features, chosen_vectors = np.empty((b, len(FEATURES))), np.empty((b, d), np.float32)
    outputs = (place, chosen, passed, p, features, chosen_vectors)
    successors, cand, at_row = np.empty((b, a), np.int64), np.empty((b, m), np.int64), np.empty((b, m), np.int64)
    tower_score, cos, tops, top_ids = np.empty((b, m)), np.empty((b, m)), np.empty((b, 3)), np.empty((b, 2), np.int64)
    wanted = np.empty((b, m), np.int64)
    kept = (successors, cand, at_row, tower_score, cos, tops, top_ids)
    ground_streams_in_turn(ids, tower_raw, lvm_raw, used, blocked, failed, table, anchor_ids, anchor_cos,
                           anchor_margin, coefficients, offset, EXACT_ANCHOR, vectors, said, limits, c_max, *outputs,
                           *kept, wanted)
    streams = np.flatnonzero(place == -2)
    if len(streams):  # candidates outside the shortlist (successors; every one where it is empty): read them
        wanted = wanted[streams]
        read = wanted >= 0
        fresh = np.zeros((*wanted.shape, d), np.float32)
        fresh[read] = vectors_of(wanted[read])
        pick_outside(streams, fresh, queries, v_hat, cand, successors, tower_score, cos, tops, top_ids, anchor_cos,
                     anchor_margin, coefficients, offset, EXACT_ANCHOR, vectors, at_row, said, limits, *outputs)
    sources = np.array((0, 0, *_SOURCE_OF) + _SOURCE_OF[-1:] * (a - 1), np.int8)[place + 2]  # place -2 or -1: none
    return Grounding(chosen, chosen_vectors, p, sources, features, passed), c_max


@dataclass(frozen=True)
class SnapConfidence:
    """p = σ(w · (x - mean) / scale + bias): the probability that a candidate is the true next concept."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """p for features x (..., F); float64 in [0, 1]."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))

    @cached_property
    def linear(self) -> tuple[np.ndarray, float]:
        """`predict` as w / scale · x + (bias - w / scale · mean) (equal within float rounding): the form one
        stream's step computes p in (decider/kernels.py), a few candidates at a time."""
        coefficients = np.ascontiguousarray(self.weights / self.scale, dtype=np.float64)
        return coefficients, float(self.bias - float(coefficients @ self.mean))

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, l2: float = L2, iterations: int = 50
    ) -> SnapConfidence:
        """Logistic regression by Newton's method (IRLS) on standardised features, ridge `l2`; `weights`
        (n,): how much each candidate counts (the prior of its case), 1 each by default."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need (n, {len(FEATURES)}) features and n labels, got {x.shape} and {y.shape}")
        counts = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
        if counts.shape != y.shape or not (np.isfinite(counts).all() and (counts >= 0).all() and counts.sum() > 0):
            raise ValueError("weights must be n finite non-negative numbers, not all 0")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
        w = np.zeros(z.shape[1])
        ridge = np.full(z.shape[1], l2 * counts.sum())
        ridge[-1] = 0.0
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40, 40)))
            gradient = z.T @ (counts * (p - y)) + ridge * w
            hessian = (z * (counts * p * (1 - p))[:, None]).T @ z + np.diag(ridge) + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(FEATURES, mean, scale, w[:-1], float(w[-1]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "confidence model") -> SnapConfidence:
        try:
            features = tuple(str(f) for f in data["features"])
            arrays = [np.asarray(data[key], dtype=np.float64) for key in ("mean", "scale", "weights")]
            bias = float(data["bias"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"{source} is corrupt ({type(err).__name__}: {err}); rerun `dualpath calibrate`"
            ) from None
        if features != FEATURES:
            raise ConfigError(
                f"{source} was fitted on features {list(features)}, this version uses {list(FEATURES)}; "
                "rerun `dualpath calibrate`"
            )
        if any(a.shape != (len(FEATURES),) or not np.isfinite(a).all() for a in arrays) or not np.isfinite(bias):
            raise ConfigError(
                f"{source} is corrupt (weights of the wrong shape or not finite); rerun `dualpath calibrate`"
            )
        if (arrays[1] <= 0).any():
            raise ConfigError(f"{source} is corrupt (a feature scale ≤ 0); rerun `dualpath calibrate`")
        return cls(features, arrays[0], arrays[1], arrays[2], bias)


def choose_grounding(
    candidates: Candidates,
    model: SnapConfidence,
    pick: Pick | None = None,
) -> Grounding:
    """Each stream's most probable candidate. `pick(scores, vectors)` may refuse some (it returns each
    row's chosen index, -1 for none, and how many better ones it passed over; e.g. `nearest_unsaid`
    passing over paraphrases); by default the argmax of p over the valid candidates."""
    p = model.predict(candidates.features)
    scores = np.where(candidates.ids >= 0, p, -np.inf)
    passed = np.zeros(len(scores), np.int64)
    if pick is None:
        best = np.argmax(scores, axis=1) if scores.shape[1] else np.zeros(len(scores), np.int64)
        best = np.where(np.isfinite(scores[np.arange(len(scores)), best]) if scores.shape[1] else False, best, -1)
    else:
        best, passed = pick(scores, candidates.vectors)
    rows = np.arange(len(best))
    at = np.maximum(best, 0)
    found = best >= 0
    ids = np.where(found, candidates.ids[rows, at] if scores.shape[1] else -1, -1)
    d = candidates.vectors.shape[2]
    vectors = candidates.vectors[rows, at] if scores.shape[1] else np.zeros((len(best), d), np.float32)
    return Grounding(
        ids=ids.astype(np.int64),
        vectors=np.asarray(vectors, dtype=np.float32),
        confidence=np.where(found, p[rows, at] if scores.shape[1] else 0.0, 0.0),
        sources=np.where(found, candidates.sources[rows, at] if scores.shape[1] else 0, 0).astype(np.int8),
        features=np.where(found[:, None], candidates.features[rows, at], 0.0) if scores.shape[1]
        else np.zeros((len(best), len(FEATURES))),
        passed=np.asarray(passed, dtype=np.int64),
    )


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """The reliability curve: per bin of predicted p, its mean p, the observed frequency and the count."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for i in range(bins):
        at = which == i
        if at.any():
            out.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "mean_p": float(p[at].mean()),
                        "observed": float(y[at].mean()), "n": int(at.sum())})
    return out
