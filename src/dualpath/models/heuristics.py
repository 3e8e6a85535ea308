"""Heuristic next-concept queries from a context: the baselines every learned model must beat.

All take the left-padded context `ctx (n, C, d)` with its `mask (n, C)` from
`corpus.pairs.gather_context` and return unit-norm `(n, d)` float32 queries.
"""

from __future__ import annotations

import numpy as np

from dualpath.decider.kernels import NORM_EPS


def normalize_rows(x: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    # np.linalg.norm's own arithmetic (the same sum of squares), without its argument handling: a
    # generation step normalises a few single rows, where that handling was most of the call.
    norms = np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True))
    return x / np.maximum(norms, eps)


def last_vector(ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Left padding puts the most recent real concept in the last column whenever the row is non-empty.
    return normalize_rows(ctx[:, -1, :])


def mean_vector(ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(np.float32)
    return normalize_rows((ctx * weights[..., None]).sum(axis=1))


def ewm_vector(ctx: np.ndarray, mask: np.ndarray, decay: float = 0.5) -> np.ndarray:
    """Exponentially weighted mean: the last concept weighs 1, the one before `decay`, and so on."""
    width = ctx.shape[1]
    weights = decay ** np.arange(width - 1, -1, -1, dtype=np.float32)[None, :] * mask
    return normalize_rows((ctx * weights[..., None]).sum(axis=1))


HEURISTICS = {"last": last_vector, "mean": mean_vector, "ewm": ewm_vector}
