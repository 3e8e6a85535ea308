"""The learning-rate schedule every trainer uses: optional linear warm-up, then constant or cosine decay.

The rate is a pure function of where the run is, so a resumed run needs nothing saved to continue
exactly where it stopped.
"""

from __future__ import annotations

import math

import torch

FLOOR = 0.1  # the cosine schedule ends at this share of the peak rate


def learning_rate(peak: float, progress: float, schedule: str) -> float:
    """`constant`, or `cosine`: from `peak` down to a tenth of it over the run (`progress` 0 → 1)."""
    if schedule == "constant":
        return peak
    floor = FLOOR * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def step_learning_rate(peak: float, step: int, total: int, schedule: str, warmup: int = 0) -> float:
    """The rate at global `step` of `total`: linear warm-up over `warmup` steps, then `learning_rate`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return learning_rate(peak, (step - warmup) / max(1, total - warmup), schedule)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
