"""The epoch loop every trainer shares: checkpoint each epoch, keep the best, resume after a kill.

A trainer supplies a `TrainingTask` (model, one epoch of training, a held-out evaluation, and the
config that rebuilds its model); `run_training` does the rest:

    out_dir/last/      resumable checkpoint (weights, optimizer, RNG), replaced atomically every epoch
    out_dir/best/      weights + config of the best epoch by the task's selection metric
    out_dir/history.json  one entry per finished epoch (loss, held-out metrics, seconds, resident memory)

Exact resume relies on two things: the task derives each epoch's shuffling from (seed, epoch), and
the torch/NumPy/Python RNG states saved with `last/` are restored before the next epoch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from dualpath.errors import CheckpointError
from dualpath.fileio import write_json_atomic
from dualpath.models.checkpoint import (
    BEST,
    LAST,
    load_training_state,
    load_weights,
    read_config,
    save_checkpoint,
)
from dualpath.training.watchdog import MemoryTracker, StallWatchdog

log = logging.getLogger(__name__)

HISTORY = "history.json"


class TrainingTask(Protocol):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    select_metric: str  # key of evaluate()'s result; higher is better

    def train_epoch(self, epoch: int, beat: Callable[[], None]) -> float:
        """Train one epoch (shuffled from (seed, epoch)); call `beat()` after each step; return mean loss."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics for the current weights."""
        ...

    def checkpoint_config(self) -> dict[str, Any]:
        """JSON that rebuilds the model and says what it was trained on (kind, arch, dim, encoder)."""
        ...


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    resident_mb: float
    best: bool = False


@dataclass
class TrainingResult:
    out_dir: Path
    history: list[EpochReport] = field(default_factory=list)
    resumed_from: int | None = None

    @property
    def best(self) -> EpochReport | None:
        flagged = [r for r in self.history if r.best]
        return flagged[-1] if flagged else None


def run_training(
    task: TrainingTask,
    out_dir: str | Path,
    epochs: int,
    resume: bool = False,
    watchdog_seconds: float = 300.0,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainingResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[EpochReport] = []
    start = 1
    resumed_from = None
    if resume and (out_dir / LAST).is_dir():
        state = read_config(out_dir / LAST)
        _check_same_task(state, task.checkpoint_config(), out_dir / LAST)
        load_weights(out_dir / LAST, task.model)
        load_training_state(out_dir / LAST, task.optimizer)
        resumed_from = int(state["epoch"])
        # history.json is written just before last/, so after a kill between the two it may hold
        # the epoch that is about to be redone: keep only what last/ contains.
        history = [EpochReport(**h) for h in _read_history(out_dir) if h["epoch"] <= resumed_from]
        start = resumed_from + 1
        log.info("resuming from epoch %d in %s", resumed_from, out_dir)
    elif resume:
        log.info("nothing to resume in %s; starting from epoch 1", out_dir)
    best_value = max((h.metrics[task.select_metric] for h in history), default=float("-inf"))
    memory = MemoryTracker()
    for h in history:
        memory.readings.append(h.resident_mb)

    with StallWatchdog(watchdog_seconds, name=out_dir.name) as watchdog:
        for epoch in range(start, epochs + 1):
            t0 = time.perf_counter()
            task.model.train()
            loss = task.train_epoch(epoch, watchdog.beat)
            task.model.eval()
            with torch.no_grad():
                metrics = task.evaluate()
            watchdog.beat()
            seconds = time.perf_counter() - t0
            rss = memory.record(epoch)
            value = metrics[task.select_metric]
            report = EpochReport(epoch, float(loss), metrics, seconds, rss, best=value > best_value)
            config = {**task.checkpoint_config(), "epoch": epoch, "metrics": metrics}
            history.append(report)
            write_json_atomic(out_dir / HISTORY, [asdict(h) for h in history])
            if report.best:
                best_value = value
                save_checkpoint(out_dir / BEST, task.model, config)
            save_checkpoint(out_dir / LAST, task.model, config, task.optimizer, with_rng=True)
            log.info(
                "%s epoch %d/%d loss %.4f %s %.1fs rss %.0f MiB%s",
                out_dir.name, epoch, epochs, loss, _fmt(metrics), seconds, rss, " (best)" if report.best else "",
            )
            if on_epoch is not None:
                on_epoch(report)
    return TrainingResult(out_dir, history, resumed_from)


def _read_history(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / HISTORY
    if not path.is_file():
        return []
    return json.loads(path.read_text())


def _check_same_task(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    # Resuming a different architecture or bank would load weights into the wrong shapes.
    for key in ("kind", "arch", "dim", "lvm_digest"):
        if key in current and saved.get(key) != current[key]:
            raise CheckpointError(
                f"cannot resume {where}: it was trained with {key}={saved.get(key)!r}, now {current[key]!r}"
            )
    # Other settings that define the run: resuming with a new value would give last/ and best/ from
    # two different runs (and history from both). Checked where the checkpoint recorded them.
    for key in ("context", "bank_concepts"):
        if key in current and key in saved and saved[key] != current[key]:
            what = "the bank had" if key == "bank_concepts" else f"{key} was"
            raise CheckpointError(
                f"cannot resume {where}: {what} {saved[key]!r} then, {current[key]!r} now "
                "(start afresh without --resume, or into another --out)"
            )
    saved_split, current_split = saved.get("split"), current.get("split")
    if isinstance(saved_split, dict) and isinstance(current_split, dict):
        for key in sorted(set(saved_split) & set(current_split)):
            if saved_split[key] != current_split[key]:
                raise CheckpointError(
                    f"cannot resume {where}: split {key} was {saved_split[key]!r} then, {current_split[key]!r} now "
                    "(start afresh without --resume, or into another --out)"
                )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
