"""Write the benchmark results page of the docs from a run of `dualpath bench`.

The page (docs/benchmarks-results.md) holds every table of the run's results.json, with the machine, the
library versions and the date of the run; it is written by this script, never edited by hand.

    dualpath bench --out bench-results            # or --quick; writes bench-results/results.json
    .venv/bin/python bench/results_page.py --results bench-results/results.json --out docs/benchmarks-results.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualpath.benchsuite.report import write_results_page
from dualpath.errors import DualPathError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("bench-results/results.json"),
                        help="results.json of a `dualpath bench` run (default: bench-results/results.json)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-results.md"),
                        help="the page to write (default: docs/benchmarks-results.md)")
    args = parser.parse_args(argv)
    try:
        written = write_results_page(args.results, args.out)
    except DualPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
