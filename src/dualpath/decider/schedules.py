"""Blend schedules: α, the weight of the bank neighbour n* in a BLEND, as a function of c.

α rises with c everywhere here. A schedule takes an array of c values and the lane's thresholds
and returns α in [0, 1] elementwise, so the batched decider calls it once for many streams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dualpath.errors import ConfigError

AlphaSchedule = Callable[[np.ndarray, float, float], np.ndarray]


def continuous_alpha(c: np.ndarray, tau_snap: float, tau_novel: float) -> np.ndarray:
    """0 at τ_novel, 1 at τ_snap, linear between: the output is continuous at both boundaries.

    At c → τ_novel⁺ the blend tends to v̂ (what NOVEL outputs), at c → τ_snap⁻ to n* (what SNAP
    outputs). Linear rather than smoothstep: α then reads directly as "how far into the band c
    is", which is what telemetry shows, and it is no less continuous.
    """
    c = np.asarray(c, dtype=np.float64)
    return np.clip((c - tau_novel) / (tau_snap - tau_novel), 0.0, 1.0)


REFERENCE_KNOTS_C = (0.86, 0.91, 0.95)
REFERENCE_KNOTS_ALPHA = (0.3, 0.7, 0.9)


def reference_alpha(c: np.ndarray, tau_snap: float, tau_novel: float) -> np.ndarray:
    """The reference system's piecewise schedule: 0.3 at c ≤ 0.86, 0.7 at 0.91, 0.9 at c ≥ 0.95.

    It ignores the lane's thresholds, so the output jumps at both boundaries (α = 0.3 just above
    τ_novel, at most 0.9 just below τ_snap). Kept for comparison with the reference.
    """
    c = np.asarray(c, dtype=np.float64)
    return np.interp(c, REFERENCE_KNOTS_C, REFERENCE_KNOTS_ALPHA)


SCHEDULES: dict[str, AlphaSchedule] = {
    "continuous": continuous_alpha,
    "reference": reference_alpha,
}


def get_schedule(name: str) -> AlphaSchedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ConfigError(f"unknown blend schedule '{name}'; known: {', '.join(SCHEDULES)}") from None
