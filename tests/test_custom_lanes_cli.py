"""A lane added once is known to every command (issue 18): through the installed `dualpath` command.

`calibrate --lanes FILE` stores the lanes FILE adds in BANK/calibration.json, so generate, eval
generation and serve know them without the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_cli_errors import run_dualpath, run_side_by_side

LANES = """\
lanes:
  archivist:
    tau_snap: 0.70
    tau_novel: 0.60
    k: 200
    dup_window: 8
    shares: {snap: 0.6, blend: 0.3, novel: 0.1}
"""


@pytest.fixture
def bank(trained_bank_path, tmp_path) -> Path:
    out = tmp_path / "bank"
    shutil.copytree(trained_bank_path, out)
    (out / "calibration.json").unlink(missing_ok=True)
    return out


def ok(proc) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in err, err
    return proc.stdout.decode()


@pytest.mark.slow
def test_a_lane_calibrated_once_is_known_to_every_command(bank: Path, tmp_path: Path) -> None:
    lanes = tmp_path / "my-lanes.yaml"
    lanes.write_text(LANES, encoding="utf-8")
    proc = run_dualpath("calibrate", "--bank", str(bank), "--lanes", str(lanes), "--free-docs", "0", "--json")
    calibration = json.loads(ok(proc))
    assert calibration["lanes"]["archivist"]["calibrated"] is True
    assert calibration["custom_lanes"]["archivist"]["k"] == 200
    assert "uncalibrated" not in proc.stderr.decode(), "calibration warned about itself"
    lanes.unlink()  # later commands must not need the file

    generated, evaluated = run_side_by_side(
        ("generate", "--bank", str(bank), "--lane", "archivist", "-n", "2", "--json",
         "The Moon orbits the Earth. It has no atmosphere."),
        ("eval", "generation", "--bank", str(bank), "--lanes", "archivist", "--free-docs", "0", "--max-pairs", "100",
         "--json"),
    )
    records = [json.loads(line) for line in ok(generated).splitlines() if line.strip()]
    assert len(records) == 2 and {r["lane"] for r in records} == {"archivist"}, records
    assert "archivist" in json.loads(ok(evaluated))["lanes"]

    from dualpath.config import DualPathConfig
    from dualpath.service import DualPathService

    service = DualPathService.load(bank, DualPathConfig())  # what `dualpath serve --bank BANK` loads
    try:
        assert service.info()["lanes"]["archivist"]["calibrated"] is True
    finally:
        service.close()


@pytest.mark.slow
def test_eval_generation_takes_a_lanes_file(bank: Path, tmp_path: Path) -> None:
    lanes = tmp_path / "poet.yaml"
    lanes.write_text(LANES.replace("archivist", "poet"), encoding="utf-8")
    proc = run_dualpath("eval", "generation", "--bank", str(bank), "--lanes", str(lanes), "--lanes", "neutral",
                        "--free-docs", "0", "--max-pairs", "100", "--json")
    assert set(json.loads(ok(proc))["lanes"]) >= {"poet", "neutral"}
