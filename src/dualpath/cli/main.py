"""Entry point: builds the typer app from the per-area command modules and turns errors into one line."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys

# No network at run time: every model is loaded from a local path or an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from rich.console import Console
from rich.markup import escape

from dualpath.errors import DualPathError
from dualpath.logs import configure_logging

app = typer.Typer(
    name="dualpath",
    help="Dual-path next-vector generation: an LVM grounded on a bank of real concepts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion: shell completion for bash, zsh, fish and PowerShell.
    add_completion=True,
)
err_console = Console(stderr=True)


def _flags_show_no_type() -> None:
    """typer (0.29) labels every flag `<bool>` in --help, though a flag takes no value; show flags bare."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_dualpath_flags_bare", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._dualpath_flags_bare = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def _print_version(value: bool) -> None:
    if value:
        print(f"dualpath {importlib.metadata.version('dualpath')}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    configure_logging(level)


def _register() -> None:
    # Each area adds its commands in its own module; importing here keeps start-up in one place.
    from dualpath.cli import commands

    commands.register(app)


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes of command-line parsing: typer >= 0.29 raises those of its vendored copy
    of click (`typer._click`), older typer raises click's own. Both are caught, whichever exists."""
    found: list[type[BaseException]] = []
    for module, name in (("typer._click.exceptions", "ClickException"), ("click.exceptions", "ClickException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    _register()
    usage_errors = _usage_error_types()
    try:
        app(args=argv, standalone_mode=False)
    except DualPathError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except UnicodeError as err:
        # Text that is not UTF-8 which reached a codec before any check did: still one line.
        _fail(f"text is not valid UTF-8: {err}")
    except OSError as err:
        # A path no check caught (a directory where a file goes, no permission, a full disk): still one line.
        where = f"{err.filename}: " if err.filename else ""
        _fail(f"{where}{err.strerror or err}")
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # `dualpath bank` alone: the help text is the useful answer
            sys.exit(exc.exit_code)
        message = _one_line(exc.format_message())
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/] {escape(message + hint)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


def _fail(message: str) -> None:
    # escape(): a message quoting user text with [brackets] must not be read as rich markup.
    err_console.print(f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
