"""Logging set-up. Library modules use `logging.getLogger(__name__)`; only the CLI prints."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


def configure_logging(level: int | str = logging.INFO, log_file: str | Path | None = None) -> None:
    """Timestamped, unbuffered log lines to stderr and optionally to a file (appended)."""
    root = logging.getLogger("dualpath")
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT, DATEFMT)
    stream = _CurrentStderrHandler()
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        # StreamHandler flushes after every record, so a background run's file is always current.
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    root.propagate = False


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record, not the one at set-up: a test harness or
    a caller that swaps stderr (and closes the old one) never gets "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def progress_enabled() -> bool:
    """Progress bars only when a person is watching a terminal."""
    return sys.stderr.isatty()
