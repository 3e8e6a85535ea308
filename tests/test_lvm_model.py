"""The LVM networks and the LatentVectorModel wrapper, on their own (no bank needed).

Inputs are random unit vectors: these tests are about shapes, invariants and checkpoints, which
hold for any input. Training on real data is in test_lvm.py.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.config import LVMConfig
from dualpath.errors import CheckpointError
from dualpath.models.checkpoint import save_checkpoint
from dualpath.models.heuristics import last_vector, mean_vector, normalize_rows
from dualpath.models.lvm import LatentVectorModel

DIM = 16
ARCHS = ("gru", "lstm", "transformer")


def tiny(arch: str, residual: str = "none", context: int = 6, layers: int = 2) -> LatentVectorModel:
    cfg = LVMConfig(arch=arch, hidden=32, layers=layers, heads=4, residual=residual, dropout=0.0)
    return LatentVectorModel.build(DIM, cfg, context, "test-encoder")


@cache
def shared(arch: str) -> LatentVectorModel:
    """One model per architecture for the property tests (built once: hypothesis calls many times)."""
    return tiny(arch, context=8)


def contexts(n: int, width: int, lengths: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded contexts of random unit vectors with the given real lengths."""
    rng = np.random.default_rng(seed)
    ctx = normalize_rows(rng.normal(size=(n, width, DIM)))
    mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
    ctx[~mask] = 0.0
    return ctx, mask


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("residual", ["none", "last", "mean"])
def test_predictions_are_unit_norm_rows_of_the_bank_dimension(arch: str, residual: str) -> None:
    model = tiny(arch, residual)
    ctx, mask = contexts(9, 6, np.array([1, 2, 3, 4, 5, 6, 6, 1, 3]))
    pred = model.predict(ctx, mask)
    assert pred.shape == (9, DIM) and pred.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pred, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_prediction_does_not_depend_on_padding(arch: str, data: st.DataObject) -> None:
    """Extra PAD columns in front of a context never change its prediction (so rollout = batch eval)."""
    length = data.draw(st.integers(1, 4), label="length")
    extra = data.draw(st.integers(1, 4), label="extra padding")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    model = shared(arch)
    ctx, mask = contexts(3, length, np.full(3, length), seed)
    padded = np.concatenate([np.zeros((3, extra, DIM), np.float32), ctx], axis=1)
    padded_mask = np.concatenate([np.zeros((3, extra), bool), mask], axis=1)
    np.testing.assert_allclose(model.predict(ctx, mask), model.predict(padded, padded_mask), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_prediction_does_not_depend_on_the_rest_of_the_batch(arch: str) -> None:
    model = tiny(arch)
    ctx, mask = contexts(10, 6, np.array([6, 1, 2, 6, 3, 5, 4, 6, 2, 1]))
    together = model.predict(ctx, mask)
    alone = np.concatenate([model.predict(ctx[i : i + 1], mask[i : i + 1]) for i in range(10)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("residual", "baseline"), [("last", last_vector), ("mean", mean_vector)])
def test_an_untrained_residual_model_is_exactly_its_baseline(arch: str, residual: str, baseline) -> None:
    model = tiny(arch, residual)
    ctx, mask = contexts(8, 6, np.array([1, 2, 3, 4, 5, 6, 6, 2]))
    np.testing.assert_allclose(model.predict(ctx, mask), baseline(ctx, mask), atol=1e-6)


def test_a_transformer_reads_only_the_most_recent_concepts_it_was_built_for() -> None:
    model = tiny("transformer", context=4)
    ctx, mask = contexts(5, 7, np.full(5, 7))
    np.testing.assert_allclose(model.predict(ctx, mask), model.predict(ctx[:, -4:], mask[:, -4:]), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_rollout_feeds_each_prediction_back(arch: str) -> None:
    model = tiny(arch, context=3)
    start = normalize_rows(np.random.default_rng(1).normal(size=(2, DIM)))
    generated = model.rollout(start, 3)
    assert generated.shape == (3, DIM)
    np.testing.assert_allclose(generated[0], model.predict(start[None])[0], atol=1e-6)
    window = np.stack([start[1], generated[0], generated[1]])  # context 3: the oldest vector drops out
    np.testing.assert_allclose(generated[2], model.predict(window[None])[0], atol=1e-6)


def test_rollout_needs_a_context() -> None:
    with pytest.raises(ValueError, match="at least one"):
        tiny("gru").rollout(np.zeros((0, DIM), np.float32), 2)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip_bit_exactly(arch: str, tmp_path: Path) -> None:
    model = tiny(arch, "mean")
    for p in model.net.parameters():  # move off the zero-initialised head
        p.data.add_(0.01 * np.pi)
    model.save(tmp_path / "lvm")
    loaded = LatentVectorModel.load(tmp_path / "lvm", expected_dim=DIM, expected_encoder="test-encoder")
    for name, tensor in model.net.state_dict().items():
        assert tensor.equal(loaded.net.state_dict()[name]), name
    ctx, mask = contexts(4, 6, np.array([6, 2, 3, 1]))
    assert np.array_equal(model.predict(ctx, mask), loaded.predict(ctx, mask))
    assert loaded.config == json.loads((tmp_path / "lvm" / "config.json").read_text())
    assert (loaded.arch, loaded.dim, loaded.context) == (arch, DIM, 6)


def test_load_refuses_another_dimension_in_one_line(tmp_path: Path) -> None:
    tiny("gru").save(tmp_path / "lvm")
    with pytest.raises(CheckpointError, match="16-d vectors but the bank holds 384-d") as err:
        LatentVectorModel.load(tmp_path / "lvm", expected_dim=384)
    assert "\n" not in str(err.value)


def test_load_refuses_another_encoder(tmp_path: Path) -> None:
    tiny("gru").save(tmp_path / "lvm")
    with pytest.raises(CheckpointError, match="encoder"):
        LatentVectorModel.load(tmp_path / "lvm", expected_encoder="gtr-t5-base")


def test_load_refuses_what_is_not_an_lvm(tmp_path: Path) -> None:
    model = tiny("gru")
    save_checkpoint(tmp_path / "tower", model.net, {**model.config, "kind": "tower"})
    with pytest.raises(CheckpointError, match="not an LVM"):
        LatentVectorModel.load(tmp_path / "tower")
    with pytest.raises(CheckpointError, match="no trained model"):
        LatentVectorModel.load(tmp_path / "missing")


def test_load_refuses_weights_of_another_shape(tmp_path: Path) -> None:
    small = tiny("gru")
    save_checkpoint(tmp_path / "lvm", small.net, {**small.config, "hidden": 64})
    with pytest.raises(CheckpointError, match="does not fit"):
        LatentVectorModel.load(tmp_path / "lvm")


def test_predict_checks_the_vector_dimension() -> None:
    with pytest.raises(ValueError, match=r"\(n, C, 16\)"):
        tiny("gru").predict(np.zeros((2, 3, 8), np.float32))
