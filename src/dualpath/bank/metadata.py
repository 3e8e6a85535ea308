"""Concept metadata in SQLite: one row per concept id (document, position, text, domain, title).

Opened read-only for an existing bank (so reading never changes the file its checksum covers),
writable only inside a bank directory being built.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from dualpath.errors import BankError

SCHEMA = """
CREATE TABLE concepts (
    id INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    domain TEXT,
    title TEXT NOT NULL
);
CREATE INDEX concepts_by_doc ON concepts (doc_id, position);
"""
_IN_BATCH = 500  # ids per `IN (...)` query, below SQLite's parameter limit


@dataclass(frozen=True)
class Concept:
    id: int
    doc_id: str
    position: int  # 0-based index of the concept within its document
    text: str
    domain: str | None
    title: str


class Metadata:
    def __init__(self, path: Path, writable: bool = False) -> None:
        self.path = Path(path)
        uri = f"file:{self.path}?mode={'rwc' if writable else 'ro'}"
        try:
            # One connection shared by the service's threads, serialised by a lock.
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error as err:
            raise BankError(f"cannot open concept metadata {self.path}: {err}") from None
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path) -> Metadata:
        metadata = cls(path, writable=True)
        metadata._db.executescript(SCHEMA)
        return metadata

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise BankError(f"concept metadata {self.path} is unreadable: {err}") from None

    def insert(self, concepts: Iterable[Concept]) -> None:
        with self._lock:
            self._db.executemany("INSERT INTO concepts VALUES (?, ?, ?, ?, ?, ?)", map(astuple, concepts))

    def truncate(self, first_id: int) -> int:
        """Delete the concepts with id >= `first_id` (what an interrupted build wrote past its last checkpoint)."""
        with self._lock:
            return self._db.execute("DELETE FROM concepts WHERE id >= ?", (first_id,)).rowcount

    def domains_from(self, first_id: int) -> list[str | None]:
        """Each concept's domain from `first_id` on, in id order."""
        rows = self._query("SELECT domain FROM concepts WHERE id >= ? ORDER BY id", (first_id,))
        return [row[0] for row in rows]

    def commit(self) -> None:
        with self._lock:
            self._db.commit()

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM concepts")[0][0])

    def id_range(self) -> tuple[int, int]:
        low, high = self._query("SELECT MIN(id), MAX(id) FROM concepts")[0]
        return (-1, -1) if low is None else (int(low), int(high))

    def concepts(self, ids: Sequence[int]) -> list[Concept]:
        """Concepts in the order of `ids`; a `BankError` names the first id that does not exist."""
        found: dict[int, Concept] = {}
        unique = sorted(set(int(i) for i in ids))
        for start in range(0, len(unique), _IN_BATCH):
            chunk = unique[start : start + _IN_BATCH]
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT * FROM concepts WHERE id IN ({marks})", chunk):
                found[row[0]] = Concept(*row)
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise BankError(f"no concept with id {missing[0]} in this bank")
        return [found[int(i)] for i in ids]

    def documents(self) -> dict[str, np.ndarray]:
        """Concept ids of each document in position order; documents in order of first concept id."""
        grouped: dict[str, list[int]] = {}
        for doc_id, concept_id in self._query("SELECT doc_id, id FROM concepts ORDER BY id"):
            grouped.setdefault(doc_id, []).append(concept_id)
        return {doc_id: np.asarray(ids, dtype=np.int64) for doc_id, ids in grouped.items()}

    def domains(self) -> dict[str | None, int]:
        """Concept count per domain (None for concepts without one), largest first."""
        rows = self._query("SELECT domain, COUNT(*) FROM concepts GROUP BY domain ORDER BY COUNT(*) DESC")
        return {domain: int(n) for domain, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
