"""`device: auto | cpu | cuda`: how `auto` resolves, and a clear one-line error for CUDA where there is none.

bench/gpu_check.py (CUDA against the CPU) is checked here on its CPU paths: without CUDA it says so and
exits cleanly, and `--against cpu` runs its whole comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualpath.config import DualPathConfig
from dualpath.errors import ConfigError
from dualpath.runtime import resolve_device
from test_cli_errors import assert_one_line_error, run_dualpath

GPU_CHECK = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def test_auto_resolves_to_cuda_only_where_torch_sees_it() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device(None) == expected
    assert resolve_device(DualPathConfig().device) == expected  # the default is auto
    assert resolve_device("cpu") == "cpu"


def test_device_setting_is_checked() -> None:
    assert DualPathConfig.from_dict({"device": "cuda:1", "encoder": {"device": "cpu"}}).device == "cuda:1"
    with pytest.raises(ConfigError, match="device"):
        DualPathConfig.from_dict({"device": "tpu"})
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu")


@no_cuda
def test_cuda_without_cuda_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="'cuda' was asked for"):
        resolve_device("cuda")


@no_cuda
@pytest.mark.parametrize(
    "args",
    [
        ["generate", "hello", "--bank", "no-such-bank", "--device", "cuda"],
        ["train", "lvm", "--bank", "no-such-bank", "--device", "cuda:0"],
        ["bank", "build", "wiki-sample", "--out", "OUT", "--device", "cuda"],
    ],
)
def test_cli_device_cuda_without_cuda(args: list[str], tmp_path: Path) -> None:
    args = [str(tmp_path / "bank") if a == "OUT" else a for a in args]
    proc = run_dualpath(*args)
    assert_one_line_error(proc, "device", "--device cpu")
    assert not (tmp_path / "bank").exists()  # refused before anything was written


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, env=env,
                          timeout=600)


@no_cuda
def test_gpu_check_without_cuda_says_so() -> None:
    proc = _gpu_check()
    assert proc.returncode == 0, proc.stderr
    assert "CUDA is not available" in proc.stdout and "nothing checked" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert _gpu_check("--require-cuda").returncode == 3


@pytest.mark.slow
def test_gpu_check_compares_devices(tmp_path: Path) -> None:
    """CPU against CPU: every check runs and agrees exactly (same seeds, same data)."""
    import json

    out = tmp_path / "check.json"
    proc = _gpu_check("--against", "cpu", "--sentences", "300", "--streams", "6", "--steps", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["check"].split(":")[0].split(" (")[0] for r in rows] == [
        "encode", "lvm epoch", "lvm epoch", "tower epoch", "tower epoch", "generation"]
    assert all(r["ok"] for r in rows)
    assert all(r["difference"] < 1e-5 for r in rows)
    assert rows[-1]["same_decision"] == 1.0
