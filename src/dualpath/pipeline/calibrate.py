"""Calibration: lane thresholds measured in the bank's own embedding space.

With MiniLM and a trained LVM, c_max (best cosine of v̂ to the shortlist, context excluded) sits
around 0.6-0.8, so thresholds written for GTR-T5 make every step NOVEL. Here c is measured on
held-out documents with the bank's own LVM and tower, and each lane's target shares of SNAP /
BLEND / NOVEL become its τ_snap / τ_novel. The result is stored in the bank (`calibration.json`)
and generation uses it by default.

Two measurements: teacher-forced (the true context at every step) and, when a generator is given,
free-running (streams fed their own steps, which is what a reader gets). Free-running c runs lower
than teacher-forced c, and lower still from a prompt the bank has never seen, so thresholds set on
teacher-forced c leave free-running output almost all NOVEL. Free-running streams are therefore run
with each prompt's whole document kept out of the search (a user's own prompt is not in the bank
either), and where they give enough steps their c sets the thresholds. Only the c distribution is
used, never the true continuation, so calibrating on held-out documents does not leak the answers
that evaluation scores.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import split_from_config
from dualpath.decider import Lane, calibrate_lane, make_lane
from dualpath.locking import write_lock
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.pipeline.calibrated_lanes import (
    CALIBRATION_VERSION,
    known_lanes,
    model_digests,
    stored_lane_definitions,
    write_calibration,
)
from dualpath.pipeline.evaluate import calibration_pairs, case_rows, grounded_outputs, teacher_forced
from dualpath.pipeline.free_running import generator_streams, heldout_prompts
from dualpath.pipeline.grounding import (
    EVEN_ODDS,
    MODES,
    UNKNOWN_SLACK,
    UNKNOWN_TOUCH,
    UNKNOWN_WEIGHTS,
    bank_successors,
    fit_confidence,
    risk_thresholds,
    unknown_cost,
)

if TYPE_CHECKING:
    from dualpath.pipeline.generator import Generator

log = logging.getLogger(__name__)

DEFAULT_DEPTH = 500
QUANTILES = (5, 25, 50, 75, 95)
DUP_QUANTILE = 0.99  # c_max above this share of held-out steps counts as "the same concept again"
FREE_DOCS = 200  # held-out prompts of the free-running calibration
FREE_ROUNDS = 2  # thresholds change the stream, which changes c: iterate to a fixed point
MIN_FREE_STEPS = 100  # fewer free-running c values than this keep the teacher-forced thresholds
PARAPHRASE_SHARE = 0.02  # real sentences allowed to restate an earlier one of their document this closely
PARAPHRASE_CEILING = 0.95  # the same sentence twice under two ids always counts as a repeat
PARAPHRASE_DOCS = 3000  # documents sampled (the first by id) to measure it
PARAPHRASE_SPAN = 64  # sentences of a document looked at


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


def paraphrase_cosine(documents: dict[str, np.ndarray], vectors: np.ndarray, default: float) -> float:
    """The cosine above which a stream's concept restates one it has shown, for this bank's text.

    Each sentence's highest cosine to the earlier sentences of its document: real text goes above the
    returned value in PARAPHRASE_SHARE of sentences (2 %: on the Wikipedia sample about 0.81; reference
    manuals restate more, so theirs is higher), capped at PARAPHRASE_CEILING. A stream may then restate
    itself about as often as the bank's own documents do. `default` where documents give < 100 values.
    """
    best: list[np.ndarray] = []
    for doc_id in sorted(documents)[:PARAPHRASE_DOCS]:
        ids = documents[doc_id][:PARAPHRASE_SPAN]
        if len(ids) < 2:
            continue
        x = np.asarray(vectors[ids], dtype=np.float32)
        sims = x @ x.T
        best.append(np.array([sims[t, :t].max() for t in range(1, len(ids))], dtype=np.float64))
    values = np.concatenate(best) if best else np.zeros(0)
    if values.size < 100:
        return default
    return float(min(PARAPHRASE_CEILING, np.quantile(values, 1 - PARAPHRASE_SHARE)))


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
    pairs, source = calibration_pairs(bank, lvm.training_split(cfg.split), max_pairs)
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
        "basis": "teacher-forced",
        "fitted_on": source,
        "dup_threshold": dup_threshold(rows.c_max(depth), cfg.decider.dup_threshold),
        "created": when,
        "pairs": len(pairs),
        "query_source": rows.query_source,
        "lvm": lvm.arch,
        "c_max_quantiles": {"levels": list(QUANTILES), **quantiles},
    }
    return calibrated, measured


def calibrate_free_running(
    generator: Generator, lanes: dict[str, Lane], docs: int = FREE_DOCS, rounds: int = FREE_ROUNDS
) -> tuple[dict[str, Lane], dict[str, Any]]:
    """Lanes recalibrated on the c of free-running streams from held-out prompts, documents unseen.

    Starts from `lanes` (teacher-forced calibrated) and repeats `rounds` times: run the streams, set
    the thresholds from the lane's shares on the c values they saw. A lane whose streams give fewer
    than MIN_FREE_STEPS values keeps its thresholds.
    """
    split = generator.lvm.training_split(generator.cfg.split)
    prompts = heldout_prompts(generator.bank, split, docs, half="calibration")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out: dict[str, Lane] = {}
    quantiles: dict[str, list[float]] = {}
    steps = 0
    for name, lane in lanes.items():
        for _ in range(rounds):
            streams = generator_streams(
                generator, prompts, lambda i, lane=lane: generator.decoder(lane, seed=i), unseen=True
            )
            c = np.asarray([x for s in streams for x in s.c_pick], dtype=np.float64)
            if c.size < MIN_FREE_STEPS or lane.shares is None:
                break
            provenance = (
                f"calibrated {when} on {c.size} free-running steps from {len(prompts)} held-out prompts of "
                f"{generator.bank.path.name}, documents unseen (LVM {generator.lvm.arch}, K={lane.k})"
            )
            lane = calibrate_lane(lane, c, provenance)
            quantiles[name] = [float(np.quantile(c, q / 100)) for q in QUANTILES]
            steps = max(steps, int(c.size))
        out[name] = lane
        log.info("lane %s (free-running): tau_snap %.4f tau_novel %.4f", name, lane.tau_snap, lane.tau_novel)
    return out, {"free_running_steps": steps, "free_running_c_quantiles": {"levels": list(QUANTILES), **quantiles}}


def calibrate_confidence(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    lanes: dict[str, Lane],
    cfg: DualPathConfig,
    max_pairs: int | None = 3000,
) -> tuple[dict[str, Lane], dict[str, Any]]:
    """The SNAP confidence fitted on the calibration half of the held-out documents, and the p levels
    of every `rule: confidence` lane's risk (pipeline/grounding.py, `risk_thresholds`).

    The pairs run in three cases (added, restated, unknown), so the confidence learns what the bank
    knowing looks like and what it not knowing looks like; the unknown case weighs more until grounding at
    even odds is safe there (pipeline/grounding.py). The evaluation half is never read here."""
    split_cfg = lvm.training_split(cfg.split)
    split = split_from_config(bank.documents(), split_cfg)
    pairs, source = calibration_pairs(bank, split_cfg, max_pairs)
    depth = max((lane.k for lane in lanes.values()), default=DEFAULT_DEPTH)
    table = bank_successors(bank)
    cases = {mode: case_rows(bank, lvm, tower, pairs, depth, table, mode, split.doc_ids) for mode in MODES}
    # The prior: the unknown case weighs more until even odds (p ≥ 0.5) is safe where the bank does not know.
    for unknown_weight in UNKNOWN_WEIGHTS:
        model, fit = fit_confidence([c.candidates for c in cases.values()], [c.labels for c in cases.values()],
                                    [unknown_weight if mode == "unknown" else 1.0 for mode in cases])
        parts = {mode: grounded_outputs(c, model) for mode, c in cases.items()}
        lost, touched = unknown_cost(parts["unknown"], EVEN_ODDS, float(np.nextafter(EVEN_ODDS, 0)))
        if lost <= UNKNOWN_SLACK and touched <= UNKNOWN_TOUCH:
            break
    log.info("SNAP confidence: the unknown case weighs %g (at p ≥ %.1f it loses %.4f cosine, %.1f %% of steps "
             "grounded)", unknown_weight, EVEN_ODDS, lost, 100 * touched)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out: dict[str, Lane] = {}
    for name, lane in lanes.items():
        if lane.risk is None:
            continue
        tau_snap, tau_novel, score = risk_thresholds(lane.risk, parts, UNKNOWN_SLACK)
        provenance = (
            f"calibrated {when} on {len(pairs)} held-out pairs of {bank.path.name} in {len(MODES)} cases "
            f"(risk snap={lane.risk.snap}, blend={lane.risk.blend})"
        )
        out[name] = make_lane(name, lane.model_dump() | {
            "tau_snap": tau_snap, "tau_novel": tau_novel, "calibrated": True, "provenance": provenance,
        }, source="calibration")
        band = f"BLEND above {tau_novel:.3f}" if tau_novel < np.nextafter(tau_snap, 0) else "no BLEND"
        log.info("lane %s: SNAP at p ≥ %.3f, %s (calibration mean cos %.4f)", name, tau_snap, band, score)
    measured = {
        "model": model.to_dict(),
        "fit": fit,
        "unknown_weight": unknown_weight,
        "unknown_cost_at_even_odds": {"cos": lost, "grounded_share": touched},
        "pairs": len(pairs),
        "fitted_on": source,
        "created": when,
        "cases": {mode: {"lvm_only": float(x["a"].mean()), "grounded_share_at_0.5": float((x["p"] >= 0.5).mean())}
                  for mode, x in parts.items()},
    }
    return out, measured


def calibrate_bank(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    cfg: DualPathConfig,
    max_pairs: int | None = 3000,
    generator: Generator | None = None,
    free_docs: int = FREE_DOCS,
) -> dict[str, Any]:
    """Calibrate every lane with target shares and store them in the bank.

    The lanes: shipped, those an earlier calibration stored (`custom_lanes`), and cfg's lanes file,
    whose lanes are stored too (docs/decider.md, "Your own lanes").

    With a `generator` (of this bank) and `free_docs` > 0, the thresholds come from free-running
    streams (see the module docstring); the teacher-forced measurement is kept beside them.
    Holds the bank's writer lock throughout: a `bank add` meanwhile would drop calibration.json.
    """
    with write_lock(bank.path):
        bank.ensure_current()
        return _calibrate_bank(bank, lvm, tower, cfg, max_pairs, generator, free_docs)


def _calibrate_bank(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    cfg: DualPathConfig,
    max_pairs: int | None,
    generator: Generator | None,
    free_docs: int,
) -> dict[str, Any]:
    # Every lane the bank knows (shipped, stored by an earlier calibration, the config's lanes file),
    # as defined, not as last calibrated: thresholds come from the shares alone.
    lanes = known_lanes(bank.path, cfg.decider.lanes_file)
    custom = stored_lane_definitions(bank.path, cfg.decider.lanes_file)
    confident = {name: lane for name, lane in lanes.items() if lane.rule == "confidence"}
    grounded, confidence = calibrate_confidence(bank, lvm, tower, confident, cfg, max_pairs)
    quota = {name: lane for name, lane in lanes.items() if lane.rule == "c_max"}
    calibrated, measured = calibrate_lanes(bank, lvm, tower, quota, cfg, max_pairs)
    measured["paraphrase_cosine"] = paraphrase_cosine(
        bank.documents(), bank.all_vectors(), cfg.generation.paraphrase_cosine
    )
    log.info("paraphrase cosine %.4f", measured["paraphrase_cosine"])
    if generator is not None:  # its free-running streams avoid restating themselves as generation will
        generator.use_paraphrase_cosine(measured["paraphrase_cosine"])
    if generator is not None and free_docs > 0:
        calibrated, free = calibrate_free_running(generator, calibrated, free_docs)
        if free["free_running_steps"] >= MIN_FREE_STEPS:
            # A sampler's draws sit further from the bank than the LVM's mean: c, and so the
            # thresholds, hold for the temperature the streams ran at.
            measured = {**measured, **free, "basis": "free-running", "lvm_temperature": generator.lvm_temperature}
        else:
            log.info(
                "free-running streams gave %d c values, fewer than %d: the teacher-forced thresholds stay "
                "(more held-out documents give more)", free["free_running_steps"], MIN_FREE_STEPS,
            )
    calibrated.update(grounded)
    calibration = {
        **measured,
        "version": CALIBRATION_VERSION,
        # The models the thresholds were measured with: generation warns when they have changed since.
        "models": model_digests(lvm, tower, generator.sampler if generator is not None else None),
        "confidence": confidence,
        "lanes": {
            name: {
                "rule": lane.rule,
                "tau_snap": lane.tau_snap,
                "tau_novel": lane.tau_novel,
                "calibrated": True,
                "provenance": lane.provenance,
            }
            for name, lane in calibrated.items()
        },
        # The lanes files given so far, kept in the bank so later commands know these lanes without them.
        "custom_lanes": custom,
    }
    write_calibration(bank.path, calibration)
    return calibration

