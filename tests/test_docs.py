"""The docs are tested code: every Python snippet of README.md and docs/*.md runs, in order per page.

Snippets are found by pytest-markdown-docs' extractor (a kept tool: CommonMark parsing, line numbers,
and its `notest` marker for fences that cannot run here: ```` ```python notest ````). Its own collector
is not used as is, for two reasons: it runs each fence alone, or with `continuation` re-executes every
earlier fence of the page first (so a snippet that builds a bank would build it twice), and it
collects files outside tests/, where this suite's bank fixtures are not visible. So each page is one
test here: its fences run one after the other in one namespace, in a work directory holding what the
docs name (`mybank`: a small bank with tiny trained models, `corpus.jsonl`, `more.jsonl`,
`my-lanes.yaml`, `dualpath.yaml`).

Shell fences are illustrative; the flow they show runs through the installed command in
tests/test_small_corpus.py, and `test_cli_help_matches_docs` checks the options and defaults the
docs state against `--help`.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from pytest_markdown_docs.plugin import extract_fence_tests

from test_custom_lanes_cli import LANES

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_fences(page: Path) -> list:
    """The page's runnable Python fences (pytest-markdown-docs' rules: python/py fences without `notest`)."""
    text = page.read_text(encoding="utf-8")
    return list(extract_fence_tests(MarkdownIt("commonmark"), text, 0, page))


PAGES_WITH_PYTHON = [page for page in PAGES if python_fences(page)]



@pytest.fixture(scope="module")
def docs_workdir(trained_bank_path, tmp_path_factory) -> Path:
    """A directory with every file the docs' snippets name, each small."""
    from conftest import wiki_documents

    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(trained_bank_path, work / "mybank")
    documents = wiki_documents(400)[-30:]  # articles the bank does not hold, so `bank.add` adds
    for name, part in (("corpus.jsonl", documents[:20]), ("more.jsonl", documents[20:])):
        lines = [json.dumps({"id": f"{name}-{d.id}", "title": d.title, "text": d.text, "domain": d.domain})
                 for d in part]
        (work / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "my-lanes.yaml").write_text(LANES, encoding="utf-8")
    # The sizes of tests/trained_models.py, so the snippets' own training and evaluation stay quick.
    (work / "dualpath.yaml").write_text(
        "lvm: {hidden: 64, epochs: 1}\ntower: {hidden: 64, epochs: 1}\nsplit: {heldout_fraction: 0.2, context: 4}\n",
        encoding="utf-8",
    )
    return work


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_snippets_run_in_order(page: Path, docs_workdir: Path, tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    shutil.copytree(docs_workdir, work)  # each page starts from the same files, whatever another page wrote
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs__"}
    for fence in python_fences(page):
        # extract_fence_tests pads the source with blank lines, so a traceback's line is the page's line.
        code = compile(fence.source, str(page), "exec")
        try:
            exec(code, namespace)
        except Exception as err:
            snippet = textwrap.indent(fence.source.strip("\n"), "    ")
            pytest.fail(f"{page.name}, the snippet at line {fence.start_line}: {type(err).__name__}: {err}\n{snippet}")
    gen = namespace.get("gen")
    if gen is not None:
        gen.close()


def test_every_page_with_python_is_tested() -> None:
    """A page whose fences all say `notest` is fine; a fence whose language the extractor misses is not."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for info in re.findall(r"^```(\S+)", text, flags=re.MULTILINE):
            assert info in {"python", "bash", "json", "yaml", "text"}, f"{page.name}: fence language {info!r}"


# -- the CLI as the docs state it -------------------------------------------------------------------------

COMMAND_LINE = re.compile(r"^(?:[A-Z_]+=\S*\s+)*dualpath\s+(.*)$")
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `dualpath ...` in a shell fence or an inline code span."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for fence in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
            current = None
            for raw in fence.splitlines():
                line = raw.split("  #")[0].rstrip().removesuffix("\\").rstrip()
                match = COMMAND_LINE.match(line.strip())
                if match:
                    current = [match.group(1)]
                    found.append((page.name, current))
                elif current is not None and raw.startswith(" ") and line.strip():
                    current.append(line.strip())  # a continuation line of the command above
                else:
                    current = None
        prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
        for span in re.findall(r"`(dualpath [^`]+)`", prose):
            found.append((page.name, [span.removeprefix("dualpath ")]))
    return [(page, " ".join(parts)) for page, parts in found]


def cli_tree():
    import typer.main

    from dualpath.cli.main import _register, app

    _register()
    return typer.main.get_command(app)


def is_group(command) -> bool:
    # typer builds its commands with its own vendored click, so no isinstance against click.Group.
    return hasattr(command, "commands")


def resolve_command(root, line: str):
    """The click command a documented line runs, and the words that name it."""
    words = line.split()
    command, path = root, []
    for word in words:
        if word.startswith("-") and is_group(command):
            continue  # a root option (-v, -q) before the command
        if not is_group(command):
            break
        if word.startswith("<") or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return command, path


def option_names(command) -> set[str]:
    names = set()
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def test_documented_commands_and_options_exist() -> None:
    """Every `dualpath ...` the docs show names a real command, and each option it uses is one of that command's."""
    root = cli_tree()
    root_options = option_names(root)
    problems = []
    for page, line in documented_commands():
        command, path = resolve_command(root, line)
        if is_group(command):
            rest = line.split()[len(path):]
            options = [word for word in rest if word.startswith("-")]
            words = [word for word in rest if not word.startswith("-")]
            if words and words[0] not in ("…", "...", "CMD"):  # `dualpath eval …` names the group on purpose
                problems.append(f"{page}: `dualpath {line}`: not a command")
            known = option_names(command) | root_options | {"--help"}
            problems += [f"{page}: `dualpath {line}`: no option {o}" for o in options if o not in known]
            continue
        known = option_names(command) | root_options | {"--help"}
        for option in OPTION.findall(line.split(" ", len(path))[-1] if path else line):
            short = option in {"-k", "-n", "-l", "-t", "-v", "-q", "-h"}
            if (option.startswith("--") or short) and option not in known:
                problems.append(f"{page}: `dualpath {line}`: {' '.join(path)} has no option {option}")
    assert not problems, "\n".join(problems)


def rendered_help(*command: str) -> str:
    import os
    import subprocess
    import sys

    import dualpath

    src = Path(dualpath.__file__).resolve().parents[1]
    env = {**os.environ, "COLUMNS": "300", "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dualpath"), *command, "--help"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def option_tables(page: Path) -> dict[str, list[tuple[list[str], str]]]:
    """Per command heading (`` `dualpath generate PROMPT --bank BANK`: ``), the table's (options, default) rows."""
    tables: dict[str, list[tuple[list[str], str]]] = {}
    current = None
    for line in page.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^`dualpath ([a-z ]+?)(?: [A-Z]+)*(?: --bank BANK)?`:$", line)
        if heading:
            current = tables.setdefault(heading.group(1), [])
        elif current is not None and line.startswith("| `-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            options = [span.split()[0] for span in re.findall(r"`([^`]+)`", cells[0])]
            current.append((options, cells[1]))
        elif current is not None and not line.startswith("|") and line.strip():
            current = None
    return tables


def test_option_tables_match_help() -> None:
    """docs/generation.md's option tables state every option of the command, and the default `--help` shows."""
    tables = option_tables(ROOT / "docs" / "generation.md")
    assert set(tables) == {"generate", "calibrate", "eval generation"}
    for command, rows in tables.items():
        help_rows = {}
        for line in rendered_help(*command.split()).splitlines():
            match = re.match(r"^│\s+\*?\s*(--[\w-]+)", line)
            if match:
                help_rows[match.group(1)] = line
        documented = {options[0] for options, _ in rows}
        assert documented == set(help_rows) - {"--help", "--bank"}, command
        for options, default in rows:
            row = help_rows[options[0]]
            for short in options[1:]:
                assert f" {short} " in row, (command, short)
            shown = re.search(r"\[default: ([^\]]+)\]", row)
            if default in ("none", "off"):
                assert shown is None, (command, options[0], shown)
            elif " " not in default:  # a value, not a description
                assert shown is not None and shown.group(1) == default, (command, options[0], default, row)


def test_every_command_takes_config() -> None:
    """docs/quickstart.md: "Every command takes `--config file.yaml`"."""
    def walk(command, path):
        if is_group(command):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), option_names(command)

    missing = [name for name, options in walk(cli_tree(), []) if "--config" not in options]
    assert not missing, missing
