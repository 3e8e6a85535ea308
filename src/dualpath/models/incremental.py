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
numpy's is ~1 µs, and each product is one BLAS call as before. The gates' elementwise work is three
compiled passes (models/cells.py). On a GPU the torch path runs.

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

from dualpath.models.cells import gru_step, lstm_step
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


GELU_TORCH_FROM = 2048  # values (8 rows of 256): where torch's GELU call starts to cost less than numpy's


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
    if isinstance(module, nn.GELU):
        approximate = module.approximate

        def gelu(x: np.ndarray) -> np.ndarray:
            # torch's ~10 µs call costs more than numpy's erfc on a few rows (one stream: 3.5 µs), and far less
            # than it on many (256 streams: 0.05 against 0.86 ms): scipy's erfc is a scalar loop
            if x.size < GELU_TORCH_FROM:
                return _gelu(x, approximate)
            with torch.no_grad():
                return F.gelu(torch.from_numpy(x), approximate=approximate).numpy()

        return gelu
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return None

    def through_torch(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return through_torch


class _NumpyWindow:
    """What the numpy streams read of each stream's last C concepts: the newest (b, d), the count (b,) and the
    window's sum (b, d), for its mean.

    The concepts sit in C slots per stream that a push overwrites in turn (the streams of a batch push
    together, so they share the turn): a push writes one concept and subtracts the one it replaces from
    the sum, where sliding a (b, C, d) window and summing it anew read and wrote it all (1.5 MB a step per
    model at 256 streams). The sum is float64, so that adding and later subtracting a concept leaves it
    where it was to ~1e-16. `ctx` and `mask`, left-padded in order, are the windows as given (the ring
    primes from them) until the first push.
    """

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
        self.newest = self.ctx[:, -1].copy()
        self.sum = np.add.reduce(self.ctx, axis=1, dtype=np.float64)  # the padding is zeros
        self.slot = 0  # the slot the next concept replaces: the oldest (column 0 of the left-padded windows)

    def push(self, x: np.ndarray) -> None:
        leaving = self.ctx[:, self.slot]  # zeros while a stream's window fills
        self.sum += x
        self.sum -= leaving
        leaving[:] = x
        self.newest = leaving
        self.slot = (self.slot + 1) % self.ctx.shape[1]
        self.lengths = np.minimum(self.lengths + 1, self.ctx.shape[1])

    def mean(self) -> np.ndarray:
        """context_mean: the unit-norm mean of the real concepts."""
        return normalize_rows(self.sum)

    def heuristic(self, kind: str) -> np.ndarray:
        """heuristic_query by name: the last concept or the mean, unit-norm."""
        return normalize_rows(self.newest) if kind == "last" else self.mean()


class _NumpyRing:
    """`_Ring` in numpy: the same states, each layer's cell as two BLAS products and compiled gate loops
    (models/cells.py).

    States are kept age-major, (layers, C, b, hidden), so that the states a push advances from a non-zero
    state (ages 0..C-2, which become 1..C-1) are one contiguous block of rows for the hidden product; the
    new state of age 0 starts from zero, whose product is zero and is not made. The newest concept enters
    all C states of a stream, so the first layer's input product is made once per stream (b rows, not
    b × C) and shared by its states. Products and gates write into buffers kept between pushes: at 256
    streams each is megabytes, and fresh ones cost page faults every step.
    """

    def __init__(self, rnn: nn.GRU | nn.LSTM, b: int, size: int, pooled: bool = False) -> None:
        self.lstm = isinstance(rnn, nn.LSTM)
        self.layers = rnn.num_layers
        self.size = size
        hidden = rnn.hidden_size
        gates = (4 if self.lstm else 3) * hidden

        def parameter(name: str, layer: int) -> np.ndarray:
            value = _array(getattr(rnn, f"{name}_l{layer}", None))
            return np.zeros(gates, np.float32) if value is None else value  # a cell without biases adds zeros

        self.weights = [
            (parameter("weight_ih", layer).T, parameter("bias_ih", layer),
             parameter("weight_hh", layer).T, parameter("bias_hh", layer))
            for layer in range(self.layers)
        ]
        shape = (self.layers, size, b, hidden)
        self.h, self._h_next = np.zeros(shape, np.float32), np.empty(shape, np.float32)
        self.c = np.zeros(shape, np.float32) if self.lstm else None
        self._c_next = np.empty(shape, np.float32) if self.lstm else None
        self.sum = np.zeros((size, b, hidden), np.float32) if pooled else None
        self._sum_next = np.empty((size, b, hidden), np.float32) if pooled else None
        self._gi = np.empty((size, b, gates), np.float32)
        self._gh = np.empty((max(size - 1, 0), b, gates), np.float32)
        self._scratch = np.empty(size * b * (5 if self.lstm else 3) * hidden, np.float32)

    def push(self, x: np.ndarray, real: np.ndarray | None = None) -> None:
        """Advance every state by x (b, d); rows where `real` is False keep their state (padding)."""
        b, size = x.shape[0], self.size
        h, c, new_h, new_c = self.h, self.c, self._h_next, self._c_next
        inp: np.ndarray = x
        for layer, (w_ih_t, b_ih, w_hh_t, b_hh) in enumerate(self.weights):
            rows = 1 if layer == 0 else size  # layer 0: one input product per stream, shared by its states
            gi = self._gi[:rows]
            np.matmul(inp, w_ih_t, out=gi.reshape(rows * b, -1))
            gh = self._gh
            np.matmul(h[layer, :-1].reshape((size - 1) * b, -1), w_hh_t, out=gh.reshape((size - 1) * b, -1))
            if self.lstm:
                assert c is not None and new_c is not None
                lstm_step(gi, b_ih, gh, b_hh, h[layer], c[layer], new_h[layer], new_c[layer], self._scratch)
            else:
                gru_step(gi, b_ih, gh, b_hh, h[layer], new_h[layer], self._scratch)
            inp = new_h[layer].reshape(size * b, -1)
        new_sum = self._sum_next
        if new_sum is not None and self.sum is not None:
            np.add(self.sum[:-1], new_h[-1, 1:], out=new_sum[1:])
            new_sum[0] = new_h[-1, 0]
        if real is not None and not real.all():
            keep = ~real
            new_h[:, :, keep] = h[:, :, keep]
            if new_c is not None and c is not None:
                new_c[:, :, keep] = c[:, :, keep]
            if new_sum is not None and self.sum is not None:
                new_sum[:, keep] = self.sum[:, keep]
        self.h, self._h_next = new_h, h
        self.c, self._c_next = new_c, c
        self.sum, self._sum_next = new_sum, self.sum

    def prime(self, window: _NumpyWindow) -> None:
        for column in range(window.ctx.shape[1]):
            real = window.mask[:, column]
            if real.any():
                self.push(window.ctx[:, column], real)

    def covering(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        age = np.maximum(np.minimum(lengths, self.size), 1) - 1  # np.clip's wrapper costs more than the work
        rows = np.arange(len(age))
        return self.h[-1, age, rows], self.sum[age, rows] if self.sum is not None else None


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
            out = out + self.window.newest
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
