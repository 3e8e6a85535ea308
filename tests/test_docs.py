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

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_fences(page: Path) -> list:
    """The page's runnable Python fences (pytest-markdown-docs' rules: python/py fences without `notest`)."""
    text = page.read_text(encoding="utf-8")
    return list(extract_fence_tests(MarkdownIt("commonmark"), text, 0, page))


PAGES_WITH_PYTHON = [page for page in PAGES if python_fences(page)]

LANES_YAML = """\
lanes:
  archivist:
    tau_snap: 0.70
    tau_novel: 0.60
    k: 200
    dup_window: 8
    shares: {snap: 0.6, blend: 0.3, novel: 0.1}
"""


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
    (work / "my-lanes.yaml").write_text(LANES_YAML, encoding="utf-8")
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
