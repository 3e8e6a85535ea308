"""LVM training, evaluation and CLI on a small real bank (the `wiki_bank` fixture: ~300 articles).

Models are tiny and train for 1-3 epochs: these tests check behaviour (loss goes down, resume is
exact, errors are clear), not quality. Quality is measured in bench/bench_lvm.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from dualpath.cli.main import main
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import gather_context, split_pairs
from dualpath.errors import CheckpointError
from dualpath.evaluation.lvm import (
    COLUMNS,
    contrastive_accuracy,
    evaluate_bank,
    evaluate_lvm,
    max_context_cosine,
)
from dualpath.models.checkpoint import BEST, LAST
from dualpath.models.heuristics import mean_vector, normalize_rows
from dualpath.models.lvm import LatentVectorModel
from dualpath.runtime import torch_threads
from dualpath.training.loop import run_training
from dualpath.training.lvm import LVMTrainingTask, train_lvm
from dualpath.training.schedule import learning_rate

TINY = {"hidden": 32, "batch_size": 64, "lr": 3e-3, "dropout": 0.1, "threads": 1}


def tiny_config(**lvm: object) -> DualPathConfig:
    return DualPathConfig.from_dict({"lvm": {**TINY, **lvm}, "split": {"context": 4, "heldout_fraction": 0.2}})


def bank_split(bank, cfg: DualPathConfig):
    return split_pairs(bank.documents(), cfg.split.context, cfg.split.heldout_fraction, cfg.split.seed)


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_training_reduces_heldout_loss(wiki_bank, arch: str, tmp_path: Path) -> None:
    # No residual: the untrained net predicts noise, so the held-out metrics have room to move.
    cfg = tiny_config(arch=arch, residual="none", epochs=3, layers=1, heads=2, batch_size=32, lr=1e-2)
    with torch_threads(1):
        task = LVMTrainingTask(wiki_bank.all_vectors(), bank_split(wiki_bank, cfg), cfg, wiki_bank.encoder_name)
        task.model.eval()
        untrained = task.evaluate()
        result = run_training(task, tmp_path, cfg.lvm.epochs)
    trained = result.history[-1].metrics
    assert trained["heldout_loss"] < untrained["heldout_loss"]
    assert trained["heldout_cos"] > untrained["heldout_cos"] + 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_heldout_documents_are_never_trained_on(wiki_bank) -> None:
    cfg = tiny_config()
    split = bank_split(wiki_bank, cfg)
    documents = wiki_bank.documents()
    held_ids = np.concatenate([documents[d] for d in split.heldout_docs])
    train_ids = np.concatenate([split.train.context[split.train.context >= 0], split.train.target])
    assert len(split.heldout) > 0 and not np.isin(train_ids, held_ids).any()


def test_resume_after_an_interruption_gives_the_same_weights(wiki_bank, tmp_path: Path) -> None:
    """A 3-epoch run stopped after epoch 2 and resumed equals 3 epochs straight.

    Dropout is on (the torch RNG state must carry over) and the learning rate follows the cosine
    schedule (it must be recomputed, not restarted).
    """

    class Killed(Exception):
        pass

    def stop_after_two(report) -> None:
        if report.epoch == 2:
            raise Killed

    cfg = tiny_config(epochs=3, schedule="cosine")
    straight = train_lvm(wiki_bank, cfg, tmp_path / "straight")
    with pytest.raises(Killed):
        train_lvm(wiki_bank, cfg, tmp_path / "resumed", on_epoch=stop_after_two)
    resumed = train_lvm(wiki_bank, cfg, tmp_path / "resumed", resume=True)
    assert resumed.resumed_from == 2
    a, b = (
        load_file(str(tmp_path / "straight" / LAST / "model.safetensors")),
        load_file(str(tmp_path / "resumed" / LAST / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert [h.train_loss for h in straight.history] == [h.train_loss for h in resumed.history]


def test_same_seed_same_model_other_seed_other_model(wiki_bank, tmp_path: Path) -> None:
    runs = {
        name: train_lvm(wiki_bank, tiny_config(epochs=1, seed=seed), tmp_path / name)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    }
    losses = {name: r.history[0].train_loss for name, r in runs.items()}
    assert losses["a"] == losses["b"] != losses["c"]


def test_a_trained_model_loads_against_its_bank_and_predicts(wiki_bank, tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    train_lvm(wiki_bank, cfg, tmp_path / "lvm")
    model = LatentVectorModel.load(
        tmp_path / "lvm", expected_dim=wiki_bank.dim, expected_encoder=wiki_bank.encoder_name
    )
    assert (tmp_path / "lvm" / BEST).is_dir()
    held = bank_split(wiki_bank, cfg).heldout
    ctx, mask = gather_context(wiki_bank.all_vectors(), held.context[:7])
    pred = model.predict(ctx, mask)
    assert pred.shape == (7, wiki_bank.dim)
    np.testing.assert_allclose(np.linalg.norm(pred, axis=1), 1.0, atol=1e-5)
    assert model.config["split"]["context"] == 4 and model.config["encoder"] == wiki_bank.encoder_name


def test_a_checkpoint_of_another_dimension_is_refused_in_one_line(wiki_bank, tmp_path: Path) -> None:
    from dualpath.config import LVMConfig

    LatentVectorModel.build(wiki_bank.dim // 2, LVMConfig(hidden=16), 4, wiki_bank.encoder_name).save(tmp_path / "m")
    with pytest.raises(CheckpointError, match=f"{wiki_bank.dim // 2}-d vectors but the bank holds {wiki_bank.dim}-d"):
        LatentVectorModel.load(tmp_path / "m", expected_dim=wiki_bank.dim)
    with pytest.raises(CheckpointError):
        evaluate_bank(wiki_bank, DualPathConfig(), tmp_path / "m")


def test_evaluation_table_against_brute_force(wiki_bank) -> None:
    """Baseline rows recomputed independently: exhaustive search, context removed, by hand."""
    cfg = tiny_config()
    held = bank_split(wiki_bank, cfg).heldout
    vectors = np.asarray(wiki_bank.all_vectors(), dtype=np.float32)
    report = evaluate_lvm(None, vectors, held, wiki_bank.search)
    assert set(report.rows) == {"copy-last", "mean-of-context", "oracle"}
    assert all(set(row) == set(COLUMNS) for row in report.rows.values())

    ctx, mask = gather_context(vectors, held.context)
    query = mean_vector(ctx, mask)
    scores = query @ vectors.T
    for i, context_ids in enumerate(held.context_sets()):
        scores[i, context_ids] = -np.inf
    target_score = scores[np.arange(len(held)), held.target]
    rank = (scores > target_score[:, None]).sum(axis=1) + 1
    mean_row = report.rows["mean-of-context"]
    for k in (1, 10, 100):
        # The bank stores float16 vectors; allow a tie or two to fall either way.
        assert mean_row[f"hit@{k}"] == pytest.approx(np.mean(rank <= k), abs=3 / len(held))
    target = vectors[held.target]
    assert mean_row["cos"] == pytest.approx(float(np.mean(np.sum(query * target, axis=1))), abs=1e-5)
    assert report.rows["copy-last"]["context_cos"] == pytest.approx(1.0, abs=1e-3)
    assert report.rows["oracle"]["cos"] == pytest.approx(1.0, abs=1e-3)
    assert report.contrastive_batch == min(256, len(held))
    json.dumps(report.to_dict())


def test_contrastive_accuracy_uses_fixed_batches() -> None:
    rng = np.random.default_rng(0)
    target = normalize_rows(rng.normal(size=(600, 16)))
    assert contrastive_accuracy(target, target, batch_size=256) == (1.0, 256)
    assert contrastive_accuracy(target[:10], target[:10], batch_size=256) == (1.0, 10)
    # Every prediction equal to the *next* pair's target: wrong for all but an unlucky few.
    shifted = np.roll(target, 1, axis=0)
    accuracy, _ = contrastive_accuracy(shifted, target, batch_size=64)
    assert accuracy < 0.1


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), width=st.integers(1, 5), seed=st.integers(0, 1000))
def test_metric_ranges(n: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = normalize_rows(rng.normal(size=(n, 8)))
    target = normalize_rows(rng.normal(size=(n, 8)))
    ctx = normalize_rows(rng.normal(size=(n, width, 8)))
    mask = np.arange(width)[None, :] >= rng.integers(0, width, size=n)[:, None]  # at least one real
    accuracy, used = contrastive_accuracy(pred, target, batch_size=16)
    assert 0.0 <= accuracy <= 1.0 and used == min(16, n)
    copying = max_context_cosine(pred, ctx, mask)
    assert -1.0 - 1e-6 <= copying <= 1.0 + 1e-6
    assert max_context_cosine(ctx[:, -1], ctx, mask) == pytest.approx(1.0, abs=1e-5)


# -- the command line -------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    sampler = {"hidden": 64, "layers": 2, "epochs": 2}
    path.write_text(yaml.safe_dump({"lvm": TINY, "sampler": sampler, "split": {"heldout_fraction": 0.2}}))
    return path


def test_cli_trains_and_evaluates(wiki_bank, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lvm"
    config = write_config(tmp_path)
    main(["train", "lvm", "--bank", str(wiki_bank.path), "--out", str(out), "--epochs", "1",
          "--arch", "lstm", "--context", "3", "--seed", "3", "--config", str(config)])  # fmt: skip
    captured = capsys.readouterr()
    # Each epoch is one log line (stderr); the result is printed (stdout).
    assert "epoch 1/1" in captured.err and "saved to" in captured.out
    assert "epoch 1/1" not in captured.out  # printed once, not also by the CLI
    assert json.loads((out / LAST / "config.json").read_text())["arch"] == "lstm"

    main(["eval", "lvm", "--bank", str(wiki_bank.path), "--model", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report["rows"]) == {"lvm", "copy-last", "mean-of-context", "oracle"}
    assert report["model"]["arch"] == "lstm" and report["model"]["context"] == 3

    main(["eval", "lvm", "--bank", str(wiki_bank.path), "--model", str(out)])
    table = capsys.readouterr().out
    assert "copy-last" in table and "mean-of-context" in table and "Hit@10" in table


def test_cli_eval_without_a_trained_model_shows_the_baselines(
    wiki_bank, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bank = tmp_path / "bank"
    shutil.copytree(wiki_bank.path, bank)  # the shared bank stays untouched; this copy has no models/
    main(["eval", "lvm", "--bank", str(bank), "--json"])
    assert set(json.loads(capsys.readouterr().out)["rows"]) == {"copy-last", "mean-of-context", "oracle"}
    main(["eval", "lvm", "--bank", str(bank)])
    assert "no trained LVM" in capsys.readouterr().out


def test_cli_resume_continues_a_run(wiki_bank, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, config = tmp_path / "lvm", write_config(tmp_path)
    common = ["train", "lvm", "--bank", str(wiki_bank.path), "--out", str(out), "--config", str(config)]
    main([*common, "--epochs", "1"])
    main([*common, "--epochs", "2", "--resume"])
    printed = capsys.readouterr().err  # the epochs' log lines
    assert "lvm epoch 2/2" in printed and printed.count("lvm epoch 1/") == 1
    # The LVM changed, so its sampler was trained afresh after each run.
    assert printed.count("sampler epoch 1/2") == 2
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "lvm", "--bank", "{missing}"],
        ["eval", "lvm", "--bank", "{missing}"],
        ["eval", "lvm", "--bank", "{bank}", "--model", "{missing}"],
        ["train", "lvm", "--bank", "{bank}", "--out", "{tmp}/x", "--arch", "mamba"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    wiki_bank, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    filled = [a.format(missing=tmp_path / "nope", bank=wiki_bank.path, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(filled)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


@settings(max_examples=30, deadline=None)
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_cosine_schedule_decays_from_peak_to_a_tenth(a: float, b: float) -> None:
    assert learning_rate(1e-3, 0.0, "cosine") == pytest.approx(1e-3)
    assert learning_rate(1e-3, 1.0, "cosine") == pytest.approx(1e-4)
    low, high = sorted((a, b))
    assert learning_rate(1e-3, high, "cosine") <= learning_rate(1e-3, low, "cosine") + 1e-15
    assert learning_rate(1e-3, a, "constant") == 1e-3
