"""Bad input gives one line and exit 2, never a traceback (issue 16, items 5-8).

Usage errors are checked through the installed `dualpath` command in a subprocess: typer 0.29
raises its vendored click's exceptions, which an in-process CliRunner would have reported in its
own way. The subprocess runs this environment's console script on the code this process imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dualpath
from dualpath.bank import Concept, ConceptBank
from dualpath.corpus import load_documents
from dualpath.errors import BankError, ConfigError, CorpusError

DUALPATH = Path(sys.executable).parent / "dualpath"
# The code this test process imported (a worktree on PYTHONPATH, or the install): the command runs the same.
SRC = Path(dualpath.__file__).resolve().parents[1]


def run_dualpath(*args: str | bytes) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(DUALPATH), *args], capture_output=True, env=env, timeout=120)


def run_side_by_side(*calls: Sequence[str | bytes]) -> list[subprocess.CompletedProcess]:
    """`run_dualpath` for each argument list, the processes at once: one spends most of its seconds
    importing and loading models, on one core."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: run_dualpath(*args), calls))


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_errors") / "bank"
    vectors = np.eye(8, dtype=np.float32)
    concepts = [Concept(i, "d", i, f"concept {i}", None, "d") for i in range(8)]
    ConceptBank.from_vectors(out, vectors, concepts, "synthetic").close()
    return out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bank", "search", "BANK", "music", "-k", "abc"], "'-k'"),
        (["bank", "search", "BANK", "music", "-k", "1000000000"], "10000"),
        (["bank", "search", "BANK", "music", "-k", "0"], "'-k'"),
        (["generate", "--bogus"], "No such option: --bogus"),
        (["generate", "hello"], "Missing option '--bank'"),
        (["train", "lvm", "--bank", "BANK", "--context", "100000"], "'--context'"),
        (["bank", "nope"], "No such command"),
        (["bank", "search", "BANK", b"\xff\xfe not utf-8"], "not valid UTF-8"),
        (["generate", b"caf\xe9", "--bank", "BANK"], "not valid UTF-8"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_usage_errors_are_one_line_through_the_installed_command(args, expected, tiny_bank):
    argv = [str(tiny_bank) if a == "BANK" else a for a in args]
    assert_one_line_error(run_dualpath(*argv), expected)


def test_a_malformed_manifest_is_one_line(tmp_path, tiny_bank):
    import shutil

    for key, value in (("count", "abc"), ("dim", None), ("dtype", "nonsense"), ("checksums", [])):
        bank = tmp_path / f"bank-{key}"
        shutil.copytree(tiny_bank, bank)
        manifest = json.loads((bank / "manifest.json").read_text())
        manifest[key] = value
        (bank / "manifest.json").write_text(json.dumps(manifest))
        assert_one_line_error(run_dualpath("bank", "info", str(bank)), "corrupt")


def test_a_malformed_calibration_file_is_one_line(tmp_path):
    from dualpath.pipeline.calibrated_lanes import read_calibration

    for content in ("[]", '{"lanes": 3}', '{"lanes": {"neutral": 1}}'):
        (tmp_path / "calibration.json").write_text(content)
        with pytest.raises(ConfigError, match="corrupt"):
            read_calibration(tmp_path)


def test_sizes_are_bounded(tmp_path, tiny_bank):
    from dualpath.config import DualPathConfig
    from dualpath.decider import load_lanes

    lanes = tmp_path / "lanes.yaml"
    lanes.write_text("lanes:\n  wide:\n    tau_snap: 0.8\n    tau_novel: 0.5\n    k: 1e11\n")
    with pytest.raises(ConfigError, match="k"):
        load_lanes(lanes)
    with pytest.raises(ConfigError, match="context"):
        DualPathConfig.from_dict({"split": {"context": 100_000}}, source="test")
    with ConceptBank.open(tiny_bank) as bank, pytest.raises(BankError, match="between 1 and"):
        bank.search(np.eye(8, dtype=np.float32)[:1], 10**9)


def test_lone_surrogates_in_jsonl_are_one_line_or_skipped(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"id": "bad", "text": "A \\ud800 b. Then more text follows here."}\n'
        '{"id": "good", "text": "Rivers carry water to the sea. They shape valleys."}\n'
    )
    with pytest.raises(CorpusError, match=r"line 1: \"text\" has invalid Unicode"):
        list(load_documents(corpus))
    assert [d.id for d in load_documents(corpus, skip_bad=True)] == ["good"]
    # Through the command: the bad first line fails before any model loads.
    assert_one_line_error(run_dualpath("bank", "build", str(corpus), "--out", str(tmp_path / "b")), "line 1")
