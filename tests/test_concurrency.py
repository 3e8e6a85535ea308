"""Several processes on one bank, and processes killed at chosen instants (issue 16, items 1-4).

Everything here runs real processes and real signals. A writer is held at a named point with the
`DUALPATH_PAUSE_AT` hook (`fileio.pause_point`) and killed there with SIGKILL, or left paused while
another process tries to write. Banks are made from synthetic vectors (no encoder) except where
`bank add` itself is under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dualpath.bank import Concept, ConceptBank
from dualpath.config import DualPathConfig
from dualpath.corpus import Document
from dualpath.errors import CheckpointError, LockedError
from dualpath.fileio import PAUSE_ENV, atomic_directory
from dualpath.locking import lock_path

DIM = 16


def synthetic_bank(out: Path, n_docs: int = 30, per_doc: int = 6, seed: int = 0) -> Path:
    """A bank of `n_docs` documents of `per_doc` random unit vectors each (encoder name only)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_docs * per_doc, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    concepts = [
        Concept(d * per_doc + i, f"d{d}", i, f"concept {d}.{i}", None, f"d{d}")
        for d in range(n_docs)
        for i in range(per_doc)
    ]
    ConceptBank.from_vectors(out, vectors, concepts, "synthetic").close()
    return out


# A writer process: rewrites the bank at argv[1] from synthetic vectors (sizes from argv[2:]).
WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_concurrency import synthetic_bank
    for n_docs in sys.argv[2:]:
        synthetic_bank(Path(sys.argv[1]), n_docs=int(n_docs), seed=int(n_docs))
    print("done", flush=True)
    """
).format(tests=str(Path(__file__).parent))


def start_writer(bank: Path, *sizes: int, pause: str | None = None, **env: str) -> subprocess.Popen:
    environ = {**os.environ, **env}
    if pause:
        environ[PAUSE_ENV] = pause
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(bank), *map(str, sizes)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the writer exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def tmpdirs(bank: Path) -> list[Path]:
    return sorted(bank.parent.glob(f".{bank.name}.*.tmpdir"))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    bank = synthetic_bank(tmp_path / "bank")
    proc = start_writer(bank, 40, pause="swap:30")
    try:
        wait_for(lambda: lock_path(bank).is_file() and tmpdirs(bank), proc, "the writer holds the lock")
        with pytest.raises(LockedError) as refused:
            synthetic_bank(bank, n_docs=50)
        message = str(refused.value)
        assert f"pid {proc.pid}" in message and "since" in message and "\n" not in message
        # A live writer's temporary directory is not touched by anyone else.
        assert tmpdirs(bank), "the paused writer's temp dir is still there"
        with ConceptBank.open(bank) as opened:
            assert len(opened) == 30 * 6, "readers see the old bank while the new one is written"
    finally:
        kill(proc)
    # The kernel released the dead writer's lock: the next writer gets in and clears its leftovers.
    synthetic_bank(bank, n_docs=20)
    assert not tmpdirs(bank) and not lock_path(bank).exists()
    with ConceptBank.open(bank) as opened:
        assert len(opened) == 20 * 6


def test_atomic_directory_leaves_a_live_writers_temp_dir_alone(tmp_path):
    """Two writers of one checkpoint directory (no bank lock): the second must not delete the first's work."""
    target = tmp_path / "last"
    script = textwrap.dedent(
        f"""
        from dualpath.fileio import atomic_directory
        with atomic_directory({str(target)!r}) as tmp:
            (tmp / "who").write_text("first")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, PAUSE_ENV: "swap:3"}, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: any((p / "who").exists() for p in tmpdirs(target)), proc, "the first writer wrote")
    with atomic_directory(target) as tmp:
        (tmp / "who").write_text("second")
    assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
    assert (target / "who").read_text() == "first", "the first writer finished its swap after the second"
    assert not tmpdirs(target)


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_kill_during_the_swap_keeps_a_bank(tmp_path, exchange):
    bank = synthetic_bank(tmp_path / "bank")
    env = {} if exchange else {"DUALPATH_NO_RENAME_EXCHANGE": "1"}
    point = "swap:30" if exchange else "swap-aside:30"
    proc = start_writer(bank, 40, pause=point, **env)
    try:
        if exchange:
            wait_for(lambda: any((p / "manifest.json").exists() for p in tmpdirs(bank)), proc, "the new bank is whole")
        else:
            # Killed between the two renames: the old bank is aside and nothing is at the target.
            wait_for(lambda: not bank.exists(), proc, "the old bank is renamed aside")
    finally:
        kill(proc)
    # A reader recovers the set-aside bank; nothing was deleted.
    with ConceptBank.open(bank) as opened:
        assert len(opened) == 30 * 6
    synthetic_bank(bank, n_docs=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"], "the dead writer's leftovers are cleared"


def test_readers_never_see_a_half_swapped_bank(tmp_path):
    bank = synthetic_bank(tmp_path / "bank", n_docs=20)
    sizes = [20, 35] * 8
    proc = start_writer(bank, *sizes)
    opened, errors = 0, []
    try:
        while proc.poll() is None:
            try:
                with ConceptBank.open(bank) as reader:
                    assert len(reader) in (20 * 6, 35 * 6)
                    reader.search(reader.vectors([0]), 3)
                opened += 1
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert opened > 0 and not errors, errors[:3]


def test_build_over_an_existing_bank_needs_force(tmp_path, capsys):
    from dualpath.cli.main import main

    bank = synthetic_bank(tmp_path / "bank")
    (bank / "models").mkdir()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "Rivers carry water to the sea. They shape valleys."}) + "\n")
    capsys.readouterr()  # drop the log lines of making the bank (an earlier main() set up logging)
    with pytest.raises(SystemExit) as exit_:
        main(["bank", "build", str(corpus), "--out", str(bank)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "already a bank" in err and "models" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert (bank / "models").is_dir()


# -- bank add against training -------------------------------------------------------------------------


@pytest.fixture
def text_bank(tmp_path, text_encoder) -> Path:
    docs = [
        Document(
            f"doc{i}",
            f"doc{i}",
            f"Topic {i} begins with a long first sentence here. It continues with a second one. "
            f"Then a third sentence closes document {i}.",
        )
        for i in range(6)
    ]
    out = tmp_path / "bank"
    ConceptBank.build(docs, out, encoder=text_encoder).close()
    return out


def test_bank_add_keeps_models_and_training_waits_for_it(tmp_path, text_bank):
    from dualpath.training.lvm import train_lvm

    marker = text_bank / "models" / "lvm" / "best" / "config.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "text": "A new document arrives late. It has two sentences."}) + "\n")
    dualpath = Path(sys.executable).parent / "dualpath"
    proc = subprocess.Popen(
        [str(dualpath), "bank", "add", str(text_bank), str(more)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: lock_path(text_bank).is_file(), proc, "add holds the lock")
        cfg = DualPathConfig.from_dict({"lvm": {"epochs": 1, "hidden": 16}}, source="test")
        holder = rf"pid {proc.pid} \(dualpath bank add"
        with ConceptBank.open(text_bank, cfg) as bank, pytest.raises(LockedError, match=holder):
            train_lvm(bank, cfg)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        proc.wait()
    assert marker.is_file(), "models/ is carried over by add"
    with ConceptBank.open(text_bank) as bank:
        assert "new" in bank.documents()


# -- --resume with other settings ------------------------------------------------------------------------


def test_resume_refuses_another_context_or_a_grown_bank(tmp_path):
    from dualpath.training.lvm import train_lvm

    bank_dir, out = synthetic_bank(tmp_path / "bank", n_docs=30), tmp_path / "lvm"
    settings = {"lvm": {"epochs": 1, "hidden": 16, "batch_size": 64}, "split": {"context": 3}}

    def cfg(epochs: int = 1, context: int = 3) -> DualPathConfig:
        return DualPathConfig.from_dict(
            {"lvm": {**settings["lvm"], "epochs": epochs}, "split": {"context": context}}, source="test"
        )

    with ConceptBank.open(bank_dir, cfg()) as bank:
        train_lvm(bank, cfg(), out)
        with pytest.raises(CheckpointError, match="context"):
            train_lvm(bank, cfg(epochs=2, context=5), out, resume=True)
    synthetic_bank(bank_dir, n_docs=40)  # the bank grew since last/ was written
    with ConceptBank.open(bank_dir, cfg()) as bank, pytest.raises(CheckpointError, match="the bank had 180"):
        train_lvm(bank, cfg(epochs=2), out, resume=True)
