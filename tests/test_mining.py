"""Hard-negative mining: what may never come back as a negative, on random banks and a real one."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.bank.faiss_backend import FaissBackend
from dualpath.config import TowerConfig
from dualpath.corpus.pairs import PAD, split_pairs
from dualpath.training.mining import NONE, concept_documents, mine_hard_negatives, mining_index


def assert_negatives_are_true_negatives(negatives, pairs, vectors, concept_doc, queries, cfg) -> None:
    for i, row in enumerate(negatives):
        present = row[row != NONE]
        target = pairs.target[i]
        assert len(set(present.tolist())) == present.size  # no repeats
        assert target not in present
        assert not np.isin(present, pairs.context[i][pairs.context[i] != PAD]).any()
        if present.size:
            to_positive = vectors[present] @ vectors[target]
            assert (to_positive <= cfg.near_dup + 1e-6).all()
            scores = vectors[present] @ queries[i]
            assert ((scores >= cfg.band[0] - 1e-5) & (scores <= cfg.band[1] + 1e-5)).all()
            if cfg.exclude_same_document:
                assert (concept_doc[present] != concept_doc[target]).all()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_docs=st.integers(2, 12),
    near_dup=st.floats(0.5, 0.99),
    band=st.tuples(st.floats(-1.0, 0.45), st.floats(0.5, 1.0)),
    same_doc=st.booleans(),
    sample=st.sampled_from(["top", "random"]),
)
def test_mined_negatives_exclude_positive_duplicates_document_and_context(
    seed: int, n_docs: int, near_dup: float, band: tuple[float, float], same_doc: bool, sample: str
) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, size=n_docs)
    n = int(lengths.sum())
    # Low-dimensional vectors with planted exact duplicates, so every filter has work to do.
    vectors = rng.normal(size=(n, 4)).astype(np.float32)
    dup = rng.integers(0, n, size=n // 4)
    vectors[dup] = vectors[rng.integers(0, n, size=dup.size)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    documents = {f"d{d}": np.arange(bounds[d], bounds[d + 1]) for d in range(n_docs)}
    pairs = split_pairs(documents, context=3, fraction=0.5, seed=seed).train
    if len(pairs) == 0:
        return
    queries = vectors[pairs.target] + rng.normal(scale=0.5, size=(len(pairs), 4)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cfg = TowerConfig(
        hard_per_query=3, mine_depth=min(n, 20), near_dup=near_dup, band=band,
        exclude_same_document=same_doc, mine_sample=sample,
    )
    concept_doc = concept_documents(documents, n)
    negatives, stats = mine_hard_negatives(
        queries, pairs.target, pairs.context, vectors, concept_doc, FaissBackend.exact(vectors), cfg, rng, batch_size=4
    )
    assert negatives.shape == (len(pairs), 3)
    assert_negatives_are_true_negatives(negatives, pairs, vectors, concept_doc, queries, cfg)
    assert stats.searched == len(pairs)
    dropped = stats.dropped_positive + stats.dropped_duplicate + stats.dropped_context
    dropped += stats.dropped_same_document + stats.dropped_band
    assert dropped <= stats.candidates
    assert stats.dropped_positive <= len(pairs)


def test_top_sampling_keeps_the_hardest_survivors() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    documents = {f"d{d}": np.arange(d * 4, d * 4 + 4) for d in range(50)}
    pairs = split_pairs(documents, context=3, fraction=0.2).train
    index = FaissBackend.exact(vectors)
    cfg = TowerConfig(
        hard_per_query=2, mine_depth=50, band=(-1.0, 1.0), near_dup=1.0, exclude_same_document=True, mine_sample="top"
    )
    queries = vectors[pairs.target]
    negatives, _ = mine_hard_negatives(
        queries, pairs.target, pairs.context, vectors, concept_documents(documents, 200), index, cfg, rng
    )
    owner = concept_documents(documents, 200)
    for i in range(len(pairs)):
        ids, _ = index.search(queries[i : i + 1], 50)
        allowed = [c for c in ids[0] if owner[c] != owner[pairs.target[i]]]
        assert negatives[i].tolist() == allowed[:2]


def test_real_bank_negatives_respect_every_filter(wiki_bank) -> None:
    vectors = np.asarray(wiki_bank.all_vectors(), dtype=np.float32)
    documents = wiki_bank.documents()
    pairs = split_pairs(documents, context=5, fraction=0.1).train
    queries = vectors[pairs.target]  # the hardest possible query: the positive itself
    cfg = TowerConfig(hard_per_query=4, mine_depth=50, band=(0.2, 0.95), near_dup=0.9)
    concept_doc = concept_documents(documents, len(vectors))
    negatives, stats = mine_hard_negatives(
        queries, pairs.target, pairs.context, vectors, concept_doc, wiki_bank, cfg, np.random.default_rng(0)
    )
    assert_negatives_are_true_negatives(negatives, pairs, vectors, concept_doc, queries, cfg)
    # Searching with the positive finds it first: every pair dropped its own positive.
    assert stats.dropped_positive == len(pairs)
    assert stats.dropped_same_document > 0 and stats.kept_per_pair > 3


class BrokenIndex:
    """An index whose every search fails, or hangs past the miner's deadline."""

    def __init__(self, hang_s: float = 0.0) -> None:
        self.hang_s = hang_s

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.hang_s:
            time.sleep(self.hang_s)
        raise OSError("index file vanished")


@pytest.mark.parametrize("miner,hang_s", [("sync", 0.0), ("threaded", 0.0), ("threaded", 1.0)])
def test_a_failed_or_hung_search_leaves_pairs_without_negatives(miner: str, hang_s: float) -> None:
    documents = {"a": np.arange(0, 4), "b": np.arange(4, 8)}
    vectors = np.eye(8, dtype=np.float32)
    pairs = split_pairs(documents, context=2, fraction=0.5).train
    cfg = TowerConfig(miner=miner, mine_timeout_s=0.2)
    t0 = time.perf_counter()
    negatives, stats = mine_hard_negatives(
        vectors[pairs.target], pairs.target, pairs.context, vectors, concept_documents(documents, 8),
        BrokenIndex(hang_s), cfg, np.random.default_rng(0), batch_size=2,
    )
    assert (negatives == NONE).all() and stats.kept_per_pair == 0.0
    assert stats.failed_searches == -(-len(pairs) // 2)
    if hang_s:
        assert time.perf_counter() - t0 < hang_s * stats.failed_searches  # deadlines, not the hangs, set the pace


def test_mining_index_is_exact_when_it_fits(wiki_bank) -> None:
    vectors = wiki_bank.all_vectors()
    assert mining_index(wiki_bank, vectors, exact_mb=0) is wiki_bank  # too big: the bank's own index
    exact = mining_index(wiki_bank, vectors, exact_mb=1024)
    assert isinstance(exact, FaissBackend) and exact.factory == "Flat"  # float32, exact
    queries = np.asarray(vectors[:50], dtype=np.float32)
    ids, scores = exact.search(queries, 5)
    bank_ids, _ = wiki_bank.search(queries, 5)
    best = -np.sort(-(queries @ np.asarray(vectors, np.float32).T), axis=1)[:, :5]
    np.testing.assert_allclose(scores, best, atol=1e-5)
    assert (ids[:, 0] == bank_ids[:, 0]).mean() > 0.95  # float16 codes in the bank, same neighbours
