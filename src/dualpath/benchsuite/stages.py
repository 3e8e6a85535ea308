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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from dualpath.benchsuite.timing import stats, timings_ms, with_ratio
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import ContextPairs, gather_context, split_from_config
from dualpath.decider import Lane, shortlist_scores
from dualpath.decider.decision import FALLBACK_EMPTY, Decision
from dualpath.decider.grounding import successor_ids
from dualpath.decider.kernels import NORM_EPS, paraphrase_rows, score_outside, unit_pair, unit_rows
from dualpath.encoding import Encoder
from dualpath.models.heuristics import last_vector, mean_vector, normalize_rows
from dualpath.models.incremental import lvm_stream, tower_stream
from dualpath.models.lvm import RecurrentBackbone
from dualpath.models.towers import RecurrentEncoder
from dualpath.pipeline.evaluate import heldout_pairs
from dualpath.pipeline.generator import (
    RENDER_DEPTH,
    Generator,
    ShortlistReader,
    Unsayable,
    gather_vectors,
    search_shortlist_batch,
)
from dualpath.pipeline.grounding import StreamAnchors, prompt_anchors
from dualpath.runtime import one_blas_thread, torch_threads
from dualpath.search import excluded_depth

SINGLE_BASELINE = "1 per call (baseline)"
# Torch's intra-op team on a busy machine: each op waits at a barrier for a descheduled thread, so
# single small calls can be many times slower with two threads than with one.
ONE_THREAD = "1 per call, 1 torch thread"
STAGES = ("lvm", "sample", "query", "search", "decide", "render")

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


def _count_fallbacks(counts: dict[str, Any], steps: Sequence[Any]) -> None:
    """Steps whose retrieval failed (timeout, error) into counts["fallbacks"]; steps left with nothing to
    ground on or pick (reason `empty`: no result, or every candidate refused as shown or a paraphrase)
    into counts["empty"]."""
    reasons = [s.record.fallback_reason for s in steps]
    counts["fallbacks"] += sum(r is not None and r != FALLBACK_EMPTY for r in reasons)
    counts["empty"] += sum(r == FALLBACK_EMPTY for r in reasons)


@dataclass(frozen=True)
class RenderWork:
    """What rendering did at one batch size, as shares of its stream-steps (the render floor counts both)."""

    scored: float  # scored the shortlist against the step's output: not a SNAP, no decision's scores to reuse
    searched: float  # took a rendering search: the nearest concept to the output not provably in the shortlist


def _scored_share(steps: Sequence[Any]) -> float:
    """The share of `steps` whose rendering scored its shortlist anew. A SNAP shows its n*; an output equal
    to the unit v̂ the decision scored takes those scores (`shortlist_nearest`); a step whose retrieval
    failed has no shortlist to score."""
    rendered = [s for s in steps if s.record.decision is not Decision.SNAP
                and (s.record.fallback_reason is None or s.record.fallback_reason == FALLBACK_EMPTY)]
    if not rendered:
        return 0.0
    outputs = normalize_rows(np.stack([s.vector for s in rendered]))
    v_hat = normalize_rows(np.stack([s.lvm_vector for s in rendered]))
    return int((outputs != v_hat).any(axis=1).sum()) / len(steps)


def bench_generation(
    generator: Generator, lane: Lane, prompts: Sequence[np.ndarray], steps: int, batches: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, counts): the single step and its parts from Generator.generate (baseline), the same steps
    with the models re-reading the whole window (the reference path), and Generator.generate_batch
    at each batch size with its parts (time per stream-step; per s is stream-steps per second).
    counts["render"][b]: what rendering did at b streams (`RenderWork`), which the stage table's render
    floor counts."""
    bank = generator.bank
    counts: dict[str, Any] = {"fallbacks": 0, "empty": 0, "render": {}}
    renderer = generator.renderer
    searched = [0]
    original = renderer.render

    def counted(vectors: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        searched[0] += len(vectors)
        return original(vectors, *args, **kwargs)

    renderer.render = counted  # type: ignore[method-assign]  # an instance attribute: the type still reads as is
    try:

        single: list[Any] = []

        def run(prompt_ids: np.ndarray) -> list[dict[str, float]]:
            steps_ = list(generator.generate(bank.vectors(prompt_ids), steps, lane, prompt_ids))
            _count_fallbacks(counts, steps_)
            single.extend(steps_)
            return [s.latency_ms for s in steps_]

        def parts(latencies: list[dict[str, float]], name: str, per_call: float = 1) -> dict[str, dict[str, float]]:
            rows = {name: stats(np.array([x["total"] for x in latencies]), per_call)}
            for stage in (s for s in STAGES if any(s in x for x in latencies)):
                rows[f"  {stage}"] = stats(np.array([x.get(stage, 0.0) for x in latencies]), per_call)
            return rows

        run(prompts[0])  # warm-up: first calls allocate
        counts["fallbacks"] = counts["empty"] = 0
        searched[0] = 0
        single.clear()
        latencies = [lat for p in prompts for lat in run(p)]
        counts["render"][1] = RenderWork(_scored_share(single), searched[0] / max(len(latencies), 1))
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
            searched[0] = 0
            runs = generator.generate_batch(vectors, steps, lane, chosen)
            counts["render"][size] = RenderWork(_scored_share([s for r in runs for s in r]),
                                                searched[0] / (size * steps))
            per_step = [stream[t].latency_ms for t in range(steps) for stream in runs[:1]]  # the batch's, per stream
            _count_fallbacks(counts, [s for r in runs for s in r])
            batch_rows = parts(per_step, f"batched step, {size} streams")
            rows.update({(k if k.startswith("batched") else f"{k} ({size})"): v for k, v in batch_rows.items()})
        counts.update({"steps": len(latencies), "prompts": len(prompts)})
    finally:
        del renderer.render
    return with_ratio(rows, "whole step (baseline)"), counts


TIMING_COLUMNS = {
    "name": "", "median_ms": "median ms", "p99_ms": "p99 ms", "per_s": "per s", "x_baseline": "× baseline",
}


FLOOR_COLUMNS = {
    "streams": "streams", "name": "stage", "median_ms": "median ms", "floor_ms": "floor ms", "x_floor": "× floor",
    "cold_floor_ms": "floor ms, cache flushed", "x_cold_floor": "× cold floor",
    "floor": "floor: the same work with nothing around it",
}
FLUSH_BYTES = 64 << 20  # read before each cold floor call: more than this VM's caches hold
FLOOR_CALLS = 200  # single-stream floor calls; a batch's floor is timed over fewer, longer calls
BATCH_FLOOR_CALLS = 10


def _weights(module: nn.Module, name: str) -> np.ndarray:
    return getattr(module, name).detach().cpu().float().numpy()


def _recurrent_products(rnn: nn.GRU | nn.LSTM, b: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, weight) of each BLAS product one ring step makes (models/incremental.py): the first layer's
    input product once per stream, the other input products over the stream's `size` states, the hidden
    products over its `size` - 1 states that do not start from zero."""
    rng = np.random.default_rng(0)
    out = []
    for layer in range(rnn.num_layers):
        w_ih, w_hh = _weights(rnn, f"weight_ih_l{layer}"), _weights(rnn, f"weight_hh_l{layer}")
        rows = b if layer == 0 else b * size
        out.append((rng.standard_normal((rows, w_ih.shape[1]), np.float32), w_ih))
        if size > 1:
            out.append((rng.standard_normal((b * (size - 1), w_hh.shape[1]), np.float32), w_hh))
    return out


def _linear_products(modules: Sequence[nn.Module], b: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((b, m.in_features), np.float32), _weights(m, "weight"))
            for m in modules if isinstance(m, nn.Linear)]


def _products(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Callable[[int], None]:
    def run(i: int) -> None:
        for x, w in pairs:
            x @ w.T
    return run


def model_floors(generator: Generator, b: int) -> dict[str, tuple[Callable[[int], None], str] | None]:
    """The bare BLAS products of a step's model stages for b streams (None where the model has no such
    form here: a transformer LVM, a tower without a recurrent ring, no sampler)."""
    floors: dict[str, tuple[Callable[[int], None], str] | None] = {"lvm": None, "sample": None, "query": None}
    net = generator.lvm.net
    if isinstance(net.backbone, RecurrentBackbone):
        pairs = _recurrent_products(net.backbone.rnn, b, generator.lvm.context) + _linear_products(list(net.head), b)
        floors["lvm"] = (_products(pairs), f"{len(pairs)} BLAS products: the ring step and the head")
    sampler = generator.sampler
    if sampler is not None:
        layers = [m for m in sampler.net.net if isinstance(m, nn.Linear)]
        dim, steps = sampler.dim, generator.cfg.generation.sampler_steps
        rng = np.random.default_rng(2)
        first = _weights(layers[0], "weight")
        cond = (rng.standard_normal((b, 2 * dim), np.float32), first[:, dim : 3 * dim])
        per_step = [(rng.standard_normal((b, dim), np.float32), first[:, :dim])]
        per_step += _linear_products(layers[1:], b)
        floors["sample"] = (_products([cond] + per_step * steps),
                            f"{1 + len(per_step) * steps} BLAS products: {steps} Euler steps of the flow MLP")
    tower = generator.tower
    encoder = tower.net.encoder if tower is not None else None
    if tower is not None and isinstance(encoder, RecurrentEncoder) and not encoder.rnn.bidirectional:
        pairs = _recurrent_products(tower.net.encoder.rnn, b, generator.context_size)
        pairs += _linear_products([tower.net.proj], b)
        floors["query"] = (_products(pairs), f"{len(pairs)} BLAS products: the ring step and the projection")
    return floors


def _share_schedule(share: float, b: int) -> tuple[int, int]:
    """(rows, every) for floor work that `share` of b streams' stream-steps do: `rows` of them in one call, made
    every `every`-th call (a single stream whose share is about a half: every other call), so that the timed
    median carries the share, not all or nothing. (0, 0): none do it, or fewer than one call in a billion
    would."""
    n = share * b
    if n < 1e-9:
        return 0, 0
    rows = max(1, round(n))
    return rows, max(1, round(rows / n))


def _io_floors(
    generator: Generator, lane: Lane, chosen: Sequence[np.ndarray], render: RenderWork
) -> dict[str, tuple[Callable[[int], None], str]]:
    """Floors of the search, decide and render stages for the streams of `chosen` prompts, on their own
    queries and shortlists. Rendering scored `render.scored` of the stream-steps' shortlists anew and took
    a rendering search for `render.searched` of them: the render floor counts that work alone."""
    bank = generator.bank
    b = len(chosen)
    windows = [bank.vectors(p) for p in chosen]
    excludes = [np.unique(np.asarray(p, np.int64)) for p in chosen]
    state = tower_stream(generator.tower, windows, generator.context_size) if generator.tower else None
    queries = state.output() if state is not None else lvm_stream(generator.lvm, windows).output()
    depth = excluded_depth(lane.k, excludes)
    reader = ShortlistReader(bank)
    shortlists, _ = search_shortlist_batch(bank, generator.miner, queries, [lane.k] * b, excludes, None, reader)
    vectors = np.ascontiguousarray(shortlists.vectors)
    ids = np.where(shortlists.ids >= 0, shortlists.ids, 0).ravel()
    grounded = lane.rule == "confidence"
    scores = shortlist_scores(vectors, (queries,))[0]
    # What each stream said at its first step (its prompt): the decision checks its pick against it.
    stacked = Unsayable(windows, [lane.repeat_window] * b, generator.cfg.generation.paraphrase_cosine, bank.dim)
    said = stacked.stacked() or (np.zeros((b, 0, bank.dim)), np.zeros((b, 0)))
    said = (np.ascontiguousarray(said[0]), np.ascontiguousarray(said[1]))  # C order, as a step's checks read them
    picked = np.empty(b, np.bool_)
    # A lane that grounds on evidence also reads its anchors' successors from the bank where the shortlist
    # lacks them, and scores them: on the synthetic 1M set every stream's are outside it.
    successors = np.full((b, 0), -1, np.int64)
    if grounded:
        found = prompt_anchors(bank, windows, [np.zeros(0, np.int64)] * b)  # as a step finds them, nothing hidden
        successors = successor_ids(generator.successors(), StreamAnchors(found).ids)
        listed = (successors[:, :, None] == shortlists.ids[:, None, :]).any(axis=2)
        successors = np.where(listed, -1, successors)
    read = successors >= 0
    fresh = np.zeros((*successors.shape, bank.dim), np.float32)
    successor_scores = (np.zeros(successors.shape), np.zeros(successors.shape))

    def search(i: int) -> None:
        bank.search(queries, depth)
        reader(ids)

    def decide(i: int) -> None:
        # q and v̂ at unit length as the step makes them (one stream: one compiled call), then one pass
        if b == 1:
            unit = unit_pair(queries[0], queries[0], NORM_EPS)[0] if grounded else unit_rows(queries, NORM_EPS)[0]
            units = (unit[:1], unit[1:]) if grounded else (unit,)
        else:
            units = (normalize_rows(queries), normalize_rows(queries)) if grounded else (normalize_rows(queries),)
        for scored in shortlist_scores(vectors, units):
            best = scored.argmax(axis=1)
        if read.any():
            fresh[read] = gather_vectors(bank, successors[read])
            score_outside(fresh, units[0], units[1], read, *successor_scores)
        paraphrase_rows(vectors[np.arange(b), best], said[0], said[1], np.arange(b), picked)

    scored_rows, scored_every = _share_schedule(render.scored, b)
    searched_rows, searched_every = _share_schedule(render.searched, b)
    render_depth = excluded_depth(RENDER_DEPTH, excludes)

    def render_work(i: int) -> None:
        scores.argmax(axis=1)
        if scored_every and i % scored_every == 0:
            for j in range(scored_rows):
                np.matmul(vectors[j], queries[j]).argmax()
        if searched_every and i % searched_every == 0:
            bank.search(queries[:searched_rows], render_depth)

    return {
        "search": (search, f"index search alone ({bank.index_spec}, depth {depth}) + the shortlist read"),
        # The search floor's two parts, shown under it: which of them stops a batch.
        "search/index": (lambda i: bank.search(queries, depth), "of which the index call"),
        "search/read": (lambda i: reader(ids), f"of which reading the {ids.size:,} shortlist rows as float32"),
        "decide": (decide, ("q and v̂ at unit length; one pass over the shortlist: K×d scores against both, argmax"
                            if grounded else "v̂ at unit length; one pass over the shortlist: K×d cosines to it, argmax")
                   + (f"; the anchors' successors its shortlist lacks ({read.sum() / b:.2g} a stream) read from the "
                      "bank and scored" if grounded else "")
                   + f"; the pick checked against what the stream said ({said[0].shape[1]}×d)"),
        "render": (render_work, "an argmax over the step's K scores; one pass over the shortlist (K×d scores "
                   f"against the output) for the {render.scored:.0%} of stream-steps that score it anew; the index "
                   f"search alone (depth {render_depth}) for the {render.searched:.0%} rendered by one"),
    }


_flush_buffer: list[np.ndarray] = []


def _cold_timings_ms(fn: Callable[[int], None], n: int) -> np.ndarray:
    """`timings_ms` with every cache flushed before each call (FLUSH_BYTES read, untimed): the work with its
    weights and data in memory, as a step leaves them after the index search has scanned its lists."""
    if not _flush_buffer:
        _flush_buffer.append(np.ones(FLUSH_BYTES // 8))
    out = np.empty(max(n, 1))
    fn(0)
    for i in range(len(out)):
        _flush_buffer[0].sum()
        start = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - start) * 1000.0
    return out


def stage_floors(
    generator: Generator,
    lane: Lane,
    prompts: Sequence[np.ndarray],
    rows: Sequence[dict[str, Any]],
    batch: int,
    render: Mapping[int, RenderWork],
) -> list[dict[str, Any]]:
    """Each stage of the single step and of the `batch`-stream step (medians from `bench_generation`'s
    `rows`, measured just before in the same run) beside its floor: the same work with nothing around it,
    timed now on the same shapes and data. Per stream, like the rows."""
    measured = {row["name"].strip(): row["median_ms"] for row in rows}
    out: list[dict[str, Any]] = []
    for b in (1, batch):
        chosen = [prompts[i % len(prompts)] for i in range(b)]
        with torch_threads(1), one_blas_thread():
            floors: dict[str, tuple[Callable[[int], None], str] | None] = {
                **model_floors(generator, b),
                **_io_floors(generator, lane, chosen, render.get(b, RenderWork(0.0, 0.0))),
            }
            calls = FLOOR_CALLS if b == 1 else BATCH_FLOOR_CALLS
            timed = {name: None if f is None else float(np.median(timings_ms(f[0], calls))) / b
                     for name, f in floors.items()}
            # At least BATCH_FLOOR_CALLS cold calls: a median of 2 moved a batch's floor by a third from run to run.
            cold = {name: None if f is None else float(np.median(_cold_timings_ms(f[0], max(calls // 4,
                                                                                          BATCH_FLOOR_CALLS)))) / b
                    for name, f in floors.items()}
        suffix = "" if b == 1 else f" ({b})"
        whole = measured["whole step (baseline)" if b == 1 else f"batched step, {b} streams"]
        total_floor = sum(t for n, t in timed.items() if t is not None and "/" not in n)
        total_cold = sum(t for n, t in cold.items() if t is not None and "/" not in n)
        out.append({"streams": b, "name": "whole step", "median_ms": whole, "floor_ms": total_floor,
                    "x_floor": whole / total_floor, "cold_floor_ms": total_cold, "x_cold_floor": whole / total_cold,
                    "floor": "the sum of the floors below"})
        for name in STAGES:
            ms, floor, spec = measured.get(name + suffix), timed.get(name), floors.get(name)
            if ms is None:  # a stage this step does not have (no sampler)
                continue
            row = {"streams": b, "name": f"  {name}", "median_ms": ms}
            cold_floor = cold.get(name)
            if floor is not None and cold_floor is not None and spec is not None:
                row.update(floor_ms=floor, x_floor=ms / floor, cold_floor_ms=cold_floor, x_cold_floor=ms / cold_floor,
                           floor=spec[1])
            else:
                row["floor"] = "not measured for this model"
            out.append(row)
            for part in (n for n in floors if n.startswith(f"{name}/")):
                part_floor, part_cold, part_spec = timed[part], cold[part], floors[part]
                if part_floor is not None and part_cold is not None and part_spec is not None:
                    out.append({"streams": b, "name": f"    {part_spec[1]}", "floor_ms": part_floor,
                                "cold_floor_ms": part_cold, "floor": "(part of the floor above)"})
    _flush_buffer.clear()
    return out
