"""Search settings tuned per depth to a stated recall (bank/tuning.py), and the FAISS backend using them."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.bank import ConceptBank
from dualpath.bank import tuning as tuning_module
from dualpath.bank.layout import MANIFEST_FILE
from dualpath.bank.tuning import SearchTuning, exact_neighbours
from dualpath.config import DualPathConfig
from test_bank import clustered_unit_vectors, synthetic_concepts


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 60), q=st.integers(1, 8), k=st.integers(1, 10),
       block=st.integers(1, 70))
def test_exact_neighbours_are_the_best_other_rows_whatever_the_block(seed, n, q, k, block) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 5)).astype(np.float32)
    query_ids = rng.choice(n, size=min(q, n), replace=False).astype(np.int64)
    k = min(k, n - 1)
    original = tuning_module.EXACT_BLOCK
    tuning_module.EXACT_BLOCK = block
    members = np.flatnonzero(rng.random(n) < 0.6)  # a domain's rows; the queries may lie outside it
    members = members if len(members) >= 2 else np.arange(n)
    try:
        found = exact_neighbours(vectors, query_ids, k)
        within = exact_neighbours(vectors, query_ids, min(k, len(members) - 1), members)
    finally:
        tuning_module.EXACT_BLOCK = original
    scores = vectors[query_ids] @ vectors.T
    scores[np.arange(len(query_ids)), query_ids] = -np.inf
    for row, found_row, own in zip(scores, found, query_ids, strict=True):
        assert own not in found_row.tolist()
        # The k best scores (ties may be broken either way).
        np.testing.assert_allclose(np.sort(row[found_row])[::-1], np.sort(row)[::-1][:k], rtol=1e-6)
    for row, within_row, own in zip(scores, within, query_ids, strict=True):
        assert set(within_row.tolist()) <= set(members.tolist()) - {own}
        best = np.sort(row[members])[::-1][: within_row.size]  # the k best of the domain's (own: -inf)
        np.testing.assert_allclose(np.sort(row[within_row])[::-1], best, rtol=1e-6)


def test_a_setting_is_the_tuned_one_at_a_tuned_depth_and_grows_with_depth_between() -> None:
    tuned = SearchTuning("nprobe", 0.95, (10, 100, 500, 1000), (4, 16, 64, 90), (0.96, 0.95, 0.97, 0.95), 200)
    assert [tuned.setting(k) for k in (1, 10, 100, 500, 1000, 5000)] == [4, 4, 16, 64, 90, 90]
    between = [tuned.setting(k) for k in range(1, 1200, 7)]
    assert between == sorted(between) and 16 < tuned.setting(200) < 64
    assert tuned.setting(502) in (64, 65)  # a step's K = 500 plus two excluded ids: the K = 500 setting
    assert SearchTuning.from_dict(tuned.to_dict()) == tuned
    assert SearchTuning.from_dict({"knob": "nprobe"}) is None
    assert SearchTuning.from_dict({**tuned.to_dict(), "settings": [0, 1, 2, 3]}) is None
    # Settings measured within domains holding 8 % of the rows: a search in a 2 % domain widens them 4×.
    within = SearchTuning("nprobe", 0.95, (10, 100), (20, 60), (0.96, 0.95), 200, "a, b", 0.08)
    assert within.setting_for(10, 0.5) == 20 and within.setting_for(10, 0.02) == 80
    both = dataclasses.replace(tuned, filtered=within)
    assert SearchTuning.from_dict(both.to_dict()) == both
    # A filtered part in another form is dropped: domain searches then widen the unfiltered settings.
    assert SearchTuning.from_dict({**both.to_dict(), "filtered": {"knob": "nprobe"}}) == tuned


def test_filtered_searches_are_tuned_on_the_narrowest_domains_of_a_useful_size() -> None:
    # 10,000 rows: domains of 5,000 / 2,000 / 1,000 / 500 / 300 / 150 / 50 rows and 2,000 without one.
    sizes = {"e": 5000, "a": 2000, "b": 1000, "c": 500, "d": 300, "f": 150, "tiny": 50}
    rows = [d for d, n in sizes.items() for _ in range(n)] + [None] * 2000
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    chosen = tuning_module.tuned_domains(rows)
    assert [d for d, _ in chosen] == ["f", "d", "c", "b"]  # under 1 % (tiny) is left out
    for domain, members in chosen:
        assert members.tolist() == [i for i, d in enumerate(rows) if d == domain]
    # No domain holds 1 %: the widest that can be measured at all (the narrower widen their settings).
    few = ["x"] * 30 + ["y"] * 20 + ["z"] * 5 + [None] * 9945
    assert [d for d, _ in tuning_module.tuned_domains(few)] == ["x", "y"]
    assert tuning_module.tuned_domains([None] * 100) == [] and tuning_module.tuned_domains(None) == []


@pytest.mark.parametrize(("short", "chosen"), [(0.45, 2), (0.2, 1)])
def test_a_setting_holds_only_where_its_recall_surely_reaches_the_target(short, chosen) -> None:
    # Setting 1 misses the 10th neighbour of a share `short` of the queries: a mean recall of 0.955 (above the
    # target, but within sampling of it over 100 queries) or 0.98 (surely above); setting 2 misses nothing.
    vectors = clustered_unit_vectors(400, 16, 20)

    def search(setting: int, queries: np.ndarray, k: int) -> np.ndarray:
        found = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]  # its own match first, as a bank's search
        if setting == 1:
            found[: round(short * len(found)), k - 1] = -1
        return found

    tuned = tuning_module.tune_search(search, vectors, lambda depth: [1, 2], "nprobe", 0.95, depths=(10,),
                                      queries=100)
    assert tuned is not None and tuned.settings == (chosen,)
    assert tuned.measured == (pytest.approx(1 - short / 10) if chosen == 1 else 1.0,)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10), min_size=1, max_size=50), st.floats(0.1, 3))
def test_the_recall_bound_lies_below_the_mean_by_the_spread(tenths, z) -> None:
    hits = np.asarray(tenths, dtype=np.float64) / 10
    bound = tuning_module.recall_lower_bound(hits, z)
    assert bound <= hits.mean() + 1e-12
    assert (bound == pytest.approx(hits.mean())) == (len(set(tenths)) == 1)
    assert tuning_module.recall_lower_bound(hits, 0.0) == pytest.approx(hits.mean())
    assert tuning_module.recall_lower_bound(hits, z + 1) <= bound + 1e-12


def _bank(tmp_path, name: str, bank_cfg: dict) -> tuple[ConceptBank, np.ndarray]:
    points = clustered_unit_vectors(4200, 32, 60)
    cfg = DualPathConfig.from_dict({"bank": bank_cfg})
    return ConceptBank.from_vectors(tmp_path / name, points[:4000], synthetic_concepts(4000), "synthetic", cfg), (
        points[4000:])


def _recall(bank: ConceptBank, queries: np.ndarray, k: int) -> float:
    exact = np.argsort(-(queries @ bank.vectors(np.arange(len(bank))).T), axis=1)[:, :k]
    ids, _ = bank.search(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)]))


def _domain_recall(bank: ConceptBank, queries: np.ndarray, k: int, domain: str) -> float:
    members = np.flatnonzero(np.asarray([c.domain for c in bank.concepts(np.arange(len(bank)))]) == domain)
    exact = members[np.argsort(-(queries @ bank.vectors(members).T), axis=1)[:, :k]]
    ids, _ = bank.search(queries, k, domain=domain)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)]))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_an_approximate_bank_is_tuned_to_its_stated_recall_at_each_depth(tmp_path, kind) -> None:
    bank, queries = _bank(tmp_path, kind, {"index": kind, "recall": 0.95})
    tuned = SearchTuning.from_dict(bank.manifest["index"]["search"])
    assert tuned is not None and tuned.knob == ("nprobe" if kind == "ivf" else "efSearch")
    assert list(tuned.settings) == sorted(tuned.settings) and min(tuned.measured) >= 0.95
    for k in (10, 100, 500):  # held-out queries of the same clusters: the stated share, within sampling
        assert _recall(bank, queries, k) >= 0.92, k
    # Searches confined to a domain are tuned too (domains a, b and c each hold a quarter of the rows).
    assert tuned.filtered is not None and tuned.filtered.domain == "a, b, c" and min(tuned.filtered.measured) >= 0.95
    for k in (10, 100):
        assert _domain_recall(bank, queries, k, "b") >= 0.92, k
    bank.close()
    with ConceptBank.open(tmp_path / kind) as reopened:  # the manifest carries the settings
        assert _recall(reopened, queries, 100) >= 0.92


def test_a_fixed_nprobe_without_a_stated_recall_misses_deep_neighbours_the_tuned_one_finds(tmp_path) -> None:
    fixed, queries = _bank(tmp_path, "fixed", {"index": "ivf", "recall": None, "nprobe": 2})
    assert "search" not in fixed.manifest["index"]
    tuned, _ = _bank(tmp_path, "tuned", {"index": "ivf", "nprobe": 2})
    assert _recall(fixed, queries, 500) < 0.9 <= _recall(tuned, queries, 500)
    fixed.close()
    tuned.close()


def test_a_flat_bank_has_nothing_to_tune(tmp_path) -> None:
    bank, queries = _bank(tmp_path, "flat", {"index": "flat"})
    assert "search" not in bank.manifest["index"] and _recall(bank, queries, 100) > 0.999
    bank.close()


def test_a_bank_opened_with_another_stated_recall_says_its_settings_were_tuned_to_its_own(tmp_path, caplog) -> None:
    bank, _ = _bank(tmp_path, "ivf", {"index": "ivf", "recall": 0.95})
    bank.close()
    with caplog.at_level("WARNING"), ConceptBank.open(tmp_path / "ivf", DualPathConfig.from_dict(
            {"bank": {"recall": 0.99}})):
        pass
    assert "tuned to recall 0.95, not bank.recall 0.99" in caplog.text


def test_bank_tune_measures_the_settings_an_untuned_bank_lacks(tmp_path, caplog) -> None:
    """A bank without tuned settings (an earlier dualpath's, or built with bank.recall null) says so when
    opened; `dualpath bank tune` (the installed command) measures them into its manifest, and the bank
    then returns the stated share of deep neighbours."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    bank, queries = _bank(tmp_path, "old", {"index": "ivf", "recall": None, "nprobe": 2})
    bank.close()
    with caplog.at_level("WARNING"), ConceptBank.open(tmp_path / "old") as reopened:
        before = _recall(reopened, queries, 500)
    assert "no search settings tuned to a recall" in caplog.text and "bank tune" in caplog.text
    dualpath = Path(sys.executable).with_name("dualpath")
    done = subprocess.run([str(dualpath), "bank", "tune", str(tmp_path / "old"), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tuned = json.loads(done.stdout)["search"]
    assert tuned["knob"] == "nprobe" and tuned["recall"] == 0.95 and min(tuned["measured"]) >= 0.95
    with ConceptBank.open(tmp_path / "old") as reopened:
        assert reopened.manifest["index"]["search"] == tuned
        assert before < 0.9 <= _recall(reopened, queries, 500)
    flat, _ = _bank(tmp_path, "flat", {"index": "flat"})
    flat.close()
    done = subprocess.run([str(dualpath), "bank", "tune", str(tmp_path / "flat")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "nothing" not in done.stderr and "no search settings to tune" in done.stdout
    bad = subprocess.run([str(dualpath), "bank", "tune", str(tmp_path / "old"), "--recall", "2"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("where", ["lite", "server"])
def test_a_milvus_bank_is_tuned_on_the_index_its_searches_read(tmp_path, request, monkeypatch, where) -> None:
    """Milvus is tuned as FAISS is, on the index a search reads: Milvus Lite and a server both build it after
    the flush in the background (a server then swaps the indexed segments in), and until then search every
    row, where any nprobe would look perfect. The settings are recorded in the manifest, every search uses
    them, and the same bank searched with its fixed nprobe 2 misses deep neighbours."""
    pytest.importorskip("milvus_lite")

    # Depths to 500 and 100 queries, not a build's 1,000 and 200: the same measurement, a fifth of the results
    # Milvus returns (their transfer is most of its time).
    monkeypatch.setattr(tuning_module, "tune_search",
                        functools.partial(tuning_module.tune_search, depths=(10, 100, 500), queries=100))
    uri = request.getfixturevalue("milvus_server_uri") if where == "server" else str(tmp_path / "bank.db")
    points = clustered_unit_vectors(1600, 32, 60)
    # No domains: one partition, whose 1,500 rows a server indexes (it scans segments under 1,024 rows whole).
    concepts = [dataclasses.replace(c, domain=None) for c in synthetic_concepts(1500)]
    cfg = DualPathConfig.from_dict({"bank": {"backend": "milvus", "milvus_uri": uri, "index": "ivf", "nprobe": 2}})
    queries = points[1500:]
    with ConceptBank.from_vectors(tmp_path / "bank", points[:1500], concepts, "synthetic", cfg) as bank:
        tuned = SearchTuning.from_dict(bank.manifest["index"]["search"])
        assert tuned is not None and tuned.knob == "nprobe" and min(tuned.measured) >= 0.95
        assert list(tuned.settings) == sorted(tuned.settings) and tuned.settings[-1] > 2
        assert _recall(bank, queries, 100) >= 0.92 and _recall(bank, queries, 500) >= 0.92
    fixed = DualPathConfig.from_dict({"bank": {**cfg.bank.model_dump(), "recall": None}})
    with ConceptBank.open(tmp_path / "bank", fixed) as untuned:
        assert _recall(untuned, queries, 500) < 0.9


def test_searches_within_a_domain_are_tuned_to_the_stated_recall_on_milvus_lite(tmp_path) -> None:
    """Twelve random domains of ~8 % each. Tuned for unfiltered searches only (a bank tuned before domains
    were), a Milvus Lite HNSW bank returned 80-95 % of a domain's top 10; tuned within its four narrowest
    domains, the other eight domains' searches reach the stated recall from held-out queries."""
    pytest.importorskip("milvus_lite")
    points = clustered_unit_vectors(6200, 32, 200, seed=5)
    domains = [f"d{j:02d}" for j in np.random.default_rng(1).integers(0, 12, 6000)]
    concepts = [dataclasses.replace(c, domain=d) for c, d in zip(synthetic_concepts(6000), domains, strict=True)]
    cfg = DualPathConfig.from_dict({"bank": {"backend": "milvus", "milvus_uri": str(tmp_path / "bank.db"),
                                             "index": "hnsw", "recall": 0.95}})
    queries = points[6000:]
    with ConceptBank.from_vectors(tmp_path / "bank", points[:6000], concepts, "synthetic", cfg) as bank:
        tuned = SearchTuning.from_dict(bank.manifest["index"]["search"])
        assert tuned is not None and tuned.filtered is not None and min(tuned.filtered.measured) >= 0.95
        others = sorted(set(domains) - set(tuned.filtered.domain.split(", ")))
        assert len(others) == 8
        assert np.mean([_domain_recall(bank, queries, 10, d) for d in others]) >= 0.93
    # The same bank as an earlier dualpath tuned it: its manifest without the filtered settings.
    manifest = json.loads((tmp_path / "bank" / MANIFEST_FILE).read_text())
    del manifest["index"]["search"]["filtered"]
    (tmp_path / "bank" / MANIFEST_FILE).write_text(json.dumps(manifest))
    with ConceptBank.open(tmp_path / "bank", cfg) as earlier:
        assert earlier.manifest["index"]["search"].get("filtered") is None
        assert np.mean([_domain_recall(earlier, queries, 10, d) for d in others]) < 0.92


def test_a_narrow_domain_of_an_hnsw_bank_is_searched_exactly(tmp_path) -> None:
    """A beam wide enough to find a narrow domain's neighbours from a query outside it scores more rows than
    the domain holds: the FAISS backend scans the domain's rows instead, so its top-k are exact, to the
    whole domain."""
    points = clustered_unit_vectors(4050, 32, 60, seed=3)
    narrow = np.flatnonzero(np.random.default_rng(2).random(4000) < 0.015)  # ~60 rows, scattered
    concepts = [dataclasses.replace(c, domain="narrow" if i in set(narrow.tolist()) else c.domain)
                for i, c in enumerate(synthetic_concepts(4000))]
    cfg = DualPathConfig.from_dict({"bank": {"index": "hnsw", "recall": 0.95, "dtype": "float32"}})
    with ConceptBank.from_vectors(tmp_path / "bank", points[:4000], concepts, "synthetic", cfg) as bank:
        queries = points[4000:]
        for k in (10, len(narrow)):
            ids, scores = bank.search(queries, k, domain="narrow")
            exact = queries @ points[narrow].T
            for row, found, got in zip(exact, ids, scores, strict=True):
                assert set(found.tolist()) <= set(narrow.tolist())
                np.testing.assert_allclose(got, np.sort(row)[::-1][:k], atol=1e-5)
