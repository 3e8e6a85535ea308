"""Speed of each stage of a generation step, single stream and batched, on a bank's held-out data.

    encode      the bank's encoder: one sentence per call (baseline) against full batches
    lvm step    LVM.predict on one context (baseline) against batches of contexts
    tower       QueryTower.encode_queries the same way
    generation  Generator.generate: the whole step (baseline) against each of its parts as recorded
                in the step's own latencies, and a batched step (every part, many streams at once)

Batched rows give time per item (call time / batch size), so their ratio to the single-stream
baseline is the speed-up batching buys on this machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dualpath.benchsuite.timing import stats, timings_ms, with_ratio
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import ContextPairs, gather_context, split_from_config
from dualpath.decider import Lane
from dualpath.encoding import Encoder
from dualpath.models.heuristics import last_vector, mean_vector
from dualpath.pipeline.evaluate import heldout_pairs
from dualpath.pipeline.generator import Generator
from dualpath.runtime import torch_threads

SINGLE_BASELINE = "1 per call (baseline)"
# Torch's intra-op team on a busy machine: each op waits at a barrier for a descheduled thread, so
# single small calls can be many times slower with two threads than with one.
ONE_THREAD = "1 per call, 1 torch thread"
STAGES = ("lvm", "query", "search", "decide", "render")

Batchable = Callable[[np.ndarray, np.ndarray], np.ndarray]


def heldout_contexts(generator: Generator, cfg: DualPathConfig, n: int) -> tuple[ContextPairs, np.ndarray, np.ndarray]:
    """Up to `n` held-out pairs (documents no model was trained on) with their gathered contexts."""
    pairs = heldout_pairs(generator.bank, generator.lvm.training_split(cfg.split), n)
    ctx, mask = gather_context(generator.bank.all_vectors(), pairs.context)
    return pairs, ctx, mask


def repeat_rows(x: np.ndarray, n: int) -> np.ndarray:
    """The first n rows of x, cycling through x when it has fewer (small banks, big batches)."""
    return x[np.arange(n) % len(x)]


def bench_encode(encoder: Encoder, texts: Sequence[str], single: int, batch: int, calls: int) -> list[dict[str, Any]]:
    """One sentence per call (baseline) against `calls` batches of `batch` sentences, cycling through `texts`."""
    pool = repeat_rows(np.asarray(texts, dtype=object), max(single, batch * calls)).tolist()
    # Two warm-up calls, not five: a busy machine can make one single-sentence call take a second.
    rows = {SINGLE_BASELINE: stats(timings_ms(lambda i: encoder.encode([pool[i]]), single, warmup=2))}
    with torch_threads(1):
        rows[ONE_THREAD] = stats(timings_ms(lambda i: encoder.encode([pool[i]]), single, warmup=2))
    rows[f"batch of {batch}"] = stats(
        timings_ms(lambda i: encoder.encode(pool[i * batch : (i + 1) * batch]), calls, 1), batch
    )
    return with_ratio(rows, SINGLE_BASELINE)


def bench_batchable(
    fn: Batchable,
    ctx: np.ndarray,
    mask: np.ndarray,
    single: int,
    batch_sizes: Sequence[int],
    reference: tuple[str, Batchable] | None = None,
) -> list[dict[str, Any]]:
    """`fn(ctx, mask)` one context per call (baseline) and in batches; `reference` a no-model row beside them."""
    def one(i: int) -> np.ndarray:
        return fn(ctx[i % len(ctx)][None], mask[i % len(ctx)][None])

    rows = {SINGLE_BASELINE: stats(timings_ms(one, single))}
    with torch_threads(1):
        rows[ONE_THREAD] = stats(timings_ms(one, single))
    for size in batch_sizes:
        c, m = repeat_rows(ctx, size), repeat_rows(mask, size)
        calls = max(5, single // size)
        rows[f"batch of {size}"] = stats(timings_ms(lambda i, c=c, m=m: fn(c, m), calls, 1), size)
    if reference is not None:
        name, ref = reference
        rows[name] = stats(timings_ms(lambda i: ref(ctx[i % len(ctx)][None], mask[i % len(ctx)][None]), single))
    return with_ratio(rows, SINGLE_BASELINE)


def bench_lvm(generator: Generator, ctx: np.ndarray, mask: np.ndarray, single: int, sizes: Sequence[int]) -> list:
    reference = ("copy-last, numpy (no model)", last_vector)
    return bench_batchable(generator.lvm.predict, ctx, mask, single, sizes, reference)


def bench_tower(generator: Generator, ctx: np.ndarray, mask: np.ndarray, single: int, sizes: Sequence[int]) -> list:
    if generator.tower is None:
        return []
    return bench_batchable(
        generator.tower.encode_queries, ctx, mask, single, sizes, ("mean of context, numpy (no model)", mean_vector)
    )


def generation_prompts(generator: Generator, cfg: DualPathConfig, count: int, length: int = 2) -> list[np.ndarray]:
    """The first `length` concept ids of up to `count` held-out documents (prompts no model has seen)."""
    split_cfg = generator.lvm.training_split(cfg.split)
    documents = generator.bank.documents()
    split = split_from_config(documents, split_cfg, context=1)
    chosen = [documents[d][:length] for d in sorted(split.heldout_docs) if len(documents[d]) >= length]
    return chosen[:count]


def bench_generation(
    generator: Generator, lane: Lane, prompts: Sequence[np.ndarray], steps: int, batches: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(rows, counts): the single step and its parts from Generator.generate (baseline), the same steps
    with the models re-reading the whole window (the reference path), and Generator.generate_batch
    at each batch size with its parts (time per stream-step; per s is stream-steps per second)."""
    bank = generator.bank
    counts = {"fallbacks": 0}

    def run(prompt_ids: np.ndarray) -> list[dict[str, float]]:
        steps_ = list(generator.generate(bank.vectors(prompt_ids), steps, lane, prompt_ids))
        counts["fallbacks"] += sum(s.record.fallback_reason is not None for s in steps_)
        return [s.latency_ms for s in steps_]

    def parts(latencies: list[dict[str, float]], name: str, per_call: float = 1) -> dict[str, dict[str, float]]:
        rows = {name: stats(np.array([x["total"] for x in latencies]), per_call)}
        for stage in STAGES:
            rows[f"  {stage}"] = stats(np.array([x.get(stage, 0.0) for x in latencies]), per_call)
        return rows

    run(prompts[0])  # warm-up: first calls allocate
    counts["fallbacks"] = 0
    latencies = [lat for p in prompts for lat in run(p)]
    rows: dict[str, dict[str, float]] = parts(latencies, "whole step (baseline)")
    cfg = generator.cfg
    generator.cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"incremental": False})})
    try:
        reference = [lat for p in prompts for lat in run(p)]
    finally:
        generator.cfg = cfg
    rows["whole step, models re-read the window"] = stats(np.array([x["total"] for x in reference]))
    rows["  lvm + query, window re-read"] = stats(np.array([x["lvm"] + x["query"] for x in reference]))

    for size in batches:
        chosen = [prompts[i % len(prompts)] for i in range(size)]
        vectors = [bank.vectors(p) for p in chosen]
        generator.generate_batch(vectors[:2], 1, lane, chosen[:2])  # warm-up
        runs = generator.generate_batch(vectors, steps, lane, chosen)
        per_step = [stream[t].latency_ms for t in range(steps) for stream in runs[:1]]  # the batch's, per stream
        counts["fallbacks"] += sum(s.record.fallback_reason is not None for r in runs for s in r)
        batch_rows = parts(per_step, f"batched step, {size} streams")
        rows.update({(k if k.startswith("batched") else f"{k} ({size})"): v for k, v in batch_rows.items()})
    counts.update({"steps": len(latencies), "prompts": len(prompts)})
    return with_ratio(rows, "whole step (baseline)"), counts


TIMING_COLUMNS = {
    "name": "", "median_ms": "median ms", "p99_ms": "p99 ms", "per_s": "per s", "x_baseline": "× baseline",
}
