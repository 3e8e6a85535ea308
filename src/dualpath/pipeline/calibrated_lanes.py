"""Lanes as a bank uses them: shipped + user lanes, with the bank's own calibration applied.

Thresholds belong to an embedding space (docs/protocol.md), so `dualpath calibrate` stores per-lane
thresholds measured on the bank's held-out documents in `BANK/calibration.json`; generation uses
them by default and says so when a bank has none.

Lanes of your own are added once: `dualpath calibrate --lanes FILE` (or `decider.lanes_file` in the
config) stores the definitions of the lanes FILE adds or changes beside their thresholds
(`custom_lanes`), so every later command on the bank (generate, eval generation, serve, report)
knows them without the file.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from dualpath.bank import ConceptBank
from dualpath.bank.layout import calibration_path
from dualpath.decider import FEATURES, Lane, SnapConfidence, load_lanes, make_lane
from dualpath.errors import ConfigError
from dualpath.fileio import write_json_atomic
from dualpath.locking import write_lock

log = logging.getLogger(__name__)

# What a calibration measures changed (2: the paraphrase cosine; 3: streams drawn by the LVM's sampler;
# 4: the SNAP confidence and the lanes that ground on it; 5: restated prompts and anchor margins): a
# calibration older than this is not used, and the demo's cached one is redone.
CALIBRATION_VERSION = 5


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


def user_lane_definitions(user_file: str | Path | None) -> dict[str, dict[str, Any]]:
    """The lanes `user_file` adds or changes, as whole definitions (JSON-safe), so a bank can keep them."""
    if user_file is None:
        return {}
    shipped = load_lanes()
    merged = load_lanes(user_file)
    return {name: lane.model_dump(mode="json") for name, lane in merged.items() if shipped.get(name) != lane}


def known_lanes(bank_path: str | Path, user_file: str | Path | None = None) -> dict[str, Lane]:
    """Shipped lanes, the lanes the bank was calibrated with (`custom_lanes`), then `user_file` over both.

    Definitions only: no calibrated thresholds applied (`bank_lanes` applies them).
    """
    lanes = load_lanes()
    calibration = read_calibration(bank_path) or {}
    stored = calibration.get("custom_lanes", {})
    if not isinstance(stored, dict):
        raise ConfigError(f"{calibration_path(bank_path)} is corrupt (custom_lanes); rerun `dualpath calibrate`")
    for name, definition in stored.items():
        lanes[name] = make_lane(name, definition, f"{calibration_path(bank_path)}: custom_lanes")
    # A file given now wins over what the bank stored: it is the user's latest word on the lane.
    for name, definition in user_lane_definitions(user_file).items():
        lanes[name] = make_lane(name, definition, str(user_file))
    return lanes


def stored_lane_definitions(bank_path: str | Path, user_file: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """What `custom_lanes` holds after a calibration with `user_file`: the bank's earlier ones, then the file's."""
    stored = (read_calibration(bank_path) or {}).get("custom_lanes", {})
    return {**(stored if isinstance(stored, dict) else {}), **user_lane_definitions(user_file)}


def bank_lanes(
    bank: ConceptBank, user_file: str | Path | None = None, warn: bool = True, use_calibration: bool = True
) -> dict[str, Lane]:
    """Known lanes (shipped, the bank's own, `user_file`) with the bank's calibrated thresholds applied by name.

    `warn=False` silences the "uncalibrated" warning, for calibration itself; `use_calibration=False`
    leaves the thresholds uncalibrated (a calibration measured with other models).
    """
    lanes = known_lanes(bank.path, user_file)
    calibration = read_calibration(bank.path) if use_calibration else None
    if calibration is None:
        if warn:
            log.warning(
                "bank %s is uncalibrated: lane thresholds are defaults for all-MiniLM-L6-v2 "
                "(run `dualpath calibrate --bank %s`)", bank.path, bank.path,
            )
        return lanes
    for name, fields in calibration.get("lanes", {}).items():
        # A threshold is a level of one rule's quantity (c, or p): it never carries over to the other rule.
        if name in lanes and fields.get("rule", "c_max") == lanes[name].rule:
            lanes[name] = make_lane(name, lanes[name].model_dump() | fields, f"{calibration_path(bank.path)}")
    return lanes


def model_digests(lvm: Any, tower: Any | None, sampler: Any | None) -> dict[str, str | None]:
    """Short digests of the weights a calibration was measured with (LVM, query tower, LVM sampler)."""
    from dualpath.models.sampler import weights_digest

    return {
        "lvm": weights_digest(lvm.net),
        "tower": None if tower is None else weights_digest(tower.net),
        "sampler": None if sampler is None else weights_digest(sampler.net),
    }


def stale_models(calibration: dict[str, Any], lvm: Any, tower: Any | None, sampler: Any | None) -> list[str]:
    """Why `calibration` no longer holds, one phrase each: a model changed since (none when it recorded
    no digests), or an older dualpath measured it (what a calibration measures has changed)."""
    version = calibration.get("version")
    confidence = calibration.get("confidence")
    fitted = confidence.get("model") if isinstance(confidence, dict) else None
    features = fitted.get("features") if isinstance(fitted, dict) else None
    if (isinstance(version, int) and version < CALIBRATION_VERSION) or (
        features is not None and tuple(features) != FEATURES
    ):
        return [f"an older dualpath measured it: calibration version {version}, now {CALIBRATION_VERSION}"]
    recorded = calibration.get("models")
    if not isinstance(recorded, dict):
        return []
    now = model_digests(lvm, tower, sampler)
    # A model the calibration did not use (None: no tower, or no free-running streams drawn by a sampler)
    # cannot have changed under it.
    return [f"the {name} changed since" for name in ("lvm", "tower", "sampler")
            if recorded.get(name) is not None and recorded[name] != now[name]]


DEFAULT_CONFIDENCE = "confidence.json"  # shipped beside lanes.yaml: used until a bank is calibrated


def read_confidence(bank_path: str | Path | None) -> SnapConfidence:
    """The SNAP confidence of `rule: confidence` lanes: the one fitted on the bank's held-out documents
    (calibration.json), else the shipped default (fitted on the Wikipedia sample with all-MiniLM-L6-v2;
    other spaces should calibrate)."""
    calibration = read_calibration(bank_path) if bank_path is not None else None
    fitted = (calibration or {}).get("confidence", {}).get("model")
    if fitted is not None:
        return SnapConfidence.from_dict(fitted, f"{calibration_path(bank_path)}: confidence")
    shipped = resources.files("dualpath.decider").joinpath(DEFAULT_CONFIDENCE).read_text(encoding="utf-8")
    return SnapConfidence.from_dict(json.loads(shipped)["model"], f"shipped {DEFAULT_CONFIDENCE}")
