"""The stateful decoder: one generation stream's memory of picked ids and step counter."""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np

from dualpath.config import DeciderConfig
from dualpath.decider.decision import (
    GREEDY,
    NEAR_DUP_COSINE,
    NO_ID,
    DecisionRecord,
    Sampling,
    Shortlist,
    ShortlistBatch,
    choose_grounded,
    choose_next_vector,
    choose_next_vectors,
    grounded_one,
)
from dualpath.decider.grounding import Grounding, SnapConfidence, ground_one
from dualpath.decider.kernels import NORM_EPS, unit_pair, unit_rows
from dualpath.decider.lanes import Lane, get_lane, load_lanes
from dualpath.decider.schedules import AlphaSchedule, get_schedule
from dualpath.errors import ConfigError, DeciderError
from dualpath.search import padded_rows

DEFAULT_MEMORY_CAP = 64


class DualPathDecoder:
    """Decides the steps of one stream, remembering which bank concepts it picked and showed.

    Two memories of one entry per step, capped at `memory_cap` steps: the picked id (n* of a SNAP
    or BLEND, else -1; the near-duplicate guard reads it, see `decision.py`) and the shown ids (the
    concept the step was rendered as, and any ids a caller knows to say the same, told by `shown()`;
    else the picked id). The lane's last `repeat_window` steps' shown ids (at most the whole memory)
    are taken out of every shortlist, so a stream does not show the same concept twice. Paraphrases
    found by their vectors are the `avoid` argument of `step` (the generator passes what the stream
    said). With sampling, draws come from this decoder's own generator seeded by `seed`. Not
    thread-safe: one decoder per stream.
    """

    def __init__(
        self,
        lane: Lane,
        schedule: str | AlphaSchedule = "continuous",
        memory_cap: int = DEFAULT_MEMORY_CAP,
        dup_threshold: float = NEAR_DUP_COSINE,
        sampling: Sampling = GREEDY,
        seed: int | None = 0,
    ) -> None:
        if memory_cap < 1:
            raise ConfigError(f"memory_cap must be ≥ 1, got {memory_cap}")
        if lane.dup_window > memory_cap:
            raise ConfigError(
                f"lane '{lane.name}': dup_window ({lane.dup_window}) exceeds the decoder's memory "
                f"of {memory_cap} steps"
            )
        self.lane = lane
        self.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        self.dup_threshold = dup_threshold
        self.sampling = sampling
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._recent: deque[int] = deque(maxlen=memory_cap)
        self._shown: deque[tuple[int, ...]] = deque(maxlen=memory_cap)
        self._used: np.ndarray | None = None  # used_array's, until the memory changes
        self._step = 0

    @classmethod
    def from_config(
        cls, cfg: DeciderConfig, lane: str | Lane | None = None, sampling: Sampling = GREEDY, seed: int | None = 0
    ) -> DualPathDecoder:
        """A decoder with cfg's schedule, memory and dup threshold for `lane`: a Lane (e.g. one
        calibrated for a bank), or a name looked up in the shipped and the user's lanes (default:
        cfg.default_lane)."""
        if not isinstance(lane, Lane):
            lane = get_lane(load_lanes(cfg.lanes_file), lane or cfg.default_lane)
        return cls(
            lane,
            schedule=cfg.schedule,
            memory_cap=cfg.memory_cap,
            dup_threshold=cfg.dup_threshold,
            sampling=sampling,
            seed=seed,
        )

    @property
    def recent_ids(self) -> tuple[int, ...]:
        """One entry per remembered step, most recent last (-1: nothing picked)."""
        return tuple(self._recent)

    @property
    def used_ids(self) -> tuple[int, ...]:
        """The concepts this stream may not show at its next step: its last `repeat_window` steps' shown
        ids (each step's concept and its paraphrases)."""
        return tuple(self.used_array().tolist())

    def used_array(self) -> np.ndarray:
        """`used_ids` as an int64 array, made once a step (the step and its rendering both read it; the
        decoder's own copy until its memory changes: read it, do not write it)."""
        if self._used is None:
            ids = _window_ids(self._shown, self.lane.repeat_window)
            self._used = np.fromiter(ids, np.int64, len(ids))
        return self._used

    @property
    def steps(self) -> int:
        return self._step

    def decision_c(self) -> float | None:
        """A c for this step's rules in place of n*'s own (None: its own). A baseline that decides
        by chance (the random mix) draws one here; n* is still the best candidate."""
        return None

    def step(
        self,
        v_hat: np.ndarray,
        shortlist: Shortlist,
        avoid: np.ndarray | None = None,
        avoid_limits: np.ndarray | None = None,
        scores_out: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, DecisionRecord]:
        """Decide the next step; candidates at `avoid_limits` cosine or closer to a row of `avoid`
        (what the stream said, see `choose_next_vector`) are passed over. Until `shown()` says
        otherwise, the step shows its picked id. `scores_out`: see `choose_next_vectors`."""
        start = time.perf_counter()
        draw = None if self.sampling.greedy else float(self._rng.random())
        v_out, record = choose_next_vector(
            v_hat, shortlist, self.lane, self._recent, self.schedule, self.dup_threshold,
            self.used_ids, self.sampling, draw, avoid, avoid_limits, self.decision_c(), scores_out,
        )
        return v_out, self.remember(record, (time.perf_counter() - start) * 1000.0)

    def ground(
        self,
        v_hat: np.ndarray,
        query: np.ndarray,
        shortlist: Shortlist,
        blocked: np.ndarray,
        table: np.ndarray,
        anchors: tuple[np.ndarray, np.ndarray, np.ndarray],
        model: SnapConfidence,
        vectors_of: Callable[[np.ndarray], np.ndarray],
        avoided: tuple[np.ndarray, np.ndarray] | None = None,
        scores_out: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, DecisionRecord]:
        """Decide the next step of a lane that grounds on evidence (`rule: confidence`): a stream alone, as
        pipeline.grounding.ground_step and `ground_streams` decide it in a batch (the tests hold the two equal).

        `v_hat` (d,) the LVM's vector, `query` (d,) the retriever's; `shortlist` the step's candidates;
        `blocked` ids it may not ground on (its context, hidden ids; the ids it showed are its own `used_ids`);
        `table` the bank's successor table and `anchors` the stream's anchors' ids, match cosines and margins
        (A,) (pipeline.grounding.StreamAnchors); `model` the SNAP confidence; `vectors_of(ids)` bank rows for
        successors outside the shortlist; `avoided` what the stream said, (m, d) vectors and (m,) limits.
        `scores_out` receives "v" (1, d), v̂ at unit length, and "lvm" (1, K), the shortlist's scores against
        it, for rendering. q and v̂ are normalised once and the grounding is compiled loops (`ground_one`): a
        step of one stream pays for a few calls, not for the batched form's few dozen."""
        if self.lane.rule != "confidence":
            raise DeciderError(f"lane '{self.lane.name}' decides by c_max; ground is for confidence lanes")
        start = time.perf_counter()
        unit, norms = unit_pair(query, v_hat, NORM_EPS)
        if not 0 < float(norms[1]) < np.inf:
            raise DeciderError("v̂ of stream 0 is zero, NaN/inf or overflows float32")
        vectors = np.asarray(shortlist.vectors, dtype=np.float32)
        with np.errstate(all="ignore") if len(shortlist.ids) and int(shortlist.ids.min()) < 0 else nullcontext():
            lvm_raw = vectors @ unit[1]  # padding rows may hold anything
            tower_raw = vectors @ unit[0]
        if scores_out is not None:
            scores_out.update(v=unit[1:], lvm=lvm_raw[None])
        grounding, c_max = ground_one(
            shortlist.ids, vectors, tower_raw, lvm_raw, self.used_array(),
            np.asarray(blocked, np.int64), shortlist.fallback is not None, table, *anchors, vectors_of, unit[:1],
            unit[1:], model, avoided,
        )
        # the rules read v̂ at unit length as choose_grounded makes it: the same bits, but for a v̂ shorter than eps
        rule_v = unit[1:] if norms[1] >= NORM_EPS else unit_rows(np.asarray(v_hat)[None])[0]
        own = self.decision_c()
        out, (record,) = grounded_one(rule_v, grounding, self.lane, [self._recent], self.schedule,
                                      self.dup_threshold, c_max, shortlist.fallback, math.nan if own is None else own,
                                      start, self._step)
        self._count(record)  # numbered and timed as it was made: no copy to renumber
        return out[0], record

    def remember(self, record: DecisionRecord, latency_ms: float | None = None) -> DecisionRecord:
        """Count a decided step into this stream's memories; returns the record numbered as this step
        (with `latency_ms` when given).

        `step` calls it; a decoder that decides differently (a baseline) calls it with its own record.
        """
        record = record.renumbered(self._step, latency_ms)
        self._count(record)
        return record

    def _keep(self, record: DecisionRecord, latency_ms: float) -> DecisionRecord:
        """`remember` for a record a decision call just made for this stream, which nothing else holds: numbered
        and timed in place (as `DecisionRecord.from_fields` fills it), not copied; a batch keeps one a stream."""
        fields = record.__dict__
        fields["step"], fields["latency_ms"] = self._step, latency_ms
        self._count(record)
        return record

    def _count(self, record: DecisionRecord) -> None:
        """Count a record numbered as this step into the memories."""
        picked = record.picked_id
        self._recent.append(picked)
        self._shown.append((picked,))
        self._used = None
        self._step += 1

    def shown(self, concept_id: int, paraphrases: Sequence[int] = ()) -> None:
        """The concept the last step was rendered as (-1: none) and ids known to say the same (optional;
        the generator finds paraphrases by their vectors instead): the stream may not show any of
        them again within its repeat window."""
        if not self._shown:
            raise DeciderError("shown() comes after a step")
        self._shown[-1] = (int(concept_id), *map(int, paraphrases))
        self._used = None

    def reset(self) -> None:
        """Forget the stream: a new generation starts at step 0 with an empty memory and a fresh seed."""
        self._recent.clear()
        self._shown.clear()
        self._used = None
        self._rng = np.random.default_rng(self.seed)
        self._step = 0


def _decision_values(decoders: Sequence[DualPathDecoder]) -> np.ndarray | None:
    """Each decoder's own value for the rules (`decision_c`, NaN: its own), or None when none has one."""
    own = [d.decision_c() for d in decoders]
    if all(c is None for c in own):
        return None
    return np.array([np.nan if c is None else c for c in own], dtype=np.float64)


def _window_ids(shown: deque[tuple[int, ...]], window: int) -> dict[int, None]:
    """The ids of the last `window` entries of a decoder's `shown` memory, each once, first seen first,
    without NO_ID: the concepts it may not show next (`used_array`)."""
    n = len(shown)
    if not window or not n:
        return {}
    ids = dict.fromkeys(itertools.chain.from_iterable(itertools.islice(shown, n - window, None) if n > window
                                                      else shown))
    ids.pop(NO_ID, None)
    return ids


def used_rows(decoders: Sequence[DualPathDecoder]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every decoder's `used_array`, read off their memories in one pass: the (b, m) rows `id_rows` pads them
    into (what a batched decision reads) and each stream's own ids (views of one array), as a batch of 256
    streams needs them every step; no decoder's own copy is made."""
    flat: list[int] = []
    lengths: list[int] = []
    for d in decoders:
        window = _window_ids(d._shown, d.lane.repeat_window)
        flat.extend(window)
        lengths.append(len(window))
    ids, counts = np.fromiter(flat, np.int64, len(flat)), np.array(lengths, np.int64)
    ends = np.cumsum(counts).tolist()
    return padded_rows(ids, counts), [ids[end - n:end] for end, n in zip(ends, lengths, strict=True)]


GroupDecision = Callable[[list[int], list[DualPathDecoder], bool], tuple[np.ndarray, list[DecisionRecord]]]


def _decide_in_groups(
    decoders: Sequence[DualPathDecoder], d_out: int, key: Callable[[DualPathDecoder], tuple], decide: GroupDecision
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """One decision call per group of decoders with the same `key`: `decide(rows, members, whole)` gives the
    group's outputs and records (`whole`: its rows are the whole batch, in order, so nothing need be sliced);
    each decoder remembers its own record, and every record carries the step's latency per stream."""
    start = time.perf_counter()
    b = len(decoders)
    records: list[DecisionRecord | None] = [None] * b
    keys = [key(d) for d in decoders] if b > 1 else [()]
    groups: dict[tuple, list[int]] = {}
    if keys.count(keys[0]) == b:  # one group (the usual step): no dictionary of rows built a stream at a time
        groups[keys[0]] = list(range(b))
    else:
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
    # One group (the usual step): its outputs are the step's, not copied into a fresh array.
    out = np.empty((b, d_out), np.float32) if len(groups) != 1 else None
    decided_groups = []
    for rows in groups.values():
        members = [decoders[i] for i in rows]
        decided, group_records = decide(rows, members, len(rows) == b)
        if out is None:
            out = np.asarray(decided, dtype=np.float32)
        else:
            out[rows] = decided
        decided_groups.append((rows, members, group_records))
    latency_ms = (time.perf_counter() - start) * 1000.0 / max(b, 1)
    for rows, members, group_records in decided_groups:
        for i, d, record in zip(rows, members, group_records, strict=True):
            records[i] = d._keep(record, latency_ms)
    assert out is not None
    return out, [r for r in records if r is not None]


def step_streams(
    decoders: Sequence[DualPathDecoder],
    v_hat: np.ndarray,
    batch: ShortlistBatch,
    avoided: tuple[np.ndarray, np.ndarray] | None = None,
    scores_out: dict[str, np.ndarray] | None = None,
    used: np.ndarray | None = None,
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """One step of b streams, each with its own decoder: `choose_next_vectors` once per group of
    decoders that decide alike (lane, schedule, dup threshold, sampling), not once per stream.

    `avoided`: what each stream said, stacked as `avoid_rows` returns it ((b, m, d) vectors, (b, m)
    limits). Each stream's output and record equal `decoders[i].step(v_hat[i], its shortlist,
    avoided[0][i], avoided[1][i])`: the batched decision is bit-for-bit the single one, and every
    decoder keeps its own memory and draws. `scores_out`: as `choose_next_vectors`', filled when one
    group decides the whole batch (the usual step). `used`: the decoders' `used_rows`, where the caller has them.
    """

    def decide(rows: list[int], members: list[DualPathDecoder], whole: bool) -> tuple[np.ndarray, list]:
        first = members[0]
        sub = batch if whole else ShortlistBatch(
            batch.ids[rows], batch.vectors[rows], tuple(batch.fallbacks[i] for i in rows), batch.unit
        )
        draws = None if first.sampling.greedy else np.array([float(d._rng.random()) for d in members])
        return choose_next_vectors(
            v_hat if whole else v_hat[rows], sub, first.lane, [d._recent for d in members], first.schedule,
            first.dup_threshold, [d.used_ids for d in members] if used is None else used if whole else used[rows],
            first.sampling, draws,
            None if avoided is None else avoided[0] if whole else avoided[0][rows],
            None if avoided is None else avoided[1] if whole else avoided[1][rows],
            _decision_values(members), scores_out if whole else None,
        )

    return _decide_in_groups(
        decoders, v_hat.shape[1], lambda d: (id(d.lane), id(d.schedule), d.dup_threshold, d.sampling), decide
    )


def ground_streams(
    decoders: Sequence[DualPathDecoder],
    v_hat: np.ndarray,
    grounding: Grounding,
    c_max: np.ndarray | None = None,
    fallbacks: Sequence[str | None] | None = None,
) -> tuple[np.ndarray, list[DecisionRecord]]:
    """One step of b streams whose lanes ground on evidence (`rule: confidence`): `choose_grounded` once
    per group of decoders that decide alike, each decoder remembering its own record. `grounding` holds
    each stream's chosen candidate (decider/grounding.py); `c_max` and `fallbacks` are per stream."""
    for d in decoders:
        if d.lane.rule != "confidence":
            raise DeciderError(f"lane '{d.lane.name}' decides by c_max; ground_streams is for confidence lanes")

    def decide(rows: list[int], members: list[DualPathDecoder], whole: bool) -> tuple[np.ndarray, list]:
        first = members[0]
        sub = grounding if whole else grounding.rows(rows)
        return choose_grounded(
            v_hat if whole else v_hat[rows], sub, first.lane, [d._recent for d in members], first.schedule,
            first.dup_threshold, None if c_max is None else np.asarray(c_max)[rows],
            None if fallbacks is None else [fallbacks[i] for i in rows],
            _decision_values(members),
        )

    return _decide_in_groups(decoders, v_hat.shape[1], lambda d: (id(d.lane), id(d.schedule), d.dup_threshold), decide)
