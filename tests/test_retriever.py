"""The tower trainer on a real (small) bank: it learns, resumes exactly, explains a stall, refuses bad input."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dualpath.cli.main import main
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import PAD
from dualpath.errors import ConfigError
from dualpath.evaluation.retrieval import heldout_eval_pairs, retrieval_table
from dualpath.models.checkpoint import model_dir
from dualpath.models.towers import QueryTower
from dualpath.runtime import torch_threads
from dualpath.training.loop import run_training
from dualpath.training.mining import NONE
from dualpath.training.retriever import (
    NEGATIVES_FILE,
    TABLE_FILE,
    RetrieverTask,
    shorten_contexts,
    train_retriever,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):  # tiny models: a second thread only spins
        yield


def tiny(**tower) -> DualPathConfig:
    settings = {"tower": "gru", "hidden": 64, "batch_size": 64, "epochs": 2, "lr": 1e-3, **tower}
    # 30 % held out: ~200 held-out pairs from the 300-article bank, enough for stable metrics.
    return DualPathConfig.from_dict({"tower": settings, "split": {"heldout_fraction": 0.3}})


class Killed(Exception):
    pass


class KilledTask(RetrieverTask):
    """The trainer, killed at one step of one epoch (what SIGKILL does to the loop's state)."""

    kill_epoch = 0
    kill_step = 0

    def train_epoch(self, epoch, beat):
        steps = iter(range(10**9))

        def beat_then_maybe_die() -> None:
            beat()
            if epoch == self.kill_epoch and next(steps) == self.kill_step:
                raise Killed

        return super().train_epoch(epoch, beat_then_maybe_die)


class StalledTask(RetrieverTask):
    def train_epoch(self, epoch, beat):
        time.sleep(0.8)  # a step that hangs, e.g. inside a search
        return super().train_epoch(epoch, beat)


@pytest.mark.parametrize("negatives", [{}, {"bank_negatives": True}], ids=["in-batch+queue+mined", "whole-bank"])
def test_briefly_trained_tower_beats_the_last_vector(wiki_bank, tmp_path: Path, negatives) -> None:
    cfg = tiny(epochs=2, **negatives)
    result = train_retriever(wiki_bank, cfg, tmp_path / "tower")
    table = json.loads((tmp_path / "tower" / TABLE_FILE).read_text())["table"]
    best = result.best.metrics
    assert best["MRR"] > table["last"]["MRR"] * 1.05 and best["R@10"] > table["last"]["R@10"]
    assert table["oracle"]["R@1"] > 0.95
    # What the CLI and the generator load is the best epoch, and it scores what training said.
    tower = QueryTower.load(tmp_path / "tower", wiki_bank.dim, wiki_bank.encoder_name)
    pairs = heldout_eval_pairs(wiki_bank.all_vectors(), wiki_bank.documents(), cfg)
    assert retrieval_table(wiki_bank.search, pairs, tower)["tower"] == pytest.approx(best)


def test_tower_learns_from_scratch(wiki_bank, tmp_path: Path) -> None:
    # No heuristic residual to lean on: the ranking comes from the trained weights alone
    # (the reference trainer, with its pseudo-positives and detached query, stayed at chance).
    cfg = tiny(tower="mlp", residual="none", hidden=256, epochs=4, lr=3e-3)
    result = train_retriever(wiki_bank, cfg, tmp_path / "tower")
    mrr = [h.metrics["MRR"] for h in result.history]
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < losses[0] * 0.8
    assert mrr[-1] > mrr[0] and mrr[-1] > 0.15  # chance is about 0.007 among ~1,100 concepts


def test_kill_and_resume_continues_exactly(wiki_bank, tmp_path: Path) -> None:
    # Mining in epoch 2 and reusing its negatives in epoch 3: the resumed run must reload them.
    cfg = tiny(epochs=3, hard_negatives=True, warmup_epochs=1, refresh_every=2, queue_size=64, dropout=0.2)
    straight = run_training(RetrieverTask.from_bank(wiki_bank, cfg, tmp_path / "a"), tmp_path / "a", 3)

    KilledTask.kill_epoch, KilledTask.kill_step = 3, 2
    with pytest.raises(Killed):
        run_training(KilledTask.from_bank(wiki_bank, cfg, tmp_path / "b"), tmp_path / "b", 3)
    assert (tmp_path / "b" / NEGATIVES_FILE).is_file()
    resumed_task = RetrieverTask.from_bank(wiki_bank, cfg, tmp_path / "b")
    resumed = run_training(resumed_task, tmp_path / "b", 3, resume=True)

    assert resumed.resumed_from == 2 and [h.epoch for h in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a.train_loss == b.train_loss and a.metrics == b.metrics
    a = QueryTower.load(tmp_path / "a" / "last")
    b = QueryTower.load(tmp_path / "b" / "last")
    for (name, pa), (_, pb) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_watchdog_dumps_stacks_of_a_stalled_step(wiki_bank, tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    watchdog_log = logging.getLogger("dualpath.training.watchdog")
    watchdog_log.addHandler(handler)
    try:
        cfg = tiny(epochs=1)
        task = StalledTask.from_bank(wiki_bank, cfg, tmp_path)
        run_training(task, tmp_path, 1, watchdog_seconds=0.3)
    finally:
        watchdog_log.removeHandler(handler)
    stalls = [r.getMessage() for r in records if "no step finished" in r.getMessage()]
    assert stalls and "train_epoch" in stalls[0] and "time.sleep" in stalls[0]


def test_whole_bank_negatives_mask_exactly_the_likely_false_negatives(wiki_bank, tmp_path: Path) -> None:
    task = RetrieverTask.from_bank(wiki_bank, tiny(bank_negatives=True, near_dup=0.9), tmp_path)
    vectors = wiki_bank.all_vectors().astype(np.float32)
    batch = np.random.default_rng(0).choice(len(task.train), 64, replace=False)
    targets, context = task.train.target[batch], task.train.context[batch]
    invalid = task._bank_false_negatives(targets, context).numpy()
    assert invalid.shape == (64, len(wiki_bank))
    for row, target, ctx in zip(invalid, targets, context, strict=True):
        expected = vectors @ vectors[target] > 0.9
        expected[ctx[ctx != PAD]] = True
        expected |= task.concept_doc == task.concept_doc[target]
        expected[target] = False  # the positive is never masked, not even as its own duplicate
        assert np.array_equal(row, expected)


def test_whole_bank_negatives_refuse_a_bank_too_large(wiki_bank, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("dualpath.training.retriever.BANK_NEGATIVES_MAX", len(wiki_bank) - 1)
    with pytest.raises(ConfigError, match="mined hard negatives instead"):
        RetrieverTask.from_bank(wiki_bank, tiny(bank_negatives=True), tmp_path)


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_shortened_contexts_keep_a_recent_suffix(lengths, share, seed) -> None:
    width = 6
    context = np.full((len(lengths), width), PAD, dtype=np.int64)
    for row, n in enumerate(lengths):
        context[row, width - n :] = np.arange(n) + 100 * row
    short = shorten_contexts(context, share, np.random.default_rng(seed))
    for before, after, n in zip(context, short, lengths, strict=True):
        kept = int((after != PAD).sum())
        assert min(n, 1) <= kept <= n  # never empties a context, never lengthens one
        assert np.array_equal(after[width - kept :], before[width - kept :])  # the most recent concepts
        assert (after[: width - kept] == PAD).all()
    if share == 0.0:
        assert np.array_equal(short, context)
    if share == 1.0:
        cut = [int((a != PAD).sum()) < n for a, n in zip(short, lengths, strict=True) if n > 1]
        assert all(cut)


def test_mlp_document_tower_is_refused_with_a_reason(wiki_bank, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encoder's vectors"):
        RetrieverTask.from_bank(wiki_bank, tiny(doc_tower="mlp"), tmp_path)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tower", "cnn"], "tower.tower"),
        (["--doc-tower", "mlp"], "--doc-tower mlp is not supported"),
        (["--epochs", "0"], "tower.epochs"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(wiki_bank, tmp_path: Path, capsys, args, message) -> None:
    code, _, err = run_cli(["train", "retriever", "--bank", str(wiki_bank.path), "--out", str(tmp_path), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_missing_bank_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["eval", "retriever", "--bank", str(tmp_path / "nope"), "--json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_cli_train_then_eval(wiki_bank, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tower"
    code, stdout, _ = run_cli(
        ["train", "retriever", "--bank", str(wiki_bank.path), "--out", str(out), "--tower", "mlp",
         "--epochs", "1", "--log-file", str(tmp_path / "train.log")],
        capsys,
    )
    assert code == 0 and "tower vs best heuristic" in stdout
    assert "epoch 1/1" in (tmp_path / "train.log").read_text()
    code, stdout, _ = run_cli(
        ["eval", "retriever", "--bank", str(wiki_bank.path), "--tower", str(out), "--json"], capsys
    )
    report = json.loads(stdout)
    assert code == 0 and list(report["table"]) == ["tower", "last", "mean", "ewm", "oracle"]
    saved = json.loads((model_dir(out) / "config.json").read_text())["metrics"]
    assert report["table"]["tower"] == pytest.approx(saved)
    assert np.isclose(report["table"]["oracle"]["R@1"], 1.0, atol=0.05)


def test_capped_evaluation_and_mining_use_samples_of_the_pairs(wiki_bank, tmp_path: Path) -> None:
    full = RetrieverTask.from_bank(wiki_bank, tiny(), tmp_path / "full")
    cfg = tiny(eval_pairs=40, mine_pairs=100, warmup_epochs=0, epochs=1)
    capped = RetrieverTask.from_bank(wiki_bank, cfg, tmp_path / "capped")
    assert len(full.heldout) > 40 and len(capped.heldout) == 40
    assert set(capped.heldout.targets.tolist()) <= set(full.heldout.targets.tolist())
    again = RetrieverTask.from_bank(wiki_bank, cfg, tmp_path / "again")
    assert again.heldout.targets.tolist() == capped.heldout.targets.tolist(), "the same sample every time"
    capped.train_epoch(1, lambda: None)
    mined = (capped.negatives != NONE).any(axis=1)
    assert 0 < mined.sum() <= 100 < len(capped.train)
    assert set(capped.evaluate()) == set(full.evaluate())
