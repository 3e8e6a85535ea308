"""The benchmark results page (docs/benchmarks-results.md) is written from a run's results.json, never by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualpath.benchsuite.report import anchor, results_page, section_order, write_results_page
from dualpath.benchsuite.tables import Section
from dualpath.errors import DualPathError

ROOT = Path(__file__).resolve().parent.parent
MACHINE = {
    "date": "2026-11-30T10:00:00+00:00", "cpu_model": "Test CPU 9000", "logical_cores": 2, "physical_cores": 2,
    "usable_cores": 2, "ram_gib": 23.5, "ram_available_gib": 20.0, "load_average": [0.4, 0.5, 0.6],
    "os": "Linux", "python": "3.11.7", "libraries": {"numpy": "2.4.6", "faiss-cpu": "1.15.1", "torch": None,
                                                    "dualpath": "0.1.0"},
    "threads": {"torch_intra_op": 2, "faiss_omp": 2, "env": {}},
}


def results(sections: dict[str, Section], **run) -> dict:
    """A results.json as `run_suite` writes it: sections sorted by key, as json.dumps(sort_keys=True) leaves them."""
    return json.loads(json.dumps({
        "suite": {"sizes": {"name": "full"}, "bank": "/some/where/bank-cache/full", "seconds": 1119.0,
                  "section_seconds": {}, "run": {"quick": False, "own_bank": False, "only": [], "bank_concepts": 36375,
                                                 **run}},
        "machine": {"start": MACHINE, "end": {**MACHINE, "load_average": [1.0, 1.1, 1.2]}},
        "sections": {key: s.to_dict() for key, s in sections.items()},
    }, sort_keys=True))


SECTIONS = {
    "search": Section("Search", "k = 10. Baseline: `flat`.", {"name": "index", "median_ms": "median ms"},
                      [{"name": "flat", "median_ms": 1.2847}, {"name": "hnsw", "median_ms": 0.2071}]),
    "encode": Section("Encode (sentences → vectors)", "Baseline: one sentence per call.",
                      {"name": "", "median_ms": "median ms", "x_baseline": "× baseline"},
                      [{"name": "1 per call (baseline)", "median_ms": 17.03, "x_baseline": 1.0}]),
    "free_running_quality_python-docs": Section("Quality: free-running on python-docs", "python-docs.",
                                                {"name": "lane", "text_cos": "cos"}, [{"name": "neutral",
                                                                                      "text_cos": 0.325}]),
    "free_running_quality": Section("Quality: free-running", "wiki.", {"name": "lane", "text_cos": "cos"},
                                    [{"name": "neutral", "text_cos": 0.467}]),
}


def test_page_states_the_run_the_machine_the_versions_and_the_date() -> None:
    page = results_page(results(SECTIONS))
    assert page.startswith("# Benchmark results\n")
    assert "`dualpath bench`" in page and "36,375 concepts" in page
    assert "2026-11-30" in page and "Test CPU 9000" in page and "2 logical cores" in page
    assert "numpy 2.4.6" in page and "faiss-cpu 1.15.1" in page and "dualpath 0.1.0" in page
    assert "torch None" not in page  # a library that is not installed is left out
    assert "0.4 / 0.5 / 0.6" in page  # the load at the start
    assert "/some/where" not in page  # no path of the machine the run was on


def test_every_table_is_written_from_the_rows() -> None:
    page = results_page(results(SECTIONS))
    for key, section in SECTIONS.items():
        assert f"## {section.title}\n" in page
        assert f'<a id="{anchor(key)}"></a>' in page
        assert f"](#{anchor(key)})" in page  # the contents line links to it
    assert "| flat | 1.28 |" in page and "| hnsw | 0.207 |" in page
    assert "| 1 per call (baseline) | 17.03 | 1.00× |" in page


def test_sections_come_in_the_order_the_suite_runs_them() -> None:
    page = results_page(results(SECTIONS))
    titles = [line for line in page.splitlines() if line.startswith("## ") and line != "## The machine"]
    assert titles == ["## Encode (sentences → vectors)", "## Search", "## Quality: free-running",
                      "## Quality: free-running on python-docs"]
    assert section_order(["zeta", "scale", "scale_epochs", "encode"]) == ["encode", "scale_epochs", "scale", "zeta"]


def test_the_command_says_how_the_run_was_made() -> None:
    page = results_page(results(SECTIONS, own_bank=True, only=["search", "encode"]))
    assert "`dualpath bench --bank BANK --only search,encode`" in page
    quick = results(SECTIONS)
    quick["suite"]["sizes"]["name"] = "quick"
    assert "`dualpath bench --quick`" in results_page(quick)


def test_not_a_results_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DualPathError, match=r"not a results\.json"):
        results_page({"rows": []})
    with pytest.raises(DualPathError, match="no such file"):
        write_results_page(tmp_path / "missing.json", tmp_path / "page.md")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(DualPathError, match="not readable as JSON"):
        write_results_page(tmp_path / "bad.json", tmp_path / "page.md")


def test_the_script_writes_the_page(tmp_path: Path) -> None:
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results(SECTIONS)), encoding="utf-8")
    out = tmp_path / "docs" / "benchmarks-results.md"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "results_page.py"), "--results", str(source),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == results_page(results(SECTIONS))
    missing = subprocess.run([sys.executable, str(ROOT / "bench" / "results_page.py"), "--results",
                              str(tmp_path / "none.json"), "--out", str(out)], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr


def test_the_docs_page_is_generated() -> None:
    """docs/benchmarks-results.md is the script's output (its marker), not a hand-kept page."""
    page = (ROOT / "docs" / "benchmarks-results.md").read_text(encoding="utf-8")
    assert "Written by bench/results_page.py" in page
    assert page.splitlines()[0] == "# Benchmark results"
