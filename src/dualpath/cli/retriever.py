"""`dualpath train retriever` and `dualpath eval retriever`: the query tower of the two-tower retriever."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dualpath.cli.common import (
    BANK_OPTION,
    CONFIG_OPTION,
    DEVICE_OPTION,
    JSON_OPTION,
    MILVUS_URI_OPTION,
    config_and_bank,
    make_console,
    print_json,
)
from dualpath.cli.groups import eval_app, train_app

console = make_console()


def register(app: typer.Typer) -> None:
    """The commands attach to the shared `train` / `eval` groups when this module is imported."""


def _table(title: str, table: dict[str, dict[str, float]]) -> Table:
    metrics = list(next(iter(table.values())))
    view = Table(title=title, title_justify="left")
    view.add_column("query")
    for metric in metrics:
        view.add_column(metric, justify="right")
    for name, row in table.items():
        style = "bold" if name == "tower" else "dim" if name == "oracle" else None
        view.add_row(name, *(f"{row[m]:.3f}" for m in metrics), style=style)
    return view


def _gain_line(table: dict[str, dict[str, float]]) -> str:
    from dualpath.evaluation.retrieval import HEADLINE, best_heuristic, relative_gain

    gains = relative_gain(table)
    parts = [f"{m} {gains[m]:+.1%} vs {best_heuristic(table, m)[0]}" for m in HEADLINE]
    return "tower vs best heuristic: " + ", ".join(parts)


@train_app.command("retriever")
def train_retriever_command(
    bank: Path = BANK_OPTION,
    out: Path | None = typer.Option(None, "--out", help="Output directory [default: BANK/models/tower]."),
    tower: str | None = typer.Option(None, "--tower", help="Query tower: gru | bigru | lstm | mlp | attn."),
    doc_tower: str | None = typer.Option(None, "--doc-tower", help="Document tower: identity (mlp is refused)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs to train (in all, counting resumed ones)."),
    hard_negatives: bool | None = typer.Option(
        None, "--hard-negatives/--no-hard-negatives", help="Mine hard negatives from the bank (ANCE-style)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last after a kill."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for weights, shuffling and mining."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Append timestamped log lines to this file."),
    config: Path | None = typer.Option(None, "--config", help="YAML configuration (the tower section)."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the final held-out table as JSON."),
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train a query tower on a bank; the held-out table is printed every epoch and saved as JSON."""
    from dualpath.bank.layout import tower_dir
    from dualpath.logs import configure_logging
    from dualpath.training.retriever import TABLE_FILE, train_retriever

    configure_logging(logging.getLogger("dualpath").level or logging.INFO, log_file)
    overrides = {
        "tower": tower, "doc_tower": doc_tower, "epochs": epochs, "hard_negatives": hard_negatives, "seed": seed,
    }
    cfg, concept_bank = config_and_bank(bank, config, milvus_uri, device=device, tower=overrides)
    out_dir = out if out is not None else tower_dir(concept_bank.path)

    def show(report: Any, table: dict[str, dict[str, float]]) -> None:
        if not as_json:
            best = " (best)" if report.best else ""
            title = f"epoch {report.epoch}/{cfg.tower.epochs}{best}: loss {report.train_loss:.4f}"
            console.print(_table(f"{title}, {report.seconds:.0f} s", table))

    result = train_retriever(concept_bank, cfg, out_dir, resume=resume, on_epoch=show)
    final = json.loads((out_dir / TABLE_FILE).read_text())
    best_epoch = result.best.epoch if result.best else None
    if as_json:
        print_json({**final, "out": str(out_dir), "best_epoch": best_epoch})
        return
    console.print(_gain_line(final["table"]))
    console.print(f"query tower saved to {out_dir} (best epoch {best_epoch} by held-out MRR)")


@eval_app.command("retriever")
def eval_retriever_command(
    bank: Path = BANK_OPTION,
    tower: Path | None = typer.Option(
        None, "--tower", help="Trained tower (a training output or checkpoint) [default: BANK/models/tower if present]."
    ),
    config: Path | None = CONFIG_OPTION,
    milvus_uri: str | None = MILVUS_URI_OPTION,
    as_json: bool = JSON_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Held-out retrieval: the tower beside last / mean / EWM / oracle queries (docs/protocol.md)."""
    from dualpath.bank.layout import tower_dir
    from dualpath.evaluation.retrieval import heldout_eval_pairs, retrieval_table
    from dualpath.models.towers import QueryTower

    cfg, concept_bank = config_and_bank(bank, config, milvus_uri, device=device)
    default = tower_dir(concept_bank.path)
    if tower is None and default.is_dir():
        tower = default
    from dualpath.runtime import resolve_device

    device_name = resolve_device(cfg.device)
    query_tower = (
        QueryTower.load(tower, concept_bank.dim, concept_bank.encoder_name, device_name) if tower is not None else None
    )
    pairs = heldout_eval_pairs(concept_bank.all_vectors(), concept_bank.documents(), cfg)
    table = retrieval_table(concept_bank.search, pairs, query_tower)
    if as_json:
        print_json({"pairs": len(pairs), "tower": str(tower) if tower else None, "table": table})
        return
    console.print(_table(f"held-out retrieval: {len(pairs)} pairs, context excluded", table))
    if query_tower is not None:
        console.print(_gain_line(table))
    else:
        console.print(f"no trained tower in {default}: heuristic rows only (train one with `dualpath train retriever`)")
