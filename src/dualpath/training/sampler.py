"""Training the LVM's sampler (models/sampler.py) on a bank's document sequences, after the LVM.

The LVM is frozen: for each training pair its mean μ is computed batch by batch on the true context
(nothing per pair is kept in memory), and the sampler learns the residuals y - μ by flow matching,
in units of their RMS (`scale`, measured once on up to `SCALE_PAIRS` training pairs). It uses the
LVM's own document split, so its held-out pairs are the LVM's.

Held-out metrics, with noise and times fixed by the seed so epochs compare:
    heldout_loss         the flow-matching loss; heldout_fit = -heldout_loss selects the best epoch
    heldout_sample_cos   cos(draw, true next concept); the LVM's mean scores higher by construction
    heldout_spread       cos between two draws for the same context (1 = no spread: the mean again)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import ContextPairs, PairSplit, gather_context
from dualpath.models.checkpoint import LAST, read_config
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.sampler import LVMSampler, flow_matching_loss, weights_digest
from dualpath.runtime import batch_progress, resolve_device
from dualpath.training.loop import EpochReport, TrainingResult, run_training
from dualpath.training.schedule import learning_rate, set_learning_rate

log = logging.getLogger(__name__)

SELECT_METRIC = "heldout_fit"
SCALE_PAIRS = 16384
EVAL_PAIRS = 4096  # held-out pairs evaluated each epoch (the first ones, the same every epoch)


class SamplerTrainingTask:
    """A `training.loop.TrainingTask` for the sampler of a trained LVM, on plain arrays."""

    def __init__(
        self,
        vectors: np.ndarray,
        split: PairSplit,
        lvm: LatentVectorModel,
        cfg: DualPathConfig,
        encoder_name: str,
    ) -> None:
        self.vectors = vectors
        self.split = split
        self.lvm = lvm
        self.cfg = cfg
        self.device = torch.device(resolve_device(cfg.device))
        self.lvm.net.to(self.device).eval()
        torch.manual_seed(cfg.sampler.seed)
        scale = self._residual_scale()
        self.sampler = LVMSampler.build(vectors.shape[1], cfg.sampler, scale, encoder_name, weights_digest(lvm.net))
        self.model = self.sampler.net.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.sampler.lr, weight_decay=0.0)
        self.select_metric = SELECT_METRIC

    @torch.no_grad()
    def _batch(self, pairs: ContextPairs, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ, last context concept, true next concept) for the pairs at `index`, on the device."""
        ctx, mask = gather_context(self.vectors, pairs.context[index])
        ctx_t = torch.from_numpy(ctx).to(self.device)
        mean = self.lvm.net(ctx_t, torch.from_numpy(mask).to(self.device))
        target = torch.from_numpy(np.asarray(self.vectors[pairs.target[index]], dtype=np.float32)).to(self.device)
        return mean, ctx_t[:, -1], target

    def _residual_scale(self) -> float:
        train = self.split.train
        rows = np.random.default_rng(self.cfg.sampler.seed).permutation(len(train))[:SCALE_PAIRS]
        mean, _, target = self._batch(train, np.sort(rows))
        return float((target - mean).pow(2).mean().sqrt())

    def train_epoch(self, epoch: int, beat: Callable[[], None]) -> float:
        sampler = self.cfg.sampler
        train = self.split.train
        order = np.random.default_rng([sampler.seed, epoch]).permutation(len(train))
        starts = [s for s in range(0, len(order), sampler.batch_size) if len(order) - s >= 2]
        total = 0.0
        for step, start in enumerate(batch_progress(starts, len(starts), f"sampler epoch {epoch}")):
            progress = (epoch - 1 + step / len(starts)) / max(sampler.epochs, 1)
            set_learning_rate(self.optimizer, learning_rate(sampler.lr, progress, sampler.schedule))
            mean, last, target = self._batch(train, order[start : start + sampler.batch_size])
            residual = (target - mean) / self.sampler.scale
            # Noise and flow times come from torch's RNG, which `last/` saves: a resumed run repeats them.
            noise = torch.randn_like(residual)
            t = torch.rand(len(residual), device=self.device)
            loss = flow_matching_loss(self.model, residual, mean, last, noise, t)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            beat()
        return total / max(len(starts), 1)

    def evaluate(self) -> dict[str, float]:
        held = self.split.heldout
        if len(held) == 0:
            return {SELECT_METRIC: float("nan")}
        index = np.arange(min(len(held), EVAL_PAIRS))
        mean, last, target_t = self._batch(held, index)
        residual = (target_t - mean) / self.sampler.scale
        fixed = torch.Generator().manual_seed(self.cfg.sampler.seed)
        noise = torch.randn(residual.shape, generator=fixed).to(self.device)
        t = torch.rand(len(residual), generator=fixed).to(self.device)
        loss = float(flow_matching_loss(self.model, residual, mean, last, noise, t))
        mean_np, last_np = mean.cpu().numpy(), last.cpu().numpy()
        first = self.sampler.sample(mean_np, last_np, torch.randn(mean.shape, generator=fixed).numpy())
        second = self.sampler.sample(mean_np, last_np, torch.randn(mean.shape, generator=fixed).numpy())
        target = target_t.cpu().numpy()
        return {
            "heldout_loss": loss,
            SELECT_METRIC: -loss,
            "heldout_sample_cos": float(np.einsum("nd,nd->n", first, target).mean()),
            "heldout_mean_cos": float(np.einsum("nd,nd->n", mean_np, target).mean()),
            "heldout_spread": float(np.einsum("nd,nd->n", first, second).mean()),
        }

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            **self.sampler.config,
            "training": self.cfg.sampler.model_dump(mode="json"),
            "split": self.cfg.split.model_dump(mode="json"),
            "pairs": {"train": len(self.split.train), "heldout": len(self.split.heldout)},
            "bank_concepts": len(self.vectors),
        }


def train_sampler(
    vectors: np.ndarray,
    split: PairSplit,
    lvm: LatentVectorModel,
    cfg: DualPathConfig,
    encoder_name: str,
    out: str | Path,
    resume: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainingResult:
    """Train the sampler of `lvm` (frozen) on `split`'s pairs into `out` (best/, last/, history.json).

    `resume` continues `out/last` only if it was trained for this LVM; a sampler of an LVM that has
    changed since is trained afresh."""
    task = SamplerTrainingTask(vectors, split, lvm, cfg, encoder_name)
    last = Path(out) / LAST
    if resume and last.is_dir() and read_config(last).get("lvm_digest") != task.sampler.lvm_digest:
        log.info("the LVM changed since its sampler was saved: the sampler is trained afresh")
        resume = False
    log.info("LVM sampler: residual scale %.4f, %d epochs, into %s", task.sampler.scale, cfg.sampler.epochs, out)
    return run_training(task, out, cfg.sampler.epochs, resume, cfg.sampler.watchdog_seconds, on_epoch)
