"""Query towers: a small network that turns a context of concept vectors into a search query.

The retriever is a two-tower model whose document tower is the identity: bank vectors are
indexed as the encoder made them, and only the query side learns (docs/retriever.md says why an
MLP document tower is refused). Every tower maps a left-padded context `(n, C, d)` with its mask
`(n, C)` to a unit-norm `(n, d)` query in the bank's space.

    gru    GRU over the context, mean-pooled over real steps, LayerNorm, projection to d
    bigru  the same, bidirectional
    lstm   the same with an LSTM
    mlp    the cheap baseline: an MLP on [mean of the context, last vector]
    attn   a small pre-norm transformer encoder with positions counted from the most recent concept

With `residual = "mean"` (or `"last"`) the tower predicts a correction to that heuristic query,
scaled by a learned gate that starts at zero (ReZero): an untrained tower *is* the heuristic.
A zero-initialised output layer would start there too, but Adam's first steps move every one of
its weights by about the learning rate at once, and the correction swamped the unit-norm
heuristic (held-out MRR on the 300-article bank fell from 0.66 to 0.34 in the first epoch; with
the gate it stays at 0.66 while the correction grows only as fast as the one scalar can).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dualpath.config import TowerConfig
from dualpath.errors import CheckpointError
from dualpath.models.checkpoint import load_model_config, load_weights, save_checkpoint
from dualpath.models.context import check_contexts, context_mean, heuristic_query, right_align

log = logging.getLogger(__name__)

KIND = "tower"
MAX_POSITIONS = 64  # the attention tower sees at most this many recent concepts


class RecurrentEncoder(nn.Module):
    """GRU / BiGRU / LSTM over the real steps only (packed), mean-pooled, LayerNorm."""

    def __init__(self, dim: int, hidden: int, cell: str, bidirectional: bool) -> None:
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.width = hidden * (2 if bidirectional else 1)
        self.norm = nn.LayerNorm(self.width)

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).long().clamp(min=1)
        packed = pack_padded_sequence(
            right_align(ctx, lengths), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ctx.shape[1])
        pooled = out.sum(dim=1) / lengths.unsqueeze(1).to(out.dtype)  # padded steps are zeros
        return self.norm(pooled)


class MeanLastEncoder(nn.Module):
    """The cheap baseline's features: the mean of the context and the last vector, side by side."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.width = hidden

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = torch.cat([context_mean(ctx, mask), ctx[:, -1, :]], dim=-1)
        return self.mlp(features)


class AttentionEncoder(nn.Module):
    """A few pre-norm transformer layers; position 0 is the most recent concept."""

    def __init__(self, dim: int, hidden: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"attn tower: hidden {hidden} is not divisible by heads {heads}")
        self.inp = nn.Linear(dim, hidden)
        self.positions = nn.Parameter(torch.zeros(MAX_POSITIONS, hidden))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.width = hidden

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx, mask = ctx[:, -MAX_POSITIONS:], mask[:, -MAX_POSITIONS:]
        width = ctx.shape[1]
        x = self.inp(ctx) + self.positions[:width].flip(0)  # the last column gets position 0
        # A row with no context attends to its (zero) last slot instead of to nothing (NaN).
        keep = mask.clone()
        keep[:, -1] = True
        out = self.encoder(x, src_key_padding_mask=~keep)
        weights = keep.unsqueeze(-1).to(out.dtype)
        return self.norm((out * weights).sum(dim=1) / weights.sum(dim=1))


class TowerNet(nn.Module):
    """Encoder features → projection to the bank dimension (+ heuristic residual) → unit norm."""

    def __init__(self, cfg: TowerConfig, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.residual = cfg.residual
        if cfg.tower in ("gru", "bigru", "lstm"):
            cell = "lstm" if cfg.tower == "lstm" else "gru"
            self.encoder: nn.Module = RecurrentEncoder(dim, cfg.hidden, cell, cfg.tower == "bigru")
        elif cfg.tower == "mlp":
            self.encoder = MeanLastEncoder(dim, cfg.hidden)
        else:
            self.encoder = AttentionEncoder(dim, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(self.encoder.width, dim)
        if self.residual != "none":
            self.gate = nn.Parameter(torch.zeros(()))  # start exactly at the heuristic query

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        out = self.proj(self.dropout(self.encoder(ctx, mask)))
        if self.residual != "none":
            out = self.gate * out + heuristic_query(ctx, mask, self.residual)
        return nn.functional.normalize(out, dim=-1)


class QueryTower:
    """A trained query tower: `encode_queries` for callers, `save` / `load` as a checkpoint directory."""

    def __init__(self, cfg: TowerConfig, dim: int, encoder_name: str, net: TowerNet | None = None) -> None:
        self.cfg = cfg
        self.dim = int(dim)
        self.encoder_name = encoder_name
        self.net = net if net is not None else TowerNet(cfg, self.dim)

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "arch": self.cfg.tower,
            "dim": self.dim,
            "encoder": self.encoder_name,
            "tower": self.cfg.model_dump(mode="json"),
        }

    @property
    def device(self) -> torch.device:
        """Where the weights are; queries come back as CPU arrays."""
        return next(self.net.parameters()).device

    @torch.no_grad()
    def encode_queries(self, ctx: np.ndarray, mask: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Left-padded contexts `(n, C, d)` + mask `(n, C)` → unit-norm float32 queries `(n, d)`."""
        check_contexts(ctx, self.dim, "the query tower")
        was_training = self.net.training
        self.net.eval()
        device = self.device
        out = np.empty((ctx.shape[0], self.dim), dtype=np.float32)
        for start in range(0, ctx.shape[0], batch_size):
            stop = start + batch_size
            c = torch.from_numpy(np.ascontiguousarray(ctx[start:stop], dtype=np.float32)).to(device)
            m = torch.from_numpy(np.ascontiguousarray(mask[start:stop], dtype=bool)).to(device)
            out[start:stop] = self.net(c, m).cpu().numpy()
        self.net.train(was_training)
        return out

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(directory, self.net, {**self.checkpoint_config(), **(extra or {})})

    @classmethod
    def load(
        cls,
        path: str | Path,
        expected_dim: int | None = None,
        expected_encoder: str | None = None,
        device: str = "cpu",
    ) -> QueryTower:
        """Load a tower from a checkpoint (or a training output: its best/, else last/), onto `device`.

        `expected_dim` / `expected_encoder` are the bank's (see `models.checkpoint.load_model_config`).
        """
        directory, config = load_model_config(path, KIND, "a query tower", expected_dim, expected_encoder)
        try:
            # Training-only settings come and go between versions; they never change the weights' shapes.
            saved = {k: v for k, v in config["tower"].items() if k in TowerConfig.model_fields}
            cfg = TowerConfig.model_validate(saved)
            saved_dim = int(config["dim"])
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as err:
            raise CheckpointError(f"query tower config in {directory} is invalid: {err}".splitlines()[0]) from None
        tower = cls(cfg, saved_dim, str(config.get("encoder", "")))
        load_weights(directory, tower.net)  # to the CPU, then moved
        tower.net.to(device).eval()
        return tower
