"""The Milvus backend: the bank's index in a Milvus collection, embedded (Milvus Lite) or on a cluster.

`cfg.bank.milvus_uri` picks the deployment: a local path ending in `.db` runs Milvus Lite inside
this process (pymilvus starts it on demand; one process at a time may hold a `.db`), and
`http://host:19530` (optionally `/<database>`) reaches a Milvus server or cluster, with the token
(`user:password` or an API key) from the environment variable MILVUS_TOKEN.

One collection per bank: `id` INT64 primary key (= concept id), `vector` FLOAT_VECTOR (dim) with an
inner-product index, `domain` VARCHAR ("" for no domain). `domain` is the collection's partition
key: Milvus hashes the domains into a fixed set of partitions, so a domain-restricted search is the
filter `domain == "<d>"` and touches only that domain's partition instead of scanning and
discarding the rest (the reference system sharded its index by lane for the same reason), without
one hand-made partition per domain and its limit of ~1024.

Writes are idempotent, so a failed or interrupted build is finished by running it again:
- The collection's name is a digest of what the bank first indexes (ids, vectors, domains, index
  spec). Re-running an interrupted build reaches the same collection and inserts only the ids not
  there yet; a rebuild with other content makes a new collection and leaves the old bank's intact
  until the new manifest replaces it (the same guarantee `atomic_directory` gives FAISS files).
- Appends upsert (a retried append overwrites the rows an interrupted one left behind).
- The manifest, written by `ConceptBank` only after `save` has flushed every insert, records
  `rows` (how many vectors the bank owns) and `id_limit` (its ids are below it). Opening checks the
  collection's dimension and count against them. Rows at or above `id_limit`, left by an interrupted
  append, are not this bank's: searches then filter them out, and the next append overwrites them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from dualpath.bank.ids import checked_ids
from dualpath.bank.index_policy import HNSW_EF_CONSTRUCTION, HNSW_M, index_kind, ivf_nlist
from dualpath.bank.tuning import MAX_EF_SEARCH, SearchTuning, recorded_tuning, setting_ladder, tune_with_domains
from dualpath.config import BankConfig
from dualpath.errors import BankError
from dualpath.logs import progress_enabled

log = logging.getLogger(__name__)

ID_FIELD, VECTOR_FIELD, DOMAIN_FIELD = "id", "vector", "domain"
COLLECTION_PREFIX = "dualpath_"
DOMAIN_MAX_BYTES = 512
INSERT_BATCH_BYTES = 8 << 20  # vectors per insert RPC: well under gRPC's 64 MiB default message cap
SEARCH_RESULTS_PER_CALL = 65_536  # queries per search RPC = this // k, to bound the reply's size
MAX_TOP_K = 16_384  # Milvus's limit on k
INDEX_WAIT_S = 600.0  # how long tuning waits for a server to finish indexing a build's rows
# A server indexes a sealed segment only from this many rows (Milvus's default
# `minSegmentNumRowsToEnableIndex`); smaller ones it searches exhaustively.
MIN_INDEXED_SEGMENT_ROWS = 1024
# Milvus's limit on nprobe. A server reads at most all its lists (it takes a larger nprobe as nlist), and Milvus
# Lite builds its IVF index with lists of its own choosing (a 1,500-row bank asked for 38 lists searched like
# one of 128: nprobe 38 returned 440 of 1,001 results), so neither nprobe nor its tuning stops at the nlist asked.
MAX_NPROBE = 65_536
SERVER_SCHEMES = ("http", "https", "tcp", "unix")
TOKEN_VARIABLE = "MILVUS_TOKEN"  # "user:password" or an API key, for servers with authentication
# Milvus Lite runs its server in this process: no keep-alive pings (its gRPC server answers
# frequent idle pings with GOAWAY "too_many_pings", which grpc prints to stderr).
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 3_600_000, "grpc.keepalive_permit_without_calls": 0}
_MILVUS_INDEX_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class MilvusBackend:
    name = "milvus"

    def __init__(
        self,
        dim: int,
        cfg: BankConfig,
        connection: MilvusConnection,
        requested: str,
        collection: str | None = None,
        index_type: str = "",
        index_params: dict[str, Any] | None = None,
        rows: int = 0,
        id_limit: int = 0,
    ) -> None:
        self.dim = dim
        self.cfg = cfg
        self.connection = connection
        self.requested = requested
        self.collection = collection  # created on the first `add`, when its content is known
        self.index_type = index_type
        self.index_params = index_params or {}
        self.rows = rows  # vectors this bank owns (what the manifest records)
        self.id_limit = id_limit  # the bank's ids are all below this
        self._foreign_rows = False  # rows at or above id_limit exist: filter them out of searches
        self._unflushed = False
        self._domain_rows: dict[str, int] = {}  # rows per domain searched (`_share`), until the rows change
        self.tuning: SearchTuning | None = None  # nprobe / ef per depth (tune)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int, cfg: BankConfig) -> MilvusBackend:
        if not cfg.milvus_uri:
            raise BankError("the Milvus backend needs a URI: --milvus-uri PATH.db (Milvus Lite) or http://host:19530")
        return cls(dim, cfg, MilvusConnection.open(cfg.milvus_uri), requested=cfg.index)

    @classmethod
    def load(cls, directory: Path, dim: int, cfg: BankConfig, description: dict) -> MilvusBackend:
        """Reconnect to the bank's collection (at `cfg.milvus_uri` if given, else the recorded URI)."""
        uri = cfg.milvus_uri or description.get("uri")
        collection = description.get("collection")
        if not uri or not collection:
            raise BankError(f"bank {directory}: the manifest's Milvus entry has no uri or collection")
        connection = MilvusConnection.open(uri, create=False)
        try:
            backend = cls(
                dim,
                cfg,
                connection,
                requested=description.get("requested", "auto"),
                collection=collection,
                index_type=description.get("index_type", ""),
                index_params=description.get("index_params", {}),
                rows=int(description.get("rows", -1)),
                id_limit=int(description.get("id_limit", -1)),
            )
            backend._verify(directory)
            backend.tuning = recorded_tuning(description, cfg.recall, backend._knob() is not None, directory,
                                             f"nprobe {cfg.nprobe} / ef {cfg.ef_search}")
        except BaseException:
            connection.close()
            raise
        return backend

    def _verify(self, directory: Path) -> None:
        """The collection exists, has the bank's dimension and holds exactly the bank's rows."""
        where = f"Milvus collection {self.collection} at {self.connection.display_uri}"
        if self.rows < 0 or self.id_limit < 0:
            raise BankError(f"bank {directory}: the manifest's Milvus entry has no rows/id_limit")
        client = self.connection.client
        with self.connection.errors(f"opening {self.collection}"):
            if not client.has_collection(self.collection):
                raise BankError(f"bank {directory}: {where} does not exist (dropped, or another --milvus-uri?)")
            found = _vector_dim(client.describe_collection(self.collection))
            if found != self.dim:
                raise BankError(f"dimension mismatch: {where} has dim {found}, the bank {self.dim}")
            client.load_collection(self.collection)
            owned = self._count(f"{ID_FIELD} < {self.id_limit}")
            beyond = self._count(f"{ID_FIELD} >= {self.id_limit}")
        if owned != self.rows:
            raise BankError(
                f"bank {directory} is misaligned: {where} holds {owned} of the bank's vectors, the manifest "
                f"{self.rows} (an interrupted write or a changed collection; rebuild the bank)"
            )
        if beyond:
            log.warning(
                "%s holds %d rows beyond this bank's ids (< %d), left by an interrupted `bank add` or a "
                "bank sharing the collection; searches leave them out",
                where,
                beyond,
                self.id_limit,
            )
            self._foreign_rows = True

    # -- IndexBackend ----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, domains: Sequence[str | None]) -> None:
        ids = checked_ids(self.dim, ids, vectors, domains)
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids) or ids.min() < 0:
            raise BankError("concept ids must be distinct and non-negative")
        stored = [_stored_domain(d) for d in domains]
        if self.collection is None:
            resuming = self._create_collection(ids, vectors, stored)
            upsert = False
        else:
            if ids.min() < self.id_limit:
                raise BankError(f"ids must be new: this bank's ids are below {self.id_limit}, got {int(ids.min())}")
            resuming, upsert = False, True
        self._unflushed = True
        self._domain_rows.clear()
        self._write(ids, vectors, stored, skip_present=resuming, upsert=upsert)
        self.rows += len(ids)
        self.id_limit = max(self.id_limit, int(ids.max()) + 1)
        if resuming:
            with self.connection.errors(f"counting {self.collection}"):
                self._foreign_rows = self._count(f"{ID_FIELD} >= {self.id_limit}") > 0

    def _create_collection(self, ids: np.ndarray, vectors: np.ndarray, domains: list[str]) -> bool:
        """Create (or find, when resuming) the collection for this content; True if it existed."""
        self.index_type, self.index_params = milvus_index(self.requested, len(ids))
        self.collection = collection_name(ids, vectors, domains, self.index_type, self.index_params)
        client = self.connection.client
        with self.connection.errors(f"creating collection {self.collection}"):
            if client.has_collection(self.collection):
                found = _vector_dim(client.describe_collection(self.collection))
                if found != self.dim:
                    raise BankError(f"Milvus collection {self.collection} has dim {found}, not {self.dim}")
                client.load_collection(self.collection)
                log.info("resuming into existing collection %s", self.collection)
                return True
            from pymilvus import DataType

            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
            schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field(DOMAIN_FIELD, DataType.VARCHAR, max_length=DOMAIN_MAX_BYTES, is_partition_key=True)
            index = client.prepare_index_params()
            index.add_index(VECTOR_FIELD, index_type=self.index_type, metric_type="IP", params=self.index_params)
            client.create_collection(self.collection, schema=schema, consistency_level="Bounded")
            # sync=False: the collection is empty, nothing to wait for (and Milvus Lite lacks the RPC
            # pymilvus would wait with).
            client.create_index(self.collection, index, sync=False)
            client.load_collection(self.collection)
        log.info("created collection %s (%s %s)", self.collection, self.index_type, self.index_params)
        return False

    def _write(
        self, ids: np.ndarray, vectors: np.ndarray, domains: list[str], *, skip_present: bool, upsert: bool
    ) -> None:
        client, collection = self.connection.client, self.collection
        batch = max(1, INSERT_BATCH_BYTES // (4 * self.dim))
        progress = _Progress(len(ids), f"indexing into Milvus {collection}")
        written = 0
        for start in range(0, len(ids), batch):
            part = slice(start, start + batch)
            batch_ids = ids[part]
            keep = np.arange(len(batch_ids))
            if skip_present:
                with self.connection.errors("checking ids already present"):
                    keep = np.flatnonzero(~np.isin(batch_ids, self._present(batch_ids)))
            block = np.asarray(vectors[part], dtype=np.float32)
            rows = [
                {ID_FIELD: int(batch_ids[i]), VECTOR_FIELD: block[i], DOMAIN_FIELD: domains[start + i]} for i in keep
            ]
            if rows:
                with self.connection.errors(f"writing to {collection}"):
                    (client.upsert if upsert else client.insert)(collection, rows)
            written += len(rows)
            progress.update(len(batch_ids))
        progress.close()
        log.info("wrote %d vectors to %s (%d were already there)", written, collection, len(ids) - written)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        found = self.connection.client.query(
            self.collection,
            filter=f"{ID_FIELD} in [{','.join(map(str, ids.tolist()))}]",
            output_fields=[ID_FIELD],
            consistency_level="Strong",
        )
        return np.asarray([row[ID_FIELD] for row in found], dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, domain: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._search(queries, k, self._search_params(k, domain=domain), domain)

    def _share(self, domain: str) -> float:
        """The domain's share of the bank's rows (counted once per domain until the rows change)."""
        if domain not in self._domain_rows:
            condition = f"{DOMAIN_FIELD} == {_quote(_stored_domain(domain))}"
            if self._foreign_rows:
                condition += f" and {ID_FIELD} < {self.id_limit}"
            with self.connection.errors(f"counting {self.collection}"):
                self._domain_rows[domain] = self._count(condition)
        return self._domain_rows[domain] / max(self.rows, 1)

    def _search(
        self, queries: np.ndarray, k: int, settings: dict[str, Any], domain: str | None = None,
        consistency: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = queries.shape[0]
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if self.collection is None or self.rows == 0 or n == 0:
            return ids, scores
        if k > MAX_TOP_K:
            raise BankError(f"k = {k} is more than Milvus returns per query ({MAX_TOP_K})")
        conditions = []
        if domain is not None:
            conditions.append(f"{DOMAIN_FIELD} == {_quote(_stored_domain(domain))}")
        if self._foreign_rows:
            conditions.append(f"{ID_FIELD} < {self.id_limit}")
        params = {"metric_type": "IP", "params": settings}
        options = {} if consistency is None else {"consistency_level": consistency}
        per_call = max(1, SEARCH_RESULTS_PER_CALL // k)
        for start in range(0, n, per_call):
            with self.connection.errors("searching"):
                hits = self.connection.client.search(
                    self.collection,
                    data=queries[start : start + per_call],
                    limit=k,
                    filter=" and ".join(conditions),
                    output_fields=[ID_FIELD],
                    search_params=params,
                    **options,
                )
            for row, found in enumerate(hits, start=start):
                m = len(found)
                if m:
                    ids[row, :m] = [hit[ID_FIELD] for hit in found]
                    scores[row, :m] = [hit["distance"] for hit in found]
        return ids, scores

    def _search_params(self, k: int, setting: int | None = None, domain: str | None = None) -> dict[str, Any]:
        """The index's search parameters for a search k deep: the setting tuned for k (`tune`; within a
        `domain`, the one tuned for searches confined to one) where the bank states a recall, else
        `bank.nprobe` / `bank.ef_search`; `setting` given (while tuning) overrides both."""
        if setting is None and self.tuning is not None and self.cfg.recall is not None:
            setting = self.tuning.setting(k)
            if domain is not None and self.tuning.filtered is not None:  # never narrower than unfiltered
                setting = max(setting, self.tuning.filtered.setting_for(k, self._share(domain)))
        kind = self.index_type
        if kind.startswith("HNSW"):  # the beam holds the k results
            return {"ef": max(min(self.cfg.ef_search if setting is None else setting, MAX_EF_SEARCH), k)}
        if kind.startswith("IVF"):
            return {"nprobe": min(self.cfg.nprobe if setting is None else setting, MAX_NPROBE)}
        if kind == "DISKANN":
            return {"search_list": max(self.cfg.ef_search, k)}
        return {}

    def _knob(self) -> str | None:
        """The setting an approximate index trades recall for (`nprobe`, `efSearch`); None for the other types."""
        if self.index_type.startswith("HNSW"):
            return "efSearch"
        return "nprobe" if self.index_type.startswith("IVF") else None

    def delete(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < self.id_limit)]
        if self.collection is None or len(ids) == 0:
            return
        with self.connection.errors(f"deleting from {self.collection}"):
            present = self._present(ids)
            if len(present):
                self.connection.client.delete(self.collection, ids=present.tolist())
        self.rows -= len(present)
        self._domain_rows.clear()
        self._unflushed = True

    def count(self) -> int:
        if self.collection is None:
            return 0
        with self.connection.errors(f"counting {self.collection}"):
            return self._count(f"{ID_FIELD} < {self.id_limit}")

    def _count(self, condition: str) -> int:
        result = self.connection.client.query(
            self.collection, filter=condition, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(result[0]["count(*)"])

    def tune(self, vectors: np.ndarray, domains: Sequence[str | None] | None = None) -> None:
        """nprobe (IVF types) or ef (HNSW types) per depth for `bank.recall`, measured on `vectors` (the bank's
        rows, ids 0..n-1) and within a domain (`domains`, each row's) as the FAISS backend measures its own
        (bank/tuning.py); none for an exact index, or with `bank.recall` null. Other approximate types
        (DISKANN, SCANN, ...) search with their defaults."""
        self.tuning = None
        knob = self._knob()
        if self.cfg.recall is None:
            return
        if knob is None:
            if self.index_type not in ("FLAT", "AUTOINDEX"):
                log.info("Milvus index %s is not tuned to recall %.2f: only the IVF and HNSW types have a setting "
                         "dualpath tunes", self.index_type, self.cfg.recall)
            return

        # Rows not yet flushed and indexed are searched exhaustively, whatever the setting: measured there, every
        # setting would reach recall 1. So the rows are flushed, and the server's index build waited for.
        self._flush()
        if not self.wait_until_indexed():
            log.warning("Milvus has not finished indexing %s after %.0f s: its search settings are not tuned; "
                        "`dualpath bank tune` measures them once it has", self.collection, INDEX_WAIT_S)
            return

        def search_in(domain: str | None) -> Callable[[int, np.ndarray, int], np.ndarray]:
            def search_at(value: int, queries: np.ndarray, k: int) -> np.ndarray:
                return self._search(queries, k, self._search_params(k, value), domain, consistency="Strong")[0]
            return search_at

        self.tuning = tune_with_domains(search_in(None), search_in, vectors, domains,
                                        setting_ladder(knob, MAX_NPROBE), knob, self.cfg.recall)

    def describe(self) -> dict[str, Any]:
        if self._unflushed:
            # The manifest must never record rows that a crash could still lose.
            raise BankError("internal error: describe() before save(): the Milvus writes are not flushed")
        return {
            "uri": self.connection.recorded_uri,
            "collection": self.collection,
            "requested": self.requested,
            "factory": self.index_type,
            "index_type": self.index_type,
            "index_params": self.index_params,
            "metric": "IP",
            "rows": self.rows,
            "id_limit": self.id_limit,
            "files": [],
            **({"search": self.tuning.to_dict()} if self.tuning is not None else {}),
        }

    def save(self, directory: Path) -> None:
        """Flush: the vectors are in the collection (the bank's directory gets no index file)."""
        if self.collection is None:
            raise BankError("cannot save an empty index")
        if self._unflushed:  # tuning flushed already, where it ran (a server's flush takes seconds)
            self._flush()

    def _flush(self) -> None:
        with self.connection.errors(f"flushing {self.collection}"):
            self.connection.client.flush(self.collection)
        self._unflushed = False

    def wait_until_indexed(self, timeout_s: float = INDEX_WAIT_S) -> bool:
        """Wait up to `timeout_s` until searches read the vector index wherever the server will build one: a
        server builds it after the flush, in the background, and its query nodes then swap the indexed
        segments in for the raw ones. False if they still do not."""
        client = self.connection.client
        if self.connection.lite_path is not None:
            # Milvus Lite builds it in the background too and says nothing of it (describe_index reports every
            # row indexed at once; under load, tuning read raw rows for seconds). Loading the collection waits
            # for it, and no other process holds a Lite database: reloading it disturbs no one.
            with self.connection.errors(f"reloading {self.collection}"):
                client.release_collection(self.collection)
                client.load_collection(self.collection)
            return True
        from pymilvus.exceptions import MilvusException

        deadline = time.monotonic() + timeout_s
        refreshed = False
        # A FLAT index is the rows themselves: its loaded segments carry no index id (seen on Milvus 2.3.5), and
        # a raw segment is searched as it would be.
        exact = self.index_type == "FLAT"
        while True:
            with self.connection.errors(f"reading the index state of {self.collection}"):
                pending = int(client.describe_index(self.collection, VECTOR_FIELD).get("pending_index_rows", 0))
                loaded = client.list_loaded_segments(self.collection)
            served = sum(int(x.num_rows) for x in loaded) >= self.rows and all(
                exact or x.index_id or x.num_rows < MIN_INDEXED_SEGMENT_ROWS for x in loaded)
            if pending == 0 and served:
                whole = 0 if exact else sum(int(x.num_rows) for x in loaded if not x.index_id)
                if whole:
                    log.info("%d of the %d rows of %s lie in segments the server searches whole (under %d rows): "
                             "settings measured now may miss more once it merges them into indexed segments; "
                             "`dualpath bank tune` measures them again", whole, self.rows, self.collection,
                             MIN_INDEXED_SEGMENT_ROWS)
                return True
            if pending == 0 and not refreshed:
                # Built: ask the query nodes to load the new segments now, without unloading anything (the
                # hand-off took 11.5 s on its own schedule, 1.6 s asked; a server without the call waits).
                refreshed = True
                with suppress(MilvusException):
                    client.refresh_load(self.collection)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def close(self) -> None:
        self.connection.close()


# -- index choice and naming -------------------------------------------------------------------------


def milvus_index(requested: str, n: int) -> tuple[str, dict[str, Any]]:
    """The Milvus index type and build parameters for an index kind (bank/index_policy.py chooses the kind)."""
    kind = requested.strip()
    lower = index_kind(kind, n)
    if lower == "flat":
        return "FLAT", {}
    if lower == "hnsw":
        return "HNSW", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if lower == "ivf":
        return "IVF_FLAT", {"nlist": ivf_nlist(n)}
    if _MILVUS_INDEX_NAME.match(kind):  # DISKANN, IVF_SQ8, HNSW_SQ, SCANN, AUTOINDEX, ...: server defaults
        return kind, {}
    raise BankError(
        f"index spec {requested!r} is not a Milvus index: use auto, flat, ivf, hnsw or a Milvus index type "
        "such as DISKANN or IVF_SQ8"
    )


def collection_name(
    ids: np.ndarray, vectors: np.ndarray, domains: list[str], index_type: str, index_params: dict[str, Any]
) -> str:
    """`dualpath_<digest>`: the same content and index always map to the same collection."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(json.dumps([vectors.shape[1], index_type, index_params], sort_keys=True).encode())
    digest.update(ids.tobytes())
    block = max(1, (16 << 20) // max(1, vectors.shape[1] * vectors.itemsize))
    for start in range(0, len(vectors), block):
        # The stored values, whatever their dtype: float16 rows hash as float16.
        digest.update(np.ascontiguousarray(vectors[start : start + block]).tobytes())
    digest.update("\x1f".join(domains).encode())
    return COLLECTION_PREFIX + digest.hexdigest()


def _stored_domain(domain: str | None) -> str:
    if domain is None:
        return ""
    if len(domain.encode()) > DOMAIN_MAX_BYTES:
        raise BankError(f"domain {domain[:40]!r}... is longer than {DOMAIN_MAX_BYTES} bytes")
    return domain


def _quote(value: str) -> str:
    """A string literal for a Milvus filter expression (JSON's escapes are Milvus's)."""
    return json.dumps(value, ensure_ascii=False)


def _vector_dim(description: dict[str, Any]) -> int | None:
    for field in description.get("fields", []):
        if field.get("name") == VECTOR_FIELD:
            return int(field.get("params", {}).get("dim", -1))
    return None


# -- connections ---------------------------------------------------------------------------------------


class MilvusConnection:
    """A pymilvus client for one URI, with error translation and Milvus Lite's start/stop."""

    _lite_users: ClassVar[dict[str, int]] = {}  # Lite data path → open connections in this process
    _lite_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, client: Any, uri: str, lite_path: str | None) -> None:
        self.client = client
        self.uri = uri
        self.lite_path = lite_path
        self.display_uri = _without_credentials(uri)
        # The manifest stores where the data is, never credentials; a relative Lite path is made absolute.
        self.recorded_uri = lite_path or self.display_uri

    @classmethod
    def open(cls, uri: str, create: bool = True) -> MilvusConnection:
        """Connect; a Milvus Lite database is made if missing only when `create` (building a bank)."""
        scheme = urlsplit(uri).scheme.lower()
        lite_path = None
        if scheme not in SERVER_SCHEMES:
            if not uri.endswith(".db"):
                raise BankError(
                    f"Milvus URI {uri!r}: use a local path ending in .db (Milvus Lite) or http://host:19530"
                )
            path = Path(uri).expanduser().resolve()
            if not create and not path.exists():
                raise BankError(f"Milvus Lite database {path} not found (moved? pass its new path with --milvus-uri)")
            path.parent.mkdir(parents=True, exist_ok=True)
            lite_path = str(path)
        try:
            from pymilvus import MilvusClient
            from pymilvus.exceptions import MilvusException

            if lite_path is not None:
                import milvus_lite  # noqa: F401  (pymilvus starts it for .db paths)
        except ImportError as err:
            raise BankError(f"the Milvus backend needs {err.name}: pip install 'dualpath[milvus]'") from None
        if lite_path is not None:
            with cls._lite_lock:
                if not cls._lite_users.get(lite_path):
                    _refuse_if_lite_locked(Path(lite_path))
                cls._lite_users[lite_path] = cls._lite_users.get(lite_path, 0) + 1
        try:
            if lite_path is not None:
                client = MilvusClient(lite_path, grpc_options=LITE_GRPC_OPTIONS)
            else:
                # A secret belongs in the environment, not in a flag (`ps`) or the manifest.
                client = MilvusClient(uri, token=os.environ.get(TOKEN_VARIABLE, ""), timeout=30)
        except MilvusException as err:
            cls._release_lite(lite_path)
            where = lite_path or _without_credentials(uri)
            hint = " (is another process using this Milvus Lite database?)" if lite_path else ""
            raise BankError(f"cannot connect to Milvus at {where}: {_message(err)}{hint}") from None
        except BaseException:
            cls._release_lite(lite_path)
            raise
        return cls(client, uri, lite_path)

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """pymilvus errors → one-line BankError naming what we were doing and where."""
        from pymilvus.exceptions import MilvusException

        try:
            yield
        except MilvusException as err:
            raise BankError(f"Milvus at {self.display_uri}: {action} failed: {_message(err)}") from None

    def close(self) -> None:
        if self.client is None:
            return
        self.client.close()
        self.client = None
        self._release_lite(self.lite_path)

    @classmethod
    def _release_lite(cls, lite_path: str | None) -> None:
        # Stop the embedded server when its last user closes: it holds the .db's lock, which another
        # process (a CLI run after a test, the service after a build) needs.
        if lite_path is None:
            return
        with cls._lite_lock:
            users = cls._lite_users.get(lite_path, 0) - 1
            if users > 0:
                cls._lite_users[lite_path] = users
                return
            cls._lite_users.pop(lite_path, None)
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(lite_path)


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _message(err: Exception) -> str:
    text = str(getattr(err, "message", "") or err).strip().splitlines()
    return text[0] if text else type(err).__name__


class _Progress:
    """tqdm on a terminal, otherwise a log line every ~10 %."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.started = time.perf_counter()
        self.next_log = total / 10
        self.bar = None
        if progress_enabled():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit="vec")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done >= self.next_log or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            log.info("%s: %d/%d vectors (%.0f/s)", self.label, self.done, self.total, rate)
            self.next_log = self.done + self.total / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _refuse_if_lite_locked(path: Path) -> None:
    """One line when another process has this Milvus Lite database open.

    Milvus Lite holds an exclusive flock on `<db>/LOCK` while a process has the database open; a
    second process failing to start it logs a 20-line traceback before pymilvus raises. Trying the
    same lock first (and letting go at once) gives the refusal without that. Only called when this
    process does not hold the database itself: two descriptors of one process conflict too.
    """
    lock = path / "LOCK"
    if not lock.is_file():
        return
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BankError(
            f"Milvus Lite database {path} is open in another process (Milvus Lite allows one); "
            "stop that process, or serve both from a Milvus server (docs/scaling.md)"
        ) from None
    finally:
        os.close(fd)  # closing also releases the lock if we took it
