"""Compiled loops (numba) of the recurrent cells' gate arithmetic, for the CPU streams of models/incremental.py.

A ring step of b streams (incremental.py) makes two BLAS products per layer, then the gates' elementwise
work on (C, b, 3H) or (C, b, 4H) arrays. As numpy ufuncs that work was a dozen passes over megabytes at 256
streams, several into fresh arrays, and cost about as much as the products; for one stream it was a dozen
calls of a microsecond each. Here it is three compiled passes, with numpy's tanh between them: numba on
these wheels has no vector math library, so a compiled tanh would be a scalar libm call per value, several
times slower than numpy's SIMD loop.

Each pass is numpy's float32 ufunc arithmetic in the same order (PyTorch's gate order; σ(x) as
tanh(x/2)/2 + 1/2, which cannot overflow), so a step's states are what the ufuncs give on the same products,
to the bit: tests/test_incremental.py holds them. The state started at the newest concept
(age 0) starts from zero, so its hidden product is zero and is not made: the caller passes the products
of the other ages.

The loops compile once into numba's cache (`warm`, which `make setup` runs beside the decider's).

    gru_step(gi, b_ih, gh, b_hh, h_old, out, scratch)          one GRU layer for every state of the ring
    lstm_step(gi, b_ih, gh, b_hh, h_old, c_old, h, c, scratch)  one LSTM layer
"""

from __future__ import annotations

import time

import numba
import numpy as np

# cache: compiled once per installed copy, then loaded by each process (as decider/kernels.py).
_compiled = numba.njit(cache=True, nogil=True, error_model="numpy")

HALF, ONE = np.float32(0.5), np.float32(1.0)


# Each loop runs over views that start at the column it reads (x[lo:hi], not x[lo + j]): so written, LLVM
# vectorises the inner loops, which with offsets it did not (3x slower).


@_compiled
def _half_sums(gi: np.ndarray, b_ih: np.ndarray, gh: np.ndarray, b_hh: np.ndarray, lo: int, hi: int,
               halved: bool, out: np.ndarray) -> None:
    """out[a, s] = (gi + b_ih) + (gh + b_hh) over gate columns lo..hi-1, halved (σ's argument) or not. gi is
    (1, b, G) (one input product per stream, shared by its states) or (C, b, G); gh holds the hidden products
    of ages 1..C-1 (age 0's state is zero: its gate is b_hh alone)."""
    scale = HALF if halved else ONE  # x * 1 is x exactly: one loop for both
    bi, bh = b_ih[lo:hi], b_hh[lo:hi]
    for a in range(out.shape[0]):
        ga = 0 if gi.shape[0] == 1 else a
        for s in range(out.shape[1]):
            row, x = out[a, s], gi[ga, s, lo:hi]
            if a == 0:
                for j in range(hi - lo):
                    row[j] = ((x[j] + bi[j]) + bh[j]) * scale
            else:
                y = gh[a - 1, s, lo:hi]
                for j in range(hi - lo):
                    row[j] = ((x[j] + bi[j]) + (y[j] + bh[j])) * scale


@_compiled
def _gru_candidate(gi: np.ndarray, b_ih: np.ndarray, gh: np.ndarray, b_hh: np.ndarray, rz: np.ndarray,
                   n: np.ndarray) -> None:
    """n = (gi_n + b_ih_n) + r (gh_n + b_hh_n), r = σ from rz's tanh(x/2) (tanh still to be taken of n)."""
    ages, streams, hidden = n.shape
    bi, bh = b_ih[2 * hidden :], b_hh[2 * hidden :]
    for a in range(ages):
        ga = 0 if gi.shape[0] == 1 else a
        for s in range(streams):
            x, t, row = gi[ga, s, 2 * hidden :], rz[a, s, :hidden], n[a, s]
            if a == 0:
                for j in range(hidden):
                    row[j] = (x[j] + bi[j]) + (t[j] * HALF + HALF) * bh[j]
            else:
                y = gh[a - 1, s, 2 * hidden :]
                for j in range(hidden):
                    row[j] = (x[j] + bi[j]) + (t[j] * HALF + HALF) * (y[j] + bh[j])


@_compiled
def _gru_blend(rz: np.ndarray, n: np.ndarray, h_old: np.ndarray, out: np.ndarray) -> None:
    """h' = (1 - z) n + z h, z = σ from rz's second half, h the state one age younger (zero at age 0)."""
    ages, streams, hidden = out.shape
    for a in range(ages):
        for s in range(streams):
            t, m, row = rz[a, s, hidden:], n[a, s], out[a, s]
            if a == 0:
                for j in range(hidden):
                    z = t[j] * HALF + HALF
                    row[j] = (ONE - z) * m[j] + z * np.float32(0.0)
            else:
                h = h_old[a - 1, s]
                for j in range(hidden):
                    z = t[j] * HALF + HALF
                    row[j] = (ONE - z) * m[j] + z * h[j]


@_compiled
def _lstm_cell(gates: np.ndarray, c_old: np.ndarray, c: np.ndarray) -> None:
    """c' = f c + i g from the gates' tanh (i, f, o halved; g not), c the state one age younger (zero at 0)."""
    ages, streams, hidden = c.shape
    for a in range(ages):
        for s in range(streams):
            t, row = gates[a, s], c[a, s]
            i, f, g = t[:hidden], t[hidden : 2 * hidden], t[2 * hidden : 3 * hidden]
            if a == 0:
                for j in range(hidden):
                    row[j] = (f[j] * HALF + HALF) * np.float32(0.0) + (i[j] * HALF + HALF) * g[j]
            else:
                previous = c_old[a - 1, s]
                for j in range(hidden):
                    row[j] = (f[j] * HALF + HALF) * previous[j] + (i[j] * HALF + HALF) * g[j]


@_compiled
def _lstm_output(gates: np.ndarray, tanh_c: np.ndarray, h: np.ndarray) -> None:
    """h' = o tanh(c')."""
    ages, streams, hidden = h.shape
    for a in range(ages):
        for s in range(streams):
            o, m, row = gates[a, s, 3 * hidden :], tanh_c[a, s], h[a, s]
            for j in range(hidden):
                row[j] = (o[j] * HALF + HALF) * m[j]


def gru_step(gi: np.ndarray, b_ih: np.ndarray, gh: np.ndarray, b_hh: np.ndarray, h_old: np.ndarray,
             out: np.ndarray, scratch: np.ndarray) -> None:
    """One GRU layer (torch.nn.GRU's r, z, n) for every state of a ring: `out` (C, b, H) from the states
    `h_old` (C, b, H) one step younger, the input products gi ((1 or C), b, 3H) and the hidden products gh
    (C - 1, b, 3H) of ages 1..C-1, before their biases. `scratch` is float32 of at least C·b·3H values."""
    ages, streams, hidden = out.shape
    rz = scratch[: ages * streams * 2 * hidden].reshape(ages, streams, 2 * hidden)
    n = scratch[ages * streams * 2 * hidden : ages * streams * 3 * hidden].reshape(ages, streams, hidden)
    _half_sums(gi, b_ih, gh, b_hh, 0, 2 * hidden, True, rz)
    np.tanh(rz, out=rz)
    _gru_candidate(gi, b_ih, gh, b_hh, rz, n)
    np.tanh(n, out=n)
    _gru_blend(rz, n, h_old, out)


def lstm_step(gi: np.ndarray, b_ih: np.ndarray, gh: np.ndarray, b_hh: np.ndarray, h_old: np.ndarray,
              c_old: np.ndarray, h: np.ndarray, c: np.ndarray, scratch: np.ndarray) -> None:
    """One LSTM layer (torch.nn.LSTM's i, f, g, o) for every state of a ring, as `gru_step`: h and c (C, b, H)
    from the states one step younger; `scratch` is float32 of at least C·b·5H values."""
    ages, streams, hidden = h.shape
    gates = scratch[: ages * streams * 4 * hidden].reshape(ages, streams, 4 * hidden)
    tanh_c = scratch[ages * streams * 4 * hidden : ages * streams * 5 * hidden].reshape(ages, streams, hidden)
    # i, f and o halved (σ's argument), g not
    _half_sums(gi, b_ih, gh, b_hh, 0, 2 * hidden, True, gates[..., : 2 * hidden])
    _half_sums(gi, b_ih, gh, b_hh, 2 * hidden, 3 * hidden, False, gates[..., 2 * hidden : 3 * hidden])
    _half_sums(gi, b_ih, gh, b_hh, 3 * hidden, 4 * hidden, True, gates[..., 3 * hidden :])
    np.tanh(gates, out=gates)
    _lstm_cell(gates, c_old, c)
    np.tanh(c, out=tanh_c)
    _lstm_output(gates, tanh_c, h)


ENTRY_POINTS = (_half_sums, _gru_candidate, _gru_blend, _lstm_cell, _lstm_output)


def warm() -> float:
    """Compile the loops, or load them from numba's cache, for the types a ring step passes them (float32,
    C order; gate blocks as views); returns the seconds it took."""
    start = time.perf_counter()
    ages, streams, hidden = 2, 1, 2
    rng = np.random.default_rng(0)
    for gates in (3, 4):  # GRU, LSTM
        b_ih, b_hh = np.zeros(gates * hidden, np.float32), np.zeros(gates * hidden, np.float32)
        gi = rng.standard_normal((ages, streams, gates * hidden)).astype(np.float32)
        gh = rng.standard_normal((ages - 1, streams, gates * hidden)).astype(np.float32)
        h_old, c_old = np.zeros((ages, streams, hidden), np.float32), np.zeros((ages, streams, hidden), np.float32)
        h, c = np.empty_like(h_old), np.empty_like(c_old)
        scratch = np.empty(ages * streams * 5 * hidden, np.float32)
        if gates == 3:
            gru_step(gi, b_ih, gh, b_hh, h_old, h, scratch)
        else:
            lstm_step(gi, b_ih, gh, b_hh, h_old, c_old, h, c, scratch)
    return time.perf_counter() - start
