"""`dualpath train lvm` and `dualpath eval lvm`: the next-vector generator."""

from __future__ import annotations

import logging
from pathlib import Path

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

COLUMN_TITLES = {
    "cos": "cos",
    "contrastive": "contrastive",
    "hit@1": "Hit@1",
    "hit@10": "Hit@10",
    "hit@100": "Hit@100",
    "context_cos": "ctx cos ↓",
}


def register(app: typer.Typer) -> None:
    """The commands attach to the shared `train` / `eval` groups when this module is imported."""


def _table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    columns = [c for c in COLUMN_TITLES if c in next(iter(rows.values()))]
    view = Table(title=title, title_justify="left")
    view.add_column("query", no_wrap=True)
    for column in columns:
        view.add_column(COLUMN_TITLES[column], justify="right")
    for name, row in rows.items():
        style = "bold" if name == "lvm" else "dim" if name == "oracle" else None
        view.add_row(name, *(f"{row[c]:.3f}" for c in columns), style=style)
    return view


@train_app.command("lvm")
def train_lvm_command(
    bank: Path = BANK_OPTION,
    out: Path | None = typer.Option(None, "--out", help="Output directory (default: BANK/models/lvm)."),
    arch: str | None = typer.Option(None, "--arch", help="gru | lstm | transformer."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs to train (in all, counting resumed ones)."),
    context: int | None = typer.Option(None, "--context", min=1, max=1024, help="Previous concepts per pair (C)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last after a kill."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for weights and shuffling."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Append timestamped log lines to this file."),
    config: Path | None = typer.Option(None, "--config", help="YAML configuration (lvm and split sections)."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train an LVM on a bank's documents, then its sampler; held-out metrics and a checkpoint every epoch."""
    from dualpath.bank.layout import lvm_dir
    from dualpath.logs import configure_logging
    from dualpath.models.sampler import sampler_dir
    from dualpath.training.lvm import SELECT_METRIC, train_lvm

    configure_logging(logging.getLogger("dualpath").level or logging.INFO, log_file)
    lvm = {"arch": arch, "epochs": epochs, "seed": seed}
    cfg, concept_bank = config_and_bank(bank, config, milvus_uri, device=device, lvm=lvm, split={"context": context})
    out_dir = out if out is not None else lvm_dir(concept_bank.path)

    # Each epoch's line is the training loop's log line (stderr, and --log-file): printing it here too
    # showed every epoch twice.
    result = train_lvm(concept_bank, cfg, out_dir, resume=resume)
    best = result.best
    where = f"best epoch {best.epoch}, {SELECT_METRIC} {best.metrics[SELECT_METRIC]:.4f}" if best else "no best epoch"
    console.print(f"LVM ({cfg.lvm.arch}) saved to {out_dir} ({where})")
    if cfg.sampler.epochs:
        console.print(f"its sampler saved to {sampler_dir(out_dir)} (draws at generation.lvm_temperature)")


@eval_app.command("lvm")
def eval_lvm_command(
    bank: Path = BANK_OPTION,
    model: Path | None = typer.Option(
        None, "--model", help="Trained LVM (a training output or checkpoint) (default: BANK/models/lvm)."
    ),
    config: Path | None = CONFIG_OPTION,
    milvus_uri: str | None = MILVUS_URI_OPTION,
    as_json: bool = JSON_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Held-out LVM quality beside the copy-last and mean-of-context baselines (docs/protocol.md)."""
    from dualpath.bank.layout import lvm_dir
    from dualpath.evaluation.lvm import evaluate_bank

    cfg, concept_bank = config_and_bank(bank, config, milvus_uri, device=device)
    report = evaluate_bank(concept_bank, cfg, model)
    if as_json:
        print_json(report.to_dict())
        return
    title = (
        f"held-out LVM: {report.pairs} pairs, context excluded from Hit@K, contrastive batch {report.contrastive_batch}"
    )
    console.print(_table(title, report.rows))
    if "lvm" not in report.rows:
        console.print(
            f"no trained LVM in {lvm_dir(concept_bank.path)}: baseline rows only "
            f"(train one with `dualpath train lvm --bank {concept_bank.path}`)"
        )
    else:
        beaten = report.beats_baselines()
        lost = [COLUMN_TITLES[c] for c, ok in beaten.items() if not ok]
        verdict = "beats both baselines on every metric" if not lost else f"does not beat both on: {', '.join(lost)}"
        console.print(f"{report.model.get('arch', 'lvm')} LVM from {report.model.get('path')}: {verdict}")
