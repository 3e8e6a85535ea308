"""Documents as sequences of concepts: the document split and (context → next concept) pairs.

The protocol (docs/protocol.md): split by *document*, never by pair; a pair is up to C previous concepts of
a document and the next one. Everything here is plain numpy on concept ids, so the LVM, the
towers and every evaluation draw their pairs from the one place.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dualpath.config import SplitConfig

PAD = -1

log = logging.getLogger(__name__)

# Held-out pairs below which calibration cannot set a lane's thresholds (pipeline/calibrate.py).
MIN_HELDOUT_PAIRS = 20
# The largest held-out share chosen on the user's behalf: beyond it training loses too much data.
MAX_AUTO_FRACTION = 0.3
AUTO_FRACTION_STEP = 0.05


def heldout_documents(doc_ids: Sequence[str], fraction: float, seed: int = 0) -> set[str]:
    """The held-out documents: a stable hash of (seed, id) below `fraction`.

    Hashing instead of shuffling keeps a document's side fixed when documents are added later,
    so a model trained before `bank add` never sees a held-out document after it. With few
    documents at least one is held out and at least one is kept for training.
    """
    if not doc_ids:
        return set()

    def unit(doc_id: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    scores = {d: unit(d) for d in doc_ids}
    held = {d for d, u in scores.items() if u < fraction}
    if not held and len(doc_ids) > 1:
        held = {min(scores, key=scores.__getitem__)}
    if len(held) == len(doc_ids) and len(doc_ids) > 1:
        held.discard(max(held, key=scores.__getitem__))
    return held


@dataclass(frozen=True)
class ContextPairs:
    """(context → next) pairs over concept ids.

    `context` is (n, C) int64, left-padded with PAD so the most recent concept is in the last
    column; `target` is (n,) the true next concept; `doc` is (n,) the index of the pair's
    document in the order given to `make_pairs`.
    """

    context: np.ndarray
    target: np.ndarray
    doc: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def width(self) -> int:
        return int(self.context.shape[1])

    def subset(self, index: np.ndarray) -> ContextPairs:
        return ContextPairs(self.context[index], self.target[index], self.doc[index])

    def context_sets(self) -> list[np.ndarray]:
        """Per pair, the real (non-pad) context ids: what evaluation removes from result lists."""
        return [row[row != PAD] for row in self.context]


def make_pairs(documents: Sequence[np.ndarray], context: int, min_context: int = 1) -> ContextPairs:
    """Every position t ≥ min_context of every document gives one pair (ids[t-C:t] → ids[t])."""
    if context < 1 or min_context < 1:
        raise ValueError("context and min_context must be >= 1")
    ctx_rows: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    docs: list[np.ndarray] = []
    for d, ids in enumerate(documents):
        ids = np.asarray(ids, dtype=np.int64)
        n = ids.shape[0]
        if n <= min_context:
            continue
        positions = np.arange(min_context, n)
        # Window ids[t-C:t], left-padded: pad the document on the left once, then slide.
        padded = np.concatenate([np.full(context, PAD, dtype=np.int64), ids])
        windows = np.lib.stride_tricks.sliding_window_view(padded, context)[positions]
        ctx_rows.append(windows)
        targets.append(ids[positions])
        docs.append(np.full(positions.shape[0], d, dtype=np.int64))
    if not targets:
        empty = np.zeros((0,), dtype=np.int64)
        return ContextPairs(np.zeros((0, context), dtype=np.int64), empty, empty)
    return ContextPairs(np.concatenate(ctx_rows), np.concatenate(targets), np.concatenate(docs))


@dataclass(frozen=True)
class PairSplit:
    train: ContextPairs
    heldout: ContextPairs
    heldout_docs: frozenset[str]
    doc_ids: tuple[str, ...]  # document order that ContextPairs.doc indexes


def split_pairs(
    documents: Mapping[str, np.ndarray], context: int, fraction: float, seed: int = 0, min_context: int = 1
) -> PairSplit:
    """Pairs from a bank's `documents()`, split by document."""
    doc_ids = tuple(documents)
    held = heldout_documents(doc_ids, fraction, seed)
    train_docs = [documents[d] if d not in held else np.zeros(0, np.int64) for d in doc_ids]
    held_docs = [documents[d] if d in held else np.zeros(0, np.int64) for d in doc_ids]
    return PairSplit(
        train=make_pairs(train_docs, context, min_context),
        heldout=make_pairs(held_docs, context, min_context),
        heldout_docs=frozenset(held),
        doc_ids=doc_ids,
    )


def heldout_pair_count(documents: Mapping[str, np.ndarray], fraction: float, seed: int = 0) -> int:
    """Pairs (min context 1) in the documents held out at `fraction`."""
    held = heldout_documents(tuple(documents), fraction, seed)
    return sum(max(0, len(documents[d]) - 1) for d in held)


def auto_heldout_fraction(documents: Mapping[str, np.ndarray], start: float, seed: int = 0) -> float:
    """The smallest share from `start` up to MAX_AUTO_FRACTION (in steps of 0.05) holding out
    MIN_HELDOUT_PAIRS pairs; MAX_AUTO_FRACTION when none does."""
    fraction = start
    while fraction < MAX_AUTO_FRACTION and heldout_pair_count(documents, fraction, seed) < MIN_HELDOUT_PAIRS:
        fraction = min(MAX_AUTO_FRACTION, round(fraction + AUTO_FRACTION_STEP, 2))
    return fraction


def resolve_split(split: SplitConfig, documents: Mapping[str, np.ndarray]) -> SplitConfig:
    """`split` with its held-out share fixed for this corpus.

    A share the user set (config file, `--config`, a model's saved split) is kept as is. Otherwise the
    default 0.1 is raised, up to 0.3, until the held-out documents give MIN_HELDOUT_PAIRS pairs: a corpus
    of 30 short notes holds out 3 documents at 0.1, about 14 pairs, too few to calibrate on. Deterministic
    (the split hashes document ids), so the LVM and the tower trained on one bank choose the same share.
    """
    if "heldout_fraction" in split.model_fields_set:
        return split
    fraction = auto_heldout_fraction(documents, split.heldout_fraction, split.seed)
    if fraction != split.heldout_fraction:
        pairs = heldout_pair_count(documents, fraction, split.seed)
        log.info(
            "held-out share %.2f instead of %.2f for %d documents: %d held-out pairs "
            "(set split.heldout_fraction in --config to choose it)",
            fraction, split.heldout_fraction, len(documents), pairs,
        )
        if pairs < MIN_HELDOUT_PAIRS:
            log.warning(
                "only %d held-out pairs at the largest automatic share %.2f: `dualpath calibrate` needs %d; "
                "add documents", pairs, fraction, MIN_HELDOUT_PAIRS,
            )
    return split.model_copy(update={"heldout_fraction": fraction})


def split_from_config(
    documents: Mapping[str, np.ndarray], split: SplitConfig, context: int | None = None
) -> PairSplit:
    """`split_pairs` with the held-out fraction (see `resolve_split`) and seed of `split`, and its context
    unless given."""
    split = resolve_split(split, documents)
    return split_pairs(documents, split.context if context is None else context, split.heldout_fraction, split.seed)


def gather_context(vectors: np.ndarray, context_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Look up context vectors: (b, C) ids → (b, C, d) float32 with zeros at PAD, and a (b, C) mask."""
    mask = context_ids != PAD
    safe = np.where(mask, context_ids, 0)
    ctx = np.asarray(vectors[safe.reshape(-1)], dtype=np.float32).reshape(*safe.shape, vectors.shape[1])
    ctx[~mask] = 0.0
    return ctx, mask


CALIBRATION_SHARE = 0.5  # of the held-out documents: calibration fits on these, evaluation scores the rest


def calibration_documents(heldout: Sequence[str] | set[str] | frozenset[str], seed: int = 0) -> set[str]:
    """The held-out documents that calibration fits on; the rest are the evaluation's alone, so no
    figure is scored on what it was fitted on. A stable hash, as for the held-out split itself."""
    return heldout_documents(tuple(sorted(heldout)), CALIBRATION_SHARE, seed + 1)


def heldout_half(split: PairSplit, half: str | None, seed: int = 0) -> ContextPairs:
    """The held-out pairs of one half: "calibration", "evaluation", or None for both."""
    if half is None:
        return split.heldout
    if half not in ("calibration", "evaluation"):
        raise ValueError(f"half must be 'calibration' or 'evaluation', got {half!r}")
    fitted = calibration_documents(split.heldout_docs, seed)
    inside = np.array([split.doc_ids[d] in fitted for d in split.heldout.doc], dtype=bool)
    return split.heldout.subset(np.flatnonzero(inside if half == "calibration" else ~inside))
