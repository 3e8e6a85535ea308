"""Options and helpers every command shares: the config file, opening a bank, printing JSON."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from dualpath.config import DualPathConfig
from dualpath.errors import DualPathError
from dualpath.fileio import json_default

CONFIG_OPTION = typer.Option(None, "--config", help="YAML configuration file (see docs/quickstart.md).")
BANK_OPTION = typer.Option(..., "--bank", help="Bank directory.")
TELEMETRY_OPTION = typer.Option(
    None, "--telemetry", help="Append every step's decision record to this JSON-lines file."
)
JSON_OPTION = typer.Option(False, "--json", help="Print the result as one JSON document.")
BACKEND_OPTION = typer.Option(None, "--backend", help="Index backend: faiss (embedded, default) | milvus.")
MILVUS_URI_OPTION = typer.Option(
    None,
    "--milvus-uri",
    help="Milvus for a Milvus-backed bank: PATH.db (Milvus Lite, embedded) or http://host:19530 (server/cluster). "
    "Opening a bank defaults to where it was built.",
)

DEVICE_OPTION = typer.Option(
    None,
    "--device",
    help="Where encoding, training and generation run: auto (CUDA when torch sees a GPU) | cpu | cuda[:N].",
)


def make_console(stderr: bool = False) -> Console:
    """Rich console; wide when output is not a terminal, so tables in logs and CI don't wrap to 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def column_style(left: bool, values: list) -> dict[str, Any]:
    """A table column's justification and overflow: names (`left`) whole, and a value too wide for a narrow
    terminal folded onto the next line rather than cut short."""
    if left:
        return {"justify": "left", "no_wrap": True, "min_width": max((len(str(v)) for v in values), default=0)}
    return {"justify": "right", "overflow": "fold"}


def load_config(config: Path | None, device: str | None = None, **sections: dict[str, Any]) -> DualPathConfig:
    """The config file with command-line values (None = not given) laid over the named sections.

    `--device cuda` where torch sees no GPU fails here, in one line, before anything loads.
    """
    cfg = DualPathConfig.from_yaml(config)
    # Only what the file stated: a field left at its default stays "not set", which some defaults
    # depend on (the held-out share adapts to the corpus unless set; corpus.pairs.resolve_split).
    data = cfg.model_dump(mode="json", exclude_unset=True)
    for section, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            data.setdefault(section, {}).update(given)
    if device is not None:
        data["device"] = device
    cfg = DualPathConfig.from_dict(data, source="command line")
    if cfg.device != "auto":
        from dualpath.runtime import resolve_device

        resolve_device(cfg.device)
    return cfg


def open_bank(path: Path, cfg: DualPathConfig) -> Any:
    from dualpath.bank import ConceptBank

    return ConceptBank.open(path, cfg)


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode: bytes that are not UTF-8 on the command line arrive
    as lone surrogates (Python's surrogateescape) and would fail deep in the tokenizer."""
    from dualpath.corpus import unicode_problem

    problem = unicode_problem(text)
    if problem:
        raise DualPathError(f"{what} is not valid UTF-8 text: {problem}")


STDIN = "-"


def read_prompt(prompt: str | None, prompt_file: Path | None, limit: int) -> str:
    """The prompt from the argument, a file (`--prompt-file`) or standard input (`-` as either), at most
    `limit` characters: a longer one is refused in one line, without reading more than the limit."""
    if prompt is not None and prompt_file is not None:
        raise DualPathError("give the prompt as an argument or with --prompt-file, not both")
    if prompt is None and prompt_file is None:
        raise DualPathError("give a prompt: as an argument, - to read standard input, or --prompt-file FILE")
    source = STDIN if prompt == STDIN else str(prompt_file) if prompt_file is not None else None
    if source is None:
        text = prompt or ""
    elif source == STDIN:
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        text = stream.read(limit + 1)
    else:
        try:
            with open(source, encoding="utf-8", errors="surrogateescape") as fh:
                text = fh.read(limit + 1)
        except FileNotFoundError:
            raise DualPathError(f"prompt file not found: {source}") from None
        except IsADirectoryError:
            raise DualPathError(f"the prompt file {source} is a directory") from None
        except OSError as err:
            raise DualPathError(f"cannot read the prompt file {source}: {err.strerror or err}") from None
    if len(text) > limit:
        raise DualPathError(
            f"the prompt is longer than {limit:,} characters (generation.max_prompt_chars); the generator uses "
            "only its last sentences, so pass those"
        )
    return text


def open_telemetry(path: Path | None) -> Any:
    """The TelemetrySink appending to `path` (None: no telemetry); a path that cannot be written is one line."""
    if path is None:
        return None
    from dualpath.decider import TelemetrySink

    if path.is_dir():
        raise DualPathError(f"--telemetry {path} is a directory; give a file to append JSON lines to")
    try:
        return TelemetrySink(path)
    except OSError as err:
        raise DualPathError(f"cannot write telemetry to {path}: {err.strerror or err}") from None


def config_and_bank(
    bank_dir: Path, config: Path | None, milvus_uri: str | None, device: str | None = None, **sections: dict[str, Any]
) -> tuple[DualPathConfig, Any]:
    """What a command on one bank starts with: its config (with command-line values) and the opened bank."""
    cfg = load_config(config, device, bank={"milvus_uri": milvus_uri}, **sections)
    return cfg, open_bank(bank_dir, cfg)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=json_default) + "\n")
    sys.stdout.flush()
