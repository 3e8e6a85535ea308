"""Dual-path behaviour on held-out documents: the decision mix per lane and the quality it buys.

Teacher-forced: each held-out pair's true context → v̂ (LVM), q (tower, else v̂), a shortlist from
the bank with the context removed, one decision per lane. Reported against two extreme lanes run
through the very same code: LVM-only (never snaps) and bank-only (always snaps to n*).

Free-running (`pipeline.free_running`): from the first concepts of held-out documents, generate
steps feeding each back, and measure what a reader sees beside the baselines of the same run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig, SplitConfig
from dualpath.corpus.pairs import MIN_HELDOUT_PAIRS, ContextPairs, gather_context, heldout_half, split_from_config
from dualpath.decider import (
    Decision,
    Grounding,
    Lane,
    ShortlistBatch,
    SnapConfidence,
    choose_grounded,
    choose_next_vectors,
    extreme_lanes,
    get_schedule,
    id_member,
    id_rows,
)
from dualpath.decider.decision import FALLBACK_EMPTY, NO_ID
from dualpath.decider.grounding import (
    ANCHORS,
    Candidates,
    brier_score,
    choose_grounding,
    gather_candidates,
    reliability,
    successor_ids,
)
from dualpath.errors import CorpusError
from dualpath.evaluation.ranking import target_ranks
from dualpath.models.heuristics import normalize_rows
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.pipeline.calibrated_lanes import read_confidence
from dualpath.pipeline.free_running import evaluate_free_running, interval, paired_difference, random_twin
from dualpath.pipeline.grounding import CASES, bank_successors, find_anchors, restated_vectors, truth_labels
from dualpath.search import search_excluding

if TYPE_CHECKING:
    from dualpath.pipeline.generator import Generator

log = logging.getLogger(__name__)

DECISIONS = [d.value for d in Decision]
HIT_K = 5
RESTATED_PAIRS = 1000  # restated pairs per case: their context sentences are restated and encoded (~200/s)
_CHUNK = 128  # rows per decision chunk: (rows, K, d) float32 shortlist vectors stay ~100 MB at K=500


@dataclass
class TeacherForced:
    """One row per held-out pair: v̂, the query, the shortlist (context removed) and the true target."""

    pairs: ContextPairs
    v_hat: np.ndarray  # (n, d)
    targets: np.ndarray  # (n, d) true next vectors
    shortlist_ids: np.ndarray  # (n, depth) int64, -1 padded, ranked by the query
    similarity: np.ndarray  # (n, depth) float32 cos(v̂, shortlist), -inf at padding
    query_source: str

    bank_vectors: Callable[[np.ndarray], np.ndarray]  # ids → (n, d) float32: the bank's `vectors`
    queries: np.ndarray | None = None  # (n, d) the retrieval queries, unit
    query_scores: np.ndarray | None = None  # (n, depth) float32 q·n of the shortlist (bank vectors), -inf at padding
    hidden: list[np.ndarray] | None = None  # per pair, ids kept out of the bank (the *unknown* case)
    contexts: np.ndarray | None = None  # (n, C, d) the context vectors the models read

    def c_max(self, k: int) -> np.ndarray:
        """Best cosine of v̂ to its top-k shortlist, per pair (-inf where the shortlist is empty)."""
        return self.similarity[:, :k].max(axis=1)


def heldout_pairs(
    bank: ConceptBank, split_cfg: SplitConfig, max_pairs: int | None, half: str | None = None
) -> ContextPairs:
    """Held-out pairs (of one `half`: "calibration", "evaluation"; None: all), at most `max_pairs`."""
    split = split_from_config(bank.documents(), split_cfg)
    pairs = heldout_half(split, half, split_cfg.seed)
    return sample_pairs(pairs, max_pairs, split_cfg.seed)


def calibration_pairs(bank: ConceptBank, split_cfg: SplitConfig, max_pairs: int | None) -> tuple[ContextPairs, str]:
    """The pairs calibration fits on, and which held-out documents they come from: the calibration half, or,
    where that half holds fewer than MIN_HELDOUT_PAIRS pairs (a small corpus), every held-out document (then
    the evaluation's figures on this bank are scored on pairs calibration also saw, and calibration.json
    says so). A CorpusError, in one line, where even that is too few."""
    if max_pairs is not None and max_pairs < MIN_HELDOUT_PAIRS:
        raise CorpusError(f"max_pairs must be at least {MIN_HELDOUT_PAIRS} to calibrate on, got {max_pairs}")
    pairs = heldout_pairs(bank, split_cfg, max_pairs, half="calibration")
    if len(pairs) >= MIN_HELDOUT_PAIRS:
        return pairs, "calibration half of the held-out documents"
    pairs = heldout_pairs(bank, split_cfg, max_pairs)
    if len(pairs) < MIN_HELDOUT_PAIRS:
        raise CorpusError(
            f"only {len(pairs)} held-out pairs: calibration needs {MIN_HELDOUT_PAIRS}; add documents, or set "
            "split.heldout_fraction higher in --config and retrain both models"
        )
    log.warning(
        "the calibration half of the held-out documents holds too few pairs: calibrating on all %d held-out pairs, "
        "so evaluation on this bank scores pairs calibration saw too", len(pairs),
    )
    return pairs, "every held-out document (a small corpus)"


def sample_pairs(pairs: ContextPairs, max_pairs: int | None, seed: int) -> ContextPairs:
    if max_pairs is not None and len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = pairs.subset(np.sort(rng.choice(len(pairs), max_pairs, replace=False)))
    return pairs


def teacher_forced(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    pairs: ContextPairs,
    depth: int,
    hidden: Sequence[np.ndarray] | None = None,
    said_as: tuple[np.ndarray, np.ndarray] | None = None,
) -> TeacherForced:
    """Predict, query and search for every pair (context removed from each shortlist).

    `hidden[i]`: ids that pair i's searches treat as absent from the bank (its whole document, for
    the *unknown* case: a prompt from text the bank does not hold). `said_as` (ids, vectors): those
    context concepts are read as these vectors instead of their own (the *restated* case: the prompt
    says them in other words)."""
    vectors = bank.all_vectors()
    ctx, mask = gather_context(vectors, pairs.context)
    if said_as is not None and len(said_as[0]):
        order = np.argsort(said_as[0])
        known_ids = np.asarray(said_as[0], np.int64)[order]
        at = np.clip(np.searchsorted(known_ids, pairs.context), 0, len(known_ids) - 1)
        swap = mask & (known_ids[at] == pairs.context)
        ctx[swap] = np.asarray(said_as[1], np.float32)[order][at[swap]]
    v_hat = lvm.predict(ctx, mask)
    queries = tower.encode_queries(ctx, mask) if tower is not None else v_hat
    queries = normalize_rows(np.asarray(queries, dtype=np.float32))
    exclude = pairs.context_sets()
    if hidden is not None:
        exclude = [np.union1d(c, h) for c, h in zip(exclude, hidden, strict=True)]
    ids, _ = search_excluding(bank.search, queries, depth, exclude)
    # Both scores of every shortlist row from the bank's vectors, as a generation step computes them (the
    # index's own scores may be of compressed vectors): the grounding's features read these.
    c = np.full(ids.shape, -np.inf, dtype=np.float32)
    tower_scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(pairs), _CHUNK):
        block = ids[start : start + _CHUNK]
        valid = block >= 0
        cand = bank.vectors(np.where(valid, block, 0))
        sims = np.einsum("bkd,bd->bk", cand, v_hat[start : start + _CHUNK])
        c[start : start + _CHUNK] = np.where(valid, sims, -np.inf)
        sims = np.einsum("bkd,bd->bk", cand, queries[start : start + _CHUNK])
        tower_scores[start : start + _CHUNK] = np.where(valid, sims, -np.inf)
    targets = bank.vectors(pairs.target)
    return TeacherForced(
        pairs, v_hat, targets, ids, c, "tower" if tower is not None else "lvm", bank.vectors,
        queries, tower_scores, None if hidden is None else list(hidden), ctx,
    )


def _shortlists_at(bank: ConceptBank, block: np.ndarray, ks: Sequence[int]) -> dict[int, ShortlistBatch]:
    """For each k of `ks`: the rows' first k shortlist entries as `ShortlistBatch.stack` pads them (each row's
    ids in order, then -1; a row with none is an `empty` fallback), all read from the bank in one call. A
    read and a copy per row, for every lane again, made the stacking most of the c_max lanes' evaluation."""
    valid = block >= 0
    order = np.argsort(~valid, axis=1, kind="stable")  # each row's ids first, in their order
    width = int(valid.sum(axis=1).max(initial=0))
    ids = np.where(np.take_along_axis(valid, order, axis=1), np.take_along_axis(block, order, axis=1), NO_ID)
    ids = ids[:, :width]
    vectors = bank.vectors(np.maximum(ids, 0))
    vectors[ids < 0] = 0.0
    out: dict[int, ShortlistBatch] = {}
    for k in sorted(set(ks)):
        counts = valid[:, :k].sum(axis=1)  # a row's first k entries: its first `count` ids in `ids`
        cut = int(counts.max(initial=0))
        ids_k = np.where(np.arange(cut)[None, :] < counts[:, None], ids[:, :cut], NO_ID)
        vectors_k = vectors[:, :cut]
        if (ids_k != ids[:, :cut]).any():  # entries beyond a row's k: padding, as stacked
            vectors_k = np.where((ids_k >= 0)[:, :, None], vectors_k, np.float32(0.0))
        out[k] = ShortlistBatch(ids_k, vectors_k, tuple(None if c else FALLBACK_EMPTY for c in counts.tolist()))
    return out


Decided = tuple[np.ndarray, list[str], np.ndarray]  # outputs (n, d), decisions, n* ids (-1: none)


def decide_lanes(
    bank: ConceptBank, rows: TeacherForced, runs: Sequence[tuple[Lane, np.ndarray | None]], schedule: str
) -> list[Decided]:
    """`decide_lane` for each (lane, decide_by) of `runs` on the same rows, every chunk of shortlists read
    from the bank once for all of them."""
    if not runs:
        return []
    n, d = rows.v_hat.shape
    ks = [min(lane.k, rows.shortlist_ids.shape[1]) for lane, _ in runs]
    results: list[Decided] = [(np.empty((n, d), np.float32), [], np.full(n, NO_ID, np.int64)) for _ in runs]
    for start in range(0, n, _CHUNK):
        end = min(start + _CHUNK, n)
        batches = _shortlists_at(bank, rows.shortlist_ids[start:end, : max(ks)], ks)
        for (lane, decide_by), k, (outputs, decisions, neighbours) in zip(runs, ks, results, strict=True):
            out, records = choose_next_vectors(
                rows.v_hat[start:end], batches[k], lane, [()] * (end - start), schedule,
                decide_by=None if decide_by is None else decide_by[start:end],
            )
            outputs[start:end] = out
            decisions.extend(r.decision.value for r in records)
            neighbours[start:end] = [NO_ID if r.neighbour_id is None else r.neighbour_id for r in records]
    return results


def decide_lane(
    bank: ConceptBank, rows: TeacherForced, lane: Lane, schedule: str, decide_by: np.ndarray | None = None
) -> Decided:
    """Outputs (n, d), decisions and n* ids (-1: none) for every teacher-forced row in one `rule: c_max`
    lane (no stream memory). `decide_by` (n,): a c per row that the rules read instead (the random mix)."""
    return decide_lanes(bank, rows, [(lane, decide_by)], schedule)[0]


def decide_grounded(
    rows: TeacherForced, grounding: Grounding, lane: Lane, schedule: str, decide_by: np.ndarray | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """`decide_lane` for a `rule: confidence` lane: every row decided on its grounding (no stream memory)."""
    k = min(lane.k, rows.shortlist_ids.shape[1])
    out, records = choose_grounded(rows.v_hat, grounding, lane, None, schedule, c_max=rows.c_max(k),
                                   decide_by=decide_by)
    return out, [r.decision.value for r in records], np.asarray(grounding.ids, dtype=np.int64)


def hit_at(bank: ConceptBank, outputs: np.ndarray, pairs: ContextPairs, k: int = HIT_K) -> float:
    ranks = target_ranks(bank.search, outputs, pairs.target, pairs.context_sets(), k)
    return float(np.mean(ranks <= k)) if len(ranks) else 0.0


def _hit_once(bank: ConceptBank, outputs: np.ndarray, pairs: ContextPairs, hits: dict[bytes, float] | None) -> float:
    if hits is None:
        return hit_at(bank, outputs, pairs)
    key = hashlib.blake2b(np.ascontiguousarray(outputs).tobytes() + f"{outputs.dtype}{outputs.shape}".encode()).digest()
    if key not in hits:
        hits[key] = hit_at(bank, outputs, pairs)
    return hits[key]


def summarize_lane(
    bank: ConceptBank,
    rows: TeacherForced,
    lane: Lane,
    outputs: np.ndarray,
    decisions: Sequence[str],
    neighbours: np.ndarray | None = None,
    hits: dict[bytes, float] | None = None,
) -> dict[str, Any]:
    """Mean cos(output, truth), hit@5, the decision mix and, with the n* ids, how the SNAPs went:
    `exact` (the share of steps that output the true next concept itself) and `false_grounding` (the
    share of SNAPs whose concept is not the truth and is further from it than v̂).

    `hits`: hit@5 by the digest of the outputs searched, for lanes of the same rows: lanes that decide every
    row alike (each NOVEL, as where the bank does not know) output the same array, and its search is made
    once."""
    cos = np.einsum("nd,nd->n", outputs, rows.targets)
    decided = np.asarray(decisions)
    snaps = decided == Decision.SNAP.value
    grounding: dict[str, Any] = {}
    if neighbours is not None:
        truth = neighbours == rows.pairs.target
        v = normalize_rows(rows.v_hat)
        further = np.einsum("nd,nd->n", bank.vectors(np.maximum(neighbours, 0)), rows.targets) < np.einsum(
            "nd,nd->n", v, rows.targets)
        grounding = {
            "exact": float(np.mean(snaps & truth)),
            "false_grounding": float(np.mean((~truth & further)[snaps])) if snaps.any() else 0.0,
        }
    by_decision = {
        d: {"share": float(np.mean(decided == d)), "mean_cos": float(cos[decided == d].mean())}
        if np.any(decided == d)
        else {"share": 0.0, "mean_cos": None}
        for d in DECISIONS
    }
    return {
        "lane": lane.name,
        "tau_snap": lane.tau_snap,
        "tau_novel": lane.tau_novel,
        "k": lane.k,
        "calibrated": lane.calibrated,
        "n": len(decided),
        "mean_cos": float(cos.mean()),
        f"hit@{HIT_K}": _hit_once(bank, outputs, rows.pairs, hits),
        **grounding,
        "by_decision": by_decision,
        "per_pair_cos": cos,  # for paired comparisons; dropped from what is reported
    }


def evaluate_generation(
    bank: ConceptBank,
    lvm: LatentVectorModel,
    tower: QueryTower | None,
    lanes: dict[str, Lane],
    cfg: DualPathConfig,
    max_pairs: int | None = 2000,
    free_docs: int = 0,
    generator: Generator | None = None,
    cases: Sequence[str] = CASES,
) -> dict[str, Any]:
    """Teacher-forced decision mix and output quality per lane in each case a user meets, beside the
    baselines of the same pairs: LVM-only, bank-only, kNN continuation and each lane's random mix.

    Cases (pipeline/grounding.py): *known* (pairs of the documents the models trained on), *added*
    (the evaluation half of the held-out documents, in the bank: never seen by the models, nor by the
    calibration) and *unknown* (the same pairs with their documents hidden from every search). The
    top-level `lanes`, `pairs` and c_max figures are the added case's. With `free_docs` > 0 and a
    `generator`, also the free-running test in each case (`free_running.evaluate_free_running`).
    """
    depth = max(lane.k for lane in lanes.values())
    split_cfg = lvm.training_split(cfg.split)
    split = split_from_config(bank.documents(), split_cfg)
    held = sample_pairs(heldout_half(split, "evaluation", split_cfg.seed), max_pairs, split_cfg.seed)
    if len(held) == 0:
        raise ValueError("no held-out pairs: the bank needs more documents with at least two concepts")
    pair_sets = {"known": sample_pairs(split.train, max_pairs, split_cfg.seed), "added": held, "restated": held,
                 "unknown": held}
    model = generator.confidence if generator is not None else read_confidence(bank.path)
    table = bank_successors(bank)
    measured: dict[str, Any] = {}
    added_rows: TeacherForced | None = None
    for case in cases:
        if not len(pair_sets[case]):
            continue
        mode = case_rows(bank, lvm, tower, pair_sets[case], depth, table, case, split.doc_ids)
        measured[case] = evaluate_case(bank, mode, lanes, model, cfg, split_cfg.seed)
        if case == "added":
            added_rows = mode.rows
    first = added_rows if added_rows is not None else None
    out: dict[str, Any] = {"pairs": len(held), "cases": measured}
    if first is not None:
        c_max = first.c_max(default_k(lanes, cfg))
        c_max = c_max[np.isfinite(c_max)]
        out |= {
            "query_source": first.query_source,
            "c_max_quantiles": {f"{q}%": float(np.quantile(c_max, q / 100)) for q in (5, 25, 50, 75, 95)},
            "c_max_sample": [float(x) for x in c_max[:2000]],
            "lanes": measured["added"]["lanes"],
            # What the best c_max thresholds would give: the ceiling a quota lane can reach on these pairs.
            "quality_optimum": quality_thresholds(first, default_k(lanes, cfg), cfg.decider.schedule),
        }
    if free_docs > 0 and generator is not None:
        free = {case: evaluate_free_running(generator, lanes, docs=free_docs, split=split_cfg, case=case)
                for case in cases}
        out["free_running_cases"] = free
        if "added" in free:
            out["free_running"] = free["added"]
    return out


def evaluate_case(
    bank: ConceptBank, mode: ModeRows, lanes: dict[str, Lane], model: SnapConfidence, cfg: DualPathConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """Every lane, its random mix and the baselines on one case's teacher-forced pairs."""
    rows = mode.rows
    depth = rows.shortlist_ids.shape[1]
    schedule = cfg.decider.schedule
    grounding = choose_grounding(mode.candidates, model)
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}

    every = {**lanes, **extreme_lanes(depth)}
    # Each lane's random mix: its own decisions dealt out at random over the pairs, the same shares chosen by
    # chance (its c or p shuffled; drawn in the lanes' order).
    mixed: dict[str, np.ndarray] = {}
    for name, lane in every.items():
        if name in lanes:
            own = grounding.confidence if lane.rule == "confidence" else rows.c_max(min(lane.k, depth))
            mixed[name] = rng.permutation(np.where(np.isfinite(own), own, -1.0).astype(np.float64))
    runs = [(name, lane, None) for name, lane in every.items()]
    runs += [(f"random-{name}", every[name], by) for name, by in mixed.items()]
    # The c_max lanes' runs share each chunk's read of the shortlists.
    by_c_max = iter(decide_lanes(bank, rows, [(lane, by) for _, lane, by in runs if lane.rule != "confidence"],
                                 schedule))
    decided = {name: decide_grounded(rows, grounding, lane, schedule, by) if lane.rule == "confidence"
               else next(by_c_max) for name, lane, by in runs}

    hits: dict[bytes, float] = {}
    for name, lane in every.items():
        results[name] = summarize_lane(bank, rows, lane, *decided[name], hits=hits)
        if name in lanes:
            results[f"random-{name}"] = summarize_lane(bank, rows, random_twin(lane), *decided[f"random-{name}"],
                                                       hits=hits)
            results[name]["versus_random"] = paired_difference(
                results[name]["per_pair_cos"], results[f"random-{name}"]["per_pair_cos"], seed
            )
    # kNN continuation: the successor of the bank concept the context's newest concept matches, else v̂.
    successor = mode.candidates.ids[:, 2]
    knn = np.where((successor >= 0)[:, None], mode.candidates.vectors[:, 2], normalize_rows(rows.v_hat))
    knn_lane = extreme_lanes(depth)["bank-only"].model_copy(update={"name": "knn"})
    results["knn"] = summarize_lane(
        bank, rows, knn_lane, knn, [Decision.SNAP.value if s >= 0 else Decision.NOVEL.value for s in successor],
        successor, hits,
    )
    found = grounding.ids >= 0
    truth = grounding.ids == rows.pairs.target
    for result in results.values():
        result.pop("per_pair_cos", None)
    return {
        "pairs": len(rows.pairs),
        "lvm_only_cos": results["lvm-only"]["mean_cos"],
        "tower_top1": float(np.mean(rows.shortlist_ids[:, 0] == rows.pairs.target)),
        "candidate_holds_truth": float(np.mean(mode.labels.any(axis=1))),
        "confidence": {
            "brier": brier_score(grounding.confidence[found], truth[found]) if found.any() else None,
            "reliability": reliability(grounding.confidence[found], truth[found]) if found.any() else [],
        },
        "lanes": results,
    }


def default_k(lanes: dict[str, Lane], cfg: DualPathConfig) -> int:
    """K of the default lane: the shortlist depth the c_max distribution is reported at."""
    default = lanes.get(cfg.decider.default_lane)
    return default.k if default is not None else max(lane.k for lane in lanes.values())


def quality_thresholds(
    rows: TeacherForced, k: int, schedule: str = "continuous", grid: int = 41
) -> dict[str, float]:
    """The (τ_snap, τ_novel) that maximise held-out mean cos(output, true next) for this schedule.

    Teacher-forced outputs have a closed form per row from a = v̂·t, b = n*·t and c = v̂·n*:
    NOVEL gives a, SNAP gives b, BLEND gives ((1-α)a + αb) / ‖(1-α)v̂ + αn*‖ with
    ‖·‖² = (1-α)² + α² + 2α(1-α)c. So every pair of thresholds on a quantile grid of c is scored
    exactly without re-running the decider (no stream memory: duplicates play no part here).
    """
    sims = rows.similarity[:, :k]
    best = np.argmax(sims, axis=1)
    c = sims[np.arange(len(sims)), best].astype(np.float64)
    valid = np.isfinite(c)
    c = c[valid]
    neighbours = rows.shortlist_ids[:, :k][np.arange(len(sims)), best][valid]
    targets = rows.targets[valid].astype(np.float64)
    a = np.einsum("nd,nd->n", rows.v_hat[valid].astype(np.float64), targets)
    b = np.einsum("nd,nd->n", rows.bank_vectors(neighbours).astype(np.float64), targets)
    alpha_of = get_schedule(schedule)
    levels = np.unique(np.quantile(c, np.linspace(0, 1, grid)))
    levels = np.concatenate([[-1.0], levels, [1.0]])
    result = {"tau_snap": 1.0, "tau_novel": float(np.nextafter(1.0, 0)), "mean_cos": float(a.mean())}
    for i, tau_novel in enumerate(levels[:-1]):
        for tau_snap in levels[i + 1 :]:
            alpha = alpha_of(c, float(tau_snap), float(tau_novel))
            alpha = np.where(c >= tau_snap, 1.0, np.where(c <= tau_novel, 0.0, alpha))
            norm = np.sqrt((1 - alpha) ** 2 + alpha**2 + 2 * alpha * (1 - alpha) * c)
            score = float((((1 - alpha) * a + alpha * b) / norm).mean())
            if score > result["mean_cos"]:
                result = {"tau_snap": float(tau_snap), "tau_novel": float(tau_novel), "mean_cos": score}
    return result


SUMMARY_COLUMNS = {
    "case": "case", "lane": "lane", "snap": "SNAP", "cos": "cos (teacher-forced)", "x_lvm": "× LVM-only",
    "exact": "exact next", "false_grounding": "false grounding", "vs_random": "− random mix (95 % CI)",
    "free_cos": "cos (free-running text)", "free_vs_lvm": "free − LVM-only (95 % CI)",
    "free_vs_random": "free − random mix (95 % CI)", "in_order": "own next concepts in order",
}
SUMMARY_PERCENT = {"snap", "exact", "false_grounding", "in_order"}


def case_summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per case and lane (and LVM-only, kNN) of `evaluate_generation`'s result: the teacher-forced
    figures beside the free-running ones, for tables in the CLI, the report and the bench."""
    rows = []
    free_cases = result.get("free_running_cases", {})
    for case, measured in result.get("cases", {}).items():
        lvm = measured["lvm_only_cos"]
        free = free_cases.get(case, {}).get("lanes", {})
        for name, lane in measured["lanes"].items():
            if name.startswith("random-") or name == "bank-only":
                continue
            f = free.get(name, {})
            versus = f.get("versus", {})
            rows.append({
                "case": case,
                "lane": name,
                "snap": lane["by_decision"]["SNAP"]["share"],
                "cos": lane["mean_cos"],
                "x_lvm": lane["mean_cos"] / lvm if lvm else None,
                "exact": lane.get("exact"),
                "false_grounding": lane.get("false_grounding"),
                "vs_random": interval(lane.get("versus_random")),
                "free_cos": f.get("cos_true"),
                "free_vs_lvm": interval(versus.get("lvm-only")),
                "free_vs_random": interval(versus.get("random")),
                "in_order": f.get("in_order"),
            })
    return rows


# -- the cases a user meets: candidates of teacher-forced pairs (pipeline/grounding.py) -------------------


def teacher_forced_candidates(bank: ConceptBank, rows: TeacherForced, table: np.ndarray) -> Candidates:
    """The grounding candidates of every teacher-forced pair (decider.grounding.gather_candidates).

    The anchors are the context's newest concepts, as the pairs read them, matched in the bank (a bank
    concept finds itself unless the pair's document is hidden; a restated one finds its original, or not);
    their successors may not be in the context or hidden."""
    pairs = rows.pairs
    n = len(pairs)
    hidden = rows.hidden
    anchor_ids = np.full((n, ANCHORS), -1, np.int64)
    anchor_cos = np.zeros((n, ANCHORS))
    anchor_margin = np.zeros((n, ANCHORS))
    for j in range(ANCHORS):
        if pairs.width <= j:
            break
        own = pairs.context[:, -1 - j]
        real = np.flatnonzero(own >= 0)
        assert rows.contexts is not None
        ids, cos, margin = find_anchors(
            bank, rows.contexts[real, -1 - j], None if hidden is None else [hidden[i] for i in real]
        )
        anchor_ids[real, j] = ids
        anchor_cos[real, j] = cos
        anchor_margin[real, j] = margin
    succ = successor_ids(table, anchor_ids)
    blocked = [pairs.context[i] if hidden is None else np.union1d(pairs.context[i], hidden[i]) for i in range(n)]
    allowed = succ >= 0
    refused = id_rows(blocked, n, "blocked ids")
    if refused.shape[1]:
        allowed &= ~id_member(succ, refused)
    assert rows.queries is not None and rows.query_scores is not None
    return gather_candidates(
        rows.shortlist_ids, rows.query_scores, rows.similarity, succ, anchor_cos, anchor_margin, allowed,
        bank.vectors, rows.queries, normalize_rows(rows.v_hat),
    )


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
    in the bank), "restated" (in the bank, the context said in other words: corpus.restate, at most
    RESTATED_PAIRS pairs, since each restated sentence is encoded) or "unknown" (the document hidden from
    every search; `doc_order` names each pair's document)."""
    hidden = None
    said_as = None
    if mode == "unknown":
        if doc_order is None:
            raise ValueError("the unknown case needs the pairs' document ids")
        documents = bank.documents()
        hidden = [documents[doc_order[d]] for d in pairs.doc]
    if mode == "restated":
        if len(pairs) > RESTATED_PAIRS:
            pairs = pairs.subset(np.sort(np.random.default_rng(len(pairs)).choice(len(pairs), RESTATED_PAIRS,
                                                                                replace=False)))
        context_ids = np.unique(pairs.context[pairs.context >= 0])
        said_as = (context_ids, restated_vectors(bank, context_ids))
    rows = teacher_forced(bank, lvm, tower, pairs, depth, hidden, said_as)
    candidates = teacher_forced_candidates(bank, rows, table)
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
