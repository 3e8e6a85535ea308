"""Registers every area's commands on the root app. Add one line per area module."""

from __future__ import annotations

import importlib
from types import ModuleType

import typer

# Each module defines `register(app: typer.Typer) -> None`.
AREAS: list[str] = [
    "dualpath.cli.bank",
    "dualpath.cli.groups",
    "dualpath.cli.generate",
    "dualpath.cli.report",
    "dualpath.cli.lvm",
    "dualpath.cli.retriever",
    "dualpath.cli.serve",
    "dualpath.cli.bench",
]


def register(app: typer.Typer) -> None:
    for name in AREAS:
        module: ModuleType = importlib.import_module(name)
        module.register(app)
