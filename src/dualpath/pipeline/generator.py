"""End-to-end dual-path generation: prompt text → concepts → context → one decided vector per step.

Per step (the picture in docs/architecture.md):
    v̂ = LVM(context)                    the generated next vector
    q  = QueryTower(context), else v̂     the retrieval query (v̂ when the bank has no trained tower)
    shortlist = bank top-K for q, the context's own concepts removed
    v_t, record = decoder.step(v̂, shortlist)   SNAP / BLEND / NOVEL / NOVEL_DUP_DROP
    v_t is rendered as text: the nearest bank concept the stream has not shown yet (a SNAP is its n*).
    v_t (or, with `generation.feedback: rendered`, the rendered concept) is appended to the context.

A stream never shows one concept twice within its lane's repeat window: the decoder removes shown
concepts from every shortlist and rendering skips them. Fed its own outputs, a deterministic LVM
converges to a fixed point (successive predictions at cosine ~0.99 after two steps); without this
rule every step would then render as the same sentence. Nor does it say again in other words what
its prompt or its window's steps said: a concept at the paraphrase cosine or closer to one of those
vectors is passed over by SNAP, BLEND and rendering alike (checked on the vectors in hand, with no
search of its own).

Retrieval is advisory: a failed, slow or empty search gives a fallback shortlist and the step is
NOVEL with the reason recorded; generation always completes.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dualpath.bank import ConceptBank, layout
from dualpath.config import DualPathConfig
from dualpath.corpus import segment_sentences
from dualpath.decider import (
    GREEDY,
    Decision,
    DecisionRecord,
    DualPathDecoder,
    Lane,
    Sampling,
    Shortlist,
    ShortlistBatch,
    SnapConfidence,
    SyncMiner,
    TelemetrySink,
    ThreadedMiner,
    best_first,
    get_lane,
    ground_streams,
    id_member,
    id_rows,
    is_paraphrase,
    nearest_unsaid,
    step_streams,
    to_shortlist_batch,
    to_shortlists,
    used_rows,
)
from dualpath.errors import CheckpointError, DualPathError
from dualpath.models.heuristics import normalize_rows
from dualpath.models.incremental import lvm_stream, tower_stream
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.sampler import LVMSampler, load_lvm_sampler
from dualpath.models.towers import QueryTower
from dualpath.pipeline.calibrated_lanes import bank_lanes, read_calibration, read_confidence, stale_models
from dualpath.pipeline.grounding import (
    EVEN_ODDS,
    StreamAnchors,
    bank_successors,
    ground_step,
    prompt_anchors,
    said_in_prompt,
)
from dualpath.runtime import one_blas_thread, resolve_device, torch_threads
from dualpath.search import excluded_depth, search_excluding

log = logging.getLogger(__name__)

VERBATIM_COSINE = 0.999  # a bank concept this close to a prompt concept is that concept
BIG_COPY = 1 << 22  # values: a shortlist read this large is widened on BIG_COPY_THREADS threads
BIG_COPY_THREADS = 2
# The sampler's noise is drawn from a generator seeded by (the stream's seed, LVM_NOISE): its own
# sequence, so sampling v̂ does not shift the decoder's shortlist draws.
LVM_NOISE = 1
LVM_TEMPERATURE_MAX = 2.0  # as GenerationConfig.lvm_temperature allows
RENDER_DEPTH = 16  # nearest concepts a rendering search looks through for one that is no paraphrase


@dataclass(frozen=True)
class RenderedText:
    """Text for a vector: the bank concept `concept_id` with cosine `cosine`; `approximate` unless exact."""

    text: str
    concept_id: int
    cosine: float
    approximate: bool


class TextRenderer(Protocol):
    """Turns output vectors into text. The default finds the nearest bank concept; a real inversion
    model (e.g. vec2text, where a user has its weights) can render novel vectors instead."""

    def render(self, vectors: np.ndarray, exclude: Sequence[np.ndarray]) -> list[RenderedText]: ...


class NearestConceptRenderer:
    """Renders a vector as its nearest bank concept (context concepts excluded), marked approximate."""

    def __init__(self, bank: ConceptBank) -> None:
        self.bank = bank

    def render(
        self,
        vectors: np.ndarray,
        exclude: Sequence[np.ndarray],
        avoided: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[RenderedText]:
        """`avoided` (`avoid_rows` of what each stream said): the nearest of the first RENDER_DEPTH
        concepts that is no paraphrase of it; where all are, the nearest (rare: said by the text)."""
        depth = 1 if avoided is None else RENDER_DEPTH
        ids, scores = search_excluding(self.bank.search, normalize_rows(vectors), depth, exclude)
        pick = np.zeros(len(ids), np.int64)
        if avoided is not None and len(ids):
            found = ids >= 0
            candidates = gather_vectors(self.bank, np.where(found, ids, 0).ravel()).reshape(*ids.shape, -1)
            best, _ = nearest_unsaid(np.where(found, scores, -np.inf), candidates, avoided)
            pick = np.maximum(best, 0)
        rows = np.arange(len(ids))
        chosen, cosines = ids[rows, pick].tolist(), scores[rows, pick].tolist()
        found = [cid for cid in chosen if cid >= 0]
        texts = dict(zip(found, self.bank.texts(found), strict=True))  # one metadata read for the batch
        return [
            RenderedText(texts[cid], cid, float(cos), True) if cid >= 0 else RenderedText("", -1, float("nan"), True)
            for cid, cos in zip(chosen, cosines, strict=True)
        ]


@dataclass(frozen=True)
class PromptMatch:
    """A prompt sentence and its nearest bank concept (-1: none): `said` where the concept is close enough
    to count as the prompt's own (`generation.prompt_anchor_cosine`), and is never shown."""

    sentence: str
    concept_id: int
    text: str
    cosine: float
    said: bool


@dataclass
class GenerationStep:
    """Everything one step produced: the decision record, the vector, the text and stage latencies."""

    record: DecisionRecord
    vector: np.ndarray
    text: str
    text_concept_id: int
    text_cosine: float
    approximate: bool
    neighbour_text: str | None
    query_source: str  # "tower" or "lvm"
    latency_ms: dict[str, float] = field(default_factory=dict)
    lvm_vector: np.ndarray | None = None  # v̂, the LVM's prediction before the decision

    def to_dict(self, with_vector: bool = False) -> dict[str, Any]:
        out = {
            **self.record.to_dict(),
            "text": self.text,
            "text_concept_id": self.text_concept_id,
            "text_cosine": self.text_cosine,
            "approximate": self.approximate,
            "neighbour_text": self.neighbour_text,
            "query_source": self.query_source,
            "stage_latency_ms": self.latency_ms,
        }
        if with_vector:
            out["vector"] = self.vector.tolist()
        return out


def search_shortlists(
    bank: ConceptBank,
    miner: SyncMiner | ThreadedMiner,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray],
    timeout: float | None = None,
) -> list[Shortlist]:
    """Top-k shortlists for a batch of queries with each row's `exclude` ids removed.

    Asks the miner for k + len(exclude) so that k candidates survive the removal; a timeout or
    an error gives fallback shortlists (the decider turns them into NOVEL with the reason).
    """
    result = miner.search(queries, excluded_depth(k, exclude), timeout=timeout)
    return to_shortlists(result, bank.vectors, bank.dim, exclude=exclude, k=k)


SMALL_READ = 64  # rows below which numpy widens float16 faster than torch's call overhead


def gather_vectors(bank: ConceptBank, ids: np.ndarray) -> np.ndarray:
    """Float32 vectors of bank concepts, read at the bank's dtype (float16: half the bytes) and widened once.

    numpy widens float16 one element at a time (~2 ns each: 0.3 ms for a 500 × 384 shortlist,
    more than the decision); torch's vectorised kernel does it ~13× faster, on one thread (with its
    default team a loaded 2-core machine measured 12 ms for the same rows). Below SMALL_READ rows
    (a step's few candidates) numpy is quicker than the hand-over to torch.
    """
    # The plain array under the memory map: a memmap's own indexing wraps every result (~40 µs a call).
    rows = np.asarray(bank.all_vectors())[np.asarray(ids, dtype=np.int64)]
    if rows.dtype == np.float16 and rows.shape[0] >= SMALL_READ:
        with torch_threads(1):
            return torch.from_numpy(np.ascontiguousarray(rows)).float().numpy()
    return np.asarray(rows, dtype=np.float32)


class ShortlistReader:
    """Reads bank rows as float32 into two buffers (the bank's dtype, float32) reused from step to step.

    A step's shortlists are b × K rows (256 × 500 × 384: 98 MB at float16, 196 MB widened). Fresh
    arrays that size are new pages every step, and the page faults cost more than the copy: widening
    256 × 500 rows took 137 ms into a new array and 40 ms into a reused one. What a call returns is a
    view that the next call overwrites: one reader per step loop, read within the step.
    """

    def __init__(self, bank: ConceptBank) -> None:
        self.bank = bank
        self._matrix: tuple[np.ndarray, torch.Tensor] | None = None
        self._stored = torch.zeros(0, bank.dim)
        self._wide = torch.zeros(0, bank.dim)

    def _bank_matrix(self) -> torch.Tensor:
        """The bank's vectors as a tensor over the same memory (made again if the bank swapped versions)."""
        matrix = self.bank.all_vectors()
        if self._matrix is None or self._matrix[0] is not matrix:
            with warnings.catch_warnings():  # read-only memory map: only ever read
                warnings.simplefilter("ignore", UserWarning)
                self._matrix = (matrix, torch.from_numpy(matrix))
        return self._matrix[1]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        # torch's index_select into a buffer: numpy's take with `out` was 3.6x slower (85 ms against 23).
        matrix = self._bank_matrix()
        index = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        n = len(index)
        if len(self._wide) < n:
            self._stored = torch.empty(n, self.bank.dim, dtype=matrix.dtype)
            self._wide = torch.empty(n, self.bank.dim)
        # One thread (see gather_vectors), but two for a batch's worth: 49 M values widened in 38 ms on one
        # thread and 20 ms on two, where a thread team's start-up is lost in the copy.
        with torch_threads(BIG_COPY_THREADS if n * self.bank.dim >= BIG_COPY else 1):
            if matrix.dtype == torch.float32:
                return torch.index_select(matrix, 0, index, out=self._wide[:n]).numpy()
            torch.index_select(matrix, 0, index, out=self._stored[:n])
            return self._wide[:n].copy_(self._stored[:n]).numpy()


def search_shortlist_batch(
    bank: ConceptBank,
    miner: SyncMiner | ThreadedMiner,
    queries: np.ndarray,
    k: Sequence[int],
    exclude: Sequence[np.ndarray],
    timeout: float | None = None,
    reader: ShortlistReader | None = None,
) -> tuple[ShortlistBatch, np.ndarray]:
    """`search_shortlists` for a batch as one ShortlistBatch (row i keeps its first k[i]) and each row's
    score floor (see `to_shortlist_batch`): one index call, one vector read, no per-stream loop.
    With a `reader`, the vectors are its buffer (valid until its next read)."""
    depth = max(k)
    result = miner.search(queries, excluded_depth(depth, exclude), timeout=timeout)
    gather = reader if reader is not None else (lambda ids: gather_vectors(bank, ids))
    batch, floor = to_shortlist_batch(result, gather, bank.dim, exclude=exclude, k=depth, unit=True)
    limits = np.asarray(k)
    if batch.ids.shape[1] and (limits < depth).any():  # lanes of one batch may differ in K
        cut = np.arange(batch.ids.shape[1])[None, :] >= limits[:, None]
        ids = np.where(cut, -1, batch.ids)
        fallbacks = tuple(f if f is not None or (row >= 0).any() else "empty" for f, row in zip(
            batch.fallbacks, ids, strict=True))
        floor = np.where(limits < depth, np.inf, floor).astype(np.float32)
        batch = ShortlistBatch(ids, batch.vectors, fallbacks, batch.unit)
    return batch, floor


class Unsayable:
    """What each stream may not say again, as `avoid_rows` stacks it, kept from step to step: its prompt's
    concepts (at the paraphrase cosine, or verbatim when the rule is off) and, for its lane's repeat window,
    the concepts it showed. The shown ones sit in a ring per stream (a paraphrase is a match to any row,
    so their order does not matter); a step reads the arrays as they are and writes only the new rows."""

    def __init__(self, contexts: Sequence[np.ndarray], windows: Sequence[int], theta: float, dim: int) -> None:
        b = len(contexts)
        prompt = max((len(c) for c in contexts), default=0)
        self.windows = np.array([w if theta < 1.0 else 0 for w in windows], dtype=np.int64)
        # float64, as the paraphrase check reads them (it would convert them at every check otherwise)
        self.vectors = np.zeros((b, prompt + int(self.windows.max(initial=0)), dim), np.float64)
        self.limits = np.full(self.vectors.shape[:2], np.inf)
        for i, context in enumerate(contexts):
            self.vectors[i, : len(context)] = context
            self.limits[i, : len(context)] = min(theta, VERBATIM_COSINE)
        self.prompt = prompt
        self.theta = theta
        self.count = np.zeros(b, np.int64)

    def stacked(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(b, m, d) vectors and (b, m) limits (inf: an empty row), None when there is nothing to avoid. The
        rings fill their slots in order, so only as many as the most any stream has shown are read."""
        width = self.prompt + int(np.minimum(self.windows, self.count).max(initial=0))
        return (self.vectors[:, :width], self.limits[:, :width]) if width else None

    def push(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Streams `rows` showed `vectors` (one each): each replaces the oldest in the stream's window."""
        keep = self.windows[rows] > 0
        rows, vectors = rows[keep], vectors[keep]
        if rows.size:
            slots = self.prompt + self.count[rows] % self.windows[rows]
            self.vectors[rows, slots] = vectors
            self.limits[rows, slots] = self.theta
            self.count[rows] += 1


def left_padded(windows: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Context windows of different lengths as one left-padded (b, C, d) batch and its mask."""
    width = max(len(w) for w in windows)
    ctx = np.zeros((len(windows), width, dim), dtype=np.float32)
    mask = np.zeros((len(windows), width), dtype=bool)
    for i, window in enumerate(windows):
        ctx[i, width - len(window) :] = window
        mask[i, width - len(window) :] = True
    return ctx, mask


def _first(shortlist: Shortlist, k: int) -> Shortlist:
    """A stream's own K out of a batch's deeper shortlist (lanes of one batch may differ in K)."""
    if shortlist.fallback is not None or len(shortlist) <= k:
        return shortlist
    return Shortlist(shortlist.ids[:k], shortlist.vectors[:k])


def shortlist_nearest(
    outputs: np.ndarray,
    shortlists: ShortlistBatch,
    floors: np.ndarray,
    queries: np.ndarray,
    skips: Sequence[np.ndarray],
    rows: Sequence[int],
    avoided: tuple[np.ndarray, np.ndarray] | None = None,
    scored: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[int, tuple[int, float]]:
    """{row: (id, cosine)} for the rows whose nearest allowed bank concept to the output is provably a
    shortlist candidate, so rendering needs no search. Allowed: not in the row's `skips`, and no
    paraphrase of its `avoided` vectors (see `avoid_rows`).

    Every concept outside row i's shortlist scores at most s = floors[i] against its query q
    (the index returns results best first). For unit o with t = o·q > s, such a concept n has
    o·n ≤ cos(arccos s - arccos t) = s t + √(1 - s²) √(1 - t²) (and ≤ 1 when t ≤ s). A candidate
    above that bound is the nearest in the whole bank, which is what the rendering search would
    return; rows without such a candidate are left to it.

    `scored` = (u (b, d), s (b, K)): scores of the same shortlists against unit vectors u, made earlier in
    the step (the decision's pass over them), -inf where the row could not take that candidate anyway (a
    padding row, an id it showed, a paraphrase of what it said). A row whose output equals its u takes
    those scores, the ones this pass would compute (the same product on the same arrays), and its
    shortlist is not read again.
    """
    rows = [i for i in rows if np.isfinite(floors[i]) and shortlists.fallbacks[i] is None]
    if not rows or not shortlists.ids.shape[1]:
        return {}
    if len(rows) == 1:
        return _nearest_in_one_shortlist(outputs, shortlists, floors, queries, skips, rows[0], avoided, scored)
    # Masked to `rows` over the whole batch: selecting rows would copy every (K, d) shortlist.
    chosen = np.zeros(len(shortlists), bool)
    chosen[rows] = True
    o = normalize_rows(outputs)
    ids = shortlists.ids
    allowed = (ids >= 0) & chosen[:, None]
    skipped = id_rows(list(skips), len(shortlists), "skip list")
    if skipped.shape[1]:
        allowed &= ~id_member(ids, skipped)
    # A row whose output is the unit vector the decision scored reuses its scores; the rest are scored here,
    # one mat-vec each (the stacked product's own call, so the same values): SNAP rows are never read.
    if scored is None:
        raw, fresh = np.zeros(ids.shape, np.float32), rows
    else:
        same = (o[rows] == scored[0][rows]).all(axis=1)
        fresh = [i for i, reused in zip(rows, same.tolist(), strict=True) if not reused]
        raw = scored[1].copy() if fresh else scored[1]
    for i in fresh:
        np.matmul(shortlists.vectors[i], o[i], out=raw[i])
    scores = np.where(allowed, raw, -np.inf)
    best, _ = nearest_unsaid(scores, shortlists.vectors, avoided)
    best = best[rows]
    top = np.where(best >= 0, scores[rows, np.maximum(best, 0)], -np.inf)
    ids = ids[rows]
    s = floors[rows].astype(np.float64)
    t = np.einsum("bd,bd->b", o[rows], queries[rows]).astype(np.float64)
    with np.errstate(invalid="ignore"):
        bound = np.where(t > s, s * t + np.sqrt(np.clip(1 - s * s, 0, 1)) * np.sqrt(np.clip(1 - t * t, 0, 1)), 1.0)
    sure = top > bound + 1e-6  # a margin over float32 rounding of the scores
    return {i: (int(ids[j, best[j]]), float(top[j])) for j, i in enumerate(rows) if sure[j]}


def _nearest_in_one_shortlist(
    outputs: np.ndarray,
    shortlists: ShortlistBatch,
    floors: np.ndarray,
    queries: np.ndarray,
    skips: Sequence[np.ndarray],
    i: int,
    avoided: tuple[np.ndarray, np.ndarray] | None,
    scored: tuple[np.ndarray, np.ndarray] | None,
) -> dict[int, tuple[int, float]]:
    """`shortlist_nearest` for row i alone, on scalars: the candidates are tried best first, and only the one
    that is best so far is checked against the row's skips and paraphrases (masking all K first cost a
    single stream's step more than the proof saves). The same products, so the same answer as a batch's."""
    o = normalize_rows(outputs[i : i + 1])
    ids = shortlists.ids[i]
    if scored is not None and np.array_equal(o, scored[0][i : i + 1]):
        raw = scored[1][i]
    else:
        raw = np.matmul(shortlists.vectors[i : i + 1], o[:, :, None])[0, :, 0]
    scores = np.where(ids >= 0, raw, -np.inf)
    skipped = set(np.asarray(skips[i]).tolist())
    allowed = (j for j in best_first(scores) if int(ids[j]) not in skipped and (
        avoided is None or not is_paraphrase(shortlists.vectors[i, j], avoided[0][i], avoided[1][i])))
    j = next(allowed, -1)
    if j < 0:  # nothing allowed: the rendering search decides
        return {}
    top = float(raw[j])
    s = float(floors[i])
    t = float(np.einsum("bd,bd->b", o, queries[i : i + 1])[0])
    bound = 1.0
    if t > s:
        bound = s * t + math.sqrt(min(max(1 - s * s, 0.0), 1.0)) * math.sqrt(min(max(1 - t * t, 0.0), 1.0))
    return {i: (int(ids[j]), top)} if top > bound + 1e-6 else {}


class Generator:
    """A bank with its trained models, ready to generate. Thread-safe: each call has its own decoder."""

    def __init__(
        self,
        bank: ConceptBank,
        lvm: LatentVectorModel,
        tower: QueryTower | None,
        lanes: dict[str, Lane],
        cfg: DualPathConfig,
        miner: SyncMiner | ThreadedMiner | None = None,
        renderer: TextRenderer | None = None,
        sampler: LVMSampler | None = None,
    ) -> None:
        self.bank = bank
        self.lvm = lvm
        # Draws each step's v̂ around the LVM's mean (models/sampler.py); None: v̂ is the mean.
        self.sampler = sampler
        self.tower = tower
        self.lanes = lanes
        self.cfg = cfg
        self.miner = miner if miner is not None else SyncMiner(bank)
        self.renderer = renderer if renderer is not None else NearestConceptRenderer(bank)
        self.context_size = lvm.context
        # Every step's decision record goes here as one JSON line when set (`--telemetry FILE`).
        self.telemetry: TelemetrySink | None = None
        self._paraphrase_set_by_user = "paraphrase_cosine" in cfg.generation.model_fields_set
        # The SNAP confidence of `rule: confidence` lanes (the bank's calibration, else the shipped default).
        self.confidence: SnapConfidence = read_confidence(None)
        self.calibration_stale: list[str] = []  # why the bank's calibration is not used (stale_models)
        self._successors: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_bank(
        cls,
        bank: ConceptBank | str | Path,
        cfg: DualPathConfig | None = None,
        lvm_dir: str | Path | None = None,
        tower_dir: str | Path | None = None,
        threaded: bool = False,
        calibrating: bool = False,
    ) -> Generator:
        """Open a bank and its models (`models/lvm`, `models/tower` inside it unless given).

        `calibrating=True` for a generator opened to calibrate the bank: it does not warn that the bank
        is uncalibrated.
        """
        cfg = cfg or DualPathConfig()
        bank = bank if isinstance(bank, ConceptBank) else ConceptBank.open(bank, cfg)
        lvm_path = Path(lvm_dir) if lvm_dir else layout.lvm_dir(bank.path)
        try:
            lvm = LatentVectorModel.load(lvm_path, bank.dim, bank.encoder_name, resolve_device(cfg.device))
        except CheckpointError as err:
            raise DualPathError(
                f"{err}; train one with `dualpath train lvm --bank {bank.path}` (or run `dualpath demo`)"
            ) from None
        try:
            sampler = load_lvm_sampler(lvm_path, lvm.net, bank.dim, bank.encoder_name, resolve_device(cfg.device))
        except CheckpointError as err:
            raise DualPathError(
                f"{err}; retrain it with `dualpath train lvm --bank {bank.path}`, or remove the LVM's sampler/ "
                "folder to generate with the LVM's mean"
            ) from None
        tower_path = Path(tower_dir) if tower_dir else layout.tower_dir(bank.path)
        tower = None
        if tower_dir is not None or tower_path.exists():
            tower = QueryTower.load(tower_path, bank.dim, bank.encoder_name, resolve_device(cfg.device))
        else:
            log.warning("no trained query tower at %s: retrieval uses the LVM's vector as the query", tower_path)
        miner = ThreadedMiner(bank) if threaded else SyncMiner(bank)
        generator = cls(bank, lvm, tower, {}, cfg, miner=miner, sampler=sampler)
        generator.apply_calibration(warn=not calibrating)
        return generator

    def apply_calibration(self, warn: bool = True) -> None:
        """(Re)read the bank's calibration: each lane's thresholds, the SNAP confidence and the near-duplicate
        cosine. A calibration measured with other models than this generator's is not used (it says so)."""
        calibration = read_calibration(self.bank.path) or {}
        changed = stale_models(calibration, self.lvm, self.tower, self.sampler)
        if changed:
            log.warning(
                "the calibration of %s is out of date (%s): it is not used, and "
                "the lanes run uncalibrated until `dualpath calibrate --bank %s`", self.bank.path,
                ", ".join(changed), self.bank.path,
            )
            calibration = {}
        self.lanes = bank_lanes(self.bank, self.cfg.decider.lanes_file, warn=warn and not changed,
                                use_calibration=not changed)
        if "dup_threshold" in calibration:
            # Measured where "the same concept again" begins in this bank's embedding space.
            decider = self.cfg.decider.model_copy(update={"dup_threshold": calibration["dup_threshold"]})
            self.cfg = self.cfg.model_copy(update={"decider": decider})
        if "paraphrase_cosine" in calibration:
            self.use_paraphrase_cosine(calibration["paraphrase_cosine"])
        self.confidence = read_confidence(self.bank.path if calibration else None)
        self.calibration_stale = changed
        calibrated_at = calibration.get("lvm_temperature")
        used = self.lvm_temperature
        if warn and calibrated_at is not None and abs(float(calibrated_at) - used) > 1e-6:
            log.warning(
                "the lanes were calibrated on streams at LVM temperature %g, generation runs at %g: their "
                "SNAP/BLEND/NOVEL shares will differ (recalibrate with `dualpath calibrate`)", calibrated_at, used,
            )

    @property
    def lvm_temperature(self) -> float:
        """The temperature this generator draws v̂ at by default: 0 (the LVM's mean) without a sampler."""
        return self.cfg.generation.lvm_temperature if self.sampler is not None else 0.0

    def use_paraphrase_cosine(self, value: float) -> None:
        """Use a bank's measured paraphrase cosine, unless the configuration sets its own."""
        if self._paraphrase_set_by_user:
            return
        generation = self.cfg.generation.model_copy(update={"paraphrase_cosine": float(value)})
        self.cfg = self.cfg.model_copy(update={"generation": generation})

    def successors(self) -> np.ndarray:
        """The bank's successor table (made once per bank size: `bank add` appends documents)."""
        if self._successors is None or self._successors[0] != len(self.bank):
            self._successors = (len(self.bank), bank_successors(self.bank))
        return self._successors[1]

    def close(self) -> None:
        self.miner.close()
        if self.telemetry is not None:
            self.telemetry.close()

    def lane(self, name: str | None) -> Lane:
        return get_lane(self.lanes, name or self.cfg.decider.default_lane)

    def sampling(self) -> Sampling:
        """The sampling settings of `cfg.generation` (temperature 0: greedy)."""
        gen = self.cfg.generation
        if gen.temperature == 0:
            return GREEDY
        return Sampling(gen.temperature, gen.top_k, gen.top_p)

    def decoder(
        self, lane: str | Lane | None = None, sampling: Sampling | None = None, seed: int | None = None
    ) -> DualPathDecoder:
        # Lanes are resolved here, not by the decoder: this generator's lanes carry the bank's calibration.
        return DualPathDecoder.from_config(
            self.cfg.decider,
            lane if isinstance(lane, Lane) else self.lane(lane),
            sampling=sampling if sampling is not None else self.sampling(),
            seed=seed if seed is not None else self.cfg.generation.seed,
        )

    def segment_prompt(self, prompt: str) -> list[str]:
        """The prompt's concepts a generation reads (its sentences, the last `prompt_concepts` of them); a
        DualPathError if it holds none."""
        concepts = segment_sentences(prompt, self.cfg.segment)
        if not concepts:
            raise DualPathError("the prompt holds no text to generate from")
        return concepts[-self.prompt_concepts :]

    @property
    def prompt_concepts(self) -> int:
        """How many of a prompt's last concepts are encoded: the models' context, and the decoder's memory
        (the stream may not restate them), whichever is longer. Earlier sentences are never read, so a
        long prompt costs no more than this many sentences."""
        return max(self.context_size, self.cfg.decider.memory_cap)

    def encode_prompt(self, prompt: str) -> tuple[list[str], np.ndarray]:
        """Segment a prompt into concepts and encode the ones a generation reads: (texts, (t, d) vectors)."""
        concepts = self.segment_prompt(prompt)
        return concepts, self.bank.encoder().encode(concepts)

    def match_prompt(self, prompt: str, hidden_ids: Sequence[int] = ()) -> list[PromptMatch]:
        """The sentences of `prompt` a generation reads, each with its nearest bank concept (`hidden_ids`
        treated as absent): the anchors its grounding starts from, and the concepts it counts as said.
        A generation gives the same list for its prompt without encoding it twice (`generate`'s `prompt_out`)."""
        concepts, vectors = self.encode_prompt(prompt)
        hidden = np.unique(np.asarray(hidden_ids, dtype=np.int64))
        return self._prompt_matches(concepts, prompt_anchors(self.bank, [normalize_rows(vectors)], [hidden])[0])

    def _prompt_matches(self, sentences: Sequence[str], found: tuple[np.ndarray, np.ndarray, np.ndarray]
                        ) -> list[PromptMatch]:
        """`sentences` beside their `prompt_anchors` matches, with the concepts' texts (one metadata read)."""
        ids, cos, _ = found
        known = [int(i) for i in ids if i >= 0]
        texts = dict(zip(known, self.bank.texts(known), strict=True))
        said = said_in_prompt(ids, cos, self.cfg.generation.prompt_anchor_cosine).tolist()
        return [
            PromptMatch(sentence, int(i), texts.get(int(i), ""), float(c), bool(s))
            for sentence, i, c, s in zip(sentences, ids.tolist(), cos.tolist(), said, strict=True)
        ]

    def generate(
        self,
        prompt: str | np.ndarray,
        steps: int | None = None,
        lane: str | Lane | None = None,
        context_ids: Sequence[int] = (),
        render: bool = True,
        sampling: Sampling | None = None,
        seed: int | None = None,
        decoder: DualPathDecoder | None = None,
        lvm_temperature: float | None = None,
        hidden_ids: Sequence[int] = (),
        prompt_out: list[PromptMatch] | None = None,
    ) -> Iterator[GenerationStep]:
        """Yield one GenerationStep per step. `prompt` is text or an already encoded (t, d) context.

        `context_ids` are bank ids of the prompt's concepts: they are removed from shortlists and
        renderings (the context must not find itself). Bank concepts that are the prompt's verbatim,
        or paraphrase it, are passed over too, by their vectors, and so is the bank concept nearest each
        prompt concept at `generation.prompt_anchor_cosine` or closer (a restated sentence's original).
        Concepts the stream shows (and their paraphrases) are passed over for the lane's repeat window.
        `sampling`, `seed` and `lvm_temperature` (how widely the sampler draws v̂ around the LVM's mean;
        0 = the mean) default to `cfg.generation`'s; `decoder` (one made by `self.decoder`, or a
        baseline's) replaces the lane's own. `hidden_ids`: bank ids the stream treats as absent from the
        bank (never shown, never matched: a document kept out, as evaluation's *unknown* case does).
        `prompt_out`, when given, receives `match_prompt`'s list for a text prompt before the first step is
        yielded: the run's own search, not a second one.
        """
        steps = self._check_steps(steps)
        decoder = decoder if decoder is not None else self.decoder(lane, sampling, seed)
        contexts, excludes, encode_ms, sentences = self._prepare([prompt], [context_ids])
        hidden = np.unique(np.asarray(hidden_ids, dtype=np.int64))
        found = prompt_anchors(self.bank, contexts, [hidden])
        if prompt_out is not None and sentences[0] is not None:
            prompt_out.extend(self._prompt_matches(sentences[0], found[0]))
        runs = self._run(contexts, [np.union1d(excludes[0], hidden)], [decoder], steps, render, lvm_temperature, found)
        for number, batch in enumerate(runs):
            step = batch[0]
            if number == 0 and encode_ms:
                step.latency_ms["encode"] = encode_ms
                step.latency_ms["total"] += encode_ms
            yield step

    def generate_batch(
        self,
        prompts: Sequence[str | np.ndarray],
        steps: int | None = None,
        lane: str | Lane | None = None,
        context_ids: Sequence[Sequence[int]] | None = None,
        render: bool = True,
        sampling: Sampling | None = None,
        seed: int | None = None,
        decoders: Sequence[DualPathDecoder] | None = None,
        lvm_temperature: float | None = None,
        hidden_ids: Sequence[Sequence[int]] | None = None,
        prompts_out: list[list[PromptMatch]] | None = None,
    ) -> list[list[GenerationStep]]:
        """Many streams at once: one LVM call, one tower call, one search and one rendering search per step.

        Stream i runs as `generate(prompts[i], ..., seed=seed + i)` would (its own decoder and
        memory; `decoders` replaces them). Returns each stream's steps; stage latencies are the
        batch's, divided by the number of streams. `prompts_out`, when given, receives one `match_prompt`
        list per prompt (empty for an encoded one).
        """
        steps = self._check_steps(steps)
        if not prompts:
            return []
        base_seed = seed if seed is not None else self.cfg.generation.seed
        if decoders is None:
            decoders = [self.decoder(lane, sampling, base_seed + i) for i in range(len(prompts))]
        if len(decoders) != len(prompts):
            raise DualPathError(f"{len(prompts)} prompts but {len(decoders)} decoders")
        ids = context_ids if context_ids is not None else [()] * len(prompts)
        if len(ids) != len(prompts):
            raise DualPathError(f"{len(prompts)} prompts but {len(ids)} context id lists")
        contexts, excludes, _, sentences = self._prepare(prompts, ids)
        hidden = [np.unique(np.asarray(h, dtype=np.int64)) for h in (hidden_ids or [()] * len(prompts))]
        if len(hidden) != len(prompts):
            raise DualPathError(f"{len(prompts)} prompts but {len(hidden)} hidden id lists")
        excludes = [np.union1d(e, h) for e, h in zip(excludes, hidden, strict=True)]
        found = prompt_anchors(self.bank, contexts, hidden)
        if prompts_out is not None:
            prompts_out.extend([] if text is None else self._prompt_matches(text, match)
                               for text, match in zip(sentences, found, strict=True))
        streams: list[list[GenerationStep]] = [[] for _ in prompts]
        for batch in self._run(contexts, excludes, list(decoders), steps, render, lvm_temperature, found):
            for stream, step in zip(streams, batch, strict=True):
                stream.append(step)
        return streams

    def _check_steps(self, steps: int | None) -> int:
        steps = steps if steps is not None else self.cfg.generation.steps
        if not 1 <= steps <= self.cfg.generation.max_steps:
            raise DualPathError(f"steps must be between 1 and {self.cfg.generation.max_steps}, got {steps}")
        return steps

    def _prepare(
        self, prompts: Sequence[str | np.ndarray], context_ids: Sequence[Sequence[int]]
    ) -> tuple[list[np.ndarray], list[np.ndarray], float, list[list[str] | None]]:
        """(context vectors (t, d), ids to exclude) per text or vector prompt, the encoding ms, and each text
        prompt's sentences that were encoded (None for a vector prompt).

        Each text prompt is encoded on its own: one encoder call for many prompts was no faster per
        sentence on this CPU (docs/service.md), and this way a prompt's vectors are the same alone
        or in a batch.
        """
        texts = {i: self.segment_prompt(p) for i, p in enumerate(prompts) if isinstance(p, str)}
        t0 = time.perf_counter()
        encoder = self.bank.encoder() if texts else None
        encoded = {i: encoder.encode(concepts) for i, concepts in texts.items()} if encoder is not None else {}
        encode_ms = (time.perf_counter() - t0) * 1000 if texts else 0.0
        contexts: list[np.ndarray] = []
        for i, prompt in enumerate(prompts):
            if i in encoded:
                contexts.append(normalize_rows(encoded[i]))
                continue
            context = normalize_rows(np.atleast_2d(np.asarray(prompt, dtype=np.float32)))
            if context.shape[1] != self.bank.dim:
                raise DualPathError(f"context vectors have dimension {context.shape[1]}, the bank {self.bank.dim}")
            contexts.append(context)
        excluded = [np.unique(np.asarray(ids, dtype=np.int64)) for ids in context_ids]
        return contexts, excluded, encode_ms, [texts.get(i) for i in range(len(prompts))]

    def _run(
        self,
        contexts: list[np.ndarray],
        excludes: list[np.ndarray],
        decoders: list[DualPathDecoder],
        steps: int,
        render: bool,
        lvm_temperature: float | None,
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> Iterator[list[GenerationStep]]:
        """The step loop over b streams: every model, index and rendering call is made once per step.

        The LVM and the tower keep per-stream state (`generation.incremental`) and read only the
        concept each step appends; shortlists come as one batch read at the bank's dtype; the
        decisions are made once per group of streams that decide alike. With a sampler, each stream's
        v̂ is drawn around the LVM's mean from noise of its own generator (seeded by its decoder's seed).
        `found`: each stream's `prompt_anchors` (its hidden ids absent).
        """
        b = len(contexts)
        temperature = self._lvm_temperature(lvm_temperature)
        sampler = self.sampler if temperature > 0 else None
        seeds = [None if d.seed is None else [d.seed, LVM_NOISE] for d in decoders]
        noise = [np.random.default_rng(seed) for seed in seeds] if sampler is not None else []
        newest = np.stack([context[-1] for context in contexts])  # each stream's newest concept
        feedback = self.cfg.generation.feedback
        timeout = self.cfg.decider.retrieval_timeout_s
        incremental = self.cfg.generation.incremental
        lane_k = [d.lane.k for d in decoders]
        unsayable = Unsayable(contexts, [d.lane.repeat_window for d in decoders],
                              self.cfg.generation.paraphrase_cosine, self.bank.dim)
        reader = ShortlistReader(self.bank)
        # A prompt concept's nearest bank concept, this close, is the bank's version of what the prompt said (for
        # a prompt that restates a bank text, its original): showing it would say the prompt again.
        said_at = self.cfg.generation.prompt_anchor_cosine
        excludes = [np.union1d(e, ids[said_in_prompt(ids, cos, said_at)])
                    for e, (ids, cos, _) in zip(excludes, found, strict=True)]
        # Streams whose lanes ground on evidence: their anchors, the bank's successors, the confidence.
        grounded = [i for i, d in enumerate(decoders) if d.lane.rule == "confidence"]
        grounds = set(grounded)
        plain = [i for i in range(b) if i not in grounds]
        anchors = StreamAnchors([found[i] for i in grounded]) if grounded else None
        # What the grounded streams may not ground on is fixed for the generation: padded into rows once.
        blocked = id_rows([excludes[i] for i in grounded], len(grounded), "blocked ids") if grounded else None
        with torch_threads(1):
            lvm_state = lvm_stream(self.lvm, contexts, incremental)
            tower_state = tower_stream(self.tower, contexts, self.context_size, incremental) if self.tower else None

        def one_step(number: int) -> list[GenerationStep]:
            lat: dict[str, float] = {}
            t_step = time.perf_counter()
            # Small models: a second OpenMP thread only adds wake-up and spin cost
            # (measured ~100x slower per step on a busy 2-core machine).
            with torch_threads(1):
                t0 = time.perf_counter()
                v_hat = lvm_state.output()
                lat["lvm"] = (time.perf_counter() - t0) * 1000
                if sampler is not None:  # its own stage: its floor (the flow MLP's products) is not the LVM's
                    t0 = time.perf_counter()
                    draws = np.stack([rng.standard_normal(self.bank.dim, dtype=np.float32) for rng in noise])
                    v_hat = sampler.sample(v_hat, newest, draws, temperature, self.cfg.generation.sampler_steps)
                    lat["sample"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                if tower_state is not None:
                    queries, source = tower_state.output(), "tower"
                else:
                    queries, source = v_hat, "lvm"
                lat["query"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            shortlists, floors = search_shortlist_batch(
                self.bank, self.miner, queries, lane_k, excludes, timeout, reader
            )
            lat["search"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            scored: dict[str, np.ndarray] = {}  # the decision's pass over the shortlists, for rendering
            # What each stream showed in its repeat window: rows for the batched decision, a list for rendering.
            used_ids, used = (None, [decoders[0].used_array()]) if b == 1 else used_rows(decoders)
            avoided = unsayable.stacked()
            if b == 1:  # one stream: the decoder's own single-stream forms
                one = Shortlist(shortlists.ids[0], shortlists.vectors[0], shortlists.fallbacks[0], shortlists.unit)
                own = (None, None) if avoided is None else (avoided[0][0], avoided[1][0])
                if grounded:
                    assert anchors is not None
                    output, record = decoders[0].ground(
                        v_hat[0], queries[0], one, excludes[0], self.successors(),
                        (anchors.ids[0], anchors.cos[0], anchors.margin[0]), self.confidence, self._bank_rows,
                        None if avoided is None else own, scored,
                    )
                else:
                    output, record = decoders[0].step(v_hat[0], one, *own, scores_out=scored)
                outputs, records = output[None], [record]
            elif not grounded:
                outputs, records = step_streams(decoders, v_hat, shortlists, avoided, scored, used_ids)
            else:
                outputs, records = self._decide_mixed(
                    decoders, grounded, plain, v_hat, queries, shortlists, avoided, used_ids, blocked, anchors, scored
                )
            lat["decide"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            # A candidate that continues an anchor at even odds or better says the stream's text restated that
            # anchor (and for an older anchor, the concepts between): they count as shown from this step on.
            walked: dict[int, list[int]] = {}
            if anchors is not None:
                for row, i in enumerate(grounded):
                    pick = records[i].neighbour_id
                    if pick is not None and (records[i].decision is Decision.SNAP
                                             or (records[i].confidence or 0.0) >= EVEN_ODDS):
                        walked[i] = anchors.walked_past(row, pick, self.successors())
                        if walked[i]:
                            used[i] = np.concatenate([used[i], np.asarray(walked[i], np.int64)])
            rendered = self._render(render, records, outputs, shortlists, floors, queries, excludes, used, avoided,
                                    (scored["v"], scored["lvm"]) if scored else None)
            shown_ids = [r.concept_id for r in rendered]
            shown_vectors = self._concept_vectors(shown_ids)
            if anchors is not None:  # the next step's newest context concept is anchored where it was shown
                fed_as_shown = self.cfg.generation.feedback == "rendered"
                anchors.push(
                    np.array([shown_ids[i] for i in grounded]),
                    np.array([1.0 if fed_as_shown or records[i].decision is Decision.SNAP
                              else rendered[i].cosine if shown_ids[i] >= 0 else 0.0 for i in grounded]),
                )
            if render:  # what each stream showed leaves its next shortlists, as do its paraphrases
                for i, decoder in enumerate(decoders):
                    decoder.shown(shown_ids[i], walked.get(i, ()))
                showed = np.flatnonzero(np.asarray(shown_ids) >= 0)
                unsayable.push(showed, shown_vectors[showed])
            lat["render"] = (time.perf_counter() - t0) * 1000
            neighbour_text = self._neighbour_texts(records, rendered)
            if number < steps - 1:  # the models read the step's vector (after the last, nothing asks them)
                fed = outputs.copy()
                swap = [
                    i for i, (record, shown) in enumerate(zip(records, rendered, strict=True))
                    if shown.concept_id >= 0 and (
                        feedback == "rendered"
                        or (feedback == "novel-rendered"
                            and record.decision in (Decision.NOVEL, Decision.NOVEL_DUP_DROP))
                    )
                ]
                if swap:  # every stream that feeds back the concept it showed
                    fed[swap] = shown_vectors[swap]
                # Reading the new concept is the models' work for the next step: counted in their stages.
                newest[:] = fed
                with torch_threads(1):
                    t0 = time.perf_counter()
                    lvm_state.push(fed)
                    lat["lvm"] += (time.perf_counter() - t0) * 1000
                    if tower_state is not None:
                        t0 = time.perf_counter()
                        tower_state.push(fed)
                        lat["query"] += (time.perf_counter() - t0) * 1000
            lat = {name: ms / b for name, ms in lat.items()}
            lat["total"] = (time.perf_counter() - t_step) * 1000 / b
            batch = []
            for i, record in enumerate(records):
                shown = rendered[i]
                if self.telemetry is not None:
                    self.telemetry.write(record)
                batch.append(
                    GenerationStep(
                        record=record,
                        vector=outputs[i],
                        text=shown.text,
                        text_concept_id=shown.concept_id,
                        text_cosine=shown.cosine,
                        approximate=shown.approximate,
                        neighbour_text=None if record.neighbour_id is None else neighbour_text[record.neighbour_id],
                        query_source=source,
                        latency_ms=dict(lat),
                        lvm_vector=v_hat[i],
                    )
                )
            return batch

        for number in range(steps):
            with one_blas_thread():  # not across the yield: the caller's code runs there
                batch = one_step(number)
            yield batch

    def _bank_rows(self, ids: np.ndarray) -> np.ndarray:
        """Unit float32 rows of bank ids of any shape (a step's successors outside its shortlists)."""
        return gather_vectors(self.bank, ids.reshape(-1)).reshape(*ids.shape, self.bank.dim)

    def _decide_mixed(
        self,
        decoders: list[DualPathDecoder],
        grounded: list[int],
        plain: list[int],
        v_hat: np.ndarray,
        queries: np.ndarray,
        shortlists: ShortlistBatch,
        avoided: tuple[np.ndarray, np.ndarray] | None,
        used: np.ndarray | None,
        blocked: np.ndarray | None,
        anchors: StreamAnchors | None,
        scored: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[DecisionRecord]]:
        """A step whose streams include lanes that ground on evidence: those are decided on their
        grounding (`ground_step`, `ground_streams`), the rest by `step_streams`, each on its own rows.
        `scored` receives the grounding's scores of the shortlists when it scored all of them (every
        stream grounds): rendering reuses them (`shortlist_nearest`)."""
        assert anchors is not None and blocked is not None and used is not None
        b = len(decoders)

        def rows_of(batch: ShortlistBatch, rows: list[int]) -> ShortlistBatch:
            if len(rows) == b:
                return batch
            return ShortlistBatch(batch.ids[rows], batch.vectors[rows], tuple(batch.fallbacks[i] for i in rows),
                                  batch.unit)

        def avoided_of(rows: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
            return None if avoided is None else (avoided[0][rows], avoided[1][rows])

        whole = len(grounded) == b  # every stream grounds (the usual step): nothing to select
        sub = rows_of(shortlists, grounded)
        v_sub = v_hat if whole else v_hat[grounded]
        grounding, c_max = ground_step(
            self.confidence, self.successors(), anchors, v_sub, queries if whole else queries[grounded], sub,
            used if whole else used[grounded], blocked,
            avoided if whole else avoided_of(grounded),
            self._bank_rows, scored if whole else None,
        )
        out, decided = ground_streams(decoders if whole else [decoders[i] for i in grounded], v_sub, grounding,
                                      c_max, sub.fallbacks)
        if whole:  # the usual step: the grounding's outputs and records are the step's
            return out, decided
        outputs = np.empty((b, self.bank.dim), np.float32)
        records: list[DecisionRecord | None] = [None] * b
        outputs[grounded] = out
        for i, record in zip(grounded, decided, strict=True):
            records[i] = record
        if plain:
            out, decided = step_streams([decoders[i] for i in plain], v_hat[plain], rows_of(shortlists, plain),
                                        avoided_of(plain), used=used[plain])
            outputs[plain] = out
            for i, record in zip(plain, decided, strict=True):
                records[i] = record
        return outputs, [r for r in records if r is not None]

    def _lvm_temperature(self, value: float | None) -> float:
        temperature = self.cfg.generation.lvm_temperature if value is None else float(value)
        if not (np.isfinite(temperature) and 0 <= temperature <= LVM_TEMPERATURE_MAX):
            raise DualPathError(f"lvm_temperature must be between 0 and {LVM_TEMPERATURE_MAX}, got {value}")
        return temperature

    def _concept_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), d) float32 bank vectors in one read; rows of -1 (nothing shown) are zero."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.bank.dim), np.float32)
        if (ids >= 0).any():
            out[ids >= 0] = gather_vectors(self.bank, ids[ids >= 0])
        return out

    def _neighbour_texts(self, records: list[DecisionRecord], rendered: list[RenderedText]) -> dict[int, str]:
        """{n*: its bank text} for the steps' records. A step that showed n* itself (a SNAP, or any step when
        the default renderer shows bank concepts) already read its text; only the rest are looked up."""
        default = type(self.renderer) is NearestConceptRenderer
        texts = {r.neighbour_id: shown.text for r, shown in zip(records, rendered, strict=True)
                 if r.neighbour_id is not None and shown.concept_id == r.neighbour_id
                 and (default or r.decision is Decision.SNAP)}
        missing = [r.neighbour_id for r in records if r.neighbour_id is not None and r.neighbour_id not in texts]
        if missing:
            texts.update(zip(missing, self.bank.texts(missing), strict=True))
        return texts

    def _render(
        self,
        render: bool,
        records: list[DecisionRecord],
        outputs: np.ndarray,
        shortlists: ShortlistBatch,
        floors: np.ndarray,
        queries: np.ndarray,
        excludes: list[np.ndarray],
        used: list[np.ndarray],
        avoided: tuple[np.ndarray, np.ndarray] | None,
        scored: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[RenderedText]:
        """Each step's text. A SNAP is its n*. With the default renderer, a step whose nearest allowed
        concept (not shown, no paraphrase of what the stream said) is provably in its shortlist
        (`shortlist_nearest`) is rendered from it; the rest take one rendering search for the batch."""
        b = len(records)
        if not render:
            return [RenderedText("", -1, float("nan"), True)] * b
        rendered: list[RenderedText | None] = [None] * b
        skips: list[np.ndarray] = []
        for i, record in enumerate(records):
            skip = np.concatenate([excludes[i], used[i]])
            if record.decision is Decision.NOVEL_DUP_DROP and record.neighbour_id is not None:
                # The step refused n* as a repeat; rendering it as n*'s text would repeat it anyway.
                skip = np.append(skip, record.neighbour_id)
            skips.append(skip)
        snaps = [i for i, r in enumerate(records) if r.decision is Decision.SNAP and r.neighbour_id is not None]
        snapped = set(snaps)
        rest = [i for i in range(b) if i not in snapped]
        found: dict[int, tuple[int, float]] = {}
        default = type(self.renderer) is NearestConceptRenderer  # a subclass may render otherwise
        if rest and default:
            found = shortlist_nearest(outputs, shortlists, floors, queries, skips, rest, avoided, scored)
        ids = [records[i].neighbour_id for i in snaps] + [found[i][0] for i in rest if i in found]
        texts = dict(zip(ids, self.bank.texts(ids), strict=True))
        for i in snaps:
            n_id = records[i].neighbour_id
            assert n_id is not None
            rendered[i] = RenderedText(texts[n_id], n_id, 1.0, False)
        for i, (cid, cosine) in found.items():
            rendered[i] = RenderedText(texts[cid], cid, cosine, True)
        to_render = [i for i in rest if i not in found]
        if to_render:
            vectors, skipped = outputs[to_render], [skips[i] for i in to_render]
            if default and avoided is not None:
                texts_of = self.renderer.render(vectors, skipped, (avoided[0][to_render], avoided[1][to_render]))
            else:
                texts_of = self.renderer.render(vectors, skipped)
            for i, text in zip(to_render, texts_of, strict=True):
                rendered[i] = text
        return [r for r in rendered if r is not None]
