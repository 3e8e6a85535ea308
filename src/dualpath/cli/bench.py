"""`dualpath bench`: the benchmark suite, one command, one table per section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dualpath.cli.common import CONFIG_OPTION, DEVICE_OPTION, column_style, load_config, make_console, print_json

console = make_console()
progress = make_console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)


def bench_command(
    quick: bool = typer.Option(
        False, "--quick", help="Demo-size bank, 10k/100k synthetic vectors: about 5 minutes on 2 idle cores."
    ),
    out: Path = typer.Option(
        Path("bench-results"), "--out", help="Where results.json, results.md and machine.md (and the bank cache) go."
    ),
    bank: Path | None = typer.Option(
        None, "--bank", help="Run on this bank (with trained models) instead of the cached Wikipedia-sample bank."
    ),
    only: str | None = typer.Option(
        None, "--only", help="Comma-separated sections to run (encode, lvm_step, tower, decision, generation, "
        "generation_scale, search, training, quality, second_corpus, scale); default all."
    ),
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print results.json instead of tables."),
    device: str | None = DEVICE_OPTION,
) -> None:
    """Speed, memory and quality of every part, each beside a baseline measured in the same run."""
    from dualpath.benchsuite.suite import SECTIONS, run_suite
    from dualpath.errors import DualPathError

    cfg = load_config(config, device=device)
    chosen = tuple(name.strip() for name in only.split(",") if name.strip()) if only else ()
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise DualPathError(f"unknown bench section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    def on_section(name: str, seconds: float) -> None:
        progress.print(f"[bold]{name:<12}[/] {seconds:6.1f} s")

    result = run_suite(out, quick=quick, bank=bank, cfg=cfg, on_section=on_section, only=chosen)
    if as_json:
        print_json(result.results)
        return
    for section in result.results["sections"].values():
        console.print(_table(section))
    console.print(f"results written to [bold]{out}[/] (results.md, results.json, machine.md) "
                  f"in {result.results['suite']['seconds']:.0f} s")


def _table(section: dict[str, Any]) -> Table:
    from dualpath.benchsuite.tables import format_value

    table = Table(title=section["title"], caption=section["note"], title_justify="left", caption_justify="left")
    keys = [key for key, _ in section["columns"]]
    cells = [[format_value(key, row.get(key)) for key in keys] for row in section["rows"]]
    for i, (key, header) in enumerate(section["columns"]):
        table.add_column(header, **column_style(key in ("name", "vectors", "index", "model"), [r[i] for r in cells]))
    for row in cells:
        table.add_row(*row)
    return table
