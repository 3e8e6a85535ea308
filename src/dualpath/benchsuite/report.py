"""The benchmark results page: a run's results.json as one Markdown page, stating the machine, the library
versions and the date of the run, so the tables in the docs are written from a run and never kept by hand.

`python bench/results_page.py --results bench-results/results.json --out docs/benchmarks-results.md`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dualpath.benchsuite.machine import machine_markdown
from dualpath.benchsuite.tables import render_section
from dualpath.errors import DualPathError
from dualpath.fileio import write_text_atomic

# The order the suite runs its sections in (results.json stores them sorted by key); a key is placed by the
# first entry it starts with, and keys no entry names come last, in key order.
ORDER = (
    "encode", "lvm_step", "tower", "decision", "generation_index", "generation_scale", "generation", "search",
    "memory_bank", "training", "tower_kinds", "memory_training", "retrieval_quality", "lvm_quality",
    "dual_path_quality", "free_running_quality", "scale_encode", "scale_epochs", "scale",
)
GENERATED = "<!-- Written by bench/results_page.py from a run's results.json: rerun it, do not edit by hand. -->"


def section_order(keys: list[str]) -> list[str]:
    """Section keys in the order the suite runs them (a second corpus's sections after the first's)."""
    def rank(key: str) -> tuple[int, int, str]:
        for i, prefix in enumerate(ORDER):
            if key == prefix:
                return (i, 0, key)
        for i, prefix in enumerate(ORDER):
            if key.startswith(prefix + "_"):
                return (i, 1, key)
        return (len(ORDER), 0, key)

    return sorted(keys, key=rank)


def results_page(results: dict[str, Any], title: str = "Benchmark results") -> str:
    """The page: what was run, when and on what, then one table per section, each with its key as anchor."""
    try:
        suite, machine, sections = results["suite"], results["machine"], results["sections"]
        start, end = machine["start"], machine["end"]
    except (KeyError, TypeError) as err:
        raise DualPathError(f"not a results.json of `dualpath bench` (no {err})") from None
    sizes = suite.get("sizes", {})
    quick = sizes.get("name") == "quick"
    run = suite.get("run", {})
    command = "dualpath bench" + (" --quick" if quick else "") + (" --bank BANK" if run.get("own_bank") else "")
    if run.get("only"):
        command += " --only " + ",".join(run["only"])
    bank = f"a bank of {run['bank_concepts']:,} concepts" if run.get("bank_concepts") else "the benchmark bank"
    date = str(start.get("date", "an unknown date"))
    versions = ", ".join(f"{name} {version}" for name, version in start.get("libraries", {}).items() if version)
    ran = section_order(list(sections))
    lines = [
        f"# {title}",
        "",
        GENERATED,
        "",
        f"Measured by `{command}` on {bank}, on {date[:10]}, on {start.get('logical_cores')} logical cores of "
        f"{start.get('cpu_model')} (load average {_load(start)} at the start), with {versions}.",
        "",
        "Every ratio is against a baseline measured in the same run: × below 1 is faster (or smaller) than the "
        "baseline. Figures from another machine, or from this one under another load, differ: compare within a "
        "table, and measure on your own machine with `dualpath bench` (see [Benchmarks](benchmarks.md) for what "
        "each section measures and how).",
        "",
        "Sections: " + ", ".join(f"[{sections[key]['title']}](#{anchor(key)})" for key in ran) + ".",
        "",
        machine_markdown(start, end, float(suite.get("seconds", 0.0)), quick)
        .replace("# Machine", "## The machine", 1)
        .replace(f"`dualpath bench{' --quick' if quick else ''}`", f"`{command}`", 1)
        .rstrip(),
        "",
    ]
    for key in ran:
        table = render_section(sections[key]).splitlines()
        # An explicit anchor named by the section's key, so links survive a change of its title.
        lines += [f'<a id="{anchor(key)}"></a>', "", table[0].replace("### ", "## ", 1), *table[1:], ""]
    return "\n".join(lines).rstrip() + "\n"


def _load(info: dict[str, Any]) -> str:
    return " / ".join(f"{x:.1f}" for x in info.get("load_average", [])) or "unknown"


def anchor(key: str) -> str:
    """A section's anchor on the page: its results.json key, so links survive a change of its title."""
    return key.replace("_", "-").lower()


def write_results_page(results_json: str | Path, out: str | Path) -> Path:
    """Read `results_json` and write its page to `out` atomically."""
    source = Path(results_json)
    try:
        results = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DualPathError(f"{source}: no such file (run `dualpath bench` first; it writes results.json)") from None
    except (OSError, UnicodeError, json.JSONDecodeError) as err:
        raise DualPathError(f"{source}: not readable as JSON: {err}") from None
    target = Path(out)
    write_text_atomic(target, results_page(results))
    return target
