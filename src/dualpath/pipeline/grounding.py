"""Grounding on evidence, as the pipeline runs it: anchors in a bank, a generation step's grounding
(`StreamAnchors`, `ground_step`), and the SNAP confidence and the lanes' risk levels fitted on held-out
documents (`fit_confidence`, `risk_thresholds`). The teacher-forced pairs of each case are built in
pipeline/evaluate.py (`case_rows`).

The three cases a user meets (docs/protocol.md):
  known    the prompt comes from a document in the bank that the models trained on
  added    the document is in the bank but the models never saw it (held-out documents; `bank add`)
  unknown  the bank does not hold the document: its concepts are hidden from every search
Calibration also fits on a fourth, *restated*: the document is in the bank and the context says its
sentences in other words (corpus/restate.py), as when a user types what a bank article says. Its anchors
are matches below cosine 1, as are the unknown case's chance lookalikes; the confidence is fitted with the
unknown case weighted up (`UNKNOWN_WEIGHTS`) until even odds (p ≥ 0.5) costs the unknown case at most
UNKNOWN_SLACK: where the evidence cannot tell a restatement from a lookalike, it stays free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.corpus.restate import restate
from dualpath.decider import ShortlistBatch, id_rows, shortlist_scores
from dualpath.decider.grounding import (
    ANCHORS,
    Candidates,
    Grounding,
    SnapConfidence,
    brier_score,
    ground_batch,
    reliability,
    successor_table,
)
from dualpath.decider.kernels import NORM_EPS, unit_rows
from dualpath.decider.lanes import HELPS, NONE, Risk
from dualpath.models.heuristics import normalize_rows
from dualpath.search import search_excluding

log = logging.getLogger(__name__)

CASES = ("known", "added", "restated", "unknown")  # what evaluation measures (restated: beyond the three cases)
EXACT_TRUTH = 0.999  # a candidate this close to the true next concept is it (the same sentence twice)


def bank_successors(bank: ConceptBank) -> np.ndarray:
    """The bank's successor table (decider.grounding.successor_table) over its documents."""
    return successor_table(bank.documents(), len(bank))


def find_anchors(
    bank: ConceptBank, vectors: np.ndarray, hidden: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each vector's nearest bank concept, its cosine and its lead over the runner-up, `hidden[i]` treated
    as absent: (n,) ids (-1: none), (n,) cosines, (n,) margins. A concept of the bank finds itself at 1."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    exclude = list(hidden) if hidden is not None else [np.zeros(0, np.int64)] * n
    ids, scores = search_excluding(bank.search, normalize_rows(vectors), 2, exclude)
    cos = np.where(ids[:, 0] >= 0, scores[:, 0], 0.0).astype(np.float64)
    runner_up = np.where(ids[:, 1] >= 0, scores[:, 1], 0.0).astype(np.float64) if ids.shape[1] > 1 else 0.0
    return ids[:, 0], cos, np.where(ids[:, 0] >= 0, cos - runner_up, 0.0)


def restated_vectors(bank: ConceptBank, ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, d) unit vectors of bank concepts `ids` said again in other words (corpus.restate), encoded
    with the bank's encoder: the prompts of the restated case."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros((0, bank.dim), np.float32)
    texts = [restate(text, seed) for text in bank.texts(ids)]
    return normalize_rows(np.asarray(bank.encoder().encode(texts), dtype=np.float32))


def truth_labels(bank: ConceptBank, candidates: Candidates, targets: np.ndarray) -> np.ndarray:
    """(n, m) bool: the candidate is the true next concept (its id, or the same sentence under another id)."""
    exact = candidates.ids == np.asarray(targets)[:, None]
    close = np.einsum("nmd,nd->nm", candidates.vectors, bank.vectors(targets)) >= EXACT_TRUTH
    return (exact | close) & (candidates.ids >= 0)


def fit_confidence(
    candidate_sets: Sequence[Candidates], label_sets: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> tuple[SnapConfidence, dict[str, Any]]:
    """The SNAP confidence fitted on every valid candidate of the given pairs (set i's candidates counting
    `weights[i]` each, 1 by default), with its fit report (Brier score and reliability curve on the same
    candidates, unweighted)."""
    x = np.concatenate([c.features[c.ids >= 0] for c in candidate_sets])
    y = np.concatenate([lab[c.ids >= 0] for c, lab in zip(candidate_sets, label_sets, strict=True)])
    weights = [1.0] * len(candidate_sets) if weights is None else weights
    counts = np.concatenate([
        np.full(int((c.ids >= 0).sum()), float(w)) for c, w in zip(candidate_sets, weights, strict=True)
    ])
    model = SnapConfidence.fit(x, y, counts)
    p = model.predict(x)
    report = {"candidates": len(y), "positives": int(y.sum()), "brier": brier_score(p, y),
              "brier_base_rate": brier_score(np.full(len(y), y.mean()), y), "reliability": reliability(p, y)}
    log.info("SNAP confidence fitted on %d candidates (%d true): Brier %.4f (base rate %.4f)",
             report["candidates"], report["positives"], report["brier"], report["brier_base_rate"])
    return model, report


def prompt_anchors(
    bank: ConceptBank, contexts: Sequence[np.ndarray], hidden: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every prompt concept of every stream matched in the bank (`find_anchors`, stream i's `hidden[i]`
    treated as absent), in one search: per stream, (t,) ids, cosines and margins in the prompt's order."""
    sizes = [len(context) for context in contexts]
    if not sum(sizes):
        return [(np.zeros(0, np.int64), np.zeros(0), np.zeros(0)) for _ in contexts]
    vectors = np.concatenate([np.asarray(c, np.float32).reshape(-1, bank.dim) for c in contexts if len(c)])
    owners = [hidden[i] for i, size in enumerate(sizes) for _ in range(size)]
    found = find_anchors(bank, vectors, owners)
    cuts = np.cumsum(sizes)[:-1]
    return list(zip(*(np.split(part, cuts) for part in found), strict=True))


def said_in_prompt(ids: np.ndarray, cos: np.ndarray, level: float) -> np.ndarray:
    """Which of a prompt's matches (`prompt_anchors`) count as the prompt's own, said already: a bank concept
    at `level` (generation.prompt_anchor_cosine) or closer."""
    return (np.asarray(ids) >= 0) & (np.asarray(cos) >= level)


class StreamAnchors:
    """Each stream's anchors: the bank concepts its newest ANCHORS context concepts match, newest first.

    A prompt's concepts come matched (`prompt_anchors`); each generated step then anchors where it was
    shown: a SNAP at its bank concept (cosine 1), other steps at the concept they were rendered as, with
    the rendering's cosine."""

    def __init__(self, found: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        b = len(found)
        self.ids = np.full((b, ANCHORS), -1, np.int64)
        self.cos = np.zeros((b, ANCHORS))
        self.margin = np.zeros((b, ANCHORS))
        for i, (ids, cos, margin) in enumerate(found):
            n = min(ANCHORS, len(ids))
            self.ids[i, :n] = ids[::-1][:n]
            self.cos[i, :n] = cos[::-1][:n]
            self.margin[i, :n] = margin[::-1][:n]

    def walked_past(self, row: int, snapped: int, table: np.ndarray) -> list[int]:
        """The concepts of its document that stream `row` walks past to reach `snapped`, the successor of
        one of its anchors: that anchor and any between (empty when `snapped` continues no anchor). They
        are what the stream's text already said, in its own words or the bank's."""
        for j, anchor in enumerate(self.ids[row].tolist()):
            if anchor < 0 or j >= table.shape[0] or table[j, anchor] != snapped:
                continue
            passed = [anchor]
            while len(passed) <= j:
                passed.append(int(table[0, passed[-1]]))
            return passed
        return []

    def push(self, ids: np.ndarray, cos: np.ndarray) -> None:
        """Each stream's newest concept was shown as bank concept `ids` (-1: none) at cosine `cos`. Its
        margin is not searched for (a step would pay a second search): 0, the weakest evidence."""
        self.ids = np.concatenate([np.asarray(ids, np.int64)[:, None], self.ids[:, :-1]], axis=1)
        self.cos = np.concatenate([np.asarray(cos, np.float64)[:, None], self.cos[:, :-1]], axis=1)
        self.margin = np.concatenate([np.zeros((len(self.ids), 1)), self.margin[:, :-1]], axis=1)


def ground_step(
    model: SnapConfidence,
    table: np.ndarray,
    anchors: StreamAnchors,
    v_hat: np.ndarray,
    queries: np.ndarray,
    batch: ShortlistBatch,
    used: Sequence[np.ndarray] | np.ndarray,
    blocked: Sequence[np.ndarray] | np.ndarray,
    avoided: tuple[np.ndarray, np.ndarray] | None,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    scores_out: dict[str, np.ndarray] | None = None,
) -> tuple[Grounding, np.ndarray]:
    """One generation step's grounding for b streams: their candidates (the shortlist's tower and LVM
    favourites, the anchors' successors), each stream's most probable allowed one, and c_max. A stream alone
    is grounded and decided by `DualPathDecoder.ground` (the same values, by compiled loops).

    `scores_out`, when given, receives the pass over the shortlists it made: "v" (b, d), the unit v̂ it
    scored against, and "lvm" (b, K), every candidate's v̂·n before masking, so that rendering a step
    whose output is that v̂ reads no shortlist a second time.

    Allowed: a real candidate the stream has not shown (`used`), not in `blocked` (its context and hidden
    ids), and no paraphrase of what it said (`avoided`, as `avoid_rows` stacks it). `used` and `blocked` are
    lists of ids a stream, or the (b, m) rows `id_rows` pads them into (a generation makes them once a step,
    `used_rows`, and once, as its context is fixed)."""
    ids = np.asarray(batch.ids)
    b = len(ids)
    q, v = unit_rows(queries, NORM_EPS)[0], unit_rows(v_hat, NORM_EPS)[0]  # normalize_rows', bit for bit
    vectors = np.asarray(batch.vectors, dtype=np.float32)
    # Two mat-vecs per stream, not one product against (b, d, 2): BLAS copies a matrix product's operand
    # into panels first, and that copy of every shortlist made the 256-stream decide stage a third slower.
    with np.errstate(all="ignore"):  # padding rows may hold anything: they are masked
        tower_raw, lvm_raw = shortlist_scores(vectors, (q, v))
    if scores_out is not None:
        scores_out.update(v=v, lvm=lvm_raw)
    failed = np.array([reason is not None for reason in batch.fallbacks], np.bool_)
    return ground_batch(
        ids, vectors, tower_raw, lvm_raw, id_rows(used, b, "used ids"), id_rows(blocked, b, "blocked ids"),
        failed, table, anchors.ids, anchors.cos, anchors.margin, vectors_of, q, v, model, avoided,
    )


MODES = ("added", "restated", "unknown")  # the cases calibration fits the confidence on (module docstring)
BLEND_GAIN = 0.002  # mean teacher-forced cosine a fitted BLEND band must add to be kept
UNKNOWN_TOUCH = 0.02  # the most steps of the unknown case a fitted level may SNAP or BLEND
UNKNOWN_SLACK = 0.002  # the most teacher-forced cosine grounding may cost the unknown case, against LVM-only
UNKNOWN_WEIGHTS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)  # the unknown case's prior, tried in turn
EVEN_ODDS = 0.5  # p at which a candidate is as likely right as wrong: grounding there must be safe


def unknown_cost(unknown: dict[str, np.ndarray], tau_snap: float, tau_novel: float) -> tuple[float, float]:
    """What thresholds on p cost the unknown case (`grounded_outputs` of its pairs): the teacher-forced
    cosine lost against LVM-only, and the share of its steps that SNAP or BLEND."""
    lost = float(unknown["a"].mean() - lane_cosines(unknown, tau_snap, tau_novel).mean())
    return lost, float(np.mean(unknown["p"] > tau_novel))


def lane_cosines(parts: dict[str, np.ndarray], tau_snap: float, tau_novel: float) -> np.ndarray:
    """Teacher-forced cos(output, truth) per pair for thresholds on p, the continuous blend between."""
    p, a, g, c = parts["p"], parts["a"], parts["g"], parts["c"]
    alpha = np.where(p >= tau_snap, 1.0, np.where(p <= tau_novel, 0.0, (p - tau_novel) / (tau_snap - tau_novel)))
    norm = np.sqrt(np.maximum((1 - alpha) ** 2 + alpha**2 + 2 * alpha * (1 - alpha) * c, 1e-12))
    return ((1 - alpha) * a + alpha * g) / norm


def risk_thresholds(
    risk: Risk, parts: dict[str, dict[str, np.ndarray]], slack: float, grid: int = 81
) -> tuple[float, float, float]:
    """(τ_snap, τ_novel, mean cos) on p for a lane's `risk`, from teacher-forced calibration pairs.

    A fixed level is taken as it is. "helps" is fitted: the levels that give the highest mean cosine to
    the truth over the cases (each case weighs the same), among those that keep the unknown case within
    `slack` of LVM-only and leave at least 1 - UNKNOWN_TOUCH of its steps NOVEL: where the bank does not
    know, the stream stays the LVM's own (the free-running stream a blend would nudge away). A fitted
    BLEND band is kept only where it adds at least BLEND_GAIN to the mean over SNAP-or-NOVEL at the same
    SNAP level: a blend moves every later step of a free-running stream, for little teacher-forced gain."""
    p_all = np.concatenate([x["p"] for x in parts.values()])
    levels = np.unique(np.concatenate([np.quantile(p_all, np.linspace(0, 1, grid)), [0.0, EVEN_ODDS, 1.0]]))
    snaps = levels if risk.snap == HELPS else np.array([float(risk.snap)])
    best: tuple[float, float, float] | None = None
    for tau_snap in snaps:
        tau_snap = float(max(tau_snap, 1e-6))
        if risk.blend == NONE:
            novels = np.array([np.nextafter(tau_snap, -np.inf)])
        elif risk.blend == HELPS:
            novels = np.concatenate([[np.nextafter(tau_snap, -np.inf)], levels[levels < tau_snap]])
        else:
            novels = np.array([min(float(risk.blend), float(np.nextafter(tau_snap, -np.inf)))])
        for tau_novel in novels:
            scores = {name: float(lane_cosines(x, tau_snap, float(tau_novel)).mean()) for name, x in parts.items()}
            unknown = parts.get("unknown")
            # Only fitted levels answer to the unknown case: a stated SNAP level without a band is the user's.
            fitted = risk.snap == HELPS or (risk.blend == HELPS and tau_novel < np.nextafter(tau_snap, -np.inf))
            if unknown is not None and fitted:
                lost, touched = unknown_cost(unknown, tau_snap, float(tau_novel))
                if lost > slack or touched > UNKNOWN_TOUCH:
                    continue
            mean = float(np.mean(list(scores.values())))
            if tau_novel < np.nextafter(tau_snap, -np.inf):
                mean -= BLEND_GAIN  # a band must pay for itself (docstring)
            if best is None or mean > best[2] + 1e-9:
                best = (tau_snap, float(tau_novel), mean)
    if best is not None and best[1] < np.nextafter(best[0], -np.inf):
        best = (best[0], best[1], best[2] + BLEND_GAIN)
    if best is None:  # nothing keeps the unknown case: ground only when certain
        best = (1.0, float(np.nextafter(1.0, -np.inf)), float("nan"))
    return best
