"""One dual-path decision: SNAP, BLEND, NOVEL or NOVEL_DUP_DROP, from v̂ and a shortlist.

Candidates the stream has already shown (`used_ids`: its last `lane.repeat_window` shown concepts)
are removed from the shortlist first, so SNAP and BLEND take the best concept the stream has not
used. c = max_i cos(v̂, n_i) over what is left and n* its argmax (first on ties); with sampling
(`Sampling`: temperature, top-k, top-p over the shortlist's cosines) n* is drawn instead and c is
its cosine. In order:
  c > 0.98 and n* picked within the lane's last `dup_window` steps → NOVEL_DUP_DROP (keep v̂)
  c ≥ τ_snap → SNAP (output n*)
  c ≤ τ_novel → NOVEL (output v̂)
  otherwise → BLEND, normalize((1 - α) v̂ + α n*) with α from the blend schedule.
An empty or failed shortlist → NOVEL, and the record says why. Every output is unit-norm.

The memory of picked ids (`recent_ids`) holds one entry per past step, most recent last: the id
of n* when the step SNAPped or BLENDed (the output was pulled to that concept), -1 otherwise. So
"picked within the last 8 steps" is exactly the last 8 entries, whatever the steps decided.

The single-step form runs the batched form on a batch of one, and every per-stream quantity is
computed per stream or elementwise, never by BLAS (whose kernels may choose their summation order
by shape, alignment or thread count): a stream's result is bit-for-bit the same alone or in a
batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np

from dualpath.decider.lanes import Lane
from dualpath.decider.schedules import AlphaSchedule, get_schedule
from dualpath.errors import DeciderError

NEAR_DUP_COSINE = 0.98
NO_ID = -1


class Decision(StrEnum):
    SNAP = "SNAP"
    BLEND = "BLEND"
    NOVEL = "NOVEL"
    NOVEL_DUP_DROP = "NOVEL_DUP_DROP"


FALLBACK_EMPTY = "empty"
FALLBACK_TIMEOUT = "timeout"


def fallback_error(message: str) -> str:
    return f"error: {message}"


@dataclass(frozen=True)
class Sampling:
    """How n* is chosen among the shortlist: greedy (temperature 0, the default) or drawn.

    With temperature T > 0, candidate i gets weight exp((c_i - c_max) / T) among the `top_k` best
    (0 = all) and the smallest prefix of them holding `top_p` of the weight, as text-generation
    libraries sample tokens. The draw itself comes from the caller (one uniform number per stream),
    so the decision stays a pure function and a seeded run repeats exactly.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise DeciderError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            raise DeciderError(f"top_k must be ≥ 0 (0 = every candidate), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise DeciderError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


GREEDY = Sampling()


@dataclass(frozen=True)
class Shortlist:
    """The retriever's candidates for one step: ids (k,) int64 (-1 = no result) and vectors (k, d).

    `fallback` is set when retrieval did not deliver ("empty", "timeout", "error: ..."); the
    decision is then NOVEL whatever the arrays hold.
    """

    ids: np.ndarray
    vectors: np.ndarray
    fallback: str | None = None

    @classmethod
    def failed(cls, reason: str, dim: int = 0) -> Shortlist:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32), reason)

    def __len__(self) -> int:
        return int(np.asarray(self.ids).shape[0])


@dataclass(frozen=True)
class ShortlistBatch:
    """Shortlists of b streams: ids (b, k) int64 with -1 padding, vectors (b, k, d), fallbacks (b,)."""

    ids: np.ndarray
    vectors: np.ndarray
    fallbacks: tuple[str | None, ...]

    @classmethod
    def stack(cls, shortlists: Sequence[Shortlist], dim: int) -> ShortlistBatch:
        """Pad shortlists of different lengths to one array (padding ids -1, vectors 0)."""
        if len(shortlists) == 1 and shortlists[0].fallback is None:
            # One stream (every single step): a view, not a copy of its (k, d) vectors.
            ids, vectors = _check_shortlist(shortlists[0], dim)
            return cls(ids[None, :], vectors[None, :, :], (None,))
        k = max((len(s) for s in shortlists), default=0)
        ids = np.full((len(shortlists), k), NO_ID, np.int64)
        vectors = np.zeros((len(shortlists), k, dim), np.float32)
        for i, s in enumerate(shortlists):
            if s.fallback is None and len(s):
                s_ids, s_vectors = _check_shortlist(s, dim)
                ids[i, : len(s)] = s_ids
                vectors[i, : len(s)] = s_vectors
        return cls(ids, vectors, tuple(s.fallback for s in shortlists))

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class DecisionRecord:
    """Telemetry of one step. `c_max` and `neighbour_id` are None when retrieval gave nothing.

    `near_dup` is set when c > 0.98 and n* is anywhere in the decoder's memory of picked ids; the
    decision is NOVEL_DUP_DROP only when n* is also within the lane's window (so a lane that
    allows repeats still shows them).
    """

    step: int
    c_max: float | None
    decision: Decision
    neighbour_id: int | None
    alpha: float
    lane: str
    near_dup: bool
    fallback_reason: str | None
    latency_ms: float
    c_pick: float | None = None  # cos(v̂, n*): the c the thresholds saw (= c_max unless sampled)
    skipped_used: int = 0  # shortlist candidates removed because the stream already showed them

    @property
    def picked_id(self) -> int:
        """What this step adds to the memory of picked ids: n* if SNAP or BLEND, else -1."""
        if self.decision in (Decision.SNAP, Decision.BLEND) and self.neighbour_id is not None:
            return self.neighbour_id
        return NO_ID

    def to_dict(self) -> dict:
        out = asdict(self)
        out["decision"] = self.decision.value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DecisionRecord:
        return cls(**{**data, "decision": Decision(data["decision"])})


def _check_shortlist(shortlist: Shortlist, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(shortlist.ids)
    vectors = np.asarray(shortlist.vectors)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DeciderError(f"shortlist ids must be a 1-d integer array, got shape {ids.shape} {ids.dtype}")
    if vectors.shape != (ids.shape[0], dim):
        raise DeciderError(
            f"shortlist vectors must have shape ({ids.shape[0]}, {dim}) to match its ids and v̂, "
            f"got {vectors.shape}"
        )
    return ids, vectors


def _as_queries(v_hat: np.ndarray) -> np.ndarray:
    v = np.asarray(v_hat)
    if v.ndim != 2 or v.shape[1] == 0:
        raise DeciderError(f"v̂ must be a (b, d) array with d ≥ 1, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        raise DeciderError(f"v̂ must be floating point, got {v.dtype}")
    return np.ascontiguousarray(v, dtype=np.float32)


def _row_norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(x).sum(axis=-1))


def _similarities(queries: np.ndarray, vectors: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cosines (b, k) of unit queries to the valid shortlist rows (-inf elsewhere), and the rows' norms.

    One stream at a time through the same einsum calls, so a stream's numbers never depend on the
    batch around it: einsum's kernels add in an order fixed by the code, and need no (k, d)
    temporaries (which made large batches slower per stream than single steps).
    """
    b, k, _ = vectors.shape
    norms = np.ones((b, k), np.float32)
    dots = np.zeros((b, k), np.float32)
    for i in np.flatnonzero(valid.any(axis=1)):
        norms[i] = np.sqrt(np.einsum("kd,kd->k", vectors[i], vectors[i]))
        dots[i] = np.einsum("kd,d->k", vectors[i], queries[i])
    bad = valid & ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        stream, row = map(int, np.argwhere(bad)[0])
        raise DeciderError(f"shortlist vector {row} of stream {stream} is zero, NaN/inf or overflows float32")
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(valid, dots / np.where(valid, norms, 1.0), -np.inf).astype(np.float32)
    return cos, norms


def choose_next_vectors(
    v_hat: np.ndarray,
    batch: ShortlistBatch,
    lane: Lane,
    recent_ids: Sequence[Sequence[int]] | None = None,
    schedule: str | AlphaSchedule = "continuous",
    dup_threshold: float = NEAR_DUP_COSINE,
    used_ids: Sequence[Sequence[int]] | None = None,
    sampling: Sampling = GREEDY,
    draws: np.ndarray | None = None,
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """Decide b streams at once: v̂ (b, d), their shortlists, per-stream memories of picked ids.

    `used_ids[i]`: concepts stream i may not show again (removed from its shortlist). `draws`:
    one uniform number in [0, 1) per stream, needed when `sampling` is not greedy.
    Returns the outputs (b, d) float32, unit-norm, and one record per stream (step 0; latency is
    the call's time divided by b). Each stream's result equals `choose_next_vector` on it alone.
    """
    start = time.perf_counter()
    alpha_of = get_schedule(schedule) if isinstance(schedule, str) else schedule
    queries = _as_queries(v_hat)
    b, d = queries.shape
    ids = np.asarray(batch.ids)
    vectors = np.asarray(batch.vectors)
    if ids.ndim != 2 or ids.shape[0] != b or not np.issubdtype(ids.dtype, np.integer):
        raise DeciderError(f"shortlist ids must be a ({b}, k) integer array, got {ids.shape} {ids.dtype}")
    k = ids.shape[1]
    if vectors.shape != (b, k, d):
        raise DeciderError(f"shortlist vectors must have shape ({b}, {k}, {d}), got {vectors.shape}")
    if len(batch.fallbacks) != b:
        raise DeciderError(f"need one fallback entry per stream ({b}), got {len(batch.fallbacks)}")
    if (ids < NO_ID).any():
        raise DeciderError("shortlist ids must be ≥ 0, or -1 for no result")
    memories = [()] * b if recent_ids is None else list(recent_ids)
    if len(memories) != b:
        raise DeciderError(f"need one memory of picked ids per stream ({b}), got {len(memories)}")
    used = [()] * b if used_ids is None else list(used_ids)
    if len(used) != b:
        raise DeciderError(f"need one set of used ids per stream ({b}), got {len(used)}")
    if not sampling.greedy:
        draws = np.asarray(draws, dtype=np.float64) if draws is not None else None
        if draws is None or draws.shape != (b,) or not ((draws >= 0) & (draws < 1)).all():
            raise DeciderError(f"sampling needs one draw in [0, 1) per stream ({b})")

    q_norms = _row_norms(queries)
    if not (np.isfinite(q_norms) & (q_norms > 0)).all():
        stream = int(np.argmin(np.isfinite(q_norms) & (q_norms > 0)))
        raise DeciderError(f"v̂ of stream {stream} is zero, NaN/inf or overflows float32")
    queries = queries / q_norms[:, None]

    failed = np.array([f is not None for f in batch.fallbacks], dtype=bool)
    valid = (ids >= 0) & ~failed[:, None]
    skipped = np.zeros(b, np.int64)
    for i in range(b):
        if len(used[i]) and k:
            seen = valid[i] & np.isin(ids[i], np.asarray(used[i], dtype=np.int64))
            skipped[i] = int(seen.sum())
            valid[i] &= ~seen
    empty = ~valid.any(axis=1)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    cos, norms = _similarities(queries, vectors, valid)
    rows = np.arange(b)
    c_best = cos.max(axis=1).astype(np.float64) if k else np.full(b, -np.inf)
    if k and not sampling.greedy:
        best = _sample(cos, sampling, np.asarray(draws))
    else:
        best = np.argmax(cos, axis=1) if k else np.zeros(b, np.int64)
    c_max = cos[rows, best].astype(np.float64) if k else np.full(b, -np.inf)
    neighbour_ids = ids[rows, best] if k else np.full(b, NO_ID, np.int64)
    neighbours = vectors[rows, best] / np.where(empty, 1.0, norms[rows, best])[:, None] if k else queries
    neighbours = np.where(empty[:, None], queries, neighbours)  # empty streams have no n*

    # Thresholds compare in float64 so that a threshold computed from recorded c_max values
    # (thresholds_from_shares) splits them exactly as it was computed to.
    scheduled = np.asarray(alpha_of(c_max, lane.tau_snap, lane.tau_novel), dtype=np.float64)
    decisions: list[Decision] = []
    near_dups: list[bool] = []
    for i in range(b):
        memory = list(memories[i])
        n_id = int(neighbour_ids[i])
        near_dup = bool(not empty[i] and c_max[i] > dup_threshold and n_id in memory)
        in_window = lane.dup_window > 0 and n_id in memory[-lane.dup_window :]
        if empty[i]:
            decision = Decision.NOVEL
        elif near_dup and in_window:
            decision = Decision.NOVEL_DUP_DROP
        elif c_max[i] >= lane.tau_snap:
            decision = Decision.SNAP
        elif c_max[i] <= lane.tau_novel:
            decision = Decision.NOVEL
        else:
            decision = Decision.BLEND
        decisions.append(decision)
        near_dups.append(near_dup)

    is_snap = np.array([dec is Decision.SNAP for dec in decisions])
    is_blend = np.array([dec is Decision.BLEND for dec in decisions])
    alpha = np.where(is_snap, 1.0, np.where(is_blend, scheduled, 0.0))
    a32 = alpha.astype(np.float32)[:, None]
    mixed = (1.0 - a32) * queries + a32 * neighbours
    blended = mixed / _row_norms(mixed)[:, None]
    out = np.where(is_snap[:, None], neighbours, np.where(is_blend[:, None], blended, queries))
    out = out.astype(np.float32)

    latency_ms = (time.perf_counter() - start) * 1000.0 / max(b, 1)
    records = []
    for i in range(b):
        reason = batch.fallbacks[i] if failed[i] else FALLBACK_EMPTY if empty[i] else None
        records.append(
            DecisionRecord(
                step=0,
                c_max=None if empty[i] else float(c_best[i]),
                decision=decisions[i],
                neighbour_id=None if empty[i] else int(neighbour_ids[i]),
                alpha=float(alpha[i]),
                lane=lane.name,
                near_dup=near_dups[i],
                fallback_reason=reason,
                latency_ms=latency_ms,
                c_pick=None if empty[i] else float(c_max[i]),
                skipped_used=int(skipped[i]),
            )
        )
    return out, records


def _sample(cos: np.ndarray, sampling: Sampling, draws: np.ndarray) -> np.ndarray:
    """Per stream, the index of a candidate drawn from softmax(cos / T) within top-k and top-p.

    Row by row in sorted order with cumulative sums (sequential per row), so a stream's draw never
    depends on the batch around it. Streams with no valid candidate get index 0 (they are empty).
    """
    b, k = cos.shape
    order = np.argsort(-cos, axis=1, kind="stable")
    ranked = np.take_along_axis(cos, order, axis=1).astype(np.float64)
    finite = np.isfinite(ranked)
    if sampling.top_k:
        finite &= np.arange(k)[None, :] < sampling.top_k
    top = np.where(finite[:, :1], ranked[:, :1], 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.where(finite, np.exp((ranked - top) / sampling.temperature), 0.0)
    cum = np.cumsum(weights, axis=1)
    total = cum[:, -1:]
    if sampling.top_p < 1:
        # Keep the smallest prefix whose weight reaches top_p (always at least the best candidate).
        keep = (cum - weights) < sampling.top_p * total
        weights = np.where(keep, weights, 0.0)
        cum = np.cumsum(weights, axis=1)
        total = cum[:, -1:]
    pick = (cum <= draws[:, None] * total).sum(axis=1)
    pick = np.minimum(pick, np.maximum(finite.sum(axis=1) - 1, 0))
    return order[np.arange(b), pick]


def choose_next_vector(
    v_hat: np.ndarray,
    shortlist: Shortlist,
    lane: Lane,
    recent_ids: Sequence[int] = (),
    schedule: str | AlphaSchedule = "continuous",
    dup_threshold: float = NEAR_DUP_COSINE,
    used_ids: Sequence[int] = (),
    sampling: Sampling = GREEDY,
    draw: float | None = None,
) -> tuple[np.ndarray, DecisionRecord]:
    """Decide one step: v̂ (d,), its shortlist, the memory of picked ids (one entry per past step),
    the concepts the stream may not show again, and (when sampling) one uniform draw in [0, 1)."""
    v = np.asarray(v_hat)
    if v.ndim != 1:
        raise DeciderError(f"v̂ must be a 1-d vector, got shape {v.shape}")
    batch = ShortlistBatch.stack([shortlist], dim=v.shape[0])
    draws = None if draw is None else np.array([draw], dtype=np.float64)
    out, records = choose_next_vectors(
        v[None, :], batch, lane, [recent_ids], schedule, dup_threshold, [used_ids], sampling, draws
    )
    return out[0], records[0]
