"""The benchmark suite: a tiny end-to-end run on the trained test bank, and its measurement helpers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.bank.tuning import recall_at_k
from dualpath.benchsuite.search import add_marginal_memory
from dualpath.benchsuite.stages import _share_schedule
from dualpath.benchsuite.suite import QUICK, run_suite
from dualpath.benchsuite.synthetic import exact_top_k, synthetic_set
from dualpath.benchsuite.tables import finite_or_none, format_value
from dualpath.benchsuite.timing import stats, with_ratio

TINY = replace(
    QUICK, name="tiny", synthetic=(2_000,), queries=48, single_queries=15, single_calls=6, batch_sizes=(8,),
    encode_batch=8, encode_calls=2, decision_steps=20, decision_batch=8, generation_prompts=3, generation_steps=2,
    generation_batches=(4,), training_pairs=150, tower_epochs=1, quality_pairs=150, free_docs=2, scale=3_000,
    scale_epochs=2, encode_processes=24, generation_scale=2_000, generation_scale_ks=(50, 10),
)
SECTIONS = {
    "encode", "lvm_step", "tower", "decision", "generation", "generation_floors", "generation_index",
    "generation_scale", "generation_scale_floors", "search",
    "memory_bank", "training",
    "memory_training", "tower_kinds", "retrieval_quality", "lvm_quality", "dual_path_quality", "grounding_cases",
    "free_running_quality",
    "scale_encode", "scale", "scale_epochs",
}


@pytest.fixture(scope="module")
def suite_run(trained_bank_path: Path, text_encoder, tmp_path_factory) -> tuple[Path, dict]:
    from dualpath.bank import ConceptBank

    out = tmp_path_factory.mktemp("bench")
    with ConceptBank.open(trained_bank_path, encoder=text_encoder) as bank:
        result = run_suite(out, bank=bank, sizes=TINY)
    return out, result.results


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_suite_writes_every_section(suite_run: tuple[Path, dict]) -> None:
    out, results = suite_run
    on_disk = _strict_json(out / "results.json")
    assert on_disk["sections"].keys() == SECTIONS
    for key, section in on_disk["sections"].items():
        assert section["rows"], f"section {key} measured nothing"
    assert not (out / ".work").exists()  # the synthetic banks are removed after measuring
    markdown = (out / "results.md").read_text()
    assert markdown.count("\n### ") == len(SECTIONS)
    for section in on_disk["sections"].values():
        header = "| " + " | ".join(header for _, header in section["columns"]) + " |"
        assert header in markdown
    machine = (out / "machine.md").read_text()
    assert "load average" in machine and "cores" in machine and "faiss-cpu" in machine
    assert results["machine"]["start"]["logical_cores"] >= 1


def test_results_say_how_the_suite_ran_and_make_the_docs_page(suite_run: tuple[Path, dict]) -> None:
    from dualpath.benchsuite.report import results_page

    out, results = suite_run
    run = _strict_json(out / "results.json")["suite"]["run"]
    assert run["own_bank"] is True and run["quick"] is False and run["only"] == []
    assert run["bank_concepts"] > 0
    page = results_page(results)
    for section in results["sections"].values():
        assert f"## {section['title']}\n" in page
    assert str(out) not in page and results["suite"]["bank"] not in page


def test_scale_section_measures_build_and_training_memory(suite_run: tuple[Path, dict]) -> None:
    sections = suite_run[1]["sections"]
    build, training, tower = sections["scale"]["rows"]
    raw_mib = 3_000 * 384 * 4 / 2**20
    assert build["vectors"] == 3_000 and build["raw_mib"] == pytest.approx(raw_mib)
    assert build["index_mib"] > 0 and build["peak_mib"] > build["index_mib"]
    assert build["x_bound"] == pytest.approx(build["peak_mib"] / (1.5 * raw_mib + build["index_mib"]))
    assert training["pairs"] > 2_000 and training["pairs_per_s"] > 0
    assert tower["name"] == "tower training (2 epochs)" and tower["pairs"] == training["pairs"]
    assert tower["pairs_per_s"] > 0 and tower["peak_mib"] > 0
    epochs = sections["scale_epochs"]["rows"]
    assert [r["name"] for r in epochs] == ["LVM epoch 1", "LVM epoch 2", "tower epoch 1", "tower epoch 2"]
    assert epochs[0]["x_epoch_1"] == epochs[2]["x_epoch_1"] == 1.0
    single, multi = sections["scale_encode"]["rows"]
    assert single["x_baseline"] == 1.0 and multi["name"].startswith("2 worker processes") and multi["per_s"] > 0
    assert multi["min_cos"] > 0.999, "the pool encodes what one process does"


def test_suite_figures_are_sane(suite_run: tuple[Path, dict]) -> None:
    _, results = suite_run
    for key, section in results["sections"].items():
        for row in section["rows"]:
            for column, value in row.items():
                if isinstance(value, float):
                    assert math.isfinite(value), (key, row["name"], column)
                if column.startswith("x_") and value is not None:
                    assert value > 0, (key, row["name"], column, value)
                if column.endswith("_ms") or column in ("per_s", "build_s", "pairs_per_s", "epoch_s"):
                    assert value > 0, (key, row["name"], column, value)
            if "median_ms" in row and "p99_ms" in row:
                assert row["median_ms"] <= row["p99_ms"] + 1e-9
    sections = results["sections"]
    for row in sections["search"]["rows"]:
        assert 0.0 <= row["recall_at_10"] <= 1.0
        if row["name"] == "flat":  # fp16 codes against exact float32: near-exact, ties aside
            assert row["recall_at_10"] >= 0.95 and row["x_flat"] == pytest.approx(1.0)
    sets = sorted({r["vectors"] for r in sections["search"]["rows"]})
    assert len(sets) == 2 and sets[0].startswith("bank ") and sets[1] == "synthetic 2k"
    scale = sections["generation_scale"]["rows"]
    groups = {(next((k for k in ("IVF", "HNSW") if r["index"].startswith(k)), r["index"]), r["k"]) for r in scale}
    assert groups == {(kind, k) for kind in ("IVF", "HNSW") for k in (50, 10)}, groups
    for row in scale:
        assert 0.0 <= row["recall_at_10"] <= 1.0
        if row["name"] == "whole step (baseline)":
            assert row["x_baseline"] == pytest.approx(1.0)
    assert sum(r["name"] == "batched step, 4 streams" for r in scale) == 4
    # The bank's own vectors under each approximate index, against the flat single step above.
    flat_step = next(r for r in sections["generation"]["rows"] if r["name"] == "whole step (baseline)")
    per_index = sections["generation_index"]["rows"]
    assert {r["index"].split(",")[0][:3] for r in per_index} == {"IVF", "HNS"}
    for row in per_index:
        assert 0.0 <= row["recall_at_10"] <= 1.0
        assert row["x_baseline"] == pytest.approx(row["median_ms"] / flat_step["median_ms"])
    floors = sections["generation_floors"]["rows"]
    assert {r["streams"] for r in floors} == {1, 4}
    scale_floors = sections["generation_scale_floors"]["rows"]
    assert {(r["index"].split(",")[0][:3], r["k"]) for r in scale_floors} == {
        (kind, k) for kind in ("IVF", "HNS") for k in (50, 10)}
    for row in floors + scale_floors:
        if "floor_ms" in row and "median_ms" in row:  # each stage beside its floor, measured in the same run
            assert row["x_floor"] == pytest.approx(row["median_ms"] / row["floor_ms"])
            assert row["x_cold_floor"] == pytest.approx(row["median_ms"] / row["cold_floor_ms"])
    assert {r["name"].strip() for r in floors} >= {"whole step", "search", "decide", "render"}
    decision = {r["name"]: r for r in sections["decision"]["rows"]}
    in_cache = decision["choose_next_vector, shortlist in cache"]
    assert in_cache["x_baseline"] == pytest.approx(
        in_cache["median_ms"] / decision["bare matvec + argmax, shortlist in cache"]["median_ms"]
    )
    for row in sections["memory_bank"]["rows"]:
        assert row["bank_mib"] > 0 and row["raw_float32_mib"] > 0
    kinds = {r["name"] for r in sections["tower_kinds"]["rows"]}
    assert kinds == {f"{k} tower" for k in ("gru", "bigru", "lstm", "mlp", "attn")} | {"last", "mean", "ewm", "oracle"}
    oracle = next(r for r in sections["tower_kinds"]["rows"] if r["name"] == "oracle")
    assert oracle["R@1"] > 0.95  # the true target finds itself: the table ranks what it claims to
    for row in sections["retrieval_quality"]["rows"] + sections["tower_kinds"]["rows"]:
        recalls = [row[f"R@{k}"] for k in (1, 10, 100, 500, 1000)]
        assert all(0.0 <= r <= 1.0 for r in recalls) and recalls == sorted(recalls)
        assert 0.0 <= row["MRR"] <= 1.0
    for row in sections["dual_path_quality"]["rows"]:
        shares = [row[k] for k in ("snap_share", "blend_share", "novel_share", "novel_dup_drop_share")]
        assert sum(shares) == pytest.approx(1.0)
        assert -1.0 <= row["mean_cos"] <= 1.0 + 1e-5  # a SNAP to the truth itself: 1 up to float32
    lanes = {r["name"]: r for r in sections["dual_path_quality"]["rows"]}
    cases = sections["grounding_cases"]["rows"]
    assert {r["case"] for r in cases} == {"known", "added", "restated", "unknown"}
    for row in cases:
        assert 0.0 <= row["snap"] <= 1.0 and -1.0 <= row["cos"] <= 1.0 + 1e-5
        if row["case"] == "unknown":  # the bank holds nothing of the document: nothing exact to show
            assert row["exact"] == 0.0
    assert lanes["lvm-only"]["novel_share"] == 1.0 and lanes["bank-only"]["snap_share"] == 1.0
    archs = {(r["model"], r["name"].split()[0]) for r in sections["training"]["rows"]}
    assert ("LVM", "transformer") in archs and ("tower", "attn") in archs
    epochs = [r for r in sections["memory_training"]["rows"] if r["model"] == "lvm"]
    assert len(epochs) == 2 and epochs[0]["x_epoch_1"] == pytest.approx(1.0)


def test_cli_refuses_a_missing_bank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dualpath.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--bank", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- measurement helpers ----------------------------------------------------------------------------


def test_recall_of_exact_search_is_one_and_of_wrong_ids_zero() -> None:
    vectors, queries = synthetic_set(3_000, 20, 32, seed=1)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    truth = exact_top_k(queries, vectors, 10)
    brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert np.array_equal(truth, brute)
    assert recall_at_k(truth, truth) == 1.0
    assert recall_at_k(np.full_like(truth, -1), truth) == 0.0
    half = truth.copy()
    half[:, 5:] = -1
    assert recall_at_k(half, truth) == pytest.approx(0.5)


def test_clustered_queries_find_their_cluster() -> None:
    # Same-cluster cosine ≈ 0.67, other clusters ≈ 0: a query's nearest neighbour is far above chance.
    vectors, queries = synthetic_set(3_000, 50, 128, seed=2)
    best = (queries @ vectors.T).max(axis=1)
    assert np.median(best) > 0.5


def test_marginal_memory_removes_the_fixed_part() -> None:
    fixed, per_vector = 30.0, 0.001  # MiB
    rows = [{"name": "flat", "n": n, "bank_mib": fixed + per_vector * n} for n in (10_000, 100_000)]
    add_marginal_memory(rows, dim=384)
    assert "marginal_per_million_mib" not in rows[0]
    assert rows[1]["marginal_per_million_mib"] == pytest.approx(per_vector * 1e6)
    assert rows[1]["x_raw_marginal"] == pytest.approx(per_vector * 1e6 / (384 * 4 * 1e6 / 2**20))


def test_stats_and_ratios() -> None:
    ms = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    s = stats(ms, per_call=2)
    assert s["median_ms"] == 1.5 and s["p99_ms"] <= 50.0
    assert s["per_s"] == pytest.approx(1000 / (ms.mean() / 2))
    rows = with_ratio({"base": {"median_ms": 2.0}, "fast": {"median_ms": 1.0}}, "base")
    assert [r["name"] for r in rows] == ["base", "fast"] and [r["x_baseline"] for r in rows] == [1.0, 0.5]


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["median_ms", "x_baseline", "snap_share", "rss_mib", "build_s", "per_s", "R@10", "name"]),
    value=st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.floats(), st.text(max_size=5)),
)
def test_every_value_formats_to_one_cell(key: str, value: object) -> None:
    cell = format_value(key, value)
    if isinstance(value, str):  # strings (row names) pass through as they are
        assert cell == value
    else:  # anything else is one non-empty cell that cannot break a table row
        assert cell and "\n" not in cell and "|" not in cell
    if isinstance(value, float) and not math.isfinite(value):
        assert cell == "–"


def test_finite_or_none_makes_strict_json() -> None:
    data = {"a": [1.0, float("nan")], "b": {"c": float("inf"), "d": "x"}, "e": (float("-inf"),)}
    clean = finite_or_none(data)
    assert clean == {"a": [1.0, None], "b": {"c": None, "d": "x"}, "e": [None]}
    json.dumps(clean, allow_nan=False)


@given(share=st.floats(0.0, 1.0), b=st.integers(1, 512))
def test_a_floor_share_schedule_carries_the_share(share: float, b: int) -> None:
    """Floor work that a share of the stream-steps do is timed as `rows` streams every `every`-th call: on
    average the share of the b streams, to within half a stream; none at all for a share of 0 (or one too
    small to reach a call in a billion)."""
    rows, every = _share_schedule(share, b)
    if share * b < 1e-9:
        assert (rows, every) == (0, 0)
        return
    assert 1 <= rows <= b and every >= 1
    assert abs(rows / every - share * b) <= 0.5
