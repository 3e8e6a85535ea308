"""A stall watchdog and memory readings for long training runs.

The reference's runs died silently; here, when no step finishes for `timeout_s` seconds, every
thread's stack goes to the log so a hung run explains itself.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback

import psutil

log = logging.getLogger(__name__)


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def dump_all_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        header = f"--- thread {names.get(ident, '?')} ({ident}) ---\n"
        parts.append(header + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class StallWatchdog:
    """Call `beat()` after every step; a daemon thread logs all stacks if beats stop for `timeout_s`.

    It fires once per stall (and again only after beats resume and stop again). `fired` counts stalls.
    """

    def __init__(self, timeout_s: float, poll_s: float | None = None, name: str = "training") -> None:
        self.timeout_s = float(timeout_s)
        self.poll_s = poll_s if poll_s is not None else min(5.0, self.timeout_s / 4)
        self.name = name
        self.fired = 0
        self.last_dump = ""
        self._last_beat = time.monotonic()
        self._armed = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watchdog-{name}", daemon=True)

    def __enter__(self) -> StallWatchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._last_beat = time.monotonic()
        self._thread.start()

    def beat(self) -> None:
        self._last_beat = time.monotonic()
        self._armed = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            idle = time.monotonic() - self._last_beat
            if idle >= self.timeout_s and self._armed:
                self._armed = False
                self.fired += 1
                self.last_dump = dump_all_stacks()
                log.warning(
                    "%s: no step finished for %.0f s; stacks of all threads follow\n%s",
                    self.name, idle, self.last_dump,
                )


class MemoryTracker:
    """Resident memory per epoch, with a warning when it keeps growing after the first epoch."""

    def __init__(self, growth_warn: float = 0.25) -> None:
        self.growth_warn = growth_warn
        self.readings: list[float] = []

    def record(self, epoch: int) -> float:
        rss = resident_mb()
        self.readings.append(rss)
        # Epoch 1 allocates the working set; growth measured against it is a leak signal.
        if len(self.readings) >= 3 and rss > self.readings[1] * (1 + self.growth_warn):
            log.warning(
                "epoch %d: resident memory %.0f MiB grew %.0f%% since epoch 2 (%.0f MiB)",
                epoch, rss, 100 * (rss / self.readings[1] - 1), self.readings[1],
            )
        return rss
