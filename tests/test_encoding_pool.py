"""Multi-process encoding in `bank build`: the real CLI in a subprocess, its real worker processes.

A build in two worker processes, killed at a checkpoint (SIGKILL to the parent only: its workers must go by
themselves), resumes in two processes and ends with the vectors a one-process build computes. A worker killed
mid-build stops the build with one line and a non-zero exit, and takes the other worker with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig
from dualpath.encoding.pool import worker_count
from dualpath.errors import ConfigError
from test_bank_streaming import write_corpus
from test_cli_errors import DUALPATH, SRC

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _workers(pid: int) -> list[psutil.Process]:
    """The encoding workers among a process's children (not multiprocessing's resource tracker)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        assert proc.poll() is None, f"the build ended early: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, "the build never reached a checkpoint"
        time.sleep(0.2)


def _gone(processes: list[psutil.Process], seconds: float = 30) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return not alive


def test_auto_is_one_process_per_core_on_the_cpu_only():
    assert worker_count("auto", "cuda") == 1
    assert 1 <= worker_count("auto", "cpu") <= 4
    assert worker_count(3, "cpu") == 3


def test_a_killed_two_process_build_resumes_with_one_process_vectors(tmp_path, text_encoder):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)  # 120 concepts, 8 checkpoints of 16
    config = tmp_path / "cfg.yaml"
    config.write_text("bank: {build_batch: 16, dtype: float32}\nencoder: {processes: 2}\n")
    out, staging = tmp_path / "bank", tmp_path / ".bank.building"
    cmd = [str(DUALPATH), "bank", "build", str(corpus), "--out", str(out), "--config", str(config)]
    proc = subprocess.Popen(cmd, env={**ENV, "DUALPATH_PAUSE_AT": "build-checkpoint:300"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(staging / "build-state.json", proc)
        workers = _workers(proc.pid)
        assert len(workers) == 2, "the build encodes in two worker processes"
    finally:
        proc.send_signal(signal.SIGKILL)  # the parent only
        proc.wait()
    assert _gone(workers), "the workers outlived their killed parent"
    state = json.loads((staging / "build-state.json").read_text())
    assert 0 < state["concepts"] < 120

    done = subprocess.run([*cmd, "--processes", "2"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not staging.exists()
    one = DualPathConfig.from_dict({"bank": {"build_batch": 16, "dtype": "float32"}, "encoder": {"processes": 1}})
    with ConceptBank.open(out) as resumed, ConceptBank.build(corpus, tmp_path / "one", one,
                                                             encoder=text_encoder) as single:
        assert len(resumed) == len(single) == 120
        assert resumed.texts(range(120)) == single.texts(range(120))
        np.testing.assert_allclose(resumed.vectors(range(120)), single.vectors(range(120)), atol=1e-5)


def test_a_dead_worker_stops_the_build_in_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    config = tmp_path / "cfg.yaml"
    config.write_text("bank: {build_batch: 16}\n")
    staging = tmp_path / ".bank.building"
    proc = subprocess.Popen(
        [str(DUALPATH), "bank", "build", str(corpus), "--out", str(tmp_path / "bank"), "--config", str(config),
         "--processes", "2"],
        env={**ENV, "DUALPATH_PAUSE_AT": "build-checkpoint:5"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(staging / "build-state.json", proc)  # paused after the first batch: both workers idle
        workers = _workers(proc.pid)
        assert len(workers) == 2
        workers[0].send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.returncode != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest is the log
    assert len(errors) == 1 and f"encoding worker process {workers[0].pid} was killed by signal 9" in errors[0], err
    assert _gone(workers[1:]), "the other worker was left running"
    assert not (tmp_path / "bank").exists()


@pytest.mark.parametrize("value", [0, "many"])
def test_processes_must_be_auto_or_a_positive_count(value):
    with pytest.raises(ConfigError, match=r"encoder\.processes"):
        DualPathConfig.from_dict({"encoder": {"processes": value}})
