"""The FAISS backend: an inner-product index keyed by concept id, with per-domain filters.

The index is `IndexIDMap(<factory index>)`, so search returns concept ids directly and
`delete` works for the kinds that support removal. A domain filter is an `IDSelectorBitmap`
over concept ids (one bit per concept per domain), passed as a search parameter, so the
filter runs inside FAISS instead of over-fetching and discarding.

The index stores vectors at the bank's precision: a float16 bank uses FAISS's fp16 scalar
quantizer (`SQfp16`), which decodes to exactly the float16 values in vectors.npy. Exact
search then agrees with the bank's own vectors and takes half the memory of float32.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dualpath.bank.ids import checked_ids
from dualpath.bank.index_policy import AUTO_FLAT_MAX, HNSW_EF_CONSTRUCTION, HNSW_M, KINDS, index_kind, ivf_nlist
from dualpath.bank.tuning import MAX_EF_SEARCH, SearchTuning, recorded_tuning, setting_ladder, tune_with_domains
from dualpath.config import BankConfig
from dualpath.errors import BankError
from dualpath.fileio import atomic_path
from dualpath.runtime import one_search_thread

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
DOMAINS_FILE = "index_domains.npz"
ADD_BLOCK = 65_536  # vectors converted to float32 at a time while adding
_FAISS_LOCATION = re.compile(r"^Error in .*? at \S+:\d+: ")


def factory_string(requested: str, n: int, dtype: str) -> str:
    """The FAISS factory string for an index kind (`auto`/`flat`/`ivf`/`hnsw`) or a factory string."""
    storage = "SQfp16" if dtype == "float16" else "Flat"
    kind = index_kind(requested, n)
    if kind == "flat":
        return storage
    if kind == "hnsw":
        return f"HNSW{HNSW_M}" + ("" if storage == "Flat" else f",{storage}")
    if kind == "ivf":
        return f"IVF{ivf_nlist(n)},{storage}"
    return requested.strip()


class FaissBackend:
    name = "faiss"

    def __init__(
        self,
        dim: int,
        cfg: BankConfig,
        requested: str,
        index: faiss.IndexIDMap | None = None,
        domains: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.dim = dim
        self.cfg = cfg
        self.requested = requested
        self.index = index  # built on the first `add`, when `auto` can see the size
        self.factory = "" if index is None else _factory_of(index)
        # domain → sorted concept ids; concepts without a domain are in no filter.
        self.domain_ids: dict[str, np.ndarray] = domains or {}
        self._selectors: dict[str, tuple[faiss.IDSelector, np.ndarray]] = {}
        self._storage: faiss.Index | bool | None = None  # `_scan_of`'s storage (False: none), until rows change
        self.tuning: SearchTuning | None = None  # nprobe / efSearch per depth (tune)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int, cfg: BankConfig) -> FaissBackend:
        backend = cls(dim, cfg, requested=cfg.index)
        # A mistyped factory string fails now, not after hours of encoding. (`auto` is sized at `add`.)
        backend._factory_index(factory_string(cfg.index, AUTO_FLAT_MAX, cfg.dtype))
        return backend

    @classmethod
    def exact(cls, vectors: np.ndarray) -> FaissBackend:
        """An exact float32 inner-product index over `vectors` (ids 0..n-1, no domains): what mining, tests
        and benchmarks search when they need the bank's (ids, scores) contract without a bank on disk."""
        backend = cls.create(vectors.shape[1], BankConfig(index="flat", dtype="float32"))
        # Float32 storage whatever `vectors` hold; `add` converts a block at a time (one copy, the index's).
        backend.index = backend._new_index(len(vectors), "float32")
        backend.add(np.arange(len(vectors), dtype=np.int64), vectors, [None] * len(vectors))
        return backend

    @classmethod
    def load(cls, directory: Path, dim: int, cfg: BankConfig, description: dict) -> FaissBackend:
        path = Path(directory) / INDEX_FILE
        try:
            # read_index returns the concrete type; downcasting its result would drop ownership.
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise BankError(f"cannot read FAISS index {path}: {_first_line(err)}") from None
        if not isinstance(index, faiss.IndexIDMap):
            raise BankError(f"{path} is not a dualpath index (expected an IndexIDMap)")
        if index.d != dim:
            raise BankError(f"dimension mismatch: index {path} has dim {index.d}, the bank {dim}")
        backend = cls(
            dim,
            cfg,
            requested=description.get("requested", "auto"),
            index=index,
            domains=_load_domains(Path(directory) / DOMAINS_FILE),
        )
        backend.factory = description.get("factory", backend.factory)
        backend.tuning = recorded_tuning(description, cfg.recall, backend._knob() is not None, directory,
                                         f"nprobe {cfg.nprobe} / efSearch {cfg.ef_search}")
        return backend

    def _new_index(self, n: int, dtype: str) -> faiss.IndexIDMap:
        factory = factory_string(self.requested, n, dtype)
        inner = self._factory_index(factory)
        self.factory = factory
        log.info("index %s (requested %s) for %d vectors", factory, self.requested, n)
        return faiss.IndexIDMap(inner)

    def _factory_index(self, factory: str) -> faiss.Index:
        if "IDMap" in factory:
            raise BankError(f"index spec {factory!r}: leave out IDMap, the bank adds its own")
        try:
            index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise BankError(
                f"invalid index spec {self.requested!r} (expected {'/'.join(KINDS)} or a FAISS factory "
                f"string): {_first_line(err)}"
            ) from None
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index

    # -- IndexBackend ----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, domains: Sequence[str | None]) -> None:
        ids = checked_ids(self.dim, ids, vectors, domains)
        if len(ids) == 0:
            return
        if self.index is None:
            dtype = "float16" if vectors.dtype == np.float16 else "float32"
            self.index = self._new_index(len(ids), dtype)
        if not self.index.is_trained:
            self._train(vectors)
        for start in range(0, len(ids), ADD_BLOCK):
            block = np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=np.float32)
            self.index.add_with_ids(block, ids[start : start + ADD_BLOCK])
        self._add_domains(ids, domains)

    def _train(self, vectors: np.ndarray) -> None:
        # k-means needs a few dozen points per centroid, not the whole corpus.
        n = vectors.shape[0]
        ivf = faiss.try_extract_index_ivf(self.index.index)
        want = n if ivf is None else min(n, max(256 * ivf.nlist, 10_000), 500_000)
        rows = np.sort(np.random.default_rng(0).choice(n, size=want, replace=False)) if want < n else slice(None)
        sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        log.info("training %s on %d vectors", self.factory, sample.shape[0])
        try:
            self.index.train(sample)
        except RuntimeError as err:
            raise BankError(f"cannot train index {self.factory!r} on {n} vectors: {_first_line(err)}") from None

    def _add_domains(self, ids: np.ndarray, domains: Sequence[str | None]) -> None:
        by_domain: dict[str, list[int]] = {}
        for concept_id, domain in zip(ids.tolist(), domains, strict=True):
            if domain is not None:
                by_domain.setdefault(domain, []).append(concept_id)
        for domain, new in by_domain.items():
            old = self.domain_ids.get(domain, np.zeros(0, dtype=np.int64))
            self.domain_ids[domain] = np.union1d(old, np.asarray(new, dtype=np.int64))
        self._selectors.clear()
        self._storage = None

    def tune(self, vectors: np.ndarray, domains: Sequence[str | None] | None = None) -> None:
        """nprobe (IVF) or efSearch (HNSW) per depth for `bank.recall`, measured on `vectors` (the bank's
        rows, ids 0..n-1), and again within a domain (`domains`, each row's) for searches confined to one;
        none for an exact index, or with `bank.recall` null."""
        self.tuning = None
        knob = self._knob()
        if knob is None or self.cfg.recall is None:
            return
        nlist = 0 if knob == "efSearch" else faiss.try_extract_index_ivf(self._searched_index(self.index.index)).nlist

        def search_in(domain: str | None) -> Callable[[int, np.ndarray, int], np.ndarray]:
            selector = None if domain is None else self._selector(domain)

            def search_at(value: int, queries: np.ndarray, k: int) -> np.ndarray:
                # The setting as it is (a share of 1 widens nothing): it is measured at the domain's share, on
                # the graph. (A search scans a domain instead only where that is exact and cheaper: measured
                # through the scan, the narrowest domains would say nothing of the wider ones' beams.)
                params = self._search_params(self.index.index, selector, k, 1.0, value)
                return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)[1]
            return search_at

        self.tuning = tune_with_domains(search_in(None), search_in, vectors, domains, setting_ladder(knob, nlist),
                                        knob, self.cfg.recall)

    def _knob(self) -> str | None:
        """The search setting an approximate index trades recall for (`nprobe`, `efSearch`); None when exact."""
        if self.index is None:
            return None
        inner = self._searched_index(self.index.index)
        if isinstance(inner, faiss.IndexHNSW):
            return "efSearch"
        return "nprobe" if faiss.try_extract_index_ivf(inner) is not None else None

    @staticmethod
    def _searched_index(index: faiss.Index) -> faiss.Index:
        index = faiss.downcast_index(index)
        return FaissBackend._searched_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index

    def search(self, queries: np.ndarray, k: int, domain: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = queries.shape[0]
        if self.index is None or self.index.ntotal == 0:
            return np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32)
        selector, share = None, 1.0
        if domain is not None:
            if domain not in self.domain_ids:
                return np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32)
            selector = self._selector(domain)
            share = len(self.domain_ids[domain]) / max(1, self.index.ntotal)
        scores, ids = self._search(queries, k, self._search_params(self.index.index, selector, k, share), domain)
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return ids.astype(np.int64, copy=False), scores

    def _search(
        self, queries: np.ndarray, k: int, params: faiss.SearchParameters, domain: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's (scores, ids) for `params`; a domain's rows scanned instead where `_scan_of` says."""
        searched = self.index
        if domain is not None and (storage := self._scan_of(domain, params)) is not None:
            searched, params = storage, faiss.SearchParameters(sel=self._selector(domain))
        if len(queries) == 1:
            with one_search_thread():
                return searched.search(queries, k, params=params)
        return searched.search(queries, k, params=params)

    def _scan_of(self, domain: str, params: faiss.SearchParameters) -> faiss.Index | None:
        """The HNSW graph's own vector storage, to scan a domain's rows exactly, where that computes fewer
        distances than the graph search would (about efSearch × M; a beam wide enough to find a narrow
        domain's neighbours from a query outside it scores more rows than the domain holds). None: search
        the graph. Only where the bank's ids are the storage's row numbers (as a bank adds them)."""
        if not isinstance(params, faiss.SearchParametersHNSW):
            return None
        if len(self.domain_ids[domain]) > params.efSearch * HNSW_M:
            return None
        if self._storage is None:
            inner = faiss.downcast_index(self.index.index)
            ids = faiss.vector_to_array(self.index.id_map)
            in_order = isinstance(inner, faiss.IndexHNSW) and bool((ids == np.arange(len(ids))).all())
            self._storage = faiss.downcast_index(inner.storage) if in_order else False
        return self._storage or None

    def _selector(self, domain: str) -> faiss.IDSelector:
        if domain not in self._selectors:
            ids = self.domain_ids[domain]
            bits = np.zeros(int(ids[-1]) + 1 if len(ids) else 0, dtype=bool)
            bits[ids] = True
            bitmap = np.packbits(bits, bitorder="little")
            # IDSelectorBitmap takes the bitmap's length in bytes and keeps a pointer into it, so the
            # array is stored beside the selector.
            self._selectors[domain] = (faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap)
        return self._selectors[domain][0]

    def _search_params(
        self, index: faiss.Index, selector: faiss.IDSelector | None, k: int, share: float, setting: int | None = None
    ) -> faiss.SearchParameters:
        """The search's parameters at depth k: the tuned setting for k (`tune`), else the configured one, and
        within a domain (`selector`, `share` of the rows) the wider of it (an HNSW beam widened by the share)
        and the setting measured within domains; `setting` given (while tuning) overrides them all."""
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexPreTransform):
            inner = self._search_params(index.index, selector, k, share, setting)
            return faiss.SearchParametersPreTransform(index_params=inner)
        within = 0  # the setting measured for searches within a domain, where the bank has one
        if setting is None and self.tuning is not None and self.cfg.recall is not None:
            setting = self.tuning.setting(k)
            if selector is not None and self.tuning.filtered is not None:
                within = self.tuning.filtered.setting_for(k, share)
        if isinstance(index, faiss.IndexHNSW):
            # The beam must hold the k results; a filter hides part of the graph, so it widens in proportion,
            # and at least to the beam measured within domains (bank/tuning.py).
            ef = max(self.cfg.ef_search if setting is None else setting, k)
            if selector is not None:
                ef = max(min(max(ef, int(ef / max(share, 1e-3)), within), MAX_EF_SEARCH), k)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        if faiss.try_extract_index_ivf(index) is not None:
            nlist = faiss.try_extract_index_ivf(index).nlist
            nprobe = max(self.cfg.nprobe if setting is None else setting, within)
            return faiss.SearchParametersIVF(sel=selector, nprobe=min(nprobe, nlist))
        return faiss.SearchParameters(sel=selector)

    def delete(self, ids: np.ndarray) -> None:
        if self.index is None:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        try:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        except RuntimeError as err:
            raise BankError(f"index {self.factory!r} does not support deletion: {_first_line(err)}") from None
        for domain, members in list(self.domain_ids.items()):
            self.domain_ids[domain] = np.setdiff1d(members, ids)
        self._selectors.clear()
        self._storage = None

    def count(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "factory": self.factory,
                               "files": [INDEX_FILE, DOMAINS_FILE]}
        if self.tuning is not None:
            out["search"] = self.tuning.to_dict()
        return out

    def save(self, directory: Path) -> None:
        if self.index is None:
            raise BankError("cannot save an empty index")
        with atomic_path(Path(directory) / INDEX_FILE) as tmp:
            faiss.write_index(self.index, str(tmp))
        names = sorted(self.domain_ids)
        with atomic_path(Path(directory) / DOMAINS_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                names=np.asarray(names, dtype=str),
                sizes=np.asarray([len(self.domain_ids[d]) for d in names], dtype=np.int64),
                ids=np.concatenate([self.domain_ids[d] for d in names]) if names else np.zeros(0, np.int64),
            )

    def close(self) -> None:
        self._selectors.clear()
        self._storage = None
        self.index = None


def _load_domains(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            names, sizes, ids = data["names"].tolist(), data["sizes"], data["ids"]
    except (OSError, ValueError, KeyError) as err:
        raise BankError(f"cannot read domain filters {path}: {_first_line(err)}") from None
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {name: ids[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}


def _factory_of(index: faiss.IndexIDMap) -> str:
    return type(faiss.downcast_index(index.index)).__name__


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    # FAISS prefixes messages with the C++ function and location; keep only the human part.
    return _FAISS_LOCATION.sub("", line)
