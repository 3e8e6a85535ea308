"""A user's own small corpus goes end to end through the installed `dualpath` command (issue 18).

30 short Markdown notes in three folders: build → train lvm → train retriever → calibrate → generate
→ eval generation → report, each step in a subprocess, none with a traceback, each producing its
output. The held-out share adapts to the corpus: with the split seed the flow uses, 10 % of these
notes hold out 13 pairs (the issue's own 32 notes held out 14), too few to calibrate on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from small_corpus_notes import write_notes
from test_cli_errors import run_dualpath


def step(*args: str) -> tuple[str, str]:
    proc = run_dualpath(*args)
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"dualpath {' '.join(args)}: exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in out + err, err[-3000:]
    return out, err


@pytest.mark.slow
def test_thirty_notes_go_end_to_end(tmp_path: Path) -> None:
    start = time.monotonic()
    notes = write_notes(tmp_path / "notes")
    bank = tmp_path / "bank"
    # A user's config that sets the split's seed, not its share: at seed 3, 0.1 holds out 13 pairs.
    config = tmp_path / "dualpath.yaml"
    config.write_text("split: {seed: 3}\n", encoding="utf-8")
    cfg = ("--config", str(config))

    out, _ = step("bank", "build", str(notes), "--out", str(bank), "--json", *cfg)
    built = json.loads(out)
    assert built["documents"] == 30 and (bank / "manifest.json").is_file(), built

    out, err = step("train", "lvm", "--bank", str(bank), "--epochs", "2", *cfg)
    assert (bank / "models" / "lvm").is_dir()
    assert "held-out share 0.25 instead of 0.10" in err, err  # the share chosen for this corpus is said
    epoch_lines = [line for line in (out + err).splitlines() if "lvm epoch 1/2" in line]
    assert len(epoch_lines) == 1, out + err  # each epoch is printed once

    step("train", "retriever", "--bank", str(bank), "--epochs", "2", *cfg)
    assert (bank / "models" / "tower").is_dir()

    out, err = step("calibrate", "--bank", str(bank), "--json", *cfg)
    calibration = json.loads(out)
    assert calibration["pairs"] >= 20 and (bank / "calibration.json").is_file()
    # Calibration says which held-out documents it fitted on (the calibration half, or all where that is small).
    assert calibration["fitted_on"] == calibration["confidence"]["fitted_on"]
    assert calibration["fitted_on"] in ("calibration half of the held-out documents",
                                        "every held-out document (a small corpus)")
    assert "uncalibrated" not in err, err

    out, _ = step("generate", "--bank", str(bank), "--json", "-n", "3", *cfg, "Mars is the fourth planet from the Sun.")
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(records) == 3 and all(r["text"] for r in records), records
    assert all("Mars is the fourth planet" not in r["text"] for r in records)  # never the prompt itself

    out, _ = step("eval", "generation", "--bank", str(bank), "--json", *cfg)
    result = json.loads(out)
    # Scored on the evaluation half of the held-out documents, in the three cases.
    assert result["pairs"] >= 10 and {"neutral", "lvm-only", "bank-only"} <= set(result["lanes"])
    assert set(result["cases"]) == {"known", "added", "restated", "unknown"}

    step("report", "--bank", str(bank), "--out", str(tmp_path / "report"), *cfg)
    assert (tmp_path / "report" / "report.md").is_file()
    assert time.monotonic() - start < 180  # ~60-90 s on an idle 2-core machine


def _documents(n_docs: int, concepts: int) -> dict:
    import numpy as np

    return {f"note-{i}": np.arange(i * concepts, (i + 1) * concepts) for i in range(n_docs)}


def test_the_heldout_share_adapts_to_a_small_corpus(caplog) -> None:
    from dualpath.config import DualPathConfig, SplitConfig
    from dualpath.corpus.pairs import MIN_HELDOUT_PAIRS, heldout_pair_count, resolve_split

    small = _documents(30, 4)  # 3 pairs a note: 0.1 holds out 15, too few to calibrate on
    assert heldout_pair_count(small, 0.1) < MIN_HELDOUT_PAIRS
    with caplog.at_level("INFO", logger="dualpath"):
        chosen = resolve_split(DualPathConfig().split, small)
    assert 0.1 < chosen.heldout_fraction <= 0.3
    assert heldout_pair_count(small, chosen.heldout_fraction) >= MIN_HELDOUT_PAIRS
    assert f"held-out share {chosen.heldout_fraction:.2f}" in caplog.text
    assert resolve_split(chosen, small) == chosen  # resolved once, kept (a model's saved split)

    # A share the user set is theirs, and a corpus big enough keeps the default.
    assert resolve_split(SplitConfig(heldout_fraction=0.1), small).heldout_fraction == 0.1
    assert DualPathConfig.from_dict({"split": {"heldout_fraction": 0.1}}).split.model_fields_set == {"heldout_fraction"}
    assert resolve_split(SplitConfig(), _documents(1000, 5)).heldout_fraction == 0.1

    caplog.clear()
    with caplog.at_level("WARNING", logger="dualpath"):
        tiny = resolve_split(SplitConfig(), _documents(6, 3))
    assert tiny.heldout_fraction == 0.3 and "add documents" in caplog.text
