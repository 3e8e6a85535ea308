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
rule every step would then render as the same sentence.

Retrieval is advisory: a failed, slow or empty search gives a fallback shortlist and the step is
NOVEL with the reason recorded; generation always completes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

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
    SyncMiner,
    TelemetrySink,
    ThreadedMiner,
    get_lane,
    to_shortlists,
)
from dualpath.errors import CheckpointError, DualPathError
from dualpath.models.heuristics import normalize_rows
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.pipeline.calibrated_lanes import bank_lanes, read_calibration
from dualpath.runtime import resolve_device, torch_threads
from dualpath.search import excluded_depth, search_excluding

log = logging.getLogger(__name__)

VERBATIM_COSINE = 0.999  # a prompt concept this close to a bank concept is that concept


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

    def render(self, vectors: np.ndarray, exclude: Sequence[np.ndarray]) -> list[RenderedText]:
        ids, scores = search_excluding(self.bank.search, normalize_rows(vectors), 1, exclude)
        out = []
        for cid, score in zip(ids[:, 0].tolist(), scores[:, 0].tolist(), strict=True):
            if cid < 0:
                out.append(RenderedText("", -1, float("nan"), True))
            else:
                out.append(RenderedText(self.bank.texts([cid])[0], cid, float(score), True))
        return out


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


def _left_padded(windows: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
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
    ) -> None:
        self.bank = bank
        self.lvm = lvm
        self.tower = tower
        self.lanes = lanes
        self.cfg = cfg
        self.miner = miner if miner is not None else SyncMiner(bank)
        self.renderer = renderer if renderer is not None else NearestConceptRenderer(bank)
        self.context_size = lvm.context
        # Every step's decision record goes here as one JSON line when set (`--telemetry FILE`).
        self.telemetry: TelemetrySink | None = None

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
        tower_path = Path(tower_dir) if tower_dir else layout.tower_dir(bank.path)
        tower = None
        if tower_dir is not None or tower_path.exists():
            tower = QueryTower.load(tower_path, bank.dim, bank.encoder_name, resolve_device(cfg.device))
        else:
            log.warning("no trained query tower at %s: retrieval uses the LVM's vector as the query", tower_path)
        miner = ThreadedMiner(bank) if threaded else SyncMiner(bank)
        generator = cls(bank, lvm, tower, {}, cfg, miner=miner)
        generator.apply_calibration(warn=not calibrating)
        return generator

    def apply_calibration(self, warn: bool = True) -> None:
        """(Re)read the bank's calibration: each lane's thresholds and the near-duplicate cosine."""
        self.lanes = bank_lanes(self.bank, self.cfg.decider.lanes_file, warn=warn)
        calibration = read_calibration(self.bank.path) or {}
        if "dup_threshold" in calibration:
            # Measured where "the same concept again" begins in this bank's embedding space.
            decider = self.cfg.decider.model_copy(update={"dup_threshold": calibration["dup_threshold"]})
            self.cfg = self.cfg.model_copy(update={"decider": decider})

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

    def encode_prompt(self, prompt: str) -> tuple[list[str], np.ndarray]:
        """Segment a prompt into concepts and encode them: (texts, (t, d) vectors)."""
        concepts = segment_sentences(prompt, self.cfg.segment)
        if not concepts:
            raise DualPathError("the prompt holds no text to generate from")
        return concepts, self.bank.encoder().encode(concepts)

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
    ) -> Iterator[GenerationStep]:
        """Yield one GenerationStep per step. `prompt` is text or an already encoded (t, d) context.

        `context_ids` are bank ids of the prompt's concepts: they are removed from shortlists and
        renderings (the context must not find itself). For a text prompt, concepts that are in the
        bank verbatim are found and removed too. Concepts the stream shows are removed for the
        lane's repeat window. `sampling` and `seed` default to `cfg.generation`'s; `decoder` (one
        made by `self.decoder`, or a baseline's) replaces the lane's own.
        """
        steps = self._check_steps(steps)
        decoder = decoder if decoder is not None else self.decoder(lane, sampling, seed)
        context, exclude, encode_ms = self._prepare(prompt, context_ids)
        for number, batch in enumerate(self._run([context], [exclude], [decoder], steps, render)):
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
    ) -> list[list[GenerationStep]]:
        """Many streams at once: one LVM call, one tower call, one search and one rendering search per step.

        Stream i runs as `generate(prompts[i], ..., seed=seed + i)` would (its own decoder and
        memory; `decoders` replaces them). Returns each stream's steps; stage latencies are the
        batch's, divided by the number of streams.
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
        prepared = [self._prepare(p, c) for p, c in zip(prompts, ids, strict=True)]
        streams: list[list[GenerationStep]] = [[] for _ in prompts]
        contexts = [c for c, _, _ in prepared]
        excludes = [e for _, e, _ in prepared]
        for batch in self._run(contexts, excludes, list(decoders), steps, render):
            for stream, step in zip(streams, batch, strict=True):
                stream.append(step)
        return streams

    def _check_steps(self, steps: int | None) -> int:
        steps = steps if steps is not None else self.cfg.generation.steps
        if not 1 <= steps <= self.cfg.generation.max_steps:
            raise DualPathError(f"steps must be between 1 and {self.cfg.generation.max_steps}, got {steps}")
        return steps

    def _prepare(self, prompt: str | np.ndarray, context_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, float]:
        """(context vectors (t, d), ids to exclude, encoding ms) for a text or vector prompt."""
        encode_ms = 0.0
        if isinstance(prompt, str):
            t0 = time.perf_counter()
            _, context = self.encode_prompt(prompt)
            encode_ms = (time.perf_counter() - t0) * 1000
        else:
            context = normalize_rows(np.atleast_2d(np.asarray(prompt, dtype=np.float32)))
            if context.shape[1] != self.bank.dim:
                raise DualPathError(f"context vectors have dimension {context.shape[1]}, the bank {self.bank.dim}")
        prompt_ids = list(context_ids)
        if isinstance(prompt, str):
            prompt_ids += self._verbatim_bank_ids(context)
        return context, np.unique(np.asarray(prompt_ids, dtype=np.int64)), encode_ms

    def _run(
        self,
        contexts: list[np.ndarray],
        excludes: list[np.ndarray],
        decoders: list[DualPathDecoder],
        steps: int,
        render: bool,
    ) -> Iterator[list[GenerationStep]]:
        """The step loop over b streams: every model, index and rendering call is made once per step."""
        b = len(contexts)
        feedback = self.cfg.generation.feedback
        timeout = self.cfg.decider.retrieval_timeout_s
        contexts = list(contexts)
        for _ in range(steps):
            lat: dict[str, float] = {}
            t_step = time.perf_counter()
            ctx, mask = _left_padded([c[-self.context_size :] for c in contexts], self.bank.dim)
            # Small models: a second OpenMP thread only adds wake-up and spin cost
            # (measured ~100x slower per step on a busy 2-core machine).
            with torch_threads(1):
                t0 = time.perf_counter()
                v_hat = self.lvm.predict(ctx, mask)
                lat["lvm"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                if self.tower is not None:
                    queries, source = self.tower.encode_queries(ctx, mask), "tower"
                else:
                    queries, source = v_hat, "lvm"
                lat["query"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            k = max(d.lane.k for d in decoders)
            shortlists = search_shortlists(self.bank, self.miner, queries, k, excludes, timeout)
            shortlists = [_first(s, d.lane.k) for s, d in zip(shortlists, decoders, strict=True)]
            lat["search"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            used = [np.asarray(d.used_ids, dtype=np.int64) for d in decoders]
            decided = [d.step(v_hat[i], shortlists[i]) for i, d in enumerate(decoders)]
            lat["decide"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            records = [record for _, record in decided]
            outputs = np.stack([v for v, _ in decided])
            neighbour_ids = [r.neighbour_id for r in records if r.neighbour_id is not None]
            neighbour_text = dict(zip(neighbour_ids, self.bank.texts(neighbour_ids), strict=True))
            rendered: list[RenderedText | None] = [None] * b
            to_render: list[int] = []
            for i, record in enumerate(records):
                if not render:
                    rendered[i] = RenderedText("", -1, float("nan"), True)
                elif record.decision is Decision.SNAP and record.neighbour_id is not None:
                    rendered[i] = RenderedText(neighbour_text[record.neighbour_id], record.neighbour_id, 1.0, False)
                else:
                    to_render.append(i)
            if to_render:
                skips = []
                for i in to_render:
                    skip = np.concatenate([excludes[i], used[i]])
                    if records[i].decision is Decision.NOVEL_DUP_DROP and records[i].neighbour_id is not None:
                        # The step refused n* as a repeat; rendering it as n*'s text would repeat it anyway.
                        skip = np.append(skip, records[i].neighbour_id)
                    skips.append(skip)
                for i, text in zip(to_render, self.renderer.render(outputs[to_render], skips), strict=True):
                    rendered[i] = text
            lat["render"] = (time.perf_counter() - t0) * 1000
            lat = {name: ms / b for name, ms in lat.items()}
            lat["total"] = (time.perf_counter() - t_step) * 1000 / b
            fed = outputs.copy()
            swap = [
                i for i, (record, shown) in enumerate(zip(records, rendered, strict=True))
                if shown is not None and shown.concept_id >= 0 and (
                    feedback == "rendered"
                    or (feedback == "novel-rendered" and record.decision in (Decision.NOVEL, Decision.NOVEL_DUP_DROP))
                )
            ]
            if swap:  # one lookup for every stream that feeds back the concept it showed
                fed[swap] = self.bank.vectors([rendered[i].concept_id for i in swap])  # type: ignore[union-attr]
            batch = []
            for i, record in enumerate(records):
                shown = rendered[i]
                assert shown is not None
                if render:
                    decoders[i].shown(shown.concept_id)
                contexts[i] = np.concatenate([contexts[i], fed[i][None]])
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
            yield batch

    def _verbatim_bank_ids(self, vectors: np.ndarray) -> list[int]:
        ids, scores = self.bank.search(vectors, 1)
        return [int(i) for i, s in zip(ids[:, 0], scores[:, 0], strict=True) if i >= 0 and s >= VERBATIM_COSINE]
