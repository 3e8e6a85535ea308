"""LVM quality on held-out pairs, beside the copy-last and mean-of-context baselines.

The metrics (after Meta's Large Concept Model evaluations), for any way of turning a context into a
next vector:

    cos           mean cos(prediction, true next concept)
    contrastive   share of pairs whose prediction is closer to its own target than to every other
                  target of its batch; batches are fixed (a seeded shuffle cut into CONTRASTIVE_BATCH)
    hit@K         the true next concept is among the top K bank results when the prediction is the
                  query, the context's own concepts removed (evaluation.ranking.target_ranks)
    context_cos   mean over pairs of the highest cos(prediction, a context concept): 1.0 for copy-last;
                  the true next concept's own value (the "oracle" row) is what a non-copying
                  predictor should sit near
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dualpath.bank.layout import lvm_dir
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import ContextPairs, gather_context, split_from_config
from dualpath.evaluation.ranking import SearchFn, recall_at, target_ranks
from dualpath.models.heuristics import last_vector, mean_vector
from dualpath.models.lvm import LatentVectorModel
from dualpath.runtime import resolve_device

if TYPE_CHECKING:
    from dualpath.bank import ConceptBank

log = logging.getLogger(__name__)

CONTRASTIVE_BATCH = 256
HIT_KS = (1, 10, 100)
COLUMNS = ("cos", "contrastive", *(f"hit@{k}" for k in HIT_KS), "context_cos")

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ctx (n, C, d), mask (n, C)) → (n, d)


def mean_cosine(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean row-wise cosine of unit-norm rows."""
    if not len(pred):
        return float("nan")
    return float(np.einsum("nd,nd->n", pred, target, dtype=np.float64).mean())


def contrastive_accuracy(
    pred: np.ndarray,
    target: np.ndarray,
    batch_size: int = CONTRASTIVE_BATCH,
    seed: int = 0,
    pairs: ContextPairs | None = None,
) -> tuple[float, int]:
    """Share of predictions closer to their own target than to any other target of their batch.

    Pairs are shuffled with `seed` and cut into batches of `batch_size` (a smaller remainder is
    dropped, so every pair competes against the same number of negatives; fewer pairs than one
    batch make one smaller batch). With `pairs` (the ids behind the rows), a target that is one of
    pair i's own context concepts is not a negative for pair i: that is copying, which
    `context_cos` measures, and the same rule as Hit@K's context exclusion. Returns (accuracy,
    the batch size actually used).
    """
    n = len(pred)
    if n < 2:
        return float("nan"), n
    size = min(batch_size, n)
    order = np.random.default_rng(seed).permutation(n)
    correct = 0
    counted = 0
    for start in range(0, n - size + 1, size):
        index = order[start : start + size]
        scores = pred[index] @ target[index].T
        own = np.diagonal(scores).copy()
        np.fill_diagonal(scores, -np.inf)
        if pairs is not None:
            in_context = (pairs.context[index][:, :, None] == pairs.target[index][None, None, :]).any(axis=1)
            scores[in_context] = -np.inf
        correct += int((own > scores.max(axis=1)).sum())
        counted += size
    return correct / counted, size


def max_context_cosine(pred: np.ndarray, ctx: np.ndarray, mask: np.ndarray) -> float:
    """Mean over pairs of max cos(prediction, real context concept): how much a predictor copies."""
    if not len(pred):
        return float("nan")
    scores = np.einsum("nd,ncd->nc", pred, ctx)
    scores = np.where(mask, scores, -np.inf)
    return float(scores.max(axis=1).mean())


def hit_rates(search: SearchFn, pred: np.ndarray, pairs: ContextPairs, ks: Sequence[int] = HIT_KS) -> dict[str, float]:
    """Hit@K of the true next concept with `pred` as the bank query, context concepts removed."""
    ranks = target_ranks(search, pred, pairs.target, pairs.context_sets(), depth=max(ks))
    return {f"hit@{k}": v for k, v in zip(ks, recall_at(ranks, ks).values(), strict=True)}


@dataclass
class LVMEvaluation:
    """One row per query method (lvm, copy-last, mean-of-context, oracle), columns as `COLUMNS`."""

    pairs: int
    contrastive_batch: int
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    model: dict[str, object] = field(default_factory=dict)  # what was evaluated: arch, epoch, path

    def to_dict(self) -> dict:
        return asdict(self)

    def beats_baselines(self, name: str = "lvm") -> dict[str, bool]:
        """Per column, whether `name` beats both baselines (context_cos: lower is better)."""
        row = self.rows[name]
        out = {}
        for column in COLUMNS:
            others = [self.rows[b][column] for b in ("copy-last", "mean-of-context")]
            out[column] = (
                all(row[column] < o for o in others)
                if column == "context_cos"
                else all(row[column] > o for o in others)
            )
        return out


def score_predictions(
    pred: np.ndarray,
    target: np.ndarray,
    ctx: np.ndarray,
    mask: np.ndarray,
    pairs: ContextPairs,
    search: SearchFn | None,
    contrastive_batch: int = CONTRASTIVE_BATCH,
) -> dict[str, float]:
    """All the columns for one method's predictions (hit@K only with a search function)."""
    row = {
        "cos": mean_cosine(pred, target),
        "contrastive": contrastive_accuracy(pred, target, contrastive_batch, pairs=pairs)[0],
    }
    if search is not None:
        row.update(hit_rates(search, pred, pairs))
    row["context_cos"] = max_context_cosine(pred, ctx, mask)
    return row


def evaluate_lvm(
    predict: Predictor | None,
    vectors: np.ndarray,
    pairs: ContextPairs,
    search: SearchFn | None,
    contrastive_batch: int = CONTRASTIVE_BATCH,
) -> LVMEvaluation:
    """The LVM table on `pairs` (held-out): the model (if given), copy-last, mean-of-context, oracle.

    `vectors` is the bank matrix the pair ids index; `search` the bank's search (None skips Hit@K).
    """
    ctx, mask = gather_context(vectors, pairs.context)
    target = np.asarray(vectors[pairs.target], dtype=np.float32)
    methods: dict[str, np.ndarray] = {}
    if predict is not None:
        methods["lvm"] = predict(ctx, mask)
    methods["copy-last"] = last_vector(ctx, mask)
    methods["mean-of-context"] = mean_vector(ctx, mask)
    methods["oracle"] = target
    batch = min(contrastive_batch, len(pairs))
    report = LVMEvaluation(pairs=len(pairs), contrastive_batch=batch)
    for name, pred in methods.items():
        report.rows[name] = score_predictions(pred, target, ctx, mask, pairs, search, contrastive_batch)
    return report


def evaluate_bank(bank: ConceptBank, cfg: DualPathConfig, model_path: str | Path | None = None) -> LVMEvaluation:
    """The LVM table on a bank's held-out documents.

    `model_path` defaults to `bank/models/lvm`; without a trained model there, only the baseline
    rows are computed. The held-out documents and context width are those the model was trained
    with (saved in its checkpoint), so they are unseen by it whatever `cfg.split` says now.
    """
    default = lvm_dir(bank.path)
    model = None
    if model_path is not None or default.is_dir():
        model = LatentVectorModel.load(model_path or default, bank.dim, bank.encoder_name, resolve_device(cfg.device))
    split_cfg = model.training_split(cfg.split) if model is not None else cfg.split
    split = split_from_config(bank.documents(), split_cfg)
    log.info("evaluating on %d held-out pairs (context %d)", len(split.heldout), split_cfg.context)
    report = evaluate_lvm(model.predict if model else None, bank.all_vectors(), split.heldout, bank.search)
    if model is not None:
        report.model = {
            "path": str(model_path or default),
            "arch": model.arch,
            "epoch": model.config.get("epoch"),
            "context": model.context,
        }
    return report
