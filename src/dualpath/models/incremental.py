"""Per-stream model state: the LVM and the query tower read one new concept per step, not the whole window.

Generation appends one concept per step to each stream's context and asks the models about its
last C concepts (the window). Re-reading the window costs C recurrent steps (plus packing) per
call; a `ContextStream` keeps what the models computed and adds only the new concept:

    stream = lvm_stream(lvm, windows)      (or tower_stream(tower, windows))
    v_hat = stream.output()                (b, d): what predict / encode_queries give on the windows
    stream.push(vectors)                   one new concept per stream; the window slides past C

The window slides: once a stream holds C concepts, the oldest leaves it, and a recurrent state
cannot forget an input. So a recurrent stream keeps C states per stream, the state started at each
of the window's last C positions ("age" 0 = started at the newest concept). A push advances all of
them by the new concept in one batched cell call (b × C rows), drops the oldest and starts a new
one from zero; the state of age min(t, C) - 1 has read exactly the window, as the full path does.
Outputs equal the full-window path within float tolerance at every step, before and after the
window is full (tests/test_incremental.py checks it for every architecture).

    LVM gru / lstm        the ring of states above, every layer; head and residual on the window
    LVM transformer       no KV cache is exact: positions count back from the newest concept, so
                          every key and value changes each step. The state keeps the window's
                          embedded inputs (the d → hidden projection, the largest matrix) and the
                          last layer computes only the newest row (the only one read)
    tower gru / lstm      the ring, with each state's running sum of outputs (the tower mean-pools)
    tower bigru/mlp/attn  no incremental form (a backward pass reads from the newest concept);
                          the stream keeps the window and calls the full model on it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualpath.models.context import context_mean, heuristic_query
from dualpath.models.lvm import CausalBlock, LatentVectorModel, RecurrentBackbone, TransformerBackbone
from dualpath.models.towers import QueryTower, RecurrentEncoder


class ContextStream(Protocol):
    """The models' view of b generation streams: `output()` for the current windows, `push` one concept each."""

    def output(self) -> np.ndarray: ...

    def push(self, vectors: np.ndarray) -> None: ...


class _Window:
    """The last C concepts of each stream, left-padded: (b, C, d) with its mask (b, C)."""

    def __init__(self, windows: Sequence[np.ndarray], size: int, dim: int) -> None:
        self.ctx = torch.zeros(len(windows), size, dim)
        self.mask = torch.zeros(len(windows), size, dtype=torch.bool)
        for i, w in enumerate(windows):
            w = np.asarray(w, dtype=np.float32)[-size:]
            if len(w):
                self.ctx[i, size - len(w) :] = torch.from_numpy(np.ascontiguousarray(w))
                self.mask[i, size - len(w) :] = True

    def push(self, x: torch.Tensor) -> None:
        self.ctx = torch.cat([self.ctx[:, 1:], x[:, None]], dim=1)
        self.mask = torch.cat([self.mask[:, 1:], torch.ones(len(x), 1, dtype=torch.bool)], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class _Ring:
    """C states per stream of a (multi-layer) GRU or LSTM, one started at each of the window's positions.

    `h` is (layers, b, C, hidden), index 1 of the third axis = age (0: started at the newest concept).
    With `pooled`, each state also keeps the sum of its top layer's outputs (a mean-pooling tower).
    """

    def __init__(self, rnn: nn.GRU | nn.LSTM, b: int, size: int, pooled: bool = False) -> None:
        self.rnn = rnn
        self.lstm = isinstance(rnn, nn.LSTM)
        self.layers = rnn.num_layers
        self.size = size
        shape = (self.layers, b, size, rnn.hidden_size)
        self.h = torch.zeros(shape)
        self.c = torch.zeros(shape) if self.lstm else None
        self.sum = torch.zeros(b, size, rnn.hidden_size) if pooled else None

    @staticmethod
    def _aged(state: torch.Tensor) -> torch.Tensor:
        """Every state one step older: a fresh zero state at age 0, the oldest dropped."""
        return torch.cat([torch.zeros_like(state[..., :1, :]), state[..., :-1, :]], dim=-2)

    def push(self, x: torch.Tensor, real: torch.Tensor | None = None) -> None:
        """Advance every state by x (b, d); rows where `real` is False keep their state (padding)."""
        b = x.shape[0]
        rows = b * self.size
        inp = x[:, None, :].expand(b, self.size, x.shape[1]).reshape(rows, x.shape[1])
        h_prev = self._aged(self.h).reshape(self.layers, rows, -1)
        c_prev = self._aged(self.c).reshape(self.layers, rows, -1) if self.c is not None else None
        hs, cs = [], []
        for layer in range(self.layers):
            weights = [getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh")]
            biases = [getattr(self.rnn, f"{name}_l{layer}", None) for name in ("bias_ih", "bias_hh")]
            if self.lstm:
                assert c_prev is not None
                h, c = torch.lstm_cell(inp, (h_prev[layer], c_prev[layer]), *weights, *biases)
                cs.append(c)
            else:
                h = torch.gru_cell(inp, h_prev[layer], *weights, *biases)
            hs.append(h)
            inp = h
        new_h = torch.stack(hs).reshape(self.h.shape)
        new_c = torch.stack(cs).reshape(self.h.shape) if self.lstm else None
        new_sum = self._aged(self.sum) + new_h[-1] if self.sum is not None else None
        if real is not None and not bool(real.all()):
            keep = ~real
            new_h[:, keep] = self.h[:, keep]
            if new_c is not None and self.c is not None:
                new_c[:, keep] = self.c[:, keep]
            if new_sum is not None and self.sum is not None:
                new_sum[keep] = self.sum[keep]
        self.h, self.c, self.sum = new_h, new_c, new_sum

    def prime(self, window: _Window) -> None:
        """Read each stream's window column by column (padding columns leave a stream untouched)."""
        for column in range(window.ctx.shape[1]):
            real = window.mask[:, column]
            if bool(real.any()):
                self.push(window.ctx[:, column], real)

    def covering(self, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(top-layer h, pooled sum) of the state that has read exactly each stream's window."""
        age = (lengths.clamp(min=1, max=self.size) - 1).long()
        rows = torch.arange(len(age))
        return self.h[-1, rows, age], self.sum[rows, age] if self.sum is not None else None


class _RecurrentLVMStream:
    """A gru / lstm LVM: the ring over its backbone, then its head and residual on the window."""

    def __init__(self, lvm: LatentVectorModel, windows: Sequence[np.ndarray]) -> None:
        self.net = lvm.net
        self.window = _Window(windows, lvm.context, lvm.dim)
        backbone = lvm.net.backbone
        assert isinstance(backbone, RecurrentBackbone)
        self.ring = _Ring(backbone.rnn, len(windows), lvm.context)
        with torch.no_grad():
            self.ring.prime(self.window)

    @torch.no_grad()
    def output(self) -> np.ndarray:
        summary, _ = self.ring.covering(self.window.lengths)
        return _lvm_head(self.net, summary, self.window).numpy()

    @torch.no_grad()
    def push(self, vectors: np.ndarray) -> None:
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ring.push(x)
        self.window.push(x)


def _lvm_head(net: nn.Module, summary: torch.Tensor, window: _Window) -> torch.Tensor:
    """LVMNet.forward after its backbone (the same head and residual)."""
    out = net.head(summary)
    if net.residual == "last":
        out = out + window.ctx[:, -1]
    elif net.residual == "mean":
        out = out + context_mean(window.ctx, window.mask)
    return F.normalize(out, dim=-1)


class _TransformerLVMStream:
    """A transformer LVM: the window's embedded inputs are kept; the last layer computes the newest row only."""

    def __init__(self, lvm: LatentVectorModel, windows: Sequence[np.ndarray]) -> None:
        self.net = lvm.net
        backbone = lvm.net.backbone
        assert isinstance(backbone, TransformerBackbone)
        self.backbone = backbone
        self.window = _Window(windows, min(lvm.context, backbone.max_context), lvm.dim)
        with torch.no_grad():
            self.embedded = backbone.embed(self.window.ctx)

    @torch.no_grad()
    def output(self) -> np.ndarray:
        bb, mask = self.backbone, self.window.mask
        width = mask.shape[1]
        back = torch.arange(width - 1, -1, -1)
        x = bb.drop(self.embedded + bb.position(back)[None])
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (causal[None] & mask[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
        for block in list(bb.blocks)[:-1]:
            x = block(x, allowed)
        last = _last_row(bb.blocks[-1], x, allowed)
        return _lvm_head(self.net, bb.norm(last), self.window).numpy()

    @torch.no_grad()
    def push(self, vectors: np.ndarray) -> None:
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.embedded = torch.cat([self.embedded[:, 1:], self.backbone.embed(x)[:, None]], dim=1)
        self.window.push(x)


def _last_row(block: CausalBlock, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """CausalBlock.forward's output at the last position only: keys and values of every row, one query."""
    b, t, h = x.shape
    q, k, v = block.qkv(block.norm1(x)).split(h, dim=2)
    q = q[:, -1:]
    heads = block.heads
    q = q.view(b, 1, heads, h // heads).transpose(1, 2)
    k, v = (z.view(b, t, heads, h // heads).transpose(1, 2) for z in (k, v))
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, -1:])
    out = x[:, -1:] + block.proj(attended.transpose(1, 2).reshape(b, 1, h))
    return (out + block.mlp(block.norm2(out)))[:, 0]


class _RecurrentTowerStream:
    """A gru / lstm query tower: the ring with pooled sums, then LayerNorm, projection and the residual."""

    def __init__(self, tower: QueryTower, windows: Sequence[np.ndarray], size: int) -> None:
        self.net = tower.net
        encoder = tower.net.encoder
        assert isinstance(encoder, RecurrentEncoder)
        self.encoder = encoder
        self.window = _Window(windows, size, tower.dim)
        self.ring = _Ring(encoder.rnn, len(windows), size, pooled=True)
        with torch.no_grad():
            self.ring.prime(self.window)

    @torch.no_grad()
    def output(self) -> np.ndarray:
        lengths = self.window.lengths
        _, pooled = self.ring.covering(lengths)
        assert pooled is not None
        features = self.encoder.norm(pooled / lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype))
        net = self.net
        out = net.proj(net.dropout(features))
        if net.residual != "none":
            out = net.gate * out + heuristic_query(self.window.ctx, self.window.mask, net.residual)
        return F.normalize(out, dim=-1).numpy()

    @torch.no_grad()
    def push(self, vectors: np.ndarray) -> None:
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ring.push(x)
        self.window.push(x)


class WindowStream:
    """No incremental form: keeps each stream's window and calls the full model on it every step."""

    def __init__(self, model: LatentVectorModel | QueryTower, windows: Sequence[np.ndarray], size: int) -> None:
        self.model = model
        self.window = _Window(windows, size, model.dim)

    def output(self) -> np.ndarray:
        ctx, mask = self.window.ctx.numpy(), self.window.mask.numpy()
        if isinstance(self.model, LatentVectorModel):
            return self.model.predict(ctx, mask)
        return self.model.encode_queries(ctx, mask)

    def push(self, vectors: np.ndarray) -> None:
        self.window.push(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)))


def lvm_stream(lvm: LatentVectorModel, windows: Sequence[np.ndarray], incremental: bool = True) -> ContextStream:
    """The LVM's state for b streams whose contexts are `windows` ((t_i, d) each; the last C are read)."""
    lvm.net.eval()
    if not incremental:
        return WindowStream(lvm, windows, lvm.context)
    if isinstance(lvm.net.backbone, RecurrentBackbone):
        return _RecurrentLVMStream(lvm, windows)
    if isinstance(lvm.net.backbone, TransformerBackbone):
        return _TransformerLVMStream(lvm, windows)
    return WindowStream(lvm, windows, lvm.context)


def tower_stream(
    tower: QueryTower, windows: Sequence[np.ndarray], size: int, incremental: bool = True
) -> ContextStream:
    """The query tower's state for b streams reading windows of the last `size` concepts (the LVM's C)."""
    tower.net.eval()
    encoder = tower.net.encoder
    if incremental and isinstance(encoder, RecurrentEncoder) and not encoder.rnn.bidirectional:
        return _RecurrentTowerStream(tower, windows, size)
    return WindowStream(tower, windows, size)
