"""The runnable examples run (small sizes), so the documentation cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_examples_run_end_to_end(tmp_path):
    out = _run(str(EXAMPLES / "generate_in_python.py"), str(tmp_path), "--docs", "150", "--epochs", "1")
    assert "bank:" in out and "[conservative]" in out and "[creative]" in out
    steps = [line for line in out.splitlines() if line.startswith("  ") and "c_max=" in line]
    assert len(steps) == 6

    out = _run(str(EXAMPLES / "custom_lane.py"), str(tmp_path / "bank"))
    shares = {line.split()[0]: line for line in out.splitlines()}
    assert {"archivist", "poet", "lvm-only", "bank-only"} <= set(shares)
