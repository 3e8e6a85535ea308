"""Lane profiles: the shipped YAML, user files merged over it, validation, shares → thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.decider import Shares, calibrate_lane, get_lane, load_lanes, make_lane, thresholds_from_shares
from dualpath.decider import lanes as lanes_module
from dualpath.errors import ConfigError

INTENT = ("conservative", "legal", "neutral", "creative")


def test_shipped_lanes_follow_the_intent() -> None:
    lanes = load_lanes()
    assert set(INTENT) <= set(lanes)
    # Levels of p, the probability that the candidate is the true next concept: a lower SNAP level grounds
    # more. Conservative and legal ground more than creative; legal never blends (grounded or not).
    assert lanes["conservative"].tau_snap < lanes["neutral"].tau_snap < lanes["legal"].tau_snap
    assert lanes["legal"].tau_snap < lanes["creative"].tau_snap
    assert lanes["legal"].tau_novel == pytest.approx(lanes["legal"].tau_snap, abs=1e-3)
    assert lanes["legal"].dup_window == 0
    assert all(lanes[name].dup_window == 8 for name in ("conservative", "neutral", "creative"))
    assert lanes["creative"].k == 300 and lanes["neutral"].k == 500
    for name in INTENT:
        assert lanes[name].rule == "confidence" and lanes[name].risk is not None and lanes[name].shares is None
        assert not lanes[name].calibrated and "uncalibrated" in lanes[name].provenance
    assert lanes["quota-neutral"].rule == "c_max" and lanes["quota-neutral"].shares is not None


def test_reference_lanes_are_kept_verbatim() -> None:
    lanes = load_lanes()
    expected = {
        "conservative": (0.94, 0.88, 500, 8),
        "neutral": (0.92, 0.85, 500, 8),
        "creative": (0.90, 0.82, 300, 8),
        "legal": (0.94, 0.88, 500, 0),
    }
    for name, numbers in expected.items():
        lane = lanes[f"reference-{name}"]
        assert (lane.tau_snap, lane.tau_novel, lane.k, lane.dup_window) == numbers
        assert "reference" in lane.provenance


def test_shipped_quota_defaults_are_their_shares_on_the_measured_distribution() -> None:
    # The YAML says: thresholds = the shares' quantiles of N(0.70, 0.061), rounded to 0.01.
    sample = np.random.default_rng(0).normal(0.70, 0.0608, size=200_000)
    lane = load_lanes()["quota-neutral"]
    tau_snap, tau_novel = thresholds_from_shares(sample, lane.shares)
    assert lane.tau_snap == pytest.approx(tau_snap, abs=0.006)
    assert lane.tau_novel == pytest.approx(tau_novel, abs=0.006)


def _write(tmp_path: Path, data: object, name: str = "lanes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_user_file_merges_field_by_field_and_adds_lanes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "lanes": {
                "neutral": {"tau_snap": 0.9},
                "poetry": {"tau_snap": 0.95, "tau_novel": 0.9, "k": 50},
            }
        },
    )
    shipped = load_lanes()
    lanes = load_lanes(path)
    assert lanes["neutral"].tau_snap == 0.9
    assert lanes["neutral"].tau_novel == shipped["neutral"].tau_novel  # untouched fields stay
    assert lanes["neutral"].shares == shipped["neutral"].shares
    assert f"tau_snap from {path}" in lanes["neutral"].provenance
    assert lanes["poetry"].k == 50 and lanes["poetry"].dup_window == 8
    assert lanes["poetry"].provenance == f"user lanes file {path}"
    assert lanes["creative"] == shipped["creative"]


GOOD = {"tau_snap": 0.8, "tau_novel": 0.5}
AT_LEAST = "Input should be greater than or equal to"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tau_snap": 0.7, "tau_novel": 0.8}, "tau_novel: must be below tau_snap (got 0.8 ≥ 0.7)"),
        ({"tau_snap": 0.7, "tau_novel": 0.7}, "tau_novel: must be below tau_snap"),
        ({"tau_snap": 1.5, "tau_novel": 0.5}, "tau_snap: Input should be less than or equal to 1"),
        ({"tau_snap": 0.5, "tau_novel": -1.5}, f"tau_novel: {AT_LEAST} -1"),
        ({**GOOD, "k": 0}, f"k: {AT_LEAST} 1"),
        ({**GOOD, "dup_window": -1}, f"dup_window: {AT_LEAST} 0"),
        ({**GOOD, "shares": {"snap": 0.5, "blend": 0.5, "novel": 0.5}}, "shares: snap + blend + novel must"),
        ({**GOOD, "shares": {"snap": -0.1, "blend": 0.6, "novel": 0.5}}, f"shares.snap: {AT_LEAST} 0"),
        ({"tau_snap": 0.8}, "tau_novel: Field required"),
        ({**GOOD, "tau_blend": 0.6}, "tau_blend: Extra inputs are not permitted"),
        ({"tau_snap": "high", "tau_novel": 0.5}, "tau_snap: Input should be a valid number"),
    ],
)
def test_bad_lane_names_file_lane_and_field(tmp_path: Path, fields: dict, message: str) -> None:
    path = _write(tmp_path, {"lanes": {"bad": fields}})
    with pytest.raises(ConfigError) as info:
        load_lanes(path)
    assert str(info.value).startswith(f"{path}: lane 'bad': {message}")
    assert "\n" not in str(info.value)


def test_overriding_a_shipped_lane_into_disorder_names_the_user_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"lanes": {"creative": {"tau_novel": 0.95}}})
    with pytest.raises(ConfigError, match=f"{path}: lane 'creative': tau_novel"):
        load_lanes(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lanes: [1, 2]", "'lanes' must map"),
        ("neutral: {tau_snap: 0.9}", "one top-level key 'lanes'"),
        ("lanes: {neutral: 3}", "lane 'neutral' must be a mapping"),
        ("lanes: {x: [", "not valid YAML"),
    ],
)
def test_malformed_lane_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_lanes(_write(tmp_path, text))


def test_missing_file_and_unknown_lane(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lanes file not found"):
        load_lanes(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown lane 'bold'; known lanes: conservative, creative"):
        get_lane(load_lanes(), "bold")


def test_shipped_yaml_is_package_data() -> None:
    # pyproject ships **/*.yaml; the file must sit beside the module it is read from.
    assert (Path(lanes_module.__file__).parent / lanes_module.SHIPPED_LANES).is_file()


# ---- shares → thresholds -----------------------------------------------------------------------

shares_strategy = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)).filter(sum).map(
    lambda t: Shares(snap=t[0] / sum(t), blend=t[1] / sum(t), novel=t[2] / sum(t))
)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), shares=shares_strategy)
def test_thresholds_from_shares_deliver_the_shares(seed: int, n: int, shares: Shares) -> None:
    c = np.random.default_rng(seed).uniform(-0.2, 0.99, size=n).astype(np.float32)  # distinct values
    tau_snap, tau_novel = thresholds_from_shares(c, shares)
    assert -1.0 <= tau_novel < tau_snap <= 1.0
    c64 = c.astype(np.float64)  # the decider compares recorded c_max as float64
    snap_share = float(np.mean(c64 >= tau_snap))
    novel_share = float(np.mean(c64 <= tau_novel))
    # Counts are rounded to whole samples: within one sample of the target each.
    assert abs(snap_share - shares.snap) <= 1.0 / n + 1e-9
    assert abs(novel_share - shares.novel) <= 1.0 / n + 1e-9
    make_lane("calibrated", {"tau_snap": tau_snap, "tau_novel": tau_novel})  # always a valid lane


def test_thresholds_from_shares_edge_cases() -> None:
    c = np.array([0.5, 0.6, 0.7, 0.8])
    assert thresholds_from_shares(c, {"snap": 0.25, "blend": 0.5, "novel": 0.25}) == (0.8, 0.5)
    tau_snap, tau_novel = thresholds_from_shares(c, {"snap": 0.0, "blend": 0.0, "novel": 1.0})
    assert tau_snap > 0.8 and tau_novel == 0.8
    tau_snap, tau_novel = thresholds_from_shares(c, {"snap": 1.0, "blend": 0.0, "novel": 0.0})
    assert tau_snap == 0.5 and tau_novel < 0.5
    # Ties: all samples equal still give ordered thresholds.
    tau_snap, tau_novel = thresholds_from_shares(np.full(10, 0.7), {"snap": 0.3, "blend": 0.4, "novel": 0.3})
    assert tau_novel < tau_snap
    with pytest.raises(ValueError, match="at least one"):
        thresholds_from_shares(np.array([]), {"snap": 0.3, "blend": 0.4, "novel": 0.3})
    with pytest.raises(ValueError, match="finite"):
        thresholds_from_shares(np.array([0.5, np.nan]), {"snap": 0.3, "blend": 0.4, "novel": 0.3})
    with pytest.raises(ConfigError, match="must be 1"):
        thresholds_from_shares(c, {"snap": 0.3, "blend": 0.3, "novel": 0.3})


def test_calibrate_lane() -> None:
    lanes = load_lanes()
    c = np.random.default_rng(1).normal(0.5, 0.1, size=1000)
    calibrated = calibrate_lane(lanes["quota-neutral"], c, provenance="bank X held-out, 1000 steps")
    assert calibrated.calibrated and calibrated.provenance == "bank X held-out, 1000 steps"
    assert float(np.mean(c >= calibrated.tau_snap)) == pytest.approx(0.15, abs=1e-3)
    assert (calibrated.k, calibrated.dup_window, calibrated.shares) == (500, 8, lanes["quota-neutral"].shares)
    with pytest.raises(ConfigError, match="states no target shares"):
        calibrate_lane(lanes["reference-neutral"], c, provenance="x")
