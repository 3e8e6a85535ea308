"""ConceptBank: a directory of concepts, their vectors and an index over them.

```
bank/
  manifest.json      format version, dim, count, encoder, dtype, backend + index spec, checksums
  vectors.npy        (count, dim) float16 or float32, row = concept id, memory-mapped on open
  metadata.sqlite    concept id → document id, position, text, domain, title
  index.faiss, ...   the backend's files (see bank/backend.py)
  models/            trained models (written by other parts, never checksummed here)
  (bank/layout.py names every file)
```

Memory: the index is the one copy of the vectors held in RAM. `vectors.npy` is memory-mapped and
read only for the rows asked for (`vectors(ids)`), so it costs page cache, not resident heap. A
flat index stores the vectors at the bank's precision (fp16 codes for a float16 bank), so an
opened flat float16 bank holds about half the raw float32 size. The price is disk: a flat
index file repeats what vectors.npy holds.

Writes are atomic. `build` writes a fresh directory beside the target and swaps it in at the
end; `add` does the same copy-on-write: it copies the bank into a temporary directory, appends
there and swaps. Copying costs O(bank) disk I/O, but re-encoding (what `add` avoids) costs far
more, and a reader or an interruption only ever sees the old bank or the new one, never files
from both.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dualpath import __version__
from dualpath.bank.backend import IndexBackend, create_backend, open_backend
from dualpath.bank.layout import MANIFEST_FILE, METADATA_FILE, VECTORS_FILE
from dualpath.bank.manifest import (
    FORMAT_VERSION,
    check_hashes,
    check_sizes,
    file_checksum,
    read_manifest,
)
from dualpath.bank.metadata import Concept, Metadata
from dualpath.config import MAX_SEARCH_K, DualPathConfig, SegmentConfig
from dualpath.corpus import Document, load_documents, segment_sentences
from dualpath.encoding import Encoder, load_encoder
from dualpath.encoding.pool import encoding_processes
from dualpath.errors import BankError, CorpusError
from dualpath.fileio import atomic_directory, pause_point, recover_directory, write_json_atomic
from dualpath.locking import write_lock
from dualpath.logs import progress_enabled

log = logging.getLogger(__name__)

# Concepts encoded per step while building: one encoder call, one metadata insert, one log line.
BUILD_BATCH = 1024
COPY_BLOCK = 65_536  # rows copied (and converted) at a time into vectors.npy
INSERT_BLOCK = 65_536  # concepts inserted into the metadata at a time by `from_vectors`
# An interrupted `build` from a corpus file resumes from here (beside the target, removed once the bank is in).
STAGING_SUFFIX = "building"
BUILD_STATE = "build-state.json"
RAW_VECTORS = "vectors.raw"
OPEN_ATTEMPTS = 5  # opens retried when a writer swapped the bank in mid-open

Source = str | Path | Iterable[Document]


class ConceptBank:
    """An opened bank. Create with `build`/`from_vectors`, reopen with `open`."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        vectors: np.ndarray,
        metadata: Metadata,
        backend: IndexBackend,
        cfg: DualPathConfig,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.cfg = cfg
        self._vectors = vectors
        self._metadata = metadata
        self._backend = backend
        self._encoder: Encoder | None = None
        self._documents: dict[str, np.ndarray] | None = None
        self._domains: dict[str | None, int] | None = None

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        cfg: DualPathConfig | None = None,
        verify: Literal["quick", "full"] = "quick",
        encoder: Encoder | None = None,
    ) -> ConceptBank:
        """Open and verify a bank: files present, sizes and checksums, every count aligned.

        `verify="quick"` hashes the head and tail of each file; `"full"` hashes everything.
        `encoder` reuses an already loaded encoder; it must be the one the bank was built with.
        """
        path = Path(path)
        cfg = cfg or DualPathConfig()
        # A writer swaps the whole directory in at once, but a reader opens its files one by one:
        # if the directory was swapped meanwhile, the files may come from two versions. Detect that
        # by the directory's identity and open again, so a reader sees the old bank or the new one.
        for attempt in range(OPEN_ATTEMPTS):
            recover_directory(path)
            before = _identity(path)
            try:
                bank = cls._open_once(path, cfg, verify)
            except BankError:
                if attempt + 1 < OPEN_ATTEMPTS and _identity(path) != before:
                    continue
                raise
            if _identity(path) == before:
                break
            bank.close()
        else:  # pragma: no cover - a bank rewritten OPEN_ATTEMPTS times during one open
            raise BankError(f"bank {path} kept changing while it was opened; try again")
        if encoder is not None:
            if encoder.name != bank.encoder_name or encoder.dim != bank.dim:
                bank.close()
                raise BankError(f"bank {path} was built with {bank.encoder_name}, not {encoder.name}")
            bank._encoder = encoder
        return bank

    @classmethod
    def _open_once(cls, path: Path, cfg: DualPathConfig, verify: Literal["quick", "full"]) -> ConceptBank:
        manifest = read_manifest(path)
        checksums = manifest["checksums"]
        for required in (VECTORS_FILE, METADATA_FILE):
            if required not in checksums:
                raise BankError(f"{path / MANIFEST_FILE} is corrupt: it does not list {required}")
        check_sizes(path, checksums)
        count, dim = int(manifest["count"]), int(manifest["dim"])
        vectors = _open_vectors(path / VECTORS_FILE, count, dim, manifest["dtype"])
        metadata = Metadata(path / METADATA_FILE)
        try:
            rows = metadata.count()
            if rows != count:
                raise BankError(f"bank {path} is misaligned: metadata has {rows} concepts, the manifest {count}")
            if rows and metadata.id_range() != (0, count - 1):
                raise BankError(f"bank {path} is misaligned: concept ids are not 0..{count - 1}")
            check_hashes(path, checksums, full=verify == "full")
            backend = open_backend(manifest["backend"], path, dim, cfg.bank, manifest["index"])
            indexed = backend.count()
            if indexed != count:
                backend.close()
                raise BankError(f"bank {path} is misaligned: the index holds {indexed} vectors, the manifest {count}")
        except BaseException:
            metadata.close()
            raise
        return cls(path, manifest, vectors, metadata, backend, cfg)

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        source: Source,
        out: str | Path,
        cfg: DualPathConfig | None = None,
        *,
        skip_bad: bool = False,
        limit_docs: int | None = None,
        encoder: Encoder | None = None,
        force: bool = False,
    ) -> ConceptBank:
        """Segment, encode and index a corpus into a new bank at `out`.

        A bank already at `out` is replaced only with `force=True`: the new bank does not keep its
        trained models or calibration, which belong to the old concepts.
        """
        cfg = cfg or DualPathConfig()
        out = Path(out)
        # Held from before the first check to the swap: no other writer can slip in between.
        with write_lock(out):
            _refuse_to_replace_non_bank(out)
            if not force and (out / MANIFEST_FILE).is_file():
                kept = [name for name in ("models", "calibration.json") if (out / name).exists()]
                lost = f" (its {' and '.join(kept)} would be lost)" if kept else ""
                raise BankError(
                    f"{out} is already a bank{lost}: pass --force to replace it, or `bank add` to extend it"
                )
            return cls._build(source, out, cfg, skip_bad, limit_docs, encoder)

    @classmethod
    def _build(
        cls,
        source: Source,
        out: Path,
        cfg: DualPathConfig,
        skip_bad: bool,
        limit_docs: int | None,
        encoder: Encoder | None,
    ) -> ConceptBank:
        documents = _documents(source, skip_bad, limit_docs)
        encoder = encoder or load_encoder(cfg.encoder, cfg.device)
        # Before encoding, which can take hours: a bad backend setting or an unreachable Milvus fails at once.
        backend = create_backend(encoder.dim, cfg.bank)
        started = time.perf_counter()
        # A corpus file can be read again, so its build checkpoints every batch into a staging directory
        # beside `out` and a rerun after an interruption continues there. An iterable cannot: it stages in
        # the temporary directory, which an interruption removes.
        key = _resume_key(source, cfg, encoder, skip_bad, limit_docs)
        # The backend is closed whatever happens: a Milvus Lite client left open keeps its server running.
        with closing(backend), atomic_directory(out) as tmp:
            staging = _staging_dir(out) if key is not None else tmp / ".staging"
            stage = _Stage.open(staging, key, encoder.dim, cfg.bank.dtype)
            try:
                skip = stage.documents
                with encoding_processes(encoder, cfg.encoder.processes) as encoding:
                    n_docs = _encode_documents(
                        itertools.islice(documents, skip, None), encoding, cfg.segment, stage.metadata, stage.vectors,
                        first_id=stage.vectors.rows, taken=stage.taken(), batch=cfg.bank.build_batch or BUILD_BATCH,
                        on_batch=stage.checkpoint, documents_before=skip, n_docs=stage.n_docs,
                    )
                stage.metadata.commit()
                vectors = stage.vectors.array()
                domains = stage.metadata.domains_from(0)
            finally:
                stage.close()
            shutil.copy2(staging / METADATA_FILE, tmp / METADATA_FILE)
            _write_vectors_and_index(tmp, vectors, backend, domains, first_id=0, dtype=cfg.bank.dtype)
            count = len(vectors)
            del vectors
            _write_manifest(
                tmp,
                backend,
                dim=encoder.dim,
                count=count,
                documents=n_docs,
                encoder_name=encoder.name,
                dtype=cfg.bank.dtype,
                segment=cfg.segment,
            )
            shutil.rmtree(tmp / ".staging", ignore_errors=True)
        shutil.rmtree(_staging_dir(out), ignore_errors=True)
        seconds = time.perf_counter() - started
        log.info(
            "built bank %s: %d concepts from %d documents in %.1f s (%.0f concepts/s)",
            out,
            count,
            n_docs,
            seconds,
            count / max(seconds, 1e-9),
        )
        return cls.open(out, cfg, encoder=encoder)

    @classmethod
    def from_vectors(
        cls,
        out: str | Path,
        vectors: np.ndarray,
        concepts: Iterable[Concept],
        encoder_name: str,
        cfg: DualPathConfig | None = None,
    ) -> ConceptBank:
        """A bank from precomputed unit-norm vectors (row i is concept i of `concepts`, whose id must be i).

        Streams: `vectors` may be a memory-mapped file and `concepts` any iterable (a generator), read block by
        block, so a million-concept bank is written without holding a copy of either.
        """
        cfg = cfg or DualPathConfig()
        out = Path(out)
        _refuse_to_replace_non_bank(out)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise BankError("from_vectors needs a non-empty (n, dim) array and n concepts")
        with write_lock(out), atomic_directory(out) as tmp:
            metadata = Metadata.create(tmp / METADATA_FILE)
            documents: set[str] = set()
            try:
                rows = iter(concepts)
                count = 0
                while block := list(itertools.islice(rows, INSERT_BLOCK)):
                    if any(c.id != count + i for i, c in enumerate(block)):
                        raise BankError("from_vectors: concept ids must be 0..n-1 in row order")
                    metadata.insert(block)
                    documents.update(c.doc_id for c in block)
                    count += len(block)
                if count != len(vectors):
                    raise BankError(f"from_vectors needs a non-empty (n, dim) array and n concepts, got "
                                    f"{len(vectors)} vectors and {count} concepts")
                metadata.commit()
                domains = metadata.domains_from(0)
            finally:
                metadata.close()
            with closing(create_backend(vectors.shape[1], cfg.bank)) as backend:
                _write_vectors_and_index(tmp, vectors, backend, domains, first_id=0, dtype=cfg.bank.dtype)
                _write_manifest(
                    tmp,
                    backend,
                    dim=vectors.shape[1],
                    count=count,
                    documents=len(documents),
                    encoder_name=encoder_name,
                    dtype=cfg.bank.dtype,
                    segment=cfg.segment,
                )
        return cls.open(out, cfg)

    def add(self, source: Source, *, skip_bad: bool = False, limit_docs: int | None = None) -> int:
        """Append documents (segmented and encoded as the bank was); returns the concepts added.

        Holds the bank's writer lock throughout, so models trained or calibrated meanwhile are not
        lost: their writers wait for (or are refused by) the lock, and everything else in the
        directory is copied under it.
        """
        with write_lock(self.path):
            if read_manifest(self.path) != self.manifest:
                # Another writer changed the bank since this one was opened: add to what is there now.
                self._reload()
            return self._add(source, skip_bad, limit_docs)

    def _add(self, source: Source, skip_bad: bool, limit_docs: int | None) -> int:
        documents = _documents(source, skip_bad, limit_docs)
        encoder = self.encoder()
        segment = SegmentConfig(**self.manifest.get("segment", {}))
        first_id, dtype = len(self), self.dtype
        with atomic_directory(self.path) as tmp:
            own = {MANIFEST_FILE, *self.manifest["checksums"]}
            _copy_other_entries(self.path, tmp, skip=own)
            shutil.copy2(self.path / METADATA_FILE, tmp / METADATA_FILE)
            metadata = Metadata(tmp / METADATA_FILE, writable=True)
            written = _VectorFile(tmp / RAW_VECTORS, self.dim, dtype)
            try:
                with encoding_processes(encoder, self.cfg.encoder.processes) as encoding:
                    n_docs = _encode_documents(
                        documents, encoding, segment, metadata, written, first_id=first_id,
                        taken=set(self.documents()), batch=self.cfg.bank.build_batch or BUILD_BATCH,
                    )
                metadata.commit()
                domains = metadata.domains_from(0)
            finally:
                metadata.close()
                written.close()
            new = written.array()
            # A fresh copy of the index from disk: the open bank keeps serving the old one meanwhile.
            backend = open_backend(self.manifest["backend"], self.path, self.dim, self.cfg.bank, self.manifest["index"])
            with closing(backend):
                _write_vectors_and_index(
                    tmp, new, backend, domains, first_id=first_id, dtype=dtype, existing=self._vectors
                )
                added = len(new)
                del new
                (tmp / RAW_VECTORS).unlink()
                _write_manifest(
                    tmp,
                    backend,
                    dim=self.dim,
                    count=first_id + added,
                    documents=int(self.manifest.get("documents", 0)) + n_docs,
                    encoder_name=self.encoder_name,
                    dtype=dtype,
                    segment=segment,
                    created=self.manifest.get("created"),
                )
        self._reload()
        log.info("added %d concepts from %d documents to %s (now %d)", added, n_docs, self.path, len(self))
        return added

    def ensure_current(self) -> None:
        """Raise if another process rewrote the bank since this object opened it (call under the lock)."""
        if read_manifest(self.path) != self.manifest:
            raise BankError(f"bank {self.path} changed since it was opened (another process wrote it); run again")

    def tune(self) -> dict[str, Any] | None:
        """Measure the index's search settings for `bank.recall` again (bank/tuning.py) and record them in
        the manifest, under the bank's writer lock: for a bank an earlier dualpath built, or to state another
        recall. Returns them as the manifest records them (None: an exact index, nothing to tune)."""
        with write_lock(self.path):
            if read_manifest(self.path) != self.manifest:
                self._reload()
            backend = open_backend(self.manifest["backend"], self.path, self.dim, self.cfg.bank, self.manifest["index"])
            with closing(backend):
                backend.tune(self._vectors, self._metadata.domains_from(0))
                index = backend.describe()
            # The index's files are untouched (their checksums stand): only the manifest's record changes.
            updated = datetime.now(UTC).isoformat(timespec="seconds")
            write_json_atomic(self.path / MANIFEST_FILE, {**self.manifest, "index": index, "updated": updated})
        self._reload()
        return self.manifest["index"].get("search")

    def _reload(self) -> None:
        encoder = self._encoder
        self.close()
        fresh = ConceptBank.open(self.path, self.cfg)
        self.__dict__.update(fresh.__dict__)
        self._encoder = encoder

    # -- reading ---------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def encoder_name(self) -> str:
        return str(self.manifest["encoder"])

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return f"ConceptBank({str(self.path)!r}, concepts={len(self)}, dim={self.dim}, index={self.index_spec!r})"

    @property
    def index_spec(self) -> str:
        return str(self.manifest["index"].get("factory") or self.manifest["index"].get("requested"))

    def search(self, queries: np.ndarray, k: int, domain: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k concepts by inner product (= cosine for unit vectors).

        `queries` is (n, dim) (or one (dim,) vector, treated as n = 1). Returns ids (n, k) int64
        and scores (n, k) float32; where fewer than k concepts match, id -1 and score -inf.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise BankError(f"dimension mismatch: queries of shape {queries.shape}, the bank's dim is {self.dim}")
        if not 1 <= k <= MAX_SEARCH_K:
            raise BankError(f"k must be between 1 and {MAX_SEARCH_K}, got {k}")
        if domain is not None and domain not in self.domains():
            known = ", ".join(sorted(d for d in self.domains() if d is not None)) or "none"
            raise BankError(f"unknown domain {domain!r}; this bank has: {known}")
        return self._backend.search(np.ascontiguousarray(queries), k, domain)

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 copies of the given concepts' vectors, shape ids.shape + (dim,)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            raise BankError(f"no concept with id {bad} in this bank (ids are 0..{len(self) - 1})")
        return np.asarray(self._vectors[ids], dtype=np.float32)

    def all_vectors(self) -> np.ndarray:
        """The memory-mapped (count, dim) matrix at the bank's dtype; row = concept id. Read-only."""
        return self._vectors

    def texts(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return [c.text for c in self.concepts(ids)]

    def concepts(self, ids: Sequence[int] | np.ndarray) -> list[Concept]:
        return self._metadata.concepts([int(i) for i in np.asarray(ids).reshape(-1)])

    def documents(self) -> dict[str, np.ndarray]:
        """Concept ids of each document in order (documents in the order they were added)."""
        if self._documents is None:
            self._documents = self._metadata.documents()
        return self._documents

    def domains(self) -> dict[str | None, int]:
        """Concepts per domain (None: concepts without a domain)."""
        if self._domains is None:
            self._domains = self._metadata.domains()
        return self._domains

    def encoder(self) -> Encoder:
        """The encoder this bank was built with (loaded on first use; `cfg.encoder` sets batch/device)."""
        if self._encoder is None:
            settings = self.cfg.encoder.model_copy(update={"name": self.encoder_name})
            encoder = load_encoder(settings, self.cfg.device)
            if encoder.dim != self.dim:
                raise BankError(f"dimension mismatch: encoder {self.encoder_name} gives {encoder.dim}, bank {self.dim}")
            self._encoder = encoder
        return self._encoder

    def close(self) -> None:
        self._backend.close()
        self._metadata.close()

    def __enter__(self) -> ConceptBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers: one step of a build each ---------------------------------------------------------------


def _documents(source: Source, skip_bad: bool, limit_docs: int | None) -> Iterator[Document]:
    """The documents to add, with the first one read already: a bad source fails before the encoder loads."""
    if isinstance(source, str | Path):
        documents = load_documents(source, skip_bad=skip_bad, limit=limit_docs)
    else:
        documents = iter(source) if limit_docs is None else itertools.islice(source, limit_docs)
    first = next(documents, None)
    if first is None:
        raise CorpusError("the corpus has no documents")
    return itertools.chain([first], documents)


def _refuse_to_replace_non_bank(out: Path) -> None:
    # `atomic_directory` replaces whatever is at `out`; only ever let it replace a bank.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise BankError(f"refusing to write a bank to {out}: it exists and is not a bank")


def _encode_documents(
    documents: Iterable[Document],
    encoder: Encoder,
    segment: SegmentConfig,
    metadata: Metadata,
    vectors: _VectorFile,
    first_id: int,
    taken: set[str],
    batch: int = BUILD_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
    documents_before: int = 0,
    n_docs: int = 0,
) -> int:
    """Segment and encode documents: concept rows go to `metadata`, vectors to the `vectors` file, a batch at a
    time, so memory does not grow with the corpus. Returns the documents with concepts (plus `n_docs`).

    After each batch, `on_batch(documents read, documents with concepts)` (counting `documents_before`).
    """
    pending: list[Concept] = []
    next_id, started = first_id, time.perf_counter()
    read = documents_before
    progress = None
    if progress_enabled():
        from tqdm.auto import tqdm

        progress = tqdm(desc="building", unit="concept", initial=first_id)

    def flush() -> None:
        encoded = encoder.encode([c.text for c in pending])
        metadata.insert(pending)
        vectors.append(encoded)
        if on_batch is not None:
            on_batch(read, n_docs)
        done = next_id - first_id
        if progress is not None:
            progress.update(len(pending))
        else:
            log.info(
                "encoded %d concepts from %d documents (%.0f concepts/s)",
                next_id,
                n_docs,
                done / max(time.perf_counter() - started, 1e-9),
            )
        pending.clear()

    for doc in documents:
        read += 1
        if doc.id in taken:
            raise CorpusError(f"duplicate document id {doc.id!r}")
        taken.add(doc.id)
        texts = segment_sentences(doc.text, segment)
        if not texts:
            log.warning("skipping document %r: no concepts in its text", doc.id)
            continue
        n_docs += 1
        pending.extend(Concept(next_id + i, doc.id, i, text, doc.domain, doc.title) for i, text in enumerate(texts))
        next_id += len(texts)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    if progress is not None:
        progress.close()
    if vectors.rows == 0:  # (a resumed build may have nothing left to encode)
        raise CorpusError("the corpus produced no concepts")
    return n_docs


class _VectorFile:
    """Vectors appended to a raw file at the bank's dtype, batch by batch; `array()` maps it back (no copy)."""

    def __init__(self, path: Path, dim: int, dtype: str, rows: int = 0) -> None:
        self.path, self.dim, self.dtype, self.rows = path, dim, np.dtype(dtype), rows
        if path.exists():
            os.truncate(path, rows * dim * self.dtype.itemsize)  # drop rows past the last checkpoint
        self._fh = open(path, "ab")  # noqa: SIM115  closed by close()

    def append(self, vectors: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        self.rows += len(vectors)

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def array(self) -> np.ndarray:
        if not self._fh.closed:
            self._fh.flush()
        if self.rows == 0:
            return np.zeros((0, self.dim), dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.rows, self.dim))

    def close(self) -> None:
        self._fh.close()


class _Stage:
    """Where a build writes its concepts before the bank exists: metadata, vectors and (resumable) progress.

    The checkpoint after each batch is the order that makes a resume exact: metadata committed, vectors
    synced, then `build-state.json` (documents read, concepts written) replaced atomically. A resume trusts
    the state file and drops whatever the metadata and vectors hold past it.
    """

    def __init__(self, directory: Path, key: str | None, metadata: Metadata, vectors: _VectorFile,
                 documents: int, n_docs: int) -> None:
        self.directory, self.key, self.metadata, self.vectors = directory, key, metadata, vectors
        self.documents, self.n_docs = documents, n_docs

    @classmethod
    def open(cls, directory: Path, key: str | None, dim: int, dtype: str) -> _Stage:
        state = _read_state(directory / BUILD_STATE)
        if key is not None and state.get("key") == key and (directory / METADATA_FILE).is_file():
            concepts = int(state["concepts"])
            metadata = Metadata(directory / METADATA_FILE, writable=True)
            metadata.truncate(concepts)
            metadata.commit()
            log.info(
                "resuming the build from %s: %d documents (%d concepts) were done", directory,
                state["documents"], concepts,
            )
            return cls(directory, key, metadata, _VectorFile(directory / RAW_VECTORS, dim, dtype, concepts),
                       int(state["documents"]), int(state["n_docs"]))
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return cls(directory, key, Metadata.create(directory / METADATA_FILE),
                   _VectorFile(directory / RAW_VECTORS, dim, dtype), 0, 0)

    def taken(self) -> set[str]:
        return set(self.metadata.documents()) if self.vectors.rows else set()

    def checkpoint(self, documents: int, n_docs: int) -> None:
        if self.key is None:
            return
        self.metadata.commit()
        self.vectors.sync()
        state = {"key": self.key, "documents": documents, "n_docs": n_docs, "concepts": self.vectors.rows}
        write_json_atomic(self.directory / BUILD_STATE, state)
        pause_point("build-checkpoint")

    def close(self) -> None:
        self.metadata.close()
        self.vectors.close()


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.{STAGING_SUFFIX}"


def _resume_key(
    source: Source, cfg: DualPathConfig, encoder: Encoder, skip_bad: bool, limit_docs: int | None
) -> str | None:
    """What a resumed build must share with the interrupted one; None for a source that cannot be read again."""
    if not isinstance(source, str | Path):
        return None
    path = Path(source)
    stat = path.stat() if path.is_file() else None
    key = {
        "source": str(path.resolve()) if stat else str(source),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "encoder": encoder.name,
        "dim": encoder.dim,
        "dtype": cfg.bank.dtype,
        "segment": cfg.segment.model_dump(),
        "skip_bad": skip_bad,
        "limit_docs": limit_docs,
        "batch": cfg.bank.build_batch or BUILD_BATCH,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _write_vectors_and_index(
    directory: Path,
    new: np.ndarray,
    backend: IndexBackend,
    domains: list[str | None],
    first_id: int,
    dtype: str | None = None,
    existing: np.ndarray | None = None,
) -> None:
    """vectors.npy = existing rows + new rows (at `dtype`, default new's), copied a block at a time; the backend
    indexes the new rows as stored on disk and tunes its searches on all of them (`domains`: every row's).
    `new` may be memory-mapped: nothing here holds all of it."""
    total = first_id + len(new)
    dtype = np.dtype(dtype or new.dtype)
    # Plain writes, not a writable memmap: a memmap's dirty pages count in the writer's resident set until
    # written back, which at a million vectors was as much again as the float16 matrix.
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total, new.shape[1])}
    with open(directory / VECTORS_FILE, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for source, count in ((existing, first_id), (new, len(new))):
            for start in range(0, count, COPY_BLOCK):
                block = np.ascontiguousarray(source[start : min(start + COPY_BLOCK, count)], dtype=dtype)
                fh.write(block.tobytes())
                _release(source)
        fh.flush()
        os.fsync(fh.fileno())
    stored = np.load(directory / VECTORS_FILE, mmap_mode="r")
    backend.add(np.arange(first_id, total, dtype=np.int64), stored[first_id:], domains[first_id:])
    backend.tune(stored, domains)
    _release(stored)
    backend.save(directory)


def _release(array: np.ndarray | None) -> None:
    """Let the kernel drop the pages of a memory-mapped array already read (they count as resident otherwise)."""
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mapped, "madvise"):
        import mmap

        mapped.madvise(mmap.MADV_DONTNEED)


def _write_manifest(
    directory: Path,
    backend: IndexBackend,
    *,
    dim: int,
    count: int,
    documents: int,
    encoder_name: str,
    dtype: str,
    segment: SegmentConfig,
    created: str | None = None,
) -> None:
    index = backend.describe()
    files = [VECTORS_FILE, METADATA_FILE, *index.get("files", [])]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = {
        "format_version": FORMAT_VERSION,
        "dim": dim,
        "count": count,
        "documents": documents,
        "encoder": encoder_name,
        "dtype": dtype,
        "backend": backend.name,
        "index": index,
        "segment": segment.model_dump(),
        "checksums": {name: file_checksum(directory / name) for name in files},
        "created": created or now,
        "updated": now,
        "dualpath_version": __version__,
    }
    write_json_atomic(directory / MANIFEST_FILE, manifest)


def _identity(path: Path) -> tuple[int, int, bytes] | None:
    """(device, inode, manifest digest) of the bank directory: a swap gives the path a new inode.

    The inode alone is not enough: a writer that swaps twice while a reader opens may create the
    second version in a directory that reuses the first one's freed inode number. Every version's
    manifest differs (its creation time and checksums), so the pair tells versions apart.
    """
    try:
        st = path.stat()
        manifest = (path / MANIFEST_FILE).read_bytes()
    except OSError:
        return None
    return st.st_dev, st.st_ino, hashlib.blake2b(manifest, digest_size=16).digest()


def _open_vectors(path: Path, count: int, dim: int, dtype: str) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BankError(f"cannot read {path}: {err}".splitlines()[0]) from None
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise BankError(f"dimension mismatch: {path} has shape {vectors.shape}, the manifest says dim {dim}")
    if vectors.shape[0] != count:
        raise BankError(f"bank is misaligned: {path} has {vectors.shape[0]} rows, the manifest {count}")
    try:
        expected = np.dtype(dtype)
    except TypeError:
        raise BankError(f"the manifest beside {path} is corrupt: dtype {dtype!r} is not a dtype") from None
    if vectors.dtype != expected:
        raise BankError(f"{path} holds {vectors.dtype}, the manifest says {dtype}")
    return vectors


def _copy_other_entries(source: Path, target: Path, skip: set[str]) -> None:
    """Carry over what other parts keep in the bank (trained models, calibration)."""
    for entry in source.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
