"""Training the query tower: InfoNCE against the true next concept, optional mined hard negatives.

The reference trainer used the retrieved top-1 as a pseudo-positive and took its loss from a
detached query, so it could not learn. Here the positive is always the pair's true next concept
and the gradient flows through the query. Each row of a batch scores its query against

    the batch's targets                 in-batch negatives (its own target is the positive)
    the batch's mined hard negatives    from `training.mining`, refreshed every `refresh_every`
                                        epochs after `warmup_epochs` of in-batch-only training
    a memory queue of recent targets    `queue_size` extra negatives from the previous batches

or, with `bank_negatives`, against every concept of the bank: the exact softmax over the search
space the evaluation ranks in (it supersedes the queue and the mining, whose negatives are all
bank concepts; affordable up to `BANK_NEGATIVES_MAX` concepts). In both cases a column that is not
a true negative for that row (its own target id again, one of its context concepts, a near
duplicate of the positive for the bank softmax, or — with `exclude_same_document` — a concept of
its own document) is masked out.

Everything an epoch does follows from (seed, epoch) and the state `run_training` checkpoints:
the shuffle, the learning rate (a function of the step), the queue (emptied each epoch), and
the mined negatives (saved beside the checkpoints, since a later epoch reuses them). So a run
killed at any point and resumed continues exactly. No multiprocessing, no fork.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import PAD, gather_context, resolve_split, split_from_config
from dualpath.decider.miners import SearchIndex
from dualpath.errors import CheckpointError, ConfigError
from dualpath.evaluation.retrieval import EvalPairs, baseline_table, evaluate_queries, relative_gain
from dualpath.fileio import atomic_path, write_json_atomic
from dualpath.locking import models_lock
from dualpath.models.towers import QueryTower
from dualpath.runtime import batch_progress, resolve_device, torch_threads
from dualpath.training.loop import EpochReport, TrainingResult, run_training
from dualpath.training.mining import (
    NONE,
    concept_documents,
    document_negatives,
    mine_hard_negatives,
    mining_index,
)
from dualpath.training.schedule import set_learning_rate, step_learning_rate

log = logging.getLogger(__name__)

NEGATIVES_FILE = "negatives.npz"  # the latest mined negatives, reused by later epochs (and resumes)
TABLE_FILE = "retrieval.json"  # the held-out protocol table of the latest epoch
# A batch's (batch, bank) logits must stay small: 256 x 250k float32 is 256 MB, with its gradient twice that.
BANK_NEGATIVES_MAX = 250_000
QUERY_BLOCK = 8192  # training contexts gathered and encoded at a time when mining


class Bank(SearchIndex, Protocol):
    """What the trainer needs of a ConceptBank."""

    dim: int
    encoder_name: str

    def all_vectors(self) -> np.ndarray: ...

    def documents(self) -> dict[str, np.ndarray]: ...


class RetrieverTask:
    """A `TrainingTask` for `run_training`: one query tower, its optimizer, its pairs, its negatives."""

    select_metric = "MRR"

    def __init__(
        self,
        vectors: np.ndarray,
        documents: Mapping[str, np.ndarray],
        index: SearchIndex,
        cfg: DualPathConfig,
        encoder_name: str,
        state_dir: str | Path,
    ) -> None:
        tc = cfg.tower
        # The held-out share as chosen for this corpus (the LVM's, on the same bank), recorded in the checkpoint.
        cfg = cfg.model_copy(update={"split": resolve_split(cfg.split, documents)})
        self.cfg = cfg
        self.vectors = vectors
        self.index = index
        self.mining_index: SearchIndex | None = None  # built at the first mining round
        self.state_dir = Path(state_dir)
        split = split_from_config(documents, cfg.split)
        if len(split.train) < 2 or len(split.heldout) < 1:
            raise ConfigError(
                f"too few pairs to train a query tower: {len(split.train)} training, {len(split.heldout)} held-out "
                "(documents need at least two concepts)"
            )
        self.train = split.train
        heldout = split.heldout
        if tc.eval_pairs is not None and len(heldout) > tc.eval_pairs:  # a fixed sample, the same every epoch
            heldout = heldout.subset(np.sort(np.random.default_rng([tc.seed, len(heldout)]).choice(
                len(heldout), tc.eval_pairs, replace=False)))
        self.heldout = EvalPairs.from_pairs(vectors, heldout)
        self.concept_doc = concept_documents(documents, vectors.shape[0])
        self.doc_negatives = (
            document_negatives(documents, self.train, tc.document_negatives) if tc.document_negatives else None
        )
        self.device = torch.device(resolve_device(cfg.device))
        self.bank_keys: torch.Tensor | None = None
        if tc.bank_negatives:
            if vectors.shape[0] > BANK_NEGATIVES_MAX:
                raise ConfigError(
                    f"bank_negatives scores every concept in each step and the bank has {vectors.shape[0]:,} "
                    f"(at most {BANK_NEGATIVES_MAX:,}); train with mined hard negatives instead"
                )
            self.bank_keys = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        torch.manual_seed(tc.seed)  # the initial weights follow from the seed (on the CPU, then moved)
        self.tower = QueryTower(tc, vectors.shape[1], encoder_name)
        self.model = self.tower.net.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.negatives: np.ndarray | None = None
        self.steps_per_epoch = math.ceil(len(self.train) / tc.batch_size)
        log.info(
            "query tower %s: %d training pairs, %d held-out pairs, %d parameters",
            tc.tower, len(self.train), len(self.heldout), sum(p.numel() for p in self.model.parameters()),
        )

    @classmethod
    def from_bank(cls, bank: Bank, cfg: DualPathConfig, state_dir: str | Path) -> RetrieverTask:
        return cls(bank.all_vectors(), bank.documents(), bank, cfg, bank.encoder_name, state_dir)

    # -- TrainingTask ----------------------------------------------------------------------------

    def train_epoch(self, epoch: int, beat: Callable[[], None]) -> float:
        tc = self.cfg.tower
        rng = np.random.default_rng([tc.seed, epoch])
        self.negatives = self._negatives_for(epoch, rng, beat)
        order = rng.permutation(len(self.train))
        queue = np.zeros(0, dtype=np.int64)
        total, count = 0.0, 0
        batches = [order[i : i + tc.batch_size] for i in range(0, len(order), tc.batch_size)]
        for step, batch in enumerate(batch_progress(batches, len(batches), f"epoch {epoch}")):
            self._set_lr((epoch - 1) * self.steps_per_epoch + step)
            loss = self._step(batch, queue, np.random.default_rng([tc.seed, epoch, step]))
            total += loss * len(batch)
            count += len(batch)
            if tc.queue_size and not tc.bank_negatives:
                queue = np.concatenate([self.train.target[batch], queue])[: tc.queue_size]
            beat()
        return total / max(count, 1)

    def evaluate(self) -> dict[str, float]:
        queries = self.tower.encode_queries(self.heldout.ctx, self.heldout.mask)
        return evaluate_queries(self.index.search, queries, self.heldout)

    def checkpoint_config(self) -> dict[str, Any]:
        # bank_concepts is checked on --resume: a bank that grew since would change the training set.
        return {
            **self.tower.checkpoint_config(),
            "split": self.cfg.split.model_dump(mode="json"),
            "bank_concepts": len(self.vectors),
        }

    # -- one step --------------------------------------------------------------------------------

    def _step(self, batch: np.ndarray, queue: np.ndarray, rng: np.random.Generator) -> float:
        tc = self.cfg.tower
        context = shorten_contexts(self.train.context[batch], tc.context_dropout, rng)
        targets = self.train.target[batch]
        ctx, mask = gather_context(self.vectors, context)
        device = self.device
        query = self.model(torch.from_numpy(ctx).to(device), torch.from_numpy(mask).to(device))
        if self.bank_keys is not None:
            logits = (query @ self.bank_keys.T) / tc.temperature
            logits = logits.masked_fill(self._bank_false_negatives(targets, context), float("-inf"))
            labels = torch.from_numpy(targets).to(device)
            return self._descend(torch.nn.functional.cross_entropy(logits, labels))
        columns = [targets]
        for extra in (self.doc_negatives, self.negatives):
            if extra is not None:
                ids = extra[batch].reshape(-1)
                columns.append(ids[ids != NONE])
        columns.append(queue)
        column_ids = np.concatenate(columns)
        invalid = self._false_negatives(column_ids, targets, context)
        keys = torch.from_numpy(np.asarray(self.vectors[column_ids], dtype=np.float32)).to(device)
        logits = (query @ keys.T) / tc.temperature
        logits = logits.masked_fill(torch.from_numpy(invalid).to(device), float("-inf"))
        return self._descend(torch.nn.functional.cross_entropy(logits, torch.arange(len(batch), device=device)))

    def _descend(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.tower.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def _false_negatives(self, column_ids: np.ndarray, targets: np.ndarray, context: np.ndarray) -> np.ndarray:
        """(b, columns) True where a column must not count as a negative of the row."""
        invalid = column_ids[None, :] == targets[:, None]
        invalid |= (column_ids[None, :, None] == context[:, None, :]).any(axis=2)
        if not self.cfg.tower.document_negatives:
            # Without document negatives, the pair's own document counts as likely false negatives.
            invalid |= self.concept_doc[column_ids][None, :] == self.concept_doc[targets][:, None]
        diagonal = np.arange(len(targets))
        invalid[diagonal, diagonal] = False  # the positive (column i of row i) always stays
        return invalid

    @torch.no_grad()
    def _bank_false_negatives(self, targets: np.ndarray, context: np.ndarray) -> torch.Tensor:
        """(b, bank) True where a bank concept must not count as a negative of the row.

        The same filters as mining: near duplicates of the positive, the context, and (with
        `exclude_same_document`) the positive's own document; the positive itself always stays.
        """
        assert self.bank_keys is not None
        tc = self.cfg.tower
        device = self.device
        rows = torch.arange(len(targets), device=device)
        positives = torch.from_numpy(targets).to(device)
        invalid = (self.bank_keys[positives] @ self.bank_keys.T) > tc.near_dup
        real = context != PAD
        invalid[torch.from_numpy(np.nonzero(real)[0]).to(device), torch.from_numpy(context[real]).to(device)] = True
        if tc.exclude_same_document:
            owner = torch.from_numpy(self.concept_doc).to(device)
            invalid |= (owner[None, :] == owner[positives][:, None]) & (owner[None, :] >= 0)
        invalid[rows, positives] = False
        return invalid

    def _set_lr(self, step: int) -> None:
        # Linear warm-up over the first 10 % of steps (at most 100), then cosine decay to 10 %.
        tc = self.cfg.tower
        total = max(1, tc.epochs * self.steps_per_epoch)
        set_learning_rate(self.optimizer, step_learning_rate(tc.lr, step, total, "cosine", min(100, total // 10)))

    # -- hard negatives --------------------------------------------------------------------------

    def mining_due(self, epoch: int) -> bool:
        tc = self.cfg.tower
        mining = tc.hard_negatives and not tc.bank_negatives
        return mining and epoch > tc.warmup_epochs and (epoch - tc.warmup_epochs - 1) % tc.refresh_every == 0

    def _negatives_for(self, epoch: int, rng: np.random.Generator, beat: Callable[[], None]) -> np.ndarray | None:
        tc = self.cfg.tower
        if not tc.hard_negatives or tc.bank_negatives or epoch <= tc.warmup_epochs:
            return None
        if self.mining_due(epoch):
            return self._mine(epoch, rng, beat)
        if self.negatives is not None:
            return self.negatives
        saved = self._load_negatives()  # resumed between two refreshes: reuse what was mined
        return saved if saved is not None else self._mine(epoch, rng, beat)

    def _mine(self, epoch: int, rng: np.random.Generator, beat: Callable[[], None]) -> np.ndarray:
        if self.mining_index is None:
            self.mining_index = mining_index(self.index, self.vectors, self.cfg.tower.mine_exact_mb)
        t0 = time.perf_counter()
        tc = self.cfg.tower
        rows = np.arange(len(self.train))
        if tc.mine_pairs is not None and tc.mine_pairs < len(rows):  # a fresh sample each round
            rows = np.sort(rng.choice(len(rows), tc.mine_pairs, replace=False))
        # Block by block: every training context's vectors at once would be (pairs, C, d) float32.
        queries = np.empty((len(rows), self.vectors.shape[1]), dtype=np.float32)
        for start in range(0, len(rows), QUERY_BLOCK):
            ctx, mask = gather_context(self.vectors, self.train.context[rows[start : start + QUERY_BLOCK]])
            queries[start : start + len(ctx)] = self.tower.encode_queries(ctx, mask)
            beat()
        mined, stats = mine_hard_negatives(
            queries, self.train.target[rows], self.train.context[rows], self.vectors, self.concept_doc,
            self.mining_index, tc, rng, on_batch=beat,
        )
        if len(rows) == len(self.train):
            negatives = mined
        else:
            negatives = np.full((len(self.train), tc.hard_per_query), NONE, dtype=np.int64)
            negatives[rows] = mined
        log.info("epoch %d: mined hard negatives in %.1fs: %s", epoch, time.perf_counter() - t0, asdict(stats))
        with atomic_path(self.state_dir / NEGATIVES_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, negatives=negatives, epoch=np.int64(epoch))
        return negatives

    def _load_negatives(self) -> np.ndarray | None:
        path = self.state_dir / NEGATIVES_FILE
        if not path.is_file():
            log.warning("no saved hard negatives in %s; mining again (the resume is not exact)", self.state_dir)
            return None
        with np.load(path, allow_pickle=False) as data:
            negatives = data["negatives"]
        if negatives.shape != (len(self.train), self.cfg.tower.hard_per_query):
            raise CheckpointError(f"{path} does not fit this training run (shape {negatives.shape})")
        return negatives


def shorten_contexts(context: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Cut `share` of the left-padded contexts to their most recent 1..length-1 concepts (augmentation).

    Generation meets every context length, and a model that sees each training context at
    several lengths cannot lean on the oldest concept alone.
    """
    if share <= 0:
        return context
    lengths = (context != PAD).sum(axis=1)
    chosen = (rng.random(len(context)) < share) & (lengths > 1)
    keep = np.where(chosen, rng.integers(1, np.maximum(lengths, 2)), lengths)
    columns = np.arange(context.shape[1])[None, :]
    return np.where(columns >= context.shape[1] - keep[:, None], context, PAD)


def train_retriever(
    bank: Bank,
    cfg: DualPathConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_epoch: Callable[[EpochReport, dict[str, dict[str, float]]], None] | None = None,
) -> TrainingResult:
    """Train a query tower on a bank; after every epoch write `out_dir/retrieval.json` (the held-out table).

    Holds the bank's writer lock while training into the bank (see `locking.models_lock`).
    """
    out_dir = Path(out_dir)
    with models_lock(getattr(bank, "path", None), out_dir):
        if hasattr(bank, "ensure_current"):
            bank.ensure_current()
        return _train_retriever(bank, cfg, out_dir, resume, on_epoch)


def _train_retriever(
    bank: Bank,
    cfg: DualPathConfig,
    out_dir: Path,
    resume: bool,
    on_epoch: Callable[[EpochReport, dict[str, dict[str, float]]], None] | None,
) -> TrainingResult:
    task = RetrieverTask.from_bank(bank, cfg, out_dir)
    baselines = baseline_table(bank.search, task.heldout)

    def after_epoch(report: EpochReport) -> None:
        table = {"tower": report.metrics, **baselines}
        write_json_atomic(
            out_dir / TABLE_FILE,
            {"epoch": report.epoch, "pairs": len(task.heldout), "table": table, "gain": relative_gain(table)},
        )
        if on_epoch is not None:
            on_epoch(report, table)

    with torch_threads(cfg.tower.threads):
        return run_training(task, out_dir, cfg.tower.epochs, resume, cfg.tower.watchdog_seconds, after_epoch)
