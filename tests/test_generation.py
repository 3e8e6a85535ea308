"""End-to-end generation on a small real bank with briefly trained models."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.bank import ConceptBank
from dualpath.bank.layout import CALIBRATION_FILE
from dualpath.decider import Decision, SyncMiner, ThreadedMiner, avoid_rows, make_lane, read_records
from dualpath.errors import CorpusError
from dualpath.models.heuristics import normalize_rows
from dualpath.pipeline.calibrate import calibrate_bank
from dualpath.pipeline.evaluate import DECISIONS, decide_lane, evaluate_generation, heldout_pairs, teacher_forced
from dualpath.pipeline.generator import VERBATIM_COSINE, Generator, Unsayable
from trained_models import tiny_config

PROMPT = "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of 384,400 km."
MAIN_LANES = ("conservative", "neutral", "creative", "legal")


@pytest.fixture(scope="module")
def generator(trained_bank_path):
    gen = Generator.from_bank(trained_bank_path, tiny_config())
    yield gen
    gen.close()


@pytest.mark.parametrize("lane", MAIN_LANES)
def test_generation_yields_well_formed_steps_in_every_lane(generator, lane):
    steps = list(generator.generate(PROMPT, steps=5, lane=lane))
    assert [s.record.step for s in steps] == list(range(5))
    for s in steps:
        assert s.record.lane == lane
        assert s.record.decision in set(Decision)
        assert s.query_source == "tower"
        assert abs(float(np.linalg.norm(s.vector)) - 1.0) < 1e-5
        assert s.vector.shape == (generator.bank.dim,)
        assert s.text  # every step renders to some bank text
        assert s.record.c_max is not None and -1.0 <= s.record.c_max <= 1.0 + 1e-6
        assert 0.0 <= s.record.alpha <= 1.0
        assert {"lvm", "query", "search", "decide", "render", "total"} <= set(s.latency_ms)
        n_star = s.record.neighbour_id
        assert s.neighbour_text == (None if n_star is None else generator.bank.texts([n_star])[0])
        if s.record.decision is Decision.SNAP:
            # SNAP outputs the bank vector exactly and renders its text, not an approximation.
            assert not s.approximate
            assert s.text == s.neighbour_text
            # The bank vector renormalised: float16 storage leaves its norm 1 only to ~1e-4.
            np.testing.assert_allclose(s.vector, generator.bank.vectors([s.record.neighbour_id])[0], atol=2e-5)
        else:
            assert s.approximate
        json.dumps(s.to_dict())  # the record plus text is JSON-serialisable


def test_prompt_concepts_never_come_back_as_shortlist_or_text(generator):
    """docs/protocol.md: the context must not find itself. A prompt made of bank sentences is excluded."""
    bank = generator.bank
    doc_ids = next(ids for ids in bank.documents().values() if len(ids) >= 3)
    prompt = " ".join(bank.texts(doc_ids[:2]))
    for s in generator.generate(prompt, steps=3, lane="conservative"):
        assert s.record.neighbour_id not in set(doc_ids[:2].tolist())
        assert s.text_concept_id not in set(doc_ids[:2].tolist())


class FailingIndex:
    """An index whose every search raises: retrieval is down."""

    def search(self, queries, k):
        raise RuntimeError("index unavailable")


class SlowIndex:
    """An index that answers long after any reasonable timeout."""

    def __init__(self, bank, delay: float) -> None:
        self.bank, self.delay = bank, delay

    def search(self, queries, k):
        time.sleep(self.delay)
        return self.bank.search(queries, k)


def _with_miner(generator: Generator, miner) -> Generator:
    return Generator(generator.bank, generator.lvm, generator.tower, generator.lanes, generator.cfg, miner=miner)


def test_failing_index_makes_every_step_novel_and_generation_completes(generator):
    gen = _with_miner(generator, SyncMiner(FailingIndex()))
    steps = list(gen.generate(PROMPT, steps=4, lane="conservative"))
    assert len(steps) == 4
    for s in steps:
        assert s.record.decision is Decision.NOVEL
        assert s.record.fallback_reason is not None and "index unavailable" in s.record.fallback_reason
        assert s.text  # rendering has its own path to the bank and still works


def test_slow_index_times_out_to_novel(generator):
    cfg = generator.cfg.model_copy(
        update={"decider": generator.cfg.decider.model_copy(update={"retrieval_timeout_s": 0.05})}
    )
    miner = ThreadedMiner(SlowIndex(generator.bank, delay=0.5), workers=1)
    gen = Generator(generator.bank, generator.lvm, generator.tower, generator.lanes, cfg, miner=miner)
    try:
        started = time.perf_counter()
        steps = list(gen.generate(PROMPT, steps=2, lane="neutral"))
        assert [s.record.fallback_reason for s in steps] == ["timeout", "timeout"]
        assert all(s.record.decision is Decision.NOVEL for s in steps)
        assert time.perf_counter() - started < 2 * 0.5 + 5  # never waited for the slow index to finish each step
    finally:
        gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("miner")]


def test_a_restated_context_anchors_below_cosine_1_and_its_successors_find_the_truth(generator):
    """The restated case reads each context sentence said in other words: no anchor is exact, yet the
    successors of its anchors are the true next concept far more often than where the bank lacks the
    document."""
    from dualpath.corpus.pairs import split_from_config
    from dualpath.decider import FEATURES
    from dualpath.pipeline.evaluate import case_rows
    from dualpath.pipeline.grounding import bank_successors

    bank, lvm = generator.bank, generator.lvm
    split = split_from_config(bank.documents(), lvm.training_split(generator.cfg.split))
    table = bank_successors(bank)
    found = {}
    for case in ("restated", "unknown"):
        mode = case_rows(bank, lvm, generator.tower, split.heldout, 500, table, case, split.doc_ids)
        features = mode.candidates.features
        successor = (features[..., FEATURES.index("successor")] == 1) & (mode.candidates.ids >= 0)
        assert not (features[..., FEATURES.index("anchor_exact")][successor] == 1).any()
        found[case] = float((mode.labels & successor).any(axis=1).mean())
    assert found["restated"] > found["unknown"] + 0.2


def test_lane_levels_move_the_decision_mix(generator):
    """A lower SNAP level grounds more: conservative ≥ neutral ≥ legal ≥ creative in SNAP share, over pairs
    whose documents the bank holds and pairs whose documents it does not."""
    from dualpath.corpus.pairs import split_from_config
    from dualpath.decider.grounding import choose_grounding
    from dualpath.pipeline.evaluate import case_rows, decide_grounded
    from dualpath.pipeline.grounding import bank_successors

    bank, lvm = generator.bank, generator.lvm
    split = split_from_config(bank.documents(), lvm.training_split(generator.cfg.split))
    table = bank_successors(bank)
    snapped = {name: [] for name in MAIN_LANES}
    for case in ("added", "unknown"):
        mode = case_rows(bank, lvm, generator.tower, split.heldout, 500, table, case, split.doc_ids)
        grounding = choose_grounding(mode.candidates, generator.confidence)
        for name in MAIN_LANES:
            _, decisions, ids = decide_grounded(mode.rows, grounding, generator.lanes[name], "continuous")
            snapped[name] += [d == "SNAP" for d in decisions]
            if case == "unknown":  # nothing of a pair's own document is left to snap to
                for i in np.flatnonzero(np.asarray(decisions) == "SNAP"):
                    assert ids[i] not in set(mode.rows.hidden[i].tolist())
    share = {name: float(np.mean(v)) for name, v in snapped.items()}
    assert share["conservative"] >= share["neutral"] >= share["legal"] >= share["creative"]
    assert share["conservative"] > 0
    # And a c_max lane that snaps on anything snaps everywhere; one that never snaps never does.
    rows = teacher_forced(bank, lvm, generator.tower, _heldout(generator), depth=500)
    always = make_lane("always", {"tau_snap": -0.99, "tau_novel": -1.0, "dup_window": 0})
    never = make_lane("never", {"tau_snap": 1.0, "tau_novel": 0.9999, "dup_window": 0})
    assert set(decide_lane(bank, rows, always, "continuous")[1]) == {"SNAP"}
    assert set(decide_lane(bank, rows, never, "continuous")[1]) == {"NOVEL"}


def _heldout(generator):
    from dualpath.pipeline.evaluate import heldout_pairs

    return heldout_pairs(generator.bank, generator.lvm.training_split(generator.cfg.split), None)


def test_calibration_gives_a_real_mix_and_generation_uses_it(trained_bank_path, tmp_path, caplog):
    bank_dir = tmp_path / "bank"
    shutil.copytree(trained_bank_path, bank_dir)
    cfg = tiny_config()
    with caplog.at_level("WARNING"):
        uncalibrated = Generator.from_bank(bank_dir, cfg)
    assert any("uncalibrated" in r.message for r in caplog.records)
    assert not uncalibrated.lane("neutral").calibrated
    result = calibrate_bank(uncalibrated.bank, uncalibrated.lvm, uncalibrated.tower, cfg)
    uncalibrated.close()
    assert (bank_dir / CALIBRATION_FILE).is_file()
    lanes = result["lanes"]
    # Intent: conservative grounds more than creative (a lower level of p); the quota baseline is set on c.
    assert lanes["conservative"]["rule"] == "confidence" and lanes["quota-neutral"]["rule"] == "c_max"
    assert lanes["conservative"]["tau_snap"] <= lanes["creative"]["tau_snap"] == pytest.approx(0.9)
    assert lanes["neutral"]["tau_snap"] == pytest.approx(0.5) and lanes["legal"]["tau_snap"] == pytest.approx(0.8)
    fit = result["confidence"]["fit"]
    assert fit["brier"] < fit["brier_base_rate"] and fit["positives"] > 0
    assert set(result["models"]) == {"lvm", "tower", "sampler"} and result["version"] >= 5
    # The unknown case weighs up until even odds is safe there, or as far as the weights go.
    from dualpath.pipeline.grounding import UNKNOWN_SLACK, UNKNOWN_TOUCH, UNKNOWN_WEIGHTS

    confidence = result["confidence"]
    at_even_odds = confidence["unknown_cost_at_even_odds"]
    assert confidence["unknown_weight"] in UNKNOWN_WEIGHTS
    assert confidence["unknown_weight"] == UNKNOWN_WEIGHTS[-1] or (
        at_even_odds["cos"] <= UNKNOWN_SLACK and at_even_odds["grounded_share"] <= UNKNOWN_TOUCH)

    # The near-duplicate cosine is measured in this space too, never above the configured 0.98.
    assert 0.0 < result["dup_threshold"] <= cfg.decider.dup_threshold
    calibrated = Generator.from_bank(bank_dir, cfg)
    try:
        assert calibrated.cfg.decider.dup_threshold == pytest.approx(result["dup_threshold"])
        quota = calibrated.lane("quota-neutral")
        assert quota.calibrated and quota.tau_snap == pytest.approx(lanes["quota-neutral"]["tau_snap"])
        assert calibrated.lane("conservative").tau_snap == pytest.approx(lanes["conservative"]["tau_snap"])
        report = evaluate_generation(
            calibrated.bank, calibrated.lvm, calibrated.tower, {"quota-neutral": quota}, cfg, max_pairs=None,
            cases=("added",),
        )
    finally:
        calibrated.close()
    shares = {d: report["lanes"]["quota-neutral"]["by_decision"][d]["share"] for d in DECISIONS}
    # Scored on the evaluation half of the held-out documents, a real mix (the thresholds came from the other half).
    assert 0.0 < shares["NOVEL"] < 1.0 and shares["SNAP"] + shares["BLEND"] > 0.0
    # On the calibration half itself, the thresholds deliver the lane's shares (15/50/35) by construction.
    with ConceptBank.open(bank_dir, cfg) as bank:
        pairs = heldout_pairs(bank, calibrated.lvm.training_split(cfg.split), 3000, half="calibration")
        rows = teacher_forced(bank, calibrated.lvm, calibrated.tower, pairs, depth=500)
        fitted = np.asarray(decide_lane(bank, rows, quota, "continuous")[1])
    assert float(np.mean(fitted == "SNAP")) == pytest.approx(0.15, abs=0.02)
    assert float(np.mean(fitted == "NOVEL")) == pytest.approx(0.35, abs=0.02)
    assert report["lanes"]["bank-only"]["by_decision"]["SNAP"]["share"] == 1.0
    assert report["lanes"]["lvm-only"]["by_decision"]["NOVEL"]["share"] == 1.0


def test_the_evaluation_tables_fit_a_terminal_without_cutting_a_value(generator):
    from rich.console import Console

    from dualpath.cli.generate import TERMINAL_FREE_RUNNING, cases_tables, free_running_table
    from dualpath.pipeline.evaluate import case_summary
    from dualpath.pipeline.free_running import interval

    lanes = {name: generator.lane(name) for name in ("neutral", "quota-neutral")}
    result = evaluate_generation(generator.bank, generator.lvm, generator.tower, lanes, generator.cfg, max_pairs=200,
                                 free_docs=3, generator=generator, cases=("added", "unknown"))
    free = result["free_running_cases"]["added"]
    # The three-case summary: teacher-forced beside free-running where the terminal is wide enough, else its
    # two halves one above the other, where at 120 columns every row reads on one line, intervals whole.
    wide = Console(width=300, record=True, file=io.StringIO())
    assert len(cases_tables(result, wide)) == 1
    for table in cases_tables(result, wide):
        wide.print(table)
    whole = wide.export_text()
    assert "cos (teacher-forced)" in whole and "cos (free-running text)" in whole
    halves = Console(width=120, record=True, file=io.StringIO())
    assert len(cases_tables(result, halves)) == 2
    for table in cases_tables(result, halves):
        halves.print(table)
    lines = halves.export_text().splitlines()
    for row in case_summary(result):
        for key in ("vs_random", "free_vs_lvm", "free_vs_random"):
            if row[key] is not None:
                assert any(row["lane"] in line and row[key] in line for line in lines), (row["lane"], row[key])
    for width in (80, 120):
        console = Console(width=width, record=True, file=io.StringIO())
        for table in cases_tables(result, console):
            console.print(table)
        console.print(free_running_table(free, "added"))
        text = console.export_text()
        assert "…" not in text, f"a value cut short at {width} columns"
        body = [line for line in text.splitlines() if line.startswith(("┃", "│"))]
        assert all(line.rstrip().endswith(("┃", "│")) for line in body), f"a table wider than {width} columns"
        names = {line.split("│")[1].strip() for line in body if line.startswith("│")}
        assert {"neutral", "random-neutral", "random-quota-neutral", "lvm-only"} <= names, names
    # At 120 columns every value reads on its lines: an interval's three numbers, each whole.
    assert len(TERMINAL_FREE_RUNNING) < 12
    folded = " ".join(text.split())
    for name in ("neutral", "quota-neutral"):
        shown = interval(free["lanes"][name]["versus"]["random"])
        assert shown is not None and all(part in folded for part in shown.split()), shown


def test_a_calibration_of_other_models_is_not_used(trained_bank_path, tmp_path, caplog):
    bank_dir = tmp_path / "bank"
    shutil.copytree(trained_bank_path, bank_dir)
    cfg = tiny_config()
    generator = Generator.from_bank(bank_dir, cfg, calibrating=True)
    calibrate_bank(generator.bank, generator.lvm, generator.tower, cfg)
    generator.close()
    generator = Generator.from_bank(bank_dir, cfg)
    assert generator.lane("neutral").calibrated and not generator.calibration_stale
    generator.close()
    # What `train lvm` does to the calibration: the LVM's weights are no longer the ones it was measured with.
    from dualpath.training.lvm import train_lvm

    with ConceptBank.open(bank_dir, cfg) as bank:
        train_lvm(bank, cfg.model_copy(update={"lvm": cfg.lvm.model_copy(update={"epochs": 1})}),
                  bank_dir / "models" / "lvm")
    with caplog.at_level("WARNING"):
        generator = Generator.from_bank(bank_dir, cfg)
    try:
        assert "the lvm changed since" in generator.calibration_stale
        assert not generator.lane("neutral").calibrated and not generator.lane("quota-neutral").calibrated
    finally:
        generator.close()
    assert any("out of date (the lvm changed" in r.message for r in caplog.records)


def test_generator_without_tower_queries_with_the_lvm_vector(trained_bank_path, tmp_path, caplog):
    bank_dir = tmp_path / "bank"
    shutil.copytree(trained_bank_path, bank_dir, ignore=shutil.ignore_patterns("tower"))
    with caplog.at_level("WARNING"):
        gen = Generator.from_bank(bank_dir, tiny_config())
    try:
        assert any("no trained query tower" in r.message for r in caplog.records)
        steps = list(gen.generate(PROMPT, steps=2))
        assert {s.query_source for s in steps} == {"lvm"}
    finally:
        gen.close()


def test_generation_from_vectors_and_bad_inputs(generator):
    bank: ConceptBank = generator.bank
    ids = next(iter(bank.documents().values()))[:2]
    steps = list(generator.generate(bank.vectors(ids), steps=2, lane="creative", context_ids=ids))
    assert len(steps) == 2
    from dualpath.errors import DualPathError

    with pytest.raises(DualPathError, match="dimension"):
        list(generator.generate(np.ones((2, bank.dim + 1), np.float32), steps=1))
    with pytest.raises(DualPathError, match="unknown lane"):
        list(generator.generate(PROMPT, steps=1, lane="no-such-lane"))
    with pytest.raises(DualPathError, match="steps"):
        list(generator.generate(PROMPT, steps=0))
    with pytest.raises(DualPathError, match="no text"):
        list(generator.generate("   ", steps=1))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dualpath.cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(("reason", "used", "said", "note"), [
    ("empty", 0, 2, "every candidate refused: 2 paraphrases of what was said"),
    ("empty", 1, 1, "every candidate refused: 1 already shown, 1 paraphrase of what was said"),
    ("empty", 0, 0, "retrieval: empty"),
    ("timeout", 3, 0, "retrieval: timeout"),
])
def test_a_step_without_a_candidate_says_whether_retrieval_failed_or_refused_them(reason, used, said, note):
    from dualpath.cli.generate import fallback_note

    assert fallback_note(reason, used, said) == note


def test_cli_generate_json_and_errors(trained_bank_path):
    from concurrent.futures import ThreadPoolExecutor

    calls = [("generate", "--bank", str(trained_bank_path), PROMPT, "--steps", "3", "--lane", "legal", "--json"),
             ("generate", "--bank", str(trained_bank_path), PROMPT, "--steps", "2"),
             ("generate", "--bank", str(trained_bank_path), PROMPT, "--lane", "nope")]
    with ThreadPoolExecutor(len(calls)) as pool:  # three processes at once: each mostly imports and loads
        done, table, bad_lane = pool.map(lambda args: _cli(*args), calls)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(r["lane"] == "legal" and r["decision"] in DECISIONS and r["text"] for r in records)

    assert table.returncode == 0 and "lane neutral" in table.stdout
    # The ms column is each step's own time; the prompt's encoding, before step 0, is stated apart.
    assert "each step's own time. Before step 0 the prompt was encoded in" in " ".join(table.stdout.split())
    # What the bank holds of the prompt: each sentence beside its nearest concept.
    said = " ".join(table.stdout.split())
    assert "The prompt in the bank" in said and '"The Moon is Earth\'s only natural satellite." → "' in said

    assert bad_lane.returncode == 2
    assert "unknown lane" in bad_lane.stderr and "Traceback" not in bad_lane.stderr

    missing = _cli("generate", "--bank", str(Path(trained_bank_path).parent / "missing"), PROMPT)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_cli_generate_writes_one_telemetry_record_per_step(trained_bank_path, tmp_path):
    path = tmp_path / "telemetry.jsonl"
    done = _cli("generate", "--bank", str(trained_bank_path), PROMPT, "--steps", "3", "--telemetry", str(path))
    assert done.returncode == 0, done.stderr
    records = list(read_records(path))
    assert [r.step for r in records] == [0, 1, 2]
    assert all(r.decision.value in DECISIONS for r in records)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_shortlists_read_once_are_the_stacked_shortlists_of_each_row(generator, data):
    from dualpath.decider import Shortlist, ShortlistBatch
    from dualpath.pipeline.evaluate import _shortlists_at

    bank = generator.bank
    rows, width = data.draw(st.integers(1, 6)), data.draw(st.integers(0, 12))
    # Ids anywhere in the bank, -1 anywhere in a row (a hole, a short row, a row with none).
    block = np.array(data.draw(st.lists(st.lists(st.integers(-1, len(bank) - 1), min_size=width, max_size=width),
                                        min_size=rows, max_size=rows)), np.int64).reshape(rows, width)
    ks = data.draw(st.lists(st.integers(1, max(width, 1)), min_size=1, max_size=3))
    batches = _shortlists_at(bank, block, ks)
    assert set(batches) == set(ks)
    for k in ks:
        stacked = ShortlistBatch.stack([
            Shortlist(row[row >= 0], bank.vectors(row[row >= 0])) if (row >= 0).any()
            else Shortlist.failed("empty", bank.dim) for row in block[:, :k]
        ], bank.dim)
        np.testing.assert_array_equal(batches[k].ids, stacked.ids)
        np.testing.assert_array_equal(batches[k].vectors, stacked.vectors)
        assert batches[k].fallbacks == stacked.fallbacks and batches[k].unit == stacked.unit


def test_lanes_decided_together_are_each_lane_decided_alone(generator):
    from dualpath.decider import extreme_lanes
    from dualpath.pipeline.evaluate import decide_lanes

    rows = teacher_forced(generator.bank, generator.lvm, generator.tower, _heldout(generator), depth=100)
    quota = make_lane("quota", {"tau_snap": 0.7, "tau_novel": 0.4, "k": 60})
    mixed = np.random.default_rng(0).permutation(rows.c_max(60))
    runs = [(quota, None), (quota, mixed), *((lane, None) for lane in extreme_lanes(100).values())]
    together = decide_lanes(generator.bank, rows, runs, "continuous")
    assert len(rows.pairs) > 128, "more than one chunk of rows"
    for (lane, decide_by), (outputs, decisions, neighbours) in zip(runs, together, strict=True):
        alone = decide_lane(generator.bank, rows, lane, "continuous", decide_by)
        np.testing.assert_array_equal(outputs, alone[0])
        assert decisions == alone[1]
        np.testing.assert_array_equal(neighbours, alone[2])
    assert len({tuple(d) for _, d, _ in together}) > 1, "the runs decide differently"


def test_lanes_that_output_the_same_vectors_are_searched_once(generator, monkeypatch):
    import dualpath.pipeline.evaluate as evaluate
    from dualpath.decider import extreme_lanes

    rows = teacher_forced(generator.bank, generator.lvm, generator.tower, _heldout(generator), depth=100)
    lanes = extreme_lanes(100)
    novel = decide_lane(generator.bank, rows, lanes["lvm-only"], "continuous")
    snapped = decide_lane(generator.bank, rows, lanes["bank-only"], "continuous")
    alone = [evaluate.summarize_lane(generator.bank, rows, lanes[n], *d) for n, d in
             (("lvm-only", novel), ("bank-only", snapped))]
    searched = []
    monkeypatch.setattr(evaluate, "hit_at", lambda *args: searched.append(args[1]) or evaluate.HIT_K)
    hits: dict[bytes, float] = {}
    evaluate.summarize_lane(generator.bank, rows, lanes["lvm-only"], *novel, hits=hits)
    again = (novel[0].copy(), list(novel[1]), novel[2].copy())  # equal values, another array
    evaluate.summarize_lane(generator.bank, rows, lanes["lvm-only"], *again, hits=hits)
    assert len(searched) == 1 and len(hits) == 1
    evaluate.summarize_lane(generator.bank, rows, lanes["bank-only"], *snapped, hits=hits)
    nudged = novel[0].copy()
    nudged[-1, -1] = np.nextafter(nudged[-1, -1], np.float32(2))  # one value, one ulp
    evaluate.summarize_lane(generator.bank, rows, lanes["lvm-only"], nudged, novel[1], novel[2], hits=hits)
    assert len(searched) == 3 and len(hits) == 3, "other outputs are searched"
    monkeypatch.undo()
    shared: dict[bytes, float] = {}
    for result, (name, decided) in zip(alone, (("lvm-only", novel), ("bank-only", snapped)), strict=True):
        with_memo = evaluate.summarize_lane(generator.bank, rows, lanes[name], *decided, hits=shared)
        assert with_memo[f"hit@{evaluate.HIT_K}"] == result[f"hit@{evaluate.HIT_K}"]


def test_quality_thresholds_closed_form_matches_the_decider(generator):
    """The calibration's closed-form score equals what the decider actually outputs at those thresholds."""
    from dualpath.pipeline.evaluate import quality_thresholds, summarize_lane

    rows = teacher_forced(generator.bank, generator.lvm, generator.tower, _heldout(generator), depth=100)
    best = quality_thresholds(rows, k=100, grid=11)
    lane = make_lane("best", {"tau_snap": best["tau_snap"], "tau_novel": best["tau_novel"], "k": 100})
    outputs, decisions, _ = decide_lane(generator.bank, rows, lane, "continuous")
    measured = summarize_lane(generator.bank, rows, lane, outputs, decisions)["mean_cos"]
    assert measured == pytest.approx(best["mean_cos"], abs=1e-5)
    # It is a maximum over a grid that includes both single paths, so it is at least as good as either.
    for extreme in ("lvm-only", "bank-only"):
        from dualpath.decider import extreme_lanes

        x = extreme_lanes(100)[extreme]
        out_x, dec_x, _ = decide_lane(generator.bank, rows, x, "continuous")
        assert best["mean_cos"] >= summarize_lane(generator.bank, rows, x, out_x, dec_x)["mean_cos"] - 1e-6


def test_incremental_state_gives_the_steps_of_the_full_window_path(trained_bank_path):
    # More steps than the LVM's window (context 4), so the state slides; greedy, so any drift shows.
    steps = {}
    for incremental in (True, False):
        cfg = tiny_config()
        cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"incremental": incremental})})
        gen = Generator.from_bank(trained_bank_path, cfg)
        try:
            steps[incremental] = list(gen.generate(PROMPT, steps=10, lane="neutral"))
        finally:
            gen.close()
            gen.bank.close()
    for a, b in zip(steps[True], steps[False], strict=True):
        assert a.record.decision == b.record.decision and a.record.neighbour_id == b.record.neighbour_id
        assert a.text_concept_id == b.text_concept_id
        np.testing.assert_allclose(a.lvm_vector, b.lvm_vector, atol=2e-5)
        np.testing.assert_allclose(a.vector, b.vector, atol=2e-5)


def test_rendering_from_the_shortlist_is_what_the_index_returns(generator):
    from dualpath.pipeline.generator import search_shortlist_batch, shortlist_nearest

    bank = generator.bank
    rng = np.random.default_rng(0)
    seeds = bank.vectors(rng.choice(len(bank), 64, replace=False))
    queries = seeds
    # Outputs at various distances from the queries: near ones are provable from the shortlist, far ones not.
    outputs = seeds + rng.uniform(0.0, 4.0, size=(64, 1)).astype(np.float32) * rng.normal(size=seeds.shape).astype(
        np.float32) / np.sqrt(bank.dim)
    exclude = [np.array([i], np.int64) for i in range(64)]
    batch, floors = search_shortlist_batch(bank, generator.miner, queries, [50] * 64, exclude)
    found = shortlist_nearest(outputs, batch, floors, queries, exclude, range(64))
    assert 0 < len(found) < 64  # the bound both proves and declines
    exact = generator.renderer.render(outputs, exclude)
    for i, (cid, cosine) in found.items():
        assert cid == exact[i].concept_id
        assert cosine == pytest.approx(exact[i].cosine, abs=1e-3)
    # A row alone takes the scalar form: the same answer as in the batch, with skips that hit its best
    # candidates, paraphrases to pass over, and the scores of an earlier pass over the shortlists.
    unit_outputs = normalize_rows(outputs)
    scored = (unit_outputs, np.matmul(batch.vectors, unit_outputs[:, :, None])[:, :, 0])
    order = np.argsort(-scored[1], axis=1, kind="stable")  # each row's candidates, nearest the output first
    skips = [np.append(exclude[i], batch.ids[i, order[i, 0]]) if i % 3 == 1 else exclude[i] for i in range(64)]
    far = normalize_rows(rng.normal(size=(64, bank.dim)).astype(np.float32))
    said = [batch.vectors[i, order[i, int(i % 3 == 1)]] if i % 2 == 0 else far[i] for i in range(64)]
    noise = 0.05 / np.sqrt(bank.dim) * rng.normal(size=(64, bank.dim))
    avoided = avoid_rows([(said[i] + noise[i])[None].astype(np.float32) for i in range(64)],
                         [np.array([0.9])] * 64, 64, bank.dim)
    # Scores of other vectors for every third row: those rows are scored anew, the rest take theirs.
    other = np.where(np.arange(64)[:, None] % 3 == 0, far, unit_outputs)
    mixed = (other, np.matmul(batch.vectors, other[:, :, None])[:, :, 0])
    answers = []
    for earlier in (None, scored, mixed):
        together = shortlist_nearest(outputs, batch, floors, queries, skips, range(64), avoided, earlier)
        assert 0 < len(together) < 64
        answers.append(together)
        for i in range(64):
            alone = shortlist_nearest(outputs, batch, floors, queries, skips, [i], avoided, earlier)
            assert alone == ({i: together[i]} if i in together else {})
    assert answers[0] == answers[1] == answers[2]
    # A row whose output is the scored vector reads the given scores, not its shortlist: scores that put
    # its best candidate last move its answer; rows that are scored anew keep theirs.
    row = next(i for i in answers[0] if i % 3)
    anew = next(i for i in answers[0] if i % 3 == 0)
    lowered = mixed[1].copy()
    lowered[[row, anew], :] = -1.0
    moved = shortlist_nearest(outputs, batch, floors, queries, skips, range(64), avoided, (mixed[0], lowered))
    assert moved.get(row) != answers[0][row] and moved[anew] == answers[0][anew]


def test_a_long_prompt_is_read_only_as_far_as_generation_uses_it(trained_bank_path):
    generator = Generator.from_bank(trained_bank_path, tiny_config())
    try:
        sentences = [f"Sentence number {i} talks about topic {i % 7}." for i in range(300)]
        concepts, vectors = generator.encode_prompt(" ".join(sentences))
        keep = generator.prompt_concepts
        assert keep == max(generator.context_size, generator.cfg.decider.memory_cap)
        assert concepts == sentences[-keep:] and vectors.shape == (keep, generator.bank.dim)
        with pytest.raises(CorpusError, match="max_pairs must be at least 20"):
            calibrate_bank(generator.bank, generator.lvm, generator.tower, generator.cfg, max_pairs=0)
    finally:
        generator.close()


@pytest.mark.parametrize("lane", ["neutral", "quota-neutral"])
def test_rendering_reuses_the_decision_scores_and_steps_are_bit_for_bit_the_same(generator, monkeypatch, lane):
    """A step renders from the decision's scores of its shortlists (one pass over each), in a lane that
    grounds on evidence and in one that decides on c_max: every step, single and batched, equals a run
    that scores them again."""
    import dualpath.pipeline.generator as module

    bank = generator.bank
    prompts = [np.array([i, i + 1]) for i in range(0, 40, 5)]
    reused = {"count": 0}
    original = module.shortlist_nearest

    def counting(*args, **kwargs):
        outputs, rows, scored = args[0], args[5], args[-1]
        if scored is not None:  # rows whose output is the vector the decision scored: their scores are reused
            reused["count"] += sum(np.array_equal(normalize_rows(outputs[i : i + 1])[0], scored[0][i]) for i in rows)
        return original(*args, **kwargs)

    def rescoring(*args, **kwargs):
        return original(*args[:-1], None, **kwargs)

    runs = {}
    for name, fn in (("reused", counting), ("rescored", rescoring)):
        monkeypatch.setattr(module, "shortlist_nearest", fn)
        single = [list(generator.generate(bank.vectors(p), 4, lane, p, seed=3)) for p in prompts[:3]]
        batched = generator.generate_batch([bank.vectors(p) for p in prompts], 4, lane, prompts, seed=3)
        runs[name] = [step for stream in single + batched for step in stream]
    assert reused["count"] > 0
    for a, b in zip(runs["reused"], runs["rescored"], strict=True):
        assert a.record.to_dict() | {"latency_ms": 0} == b.record.to_dict() | {"latency_ms": 0}
        assert (a.text_concept_id, a.text_cosine) == (b.text_concept_id, b.text_cosine)
        np.testing.assert_array_equal(a.vector, b.vector)


@pytest.mark.parametrize("lane", ["neutral", "quota-neutral"])
def test_a_stream_alone_steps_as_it_does_in_a_batch(generator, lane):
    """One stream takes the single-stream forms of the decision (ground_one, choose_grounded's and
    nearest_unsaid's scalar forms, _choose_one); in a batch it takes the batched ones. Stream i of a batch
    runs as `generate(..., seed=seed + i)`: the same decisions, candidates and texts, and the same vectors
    to float32 rounding (the models' BLAS products round a batch's rows differently from one row's)."""
    bank = generator.bank
    prompts = [np.array([i, i + 1]) for i in range(0, 30, 5)]
    batched = generator.generate_batch([bank.vectors(p) for p in prompts], 5, lane, prompts, seed=11)
    for i, prompt in enumerate(prompts):
        alone = list(generator.generate(bank.vectors(prompt), 5, lane, prompt, seed=11 + i))
        for a, b in zip(alone, batched[i], strict=True):
            same = ("decision", "neighbour_id", "candidate_source", "near_dup", "fallback_reason",
                    "skipped_used", "skipped_paraphrases")
            assert [getattr(a.record, f) for f in same] == [getattr(b.record, f) for f in same]
            assert a.record.confidence == pytest.approx(b.record.confidence, abs=1e-6)
            assert a.record.alpha == pytest.approx(b.record.alpha, abs=1e-5)
            assert (a.text_concept_id, a.text) == (b.text_concept_id, b.text)
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)


@pytest.mark.parametrize("fraction", [0.01, 0.04, 0.2])
def test_calibration_pairs_come_from_their_half_or_say_why_not(wiki_bank, fraction):
    from dualpath.config import SplitConfig
    from dualpath.corpus.pairs import MIN_HELDOUT_PAIRS
    from dualpath.pipeline.evaluate import calibration_pairs

    split = SplitConfig(heldout_fraction=fraction, context=4)
    half = len(heldout_pairs(wiki_bank, split, None, half="calibration"))
    every = len(heldout_pairs(wiki_bank, split, None))
    if every < MIN_HELDOUT_PAIRS:
        with pytest.raises(CorpusError, match=f"only {every} held-out pairs"):
            calibration_pairs(wiki_bank, split, None)
        return
    pairs, source = calibration_pairs(wiki_bank, split, None)
    if half >= MIN_HELDOUT_PAIRS:
        assert (len(pairs), source) == (half, "calibration half of the held-out documents")
    else:
        assert (len(pairs), source) == (every, "every held-out document (a small corpus)")


def test_the_numpy_kernels_decide_and_show_what_the_torch_models_do(generator, monkeypatch):
    """On the CPU the recurrent models and the sampler run as numpy kernels (models/incremental.py,
    models/sampler.py): streams decide and show the same concepts as with the torch path, and their
    vectors agree within float tolerance."""
    import torch

    import dualpath.models.incremental as incremental
    import dualpath.models.sampler as sampler_module

    bank = generator.bank
    prompts = [np.array([i, i + 1]) for i in range(0, 48, 6)]
    vectors = [bank.vectors(p) for p in prompts]

    def torch_integrate(net, x, mean, last, steps, views=None):
        with torch.no_grad():
            return net.integrate(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(last), steps).numpy()

    runs = {"numpy": generator.generate_batch(vectors, 4, "neutral", prompts, seed=5)}
    monkeypatch.setattr(incremental, "_on_cpu", lambda module: False)
    monkeypatch.setattr(sampler_module, "integrate_numpy", torch_integrate)
    runs["torch"] = generator.generate_batch(vectors, 4, "neutral", prompts, seed=5)
    for fast, reference in zip(runs["numpy"], runs["torch"], strict=True):
        for a, b in zip(fast, reference, strict=True):
            assert (a.record.decision, a.text_concept_id) == (b.record.decision, b.text_concept_id)
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), windows=st.lists(st.integers(0, 4), min_size=1, max_size=4),
       theta=st.sampled_from([0.9, 1.0]), steps=st.integers(0, 9))
def test_what_a_stream_may_not_say_is_its_prompt_and_its_last_window_of_shown_concepts(
    seed, windows, theta, steps
) -> None:
    """Unsayable's rows with a finite limit are, per stream, the prompt's concepts (verbatim limit when the
    paraphrase rule is off) and the last `repeat_window` concepts it showed (none with the rule off)."""
    rng = np.random.default_rng(seed)
    contexts = [rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in windows]
    unsayable = Unsayable(contexts, windows, theta, 3)
    shown: list[list[np.ndarray]] = [[] for _ in windows]
    for _ in range(steps):
        showed = np.flatnonzero(rng.random(len(windows)) < 0.7)
        vectors = rng.normal(size=(len(windows), 3)).astype(np.float32)
        unsayable.push(showed, vectors[showed])
        for i in showed:
            shown[i].append(vectors[i])
    vectors, limits = unsayable.stacked()
    for i, window in enumerate(windows):
        recent = shown[i][-window:] if theta < 1.0 and window else []
        want = sorted([(tuple(v), min(theta, VERBATIM_COSINE)) for v in contexts[i]] + [(tuple(v), theta)
                                                                                        for v in recent])
        got = sorted((tuple(v), float(limit)) for v, limit in zip(vectors[i], limits[i], strict=True)
                     if np.isfinite(limit))
        assert got == want


def _with_generation(generator: Generator, **update) -> Generator:
    generation = generator.cfg.generation.model_copy(update=update)
    cfg = generator.cfg.model_copy(update={"generation": generation})
    return Generator(generator.bank, generator.lvm, generator.tower, generator.lanes, cfg)


def test_a_prompt_said_in_other_words_never_shows_its_original_again(generator):
    """A prompt that restates bank sentences: the nearest bank concept of each prompt sentence, at
    generation.prompt_anchor_cosine or closer, counts as said in every lane and baseline (never shown,
    never snapped to). With the rule off the same streams do show some of those originals, so the run
    below can see one."""
    from dualpath.decider import extreme_lanes
    from dualpath.pipeline.grounding import find_anchors, restated_vectors

    bank = generator.bank
    documents = [ids for ids in bank.documents().values() if len(ids) >= 4][:60]
    said = [restated_vectors(bank, ids[:2]) for ids in documents]
    k = max(lane.k for lane in generator.lanes.values())
    decoders = {**{name: generator.lanes[name] for name in MAIN_LANES}, **extreme_lanes(k)}
    originals = []
    for vectors in said:
        ids, cos, _ = find_anchors(bank, vectors)
        originals.append(set(ids[cos >= 0.7].tolist()))
    assert sum(map(len, originals)) >= 20  # enough restated sentences find their anchor that close
    shown_originals = {}
    for threshold in (0.7, 1.0):
        # A paraphrase rule that passes nothing below 0.99 leaves the anchor rule alone to keep originals out.
        gen = _with_generation(generator, prompt_anchor_cosine=threshold, paraphrase_cosine=0.99)
        count = 0
        for name, lane in decoders.items():
            runs = gen.generate_batch(said, steps=4, decoders=[gen.decoder(lane, seed=i) for i in range(len(said))])
            for run, anchors in zip(runs, originals, strict=True):
                for step in run:
                    count += step.text_concept_id in anchors
                    if threshold < 1.0:
                        assert step.record.neighbour_id not in anchors, name
        shown_originals[threshold] = count
    assert shown_originals[0.7] == 0
    assert shown_originals[1.0] > 0


def test_prompt_anchors_match_each_stream_as_one_search_per_stream_would(generator):
    """prompt_anchors matches every prompt concept of every stream (its hidden ids absent) in one search;
    it equals find_anchors stream by stream, and StreamAnchors reads the newest ANCHORS of it, newest first."""
    from dualpath.decider.grounding import ANCHORS
    from dualpath.pipeline.grounding import StreamAnchors, find_anchors, prompt_anchors

    bank = generator.bank
    rng = np.random.default_rng(3)
    documents = [ids for ids in bank.documents().values() if len(ids) >= 3]
    contexts = [bank.vectors(documents[0][:3]), np.zeros((0, bank.dim), np.float32),
                normalize_rows(rng.normal(size=(1, bank.dim)).astype(np.float32)), bank.vectors(documents[1][:2])]
    hidden = [np.asarray(documents[0][:1]), np.zeros(0, np.int64), np.zeros(0, np.int64), np.asarray(documents[1])]
    found = prompt_anchors(bank, contexts, hidden)
    assert [len(ids) for ids, _, _ in found] == [3, 0, 1, 2]
    for (ids, cos, margin), context, h in zip(found, contexts, hidden, strict=True):
        if len(context):
            want = find_anchors(bank, context, [h] * len(context))
            np.testing.assert_array_equal(ids, want[0])
            np.testing.assert_allclose(cos, want[1], atol=1e-6)
            np.testing.assert_allclose(margin, want[2], atol=1e-6)
    assert found[0][0][0] != documents[0][0] and found[0][0][1] == documents[0][1]  # hidden: not found as itself
    assert not set(found[3][0].tolist()) & set(documents[1].tolist())
    anchors = StreamAnchors(found)
    np.testing.assert_array_equal(anchors.ids[0], found[0][0][::-1][:ANCHORS])
    np.testing.assert_array_equal(anchors.ids[1], [-1] * ANCHORS)
    assert anchors.ids[2, 0] == found[2][0][0] and (anchors.ids[2, 1:] == -1).all()
    np.testing.assert_array_equal(anchors.cos[3], found[3][1][::-1][:ANCHORS])


def test_the_demo_shows_each_prompt_in_the_bank_above_its_lanes(generator, tmp_path):
    """`dualpath demo`'s output, prompt by prompt: the prompt's sentences beside their bank matches (as
    `generate` prints them), then every lane's steps."""
    import io

    from rich.console import Console

    from dualpath.cli.report import print_generations
    from dualpath.pipeline.demo import DemoResult

    bank = generator.bank
    typed = " ".join(bank.texts(next(iter(bank.documents().values()))[:2]))  # bank sentences: both said
    result = DemoResult(tmp_path, tmp_path / "bank", tmp_path / "report.md")
    for prompt, case in ((typed, "known"), (PROMPT, "unknown")):
        result.cases[prompt] = case
        result.prompt_matches[prompt] = generator.match_prompt(prompt)
        result.generations[prompt] = {lane: list(generator.generate(prompt, steps=2, lane=lane))
                                      for lane in ("neutral", "creative")}
    result.lanes = {lane: generator.lane(lane) for lane in ("neutral", "creative")}
    console = Console(width=400, record=True, file=io.StringIO())
    print_generations(result, generator.cfg.generation.prompt_anchor_cosine, console)
    out = console.export_text()
    for prompt in result.generations:
        section = out[out.index(prompt[:40]):]
        section = section[: section.index("The lanes show")]
        matches = result.prompt_matches[prompt]
        for match in matches:  # each sentence, its match and cosine, above the first lane
            line = next(x for x in section.splitlines() if f'"{match.sentence}" →' in x)
            assert f"(cos {match.cosine:.2f}{', said' if match.said else ''})" in line
            assert section.index(line) < section.index("neutral\n")
    assert all(m.said for m in result.prompt_matches[typed])
    assert "said" not in "".join(line for line in out.splitlines() if "Moon" in line)


def test_the_prompt_in_the_bank_is_what_generation_counts_as_said(generator):
    """match_prompt names each prompt sentence's nearest bank concept; those marked said (at
    generation.prompt_anchor_cosine or closer) never come back in a generation from that prompt, and a
    hidden document is never matched."""
    from dualpath.corpus.restate import restate
    from dualpath.decider import extreme_lanes

    bank = generator.bank
    documents = [ids for ids in bank.documents().values() if len(ids) >= 4]
    typed = " ".join(bank.texts(documents[0][:2]))  # bank sentences typed verbatim: each finds itself
    matches = generator.match_prompt(typed)
    assert [m.concept_id for m in matches] == documents[0][:2].tolist()
    assert all(m.said and m.cosine > 0.99 and m.text == m.sentence for m in matches)
    hidden = generator.match_prompt(typed, hidden_ids=documents[0])
    assert all(m.concept_id not in set(documents[0].tolist()) and m.cosine < 0.99 for m in hidden)
    assert [m.sentence for m in generator.match_prompt(PROMPT)] == generator.segment_prompt(PROMPT)
    # Bank sentences said in other words: what is marked said is never shown, whatever the lane.
    said = 0
    lanes = [generator.lane("neutral"), generator.lane("creative"), extreme_lanes(100)["lvm-only"]]
    for ids in documents[:20]:
        restated = " ".join(restate(text) for text in bank.texts(ids[:2]))
        matches = generator.match_prompt(restated)
        marked = {m.concept_id for m in matches if m.said}
        said += len(marked)
        for lane in lanes:
            run: list = []
            shown = {s.text_concept_id for s in generator.generate(restated, steps=4, lane=lane, prompt_out=run)}
            assert not shown & marked, (lane.name, restated)
            assert run == matches  # a generation's own search of its prompt is match_prompt's
    assert said >= 5  # enough restatements land that close for the check to mean something
    # A batch gives each text prompt its list, its hidden ids absent, and an encoded prompt none.
    restated = [" ".join(restate(text) for text in bank.texts(ids[:2])) for ids in documents[:2]]
    lists: list = []
    generator.generate_batch([*restated, bank.vectors(documents[2][:2])], steps=1, prompts_out=lists,
                             hidden_ids=[documents[0], (), ()])
    assert lists == [generator.match_prompt(restated[0], documents[0]), generator.match_prompt(restated[1]), []]


def test_a_generation_after_warming_the_compiled_loops_compiles_nothing_more(trained_bank_path):
    """`decider.kernels.warm()` and `models.cells.warm()` (what `make setup` runs) build the compiled loops
    for exactly the types a generation passes them: in a fresh process, single streams in a lane that grounds
    on evidence (with candidates inside and outside their shortlists) and in a c_max lane, and batches of
    streams in the same lanes, add no build to any entry point."""
    code = """
import json, sys
sys.path.insert(0, sys.argv[2])
import dualpath.decider.grounding as grounding
from dualpath.decider import kernels
from dualpath.models import cells
from dualpath.pipeline.generator import Generator
from trained_models import tiny_config

kernels.warm()
cells.warm()
def builds():
    return {f.py_func.__name__: sorted(map(str, f.signatures)) for f in kernels.ENTRY_POINTS + cells.ENTRY_POINTS}
before = builds()
outside = [0, 0]
original, original_batch = grounding.ground_stream_read, grounding.pick_outside
def counted(*args):
    outside[0] += 1
    return original(*args)
def counted_batch(*args):
    outside[1] += 1
    return original_batch(*args)
grounding.ground_stream_read, grounding.pick_outside = counted, counted_batch
gen = Generator.from_bank(sys.argv[1], tiny_config())
documents = list(gen.bank.documents().values())[:6]
# a short shortlist (K = 5) leaves the anchors' successors outside it: the grounding reads them from the bank
short = gen.lane("neutral").model_copy(update={"name": "short", "k": 5})
for lane in ("neutral", "quota-neutral", short):
    for ids in documents:
        ids = ids[:2]
        list(gen.generate(gen.bank.vectors(ids), 3, lane, ids))
for lane in ("neutral", short):
    gen.generate_batch([gen.bank.vectors(ids[:2]) for ids in documents], 3, lane, [ids[:2] for ids in documents])
after = builds()
print(json.dumps({"new": {name: sorted(set(after[name]) - set(before[name])) for name in after},
                  "outside": outside}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(trained_bank_path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert min(result["outside"]) > 0  # the slow paths (a successor outside the shortlist), alone and batched, ran
    assert all(not new for new in result["new"].values()), {k: v for k, v in result["new"].items() if v}
