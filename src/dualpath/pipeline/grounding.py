"""Grounding on evidence, as the pipeline runs it: anchors in a bank, candidates of teacher-forced pairs,
and the SNAP confidence fitted and scored on held-out documents.

The three cases a user meets (docs/protocol.md):
  known    the prompt comes from a document in the bank that the models trained on
  added    the document is in the bank but the models never saw it (held-out documents; `bank add`)
  unknown  the bank does not hold the document: its concepts are hidden from every search
Calibration also fits on a fourth, *restated*: the document is in the bank, the context's own wording is
not (its concepts are hidden from the anchor search), as when a prompt says in its own words what a
bank document says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.corpus.pairs import ContextPairs
from dualpath.decider import ShortlistBatch, id_member, id_rows, nearest_unsaid
from dualpath.decider.grounding import (
    ANCHORS,
    Candidates,
    Grounding,
    SnapConfidence,
    brier_score,
    choose_grounding,
    gather_candidates,
    reliability,
    successor_ids,
    successor_table,
)
from dualpath.decider.lanes import HELPS, NONE, Risk
from dualpath.models.heuristics import normalize_rows
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.search import search_excluding

if TYPE_CHECKING:
    from dualpath.pipeline.evaluate import TeacherForced

log = logging.getLogger(__name__)

CASES = ("known", "added", "unknown")
EXACT_TRUTH = 0.999  # a candidate this close to the true next concept is it (the same sentence twice)


def bank_successors(bank: ConceptBank) -> np.ndarray:
    """The bank's successor table (decider.grounding.successor_table) over its documents."""
    return successor_table(bank.documents(), len(bank))


def find_anchors(
    bank: ConceptBank, vectors: np.ndarray, hidden: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's nearest bank concept and its cosine, `hidden[i]` treated as absent: (n,) ids (-1:
    none), (n,) cosines. A concept of the bank finds itself at cosine 1."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    exclude = list(hidden) if hidden is not None else [np.zeros(0, np.int64)] * n
    ids, scores = search_excluding(bank.search, normalize_rows(vectors), 1, exclude)
    return ids[:, 0], np.where(ids[:, 0] >= 0, scores[:, 0], 0.0).astype(np.float64)


def teacher_forced_candidates(
    bank: ConceptBank, rows: TeacherForced, table: np.ndarray, restated: bool = False
) -> Candidates:
    """The grounding candidates of every teacher-forced pair (decider.grounding.gather_candidates).

    The anchors are the context's newest concepts matched in the bank (themselves, unless the pair's
    document is hidden); their successors may not be in the context or hidden. `restated`: the context's
    own concepts are hidden from the anchor search, as when a prompt says in its own words what a bank
    document says (the document's continuation is in the bank, its wording is not)."""
    pairs = rows.pairs
    n = len(pairs)
    hidden = rows.hidden
    if restated:
        context = pairs.context_sets()
        hidden = context if hidden is None else [np.union1d(c, h) for c, h in zip(context, hidden, strict=True)]
    anchor_ids = np.full((n, ANCHORS), -1, np.int64)
    anchor_cos = np.zeros((n, ANCHORS))
    for j in range(ANCHORS):
        if pairs.width <= j:
            break
        own = pairs.context[:, -1 - j]
        real = np.flatnonzero(own >= 0)
        assert rows.contexts is not None
        ids, cos = find_anchors(
            bank, rows.contexts[real, -1 - j], None if hidden is None else [hidden[i] for i in real]
        )
        anchor_ids[real, j] = ids
        anchor_cos[real, j] = cos
    succ = successor_ids(table, anchor_ids)
    blocked = [pairs.context[i] if hidden is None else np.union1d(pairs.context[i], hidden[i]) for i in range(n)]
    allowed = succ >= 0
    refused = id_rows(blocked, n, "blocked ids")
    if refused.shape[1]:
        allowed &= ~id_member(succ, refused)
    assert rows.queries is not None and rows.query_scores is not None
    return gather_candidates(
        rows.shortlist_ids, rows.query_scores, rows.similarity, succ, anchor_cos, allowed, bank.vectors,
        rows.queries, normalize_rows(rows.v_hat),
    )


def truth_labels(bank: ConceptBank, candidates: Candidates, targets: np.ndarray) -> np.ndarray:
    """(n, m) bool: the candidate is the true next concept (its id, or the same sentence under another id)."""
    exact = candidates.ids == np.asarray(targets)[:, None]
    close = np.einsum("nmd,nd->nm", candidates.vectors, bank.vectors(targets)) >= EXACT_TRUTH
    return (exact | close) & (candidates.ids >= 0)


def fit_confidence(
    candidate_sets: Sequence[Candidates], label_sets: Sequence[np.ndarray]
) -> tuple[SnapConfidence, dict[str, Any]]:
    """The SNAP confidence fitted on every valid candidate of the given pairs, with its fit report
    (Brier score and reliability curve on the same candidates)."""
    x = np.concatenate([c.features[c.ids >= 0] for c in candidate_sets])
    y = np.concatenate([lab[c.ids >= 0] for c, lab in zip(candidate_sets, label_sets, strict=True)])
    model = SnapConfidence.fit(x, y)
    p = model.predict(x)
    report = {"candidates": len(y), "positives": int(y.sum()), "brier": brier_score(p, y),
              "brier_base_rate": brier_score(np.full(len(y), y.mean()), y), "reliability": reliability(p, y)}
    log.info("SNAP confidence fitted on %d candidates (%d true): Brier %.4f (base rate %.4f)",
             report["candidates"], report["positives"], report["brier"], report["brier_base_rate"])
    return model, report


class StreamAnchors:
    """Each stream's anchors: the bank concepts its newest ANCHORS context concepts match, newest first.

    A prompt's concepts are matched by one search (its `hidden` ids treated as absent); each generated
    step then anchors where it was shown: a SNAP at its bank concept (cosine 1), other steps at the
    concept they were rendered as, with the rendering's cosine."""

    def __init__(self, bank: ConceptBank, contexts: Sequence[np.ndarray], hidden: Sequence[np.ndarray]) -> None:
        b = len(contexts)
        self.ids = np.full((b, ANCHORS), -1, np.int64)
        self.cos = np.zeros((b, ANCHORS))
        where = [(i, j) for i, context in enumerate(contexts) for j in range(min(ANCHORS, len(context)))]
        if where:
            vectors = np.stack([contexts[i][-1 - j] for i, j in where])
            ids, cos = find_anchors(bank, vectors, [hidden[i] for i, _ in where])
            rows, cols = (np.array(x) for x in zip(*where, strict=True))
            self.ids[rows, cols] = ids
            self.cos[rows, cols] = cos

    def push(self, ids: np.ndarray, cos: np.ndarray) -> None:
        """Each stream's newest concept was shown as bank concept `ids` (-1: none) at cosine `cos`."""
        self.ids = np.concatenate([np.asarray(ids, np.int64)[:, None], self.ids[:, :-1]], axis=1)
        self.cos = np.concatenate([np.asarray(cos, np.float64)[:, None], self.cos[:, :-1]], axis=1)


def ground_step(
    model: SnapConfidence,
    table: np.ndarray,
    anchors: StreamAnchors,
    v_hat: np.ndarray,
    queries: np.ndarray,
    batch: ShortlistBatch,
    used: Sequence[np.ndarray],
    blocked: Sequence[np.ndarray],
    avoided: tuple[np.ndarray, np.ndarray] | None,
    vectors_of: Callable[[np.ndarray], np.ndarray],
) -> tuple[Grounding, np.ndarray]:
    """One generation step's grounding for b streams: their candidates (the shortlist's tower and LVM
    favourites, the anchors' successors), each stream's most probable allowed one, and c_max.

    Allowed: a real candidate the stream has not shown (`used`), not in `blocked` (its context and hidden
    ids), and no paraphrase of what it said (`avoided`, as `avoid_rows` stacks it)."""
    q = normalize_rows(queries)
    v = normalize_rows(v_hat)
    ids = batch.ids
    b = len(ids)
    allowed = ids >= 0
    for i, reason in enumerate(batch.fallbacks):
        if reason is not None:
            allowed[i] = False
    used_rows = id_rows(list(used), b, "used ids")
    if used_rows.shape[1] and ids.shape[1]:
        allowed &= ~id_member(ids, used_rows)
    vectors = np.asarray(batch.vectors, dtype=np.float32)
    with np.errstate(all="ignore"):  # padding rows may hold anything: they are masked
        tower = np.where(allowed, np.matmul(vectors, q[:, :, None])[:, :, 0], -np.inf)
        lvm = np.where(allowed, np.matmul(vectors, v[:, :, None])[:, :, 0], -np.inf)
    c_max = lvm.max(axis=1, initial=-np.inf).astype(np.float64)
    succ = successor_ids(table, anchors.ids)
    refused = id_rows([np.concatenate([np.asarray(x, np.int64), np.asarray(u, np.int64)])
                       for x, u in zip(blocked, used, strict=True)], b, "blocked ids")
    succ_allowed = succ >= 0
    if refused.shape[1]:
        succ_allowed &= ~id_member(succ, refused)
    candidates = gather_candidates(ids, tower, lvm, succ, anchors.cos, succ_allowed, vectors_of, q, v)
    grounding = choose_grounding(candidates, model, pick=lambda s, vv: nearest_unsaid(s, vv, avoided)[0])
    return grounding, c_max


MODES = ("added", "restated", "unknown")  # the cases calibration fits the confidence on (module docstring)
BLEND_GAIN = 0.002  # mean teacher-forced cosine a fitted BLEND band must add to be kept
UNKNOWN_TOUCH = 0.02  # the most steps of the unknown case a fitted level may SNAP or BLEND


@dataclass
class ModeRows:
    """One case of teacher-forced pairs with its candidates and labels."""

    rows: TeacherForced
    candidates: Candidates
    labels: np.ndarray


def case_rows(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    pairs: ContextPairs,
    depth: int,
    table: np.ndarray,
    mode: str,
    doc_order: Sequence[str] | None = None,
) -> ModeRows:
    """Teacher-forced rows, candidates and labels of `pairs` in one case: "known" / "added" (the document
    in the bank), "restated" (in the bank, its wording not: the context is hidden from the anchor search)
    or "unknown" (the document hidden from every search; `doc_order` names each pair's document)."""
    from dualpath.pipeline.evaluate import teacher_forced

    hidden = None
    if mode == "unknown":
        if doc_order is None:
            raise ValueError("the unknown case needs the pairs' document ids")
        documents = bank.documents()
        hidden = [documents[doc_order[d]] for d in pairs.doc]
    rows = teacher_forced(bank, lvm, tower, pairs, depth, hidden)
    candidates = teacher_forced_candidates(bank, rows, table, restated=mode == "restated")
    return ModeRows(rows, candidates, truth_labels(bank, candidates, pairs.target))


def grounded_outputs(cases: ModeRows, model: SnapConfidence) -> dict[str, np.ndarray]:
    """Closed-form ingredients of a confidence lane's teacher-forced output per pair: p, a = cos(v̂, t),
    g = cos(n, t), c = cos(v̂, n) for the chosen candidate n, and whether n is the truth."""
    grounding = choose_grounding(cases.candidates, model)
    v = normalize_rows(cases.rows.v_hat)
    t = cases.rows.targets
    found = grounding.ids >= 0
    return {
        "p": np.where(found, grounding.confidence, 0.0),
        "a": np.einsum("nd,nd->n", v, t).astype(np.float64),
        "g": np.where(found, np.einsum("nd,nd->n", grounding.vectors, t), 0.0).astype(np.float64),
        "c": np.where(found, np.einsum("nd,nd->n", grounding.vectors, v), 1.0).astype(np.float64),
        "exact": found & (grounding.ids == cases.rows.pairs.target),
        "ids": grounding.ids,
    }


def lane_cosines(parts: dict[str, np.ndarray], tau_snap: float, tau_novel: float) -> np.ndarray:
    """Teacher-forced cos(output, truth) per pair for thresholds on p, the continuous blend between."""
    p, a, g, c = parts["p"], parts["a"], parts["g"], parts["c"]
    alpha = np.where(p >= tau_snap, 1.0, np.where(p <= tau_novel, 0.0, (p - tau_novel) / (tau_snap - tau_novel)))
    norm = np.sqrt(np.maximum((1 - alpha) ** 2 + alpha**2 + 2 * alpha * (1 - alpha) * c, 1e-12))
    return ((1 - alpha) * a + alpha * g) / norm


def risk_thresholds(
    risk: Risk, parts: dict[str, dict[str, np.ndarray]], slack: float, grid: int = 41
) -> tuple[float, float, float]:
    """(τ_snap, τ_novel, mean cos) on p for a lane's `risk`, from teacher-forced calibration pairs.

    A fixed level is taken as it is. "helps" is fitted: the levels that give the highest mean cosine to
    the truth over the cases (each case weighs the same), among those that keep the unknown case within
    `slack` of LVM-only and leave at least 1 - UNKNOWN_TOUCH of its steps NOVEL: where the bank does not
    know, the stream stays the LVM's own (the free-running stream a blend would nudge away). A fitted
    BLEND band is kept only where it adds at least BLEND_GAIN to the mean over SNAP-or-NOVEL at the same
    SNAP level: a blend moves every later step of a free-running stream, for little teacher-forced gain."""
    p_all = np.concatenate([x["p"] for x in parts.values()])
    levels = np.unique(np.concatenate([np.quantile(p_all, np.linspace(0, 1, grid)), [0.0, 1.0]]))
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
            if unknown is not None and fitted and (
                scores["unknown"] < float(unknown["a"].mean()) - slack
                or float(np.mean(unknown["p"] > tau_novel)) > UNKNOWN_TOUCH
            ):
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
