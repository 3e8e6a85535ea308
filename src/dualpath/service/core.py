"""What the service does, without HTTP: search, generate, telemetry, with every request limit checked.

`DualPathService` wraps one loaded `Generator`. Its methods are plain, blocking Python (the HTTP
layer runs them in worker threads) and safe to call from many threads at once: each generation
has its own decoder, the bank and the models are only read, and the shared telemetry ring and
metrics are thread-safe. The load test's in-process baseline calls these same methods.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig
from dualpath.decider import GREEDY, Decision, Lane, RecentRecords, Sampling, summarize
from dualpath.encoding import Encoder
from dualpath.errors import DualPathError
from dualpath.pipeline.generator import GenerationStep, Generator, PromptMatch
from dualpath.runtime import limit_search_threads
from dualpath.service.metrics import ServiceMetrics
from dualpath.service.schemas import GenerateRequest, SearchRequest

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 50  # c_max histogram over [0, 1]: bins of 0.02
WARM_UP_TEXT = "The service is warming up its encoder."


class InputError(DualPathError):
    """A request that breaks a limit or does not fit the bank; the HTTP layer answers 422."""


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def lane_info(lane: Lane) -> dict[str, Any]:
    return {
        "name": lane.name,
        "rule": lane.rule,  # c_max: thresholds are cosines; confidence: levels of p (the SNAP confidence)
        "tau_snap": lane.tau_snap,
        "tau_novel": lane.tau_novel,
        "k": lane.k,
        "dup_window": lane.dup_window,
        "calibrated": lane.calibrated,
        "description": lane.description,
    }


class DualPathService:
    def __init__(self, generator: Generator, cfg: DualPathConfig, metrics: ServiceMetrics | None = None) -> None:
        self.generator = generator
        self.cfg = cfg
        self.metrics = metrics or ServiceMetrics()
        self.recent = RecentRecords(cfg.service.telemetry_records)
        self._recorded_total = 0
        self._count_lock = threading.Lock()
        self.ready = True

    @classmethod
    def load(cls, bank: str | Path, cfg: DualPathConfig, encoder: Encoder | None = None) -> DualPathService:
        """Open the bank and its models and warm the encoder, so the first request is not the slow one.

        `encoder` reuses one already loaded (it must be the bank's own).
        """
        start = time.perf_counter()
        opened = ConceptBank.open(bank, cfg, encoder=encoder)
        # The threaded miner enforces decider.retrieval_timeout_s: a slow search makes a NOVEL step, not a stall.
        try:
            generator = Generator.from_bank(opened, cfg, threaded=True)
        except BaseException:
            opened.close()
            raise
        try:
            generator.bank.encoder().encode([WARM_UP_TEXT])
        except BaseException:
            generator.close()
            raise
        log.info(
            "service ready in %.1f s: %s, LVM %s, query from %s",
            time.perf_counter() - start,
            generator.bank,
            generator.lvm.arch,
            "tower" if generator.tower is not None else "LVM",
        )
        return cls(generator, cfg)

    def limit_threads(self) -> None:
        """Hold FAISS searches made on the calling thread to `service.threads_per_request` threads.

        OpenMP sizes its team per calling thread, and a fresh worker thread gets one thread per
        core: with requests in parallel, those teams spin against each other and a one-query search
        gets many times slower (decider/miners.py measured it). Call it on each worker thread. A
        Milvus bank searches in its own server, so there is nothing to hold.
        """
        if self.generator.bank.manifest.get("backend") == "faiss":
            limit_search_threads(self.cfg.service.threads_per_request)

    def close(self) -> None:
        self.ready = False
        self.generator.close()
        self.generator.bank.close()

    # -- read-only views ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        g = self.generator
        bank = g.bank
        s = self.cfg.service
        return {
            "bank": {
                "concepts": len(bank),
                "dim": bank.dim,
                "encoder": bank.encoder_name,
                "index": bank.index_spec,
                "documents": len(bank.documents()),
                "domains": sorted(d for d in bank.domains() if d is not None),
            },
            "models": {
                "lvm": g.lvm.arch,
                "context": g.context_size,
                "query_source": "tower" if g.tower is not None else "lvm",
            },
            "lanes": {name: lane_info(lane) for name, lane in g.lanes.items()},
            "default_lane": self.cfg.decider.default_lane,
            # A prompt sentence's nearest bank concept at this cosine or closer counts as said (never shown).
            "prompt_anchor_cosine": g.cfg.generation.prompt_anchor_cosine,
            "limits": {
                "max_prompt_chars": s.max_prompt_chars,
                "max_k": s.max_k,
                "max_steps": self.cfg.generation.max_steps,
                "default_steps": self.cfg.generation.steps,
                "max_body_bytes": s.max_body_bytes,
                "body_timeout_s": s.body_timeout_s,
                "idle_timeout_s": s.idle_timeout_s,
            },
        }

    # -- search -------------------------------------------------------------------------------------

    def search(self, request: SearchRequest) -> dict[str, Any]:
        bank = self.generator.bank
        limit = self.cfg.service.max_k
        if request.k > limit:
            raise InputError(f"k must be at most {limit}, got {request.k}")
        start = time.perf_counter()
        if request.text is not None:
            self._check_text("text", request.text)
            query = bank.encoder().encode([request.text])
        else:
            query = self._query_vector(request.vector or [])
        ids, scores = bank.search(query, request.k, domain=request.domain)
        keep = ids[0] >= 0
        hits = ids[0][keep]
        results = [
            {
                "id": c.id,
                "score": float(score),
                "text": c.text,
                "doc_id": c.doc_id,
                "position": c.position,
                "domain": c.domain,
                "title": c.title,
            }
            for c, score in zip(bank.concepts(hits), scores[0][keep], strict=True)
        ]
        return {"k": request.k, "results": results, "latency_ms": (time.perf_counter() - start) * 1000.0}

    def _query_vector(self, vector: list[float]) -> np.ndarray:
        dim = self.generator.bank.dim
        query = np.asarray(vector, dtype=np.float64)
        if query.shape != (dim,):
            raise InputError(f"vector has {query.size} dimensions, the bank's concepts have {dim}")
        if not np.isfinite(query).all():
            raise InputError("vector holds NaN or infinite values")
        # Scaled by its largest entry first: the norm of [1e160, ...] overflows to inf (and of [1e-320, ...]
        # underflows to 0), which would turn a valid direction into zeros or refuse it.
        largest = float(np.abs(query).max())
        if largest == 0.0:
            raise InputError("vector is all zeros")
        query = query / largest
        return (query / np.linalg.norm(query)).astype(np.float32)[None, :]

    def _check_text(self, field: str, text: str) -> None:
        limit = self.cfg.service.max_prompt_chars
        if len(text) > limit:
            raise InputError(f"{field} is {len(text)} characters long, the limit is {limit}")
        if not text.strip():
            raise InputError(f"{field} is empty")

    # -- generation ---------------------------------------------------------------------------------

    def check_generation(self, request: GenerateRequest) -> tuple[Lane, int]:
        """The lane and step count a request will run with; an InputError if it breaks a limit."""
        self._check_text("prompt", request.prompt)
        steps = request.steps if request.steps is not None else self.cfg.generation.steps
        limit = self.cfg.generation.max_steps
        if steps > limit:
            raise InputError(f"steps must be at most {limit}, got {steps}")
        try:
            lane = self.generator.lane(request.lane)
        except DualPathError as err:
            raise InputError(str(err)) from None
        return lane, steps

    def start_generation(
        self, request: GenerateRequest
    ) -> tuple[Lane, list[dict[str, Any]], Iterator[dict[str, Any]]]:
        """Check the request, then return its lane, the prompt's matches in the bank (`prompt_matches`; filled
        when the first step is taken) and an iterator of JSON-safe step dicts.

        The checks run here, not at the first `next`, so a bad request fails before any work is
        done. Every step is recorded in telemetry and metrics as it is produced.
        """
        lane, steps = self.check_generation(request)
        self.metrics.generations.labels(lane.name).inc()
        prompt: list[dict[str, Any]] = []
        return lane, prompt, self._run(request, lane, steps, prompt)

    def _sampling(self, request: GenerateRequest) -> Sampling:
        defaults = self.generator.cfg.generation
        temperature = request.temperature if request.temperature is not None else defaults.temperature
        return GREEDY if temperature == 0 else Sampling(
            temperature,
            request.top_k if request.top_k is not None else defaults.top_k,
            request.top_p if request.top_p is not None else defaults.top_p,
        )

    def _record(self, step: GenerationStep, with_vectors: bool) -> dict[str, Any]:
        """Record one step in telemetry and metrics; its JSON-safe dict."""
        self.recent.write(step.record)
        with self._count_lock:
            self._recorded_total += 1
        self.metrics.observe_step(step)
        return json_safe(step.to_dict(with_vector=with_vectors))

    def _run(
        self, request: GenerateRequest, lane: Lane, steps: int, prompt: list[dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        matches: list[PromptMatch] = []
        run = self.generator.generate(
            request.prompt, steps=steps, lane=lane, sampling=self._sampling(request), seed=request.seed,
            lvm_temperature=request.lvm_temperature, prompt_out=matches,
        )
        for number, step in enumerate(run):
            if number == 0:  # the run searched the prompt before its first step
                prompt.extend(prompt_matches(matches))
            yield self._record(step, request.with_vectors)

    def generate(self, request: GenerateRequest) -> dict[str, Any]:
        """The whole generation at once: every step, the generated text, the lane it ran under and what the bank
        holds of the prompt."""
        start = time.perf_counter()
        lane, prompt, iterator = self.start_generation(request)
        steps = list(iterator)
        return _generation(lane, steps, prompt, start)

    def generate_many(self, requests: Sequence[GenerateRequest]) -> list[dict[str, Any] | Exception]:
        """`generate` for each request, computed together: one `Generator.generate_batch` call per step count.

        Each request keeps its own lane, steps, sampling and seed (its own decoder), so its answer is
        the one `generate` gives it alone (to float tolerance in the scores: batched matrix products
        round differently). A request that breaks a limit gets its InputError in its place; a batch
        that fails on one request's input (e.g. a prompt with no sentence in it) is rerun one request
        at a time, so only that request gets the error. Any error, a bug's included, stays with the request
        that raised it: the others still get their answers.
        """
        results: list[dict[str, Any] | Exception | None] = [None] * len(requests)
        # Streams computed together share a step count and the LVM sampler's temperature.
        groups: dict[tuple[int, float | None], list[tuple[int, Lane, Any]]] = {}
        for i, request in enumerate(requests):
            try:
                lane, steps = self.check_generation(request)
                decoder = self.generator.decoder(lane, self._sampling(request), request.seed)
            except Exception as err:
                results[i] = _own_error(err)
                continue
            groups.setdefault((steps, request.lvm_temperature), []).append((i, lane, decoder))
        self.metrics.generate_batch.observe(len(requests))
        for (steps, lvm_temperature), members in groups.items():
            start = time.perf_counter()
            try:
                matches: list[list[PromptMatch]] = []
                runs = self.generator.generate_batch(
                    [requests[i].prompt for i, _, _ in members], steps=steps, decoders=[d for _, _, d in members],
                    lvm_temperature=lvm_temperature, prompts_out=matches,
                )
                answers = []
                for (i, lane, _), run, match in zip(members, runs, matches, strict=True):
                    answers.append((i, lane, [self._record(step, requests[i].with_vectors) for step in run],
                                    prompt_matches(match)))
            except Exception as err:
                if len(members) == 1:
                    results[members[0][0]] = _own_error(err)
                    continue
                for i, _, _ in members:  # find the request at fault: each alone
                    results[i] = self._generate_or_error(requests[i])
                continue
            for i, lane, steps_, prompt in answers:
                self.metrics.generations.labels(lane.name).inc()
                results[i] = _generation(lane, steps_, prompt, start)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _generate_or_error(self, request: GenerateRequest) -> dict[str, Any] | Exception:
        try:
            return self.generate(request)
        except Exception as err:
            return _own_error(err)

    # -- telemetry ----------------------------------------------------------------------------------

    def telemetry(self, limit: int = 100) -> dict[str, Any]:
        """The last `limit` records (newest last, with n*'s text), the per-lane summary of all recent
        records and each lane's c_max histogram."""
        records = self.recent.snapshot()
        shown = records[-limit:] if limit > 0 else []
        neighbour_ids = sorted({r.neighbour_id for r in shown if r.neighbour_id is not None})
        texts = dict(zip(neighbour_ids, self.generator.bank.texts(neighbour_ids), strict=True))
        rows = [
            {**r.to_dict(), "neighbour_text": texts.get(r.neighbour_id) if r.neighbour_id is not None else None}
            for r in shown
        ]
        return json_safe(
            {
                "recorded": self._recorded_total,
                "kept": len(records),
                "records": rows,
                "summary": summarize(records),
                "c_max_histogram": c_max_histogram(records),
            }
        )


def _own_error(err: Exception) -> Exception:
    """A request's own error, kept as its answer; one that is not bad input (a bug) is logged here, with its
    traceback, since the request's answer will say only that it failed."""
    if not isinstance(err, DualPathError):
        log.error("a generation in a batch failed", exc_info=err)
    return err


def prompt_matches(matches: Sequence[PromptMatch]) -> list[dict[str, Any]]:
    """`Generator.match_prompt`'s list as JSON: each prompt sentence, its nearest bank concept (id and text;
    null where the bank holds none), their cosine, and whether the generation counts it as said."""
    return [json_safe({**asdict(m), "concept_id": m.concept_id if m.concept_id >= 0 else None,
                       "text": m.text if m.concept_id >= 0 else None}) for m in matches]


def _generation(lane: Lane, steps: list[dict[str, Any]], prompt: list[dict[str, Any]], start: float
                ) -> dict[str, Any]:
    """The answer to one POST /generate: the lane, the prompt's matches in the bank, every step, the text, and
    the time since `start`."""
    return {
        "lane": lane_info(lane),
        "prompt": prompt,
        "steps": steps,
        "text": " ".join(s["text"] for s in steps if s["text"]),
        "latency_ms": (time.perf_counter() - start) * 1000.0,
    }


def c_max_histogram(records: list) -> dict[str, Any]:
    """Counts of c_max per lane and decision over [0, 1] (values outside are clipped into the end bins)."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    lanes: dict[str, dict[str, list[int]]] = {}
    for lane in sorted({r.lane for r in records}):
        lanes[lane] = {}
        for decision in Decision:
            values = [r.c_max for r in records if r.lane == lane and r.decision is decision and r.c_max is not None]
            counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=edges)
            lanes[lane][decision.value] = counts.tolist()
    return {"edges": edges.round(4).tolist(), "lanes": lanes}
