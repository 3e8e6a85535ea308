"""Decision telemetry: a JSON-lines sink, an in-memory ring of recent records, and a summary.

The sink appends one line per record, each written whole by a single write under a lock and
flushed at once (line-buffered). It is a log, not a document, so it is appended rather than
rewritten atomically; a crash can at worst cut the last line short, and `read_records` skips
such a line with a warning.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dualpath.decider.decision import Decision, DecisionRecord

log = logging.getLogger(__name__)

C_MAX_QUANTILES = (5, 25, 50, 75, 95)


class TelemetrySink:
    """Appends DecisionRecords to a JSON-lines file; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, record: DecisionRecord) -> None:
        line = json.dumps(record.to_dict(), sort_keys=True) + "\n"
        with self._lock:
            if self._file.closed:
                raise ValueError(f"telemetry sink {self.path} is closed")
            self._file.write(line)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TelemetrySink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecentRecords:
    """The last `maxlen` records in memory (what a live dashboard shows); safe to share between threads."""

    def __init__(self, maxlen: int = 1000) -> None:
        self._records: deque[DecisionRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def write(self, record: DecisionRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[DecisionRecord]:
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        return len(self._records)


def read_records(path: str | Path) -> Iterator[DecisionRecord]:
    """The records of a telemetry file, skipping (and logging) a malformed line such as a cut-off last one."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield DecisionRecord.from_dict(json.loads(line))
            except (ValueError, TypeError, KeyError) as err:
                log.warning("%s:%d: skipping malformed telemetry line (%s)", path, number, err)


def _fallback_kind(reason: str) -> str:
    # "error: <message>" → "error", so the counts do not split on every message.
    return reason.split(":", 1)[0]


def _summary_of(records: list[DecisionRecord]) -> dict:
    counts = Counter(r.decision for r in records)
    total = len(records)
    c_values = np.array([r.c_max for r in records if r.c_max is not None], dtype=np.float64)
    values = np.percentile(c_values, C_MAX_QUANTILES) if c_values.size else [None] * len(C_MAX_QUANTILES)
    quantiles = {
        f"p{q}": None if v is None else float(v) for q, v in zip(C_MAX_QUANTILES, values, strict=True)
    }
    fallbacks = Counter(_fallback_kind(r.fallback_reason) for r in records if r.fallback_reason)
    return {
        "count": total,
        "decisions": {
            d.value: {"count": counts[d], "share": counts[d] / total if total else 0.0} for d in Decision
        },
        "c_max": quantiles,
        "fallbacks": dict(sorted(fallbacks.items())),
        "near_dup": sum(r.near_dup for r in records),
    }


def summarize(records: Iterable[DecisionRecord | dict]) -> dict:
    """Counts and shares per decision, c_max quantiles and fallback counts: overall and per lane.

    JSON-safe. Fallbacks are counted by kind ("empty", "timeout", "error").
    """
    items = [r if isinstance(r, DecisionRecord) else DecisionRecord.from_dict(r) for r in records]
    lanes = sorted({r.lane for r in items})
    return {
        "overall": _summary_of(items),
        "lanes": {lane: _summary_of([r for r in items if r.lane == lane]) for lane in lanes},
    }
