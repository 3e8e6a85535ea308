"""Command groups shared by several areas: `dualpath train ...` and `dualpath eval ...`.

An area module adds its subcommand with `@train_app.command("lvm")` / `@eval_app.command("lvm")`.
"""

from __future__ import annotations

import typer

train_app = typer.Typer(help="Train the models of a bank (LVM, query tower).", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate on held-out documents (docs/protocol.md).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
