"""One dual-path decision: SNAP, BLEND, NOVEL or NOVEL_DUP_DROP, from v̂ and a shortlist.

Candidates the stream has already shown (`used_ids`: its last `lane.repeat_window` shown concepts)
are removed from the shortlist first, so SNAP and BLEND take the best concept the stream has not
used. So are paraphrases: with `avoid` vectors (what the stream's prompt said and what it showed),
a candidate at its limit's cosine or closer to one of them is passed over, as if it had been shown.
c = max_i cos(v̂, n_i) over what is left and n* its argmax (first on ties); with sampling
(`Sampling`: temperature, top-k, top-p over the shortlist's cosines) n* is drawn instead and c is
its cosine. In order:
  c > 0.98 and n* picked within the lane's last `dup_window` steps → NOVEL_DUP_DROP (keep v̂)
  c ≥ τ_snap → SNAP (output n*)
  c ≤ τ_novel → NOVEL (output v̂)
  otherwise → BLEND, normalize((1 - α) v̂ + α n*) with α from the blend schedule.
An empty or failed shortlist → NOVEL, and the record says why. Every output is unit-norm.
`decide_by` (a baseline's) replaces c in these rules, not in the choice of n*.

The memory of picked ids (`recent_ids`) holds one entry per past step, most recent last: the id
of n* when the step SNAPped or BLENDed (the output was pulled to that concept), -1 otherwise. So
"picked within the last 8 steps" is exactly the last 8 entries, whatever the steps decided.

The single-step form runs the batched form on a batch of one, and every per-stream quantity is
computed from that stream's rows alone: elementwise, or by one matrix-vector product per stream
(`np.matmul` over a stack calls BLAS once per (k, d) matrix, the same call a batch of one makes),
so a stream's result is bit-for-bit the same alone or in a batch, and the batched form has no
per-stream Python loop. Bank vectors are unit-norm: a shortlist marked `unit` (what the
generator's bank shortlists are) has its cosines read as plain dot products, with no norms
recomputed per step; only the picked row is normalised for the output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np

from dualpath.decider.grounding import SOURCES, Evidence, Grounding, StreamGrounding
from dualpath.decider.kernels import paraphrase_rows, unit_rows
from dualpath.decider.lanes import Lane
from dualpath.decider.schedules import AlphaSchedule, get_schedule
from dualpath.errors import DeciderError
from dualpath.search import NO_ID, id_member, id_rows

NEAR_DUP_COSINE = 0.98


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
    unit: bool = False  # the vectors are unit-norm (a bank's): cosines are dot products

    @classmethod
    def failed(cls, reason: str, dim: int = 0) -> Shortlist:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32), reason)

    def __len__(self) -> int:
        return int(np.asarray(self.ids).shape[0])


@dataclass(frozen=True)
class ShortlistBatch:
    """Shortlists of b streams: ids (b, k) int64 with -1 padding, vectors (b, k, d), fallbacks (b,).

    `unit`: every valid row is unit-norm (a bank's vectors, e.g. read at float16 and widened): the
    decider reads cosines as dot products and does not recompute K norms per step.
    """

    ids: np.ndarray
    vectors: np.ndarray
    fallbacks: tuple[str | None, ...]
    unit: bool = False

    @classmethod
    def stack(cls, shortlists: Sequence[Shortlist], dim: int) -> ShortlistBatch:
        """Pad shortlists of different lengths to one array (padding ids -1, vectors 0)."""
        if len(shortlists) == 1 and shortlists[0].fallback is None:
            # One stream (every single step): a view, not a copy of its (k, d) vectors.
            ids, vectors = _check_shortlist(shortlists[0], dim)
            return cls(ids[None, :], vectors[None, :, :], (None,), shortlists[0].unit)
        k = max((len(s) for s in shortlists), default=0)
        ids = np.full((len(shortlists), k), NO_ID, np.int64)
        vectors = np.zeros((len(shortlists), k, dim), np.float32)
        for i, s in enumerate(shortlists):
            if s.fallback is None and len(s):
                s_ids, s_vectors = _check_shortlist(s, dim)
                ids[i, : len(s)] = s_ids
                vectors[i, : len(s)] = s_vectors
        unit = all(s.unit for s in shortlists)
        return cls(ids, vectors, tuple(s.fallback for s in shortlists), unit)

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
    c_pick: float | None = None  # what the thresholds saw: cos(v̂, n*) (= c_max unless sampled), or the confidence
    skipped_used: int = 0  # shortlist candidates removed because the stream already showed them
    skipped_paraphrases: int = 0  # better candidates passed over as paraphrases of what the stream said
    # Lanes that ground on evidence (`rule: confidence`): p that n* is the true next concept, where n*
    # came from (tower / lvm / successor) and the features p was computed from (decider/grounding.py).
    confidence: float | None = None
    candidate_source: str | None = None
    evidence: Mapping[str, float] | None = None

    @property
    def picked_id(self) -> int:
        """What this step adds to the memory of picked ids: n* if SNAP or BLEND, else -1."""
        if self.decision in (Decision.SNAP, Decision.BLEND) and self.neighbour_id is not None:
            return self.neighbour_id
        return NO_ID

    @classmethod
    def from_fields(cls, **values: Any) -> DecisionRecord:
        """`DecisionRecord(**values)` without the frozen dataclass's one `object.__setattr__` per field (a
        step makes one record per stream; the fields are the decider's own, already checked)."""
        record = object.__new__(cls)
        record.__dict__.update(_RECORD_DEFAULTS, **values)
        return record

    @classmethod
    def of_all(cls, values: dict[str, Any]) -> DecisionRecord:
        """A record of `values`, which names every field (`from_fields` without its keyword arguments and
        defaults to merge: a batched step makes one record a stream, and that merge was half of each)."""
        record = object.__new__(cls)
        record.__dict__.update(values)
        return record

    def renumbered(self, step: int, latency_ms: float | None = None) -> DecisionRecord:
        """This record as step `step` (with `latency_ms` when given). A copy of its fields without
        `dataclasses.replace`'s re-initialisation: a generation step makes one per stream."""
        new = object.__new__(DecisionRecord)
        new.__dict__.update(self.__dict__, step=step, latency_ms=self.latency_ms if latency_ms is None else latency_ms)
        return new

    def to_dict(self) -> dict:
        """The record as JSON-ready values; the evidence to 4 places (it is read, not recomputed)."""
        out = asdict(self)
        out["decision"] = self.decision.value
        if self.evidence is not None:
            out["evidence"] = {name: round(value, 4) for name, value in self.evidence.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DecisionRecord:
        return cls(**{**data, "decision": Decision(data["decision"])})


_RECORD_DEFAULTS = {f.name: f.default for f in fields(DecisionRecord) if f.default is not MISSING}


def _check_shortlist(shortlist: Shortlist, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(shortlist.ids)
    vectors = np.asarray(shortlist.vectors)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":  # np.issubdtype(ids.dtype, np.integer), as _as_queries
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
    if v.dtype.kind != "f":  # np.issubdtype's answer, without its Python-level walk of the type tree
        raise DeciderError(f"v̂ must be floating point, got {v.dtype}")
    return np.ascontiguousarray(v, dtype=np.float32)


def _row_norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(x).sum(axis=-1))


def avoid_rows(
    avoid: Sequence[np.ndarray] | np.ndarray | None, limits: Sequence[np.ndarray] | np.ndarray | None, b: int, d: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-stream avoid vectors (m_i, d) and their cosine limits (m_i,) as one (b, m, d) array and
    (b, m) limits, padded with zero vectors whose limit (inf) nothing reaches; None when there are none.
    float64, as the paraphrase check reads them.

    Already stacked arrays ((b, m, d) and (b, m), as this returns them) are taken as they are.
    """
    if avoid is None:
        return None
    if limits is None or len(avoid) != b or len(limits) != b:
        raise DeciderError(f"need avoid vectors and their limits for each of the {b} streams")
    if isinstance(avoid, np.ndarray) and avoid.ndim == 3:
        bounds = np.asarray(limits, dtype=np.float64)
        if avoid.shape[2] != d or bounds.shape != avoid.shape[:2]:
            raise DeciderError(f"stacked avoid vectors must be ({b}, m, {d}) with ({b}, m) limits")
        return (avoid.astype(np.float64, copy=False), bounds) if avoid.shape[1] else None
    width = max((len(a) for a in avoid), default=0)
    if width == 0:
        return None
    vectors = np.zeros((b, width, d), np.float64)
    bounds = np.full((b, width), np.inf)
    for i, (rows, limit) in enumerate(zip(avoid, limits, strict=True)):
        if len(rows):
            rows = np.asarray(rows, dtype=np.float64)
            if rows.ndim != 2 or rows.shape[1] != d or np.shape(limit) != (len(rows),):
                raise DeciderError(f"stream {i}: avoid vectors must be (m, {d}) with one limit each")
            vectors[i, : len(rows)] = rows
            bounds[i, : len(rows)] = limit
    return vectors, bounds


def _paraphrases(picked: np.ndarray, avoid: np.ndarray, limits: np.ndarray, rows: np.ndarray | None = None
                 ) -> np.ndarray:
    """(n,) bool: each picked row (n, d) is at its limit's cosine or closer to one of its stream's avoid
    vectors: streams `rows` (n,) of avoid (b, m, d) and limits (b, m) (None: row i is stream i).

    Products summed over d in float64, row by row (`paraphrase_rows`), so a stream's answer never depends on
    the batch around it or on how far its avoid rows are padded.
    """
    # float64 avoid rows (a generation's are, and `avoid_rows` makes them), read in place, as they are laid out
    picked, avoid, limits = np.asarray(picked), np.asarray(avoid, dtype=np.float64), np.asarray(limits, np.float64)
    if rows is None:
        rows = np.arange(len(picked), dtype=np.int64)
        if len(avoid) != len(picked):
            raise DeciderError(f"{len(picked)} picked rows for the avoid rows of {len(avoid)} streams")
    else:
        rows = np.asarray(rows, np.int64)
        if rows.shape != picked.shape[:1] or (len(rows) and not 0 <= rows.min() <= rows.max() < len(avoid)):
            raise DeciderError(f"streams {rows} of picked rows {picked.shape} are not among {len(avoid)} streams")
    _check_avoid_shapes(picked.shape, avoid.shape, limits.shape)
    out = np.empty(len(picked), np.bool_)
    paraphrase_rows(picked, avoid, limits, rows, out)
    return out


_FIRST = np.zeros(1, np.int64)  # the one stream of `is_paraphrase`


def is_paraphrase(picked: np.ndarray, avoid: np.ndarray, limits: np.ndarray) -> bool:
    """`_paraphrases` of one picked row (d,) against its stream's avoid rows (m, d) and their limits (m,), as
    `avoid_rows` stacks them for one stream: the same sums."""
    picked, avoid = picked[None], np.asarray(avoid, dtype=np.float64)[None]
    limits = np.asarray(limits, dtype=np.float64)[None]
    _check_avoid_shapes(picked.shape, avoid.shape, limits.shape)
    out = np.empty(1, np.bool_)
    paraphrase_rows(picked, avoid, limits, _FIRST, out)
    return bool(out[0])


def _check_avoid_shapes(picked: tuple[int, ...], avoid: tuple[int, ...], limits: tuple[int, ...]) -> None:
    """The compiled loop reads what the shapes say: (n, d) picked rows, (b, m, d) avoid rows, (b, m) limits."""
    if len(picked) != 2 or len(avoid) != 3 or avoid[2] != picked[1] or limits != avoid[:2]:
        raise DeciderError(f"avoid rows {avoid} and limits {limits} do not fit picked rows {picked}")


def _pass_over_paraphrases(
    cos: np.ndarray,
    vectors: np.ndarray,
    best: np.ndarray,
    avoid: tuple[np.ndarray, np.ndarray],
    choose: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Re-choose n* (in `best`, in place) until it is no paraphrase; passed-over candidates leave `cos`.

    Only the picks are checked, not all K candidates: the same n* as removing every paraphrase first
    (greedy; a draw is repeated over what is left), at a cost of a few rows per step. Returns how
    many candidates each stream passed over. `choose(rows)` picks anew for those rows.
    """
    skipped = np.zeros(len(best), np.int64)
    todo = np.flatnonzero(np.isfinite(cos[np.arange(len(best)), best]))
    while todo.size:
        bad = _paraphrases(vectors[todo, best[todo]], avoid[0], avoid[1], todo)
        todo = todo[bad]
        if not todo.size:
            break
        cos[todo, best[todo]] = -np.inf
        skipped[todo] += 1
        best[todo] = choose(todo)
        todo = todo[np.isfinite(cos[todo, best[todo]])]
    return skipped


def best_first(scores: np.ndarray) -> Iterator[int]:
    """The indices of a row of scores (c,), best first and the first of equal scores first (argmax's order),
    over its finite scores (a NaN or infinite one is never given). Lazily, one argmax each: a caller that
    stops at the first acceptable index pays for the few it tried, not for ranking all c. Sets each index
    it has given to -inf in `scores`: pass a copy."""
    while True:
        j = int(scores.argmax())
        top = float(scores[j])
        if not math.isfinite(top):
            if top != -math.inf and np.isfinite(scores).any():  # argmax stops at a NaN or +inf: leave them out
                scores[~np.isfinite(scores)] = -np.inf
                continue
            return
        yield j
        scores[j] = -np.inf


def nearest_unsaid(
    scores: np.ndarray, vectors: np.ndarray, avoided: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the best-scoring candidate that is no paraphrase of the row's avoid vectors.

    `scores` (n, c), -inf where a candidate is not allowed; `vectors` (n, c, d); `avoided` as
    `avoid_rows` stacks them (None: nothing to avoid). Returns the index (-1: none left) and how
    many better candidates each row passed over. `scores` is not changed.
    """
    scores = np.array(scores, dtype=np.float32)
    if not scores.shape[1]:
        return np.full(len(scores), -1, np.int64), np.zeros(len(scores), np.int64)
    if len(scores) == 1:  # one row: the same passes over its picks, on scalars
        count = 0
        for pick in best_first(scores[0]):  # a copy (above), which best_first masks
            if avoided is None or not is_paraphrase(vectors[0, pick], avoided[0][0], avoided[1][0]):
                return np.array([pick]), np.array([count])
            count += 1
        return np.array([-1]), np.array([count])
    best = np.argmax(scores, axis=1)
    passed = np.zeros(len(best), np.int64)
    if avoided is not None:
        passed = _pass_over_paraphrases(scores, vectors, best, avoided, lambda at: np.argmax(scores[at], axis=1))
    best[~np.isfinite(scores[np.arange(len(best)), best])] = -1
    return best, passed


def shortlist_scores(vectors: np.ndarray, units: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each stream's shortlist (b, K, d) scored against each of `units` ((b, d) each): a (b, K) array per unit.

    The same BLAS mat-vec per stream as `np.matmul(vectors, u[:, :, None])`, so the same values bit for
    bit, but with every unit's product of one stream made while its (K, d) rows are in cache: a batch's
    shortlists outgrow the caches (256 streams × 500 × 384 float32 is 196 MB), and a second stacked
    product would read them all from memory again.
    """
    b, k = vectors.shape[:2]
    if b == 1 or len(units) == 1:
        return [np.matmul(vectors, u[:, :, None])[:, :, 0] for u in units]
    out = [np.empty((b, k), np.result_type(vectors, u)) for u in units]
    for i in range(b):
        for u, scores in zip(units, out, strict=True):
            np.matmul(vectors[i], u[i], out=scores[i])
    return out


def _similarities(queries: np.ndarray, vectors: np.ndarray, valid: np.ndarray, unit: bool) -> np.ndarray:
    """Cosines (b, k) of unit queries to the valid shortlist rows, -inf elsewhere.

    The dot products are one BLAS mat-vec per stream over its rows up to its last valid one (`n`):
    the same call, of the same (n, d) shape, whether the stream is alone or in a batch (BLAS
    kernels sum a row differently at a block's tail, so the shape must not depend on the batch's
    padding). Streams of equal `n` share one stacked `matmul`, so the calls loop in C: the Python
    loop runs over the distinct lengths (one, when every shortlist is full), not the streams.
    Unit shortlists are read as they are; others are divided by their rows' norms (computed
    elementwise), which must be finite and non-zero.
    """
    b, k, _ = vectors.shape
    full = bool(valid[:, -1].all())
    if full:  # every stream's last row is valid (full shortlists, the usual step): one stacked call
        dots = np.matmul(vectors, queries[:, :, None])[:, :, 0]
    else:
        lengths = np.where(valid.any(axis=1), k - np.argmax(valid[:, ::-1], axis=1), 0)
        dots = np.zeros((b, k), np.float32)
        for n in np.unique(lengths[lengths > 0]).tolist():
            rows = np.flatnonzero(lengths == n)
            with np.errstate(all="ignore"):  # rows before a stream's last valid one may be padding
                dots[rows, :n] = np.matmul(vectors[rows, :n], queries[rows, :, None])[:, :, 0]
    if unit and full and valid.all():
        return dots
    with np.errstate(all="ignore"):  # padding rows may hold anything; they are masked below
        if unit:
            return np.where(valid, dots, np.float32(-np.inf))
        norms = np.sqrt(np.einsum("bkd,bkd->bk", vectors, vectors))
        bad = valid & ~(np.isfinite(norms) & (norms > 0))
        if bad.any():
            stream, row = map(int, np.argwhere(bad)[0])
            raise DeciderError(f"shortlist vector {row} of stream {stream} is zero, NaN/inf or overflows float32")
        return np.where(valid, dots / np.where(valid, norms, 1.0), np.float32(-np.inf)).astype(np.float32)


_DECISIONS = (Decision.NOVEL, Decision.NOVEL_DUP_DROP, Decision.SNAP, Decision.BLEND)


def choose_next_vectors(
    v_hat: np.ndarray,
    batch: ShortlistBatch,
    lane: Lane,
    recent_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
    schedule: str | AlphaSchedule = "continuous",
    dup_threshold: float = NEAR_DUP_COSINE,
    used_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
    sampling: Sampling = GREEDY,
    draws: np.ndarray | None = None,
    avoid: Sequence[np.ndarray] | np.ndarray | None = None,
    avoid_limits: Sequence[np.ndarray] | np.ndarray | None = None,
    decide_by: np.ndarray | None = None,
    scores_out: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """Decide b streams at once: v̂ (b, d), their shortlists, per-stream memories of picked ids.

    `recent_ids[i]` / `used_ids[i]`: stream i's picked ids (most recent last) and the concepts it
    may not show again (removed from its shortlist); either may be a (b, m) array right-aligned
    and padded with -1 (see `id_rows`). `draws`: one uniform number in [0, 1) per stream, needed
    when `sampling` is not greedy. `avoid[i]` (m_i, d) unit vectors and `avoid_limits[i]` (m_i,), or
    both stacked as `avoid_rows` returns them: candidates at a limit's cosine or closer to a vector
    are passed over (paraphrases). `decide_by`
    (b,): a c per stream (NaN: its own) that the rules read instead of n*'s, with no near-duplicate
    drop (the random-mix baseline). Returns the outputs (b, d) float32, unit-norm, and one record per
    stream (step 0; latency is the call's time divided by b). Each stream's result equals
    `choose_next_vector` on it alone.

    `scores_out`, when given and the shortlists are unit-norm, receives the step's pass over them: "v"
    (b, d), the unit v̂ scored, and "lvm" (b, K), each candidate's cosine to it, -inf where the stream may
    not pick it (padding, a failed search, an id it showed, a paraphrase passed over). Rendering reads
    them instead of scoring the shortlists again (`shortlist_nearest`).
    """
    start = time.perf_counter()
    if lane.rule != "c_max":
        raise DeciderError(
            f"lane '{lane.name}' grounds on evidence (rule: confidence): decide it with choose_grounded, as the "
            "Generator does; choose_next_vector(s) apply the c_max rule"
        )
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
    if k and ids.min() < NO_ID:
        raise DeciderError("shortlist ids must be ≥ 0, or -1 for no result")
    memory = id_rows(recent_ids, b, "memory of picked ids")
    used = id_rows(used_ids, b, "set of used ids")
    if not sampling.greedy:
        draws = np.asarray(draws, dtype=np.float64) if draws is not None else None
        if draws is None or draws.shape != (b,) or not ((draws >= 0) & (draws < 1)).all():
            raise DeciderError(f"sampling needs one draw in [0, 1) per stream ({b})")

    q_norms = _row_norms(queries)
    # NaN fails both; one stream reads its one norm
    if not (0 < float(q_norms[0]) < np.inf if b == 1 else q_norms.min() > 0 and q_norms.max() < np.inf):
        good = np.isfinite(q_norms) & (q_norms > 0)
        raise DeciderError(f"v̂ of stream {int(np.argmin(good))} is zero, NaN/inf or overflows float32")
    queries = queries / q_norms[:, None]

    valid = ids >= 0
    failed = [i for i, f in enumerate(batch.fallbacks) if f is not None]
    if failed:
        valid[failed] = False
    skipped = np.zeros(b, np.int64)
    if used.shape[1] and k:
        seen = valid & id_member(ids, used)
        skipped = seen.sum(axis=1)
        valid &= ~seen
    empty = ~valid.any(axis=1)
    if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    avoided = avoid_rows(avoid, avoid_limits, b, d)
    passed_over = np.zeros(b, np.int64)
    rows = np.arange(b)
    if k:
        cos = _similarities(queries, vectors, valid, batch.unit)
        if sampling.greedy:
            def choose(at: np.ndarray) -> np.ndarray:
                return np.argmax(cos[at], axis=1)
        else:
            def choose(at: np.ndarray) -> np.ndarray:
                return _sample(cos[at], sampling, np.asarray(draws)[at])
        best = choose(rows)
        if avoided is not None:
            passed_over = _pass_over_paraphrases(cos, vectors, best, avoided, choose)
            empty = ~np.isfinite(cos).any(axis=1)
        if scores_out is not None and batch.unit:
            scores_out.update(v=queries, lvm=cos)
        c_best = cos.max(axis=1).astype(np.float64)
        c_max = cos[rows, best].astype(np.float64)
        neighbour_ids = ids[rows, best]
        picked = vectors[rows, best]
        if empty.any():
            picked[empty] = queries[empty]  # empty streams have no n* (their row may be padding)
        neighbours = picked / _row_norms(picked)[:, None]
    else:
        c_best = c_max = np.full(b, -np.inf)
        neighbour_ids = np.full(b, NO_ID, np.int64)
        neighbours = queries

    c_rule = c_max
    overridden = np.zeros(b, bool)
    if decide_by is not None:
        given = np.asarray(decide_by, dtype=np.float64)
        if given.shape != (b,):
            raise DeciderError(f"decide_by needs one c per stream ({b}), got shape {given.shape}")
        overridden = ~np.isnan(given)
        c_rule = np.where(overridden, given, c_max)
    out, code, alpha, near_dup = _apply_rules(
        queries, neighbours, neighbour_ids, c_rule, c_max, empty, overridden, memory, lane, alpha_of, dup_threshold
    )

    latency_ms = (time.perf_counter() - start) * 1000.0 / max(b, 1)
    reasons = [
        f if f is not None else FALLBACK_EMPTY if e else None
        for f, e in zip(batch.fallbacks, empty.tolist(), strict=True)
    ]
    records = [
        DecisionRecord.from_fields(
            step=0,
            c_max=None if e else cb,
            decision=_DECISIONS[c],
            neighbour_id=None if e else n,
            alpha=a,
            lane=lane.name,
            near_dup=nd,
            fallback_reason=reason,
            latency_ms=latency_ms,
            c_pick=None if e else cp,
            skipped_used=sk,
            skipped_paraphrases=sp,
        )
        for e, cb, c, n, a, nd, reason, cp, sk, sp in zip(
            empty.tolist(), c_best.tolist(), code.tolist(), neighbour_ids.tolist(), alpha.tolist(),
            near_dup.tolist(), reasons, c_rule.tolist(), skipped.tolist(), passed_over.tolist(), strict=True,
        )
    ]
    return out, records


def _apply_rules(
    queries: np.ndarray,
    neighbours: np.ndarray,
    neighbour_ids: np.ndarray,
    c_rule: np.ndarray,
    c_near: np.ndarray,
    empty: np.ndarray,
    overridden: np.ndarray,
    memory: np.ndarray,
    lane: Lane,
    alpha_of: AlphaSchedule,
    dup_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The decision rules of both rules' lanes, on (b,) arrays: codes into _DECISIONS, set from the last rule
    to the first so that the first that holds wins (the module docstring's order), α and the outputs.

    `c_rule` is what the thresholds read (c, or p for a confidence lane), `c_near` the cosine of v̂ to n*
    that the near-duplicate guard reads. Thresholds compare in float64, so a threshold computed from recorded
    values (thresholds_from_shares) splits them exactly as it was computed to.
    """
    b = len(queries)
    code = np.full(b, 3)
    code[c_rule <= lane.tau_novel] = 0
    code[c_rule >= lane.tau_snap] = 2
    near_dup = np.zeros(b, bool)
    if memory.shape[1]:
        remembered = memory == neighbour_ids[:, None]
        near_dup = ~empty & ~overridden & (c_near > dup_threshold) & remembered.any(axis=1)
        window = min(lane.dup_window, memory.shape[1])
        if window > 0:
            code[near_dup & remembered[:, memory.shape[1] - window :].any(axis=1)] = 1
    code[empty] = 0
    is_snap, is_blend = code == 2, code == 3
    alpha = is_snap.astype(np.float64)
    out = queries.copy()
    out[is_snap] = neighbours[is_snap]
    if is_blend.any():
        scheduled = np.asarray(alpha_of(c_rule, lane.tau_snap, lane.tau_novel), dtype=np.float64)
        alpha[is_blend] = scheduled[is_blend]
        a32 = alpha.astype(np.float32)[is_blend, None]
        mixed = (1.0 - a32) * queries[is_blend] + a32 * neighbours[is_blend]
        out[is_blend] = mixed / _row_norms(mixed)[:, None]
    return out, code, alpha, near_dup


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
    avoid: np.ndarray | None = None,
    avoid_limits: np.ndarray | None = None,
    decide_by: float | None = None,
    scores_out: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, DecisionRecord]:
    """Decide one step: v̂ (d,), its shortlist, the memory of picked ids (one entry per past step),
    the concepts the stream may not show again, (when sampling) one uniform draw in [0, 1), the
    vectors whose paraphrases it may not pick (m, d) with their limits (m,), and a baseline's c.
    `scores_out`: as `choose_next_vectors`', for a batch of one."""
    start = time.perf_counter()
    if lane.rule != "c_max":
        raise DeciderError(
            f"lane '{lane.name}' grounds on evidence (rule: confidence): decide it with choose_grounded, as the "
            "Generator does; choose_next_vector(s) apply the c_max rule"
        )
    v = np.asarray(v_hat)
    if v.ndim != 1:
        raise DeciderError(f"v̂ must be a 1-d vector, got shape {v.shape}")
    avoided = None if avoid is None else avoid_rows([avoid], [avoid_limits], 1, v.shape[0])
    if shortlist.fallback is None and sampling.greedy and len(shortlist) and decide_by is None:
        decided = _choose_one(v, shortlist, lane, recent_ids, schedule, dup_threshold, used_ids, avoided, start,
                              scores_out)
        if decided is not None:
            return decided
    batch = ShortlistBatch.stack([shortlist], dim=v.shape[0])
    draws = None if draw is None else np.array([draw], dtype=np.float64)
    out, records = choose_next_vectors(
        v[None, :], batch, lane, [recent_ids], schedule, dup_threshold, [used_ids], sampling, draws,
        None if avoided is None else [avoid], None if avoided is None else [avoid_limits],
        None if decide_by is None else np.array([decide_by], dtype=np.float64), scores_out,
    )
    return out[0], records[0]


def _choose_one(
    v: np.ndarray,
    shortlist: Shortlist,
    lane: Lane,
    recent_ids: Sequence[int],
    schedule: str | AlphaSchedule,
    dup_threshold: float,
    used_ids: Sequence[int],
    avoided: tuple[np.ndarray, np.ndarray] | None,
    start: float,
    scores_out: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, DecisionRecord] | None:
    """The greedy single step with the batched form's numbers and scalar bookkeeping (None: take the batched form).

    Every vector computation is the batched form's own on a batch of one (`_similarities`,
    `_row_norms`, the same array expressions), so the results are bit-for-bit equal; only the
    per-stream rules run on Python scalars instead of (1,)-arrays, which is most of a single
    step's cost once the shortlist is unit-norm. The hypothesis test holds the two forms equal.
    """
    queries = _as_queries(v[None, :])
    ids, vectors = _check_shortlist(shortlist, queries.shape[1])
    lowest = int(ids.min())
    if lowest < NO_ID:
        raise DeciderError("shortlist ids must be ≥ 0, or -1 for no result")
    q_norms = _row_norms(queries)
    if not 0 < float(q_norms[0]) < np.inf:
        return None  # the batched form names the problem
    queries = queries / q_norms[:, None]
    if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    skipped = 0
    seen = None if not len(used_ids) else id_member(ids[None, :], np.asarray(used_ids, dtype=np.int64)[None, :])[0]
    if lowest >= 0 and shortlist.unit and (seen is None or not seen[-1]):
        # Every row a concept, unit-norm, the last one allowed (a full shortlist, the usual step):
        # `_similarities`' own product, and -inf where the stream showed the concept, without the mask of valid
        # rows and the masked copy it would make.
        cos = np.matmul(vectors[None], queries[:, :, None])[0, :, 0]
        if seen is not None and seen.any():
            cos[seen] = -np.inf
            skipped = int(seen.sum())
    else:
        valid = ids >= 0
        if seen is not None:
            skipped = int(seen.sum())
            valid &= ~seen
        if not valid.any():
            return None  # empty: the batched form records it
        cos = _similarities(queries, vectors[None], valid[None], shortlist.unit)[0]
    best = int(cos.argmax())
    passed_over = 0
    while avoided is not None and _paraphrases(vectors[[best]], avoided[0], avoided[1])[0]:
        cos[best] = -np.inf
        passed_over += 1
        best = int(cos.argmax())
        if not np.isfinite(cos[best]):
            return None  # nothing left: the batched form records the empty step
    if scores_out is not None and shortlist.unit:
        scores_out.update(v=queries, lvm=cos[None])
    c = float(cos[best])
    n_id = int(ids[best])
    decision, near_dup = _rules_one(c, c, n_id, list(recent_ids), lane, dup_threshold, guard=True)
    neighbours = queries
    if decision is Decision.SNAP or decision is Decision.BLEND:
        picked = vectors[best : best + 1]  # a view: the batched form's row, not a copy of it
        neighbours = picked / _row_norms(picked)[:, None]
    alpha_of = get_schedule(schedule) if isinstance(schedule, str) else schedule
    out, alpha = _output_one(decision, queries, neighbours, c, lane, alpha_of)
    record = DecisionRecord.from_fields(
        step=0, c_max=c, decision=decision, neighbour_id=n_id, alpha=alpha, lane=lane.name, near_dup=near_dup,
        fallback_reason=None, latency_ms=(time.perf_counter() - start) * 1000.0, c_pick=c, skipped_used=skipped,
        skipped_paraphrases=passed_over,
    )
    return out.astype(np.float32, copy=False), record


def choose_grounded(
    v_hat: np.ndarray,
    grounding: Grounding,
    lane: Lane,
    recent_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
    schedule: str | AlphaSchedule = "continuous",
    dup_threshold: float = NEAR_DUP_COSINE,
    c_max: np.ndarray | None = None,
    fallbacks: Sequence[str | None] | None = None,
    decide_by: np.ndarray | None = None,
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """Decide b streams of a lane that grounds on evidence (`rule: confidence`).

    n* is the candidate `grounding` chose per stream (decider/grounding.py: allowed, and the most
    probable true next concept) and p its confidence; the lane's thresholds are read on p:
      n* picked within the lane's last `dup_window` steps and cos(v̂, n*) > dup_threshold → NOVEL_DUP_DROP
      p ≥ τ_snap → SNAP (output n*);  p ≤ τ_novel → NOVEL (keep v̂);  otherwise BLEND, α from the schedule on p.
    A stream with no candidate, or whose retrieval failed (`fallbacks`), is NOVEL. `c_max` (b,): the
    best cos(v̂, shortlist), recorded as telemetry. `decide_by` (b,): a p per stream (NaN: its own)
    that the rules read instead, with no near-duplicate drop (the random-mix baseline).
    """
    start = time.perf_counter()
    alpha_of = get_schedule(schedule) if isinstance(schedule, str) else schedule
    queries = _as_queries(v_hat)
    b, d = queries.shape
    queries, q_norms = unit_rows(queries)  # numpy's norm and division, bit for bit, in one call
    if not (0 < float(q_norms[0]) < np.inf if b == 1 else q_norms.min() > 0 and q_norms.max() < np.inf):
        good = np.isfinite(q_norms) & (q_norms > 0)
        raise DeciderError(f"v̂ of stream {int(np.argmin(good))} is zero, NaN/inf or overflows float32")
    ids = np.asarray(grounding.ids, dtype=np.int64)
    if ids.shape != (b,) or grounding.vectors.shape != (b, d):
        raise DeciderError(f"grounding must hold one candidate per stream ({b}, d={d})")
    reasons = list(fallbacks) if fallbacks is not None else [None] * b
    if b == 1:
        return grounded_one(queries, StreamGrounding.of(grounding, 0), lane, recent_ids, alpha_of, dup_threshold,
                            math.nan if c_max is None else float(c_max[0]), reasons[0],
                            math.nan if decide_by is None else float(decide_by[0]), start)
    empty = (ids < 0) | np.array([r is not None for r in reasons], dtype=bool)
    neighbours = unit_rows(np.where(empty[:, None], queries, grounding.vectors))[0]
    c_pick = np.einsum("bd,bd->b", queries, neighbours).astype(np.float64)
    p = np.asarray(grounding.confidence, dtype=np.float64)
    overridden = np.zeros(b, bool)
    c_rule = p
    if decide_by is not None:
        given = np.asarray(decide_by, dtype=np.float64)
        overridden = ~np.isnan(given)
        c_rule = np.where(overridden, given, p)
    memory = id_rows(recent_ids, b, "memory of picked ids")
    out, code, alpha, near_dup = _apply_rules(
        queries, neighbours, ids, c_rule, c_pick, empty, overridden, memory, lane, alpha_of, dup_threshold
    )
    c_best = np.full(b, np.nan) if c_max is None else np.asarray(c_max, dtype=np.float64)
    latency_ms = (time.perf_counter() - start) * 1000.0 / max(b, 1)
    passed = [0] * b if grounding.passed is None else np.asarray(grounding.passed).tolist()
    # Each array read off as Python values in one call, not element by element: a step makes a record a stream.
    name = lane.name
    records = [
        DecisionRecord.of_all({
            "step": 0,
            "c_max": cb if math.isfinite(cb) else None,
            "decision": _DECISIONS[c],
            "neighbour_id": None if none else n,
            "alpha": a,
            "lane": name,
            "near_dup": nd,
            "fallback_reason": reason if reason is not None else FALLBACK_EMPTY if none else None,
            "latency_ms": latency_ms,
            "c_pick": cr,
            "skipped_used": 0,
            "skipped_paraphrases": over,
            "confidence": pr,
            "candidate_source": None if none else SOURCES[source],
            "evidence": None if none else Evidence(evidence),
        })
        for none, cb, c, n, a, nd, reason, cr, pr, source, evidence, over in zip(
            empty.tolist(), c_best.tolist(), code.tolist(), ids.tolist(), alpha.tolist(), near_dup.tolist(), reasons,
            np.asarray(c_rule, np.float64).tolist(), p.tolist(), np.asarray(grounding.sources).tolist(),
            np.asarray(grounding.features).tolist(), passed, strict=True,
        )
    ]
    return out, records


def grounded_one(
    queries: np.ndarray,
    one: StreamGrounding,
    lane: Lane,
    recent_ids: Sequence[Sequence[int]] | np.ndarray | None,
    alpha_of: AlphaSchedule,
    dup_threshold: float,
    c_max: float,
    reason: str | None,
    decide_by: float,
    start: float,
    step: int = 0,
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """`choose_grounded` for one stream (unit `queries` (1, d), its grounding `one`, c_max and `decide_by` as
    floats, NaN for none; the record numbered `step`), as `_choose_one` is to `choose_next_vectors`: every
    vector computation is the batched form's own on a batch of one, and `_apply_rules` runs on Python scalars.
    The tests hold the two forms equal."""
    n_id = one.id
    empty = n_id < 0 or reason is not None
    p = one.confidence
    overridden = not math.isnan(decide_by)
    c_rule = decide_by if overridden else p
    if recent_ids is None or isinstance(recent_ids, np.ndarray):
        memory = id_rows(recent_ids, 1, "memory of picked ids")[0].tolist()
    elif len(recent_ids) != 1:
        raise DeciderError(f"need one memory of picked ids per stream (1), got {len(recent_ids)}")
    else:
        memory = [int(x) for x in recent_ids[0]]
    guard = not empty and not overridden
    near = guard and n_id in memory
    neighbours = queries  # n* at unit length where it counts: the near-duplicate drop, a SNAP's or BLEND's output
    if not empty and (near or not (c_rule < lane.tau_snap and c_rule <= lane.tau_novel)):  # NaN: as BLEND
        neighbours = unit_rows(one.vector[None])[0]  # numpy's `picked / _row_norms(picked)`, bit for bit
    # cos(v̂, n*) matters only to the drop of an n* the stream picked before; for any other, -inf drops nothing
    c_pick = float(np.einsum("bd,bd->b", queries, neighbours)[0]) if near else -math.inf
    decision, near_dup = _rules_one(c_rule, c_pick, n_id, memory, lane, dup_threshold, guard)
    if empty:
        decision = Decision.NOVEL
    row, alpha = _output_one(decision, queries, neighbours, c_rule, lane, alpha_of)
    out = row[None].astype(np.float32)
    record = DecisionRecord.from_fields(
        step=step,
        c_max=c_max if math.isfinite(c_max) else None,
        decision=decision,
        neighbour_id=None if empty else n_id,
        alpha=alpha,
        lane=lane.name,
        near_dup=near_dup,
        fallback_reason=reason if reason is not None else FALLBACK_EMPTY if empty else None,
        latency_ms=(time.perf_counter() - start) * 1000.0,
        c_pick=c_rule,
        confidence=p,
        candidate_source=None if empty else SOURCES[one.source],
        evidence=None if empty else one.evidence(),
        skipped_paraphrases=one.passed,
    )
    return out, [record]


def _rules_one(
    c_rule: float, c_near: float, n_id: int, memory: list[int], lane: Lane, dup_threshold: float, guard: bool
) -> tuple[Decision, bool]:
    """`_apply_rules` for one stream on Python scalars: (decision, near_dup). `guard` False turns the
    near-duplicate drop off (no candidate, or a baseline's c decides)."""
    near_dup = guard and c_near > dup_threshold and n_id in memory
    window = min(lane.dup_window, len(memory))
    if near_dup and window > 0 and n_id in memory[len(memory) - window :]:
        return Decision.NOVEL_DUP_DROP, near_dup
    if c_rule >= lane.tau_snap:
        return Decision.SNAP, near_dup
    if c_rule <= lane.tau_novel:
        return Decision.NOVEL, near_dup
    return Decision.BLEND, near_dup


def _output_one(
    decision: Decision, queries: np.ndarray, neighbours: np.ndarray, c_rule: float, lane: Lane, alpha_of: AlphaSchedule
) -> tuple[np.ndarray, float]:
    """`_apply_rules`' output and α for one stream: unit `queries` and `neighbours` (1, d) in, (d,) out."""
    if decision is Decision.SNAP:
        return neighbours[0], 1.0
    if decision is not Decision.BLEND:
        return queries[0], 0.0
    alpha = float(np.asarray(alpha_of(np.array([c_rule]), lane.tau_snap, lane.tau_novel), dtype=np.float64)[0])
    a32 = np.array([alpha]).astype(np.float32)[:, None]
    mixed = (1.0 - a32) * queries + a32 * neighbours
    return unit_rows(mixed)[0][0], alpha
