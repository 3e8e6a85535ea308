"""Lanes as a bank uses them: shipped + user lanes, with the bank's own calibration applied.

Thresholds belong to an embedding space (docs/protocol.md), so `dualpath calibrate` stores per-lane
thresholds measured on the bank's held-out documents in `BANK/calibration.json`; generation uses
them by default and says so when a bank has none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dualpath.bank import ConceptBank
from dualpath.bank.layout import calibration_path
from dualpath.decider import Lane, load_lanes, make_lane
from dualpath.errors import ConfigError
from dualpath.fileio import write_json_atomic
from dualpath.locking import write_lock

log = logging.getLogger(__name__)



def read_calibration(bank_path: str | Path) -> dict[str, Any] | None:
    path = calibration_path(bank_path)
    if not path.is_file():
        return None
    try:
        calibration = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is corrupt ({err}); rerun `dualpath calibrate`") from None
    # The shape too: `[]` or `{"lanes": 3}` is valid JSON but would fail later, far from the file.
    lanes = calibration.get("lanes", {}) if isinstance(calibration, dict) else None
    if not isinstance(lanes, dict) or not all(isinstance(v, dict) for v in lanes.values()):
        raise ConfigError(f"{path} is corrupt (expected an object with a \"lanes\" map); rerun `dualpath calibrate`")
    return calibration


def write_calibration(bank_path: str | Path, calibration: dict[str, Any]) -> Path:
    path = calibration_path(bank_path)
    with write_lock(bank_path):  # re-entrant under calibrate_bank's lock; alone, it orders against `bank add`
        write_json_atomic(path, calibration)
    return path


def bank_lanes(bank: ConceptBank, user_file: str | Path | None = None) -> dict[str, Lane]:
    """Shipped lanes, merged with `user_file`, with the bank's calibrated thresholds applied by name."""
    lanes = load_lanes(user_file)
    calibration = read_calibration(bank.path)
    if calibration is None:
        log.warning(
            "bank %s is uncalibrated: lane thresholds are defaults for all-MiniLM-L6-v2 "
            "(run `dualpath calibrate --bank %s`)", bank.path, bank.path,
        )
        return lanes
    for name, fields in calibration.get("lanes", {}).items():
        if name in lanes:
            lanes[name] = make_lane(name, lanes[name].model_dump() | fields, f"{calibration_path(bank.path)}")
    return lanes
