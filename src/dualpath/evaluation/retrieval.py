"""The retrieval protocol table: a query tower beside the heuristic queries, on held-out documents.

The protocol (docs/protocol.md): pairs of held-out documents only, the whole bank as the search space, the
pair's own context removed from its result list, Recall@{1,10,100,500,1000} and MRR of the true
next concept. Rows: the tower (when given), the last / mean / exponentially weighted context
vector, and the oracle (the true target vector itself: the ceiling, below 1.0 only where the bank
holds exact duplicates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import ContextPairs, gather_context, split_from_config
from dualpath.evaluation.ranking import SearchFn, retrieval_metrics, target_ranks
from dualpath.models.heuristics import HEURISTICS, normalize_rows

KS = (1, 10, 100, 500, 1000)
HEADLINE = ("R@10", "MRR")  # the two numbers the retriever's target is stated in


class Queries(Protocol):
    def encode_queries(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EvalPairs:
    """Held-out pairs with their context vectors gathered once (reused every epoch)."""

    ctx: np.ndarray  # (n, C, d) float32, zeros at padding
    mask: np.ndarray  # (n, C) bool
    targets: np.ndarray  # (n,) concept ids
    target_vectors: np.ndarray  # (n, d)
    exclude: list[np.ndarray]  # per pair, the context ids removed from its results

    @classmethod
    def from_pairs(cls, vectors: np.ndarray, pairs: ContextPairs) -> EvalPairs:
        ctx, mask = gather_context(vectors, pairs.context)
        target_vectors = np.asarray(vectors[pairs.target], dtype=np.float32)
        return cls(ctx, mask, pairs.target, target_vectors, pairs.context_sets())

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def evaluate_queries(
    search: SearchFn, queries: np.ndarray, pairs: EvalPairs, ks: Sequence[int] = KS
) -> dict[str, float]:
    ranks = target_ranks(search, queries, pairs.targets, pairs.exclude, depth=max(ks))
    return retrieval_metrics(ranks, ks)


def baseline_table(search: SearchFn, pairs: EvalPairs, ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """The heuristic rows (last, mean, ewm) and the oracle row."""
    table = {name: evaluate_queries(search, fn(pairs.ctx, pairs.mask), pairs, ks) for name, fn in HEURISTICS.items()}
    table["oracle"] = evaluate_queries(search, normalize_rows(pairs.target_vectors), pairs, ks)
    return table


def retrieval_table(
    search: SearchFn, pairs: EvalPairs, tower: Queries | None = None, ks: Sequence[int] = KS
) -> dict[str, dict[str, float]]:
    """The full protocol table; the tower's row first."""
    table: dict[str, dict[str, float]] = {}
    if tower is not None:
        table["tower"] = evaluate_queries(search, tower.encode_queries(pairs.ctx, pairs.mask), pairs, ks)
    table.update(baseline_table(search, pairs, ks))
    return table


def best_heuristic(table: Mapping[str, Mapping[str, float]], metric: str) -> tuple[str, float]:
    """The heuristic row (not tower, not oracle) with the highest `metric`."""
    name = max(HEURISTICS, key=lambda h: table[h][metric])
    return name, float(table[name][metric])


def relative_gain(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = HEADLINE) -> dict[str, float]:
    """Tower over the best heuristic, per metric: 0.15 means +15 % relative."""
    gains = {}
    for metric in metrics:
        _, base = best_heuristic(table, metric)
        gains[metric] = table["tower"][metric] / base - 1.0 if base > 0 else float("inf")
    return gains


def heldout_eval_pairs(vectors: np.ndarray, documents: Mapping[str, np.ndarray], cfg: DualPathConfig) -> EvalPairs:
    """The held-out pairs of a bank under `cfg.split` (the same split every trainer uses)."""
    split = split_from_config(documents, cfg.split)
    return EvalPairs.from_pairs(vectors, split.heldout)
