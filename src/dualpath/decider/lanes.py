"""Lane profiles: the thresholds, shortlist size and duplicate window a generation runs under.

Lanes come from the YAML file shipped beside this module (`lanes.yaml`, which documents the
numbers) merged with an optional user file. A lane's intent is stated as target shares of
SNAP / BLEND / NOVEL; `thresholds_from_shares` turns shares into thresholds on a sample of c_max
values from the bank the lane will run on (the calibration step), because thresholds belong to
an embedding space, not to the code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dualpath.errors import ConfigError

SHIPPED_LANES = "lanes.yaml"


class Shares(BaseModel):
    """Target shares of steps per decision; they sum to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snap: float = Field(ge=0.0, le=1.0)
    blend: float = Field(ge=0.0, le=1.0)
    novel: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Shares:
        total = self.snap + self.blend + self.novel
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"snap + blend + novel must be 1, got {total:g}")
        return self


HELPS = "helps"  # a risk level fitted at calibration: wherever grounding raises held-out cosine to the truth
NONE = "none"


class Risk(BaseModel):
    """A `rule: confidence` lane's intent, as risk on p (the SNAP confidence: the probability that the
    candidate is the true next concept). `snap`: SNAP at p ≥ this, or "helps" (the p above which
    snapping raises held-out cosine to the truth, fitted at calibration). `blend`: BLEND between this
    and the SNAP level, "helps" (fitted the same way) or "none" (never BLEND: a step is grounded or not)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snap: float | Literal["helps"] = Field(union_mode="left_to_right")
    blend: float | Literal["helps", "none"] = Field(NONE, union_mode="left_to_right")

    @model_validator(mode="after")
    def _levels(self) -> Risk:
        for name in ("snap", "blend"):
            value = getattr(self, name)
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1] or '{HELPS}', got {value:g}")
        if isinstance(self.snap, float) and isinstance(self.blend, float) and not self.blend < self.snap:
            raise ValueError(f"blend ({self.blend:g}) must be below snap ({self.snap:g})")
        return self


class Lane(BaseModel):
    """One decision profile.

    `rule: c_max` (the reference's quota rule): thresholds are cosines of v̂ to its nearest candidate; a
    lower τ_snap snaps more, a lower τ_novel keeps fewer steps NOVEL. `rule: confidence`: thresholds are
    probabilities that the candidate is the true next concept (decider/grounding.py), set from `risk`
    at calibration; a lower τ_snap grounds more, on weaker evidence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    rule: Literal["c_max", "confidence"] = "c_max"
    tau_snap: float = Field(ge=-1.0, le=1.0)
    tau_novel: float = Field(ge=-1.0, le=1.0)
    # Shortlist size asked of the retriever. Bounded: with k 1e11 every search failed and each step
    # fell back to NOVEL silently.
    k: int = Field(500, ge=1, le=10_000)
    dup_window: int = Field(8, ge=0)  # past steps a near-duplicate may not repeat; 0 = never drop
    # Past steps whose shown concepts this stream may not show again (SNAP, BLEND and rendering take the
    # best unused candidate). 1 = a concept may come back, but never at two consecutive steps; 0 = off.
    repeat_window: int = Field(64, ge=0)
    shares: Shares | None = None  # rule c_max: target shares of SNAP / BLEND / NOVEL, set at calibration
    risk: Risk | None = None  # rule confidence: the p levels, set at calibration
    calibrated: bool = False
    provenance: str = ""
    description: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Lane:
        if not self.tau_novel < self.tau_snap:
            raise ValueError(f"must be below tau_snap (got {self.tau_novel:g} ≥ {self.tau_snap:g})")
        if self.rule == "confidence" and self.shares is not None:
            raise ValueError("a confidence lane states its intent as risk, not shares")
        if self.rule == "c_max" and self.risk is not None:
            raise ValueError("risk levels are for lanes with rule: confidence")
        return self


def _error_line(err: ValidationError, lane: str, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("float", "literal"))) or "tau_novel"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: lane '{lane}': {field}: {message}"


def make_lane(name: str, fields: Mapping[str, Any], source: str = "lanes") -> Lane:
    """Validate one lane's fields; errors name the source file, the lane and the field."""
    if not isinstance(fields, Mapping):
        raise ConfigError(f"{source}: lane '{name}' must be a mapping of fields")
    if "name" in fields and fields["name"] != name:
        raise ConfigError(f"{source}: lane '{name}': name: differs from its key ('{fields['name']}')")
    try:
        return Lane.model_validate({**fields, "name": name})
    except ValidationError as err:
        raise ConfigError(_error_line(err, name, source)) from None


def _read_lane_table(text: str, source: str) -> dict[str, dict]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict) or set(data) - {"lanes"}:
        raise ConfigError(f"{source} must hold one top-level key 'lanes' mapping names to lane fields")
    lanes = data.get("lanes") or {}
    if not isinstance(lanes, dict):
        raise ConfigError(f"{source}: 'lanes' must map lane names to their fields")
    for name, fields in lanes.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{source}: lane '{name}' must be a mapping of fields")
    return {str(name): dict(fields) for name, fields in lanes.items()}


def load_lanes(user_file: str | Path | None = None) -> dict[str, Lane]:
    """The shipped lanes, with a user file merged over them field by field.

    A user lane with a shipped name overrides only the fields it states (and, unless it states a
    provenance, records which fields it changed); a new name is a new lane.
    """
    shipped_text = resources.files("dualpath.decider").joinpath(SHIPPED_LANES).read_text(encoding="utf-8")
    table = _read_lane_table(shipped_text, f"shipped {SHIPPED_LANES}")
    sources = dict.fromkeys(table, f"shipped {SHIPPED_LANES}")
    if user_file is not None:
        path = Path(user_file)
        try:
            user_text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"lanes file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read lanes file {path}: {err}") from None
        for name, fields in _read_lane_table(user_text, str(path)).items():
            if name in table and "provenance" not in fields:
                changed = ", ".join(sorted(fields))
                before = table[name].get("provenance", "")
                fields["provenance"] = f"{before}; {changed} from {path}".lstrip("; ")
            elif "provenance" not in fields:
                fields["provenance"] = f"user lanes file {path}"
            table[name] = {**table.get(name, {}), **fields}
            sources[name] = str(path)
    return {name: make_lane(name, fields, sources[name]) for name, fields in table.items()}


def extreme_lanes(k: int) -> dict[str, Lane]:
    """LVM-only (never snaps) and bank-only (always snaps to n*): the two single paths as lanes, so the
    baselines of every evaluation run through the same decider code."""
    return {
        "lvm-only": make_lane("lvm-only", {"tau_snap": 1.0, "tau_novel": 1 - 1e-9, "k": k, "dup_window": 0}),
        "bank-only": make_lane("bank-only", {"tau_snap": -1 + 1e-9, "tau_novel": -1.0, "k": k, "dup_window": 0}),
    }


def get_lane(lanes: Mapping[str, Lane], name: str) -> Lane:
    try:
        return lanes[name]
    except KeyError:
        raise ConfigError(f"unknown lane '{name}'; known lanes: {', '.join(sorted(lanes))}") from None


def thresholds_from_shares(
    c_max_samples: np.ndarray, shares: Shares | Mapping[str, float]
) -> tuple[float, float]:
    """(τ_snap, τ_novel) that give `shares` on these c_max samples.

    The top `snap` share of the samples satisfies c ≥ τ_snap, the bottom `novel` share c ≤ τ_novel
    (counts rounded to whole samples; ties at a threshold all fall on one side). A share of 0
    puts its threshold just outside the samples. τ_novel is kept strictly below τ_snap.
    """
    if not isinstance(shares, Shares):
        try:
            shares = Shares.model_validate(dict(shares))
        except ValidationError as err:
            raise ConfigError(f"shares: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    c = np.sort(np.asarray(c_max_samples, dtype=np.float64).ravel())
    if c.size == 0:
        raise ValueError("thresholds_from_shares needs at least one c_max sample")
    if not np.isfinite(c).all():
        raise ValueError("c_max samples must be finite")
    n = c.size
    n_snap = round(shares.snap * n)
    n_novel = min(round(shares.novel * n), n - n_snap)
    tau_snap = float(c[n - n_snap]) if n_snap else min(1.0, float(np.nextafter(c[-1], np.inf)))
    tau_novel = float(c[n_novel - 1]) if n_novel else max(-1.0, float(np.nextafter(c[0], -np.inf)))
    if tau_novel >= tau_snap:
        tau_novel = float(np.nextafter(tau_snap, -np.inf))
    return tau_snap, tau_novel


def calibrate_lane(lane: Lane, c_max_samples: np.ndarray, provenance: str) -> Lane:
    """A copy of `lane` with thresholds from its target shares on these samples, marked calibrated."""
    if lane.shares is None:
        raise ConfigError(f"lane '{lane.name}' states no target shares, so it cannot be calibrated")
    tau_snap, tau_novel = thresholds_from_shares(c_max_samples, lane.shares)
    fields = lane.model_dump() | {
        "tau_snap": tau_snap,
        "tau_novel": tau_novel,
        "calibrated": True,
        "provenance": provenance,
    }
    return make_lane(lane.name, fields, source="calibration")
