"""`dualpath bank ...`: the happy path, bad input as one line + exit 2, and a build killed mid-way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dualpath.bank import ConceptBank
from dualpath.cli.main import main
from dualpath.corpus import WIKI_SAMPLE, load_documents


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_wiki_jsonl(path: Path, n_docs: int, start: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for doc in list(load_documents(WIKI_SAMPLE, limit=start + n_docs))[start:]:
            record = {"id": doc.id, "title": doc.title, "text": doc.text, "domain": doc.domain}
            fh.write(json.dumps(record) + "\n")
    return path


def test_build_info_search_add(tmp_path, capsys):
    corpus = write_wiki_jsonl(tmp_path / "wiki.jsonl", 12)
    bank_dir = tmp_path / "bank"
    code, out, err = run_cli(
        capsys, "bank", "build", str(corpus), "--out", str(bank_dir), "--index", "flat", "--dtype", "float32", "--json"
    )
    assert code == 0, err
    built = json.loads(out)
    assert built["documents"] == 12 and built["concepts"] > 30 and built["index"] == "Flat"

    code, out, _ = run_cli(capsys, "bank", "info", str(bank_dir), "--json", "--full-check")
    info = json.loads(out)
    assert code == 0 and info["concepts"] == built["concepts"] and info["manifest"]["dtype"] == "float32"
    assert sum(info["domains"].values()) == built["concepts"]

    with ConceptBank.open(bank_dir) as bank:
        text = bank.texts([5])[0]
    code, out, _ = run_cli(capsys, "bank", "search", str(bank_dir), text, "-k", "3", "--json")
    results = json.loads(out)["results"]
    assert code == 0 and len(results) == 3 and results[0]["text"] == text and results[0]["score"] > 0.99
    domain = results[0]["domain"]
    code, out, _ = run_cli(capsys, "bank", "search", str(bank_dir), text, "-k", "50", "--domain", domain, "--json")
    assert {r["domain"] for r in json.loads(out)["results"]} == {domain}

    more = write_wiki_jsonl(tmp_path / "more.jsonl", 3, start=12)
    code, out, _ = run_cli(capsys, "bank", "add", str(bank_dir), str(more), "--json")
    added = json.loads(out)
    assert code == 0 and added["documents"] == 15 and added["concepts"] == built["concepts"] + added["added"]

    code, out, _ = run_cli(capsys, "bank", "search", str(bank_dir), "a city and its river", "-k", "2")
    assert code == 0 and "score" in out  # the table


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"id": "a", "text": "Fine."}\n{"id": "b", "text": \n')
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "text": "A fine sentence about rivers."}\n')
    out = str(tmp_path / "bank")
    cases = [
        (["bank", "build", str(empty), "--out", out], "has no documents"),
        (["bank", "build", str(malformed), "--out", out], "bad.jsonl line 2: invalid JSON"),
        (["bank", "build", str(latin1), "--out", out], "latin1.jsonl line 1: not valid UTF-8"),
        (["bank", "build", str(tmp_path / "nope.jsonl"), "--out", out], "corpus source not found"),
        (["bank", "build", str(good), "--out", out, "--encoder", "no-such-model"], "unknown encoder 'no-such-model'"),
        (["bank", "build", str(good), "--out", out, "--dtype", "int8"], "bank.dtype"),
        (["bank", "build", str(good), "--out", out, "--index", "IVF9,Nope"], "invalid index spec 'IVF9,Nope'"),
        (["bank", "build", str(good), "--out", str(tmp_path)], "is not a bank"),
        (["bank", "info", str(tmp_path / "missing")], "bank not found"),
        (["bank", "search", str(tmp_path / "missing"), "text"], "bank not found"),
        (["bank", "add", str(tmp_path / "missing"), str(good)], "bank not found"),
        (["bank", "info", str(tmp_path)], "is not a bank: manifest.json is missing"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        # Log lines (timestamped) may come first; the error itself is one line, and no traceback.
        problems = [line for line in err.strip().splitlines() if not line[:4].isdigit()]
        assert len(problems) == 1 and message in problems[0] and "Traceback" not in err, (args, err)
    assert not (tmp_path / "bank").exists()


def test_skip_bad_builds_from_the_good_lines(tmp_path, capsys, text_encoder):
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text(
        '{"id": "a", "text": "Rivers carry water to the sea. They shape valleys."}\n'
        "not json at all\n"
        '{"id": "b", "text": "Mountains rise where plates collide.", "domain": "Geo"}\n'
    )
    code, out, err = run_cli(
        capsys, "bank", "build", str(corpus), "--out", str(tmp_path / "bank"), "--skip-bad", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["documents"] == 2 and "mixed.jsonl line 2" in err


def test_a_corrupt_bank_is_one_line(tmp_path, capsys, wiki_bank_path):
    import shutil

    copy = tmp_path / "bank"
    shutil.copytree(wiki_bank_path, copy)
    vectors = copy / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-4096])
    code, _, err = run_cli(capsys, "bank", "search", str(copy), "text")
    assert code == 2 and "vectors.npy is" in err and "truncated" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "bank", "search", str(wiki_bank_path), "text", "--domain", "Nope")
    assert code == 2 and "unknown domain 'Nope'" in err


def test_a_killed_build_leaves_the_previous_bank(tmp_path, text_encoder):
    bank_dir = tmp_path / "bank"
    ConceptBank.build(list(load_documents(WIKI_SAMPLE, limit=5)), bank_dir, encoder=text_encoder).close()
    corpus = write_wiki_jsonl(tmp_path / "big.jsonl", 400)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualpath.cli.main", "bank", "build", str(corpus), "--out", str(bank_dir), "--force"],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        # Kill once the build is writing (after the model loaded, while encoding): a build from a file stages its
        # concepts in .bank.building (to resume from), beside its new directory.
        deadline = time.monotonic() + 300
        while not (tmp_path / ".bank.building" / "build-state.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with ConceptBank.open(bank_dir) as bank:
        assert len(bank.documents()) == 5, "the previous bank is intact"
    for leftover in (p for p in tmp_path.iterdir() if p.name.endswith(".tmpdir")):
        with pytest.raises(Exception, match="not a bank"):
            ConceptBank.open(leftover)
    assert (tmp_path / ".bank.building").is_dir(), "what the killed build encoded is kept to resume from"
    # The next build clears the leftovers.
    ConceptBank.build(list(load_documents(WIKI_SAMPLE, limit=3)), bank_dir, encoder=text_encoder, force=True).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "big.jsonl"]


def test_bank_build_reads_a_markdown_folder_as_markdown(tmp_path, capsys):
    """Issue 18's own corpus: titles, ids and domains from the notes, no heading inside a concept."""
    notes = tmp_path / "notes"
    for rel, text in {
        "planets/mars.md": "# Mars\n\nMars is the fourth planet from the Sun.\n\n## Moons\n\n- It has two moons.\n",
        "planets/venus.md": "# Venus\nVenus is the second planet from the Sun. It is **very** hot.\n",
        "history/rome.md": "Rome\n====\n\nRome was founded, says the legend, in 753 BC.\n",
    }.items():
        (notes / rel).parent.mkdir(parents=True, exist_ok=True)
        (notes / rel).write_text(text, encoding="utf-8")
    code, _, err = run_cli(capsys, "bank", "build", str(notes), "--out", str(tmp_path / "bank"), "--json")
    assert code == 0, err
    with ConceptBank.open(tmp_path / "bank") as bank:
        documents = bank.documents()
        assert sorted(documents) == ["history/rome", "planets/mars", "planets/venus"]
        concepts = bank.concepts(np.concatenate(list(documents.values())))
    assert {(c.doc_id, c.title, c.domain) for c in concepts} == {
        ("history/rome", "Rome", "history"),
        ("planets/mars", "Mars", "planets"),
        ("planets/venus", "Venus", "planets"),
    }
    texts = [c.text for c in concepts]
    assert "Mars is the fourth planet from the Sun. It has two moons." in texts  # short pieces merge
    assert not any(marker in t for t in texts for marker in ("#", "**", "==", "Moons"))
