"""Calibration: lane thresholds measured in the bank's own embedding space.

docs/protocol.md: with MiniLM and a trained LVM, c_max (best cosine of v̂ to the shortlist, context
excluded) sits around 0.6-0.8, so thresholds written for GTR-T5 make every step NOVEL. Here c_max
is measured teacher-forced on held-out documents with the bank's own LVM and tower, and each
lane's target shares of SNAP / BLEND / NOVEL become its τ_snap / τ_novel. The result is stored in
the bank (`calibration.json`) and generation uses it by default.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig
from dualpath.decider import Lane, calibrate_lane, load_lanes
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.pipeline.calibrated_lanes import write_calibration
from dualpath.pipeline.evaluate import heldout_pairs, teacher_forced

log = logging.getLogger(__name__)

QUANTILES = (5, 25, 50, 75, 95)
DUP_QUANTILE = 0.99  # c_max above this share of held-out steps counts as "the same concept again"


def dup_threshold(c_max: np.ndarray, ceiling: float) -> float:
    """The near-duplicate cosine for this embedding space: c_max's 99th percentile on held-out steps.

    The reference's 0.98 was set for GTR-T5 (docs/protocol.md); with MiniLM c_max rarely exceeds 0.9,
    so 0.98 never fires and a stream can SNAP to the same concept step after step. A true next concept
    is this close to v̂ in only 1 % of held-out steps, so above it a repeat of a recent pick is a loop,
    not a finding. Never above the configured threshold (`ceiling`), so a space where 0.98 is reachable
    keeps it.
    """
    finite = c_max[np.isfinite(c_max)]
    if finite.size == 0:
        return ceiling
    return float(min(ceiling, np.quantile(finite, DUP_QUANTILE)))


def calibrate_lanes(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    lanes: dict[str, Lane],
    cfg: DualPathConfig,
    max_pairs: int | None = 3000,
) -> tuple[dict[str, Lane], dict[str, Any]]:
    """Calibrated copies of `lanes` (those stating target shares) and what was measured."""
    targets = {name: lane for name, lane in lanes.items() if lane.shares is not None}
    if not targets:
        raise ValueError("no lane states target shares; nothing to calibrate")
    depth = max(lane.k for lane in targets.values())
    pairs = heldout_pairs(bank, lvm.training_split(cfg.split), max_pairs)
    if len(pairs) < 20:
        raise ValueError(f"only {len(pairs)} held-out pairs: too few to calibrate (add documents)")
    rows = teacher_forced(bank, lvm, tower, pairs, depth)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    calibrated: dict[str, Lane] = {}
    quantiles: dict[str, list[float]] = {}
    for name, lane in targets.items():
        c_max = rows.c_max(lane.k)
        c_max = c_max[np.isfinite(c_max)]
        provenance = (
            f"calibrated {when} on {len(c_max)} held-out pairs of {bank.path.name} "
            f"(LVM {lvm.arch}, query from {rows.query_source}, K={lane.k})"
        )
        calibrated[name] = calibrate_lane(lane, c_max, provenance)
        quantiles[name] = [float(np.quantile(c_max, q / 100)) for q in QUANTILES]
        log.info(
            "lane %s: tau_snap %.4f tau_novel %.4f (shares %s)",
            name, calibrated[name].tau_snap, calibrated[name].tau_novel, lane.shares,
        )
    measured = {
        "dup_threshold": dup_threshold(rows.c_max(depth), cfg.decider.dup_threshold),
        "created": when,
        "pairs": len(pairs),
        "query_source": rows.query_source,
        "lvm": lvm.arch,
        "c_max_quantiles": {"levels": list(QUANTILES), **quantiles},
    }
    return calibrated, measured


def calibrate_bank(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    cfg: DualPathConfig,
    max_pairs: int | None = 3000,
) -> dict[str, Any]:
    """Calibrate every lane with target shares (shipped + cfg's lanes file) and store them in the bank."""
    calibrated, measured = calibrate_lanes(bank, lvm, tower, load_lanes(cfg.decider.lanes_file), cfg, max_pairs)
    calibration = {
        **measured,
        "lanes": {
            name: {
                "tau_snap": lane.tau_snap,
                "tau_novel": lane.tau_novel,
                "calibrated": True,
                "provenance": lane.provenance,
            }
            for name, lane in calibrated.items()
        },
    }
    write_calibration(bank.path, calibration)
    return calibration

