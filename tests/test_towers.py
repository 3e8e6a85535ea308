"""Query towers: shapes, unit norm, padding invariance, the residual start, and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.config import TowerConfig
from dualpath.errors import CheckpointError, ModelInputError
from dualpath.models.heuristics import last_vector, mean_vector
from dualpath.models.towers import QueryTower
from dualpath.runtime import torch_threads

DIM = 16
KINDS = ["gru", "bigru", "lstm", "mlp", "attn"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):  # tiny models: a second thread only spins
        yield


def contexts(n: int, width: int, lengths: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded unit-vector contexts with the given real lengths."""
    rng = np.random.default_rng(seed)
    ctx = rng.normal(size=(n, width, DIM)).astype(np.float32)
    ctx /= np.linalg.norm(ctx, axis=-1, keepdims=True)
    mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
    ctx[~mask] = 0.0
    return ctx, mask


def trained_like(kind: str, residual: str = "none", seed: int = 0) -> QueryTower:
    """A tower with random (non-zero) weights everywhere, as after some training."""
    torch.manual_seed(seed)
    tower = QueryTower(TowerConfig(tower=kind, hidden=32, residual=residual, heads=4, dropout=0.0), DIM, "enc")
    with torch.no_grad():
        for p in tower.net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return tower


@pytest.mark.parametrize("kind", KINDS)
def test_queries_are_unit_norm_in_bank_dimension(kind: str) -> None:
    ctx, mask = contexts(9, 5, np.array([1, 2, 3, 4, 5, 5, 1, 3, 2]))
    queries = trained_like(kind).encode_queries(ctx, mask)
    assert queries.shape == (9, DIM) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("residual,heuristic", [("mean", mean_vector), ("last", last_vector)])
def test_untrained_residual_tower_is_its_heuristic(kind: str, residual: str, heuristic) -> None:
    ctx, mask = contexts(6, 4, np.array([1, 2, 3, 4, 4, 2]))
    tower = QueryTower(TowerConfig(tower=kind, hidden=32, residual=residual, heads=4), DIM, "enc")
    np.testing.assert_allclose(tower.encode_queries(ctx, mask), heuristic(ctx, mask), atol=1e-5)


TOWERS = {kind: trained_like(kind) for kind in KINDS}


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    extra=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_left_padding_never_changes_the_query(kind: str, lengths: list[int], extra: int, seed: int) -> None:
    ctx, mask = contexts(len(lengths), 5, np.array(lengths), seed)
    wider = np.concatenate([np.zeros((len(lengths), extra, DIM), np.float32), ctx], axis=1)
    wider_mask = np.concatenate([np.zeros((len(lengths), extra), bool), mask], axis=1)
    tower = TOWERS[kind]
    np.testing.assert_allclose(tower.encode_queries(ctx, mask), tower.encode_queries(wider, wider_mask), atol=1e-5)


def test_padding_values_are_ignored() -> None:
    ctx, mask = contexts(4, 5, np.array([1, 2, 3, 5]))
    noisy = ctx.copy()
    noisy[~mask] = 7.0  # garbage in padded slots must not leak into the query
    for tower in TOWERS.values():
        np.testing.assert_allclose(tower.encode_queries(ctx, mask), tower.encode_queries(noisy, mask), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind: str) -> None:
    tower = trained_like(kind, residual="mean")
    tower.save(tmp_path / "tower", {"epoch": 3})
    loaded = QueryTower.load(tmp_path / "tower", expected_dim=DIM, expected_encoder="enc")
    ctx, mask = contexts(5, 5, np.array([5, 4, 3, 2, 1]))
    np.testing.assert_array_equal(loaded.encode_queries(ctx, mask), tower.encode_queries(ctx, mask))
    assert loaded.cfg == tower.cfg and not loaded.net.training
    files = sorted(p.name for p in (tmp_path / "tower").iterdir())
    assert files == ["checksums.json", "config.json", "model.safetensors"]


def test_load_refuses_another_space(tmp_path) -> None:
    trained_like("gru").save(tmp_path / "tower")
    with pytest.raises(CheckpointError, match="16-d vectors but the bank holds 384-d"):
        QueryTower.load(tmp_path / "tower", expected_dim=384)
    with pytest.raises(CheckpointError, match="encoder 'enc'"):
        QueryTower.load(tmp_path / "tower", expected_dim=DIM, expected_encoder="other")


def test_load_refuses_non_tower_and_corrupt_checkpoints(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no trained model"):
        QueryTower.load(tmp_path)
    trained_like("gru").save(tmp_path / "tower")
    config_path = tmp_path / "tower" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "kind": "lvm"}))
    with pytest.raises(CheckpointError, match="not a query tower"):
        QueryTower.load(tmp_path / "tower")
    config_path.write_text(json.dumps({**config, "tower": {**config["tower"], "tower": "cnn"}}))
    with pytest.raises(CheckpointError, match="invalid"):
        QueryTower.load(tmp_path / "tower")
    config_path.write_text(json.dumps({**config, "tower": {**config["tower"], "retired_training_option": 1}}))
    QueryTower.load(tmp_path / "tower")  # training-only settings of other versions are ignored
    config_path.write_text(json.dumps({**config, "tower": {**config["tower"], "hidden": 64}}))
    with pytest.raises(CheckpointError, match="does not fit"):
        QueryTower.load(tmp_path / "tower")


def test_wrong_context_dimension_is_one_clear_error() -> None:
    with pytest.raises(ModelInputError, match="dimension 16"):
        trained_like("mlp").encode_queries(np.zeros((2, 3, 8), np.float32), np.ones((2, 3), bool))
