"""End-to-end dual-path generation: prompt text → concepts → context → one decided vector per step.

Per step (the picture in docs/architecture.md):
    v̂ = LVM(context)                    the generated next vector
    q  = QueryTower(context), else v̂     the retrieval query (v̂ when the bank has no trained tower)
    shortlist = bank top-K for q, the context's own concepts removed
    v_t, record = decoder.step(v̂, shortlist)   SNAP / BLEND / NOVEL / NOVEL_DUP_DROP
    v_t is appended to the context and rendered as text.

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
    Decision,
    DecisionRecord,
    DualPathDecoder,
    Lane,
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
from dualpath.runtime import torch_threads
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
    ) -> Generator:
        """Open a bank and its models (`models/lvm`, `models/tower` inside it unless given)."""
        cfg = cfg or DualPathConfig()
        bank = bank if isinstance(bank, ConceptBank) else ConceptBank.open(bank, cfg)
        lvm_path = Path(lvm_dir) if lvm_dir else layout.lvm_dir(bank.path)
        try:
            lvm = LatentVectorModel.load(lvm_path, expected_dim=bank.dim, expected_encoder=bank.encoder_name)
        except CheckpointError as err:
            raise DualPathError(
                f"{err}; train one with `dualpath train lvm --bank {bank.path}` (or run `dualpath demo`)"
            ) from None
        tower_path = Path(tower_dir) if tower_dir else layout.tower_dir(bank.path)
        tower = None
        if tower_dir is not None or tower_path.exists():
            tower = QueryTower.load(tower_path, expected_dim=bank.dim, expected_encoder=bank.encoder_name)
        else:
            log.warning("no trained query tower at %s: retrieval uses the LVM's vector as the query", tower_path)
        miner = ThreadedMiner(bank) if threaded else SyncMiner(bank)
        generator = cls(bank, lvm, tower, {}, cfg, miner=miner)
        generator.apply_calibration()
        return generator

    def apply_calibration(self) -> None:
        """(Re)read the bank's calibration: each lane's thresholds and the near-duplicate cosine."""
        self.lanes = bank_lanes(self.bank, self.cfg.decider.lanes_file)
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

    def decoder(self, lane: str | Lane | None = None) -> DualPathDecoder:
        # Lanes are resolved here, not by the decoder: this generator's lanes carry the bank's calibration.
        return DualPathDecoder.from_config(self.cfg.decider, lane if isinstance(lane, Lane) else self.lane(lane))

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
    ) -> Iterator[GenerationStep]:
        """Yield one GenerationStep per step. `prompt` is text or an already encoded (t, d) context.

        `context_ids` are bank ids of the prompt's concepts: they are removed from shortlists and
        renderings (docs/protocol.md: the context must not find itself). For a text prompt, concepts that
        are in the bank verbatim are found and removed too. Concepts the stream itself picks stay
        in the shortlist: repeating them is what the near-duplicate guard is for.
        """
        steps = steps if steps is not None else self.cfg.generation.steps
        if not 1 <= steps <= self.cfg.generation.max_steps:
            raise DualPathError(f"steps must be between 1 and {self.cfg.generation.max_steps}, got {steps}")
        decoder = self.decoder(lane)
        lane_profile = decoder.lane
        if isinstance(prompt, str):
            t0 = time.perf_counter()
            _, context = self.encode_prompt(prompt)
            encode_ms = (time.perf_counter() - t0) * 1000
        else:
            context = normalize_rows(np.atleast_2d(prompt))
            encode_ms = 0.0
            if context.shape[1] != self.bank.dim:
                raise DualPathError(f"context vectors have dimension {context.shape[1]}, the bank {self.bank.dim}")
        prompt_ids = list(context_ids)
        if isinstance(prompt, str):
            prompt_ids += self._verbatim_bank_ids(context)
        exclude = np.unique(np.asarray(prompt_ids, dtype=np.int64))
        timeout = self.cfg.decider.retrieval_timeout_s
        for _ in range(steps):
            lat: dict[str, float] = {"encode": encode_ms} if encode_ms else {}
            encode_ms = 0.0
            t_step = time.perf_counter()
            window = context[-self.context_size :]
            ctx = window[None]
            mask = np.ones(ctx.shape[:2], dtype=bool)
            # One sample through small models: a second OpenMP thread only adds wake-up and spin cost
            # (measured ~100x slower per step on a busy 2-core machine).
            with torch_threads(1):
                t0 = time.perf_counter()
                v_hat = self.lvm.predict(ctx, mask)[0]
                lat["lvm"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                if self.tower is not None:
                    query = self.tower.encode_queries(ctx, mask)[0]
                    source = "tower"
                else:
                    query, source = v_hat, "lvm"
                lat["query"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            shortlist = search_shortlists(
                self.bank, self.miner, query[None], lane_profile.k, [exclude], timeout
            )[0]
            lat["search"] = (time.perf_counter() - t0) * 1000
            v_out, record = decoder.step(v_hat, shortlist)
            lat["decide"] = record.latency_ms
            t0 = time.perf_counter()
            neighbour_text = None
            if record.neighbour_id is not None:
                neighbour_text = self.bank.texts([record.neighbour_id])[0]
            if not render:
                rendered = RenderedText("", -1, float("nan"), True)
            elif record.decision is Decision.SNAP:
                assert record.neighbour_id is not None and neighbour_text is not None
                rendered = RenderedText(neighbour_text, record.neighbour_id, 1.0, False)
            else:
                skip = exclude
                if record.decision is Decision.NOVEL_DUP_DROP and record.neighbour_id is not None:
                    # The step refused n* as a repeat; rendering it as n*'s text would repeat it anyway.
                    skip = np.append(exclude, record.neighbour_id)
                rendered = self.renderer.render(v_out[None], [skip])[0]
            lat["render"] = (time.perf_counter() - t0) * 1000
            lat["total"] = (time.perf_counter() - t_step) * 1000 + lat.get("encode", 0.0)
            context = np.concatenate([context, v_out[None].astype(np.float32)])
            if self.telemetry is not None:
                self.telemetry.write(record)
            yield GenerationStep(
                record=record,
                vector=v_out,
                text=rendered.text,
                text_concept_id=rendered.concept_id,
                text_cosine=rendered.cosine,
                approximate=rendered.approximate,
                neighbour_text=neighbour_text,
                query_source=source,
                latency_ms=lat,
            )

    def _verbatim_bank_ids(self, vectors: np.ndarray) -> list[int]:
        ids, scores = self.bank.search(vectors, 1)
        return [int(i) for i, s in zip(ids[:, 0], scores[:, 0], strict=True) if i >= 0 and s >= VERBATIM_COSINE]
