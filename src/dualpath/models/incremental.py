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

On the CPU the recurrent streams run as numpy/BLAS kernels (`_NumpyRing`, the heads in numpy): a
single stream's step is ~30 small calls, and torch's per-call cost (~5-10 µs each) was most of it;
numpy's is ~1 µs, and each product is one BLAS call as before. On a GPU the torch path runs.

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

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import erfc
from torch import nn

from dualpath.models.context import context_mean, heuristic_query
from dualpath.models.heuristics import normalize_rows
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


def _on_cpu(module: nn.Module) -> bool:
    """Every parameter a float32 CPU tensor: the numpy kernels can read them in place."""
    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in module.parameters())


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A numpy view of a CPU parameter (no copy: it follows the parameter's later in-place updates)."""
    return None if tensor is None else tensor.detach().numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) in place, in its tanh form: no overflow for large |x|, where 1 / (1 + exp(-x)) warns."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    """nn.GELU in numpy: x Φ(x), Φ by erfc (scipy's ufunc) or, for approximate="tanh", its tanh form.

    Φ(x) = erfc(-x / √2) / 2, not (1 + erf(x / √2)) / 2: for x below about -3, 1 + erf cancels to a few
    float32 digits (4.5e-7 absolute, 7 % of values near -1e-6); erfc keeps ~1e-6 relative everywhere, as x Φ(x) in
    float64 says. (Torch's float32 kernel is off by up to 1.1e-6 there.)"""
    if approximate == "tanh":
        inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
        return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))
    return np.float32(0.5) * x * erfc(x * np.float32(-1.0 / math.sqrt(2.0)))


class _NumpyModules:
    """`nn.Sequential(*modules)` in eval mode on numpy arrays: Linear as one BLAS call on views of its weights
    taken once (a step reading them through torch paid more for the calls than for the products), GELU in
    numpy, Dropout as nothing, any other module (an activation) through torch on the same memory. Views
    follow the parameters' in-place updates; a stream lives for one generation."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.steps = [step for step in map(_numpy_step, modules) if step is not None]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for step in self.steps:
            x = step(x)
        return x


def _numpy_step(module: nn.Module) -> Callable[[np.ndarray], np.ndarray] | None:
    """One module of `_NumpyModules` as a function of its input (None: it does nothing in eval mode)."""
    if isinstance(module, nn.Linear):
        weight_t, bias = module.weight.detach().numpy().T, _array(module.bias)

        def linear(x: np.ndarray) -> np.ndarray:
            x = x @ weight_t
            if bias is not None:
                x += bias
            return x

        return linear
    if isinstance(module, nn.GELU):  # the LVM's head: torch's call cost more than the activation
        approximate = module.approximate
        return lambda x: _gelu(x, approximate)
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return None

    def through_torch(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return through_torch


class _NumpyWindow:
    """`_Window` as numpy arrays: (b, C, d) float32 context, left-padded, and its (b, C) mask."""

    def __init__(self, windows: Sequence[np.ndarray], size: int, dim: int) -> None:
        self.ctx = np.zeros((len(windows), size, dim), np.float32)
        self.mask = np.zeros((len(windows), size), bool)
        for i, w in enumerate(windows):
            w = np.asarray(w, dtype=np.float32)[-size:]
            if len(w):
                self.ctx[i, size - len(w) :] = w
                self.mask[i, size - len(w) :] = True
        # Kept as the window fills, not summed from the mask at every step: the models read it each step.
        self.lengths = self.mask.sum(axis=1)

    def push(self, x: np.ndarray) -> None:
        ctx = np.empty_like(self.ctx)
        ctx[:, :-1], ctx[:, -1] = self.ctx[:, 1:], x
        mask = np.empty_like(self.mask)
        mask[:, :-1], mask[:, -1] = self.mask[:, 1:], True
        self.ctx, self.mask = ctx, mask
        self.lengths = np.minimum(self.lengths + 1, self.mask.shape[1])

    def mean(self) -> np.ndarray:
        """context_mean: the unit-norm mean of the real concepts."""
        return normalize_rows(np.einsum("bcd,bc->bd", self.ctx, self.mask.astype(np.float32)))

    def heuristic(self, kind: str) -> np.ndarray:
        """heuristic_query by name: the last concept or the mean, unit-norm."""
        return normalize_rows(self.ctx[:, -1]) if kind == "last" else self.mean()


class _NumpyRing:
    """`_Ring` in numpy: the same states and ages, each layer's cell as two BLAS products and a few ufuncs.

    The newest concept enters all C states of a stream, so the first layer's input product is made once
    per stream (b rows, not b × C) and broadcast over its states.
    """

    def __init__(self, rnn: nn.GRU | nn.LSTM, b: int, size: int, pooled: bool = False) -> None:
        self.lstm = isinstance(rnn, nn.LSTM)
        self.layers = rnn.num_layers
        self.size = size
        self.weights = [
            tuple(_array(getattr(rnn, f"{name}_l{layer}", None)) for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                               "bias_hh"))
            for layer in range(self.layers)
        ]
        shape = (self.layers, b, size, rnn.hidden_size)
        self.h = np.zeros(shape, np.float32)
        self.c = np.zeros(shape, np.float32) if self.lstm else None
        self.sum = np.zeros((b, size, rnn.hidden_size), np.float32) if pooled else None

    @staticmethod
    def _aged(state: np.ndarray) -> np.ndarray:
        out = np.empty_like(state)
        out[..., 0, :] = 0.0
        out[..., 1:, :] = state[..., :-1, :]
        return out

    def push(self, x: np.ndarray, real: np.ndarray | None = None) -> None:
        """Advance every state by x (b, d); rows where `real` is False keep their state (padding)."""
        b, size = x.shape[0], self.size
        h_prev = self._aged(self.h)
        c_prev = self._aged(self.c) if self.c is not None else None
        new_h = np.empty_like(self.h)
        new_c = np.empty_like(self.h) if self.lstm else None
        inp: np.ndarray = x
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.weights):
            gi = inp @ w_ih.T
            if b_ih is not None:
                gi += b_ih
            gi = gi.reshape(b, 1 if layer == 0 else size, -1)  # layer 0: one row per stream, broadcast
            h = h_prev[layer]
            gh = h.reshape(b * size, -1) @ w_hh.T
            if b_hh is not None:
                gh += b_hh
            gh = gh.reshape(b, size, -1)
            hidden = h.shape[-1]
            if self.lstm:
                assert c_prev is not None and new_c is not None
                gates = gh + gi
                i, f = _sigmoid(gates[..., :hidden]), _sigmoid(gates[..., hidden : 2 * hidden])
                g, o = np.tanh(gates[..., 2 * hidden : 3 * hidden]), _sigmoid(gates[..., 3 * hidden :])
                c = f * c_prev[layer] + i * g
                new_c[layer] = c
                new_h[layer] = o * np.tanh(c)
            else:
                rz = _sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
                r, z = rz[..., :hidden], rz[..., hidden:]
                n = np.tanh(gi[..., 2 * hidden :] + r * gh[..., 2 * hidden :])
                new_h[layer] = (1.0 - z) * n + z * h
            inp = new_h[layer].reshape(b * size, -1)
        new_sum = self._aged(self.sum) + new_h[-1] if self.sum is not None else None
        if real is not None and not real.all():
            keep = ~real
            new_h[:, keep] = self.h[:, keep]
            if new_c is not None and self.c is not None:
                new_c[:, keep] = self.c[:, keep]
            if new_sum is not None and self.sum is not None:
                new_sum[keep] = self.sum[keep]
        self.h, self.c, self.sum = new_h, new_c, new_sum

    def prime(self, window: _NumpyWindow) -> None:
        for column in range(window.ctx.shape[1]):
            real = window.mask[:, column]
            if real.any():
                self.push(window.ctx[:, column], real)

    def covering(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        age = np.maximum(np.minimum(lengths, self.size), 1) - 1  # np.clip's wrapper costs more than the work
        rows = np.arange(len(age))
        return self.h[-1, rows, age], self.sum[rows, age] if self.sum is not None else None


class _NumpyLVMStream:
    """`_RecurrentLVMStream` on the CPU: the numpy ring, then the head and residual in numpy."""

    def __init__(self, lvm: LatentVectorModel, windows: Sequence[np.ndarray]) -> None:
        self.net = lvm.net
        self.window = _NumpyWindow(windows, lvm.context, lvm.dim)
        backbone = lvm.net.backbone
        assert isinstance(backbone, RecurrentBackbone)
        self.ring = _NumpyRing(backbone.rnn, len(windows), lvm.context)
        self.ring.prime(self.window)
        self.head = _NumpyModules(list(lvm.net.head))

    def output(self) -> np.ndarray:
        summary, _ = self.ring.covering(self.window.lengths)
        out = self.head(summary)
        if self.net.residual == "last":
            out = out + self.window.ctx[:, -1]
        elif self.net.residual == "mean":
            out = out + self.window.mean()
        return normalize_rows(out)

    def push(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ring.push(x)
        self.window.push(x)


class _NumpyTowerStream:
    """`_RecurrentTowerStream` on the CPU: the numpy ring with pooled sums, LayerNorm and projection in numpy."""

    def __init__(self, tower: QueryTower, windows: Sequence[np.ndarray], size: int) -> None:
        self.net = tower.net
        encoder = tower.net.encoder
        assert isinstance(encoder, RecurrentEncoder)
        self.norm = encoder.norm
        self.window = _NumpyWindow(windows, size, tower.dim)
        self.ring = _NumpyRing(encoder.rnn, len(windows), size, pooled=True)
        self.ring.prime(self.window)
        self.eps = np.float32(self.norm.eps)
        self.norm_weight, self.norm_bias = _array(self.norm.weight), _array(self.norm.bias)
        self.proj = _NumpyModules([tower.net.proj])
        self.gate = _array(tower.net.gate) if tower.net.residual != "none" else None

    def output(self) -> np.ndarray:
        lengths = self.window.lengths
        _, pooled = self.ring.covering(lengths)
        assert pooled is not None
        x = pooled / np.maximum(lengths, 1)[:, None].astype(np.float32)
        # LayerNorm's two means as sums over d (what ndarray.mean computes, without its Python-level wrapper)
        d = x.shape[1]
        x = x - np.add.reduce(x, axis=1, keepdims=True) / d
        x /= np.sqrt(np.add.reduce(x * x, axis=1, keepdims=True) / d + self.eps)
        if self.norm_weight is not None:
            x *= self.norm_weight
        if self.norm_bias is not None:
            x += self.norm_bias
        out = self.proj(x)
        if self.gate is not None:
            out = self.gate * out + self.window.heuristic(self.net.residual)
        return normalize_rows(out)

    def push(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
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
        return _NumpyLVMStream(lvm, windows) if _on_cpu(lvm.net) else _RecurrentLVMStream(lvm, windows)
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
        if _on_cpu(tower.net):
            return _NumpyTowerStream(tower, windows, size)
        return _RecurrentTowerStream(tower, windows, size)
    return WindowStream(tower, windows, size)
