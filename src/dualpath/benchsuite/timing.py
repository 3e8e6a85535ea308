"""Timing calls: per-call wall times → median, p99 and throughput, and ratios against a baseline.

Every figure the suite reports is a distribution over many calls (median and p99), measured in the
same process and run as the baseline it is compared with: wall times from another run or another
machine are never compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def timings_ms(fn: Callable[[int], object], n: int, warmup: int = 5) -> np.ndarray:
    """Wall time in ms of `fn(i)` for i in 0..n-1, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i % max(n, 1))
    out = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - start) * 1000.0
    return out


def stats(ms: np.ndarray, per_call: float = 1) -> dict[str, float]:
    """Median and p99 per item (a call covering `per_call` items), and items per second over the whole run.

    Throughput comes from the mean, not the median: on a busy machine a long batched call is
    almost always preempted somewhere while most short single calls are not, so medians would
    flatter the single path.
    """
    per_item = np.asarray(ms, dtype=np.float64) / per_call
    return {
        "median_ms": float(np.median(per_item)),
        "p99_ms": float(np.percentile(per_item, 99)),
        "per_s": float(1000.0 / np.mean(per_item)),
    }


def with_ratio(
    rows: Mapping[str, Mapping[str, Any]], baseline: str, key: str = "median_ms", column: str = "x_baseline"
) -> list[dict[str, Any]]:
    """Rows as a list (`name` first) with `column` = row[key] / baseline[key]: below 1 is faster."""
    base = float(rows[baseline][key])
    return [{"name": name, **row, column: float(row[key]) / base if base > 0 else None} for name, row in rows.items()]
