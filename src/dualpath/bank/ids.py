"""The argument checks every index backend applies to `add`, alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dualpath.errors import BankError


def checked_ids(dim: int, ids: np.ndarray, vectors: np.ndarray, domains: Sequence[str | None]) -> np.ndarray:
    """`add`'s arguments checked alike by every backend; returns `ids` as contiguous int64."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise BankError(f"dimension mismatch: adding vectors of shape {vectors.shape} to a {dim}-d index")
    if not (len(ids) == vectors.shape[0] == len(domains)):
        raise BankError("ids, vectors and domains must have the same length")
    return ids
