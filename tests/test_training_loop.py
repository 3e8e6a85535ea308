"""The shared epoch loop: bit-exact checkpoints, resume after a kill, the stall watchdog.

The loop is exercised with a tiny regression task that touches every RNG the loop must carry
across a restart: torch (dropout), NumPy's global generator (input noise) and Python's `random`
(a per-epoch step count jitter). If any of them were not saved or not restored, a resumed run
would drift from the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dualpath.errors import CheckpointError
from dualpath.models.checkpoint import (
    BEST,
    LAST,
    capture_rng_state,
    load_training_state,
    load_weights,
    model_dir,
    read_config,
    restore_rng_state,
    save_checkpoint,
)
from dualpath.runtime import torch_threads
from dualpath.training.loop import HISTORY, run_training


class RegressionTask:
    """A real (tiny) training problem: fit y = x·w with a dropout MLP and AdamW."""

    select_metric = "neg_mse"

    def __init__(
        self,
        seed: int = 0,
        crash_at: tuple[int, int] | None = None,
        stall_s: float = 0.0,
        stall_every_step: bool = False,
    ) -> None:
        # A repeatable run seeds every RNG it uses before building anything.
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        data = np.random.default_rng(seed)
        self.x = torch.from_numpy(data.normal(size=(96, 8)).astype(np.float32))
        self.y = self.x @ torch.from_numpy(data.normal(size=(8, 1)).astype(np.float32))
        self.model = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.seed = seed
        self.crash_at = crash_at  # (epoch, step): die with SIGKILL there, as a killed run would
        self.stall_s = stall_s  # sleep this long in the first step (or every step) without a beat
        self.stall_every_step = stall_every_step

    def train_epoch(self, epoch: int, beat: Callable[[], None]) -> float:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))
        steps = 6 + random.randrange(3)  # consumes Python's RNG: must be restored on resume
        losses = []
        for step in range(steps):
            if self.crash_at == (epoch, step):
                os.kill(os.getpid(), signal.SIGKILL)
            if self.stall_s and (step == 0 or self.stall_every_step):
                time.sleep(self.stall_s)
            index = torch.from_numpy(order[(step * 16 + np.arange(16)) % len(order)])
            noise = torch.from_numpy(np.random.normal(scale=0.01, size=(len(index), 8)).astype(np.float32))
            loss = torch.nn.functional.mse_loss(self.model(self.x[index] + noise), self.y[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            beat()
        return float(np.mean(losses))

    def evaluate(self) -> dict[str, float]:
        return {"neg_mse": -float(torch.nn.functional.mse_loss(self.model(self.x), self.y))}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": "test-regression", "arch": "mlp", "dim": 8}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path) -> None:
    task = RegressionTask()
    task.train_epoch(1, lambda: None)  # gives AdamW real moment estimates and step counters
    config = {"kind": "test-regression", "epoch": 1, "metrics": {"neg_mse": -0.5}}
    save_checkpoint(tmp_path / "ckpt", task.model, config, task.optimizer, with_rng=True)
    expected_draws = (torch.rand(5), np.random.random(5), [random.random() for _ in range(5)])

    other = RegressionTask(seed=1)  # different weights and RNG position
    torch.manual_seed(123)
    load_weights(tmp_path / "ckpt", other.model)
    load_training_state(tmp_path / "ckpt", other.optimizer)

    for name, tensor in task.model.state_dict().items():
        assert torch.equal(tensor, other.model.state_dict()[name]), name
    saved, loaded = task.optimizer.state_dict(), other.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for param_id, slots in saved["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, loaded["state"][param_id][slot]), (param_id, slot)
    # The RNGs continue from where the checkpoint was written.
    assert torch.equal(torch.rand(5), expected_draws[0])
    assert np.array_equal(np.random.random(5), expected_draws[1])
    assert [random.random() for _ in range(5)] == expected_draws[2]
    assert read_config(tmp_path / "ckpt") == config


def test_rng_state_survives_json(tmp_path: Path) -> None:
    state = capture_rng_state()
    (tmp_path / "rng.json").write_text(json.dumps(state))
    first = (torch.randn(3), np.random.normal(size=3), random.gauss(0, 1))
    restore_rng_state(json.loads((tmp_path / "rng.json").read_text()))
    second = (torch.randn(3), np.random.normal(size=3), random.gauss(0, 1))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_run_training_writes_last_best_and_history(tmp_path: Path) -> None:
    result = run_training(RegressionTask(), tmp_path, epochs=3)
    history = json.loads((tmp_path / HISTORY).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert read_config(tmp_path / LAST)["epoch"] == 3
    best = result.best
    assert best is not None and read_config(tmp_path / BEST)["epoch"] == best.epoch
    assert best.metrics["neg_mse"] == max(h["metrics"]["neg_mse"] for h in history)
    assert model_dir(tmp_path) == tmp_path / BEST
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_resume_after_an_exception_mid_epoch_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run_training(RegressionTask(), straight, epochs=3)

    interrupted = tmp_path / "interrupted"
    run_training(RegressionTask(), interrupted, epochs=2)

    class Crash(Exception):
        pass

    def crash(*_: object) -> None:
        raise Crash

    dirty = RegressionTask()
    # Epoch 3 starts, takes optimizer steps (moving RNGs and weights), then the process "dies".
    dirty.evaluate = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        run_training(dirty, interrupted, epochs=3, resume=True)
    result = run_training(RegressionTask(), interrupted, epochs=3, resume=True)

    assert result.resumed_from == 2
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert_same_weights(weights(straight / LAST), weights(interrupted / LAST))
    assert_same_weights(weights(straight / BEST), weights(interrupted / BEST))
    straight_history = json.loads((straight / HISTORY).read_text())
    resumed_history = json.loads((interrupted / HISTORY).read_text())
    assert [h["train_loss"] for h in straight_history] == [h["train_loss"] for h in resumed_history]


KILLED_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_training_loop import RegressionTask
    from dualpath.training.loop import run_training
    run_training(RegressionTask(crash_at=(3, 2)), {out!r}, epochs=4)
    """
)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(killed))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert read_config(killed / LAST)["epoch"] == 2
    assert not list(killed.glob(".*.tmpdir")) or (killed / LAST / "model.safetensors").is_file()

    result = run_training(RegressionTask(), killed, epochs=4, resume=True)
    straight = run_training(RegressionTask(), tmp_path / "straight", epochs=4)
    assert result.resumed_from == 2
    assert_same_weights(weights(killed / LAST), weights(tmp_path / "straight" / LAST))
    assert [h.train_loss for h in result.history] == [h.train_loss for h in straight.history]


def test_resume_refuses_another_architecture(tmp_path: Path) -> None:
    run_training(RegressionTask(), tmp_path, epochs=1)

    class OtherArch(RegressionTask):
        def checkpoint_config(self) -> dict[str, Any]:
            return {**super().checkpoint_config(), "arch": "rnn"}

    with pytest.raises(CheckpointError, match="arch"):
        run_training(OtherArch(), tmp_path, epochs=2, resume=True)


def test_resume_with_nothing_to_resume_starts_fresh(tmp_path: Path) -> None:
    result = run_training(RegressionTask(), tmp_path, epochs=1, resume=True)
    assert result.resumed_from is None and [h.epoch for h in result.history] == [1]


def test_history_is_never_behind_the_resumable_checkpoint(tmp_path: Path) -> None:
    """A kill between writing history.json and last/ must not lose or duplicate an epoch."""
    run_training(RegressionTask(), tmp_path, epochs=2)
    history = json.loads((tmp_path / HISTORY).read_text())
    # Simulate the window where history already holds epoch 3 but last/ is still epoch 2.
    history.append({**history[-1], "epoch": 3})
    (tmp_path / HISTORY).write_text(json.dumps(history))
    result = run_training(RegressionTask(), tmp_path, epochs=3, resume=True)
    assert [h.epoch for h in result.history] == [1, 2, 3]


def test_watchdog_fires_on_a_stalled_step_and_training_still_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dualpath")
    task = RegressionTask(stall_s=0.5)
    result = run_training(task, tmp_path, epochs=1, watchdog_seconds=0.2)
    stalls = [r for r in caplog.records if "no step finished" in r.getMessage()]
    assert stalls, "the watchdog did not report the stall"
    assert "train_epoch" in stalls[0].getMessage()  # the stalled thread's stack is in the log
    assert [h.epoch for h in result.history] == [1]


def test_watchdog_stays_quiet_when_steps_keep_coming(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dualpath")
    run_training(RegressionTask(stall_s=0.05, stall_every_step=True), tmp_path, epochs=1, watchdog_seconds=1.0)
    assert not [r for r in caplog.records if "no step finished" in r.getMessage()]


def test_torch_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
