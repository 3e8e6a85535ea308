"""The index behind a bank, as a small interface so FAISS and Milvus are interchangeable.

A backend maps concept ids to vectors and answers inner-product top-k queries, optionally
restricted to one domain. It knows nothing of texts, documents or the bank's files other than
its own. `ConceptBank` is the only caller: it creates a backend with `create_backend`, reopens
one with `open_backend` (from the manifest's `backend` and `index` entries), and checks
`count()` against its own records.

To add a backend: implement `IndexBackend` plus the two class methods `create(dim, cfg)` and
`load(directory, dim, cfg, description)`, and register the class in `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dualpath.config import BankConfig
from dualpath.errors import BankError


@runtime_checkable
class IndexBackend(Protocol):
    name: str  # recorded in the manifest as "backend"
    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray, domains: Sequence[str | None]) -> None:
        """Index `vectors` ((n, dim), any float dtype, may be memory-mapped) under concept `ids`."""
        ...

    def search(self, queries: np.ndarray, k: int, domain: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: ids (n, k) int64 (-1 where fewer hits), scores (n, k) float32."""
        ...

    def tune(self, vectors: np.ndarray, domains: Sequence[str | None] | None = None) -> None:
        """Choose the search settings per depth for the bank's stated recall (`bank.recall`), measured on
        `vectors`, every row the index holds, and within a domain of `domains` (each row's) for searches
        confined to one (bank/tuning.py); a backend without such settings does nothing."""
        ...

    def delete(self, ids: np.ndarray) -> None: ...

    def count(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records as "index": enough for `load` to reopen it."""
        ...

    def save(self, directory: Path) -> None:
        """Write the backend's files into `directory` (a bank directory being built)."""
        ...

    def close(self) -> None: ...


def _registry() -> dict[str, Any]:
    # Imported lazily so that a bank with one backend never needs another's client library.
    from dualpath.bank.faiss_backend import FaissBackend
    from dualpath.bank.milvus_backend import MilvusBackend  # pymilvus itself is imported on first use

    return {"faiss": FaissBackend, "milvus": MilvusBackend}


def _backend_class(name: str) -> Any:
    backends = _registry()
    if name not in backends:
        raise BankError(f"unknown bank backend {name!r}; available: {', '.join(sorted(backends))}")
    return backends[name]


def create_backend(dim: int, cfg: BankConfig) -> IndexBackend:
    """An empty backend of kind `cfg.backend` for vectors of `dim`."""
    return _backend_class(cfg.backend).create(dim, cfg)


def open_backend(name: str, directory: Path, dim: int, cfg: BankConfig, description: dict) -> IndexBackend:
    """Reopen the backend a bank was saved with; `cfg` supplies search-time settings only."""
    return _backend_class(name).load(directory, dim, cfg, description)
