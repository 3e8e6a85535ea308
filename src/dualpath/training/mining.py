"""Hard negatives for the query tower, mined from the bank by the current model (ANCE-style).

Naive mining (the top hits of the current model) made the prototype *worse*: the top hits of a
next-sentence query are full of concepts that are not wrong answers at all — paraphrases of the
true next sentence, the sentence after it, the context itself. So every candidate passes filters
before it may serve as a negative:

    the positive itself, and its near duplicates (cosine to the positive > near_dup)
    the pair's context concepts (evaluation removes them from results anyway)
    other concepts of the positive's document (likely false negatives), when exclude_same_document
    a cosine band on the query–candidate score: not trivially easy, not suspiciously close

and `hard_per_query` survivors are kept per pair, the hardest first or sampled uniformly.
Searches go through the decider's miners (`SyncMiner`, or `ThreadedMiner` for a deadline on each
search): a failed or timed-out search leaves its pairs without hard negatives for that round and
training goes on; mining never raises for the index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from dualpath.bank.faiss_backend import FaissBackend
from dualpath.config import TowerConfig
from dualpath.corpus.pairs import PAD, ContextPairs
from dualpath.decider.miners import SearchIndex, SyncMiner, ThreadedMiner

log = logging.getLogger(__name__)

NONE = -1  # no negative in this slot


@dataclass(frozen=True)
class MiningStats:
    searched: int  # pairs searched
    candidates: int  # hits returned
    dropped_positive: int
    dropped_duplicate: int
    dropped_context: int
    dropped_same_document: int
    dropped_band: int
    kept_per_pair: float  # mean number of negatives filled per pair
    failed_searches: int  # batches whose search failed or timed out (their pairs got no negatives)


def mining_index(bank_index: SearchIndex, vectors: np.ndarray, exact_mb: float) -> SearchIndex:
    """An exact float32 index over `vectors` when that copy fits in `exact_mb` MiB, else the bank's index.

    The bank's own index stores float16 codes (SQfp16) that FAISS decodes one distance at a time;
    a float32 flat index runs as a matrix product, about 3x faster for the ~24k queries of one
    mining round on the wiki sample.
    """
    if vectors.shape[0] * vectors.shape[1] * 4 <= exact_mb * 2**20:
        return FaissBackend.exact(vectors)
    log.info("mining on the bank's own index (a float32 copy would exceed %.0f MiB)", exact_mb)
    return bank_index


def concept_documents(documents: Mapping[str, np.ndarray], n_concepts: int) -> np.ndarray:
    """(n_concepts,) document index of every concept, in `documents`' order (-1: no document)."""
    owner = np.full(n_concepts, -1, dtype=np.int64)
    for d, ids in enumerate(documents.values()):
        owner[np.asarray(ids, dtype=np.int64)] = d
    return owner


def document_negatives(documents: Mapping[str, np.ndarray], pairs: ContextPairs, per_pair: int) -> np.ndarray:
    """(n, per_pair) other concepts of each pair's document: those after the target first, nearest first.

    The context and the target are never included. At evaluation these concepts compete with
    the true next concept (the sentence after next is the classic wrong answer), so they can
    serve as negatives that need no search at all.
    """
    out = np.full((len(pairs), per_pair), NONE, dtype=np.int64)
    doc_ids = list(documents.values())
    for i in range(len(pairs)):
        ids = np.asarray(doc_ids[pairs.doc[i]], dtype=np.int64)
        t = int(np.flatnonzero(ids == pairs.target[i])[0])
        start = t - int((pairs.context[i] != PAD).sum())
        others = np.concatenate([ids[t + 1 :], ids[:start][::-1]])[:per_pair]
        out[i, : others.size] = others
    return out


def candidate_filter(
    candidates: np.ndarray,
    scores: np.ndarray,
    targets: np.ndarray,
    context: np.ndarray,
    vectors: np.ndarray,
    concept_doc: np.ndarray,
    cfg: TowerConfig,
) -> tuple[np.ndarray, dict[str, int]]:
    """Which candidates `(n, k)` may serve as negatives of their pair; and why the others may not.

    Each reason is counted only for candidates that no earlier reason already dropped.
    """
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    is_positive = valid & (candidates == targets[:, None])
    target_vectors = np.asarray(vectors[targets], dtype=np.float32)
    cand_vectors = np.asarray(vectors[safe.reshape(-1)], dtype=np.float32).reshape(*safe.shape, -1)
    to_positive = np.einsum("nkd,nd->nk", cand_vectors, target_vectors)
    is_duplicate = valid & (to_positive > cfg.near_dup)
    in_context = valid & (candidates[:, :, None] == context[:, None, :]).any(axis=2)
    if cfg.exclude_same_document:
        same_doc = valid & (concept_doc[safe] == concept_doc[targets][:, None]) & (concept_doc[safe] >= 0)
    else:
        same_doc = np.zeros_like(valid)
    lo, hi = cfg.band
    out_of_band = valid & ((scores < lo) | (scores > hi))
    keep = valid.copy()
    counts: dict[str, int] = {}
    for name, reason in (
        ("positive", is_positive),
        ("duplicate", is_duplicate),
        ("context", in_context),
        ("same_document", same_doc),
        ("band", out_of_band),
    ):
        counts[name] = int((keep & reason).sum())
        keep &= ~reason
    return keep, counts


def pick_negatives(
    keep: np.ndarray, candidates: np.ndarray, per_query: int, sample: str, rng: np.random.Generator
) -> np.ndarray:
    """(n, per_query) ids from each row's surviving candidates (hits are ordered best first)."""
    n = candidates.shape[0]
    out = np.full((n, per_query), NONE, dtype=np.int64)
    for i in range(n):
        survivors = candidates[i][keep[i]]
        if sample == "random" and survivors.size > per_query:
            survivors = survivors[np.sort(rng.choice(survivors.size, per_query, replace=False))]
        survivors = survivors[:per_query]
        out[i, : survivors.size] = survivors
    return out


def mine_hard_negatives(
    queries: np.ndarray,
    targets: np.ndarray,
    context: np.ndarray,
    vectors: np.ndarray,
    concept_doc: np.ndarray,
    index: SearchIndex,
    cfg: TowerConfig,
    rng: np.random.Generator,
    batch_size: int = 1024,
    on_batch: Callable[[], None] | None = None,
) -> tuple[np.ndarray, MiningStats]:
    """Hard negatives `(n, hard_per_query)` (NONE-padded) for pairs with these queries.

    `context` is the pairs' `(n, C)` left-padded context ids (PAD never matches a concept id);
    `index` is anything with `search(queries, k)`: the bank, or a FAISS index. `on_batch` is
    called after every searched batch (the trainer's watchdog beat: a mining round is many steps).
    """
    n = len(targets)
    negatives = np.full((n, cfg.hard_per_query), NONE, dtype=np.int64)
    totals = dict.fromkeys(("positive", "duplicate", "context", "same_document", "band"), 0)
    returned = failed = 0
    miner = ThreadedMiner(index, workers=1) if cfg.miner == "threaded" else SyncMiner(index)
    timeout = cfg.mine_timeout_s if cfg.miner == "threaded" else None
    with miner:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            result = miner.search(np.ascontiguousarray(queries[start:stop], dtype=np.float32), cfg.mine_depth, timeout)
            if on_batch is not None:
                on_batch()
            if not result.ok:
                failed += 1
                log.warning("mining search of pairs %d-%d failed (%s): no hard negatives", start, stop, result.error)
                continue
            keep, counts = candidate_filter(
                result.ids, result.scores, targets[start:stop], context[start:stop], vectors, concept_doc, cfg
            )
            negatives[start:stop] = pick_negatives(keep, result.ids, cfg.hard_per_query, cfg.mine_sample, rng)
            returned += int((result.ids >= 0).sum())
            for name, count in counts.items():
                totals[name] += count
    stats = MiningStats(
        searched=n,
        candidates=returned,
        dropped_positive=totals["positive"],
        dropped_duplicate=totals["duplicate"],
        dropped_context=totals["context"],
        dropped_same_document=totals["same_document"],
        dropped_band=totals["band"],
        kept_per_pair=float((negatives != NONE).sum(axis=1).mean()) if n else 0.0,
        failed_searches=failed,
    )
    return negatives, stats
