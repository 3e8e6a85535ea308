"""The LVM's sampler: the flow-matching draw around the LVM's mean, its training and its use in generation."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.config import DualPathConfig, SamplerConfig
from dualpath.corpus.pairs import ContextPairs, PairSplit
from dualpath.errors import CheckpointError, DualPathError, ModelInputError
from dualpath.models.heuristics import normalize_rows
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.sampler import LVMSampler, load_lvm_sampler, sampler_dir, weights_digest
from dualpath.training.sampler import train_sampler
from test_cli_errors import assert_one_line_error, run_dualpath, run_side_by_side

DIM = 16
SMALL = SamplerConfig(hidden=32, layers=2, ode_steps=8, epochs=1)


def unit_rows(n: int, seed: int) -> np.ndarray:
    return normalize_rows(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def small_sampler(scale: float = 0.05) -> LVMSampler:
    torch.manual_seed(0)
    return LVMSampler.build(DIM, SMALL, scale, "test-encoder", "digest")


def test_temperature_zero_is_the_mean_and_a_draw_is_a_unit_vector_off_it() -> None:
    sampler = small_sampler()
    mean, last, noise = unit_rows(5, 0), unit_rows(5, 1), np.random.default_rng(2).normal(size=(5, DIM))
    np.testing.assert_array_equal(sampler.sample(mean, last, noise, temperature=0.0), mean)
    draw = sampler.sample(mean, last, noise, temperature=1.0)
    np.testing.assert_allclose(np.linalg.norm(draw, axis=1), 1.0, atol=1e-5)
    assert (np.einsum("nd,nd->n", draw, mean) < 0.9999).all()
    # The same noise gives the same draw; other noise another one.
    np.testing.assert_array_equal(sampler.sample(mean, last, noise), draw)
    assert not np.allclose(sampler.sample(mean, last, noise + 1.0), draw)


def test_the_step_count_refines_the_same_flow() -> None:
    """Fewer Euler steps integrate the same velocity field coarser: closer to a fine draw as steps grow,
    and a count below one is refused in one line."""
    sampler = small_sampler(scale=0.3)
    mean, last, noise = unit_rows(64, 0), unit_rows(64, 1), np.random.default_rng(2).normal(size=(64, DIM))
    fine = sampler.sample(mean, last, noise, 1.0, steps=64)
    gaps = [float(np.mean(1 - np.einsum("nd,nd->n", sampler.sample(mean, last, noise, 1.0, steps=k), fine)))
            for k in (1, 4, 16)]
    assert gaps[0] > gaps[1] > gaps[2] >= 0
    np.testing.assert_array_equal(sampler.sample(mean, last, noise, 1.0), sampler.sample(mean, last, noise, 1.0, 8))
    with pytest.raises(ModelInputError, match="at least one Euler step"):
        sampler.sample(mean, last, noise, 1.0, steps=0)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    temperature=st.floats(0.0, 2.0),
    scale=st.floats(0.01, 1.0),
)
def test_draws_are_finite_unit_rows_and_each_row_depends_only_on_its_own_inputs(rows, seed, temperature, scale):
    sampler = small_sampler(scale)
    mean, last = unit_rows(rows, seed), unit_rows(rows, seed + 1)
    noise = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    draws = sampler.sample(mean, last, noise, temperature)
    assert draws.shape == (rows, DIM) and np.isfinite(draws).all()
    np.testing.assert_allclose(np.linalg.norm(draws, axis=1), 1.0, atol=1e-5)
    alone = sampler.sample(mean[-1:], last[-1:], noise[-1:], temperature)
    np.testing.assert_allclose(alone[0], draws[-1], atol=1e-5)


def test_wrong_shapes_are_refused_in_one_line() -> None:
    sampler = small_sampler()
    with pytest.raises(ModelInputError, match=r"shape \(b, 16\)"):
        sampler.sample(unit_rows(3, 0), unit_rows(2, 1), np.zeros((3, DIM)))
    with pytest.raises(ModelInputError):
        sampler.sample(unit_rows(3, 0)[:, :8], unit_rows(3, 1)[:, :8], np.zeros((3, 8)))
    with pytest.raises(ValueError, match="scale"):
        LVMSampler.build(DIM, SMALL, 0.0, "test-encoder", "digest")


def test_checkpoint_round_trip_draws_the_same_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    sampler = small_sampler()
    sampler.save(tmp_path / "sampler")
    loaded = LVMSampler.load(tmp_path / "sampler", expected_dim=DIM, expected_encoder="test-encoder")
    mean, last, noise = unit_rows(4, 0), unit_rows(4, 1), np.random.default_rng(3).normal(size=(4, DIM))
    np.testing.assert_array_equal(loaded.sample(mean, last, noise), sampler.sample(mean, last, noise))
    with pytest.raises(CheckpointError, match="8-d"):
        LVMSampler.load(tmp_path / "sampler", expected_dim=8)
    config = json.loads((tmp_path / "sampler" / "config.json").read_text())
    del config["scale"]
    (tmp_path / "sampler" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="incomplete or invalid"):
        LVMSampler.load(tmp_path / "sampler")


def two_mode_data(n: int, seed: int) -> tuple[np.ndarray, PairSplit]:
    """Documents of two concepts: the first a random unit vector, the second it pushed along +e0 or -e0
    (by a coin flip). The best mean is the first concept itself; the truth has two modes around it."""
    rng = np.random.default_rng(seed)
    first = unit_rows(n, seed)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    second = normalize_rows(first + 0.6 * sign * np.eye(DIM, dtype=np.float32)[0]).astype(np.float32)
    vectors = np.empty((2 * n, DIM), np.float32)
    vectors[0::2], vectors[1::2] = first, second

    def pairs(docs: np.ndarray) -> ContextPairs:
        return ContextPairs(context=(2 * docs)[:, None], target=2 * docs + 1, doc=docs)

    docs = np.arange(n)
    split = PairSplit(
        train=pairs(docs[: n - 64]),
        heldout=pairs(docs[n - 64 :]),
        heldout_docs=frozenset(f"d{i}" for i in docs[n - 64 :]),
        doc_ids=tuple(f"d{i}" for i in docs),
    )
    return vectors, split


def test_training_learns_the_spread_the_mean_cannot_show(tmp_path: Path) -> None:
    vectors, split = two_mode_data(1024, 0)
    # An LVM that predicts the context's mean: the mean of the two modes, exactly (residual, zero head).
    cfg = DualPathConfig.from_dict(
        {"lvm": {"hidden": 16, "residual": "mean"}, "split": {"context": 1},
         "sampler": {"hidden": 128, "layers": 3, "epochs": 30, "lr": 3e-3, "batch_size": 128}},
        source="test",
    )
    lvm = LatentVectorModel.build(DIM, cfg.lvm, 1, "test-encoder")
    result = train_sampler(vectors, split, lvm, cfg, "test-encoder", tmp_path / "sampler")
    first, last = result.history[0].metrics, result.history[-1].metrics
    assert last["heldout_loss"] < 0.8 * first["heldout_loss"]
    sampler = LVMSampler.load(tmp_path / "sampler")
    assert sampler.lvm_digest == weights_digest(lvm.net)
    # Draws for held-out contexts land on either side of the mean along e0, as the truth does.
    held = vectors[split.heldout.context[:, 0]]
    noise = np.random.default_rng(1).normal(size=held.shape)
    along = (sampler.sample(held, held, noise) - held)[:, 0]
    assert (along > 0.15).mean() > 0.25 and (along < -0.15).mean() > 0.25
    # Resuming a finished run trains nothing more and keeps its history.
    again = train_sampler(vectors, split, lvm, cfg, "test-encoder", tmp_path / "sampler", resume=True)
    assert again.resumed_from == cfg.sampler.epochs and len(again.history) == cfg.sampler.epochs


def test_a_sampler_of_another_lvm_is_left_out_with_a_warning(tmp_path: Path, caplog) -> None:
    cfg = DualPathConfig.from_dict({"lvm": {"hidden": 16}}, source="test")
    torch.manual_seed(0)
    lvm = LatentVectorModel.build(DIM, cfg.lvm, 3, "test-encoder")
    out = tmp_path / "lvm"
    lvm.save(out / "best")
    LVMSampler.build(DIM, SMALL, 0.05, "test-encoder", weights_digest(lvm.net)).save(sampler_dir(out))
    assert load_lvm_sampler(out / "best", lvm.net, DIM, "test-encoder", "cpu") is not None
    torch.manual_seed(1)
    other = LatentVectorModel.build(DIM, cfg.lvm, 3, "test-encoder")
    with caplog.at_level(logging.WARNING, logger="dualpath"):
        assert load_lvm_sampler(out, other.net, DIM, "test-encoder", "cpu") is None
    assert "trained for another LVM" in caplog.text
    assert load_lvm_sampler(tmp_path / "nothing", lvm.net, DIM, "test-encoder", "cpu") is None


# -- in generation, on the trained test bank ---------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(trained_bank_path):
    from dualpath.pipeline.generator import Generator

    g = Generator.from_bank(trained_bank_path)
    yield g
    g.close()


PROMPT = "The Amazon is the largest rainforest on Earth. It spans nine countries."


def lvm_vectors(generator, **kwargs) -> np.ndarray:
    return np.stack([s.lvm_vector for s in generator.generate(PROMPT, steps=4, **kwargs)])


def test_training_the_lvm_trains_its_sampler_and_generation_draws_with_it(generator) -> None:
    assert generator.sampler is not None
    assert generator.sampler.lvm_digest == weights_digest(generator.lvm.net)
    drawn = lvm_vectors(generator, seed=3)
    # A seed repeats a run exactly; another seed draws other vectors.
    np.testing.assert_array_equal(lvm_vectors(generator, seed=3), drawn)
    assert not np.allclose(lvm_vectors(generator, seed=4), drawn)
    # Temperature 0 is the LVM's mean: the generator without its sampler gives the same steps.
    mean = lvm_vectors(generator, seed=3, lvm_temperature=0.0)
    sampler, generator.sampler = generator.sampler, None
    try:
        np.testing.assert_allclose(lvm_vectors(generator, seed=3), mean, atol=1e-6)
    finally:
        generator.sampler = sampler
    assert not np.allclose(mean, drawn)
    with pytest.raises(DualPathError, match="lvm_temperature"):
        lvm_vectors(generator, lvm_temperature=3.0)


def test_generation_draws_with_its_configured_step_count(generator) -> None:
    """`generation.sampler_steps` is the draw's Euler step count: one step draws other vectors than the
    default, from the same seed."""
    default = lvm_vectors(generator, seed=3)
    cfg = generator.cfg
    generator.cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"sampler_steps": 1})})
    try:
        coarse = lvm_vectors(generator, seed=3)
    finally:
        generator.cfg = cfg
    assert not np.allclose(coarse[0], default[0])
    assert float(coarse[0] @ default[0]) > 0.9


def test_a_batch_draws_what_each_stream_draws_alone(generator) -> None:
    prompts = [PROMPT, "Chess is a board game for two players. It is played on a square board."]
    runs = generator.generate_batch(prompts, steps=3, seed=7)
    for i, prompt in enumerate(prompts):
        alone = list(generator.generate(prompt, steps=3, seed=7 + i))
        np.testing.assert_allclose(
            np.stack([s.lvm_vector for s in runs[i]]), np.stack([s.lvm_vector for s in alone]), atol=1e-4
        )
        assert [s.text_concept_id for s in runs[i]] == [s.text_concept_id for s in alone]


def test_cli_lvm_temperature_and_its_bounds(trained_bank_path) -> None:
    def args(*given: str) -> tuple[str, ...]:
        return ("generate", "--bank", str(trained_bank_path), "--steps", "3", "--json", *given, PROMPT)

    mean, drawn, again, too_wide = run_side_by_side(
        args("--lvm-temperature", "0"), args("--lvm-temperature", "1", "--seed", "5"),
        args("--lvm-temperature", "1", "--seed", "5"), args("--lvm-temperature", "5"),
    )
    assert mean.returncode == 0 and drawn.returncode == 0, mean.stderr + drawn.stderr

    def steps(proc: subprocess.CompletedProcess) -> list[dict]:
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        return [{k: v for k, v in r.items() if "latency" not in k} for r in records]

    assert len(steps(drawn)) == 3
    assert steps(drawn) == steps(again)
    assert_one_line_error(too_wide, "--lvm-temperature")


def test_integration_equals_euler_steps_of_the_velocity_field() -> None:
    sampler = small_sampler()
    mean, last = torch.from_numpy(unit_rows(4, 0)), torch.from_numpy(unit_rows(4, 1))
    x0 = torch.from_numpy(np.random.default_rng(2).normal(size=(4, DIM)).astype(np.float32))
    with torch.no_grad():
        x = x0.clone()
        for j in range(5):
            x = x + sampler.net(x, torch.full((4,), j / 5), mean, last) / 5
        torch.testing.assert_close(sampler.net.integrate(x0, mean, last, 5), x, atol=1e-5, rtol=1e-5)


def test_a_corrupt_sampler_is_a_one_line_error_that_says_what_to_do(trained_bank_path, tmp_path) -> None:
    bank = tmp_path / "bank"
    shutil.copytree(trained_bank_path, bank)
    (sampler_dir(bank / "models" / "lvm") / "best" / "model.safetensors").write_bytes(b"not safetensors")
    proc = run_dualpath("generate", "--bank", str(bank), "--steps", "2", PROMPT)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err, err
    # The LVM loaded (its log line comes first); the error is one line that says what to do.
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "corrupt" in last, err
    assert "dualpath train lvm" in last and "sampler/ folder" in last


def test_the_numpy_draw_equals_the_torch_integration() -> None:
    """On the CPU `sample` integrates in numpy (models.sampler.integrate_numpy); the torch integration (the
    GPU path) gives the same draw within float tolerance."""
    from dualpath.models.sampler import integrate_numpy

    sampler = small_sampler()
    mean, last = unit_rows(6, 0), unit_rows(6, 1)
    x0 = np.random.default_rng(3).normal(size=(6, DIM)).astype(np.float32)
    with torch.no_grad():
        expected = sampler.net.integrate(torch.from_numpy(x0), torch.from_numpy(mean), torch.from_numpy(last), 8)
    np.testing.assert_allclose(integrate_numpy(sampler.net, x0, mean, last, 8), expected.numpy(), atol=1e-5)
    draw = sampler.sample(mean, last, x0)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(torch.from_numpy(mean) + sampler.scale * expected, dim=-1)
    np.testing.assert_allclose(draw, reference.numpy(), atol=1e-5)


def test_the_numpy_draw_follows_the_nets_updates_and_moves() -> None:
    """The CPU draw reads the net's parameters through views kept from draw to draw: an in-place update
    (an optimiser step) is seen, and a net whose storage moved (a dtype round trip) is viewed afresh."""
    sampler = small_sampler()
    mean, last = unit_rows(4, 0), unit_rows(4, 1)
    noise = np.random.default_rng(5).normal(size=(4, DIM)).astype(np.float32)

    def reference() -> np.ndarray:
        with torch.no_grad():
            x = sampler.net.integrate(torch.from_numpy(noise), torch.from_numpy(mean), torch.from_numpy(last), 8)
            return torch.nn.functional.normalize(torch.from_numpy(mean) + sampler.scale * x, dim=-1).numpy()

    first = sampler.sample(mean, last, noise)
    np.testing.assert_allclose(first, reference(), atol=1e-5)
    with torch.no_grad():
        for p in sampler.net.parameters():
            p.mul_(1.5)
    updated = sampler.sample(mean, last, noise)
    assert not np.allclose(updated, first, atol=1e-4)
    np.testing.assert_allclose(updated, reference(), atol=1e-5)
    sampler.net.double().float()  # new storage for every parameter, the same values
    with torch.no_grad():
        for p in sampler.net.parameters():
            p.mul_(0.5)
    np.testing.assert_allclose(sampler.sample(mean, last, noise), reference(), atol=1e-5)
