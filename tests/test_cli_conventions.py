"""The command follows the conventions of command-line tools, checked through the installed command.

Flags show as flags in every `--help` (no `<bool>` value), `dualpath --version` prints the installed
package's version, `python -m dualpath` is the same command, and shell completion is offered.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from test_docs import cli_tree, is_group

BIN = Path(sys.executable).parent


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=environ, timeout=120)


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the app, as the words that name it (the root is ())."""
    paths = []

    def walk(command, path):
        paths.append(path)
        if is_group(command):
            for name, sub in sorted(command.commands.items()):
                walk(sub, (*path, name))

    walk(cli_tree(), ())
    return paths


def test_every_command_is_walked() -> None:
    paths = command_paths()
    assert () in paths and ("generate",) in paths and ("bank", "build") in paths
    assert len(paths) > 15


def test_no_help_shows_a_bool_value() -> None:
    """`dualpath [COMMAND...] --help` through the installed command, for the root and every command and group."""
    paths = command_paths()
    for words in paths:
        done = run(str(BIN / "dualpath"), *words, "--help")
        name = " ".join(("dualpath", *words))
        assert done.returncode == 0, (name, done.stderr)
        assert "Usage:" in done.stdout and "--help" in done.stdout, name
        assert "<bool>" not in done.stdout, f"{name} --help shows <bool>:\n{done.stdout}"


def test_options_that_take_a_value_keep_their_type() -> None:
    shown = run(str(BIN / "dualpath"), "bench", "--help").stdout
    assert "<path>" in shown  # --out takes a path
    assert any(line.strip("│ ").startswith("--quick ") and "<" not in line for line in shown.splitlines())


def test_version() -> None:
    done = run(str(BIN / "dualpath"), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dualpath {importlib.metadata.version('dualpath')}"
    import dualpath

    assert dualpath.__version__ == importlib.metadata.version("dualpath")


def test_python_dash_m() -> None:
    done = run(sys.executable, "-m", "dualpath", "--help")
    assert done.returncode == 0, done.stderr
    assert "generate" in done.stdout and "bank" in done.stdout
    assert run(sys.executable, "-m", "dualpath", "--version").stdout.strip().endswith(
        importlib.metadata.version("dualpath")
    )


def test_shell_completion() -> None:
    """What `dualpath --install-completion` installs asks the command itself for completions."""
    done = run(str(BIN / "dualpath"), env={"_DUALPATH_COMPLETE": "complete_bash", "COMP_WORDS": "dualpath ba",
                                            "COMP_CWORD": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bank"]
    # Typer finds the shell from the process tree (not $SHELL): asked from bash, as a user's shell asks it.
    shown = run("bash", "-c", f"'{BIN / 'dualpath'}' --show-completion; :")  # '; :': bash stays its parent
    assert shown.returncode == 0, shown.stderr
    assert "_DUALPATH_COMPLETE" in shown.stdout
