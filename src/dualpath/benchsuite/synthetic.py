"""Vectors for the search and memory benchmarks: clustered synthetic ones, exact neighbours, vector-only banks.

Uniformly random unit vectors in 384-d are a poor stand-in for sentence embeddings: every pair is
nearly orthogonal and every index looks perfect or hopeless. Sentence embeddings cluster by topic,
so the synthetic vectors do too: a few thousand unit-norm centres, points spread around each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualpath.bank import Concept, ConceptBank
from dualpath.config import DualPathConfig

POINTS_PER_CENTRE = 30
CONCEPTS_PER_DOCUMENT = 4  # placeholder documents of vector-only banks
_EXACT_BLOCK = 64  # queries scored against the whole matrix at a time


def clustered_unit_vectors(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points around unit-norm centres with noise of norm ~0.7: a point's cosine to others of its
    cluster is ~0.67 and to the rest ~0, like sentence embeddings of one topic and of others."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65_536):  # bounded temporaries at 1M × 384
        m = min(65_536, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.7 / np.sqrt(dim))
        x = centres[rng.integers(0, len(centres), m)] + noise
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_set(n: int, queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` clustered unit vectors and `queries` held-out queries from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // POINTS_PER_CENTRE), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return clustered_unit_vectors(n, dim, centres, rng), clustered_unit_vectors(queries, dim, centres, rng)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest inner products per query, in float32 (the ground truth recall is against)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _EXACT_BLOCK):
        scores = np.asarray(queries[start : start + _EXACT_BLOCK], np.float32) @ matrix.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + len(top)] = np.take_along_axis(top, order, axis=1)
    return out


def vector_bank(out: str | Path, vectors: np.ndarray, index: str, cfg: DualPathConfig | None = None) -> ConceptBank:
    """A bank of `vectors` with placeholder concepts (no encoder): what `bank build` writes, minus encoding."""
    cfg = cfg or DualPathConfig()
    cfg = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"index": index, "backend": "faiss"})})
    concepts = [
        Concept(i, f"doc{i // CONCEPTS_PER_DOCUMENT}", i % CONCEPTS_PER_DOCUMENT, f"concept {i}", None, "")
        for i in range(len(vectors))
    ]
    return ConceptBank.from_vectors(out, vectors, concepts, "synthetic", cfg)
