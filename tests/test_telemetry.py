"""Telemetry: JSON-lines sink, the in-memory ring, reading back and the summary."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from dualpath.decider import (
    Decision,
    DecisionRecord,
    DualPathDecoder,
    RecentRecords,
    Shortlist,
    TelemetrySink,
    load_lanes,
    read_records,
    summarize,
)


def record(
    step: int, decision: Decision, c_max: float | None, lane: str = "neutral", **extra: object
) -> DecisionRecord:
    fields = {
        "step": step,
        "c_max": c_max,
        "decision": decision,
        "neighbour_id": None if c_max is None else step,
        "alpha": 0.0,
        "lane": lane,
        "near_dup": False,
        "fallback_reason": None,
        "latency_ms": 0.1,
    }
    return DecisionRecord(**(fields | extra))


def test_sink_appends_lines_from_a_real_decoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    decoder = DualPathDecoder(load_lanes()["quota-neutral"])
    path = tmp_path / "runs" / "telemetry.jsonl"
    written = []
    with TelemetrySink(path) as sink:
        for i in range(10):
            shortlist = Shortlist(np.arange(50), bank) if i % 3 else Shortlist.failed("timeout", 8)
            _, rec = decoder.step(bank[i] + 0.1 * rng.normal(size=8).astype(np.float32), shortlist)
            sink.write(rec)
            written.append(rec)
            # Line-buffered: each record is on disk as soon as it is written.
            assert len(path.read_text().splitlines()) == i + 1
    with TelemetrySink(path) as sink:  # a second sink appends, never truncates
        sink.write(written[0])
    lines = path.read_text().splitlines()
    assert len(lines) == 11 and all(json.loads(line)["lane"] == "quota-neutral" for line in lines)
    assert list(read_records(path)) == [*written, written[0]]


def test_sink_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TelemetrySink(path) as sink:

        def writer(w: int) -> None:
            for i in range(200):
                sink.write(record(w * 1000 + i, Decision.BLEND, 0.5, fallback_reason="x" * 500))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    steps = sorted(r.step for r in read_records(path))
    assert steps == sorted(w * 1000 + i for w in range(8) for i in range(200))


def test_closed_sink_refuses_writes(tmp_path: Path) -> None:
    sink = TelemetrySink(tmp_path / "t.jsonl")
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(record(0, Decision.NOVEL, 0.1))


def test_cut_off_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.jsonl"
    with TelemetrySink(path) as sink:
        sink.write(record(0, Decision.SNAP, 0.9))
        sink.write(record(1, Decision.NOVEL, 0.2))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 2, "c_max": 0.5, "deci')  # a crash mid-line
    caplog.set_level(logging.WARNING, logger="dualpath")
    assert [r.step for r in read_records(path)] == [0, 1]
    assert "t.jsonl:3: skipping malformed telemetry line" in caplog.text


def test_ring_keeps_the_most_recent() -> None:
    ring = RecentRecords(maxlen=5)
    for i in range(12):
        ring.write(record(i, Decision.NOVEL, 0.1))
    assert [r.step for r in ring.snapshot()] == [7, 8, 9, 10, 11] and len(ring) == 5


def test_summary_counts_shares_quantiles_and_fallbacks() -> None:
    c_values = np.linspace(0.0, 1.0, 101)
    records = [
        record(i, Decision.SNAP if c >= 0.8 else Decision.NOVEL, float(c)) for i, c in enumerate(c_values)
    ]
    records += [
        record(200, Decision.NOVEL, None, fallback_reason="timeout"),
        record(201, Decision.NOVEL, None, fallback_reason="error: disk on fire"),
        record(202, Decision.NOVEL, None, fallback_reason="error: other"),
        record(203, Decision.NOVEL_DUP_DROP, 0.99, near_dup=True),
        record(204, Decision.BLEND, 0.5, lane="creative"),
        record(205, Decision.BLEND, 0.7, lane="creative"),
    ]
    summary = summarize(records)
    json.dumps(summary)  # JSON-safe
    assert summary["overall"]["count"] == 107
    neutral = summary["lanes"]["neutral"]
    assert neutral["count"] == 105
    assert neutral["decisions"]["SNAP"] == {"count": 21, "share": pytest.approx(21 / 105)}
    assert neutral["decisions"]["NOVEL"]["count"] == 80 + 3
    assert neutral["decisions"]["BLEND"] == {"count": 0, "share": 0.0}
    assert neutral["fallbacks"] == {"error": 2, "timeout": 1}
    assert neutral["near_dup"] == 1
    # Quantiles over the steps that had a c_max (fallbacks have none): 0..1 in 0.01 steps plus 0.99.
    expected = np.percentile(np.append(c_values, 0.99), [5, 25, 50, 75, 95])
    assert [neutral["c_max"][f"p{q}"] for q in (5, 25, 50, 75, 95)] == pytest.approx(expected)
    creative = summary["lanes"]["creative"]
    assert creative["decisions"]["BLEND"]["share"] == 1.0 and creative["c_max"]["p50"] == pytest.approx(0.6)
    shares = sum(d["share"] for d in summary["overall"]["decisions"].values())
    assert shares == pytest.approx(1.0)


def test_summary_of_dicts_and_of_nothing() -> None:
    as_dicts = [
        record(0, Decision.SNAP, 0.9).to_dict(),
        record(1, Decision.NOVEL, None, fallback_reason="empty").to_dict(),
    ]
    summary = summarize(as_dicts)
    assert summary["overall"]["decisions"]["SNAP"]["count"] == 1
    assert summary["overall"]["fallbacks"] == {"empty": 1}
    empty = summarize([])
    assert empty["overall"]["count"] == 0 and empty["lanes"] == {}
    assert empty["overall"]["c_max"]["p50"] is None
