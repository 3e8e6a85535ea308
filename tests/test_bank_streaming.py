"""Building at scale: a build streams to disk, and an interrupted build from a corpus file resumes.

The resume test kills a real `dualpath bank build` process (SIGKILL, nothing cleaned up) while it
waits at its first checkpoint, then builds again: the second build continues from the documents the
first had finished and ends with the same bank as an uninterrupted build.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dualpath.bank import Concept, ConceptBank
from dualpath.config import DualPathConfig
from dualpath.errors import BankError
from test_bank import documents
from test_cli_errors import DUALPATH, SRC


def write_corpus(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for doc in documents(n):
            fh.write(json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    return path


def test_an_interrupted_build_from_a_file_resumes(tmp_path, text_encoder, caplog):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)  # 120 concepts, 8 checkpoints of 16
    config = tmp_path / "cfg.yaml"
    config.write_text("bank: {build_batch: 16}\n")
    out = tmp_path / "bank"
    staging = tmp_path / ".bank.building"
    env = {**os.environ, "PYTHONPATH": str(SRC), "DUALPATH_PAUSE_AT": "build-checkpoint:300"}
    proc = subprocess.Popen([str(DUALPATH), "bank", "build", str(corpus), "--out", str(out), "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (staging / "build-state.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the build never reached a checkpoint"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = json.loads((staging / "build-state.json").read_text())
    assert 0 < state["concepts"] < 120 and 0 < state["documents"] < 40
    assert not out.exists()

    cfg = DualPathConfig.from_yaml(config)
    with caplog.at_level(logging.INFO, logger="dualpath.bank.bank"):
        resumed = ConceptBank.build(corpus, out, cfg, encoder=text_encoder)
    assert f"{state['documents']} documents ({state['concepts']} concepts) were done" in caplog.text
    assert not staging.exists(), "the staging directory goes once the bank is in"
    fresh = ConceptBank.build(corpus, tmp_path / "fresh", cfg, encoder=text_encoder)
    with resumed, fresh:
        assert len(resumed) == len(fresh) == 120
        assert resumed.texts(range(120)) == fresh.texts(range(120))
        assert {k: v.tolist() for k, v in resumed.documents().items()} == {
            k: v.tolist() for k, v in fresh.documents().items()}
        np.testing.assert_allclose(resumed.vectors(range(120)), fresh.vectors(range(120)), atol=2e-3)
        ids, _ = resumed.search(fresh.vectors([5, 77]), 1)
        assert ids[:, 0].tolist() == [5, 77]


def test_a_changed_corpus_starts_afresh(tmp_path, text_encoder, caplog):
    """A staging directory from another corpus (or settings) is not resumed from."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", 12)
    staging = tmp_path / ".bank.building"
    staging.mkdir()
    (staging / "build-state.json").write_text(json.dumps({"key": "other", "documents": 5, "concepts": 15,
                                                          "n_docs": 5}))
    with caplog.at_level(logging.INFO, logger="dualpath.bank.bank"), ConceptBank.build(
        corpus, tmp_path / "bank", encoder=text_encoder
    ) as bank:
        assert len(bank) == 36 and len(bank.documents()) == 12
    assert "resuming" not in caplog.text and not staging.exists()


def test_from_vectors_streams_a_memmap_and_a_generator(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    concepts = (Concept(i, f"d{i // 10}", i % 10, f"c{i}", f"dom{i % 3}", "") for i in range(300))
    with ConceptBank.from_vectors(tmp_path / "bank", mapped, concepts, "synthetic") as bank:
        assert len(bank) == 300 and len(bank.documents()) == 30
        assert bank.domains() == {"dom0": 100, "dom1": 100, "dom2": 100}
        np.testing.assert_allclose(bank.vectors(range(300)), vectors, atol=1e-3)
        ids, _ = bank.search(vectors[[7, 250]], 1, domain="dom1")
        assert ids[:, 0].tolist() == [7, 250]
    with pytest.raises(BankError, match="300 vectors and 299 concepts"):
        ConceptBank.from_vectors(tmp_path / "short", mapped, (Concept(i, "d", i, "c", None, "") for i in range(299)),
                                 "synthetic")
