"""The docs site builds with `mkdocs build --strict` (a broken link, anchor or reference fails), and its API
reference holds every public name of dualpath with its docstring.

Public names: what the package and its subpackages export (`__all__`), every class of `dualpath.config` and
`dualpath.errors`, and every name docs/api.md (the Python API guide) imports.
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["dualpath", "dualpath.bank", "dualpath.corpus", "dualpath.decider", "dualpath.encoding",
            "dualpath.service"]
MODULES = ["dualpath.config", "dualpath.errors"]


def public_names() -> list[tuple[str, str]]:
    """(module, name) for every public name, the module being where the reference documents it."""
    names: list[tuple[str, str]] = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [(package, name) for name in module.__all__ if not name.startswith("_")]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names += [(module_name, name) for name, obj in vars(module).items()
                  if inspect.isclass(obj) and obj.__module__ == module_name and not name.startswith("_")]
    guide = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for module_name, imported in re.findall(r"^from (dualpath[\w.]*) import ([\w, ]+)$", guide, flags=re.MULTILINE):
        names += [(module_name, name.strip()) for name in imported.split(",")]
    return sorted(set(names))


def first_paragraph(obj) -> str | None:
    """The docstring's first paragraph as the page shows it in words (no Markdown marks), or None."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)):
        return None  # a constant: its docstring would be its type's
    doc = inspect.getdoc(obj)
    if not doc or (inspect.isclass(obj) and doc == inspect.getdoc(obj.__mro__[1])):
        return None
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return None  # the signature a dataclass or named tuple gets for a docstring, not one written
    return words(doc.split("\n\n")[0])


def words(text: str) -> str:
    """The text's characters without Markdown marks or spaces (rendering moves spaces around code spans)."""
    return "".join(re.sub(r"[`*]", "", text).split())


def page_text(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.DOTALL)
    return words(html.unescape(re.sub(r"<[^>]+>", " ", text)))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_public_names_are_found() -> None:
    names = public_names()
    for expected in [("dualpath.bank", "ConceptBank"), ("dualpath.decider", "choose_next_vector"),
                     ("dualpath.decider", "load_lanes"), ("dualpath.config", "DualPathConfig"),
                     ("dualpath.pipeline.generator", "Generator"), ("dualpath", "DualPathError")]:
        assert expected in names
    assert len(names) > 80


def test_api_reference_has_every_public_name_with_its_docstring(site: Path) -> None:
    reference = sorted((site / "reference").glob("*/index.html"))
    assert len(reference) >= 5
    anchors: dict[str, Path] = {}
    for page in reference:
        for anchor in re.findall(r'id="(dualpath[\w.]*)"', page.read_text(encoding="utf-8")):
            anchors.setdefault(anchor, page)
    texts = {page: page_text(page) for page in reference}
    missing, undocumented = [], []
    for module_name, name in public_names():
        anchor = f"{module_name}.{name}"
        if anchor not in anchors:
            missing.append(anchor)
            continue
        doc = first_paragraph(getattr(importlib.import_module(module_name), name))
        if doc and doc[:80] not in texts[anchors[anchor]]:
            undocumented.append(f"{anchor}: {doc[:80]!r}")
    assert not missing, f"not in the API reference: {missing}"
    assert not undocumented, "docstring not shown:\n" + "\n".join(undocumented)


def test_every_page_is_in_the_navigation(site: Path) -> None:
    """mkdocs builds a page left out of `nav` without a way to reach it; each page of docs/ is in the nav."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").rglob("*.md")):
        assert page.relative_to(ROOT / "docs").as_posix() in nav, page


def test_the_site_fetches_nothing(site: Path) -> None:
    """Built offline and read offline: no web fonts, no script or style from another host."""
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="https?://', text), page
