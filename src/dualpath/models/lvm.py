"""The LVM: a next-vector generator over concept-vector sequences.

Three backbones read the left-padded context `(n, C, d)` with its mask `(n, C)` (from
`corpus.pairs.gather_context`) and summarise it into one hidden vector; a small head turns that into
the next concept's vector, unit-norm in the bank's dimension:

    gru / lstm    a recurrent net over the real concepts only (padding is packed away)
    transformer   a small causal Transformer; the summary is the output at the most recent concept

With `residual = "last"` or `"mean"` the head predicts a *correction* to the last (or mean) context
vector, and starts at zero, so an untrained model is exactly the copy-last (or mean-of-context)
baseline and training can only move it where the data says.

Every backbone is padding-invariant: the prediction for a context does not depend on how many PAD
columns precede it, so `rollout` and batched evaluation agree.

`LatentVectorModel` wraps a net with the config that rebuilds it and is what the rest of dualpath
uses: `predict`, `rollout`, `save`, `load`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualpath.config import LVMConfig, SplitConfig
from dualpath.errors import CheckpointError
from dualpath.models.checkpoint import load_model_config, load_weights, save_checkpoint
from dualpath.models.context import check_contexts, context_mean, right_align

log = logging.getLogger(__name__)

KIND = "lvm"
# The fields of LVMConfig that decide the network's shape and behaviour (saved with the weights).
ARCH_FIELDS = ("arch", "hidden", "layers", "heads", "dropout", "residual")


class RecurrentBackbone(nn.Module):
    """GRU or LSTM over the real context concepts; the summary is the final hidden state."""

    def __init__(self, dim: int, hidden: int, layers: int, dropout: float, cell: str) -> None:
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(dim, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).clamp(min=1)
        # Left padding → right padding: packing can then skip the pads and the net never sees them.
        right = right_align(ctx, lengths)
        packed = nn.utils.rnn.pack_padded_sequence(right, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        return hidden[-1]


class CausalBlock(nn.Module):
    """Pre-norm Transformer block (nanoGPT style) with an explicit boolean attention mask."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(h, dim=2)
        q, k, v = (z.view(b, t, self.heads, h // self.heads).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, h))
        return x + self.mlp(self.norm2(x))


class TransformerBackbone(nn.Module):
    """A small causal Transformer; the summary is the output at the last (most recent) column.

    Positions count back from the most recent concept (0 = last), so a concept's position does not
    change with the amount of padding. Real positions attend to real positions at or before them;
    a PAD position attends only to itself, which keeps its row finite and is never read.
    """

    def __init__(self, dim: int, hidden: int, layers: int, heads: int, dropout: float, max_context: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"transformer hidden size {hidden} is not divisible by heads={heads}")
        self.max_context = max_context
        self.embed = nn.Linear(dim, hidden)
        self.position = nn.Embedding(max_context, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(hidden, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = ctx.shape[1]
        if width > self.max_context:
            # Older concepts than the model was built for: keep the most recent ones.
            ctx, mask, width = ctx[:, -self.max_context :], mask[:, -self.max_context :], self.max_context
        back = torch.arange(width - 1, -1, -1, device=ctx.device)
        x = self.drop(self.embed(ctx) + self.position(back)[None])
        causal = torch.ones(width, width, dtype=torch.bool, device=ctx.device).tril()
        allowed = (causal[None] & mask[:, None, :]) | torch.eye(width, dtype=torch.bool, device=ctx.device)[None]
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x[:, -1])


class LVMNet(nn.Module):
    """Backbone + head → unit-norm next vector, optionally as a correction to the last/mean vector."""

    def __init__(self, dim: int, cfg: LVMConfig, max_context: int) -> None:
        super().__init__()
        self.dim = dim
        self.residual = cfg.residual
        if cfg.arch in ("gru", "lstm"):
            self.backbone: nn.Module = RecurrentBackbone(dim, cfg.hidden, cfg.layers, cfg.dropout, cfg.arch)
        elif cfg.arch == "transformer":
            self.backbone = TransformerBackbone(dim, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, max_context)
        else:
            raise ValueError(f"unknown LVM architecture {cfg.arch!r}")
        self.head = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, dim)
        )
        if self.residual != "none":
            # Start as the baseline itself: the correction is exactly zero before training.
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone(ctx, mask))
        if self.residual == "last":
            out = out + ctx[:, -1]
        elif self.residual == "mean":
            out = out + context_mean(ctx, mask)
        return F.normalize(out, dim=-1)


class LatentVectorModel:
    """A trained (or freshly built) LVM with the config that rebuilds it.

    `config` is the JSON saved beside the weights: kind="lvm", arch, dim, encoder, context, and the
    architecture hyper-parameters; training adds epoch and metrics.
    """

    def __init__(self, net: LVMNet, config: dict[str, Any]) -> None:
        self.net = net
        self.config = config

    @classmethod
    def build(cls, dim: int, cfg: LVMConfig, context: int, encoder_name: str) -> LatentVectorModel:
        """A new, untrained model for `dim`-d vectors of `encoder_name`, reading up to `context` concepts."""
        config = {
            "kind": KIND,
            "dim": int(dim),
            "encoder": encoder_name,
            "context": int(context),
            **{name: getattr(cfg, name) for name in ARCH_FIELDS},
        }
        return cls(LVMNet(dim, cfg, context), config)

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def context(self) -> int:
        return int(self.config["context"])

    @property
    def arch(self) -> str:
        return str(self.config["arch"])

    @property
    def device(self) -> torch.device:
        """Where the weights are (`load(..., device=)` or `net.to(...)`); predictions come back as CPU arrays."""
        return next(self.net.parameters()).device

    @torch.no_grad()
    def predict(self, ctx: np.ndarray, mask: np.ndarray | None = None, batch_size: int = 1024) -> np.ndarray:
        """Next vectors for left-padded contexts `(n, C, d)` (mask `(n, C)`, default all real) → `(n, d)`."""
        ctx = np.asarray(ctx, dtype=np.float32)
        check_contexts(ctx, self.dim, "the LVM")
        if mask is None:
            mask = np.ones(ctx.shape[:2], dtype=bool)
        was_training = self.net.training
        self.net.eval()
        device = self.device
        out = np.empty((ctx.shape[0], self.dim), dtype=np.float32)
        try:
            for start in range(0, ctx.shape[0], batch_size):
                stop = start + batch_size
                c = torch.from_numpy(ctx[start:stop]).to(device)
                pred = self.net(c, torch.from_numpy(np.asarray(mask[start:stop])).to(device))
                out[start:stop] = pred.cpu().numpy()
        finally:
            self.net.train(was_training)
        return out

    def rollout(self, context: np.ndarray, steps: int) -> np.ndarray:
        """Generate `steps` vectors from context vectors `(t, d)`, each prediction fed back as input."""
        window = [np.asarray(v, dtype=np.float32) for v in np.atleast_2d(context)][-self.context :]
        if not window:
            raise ValueError("rollout needs at least one context vector")
        generated = np.empty((steps, self.dim), dtype=np.float32)
        for step in range(steps):
            ctx = np.stack(window)[None]
            generated[step] = self.predict(ctx)[0]
            window = [*window, generated[step]][-self.context :]
        return generated

    def training_split(self, default: SplitConfig) -> SplitConfig:
        """The split this model was trained with (saved in its checkpoint), so held-out stays unseen by it.

        A model saved without one gets `default`; either way the context is the model's own.
        """
        saved = self.config.get("split")
        split = SplitConfig(**saved) if isinstance(saved, dict) else default
        return split.model_copy(update={"context": self.context})

    def save(self, directory: str | Path) -> Path:
        """Weights + config, written atomically (no optimizer state: that is the training loop's)."""
        return save_checkpoint(directory, self.net, self.config)

    @classmethod
    def load(
        cls,
        path: str | Path,
        expected_dim: int | None = None,
        expected_encoder: str | None = None,
        device: str = "cpu",
    ) -> LatentVectorModel:
        """Load from a checkpoint directory or a training output (its best/, else last/), onto `device`.

        `expected_dim` / `expected_encoder` are the bank's (see `models.checkpoint.load_model_config`).
        """
        directory, config = load_model_config(path, KIND, "an LVM", expected_dim, expected_encoder)
        try:
            cfg = LVMConfig(**{name: config[name] for name in ARCH_FIELDS})
        except (KeyError, ValueError) as err:
            raise CheckpointError(
                f"LVM config in {directory} is incomplete or invalid: {err}".splitlines()[0]
            ) from None
        model = cls(LVMNet(int(config["dim"]), cfg, int(config["context"])), config)
        load_weights(directory, model.net)  # to the CPU (checkpoints hold no device), then moved
        model.net.to(device).eval()
        log.info("loaded %s LVM (%d-d, context %d) from %s", model.arch, model.dim, model.context, directory)
        return model


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
