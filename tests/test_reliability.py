"""Nothing lost, and no request failed by another's: output directories, symlinked banks, lock files, bad numbers
on the command line, checkpoint checksums, prompts from files and standard input.

Every case runs the installed `dualpath` command in a subprocess on a small trained, calibrated bank (the
service tests' `service_bank`, copied where a test writes to it). The service's side is in
tests/test_service_reliability.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dualpath.bank import ConceptBank
from dualpath.fileio import PAUSE_ENV
from dualpath.locking import WAIT_ENV, lock_path
from test_cli_errors import DUALPATH, SRC, assert_one_line_error
from test_service import service_bank  # noqa: F401 (a fixture)

PROMPT = "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of 384,400 km."


def environment(**env: str) -> dict[str, str]:
    """This environment, running the code this process imported, with `env` added."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **env}


def run(
    *args: str | Path, cwd: Path | None = None, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DUALPATH), *map(str, args)], capture_output=True, env=environment(**env), cwd=cwd, input=stdin, timeout=300
    )


def assert_ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc.stdout.decode()


def listing(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones too) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def bank_copy(service_bank, tmp_path) -> Path:  # noqa: F811
    out = tmp_path / "base"
    shutil.copytree(service_bank, out)
    return out


# -- Broken 1: --out never deletes what the command did not write ------------------------------------------------

REPORT = ("--max-pairs", "40", "--free-docs", "1")


def test_report_writes_its_files_beside_what_is_there_and_refuses_a_file(service_bank, tmp_path):  # noqa: F811
    rdir = tmp_path / "rdir"
    rdir.mkdir()
    (rdir / "notes.txt").write_text("notes\n")
    (rdir / "sub").mkdir()
    (rdir / "sub" / "keep.md").write_text("mine\n")
    assert_ok(run("report", "--bank", service_bank, "--out", rdir, *REPORT))
    assert (rdir / "notes.txt").read_text() == "notes\n" and (rdir / "sub" / "keep.md").read_text() == "mine\n"
    for name in ("report.md", "results.json", "decision_mix.png", "c_max.png", "recall.png", "lvm.png"):
        assert (rdir / name).is_file(), name
    assert not [p.name for p in rdir.iterdir() if p.name.startswith(".")], "no temporary directory is left"

    # `--out .`: the working directory keeps everything it held.
    before = listing(rdir)
    assert_ok(run("report", "--bank", service_bank, "--out", ".", *REPORT, cwd=rdir))
    after = listing(rdir)
    assert set(before) <= set(after) and after["notes.txt"] == before["notes.txt"]

    # An existing file is refused before anything is measured or written, and stays as it was.
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    assert_one_line_error(run("report", "--bank", service_bank, "--out", precious, *REPORT), "not a directory")
    assert precious.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt", "rdir"], "no hidden leftovers"


def test_training_and_bench_refuse_a_file_at_out(service_bank, tmp_path):  # noqa: F811
    tfile = tmp_path / "tfile"
    tfile.write_text("x\n")
    for command in (["train", "retriever"], ["train", "lvm"]):
        assert_one_line_error(run(*command, "--bank", service_bank, "--out", tfile, "--epochs", "1"), "not a directory")
    assert_one_line_error(run("bench", "--bank", service_bank, "--out", tfile, "--only", "decision"), "not a directory")
    assert tfile.read_text() == "x\n" and sorted(p.name for p in tmp_path.iterdir()) == ["tfile"]


def test_training_never_replaces_a_directory_that_is_not_its_checkpoint(service_bank, tmp_path):  # noqa: F811
    out = tmp_path / "tower"
    (out / "last").mkdir(parents=True)
    (out / "last" / "notes.txt").write_text("mine\n")
    (out / "keep.txt").write_text("also mine\n")
    config = tmp_path / "tiny.yaml"
    config.write_text("tower: {hidden: 16, epochs: 1, batch_size: 64}\n")
    args = ("train", "retriever", "--bank", service_bank, "--out", out, "--config", config)
    assert_one_line_error(run("-q", *args), f"refusing to write a checkpoint to {out / 'last'}")
    assert (out / "last" / "notes.txt").read_text() == "mine\n" and (out / "keep.txt").read_text() == "also mine\n"
    # Into a directory of the user's own files, training writes its own entries beside them.
    (out / "last" / "notes.txt").rename(out / "notes.txt")
    (out / "last").rmdir()
    assert_ok(run("-q", *args))
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "keep.txt").read_text() == "also mine\n"
    assert (out / "last" / "checksums.json").is_file() and (out / "best" / "model.safetensors").is_file()


# -- Broken 5: a bank reached through a symlink is one bank, with one lock ------------------------------------------


def test_a_bank_through_a_symlink_is_written_in_place_under_one_lock(bank_copy, tmp_path):
    real = bank_copy
    link = tmp_path / "link"
    link.symlink_to(real.name)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": "alpha", "text": "Alpha is a new document here. It has a second sentence."}) + "\n")
    b.write_text(json.dumps({"id": "beta", "text": "Beta is another new document. It also has two sentences."}) + "\n")
    with ConceptBank.open(real) as opened:
        before = len(opened)

    through_link = subprocess.Popen(
        [str(DUALPATH), "bank", "add", str(link), str(a)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(**{PAUSE_ENV: "swap:8"}),
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(f".{real.name}.*.tmpdir")):  # the add through the link is writing
            assert through_link.poll() is None, through_link.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the add through the link never started writing"
            time.sleep(0.05)
        assert lock_path(link) == lock_path(real) == tmp_path / f".{real.name}.lock"
        # The real name is refused while the link's writer holds the lock, naming it ...
        assert_one_line_error(run("bank", "add", real, b), "is being written by", "bank add")
        # ... and a writer that waits gets in after it and adds to what it wrote.
        assert_ok(run("bank", "add", real, b, **{WAIT_ENV: "120"}))
        assert through_link.wait(timeout=120) == 0, through_link.stderr.read().decode()[-2000:]
    finally:
        through_link.kill()
        through_link.wait()
    assert link.is_symlink() and link.resolve() == real.resolve(), "the link still points at the bank"
    with ConceptBank.open(link) as via_link, ConceptBank.open(real) as via_real:
        assert len(via_link) == len(via_real) > before
        assert {"alpha", "beta"} <= set(via_real.documents())
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [], leftovers


# -- Broken 11 and Weak 7: what is at the bank's path, or its lock's ------------------------------------------------


def test_a_directory_at_the_lock_files_place_and_a_file_as_bank_are_one_line(bank_copy, tmp_path):
    more = tmp_path / "x.jsonl"
    more.write_text(json.dumps({"id": "x", "text": "One more document. With two sentences."}) + "\n")
    lock_path(bank_copy).mkdir()
    assert_one_line_error(run("bank", "add", bank_copy, more), "lock file", "is a directory")
    afile = tmp_path / "afile"
    afile.write_text("not a bank\n")
    err = assert_one_line_error(run("bank", "info", afile), "is not a bank", "file")
    assert "not found" not in err


# -- Broken 4, 7, 8, 9 and Weak 4: bad numbers and paths on the command line -------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", PROMPT, "--seed", "-1"], "'--seed'"),
        (["calibrate", "--max-pairs", "-1"], "'--max-pairs'"),
        (["calibrate", "--max-pairs", "0"], "'--max-pairs'"),
        (["eval", "generation", "--max-pairs", "-1"], "'--max-pairs'"),
        (["eval", "generation", "--max-pairs", "0"], "'--max-pairs'"),
        (["report", "--max-pairs", "-1"], "'--max-pairs'"),
        (["train", "lvm", "--seed", "-3"], "'--seed'"),
        (["train", "retriever", "--seed", "-3"], "'--seed'"),
        (["generate", PROMPT, "--config", "DIR"], "is a directory"),
        (["generate", PROMPT, "--telemetry", "DIR"], "is a directory"),
        (["serve", "--telemetry", "DIR"], "is a directory"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_numbers_and_paths_are_one_line(args, expected, service_bank, tmp_path):  # noqa: F811
    argv = [str(tmp_path) if a == "DIR" else a for a in args]
    before = listing(service_bank)
    assert_one_line_error(run(*argv, "--bank", service_bank), expected)
    assert listing(service_bank) == before, "a refused command changes nothing"


def test_other_counts_below_their_bound_are_one_line(service_bank, tmp_path):  # noqa: F811
    more = tmp_path / "x.jsonl"
    more.write_text(json.dumps({"id": "x", "text": "One more document. With two sentences."}) + "\n")
    before = listing(service_bank)
    assert_one_line_error(run("bank", "add", service_bank, more, "--limit-docs", "-1"), "'--limit-docs'")
    assert_one_line_error(run("bank", "build", more, "--out", tmp_path / "new", "--limit-docs", "0"), "'--limit-docs'")
    assert_one_line_error(run("demo", "--steps", "0", "--out", tmp_path / "demo"), "'--steps'")
    assert listing(service_bank) == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_a_negative_seed_in_a_config_file_is_one_line(service_bank, tmp_path):  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text("generation:\n  seed: -1\n")
    assert_one_line_error(run("generate", PROMPT, "--bank", service_bank, "--config", config), "generation.seed")


# -- Weak 2: the prompt from a file or standard input, with a size limit ------------------------------------------


def steps_of(proc: subprocess.CompletedProcess) -> list[tuple]:
    """What each step a `generate --json` printed decided and showed (not its timings)."""
    steps = [json.loads(line) for line in assert_ok(proc).splitlines()]
    return [(s["step"], s["decision"], s["neighbour_id"], round(s["c_max"], 5), s["text"]) for s in steps]


def test_a_prompt_from_standard_input_or_a_file_is_the_same_prompt(service_bank, tmp_path):  # noqa: F811
    args = ("--bank", service_bank, "-n", "2", "--json")
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT + "\n")
    ways = [(("generate", PROMPT, *args), None), (("generate", "-", *args), PROMPT.encode()),
            (("generate", "--prompt-file", prompt_file, *args), None),
            (("generate", "--prompt-file", "-", *args), PROMPT.encode())]
    # Four separate processes, run side by side: each spends its seconds loading, not generating.
    with ThreadPoolExecutor(len(ways)) as pool:
        direct, *others = [steps_of(proc) for proc in pool.map(lambda way: run(*way[0], stdin=way[1]), ways)]
    assert len(direct) == 2
    assert others == [direct] * 3


def test_prompt_limits_and_mistakes_are_one_line(service_bank, tmp_path):  # noqa: F811
    config = tmp_path / "small.yaml"
    config.write_text("generation:\n  max_prompt_chars: 1000\n")
    big = ("The sky is blue today. " * 100).encode()  # 2,300 characters
    base = ("--bank", str(service_bank), "--config", str(config))
    assert_one_line_error(run("generate", "-", *base, stdin=big), "longer than 1,000 characters", "max_prompt_chars")
    big_file = tmp_path / "big.txt"
    big_file.write_bytes(big)
    assert_one_line_error(run("generate", "--prompt-file", big_file, *base), "longer than 1,000")
    assert_one_line_error(run("generate", *base), "give a prompt")
    assert_one_line_error(run("generate", PROMPT, "--prompt-file", big_file, *base), "not both")
    assert_one_line_error(run("generate", "--prompt-file", tmp_path / "none.txt", *base), "not found")
    assert_one_line_error(run("generate", "--prompt-file", tmp_path, *base), "is a directory")
    assert_one_line_error(run("generate", "-", *base, stdin=b"caf\xe9 au lait."), "not valid UTF-8")


# -- Weak 5: checkpoint weights carry a checksum, checked on load -------------------------------------------------


def corrupt_middle(path: Path) -> None:
    """Flip bytes in the middle of a file: its tensors' data, past the safetensors header."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def test_corrupt_checkpoint_weights_are_named_in_one_line(bank_copy):
    # One bank for the three checkpoints, each corrupted in turn and put back: a `generate` process costs
    # ~5 s, and the intact bank needs showing only once.
    assert_ok(run("generate", PROMPT, "--bank", bank_copy, "-n", "1", "--json"))
    for model in ("lvm/sampler/best", "lvm/best", "tower/best"):
        weights = bank_copy / "models" / model / "model.safetensors"
        assert (weights.parent / "checksums.json").is_file(), f"training records {model}'s weights' checksum"
        intact = weights.read_bytes()
        corrupt_middle(weights)
        assert_one_line_error(run("-q", "generate", PROMPT, "--bank", bank_copy, "-n", "1"), str(weights), "checksum")
        weights.write_bytes(intact)
