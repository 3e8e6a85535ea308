"""Training the LVM on a bank's document sequences.

The core, `LVMTrainingTask`, works on plain arrays: the bank's vector matrix, a `PairSplit` of its
documents, and (optionally) a search function for held-out Hit@K. `train_lvm(bank, cfg)` is the
thin layer that draws those from a `ConceptBank` and runs the shared epoch loop
(`training.loop.run_training`: checkpoint every epoch, keep the best, resume after a kill).

Loss on unit-norm prediction p and true next vector t, over a batch of B pairs:

    cosine_weight · mean(1 - cos(p_i, t_i))
  + infonce_weight · cross-entropy over cos(p_i, t_j) / temperature with j = i the positive

The InfoNCE term uses the other targets of the batch as negatives: it pulls predictions toward the
region of *this* next concept rather than the safe average of plausible ones, which the cosine
term alone rewards.

Rollout training (`lvm.rollout_steps` R > 0): from each pair, the model's prediction is appended to
its context (the oldest concept drops out) and it predicts the concept after the target, R times,
each step's loss weighted by `rollout_weight` (rows whose document ends are left out). Gradients flow
through the fed-back predictions. A model trained only on true contexts and fed its own outputs
converges to a fixed point; this teaches it that the next concept after its own guess is a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from dualpath.bank.layout import lvm_dir
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import ContextPairs, PairSplit, gather_context, resolve_split, split_from_config
from dualpath.errors import CorpusError
from dualpath.evaluation.lvm import contrastive_accuracy, hit_rates, mean_cosine
from dualpath.evaluation.ranking import SearchFn
from dualpath.locking import models_lock
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.sampler import sampler_dir
from dualpath.runtime import batch_progress, resolve_device, torch_threads
from dualpath.training.loop import EpochReport, TrainingResult, run_training
from dualpath.training.sampler import train_sampler
from dualpath.training.schedule import learning_rate, set_learning_rate

if TYPE_CHECKING:
    from dualpath.bank import ConceptBank

log = logging.getLogger(__name__)

# Held-out selection metric: mean cos(prediction, true next). See docs/lvm.md for why not Hit@K.
SELECT_METRIC = "heldout_cos"
EVAL_BLOCK = 8192  # held-out contexts gathered and predicted at a time


def lvm_loss(
    pred: torch.Tensor, target: torch.Tensor, cosine_weight: float, infonce_weight: float, temperature: float
) -> torch.Tensor:
    """The training loss for unit-norm predictions and targets `(B, d)` (see the module docstring)."""
    loss = pred.new_zeros(())
    if cosine_weight > 0:
        loss = loss + cosine_weight * (1.0 - (pred * target).sum(dim=-1)).mean()
    if infonce_weight > 0:
        logits = pred @ target.T / temperature
        labels = torch.arange(pred.shape[0], device=pred.device)
        loss = loss + infonce_weight * F.cross_entropy(logits, labels)
    return loss


class LVMTrainingTask:
    """A `training.loop.TrainingTask` for the LVM on plain arrays.

    `vectors` is the bank's `(N, d)` matrix (row = concept id; float16 memmaps are fine), `split`
    the document split of its pairs; `search` (the bank's) adds held-out Hit@10 to each epoch's
    metrics. The held-out pairs are only ever evaluated on, never trained on.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        split: PairSplit,
        cfg: DualPathConfig,
        encoder_name: str,
        search: SearchFn | None = None,
    ) -> None:
        if len(split.train) == 0:
            raise CorpusError(
                "no training pairs: the bank's documents are all single sentences or held out (add documents "
                "of two or more sentences)"
            )
        self.vectors = vectors
        self.split = split
        self.cfg = cfg
        self.search = search
        torch.manual_seed(cfg.lvm.seed)  # weight initialisation is part of a repeatable run
        self.lvm = LatentVectorModel.build(vectors.shape[1], cfg.lvm, cfg.split.context, encoder_name)
        # Initialised on the CPU (the same weights whatever the device), then moved.
        self.device = torch.device(resolve_device(cfg.device))
        self.model = self.lvm.net.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lvm.lr, weight_decay=cfg.lvm.weight_decay)
        self.select_metric = SELECT_METRIC
        self.successor = successors(split.train, vectors.shape[0])

    def _batch(self, pairs: ContextPairs, index: np.ndarray) -> tuple[torch.Tensor, ...]:
        # Only this batch's vectors are read from the (memory-mapped) matrix: nothing per pair is materialised.
        ctx, mask = gather_context(self.vectors, pairs.context[index])
        target = np.asarray(self.vectors[pairs.target[index]], dtype=np.float32)
        return tuple(torch.from_numpy(a).to(self.device) for a in (ctx, mask, target))

    def _rollout_loss(
        self, ctx: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, target_ids: np.ndarray
    ) -> torch.Tensor:
        """The extra steps' losses: the prediction fed back, the concept after the target as the truth."""
        lvm = self.cfg.lvm
        loss = pred.new_zeros(())
        ids = target_ids
        for _ in range(lvm.rollout_steps):
            ids = np.where(ids >= 0, self.successor[np.maximum(ids, 0)], -1)
            keep = ids >= 0
            if keep.sum() < 2:  # InfoNCE needs a negative
                break
            ctx = torch.cat([ctx[:, 1:], pred[:, None, :]], dim=1)
            mask = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], dim=1)
            pred = self.model(ctx, mask)
            rows = torch.from_numpy(np.flatnonzero(keep)).to(self.device)
            target = torch.from_numpy(np.asarray(self.vectors[ids[keep]], dtype=np.float32)).to(self.device)
            loss = loss + lvm.rollout_weight * self._loss(pred[rows], target)
        return loss

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lvm = self.cfg.lvm
        return lvm_loss(pred, target, lvm.cosine_weight, lvm.infonce_weight, lvm.temperature)

    def train_epoch(self, epoch: int, beat: Callable[[], None]) -> float:
        lvm = self.cfg.lvm
        train = self.split.train
        # The order depends on (seed, epoch) only, so a resumed run sees the same batches.
        order = np.random.default_rng([lvm.seed, epoch]).permutation(len(train))
        # A last batch of one has no in-batch negatives; drop a remainder that small.
        starts = [s for s in range(0, len(order), lvm.batch_size) if len(order) - s >= 2]
        total, steps = 0.0, 0
        for step, start in enumerate(batch_progress(starts, len(starts), f"epoch {epoch}")):
            # The learning rate is a function of (epoch, step): nothing to save for an exact resume.
            progress = (epoch - 1 + step / len(starts)) / lvm.epochs
            set_learning_rate(self.optimizer, learning_rate(lvm.lr, progress, lvm.schedule))
            index = order[start : start + lvm.batch_size]
            ctx, mask, target = self._batch(train, index)
            pred = self.model(ctx, mask)
            loss = self._loss(pred, target)
            if lvm.rollout_steps:
                loss = loss + self._rollout_loss(ctx, mask, pred, train.target[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), lvm.grad_clip)
            self.optimizer.step()
            total += loss.item()
            steps += 1
            beat()
        return total / max(steps, 1)

    def evaluate(self) -> dict[str, float]:
        held = self.split.heldout
        if len(held) == 0:
            return {SELECT_METRIC: float("nan")}
        # Predicted block by block: the held-out contexts' vectors are never all in memory at once.
        pred = np.empty((len(held), self.vectors.shape[1]), dtype=np.float32)
        for start in range(0, len(held), EVAL_BLOCK):
            ctx, mask = gather_context(self.vectors, held.context[start : start + EVAL_BLOCK])
            pred[start : start + len(ctx)] = self.lvm.predict(ctx, mask)
        target = np.asarray(self.vectors[held.target], dtype=np.float32)
        # Held-out loss over fixed consecutive batches of the training size: comparable across epochs.
        size = self.cfg.lvm.batch_size
        losses = [
            float(self._loss(torch.from_numpy(pred[s : s + size]), torch.from_numpy(target[s : s + size])))
            for s in range(0, len(held), size)
            if len(held) - s >= 2
        ]
        metrics = {
            "heldout_loss": float(np.mean(losses)) if losses else float("nan"),
            SELECT_METRIC: mean_cosine(pred, target),
            "heldout_contrastive": contrastive_accuracy(pred, target, pairs=held)[0],
        }
        if self.search is not None:
            metrics["heldout_hit10"] = hit_rates(self.search, pred, held, ks=(10,))["hit@10"]
        return metrics

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            **self.lvm.config,
            "training": self.cfg.lvm.model_dump(mode="json"),
            "split": self.cfg.split.model_dump(mode="json"),
            "pairs": {"train": len(self.split.train), "heldout": len(self.split.heldout)},
            # Checked on --resume: a bank that grew since would silently change the training set.
            "bank_concepts": len(self.vectors),
        }


def successors(pairs: ContextPairs, size: int) -> np.ndarray:
    """concept id → the next concept of its document among `pairs`' targets (-1 where none)."""
    nxt = np.full(size, -1, dtype=np.int64)
    same_doc = pairs.doc[1:] == pairs.doc[:-1]
    nxt[pairs.target[:-1][same_doc]] = pairs.target[1:][same_doc]
    return nxt


def train_lvm(
    bank: ConceptBank,
    cfg: DualPathConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainingResult:
    """Train an LVM on `bank`'s documents (held-out split from `cfg.split`); default out `bank/models/lvm`.

    Then, unless `cfg.sampler.epochs` is 0, its sampler into `out/sampler` (training/sampler.py).

    Holds the bank's writer lock while training into the bank (see `locking.models_lock`).
    """
    out = Path(out_dir) if out_dir is not None else lvm_dir(bank.path)
    with models_lock(bank.path, out):
        bank.ensure_current()
        return _train_lvm(bank, cfg, out, resume, on_epoch)


def _train_lvm(
    bank: ConceptBank,
    cfg: DualPathConfig,
    out: Path,
    resume: bool,
    on_epoch: Callable[[EpochReport], None] | None,
) -> TrainingResult:
    documents = bank.documents()
    # The held-out share as chosen for this corpus, so the checkpoint records the split it was trained on.
    cfg = cfg.model_copy(update={"split": resolve_split(cfg.split, documents)})
    split = split_from_config(documents, cfg.split)
    log.info(
        "LVM %s on %s: %d training pairs, %d held-out pairs (%d held-out documents, share %.2f), context %d",
        cfg.lvm.arch,
        bank.path,
        len(split.train),
        len(split.heldout),
        len(split.heldout_docs),
        cfg.split.heldout_fraction,
        cfg.split.context,
    )
    with torch_threads(cfg.lvm.threads):
        task = LVMTrainingTask(bank.all_vectors(), split, cfg, bank.encoder_name, bank.search)
        result = run_training(task, out, cfg.lvm.epochs, resume, cfg.lvm.watchdog_seconds, on_epoch)
    if cfg.sampler.epochs:
        _train_lvm_sampler(bank, cfg, out, resume)
    return result


def train_lvm_sampler(
    bank: ConceptBank, cfg: DualPathConfig, lvm_out: str | Path, resume: bool = False
) -> TrainingResult:
    """Train the sampler of the LVM trained into `lvm_out` (its best epoch) into `lvm_out/sampler`,
    on the document split that LVM was trained on. `train_lvm` calls it; alone, it adds a sampler
    to an LVM trained without one."""
    with models_lock(bank.path, Path(lvm_out)):
        bank.ensure_current()
        return _train_lvm_sampler(bank, cfg, Path(lvm_out), resume)


def _train_lvm_sampler(bank: ConceptBank, cfg: DualPathConfig, lvm_out: Path, resume: bool) -> TrainingResult:
    # The sampler learns the spread around the mean of the LVM that will be used: the best epoch's.
    lvm = LatentVectorModel.load(lvm_out, bank.dim, bank.encoder_name, resolve_device(cfg.device))
    split_cfg = lvm.training_split(cfg.split)
    split = split_from_config(bank.documents(), split_cfg)
    cfg = cfg.model_copy(update={"split": split_cfg})
    with torch_threads(cfg.sampler.threads):
        return train_sampler(bank.all_vectors(), split, lvm, cfg, bank.encoder_name, sampler_dir(lvm_out), resume)
