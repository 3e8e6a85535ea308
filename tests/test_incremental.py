"""Per-stream model state (models/incremental.py) equals the full-window path at every step.

Streams start from prompts of different lengths (shorter and longer than the window) and are fed
random concepts for more steps than the window holds, so the comparison covers the window filling
up and sliding; the reference is `predict` / `encode_queries` on each stream's last C concepts,
left-padded to one batch, which is what generation reads.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dualpath.config import LVMConfig, TowerConfig
from dualpath.models.heuristics import normalize_rows
from dualpath.models.incremental import WindowStream, _gelu, lvm_stream, tower_stream
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.runtime import torch_threads

DIM = 16
CONTEXT = 4
TOLERANCE = 2e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):
        yield


def perturbed(net: torch.nn.Module, seed: int) -> None:
    """Random non-zero weights everywhere (a residual model's head starts at zero, hiding its backbone)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def lvm(arch: str, residual: str, layers: int) -> LatentVectorModel:
    cfg = LVMConfig(arch=arch, hidden=32, layers=layers, heads=4, residual=residual, dropout=0.0)
    model = LatentVectorModel.build(DIM, cfg, CONTEXT, "test-encoder")
    perturbed(model.net, layers)
    return model


def tower(kind: str, residual: str) -> QueryTower:
    model = QueryTower(TowerConfig(tower=kind, hidden=32, layers=2, heads=4, residual=residual, dropout=0.0), DIM, "e")
    perturbed(model.net, 1)
    return model


def left_padded(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(w) for w in windows)
    ctx = np.zeros((len(windows), width, DIM), np.float32)
    mask = np.zeros((len(windows), width), bool)
    for i, w in enumerate(windows):
        ctx[i, width - len(w) :], mask[i, width - len(w) :] = w, True
    return ctx, mask


def run_both(full, make_stream, lengths: list[int], steps: int, seed: int) -> float:
    """Largest difference between the stream's outputs and the full path's over `steps` pushes."""
    rng = np.random.default_rng(seed)
    contexts = [normalize_rows(rng.normal(size=(n, DIM))) for n in lengths]
    stream = make_stream(contexts)
    worst = 0.0
    for _ in range(steps + 1):
        ctx, mask = left_padded([c[-CONTEXT:] for c in contexts])
        expected = full(ctx, mask)
        got = stream.output()
        assert got.shape == expected.shape and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - expected).max()))
        new = normalize_rows(rng.normal(size=(len(contexts), DIM)))
        stream.push(new)
        contexts = [np.concatenate([c, v[None]]) for c, v in zip(contexts, new, strict=True)]
    return worst


@pytest.mark.parametrize("arch", ["gru", "lstm", "transformer"])
@pytest.mark.parametrize("residual", ["none", "last", "mean"])
@pytest.mark.parametrize("layers", [1, 2])
def test_lvm_stream_equals_the_full_window_at_every_step(arch: str, residual: str, layers: int) -> None:
    model = lvm(arch, residual, layers)
    worst = run_both(model.predict, lambda c: lvm_stream(model, c), [1, 3, 4, 7, 2], steps=2 * CONTEXT, seed=0)
    assert worst < TOLERANCE


@pytest.mark.parametrize("kind", ["gru", "lstm", "bigru", "mlp", "attn"])
@pytest.mark.parametrize("residual", ["none", "mean", "last"])
def test_tower_stream_equals_the_full_window_at_every_step(kind: str, residual: str) -> None:
    model = tower(kind, residual)
    worst = run_both(
        model.encode_queries, lambda c: tower_stream(model, c, CONTEXT), [2, 1, 5, 4], steps=2 * CONTEXT, seed=1
    )
    assert worst < TOLERANCE


@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(["gru", "lstm", "transformer"]),
    lengths=st.lists(st.integers(1, 3 * CONTEXT), min_size=1, max_size=5),
    steps=st.integers(0, 3 * CONTEXT),
    seed=st.integers(0, 2**16),
)
def test_any_prompt_lengths_and_steps_agree(arch: str, lengths: list[int], steps: int, seed: int) -> None:
    model = _models[arch]
    assert run_both(model.predict, lambda c: lvm_stream(model, c), lengths, steps, seed) < TOLERANCE


_models = {arch: lvm(arch, "mean", 2) for arch in ("gru", "lstm", "transformer")}


def test_only_the_kinds_without_an_incremental_form_reread_the_window() -> None:
    windows = [np.ones((2, DIM), np.float32)]
    assert not isinstance(lvm_stream(lvm("gru", "none", 1), windows), WindowStream)
    assert not isinstance(tower_stream(tower("lstm", "none"), windows, CONTEXT), WindowStream)
    assert isinstance(tower_stream(tower("bigru", "none"), windows, CONTEXT), WindowStream)
    assert isinstance(lvm_stream(lvm("gru", "none", 1), windows, incremental=False), WindowStream)


@pytest.mark.parametrize("arch", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_the_numpy_kernels_equal_the_torch_streams(arch: str, layers: int) -> None:
    """On the CPU the recurrent streams run as numpy kernels; the torch streams (the GPU path) give the
    same outputs within float tolerance, step by step."""
    from dualpath.models.incremental import (
        _NumpyLVMStream,
        _NumpyTowerStream,
        _RecurrentLVMStream,
        _RecurrentTowerStream,
    )

    model, query = lvm(arch, "mean", layers), tower(arch, "last")
    rng = np.random.default_rng(layers)
    contexts = [normalize_rows(rng.normal(size=(n, DIM))) for n in (1, 3, 6)]
    pairs = [(_NumpyLVMStream(model, contexts), _RecurrentLVMStream(model, contexts)),
             (_NumpyTowerStream(query, contexts, CONTEXT), _RecurrentTowerStream(query, contexts, CONTEXT))]
    for _ in range(2 * CONTEXT):
        new = normalize_rows(rng.normal(size=(len(contexts), DIM)))
        for fast, reference in pairs:
            got = fast.output()
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, reference.output(), atol=TOLERANCE)
            fast.push(new)
            reference.push(new)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), approximate=st.sampled_from(["none", "tanh"]))
@example(seed=717673, approximate="none")
def test_the_numpy_gelu_is_torchs(seed: int, approximate: str) -> None:
    """The CPU streams run the LVM head's GELU in numpy: GELU's own values in float64, both of its forms,
    tails included, and torch's within torch's float32 error (up to 1.1e-6 in the exact form's negative tail,
    where seed 717673 found the two 1.04e-6 apart while numpy was 1.7e-11 from the truth)."""
    x = (np.random.default_rng(seed).normal(size=(3, 64)) * 6).astype(np.float32)
    expected = torch.nn.GELU(approximate=approximate)(torch.from_numpy(x)).numpy()
    got = _gelu(x.copy(), approximate)
    assert got.dtype == np.float32
    wide = x.astype(np.float64)
    if approximate == "tanh":
        truth = 0.5 * wide * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (wide + 0.044715 * wide**3)))
        np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-6)  # 1 + tanh cancels as torch's does
    else:
        truth = 0.5 * wide * scipy.special.erfc(-wide / math.sqrt(2.0))
        np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)


def _gates_as_ufuncs(cell: str, x: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, weights: list[np.ndarray]):
    """One layer of every state as plain numpy ufuncs on full products (the zero state's included): the float32
    arithmetic the compiled loops reproduce, σ in its tanh form."""
    w_ih, b_ih, w_hh, b_hh = weights
    hidden = h_prev.shape[-1]
    gi = x @ w_ih.T + b_ih
    gh = h_prev @ w_hh.T + b_hh

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return np.tanh(v * np.float32(0.5)) * np.float32(0.5) + np.float32(0.5)

    if cell == "gru":
        rz = sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
        r, z = rz[..., :hidden], rz[..., hidden:]
        n = np.tanh(gi[..., 2 * hidden :] + r * gh[..., 2 * hidden :])
        return (1.0 - z) * n + z * h_prev, None
    gates = gh + gi
    i, f = sigmoid(gates[..., :hidden]), sigmoid(gates[..., hidden : 2 * hidden])
    g, o = np.tanh(gates[..., 2 * hidden : 3 * hidden]), sigmoid(gates[..., 3 * hidden :])
    c = f * c_prev + i * g
    return o * np.tanh(c), c


@settings(max_examples=60, deadline=None)
@given(
    cell=st.sampled_from(["gru", "lstm"]),
    ages=st.integers(1, 6),
    streams=st.integers(1, 4),
    hidden=st.integers(1, 9),
    shared=st.booleans(),
    biased=st.booleans(),
    scale=st.sampled_from([0.01, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_the_compiled_gates_are_the_ufuncs_bit_for_bit(
    cell: str, ages: int, streams: int, hidden: int, shared: bool, biased: bool, scale: float, seed: int
) -> None:
    """models/cells.py's loops give every state of a ring step exactly what numpy's ufuncs give on the full
    products: with the input product shared by a stream's states or one per state, with biases or zeros, at
    saturating scales, and with the zero state's hidden product left out (age 0)."""
    from dualpath.models.cells import gru_step, lstm_step

    rng = np.random.default_rng(seed)
    width, dim = (3 if cell == "gru" else 4) * hidden, 5

    def f32(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = [f32(width, dim), f32(width) if biased else np.zeros(width, np.float32), f32(width, hidden),
               f32(width) if biased else np.zeros(width, np.float32)]
    x = f32(1 if shared else ages, streams, dim)
    h_old, c_old = np.tanh(f32(ages, streams, hidden)), f32(ages, streams, hidden)
    zero = np.zeros((1, streams, hidden), np.float32)
    h_prev, c_prev = np.concatenate([zero, h_old[:-1]]), np.concatenate([zero, c_old[:-1]])
    expected_h, expected_c = _gates_as_ufuncs(cell, x, h_prev, c_prev, weights)

    gi = x @ weights[0].T
    gh = h_old[:-1] @ weights[2].T
    h, c = np.full_like(h_old, np.nan), np.full_like(c_old, np.nan)
    scratch = np.full(ages * streams * 5 * hidden, np.nan, np.float32)
    if cell == "gru":
        gru_step(gi, weights[1], gh, weights[3], h_old, h, scratch)
    else:
        lstm_step(gi, weights[1], gh, weights[3], h_old, c_old, h, c, scratch)
        np.testing.assert_array_equal(c, expected_c)
    np.testing.assert_array_equal(h, expected_h)


def test_a_long_generation_keeps_the_window_mean_of_the_full_path() -> None:
    """The CPU streams keep a window's sum as a running float64 sum over hundreds of slides: it stays the
    full path's mean (no drift), for the LVM's residual and the tower's."""
    model, query = lvm("gru", "mean", 1), tower("gru", "mean")
    worst = run_both(model.predict, lambda c: lvm_stream(model, c), [1, 3, 6], steps=400, seed=3)
    worst = max(worst, run_both(query.encode_queries, lambda c: tower_stream(query, c, CONTEXT), [2, 5], 400, 4))
    assert worst < TOLERANCE
