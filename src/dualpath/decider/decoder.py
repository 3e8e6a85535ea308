"""The stateful decoder: one generation stream's memory of picked ids and step counter."""

from __future__ import annotations

import dataclasses
import time
from collections import deque

import numpy as np

from dualpath.config import DeciderConfig
from dualpath.decider.decision import NEAR_DUP_COSINE, DecisionRecord, Shortlist, choose_next_vector
from dualpath.decider.lanes import Lane, get_lane, load_lanes
from dualpath.decider.schedules import AlphaSchedule, get_schedule
from dualpath.errors import ConfigError

DEFAULT_MEMORY_CAP = 64


class DualPathDecoder:
    """Decides the steps of one stream, remembering which bank concepts it picked.

    The memory holds one entry per step (the picked id, or -1 when the step picked nothing; see
    `decision.py`), capped at `memory_cap` steps. Not thread-safe: one decoder per stream.
    """

    def __init__(
        self,
        lane: Lane,
        schedule: str | AlphaSchedule = "continuous",
        memory_cap: int = DEFAULT_MEMORY_CAP,
        dup_threshold: float = NEAR_DUP_COSINE,
    ) -> None:
        if memory_cap < 1:
            raise ConfigError(f"memory_cap must be ≥ 1, got {memory_cap}")
        if lane.dup_window > memory_cap:
            raise ConfigError(
                f"lane '{lane.name}': dup_window ({lane.dup_window}) exceeds the decoder's memory "
                f"of {memory_cap} steps"
            )
        self.lane = lane
        self.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        self.dup_threshold = dup_threshold
        self._recent: deque[int] = deque(maxlen=memory_cap)
        self._step = 0

    @classmethod
    def from_config(cls, cfg: DeciderConfig, lane: str | Lane | None = None) -> DualPathDecoder:
        """A decoder with cfg's schedule, memory and dup threshold for `lane`: a Lane (e.g. one
        calibrated for a bank), or a name looked up in the shipped and the user's lanes (default:
        cfg.default_lane)."""
        if not isinstance(lane, Lane):
            lane = get_lane(load_lanes(cfg.lanes_file), lane or cfg.default_lane)
        return cls(
            lane,
            schedule=cfg.schedule,
            memory_cap=cfg.memory_cap,
            dup_threshold=cfg.dup_threshold,
        )

    @property
    def recent_ids(self) -> tuple[int, ...]:
        """One entry per remembered step, most recent last (-1: nothing picked)."""
        return tuple(self._recent)

    @property
    def steps(self) -> int:
        return self._step

    def step(self, v_hat: np.ndarray, shortlist: Shortlist) -> tuple[np.ndarray, DecisionRecord]:
        start = time.perf_counter()
        v_out, record = choose_next_vector(
            v_hat, shortlist, self.lane, self._recent, self.schedule, self.dup_threshold
        )
        self._recent.append(record.picked_id)
        record = dataclasses.replace(
            record, step=self._step, latency_ms=(time.perf_counter() - start) * 1000.0
        )
        self._step += 1
        return v_out, record

    def reset(self) -> None:
        """Forget the stream: a new generation starts at step 0 with an empty memory."""
        self._recent.clear()
        self._step = 0
