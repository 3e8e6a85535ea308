"""The generation step at scale: the bench's generation rows on a large synthetic bank, per index kind and K.

One set of clustered synthetic vectors (`synthetic.synthetic_set`, made once) is built into a bank
per index kind (`ivf`, `hnsw`; one at a time, each removed before the next), and on each the same
rows as the generation section are measured (`stages.bench_generation`: the single step with its
stage split, and `Generator.generate_batch` at each batch size) for each shortlist size K, beside
the index's recall@10 and recall@K against exact float32 search measured in the same run on the same bank.

`bench_generation_per_index` is the same measurement for any vectors: the suite's generation section
runs it on the benchmark bank's own vectors and prompts too, so that the flat index's step can be
read beside the approximate indexes' on real data.

The models are the benchmark bank's own LVM and query tower (same shapes as in production): on
synthetic vectors their outputs mean nothing, but their cost is the same, and that is what is timed.
Prompts are two consecutive concepts of a placeholder document.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.bank.tuning import recall_at_k
from dualpath.benchsuite.stages import bench_generation, stage_floors
from dualpath.benchsuite.synthetic import CONCEPTS_PER_DOCUMENT, exact_top_k, synthetic_set, vector_bank
from dualpath.config import DualPathConfig
from dualpath.decider import Lane
from dualpath.pipeline.generator import Generator

log = logging.getLogger(__name__)

KINDS = ("ivf", "hnsw")
RECALL_K = 10
RECALL_QUERIES = 256

SCALE_COLUMNS = {
    "index": "index", "k": "K", "recall_at_10": "recall@10", "recall_at_k": "recall@K", "name": "",
    "median_ms": "median ms", "p99_ms": "p99 ms", "per_s": "per s", "x_baseline": "× single step",
}


def bench_generation_scale(
    models: Generator,
    lane: Lane,
    n: int,
    ks: Sequence[int],
    prompts: int,
    steps: int,
    batches: Sequence[int],
    workdir: Path,
    cfg: DualPathConfig,
    kinds: Sequence[str] = KINDS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, facts): per index kind, per K, the generation rows on `n` synthetic vectors of the models' dim.

    `models` lends its LVM (with its sampler), query tower and lanes; `lane` is run with each K in `ks`.

    The indexes search with the configured nprobe / efSearch (at least K), not settings tuned to
    `bank.recall`: the synthetic clusters hold 30 points each, and beyond its cluster a point's neighbours
    are noise at cosine ~0 that no index finds without scanning nearly everything, so a tuner would ask
    for an exhaustive search at K = 100-500. These rows time the step; recall@K says what it misses here.
    """
    start = time.perf_counter()
    cfg = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"recall": None})})
    vectors, queries = synthetic_set(n, RECALL_QUERIES, models.lvm.dim)
    made_s = time.perf_counter() - start
    documents = n // CONCEPTS_PER_DOCUMENT
    rng = np.random.default_rng(0)
    prompt_ids = [d * CONCEPTS_PER_DOCUMENT + np.arange(2) for d in rng.choice(documents, prompts, replace=False)]
    rows, facts = bench_generation_per_index(
        models, lane, vectors, queries, prompt_ids, ks, steps, batches, workdir, cfg, kinds, with_floors=True
    )
    facts["vectors_s"] = made_s
    facts["seconds"] = time.perf_counter() - start
    return rows, facts


def bench_generation_per_index(
    models: Generator,
    lane: Lane,
    vectors: np.ndarray,
    queries: np.ndarray,
    prompt_ids: Sequence[np.ndarray],
    ks: Sequence[int],
    steps: int,
    batches: Sequence[int],
    workdir: Path,
    cfg: DualPathConfig,
    kinds: Sequence[str] = KINDS,
    with_floors: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, facts): `vectors` built into a bank per index kind (one at a time), the generation rows on
    each for every K, beside the index's recall@10 and recall@K (at the step's depth K) for `queries`
    against exact float32 search.
    With `with_floors`, facts["floors"] holds the stage table (`stages.stage_floors`) of each index and K."""
    start = time.perf_counter()
    n = len(vectors)
    truth = exact_top_k(queries, vectors, max(RECALL_K, *ks))
    facts: dict[str, Any] = {"n": n, "builds": {}, "fallbacks": {}, "empty": {}, "floors": []}
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        path = workdir / f"generation-{n}-{kind}"
        shutil.rmtree(path, ignore_errors=True)
        log.info("generation per index: %s index over %d vectors", kind, n)
        t0 = time.perf_counter()
        bank = vector_bank(path, vectors, kind, cfg)
        facts["builds"][kind] = {"index": bank.index_spec, "build_s": time.perf_counter() - t0}
        generator = Generator(bank, models.lvm, models.tower, models.lanes, cfg, sampler=models.sampler)
        try:
            found, _ = bank.search(queries, RECALL_K)
            recall = recall_at_k(found, truth[:, :RECALL_K])
            facts["search"] = {**facts.get("search", {}), kind: bank.manifest["index"].get("search")}
            for k in ks:
                k_lane = lane.model_copy(update={"k": k})
                deep, _ = bank.search(queries, k)
                recall_k = recall_at_k(deep, truth[:, :k])
                measured, counts = bench_generation(generator, k_lane, prompt_ids, steps, batches)
                facts["fallbacks"][f"{kind}, K={k}"] = counts["fallbacks"]
                facts["empty"][f"{kind}, K={k}"] = counts["empty"]
                rows += [{"index": bank.index_spec, "k": k, "recall_at_10": recall, "recall_at_k": recall_k, **row}
                         for row in measured]
                if with_floors:
                    floors = stage_floors(generator, k_lane, prompt_ids, measured, max(batches),
                                          counts["render"])
                    facts["floors"] += [{"index": bank.index_spec, "k": k, **row} for row in floors]
        finally:
            generator.close()
            bank.close()
            shutil.rmtree(path, ignore_errors=True)
    facts["seconds"] = time.perf_counter() - start
    return rows, facts
