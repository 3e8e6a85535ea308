"""`python-docs`: a corpus of long documents that every Python installation carries.

Two parts, both read from the running interpreter's standard library, without network and
without importing any library module (importing `antigravity` opens a browser, `this` prints):

- `reference/<topic>`: the 79 Language Reference topics that `help()` shows
  (`pydoc_data.topics.topics`), domain `language`;
- `library/<module>`: one document per standard-library module, its module docstring followed by
  the docstrings of its classes, functions and methods in source order, read with `ast`;
  domain: the top-level package (`asyncio`, `email`, …) or `library` for a single-file module.

The text is cleaned to prose: headings, code and doctest blocks, grammar rules, tables, signature
lines, footnotes and reST roles are dropped. Documents with fewer than `MIN_SENTENCES` sentences
(as the default segmenter counts them) are left out, so every document is a long one. The content
follows the interpreter's version; ids, order and text are the same on every run of one version.
"""

from __future__ import annotations

import ast
import re
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from dualpath.corpus.segment import segment_sentences

PYTHON_DOCS = "python-docs"
MIN_SENTENCES = 15
# Folders of the standard library that hold tests, vendored packages or build helpers, not modules
# a reader looks up; their docstrings are about test cases.
SKIPPED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})

_HEADING_RULE = re.compile(r"^\s*([*=\-~^\"'`#+])\1{2,}\s*$")
_TABLE_LINE = re.compile(r"^\s*(\+[-=+]+\+?|\|.*\||[=\-]{2,}(\s+[=\-]{2,})+)\s*$")
_BULLET = re.compile(r"^(\s*)(?:[*\-+•]|\d+[.)]|\([a-z0-9]\))\s+")
_FIELD = re.compile(r"^\s*:(param|type|returns?|rtype|raises?|var|ivar|cvar|keyword|arg)\b")
_ROLE = re.compile(r":[\w:.+-]+:`~?([^`<]*?)(?:\s*<[^`>]*>)?`")
_DOUBLE_LITERAL = re.compile(r"``([^`]+?)``")
_TEX_QUOTE = re.compile(r"``([^`'\n]{1,80})''")  # old docstrings quote ``like this''
_LITERAL = re.compile(r"`([^`]+)`_{0,2}")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}([^\s*](?:[^*]*?[^\s*])?)\*{1,2}(?![\w*])")
_FOOTNOTE_REF = re.compile(r"\s?\[\d+\]")
_PROMPT = re.compile(r"^\s*(>>>|\.\.\.(\s|$)|\$ |% )")
# Python statement lines; wrapped prose lines start with "if", "for" or "with" too, but do not
# end in a colon, name a module to import, or open a def/class.
_CODE_START = re.compile(
    r"^\s*(?:(?:def|class)\s+\w+\s*[(:]|import\s+[\w.]+\s*$|from\s+[\w.]+\s+import\b|@\w"
    r"|(?:if|elif|else|for|while|with|try|except|finally)\b[^.]*:\s*$)"
)
_DIRECTIVE = re.compile(r"^\s*\.\. ")
_END = (".", "!", "?", ":", ".)", '."', ".”", "?)", "?”")


def python_docs() -> Iterator[tuple[str, str, str, str]]:
    """(id, title, prose text, domain) for every long document, reference topics first."""
    # Topics overlap ("class" is also a section of "compound"), and modules repeat docstrings:
    # a paragraph is kept where it first appears, so no text is in two documents (a held-out
    # document must not be in the training split under another id).
    seen: set[str] = set()
    yield from _reference_topics(seen)
    yield from _library_modules(seen)


def _fresh(text: str, seen: set[str]) -> str:
    """`text`'s paragraphs that no earlier document had."""
    kept: list[str] = []
    for paragraph in text.split("\n\n"):
        if paragraph and paragraph not in seen:
            seen.add(paragraph)
            kept.append(paragraph)
    return "\n\n".join(kept)


def _reference_topics(seen: set[str]) -> Iterator[tuple[str, str, str, str]]:
    from pydoc_data.topics import topics  # shipped with CPython; pure data

    for key in sorted(topics):
        sections = _sections(topics[key])
        topic_title = sections[0][0] or key
        chapters = _chapters([(heading, _fresh(prose(raw), seen)) for heading, raw in sections])
        ids: set[str] = set()
        for i, (heading, text) in enumerate(chapters):
            doc_id = f"reference/{key}" if i == 0 else _unique(f"reference/{key}/{_slug(heading)}", ids)
            title = topic_title if i == 0 else f"{topic_title}: {heading}"
            yield doc_id, title, text, "language"


def _chapters(sections: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive sections joined into chapters of at least `MIN_SENTENCES` sentences.

    A chapter closes at the first section boundary where it is long enough; a short tail joins
    the last chapter. So every chapter starts at a heading (it keeps the first one's), and a text
    too short for one chapter gives none.
    """
    chapters: list[tuple[str, list[str]]] = []
    heading, parts = "", []
    for section_heading, text in sections:
        if not parts:
            heading = section_heading
        if text:
            parts.append(text)
        # Counted on the joined text: the segmenter merges short pieces across paragraphs.
        if parts and len(segment_sentences("\n\n".join(parts))) >= MIN_SENTENCES:
            chapters.append((heading, parts))
            parts = []
    if parts and chapters:
        chapters[-1][1].extend(parts)
    return [(h, "\n\n".join(p)) for h, p in chapters]


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) pairs of reST-like text; the first heading may be "" if the text starts with prose."""
    lines = text.splitlines()
    sections: list[tuple[str, list[str]]] = [("", [])]
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _HEADING_RULE.match(following) and not _HEADING_RULE.match(line):
            if sections[-1][1] or sections[-1][0]:
                sections.append((line.strip(), []))
            else:
                sections[-1] = (line.strip(), [])
            continue
        sections[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in sections]


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"


def _unique(doc_id: str, ids: set[str]) -> str:
    candidate, n = doc_id, 2
    while candidate in ids:
        candidate, n = f"{doc_id}-{n}", n + 1
    ids.add(candidate)
    return candidate


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_files(root: Path) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if any(p in SKIPPED_PARTS or p.startswith(("test_", ".")) or "-" in p for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            found.append((".".join(parts), path))
    return sorted(found)


def _library_modules(seen: set[str]) -> Iterator[tuple[str, str, str, str]]:
    """Each module cut into chapters at its top-level classes (a class with its methods is a section)."""
    root = stdlib_root()
    modules = _module_files(root)
    packages = {name.split(".")[0] for name, path in modules if path.name == "__init__.py"}
    for name, path in modules:
        top = name.split(".")[0]
        domain = top if top in packages else "library"
        ids: set[str] = set()
        sections = [(heading, _fresh(text, seen)) for heading, text in _module_sections(path)]
        for i, (heading, text) in enumerate(_chapters(sections)):
            doc_id = f"library/{name}" if i == 0 else _unique(f"library/{name}/{heading}", ids)
            yield doc_id, name if i == 0 else f"{name}.{heading}", text, domain


def _module_sections(path: Path) -> list[tuple[str, str]]:
    """("", module docstring and the functions before the first class), then one section per class.

    Docstrings come in source order; a file that does not parse gives no section.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old modules have invalid escape sequences
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return []
    sections: list[tuple[str, list[str]]] = [("", [ast.get_docstring(tree) or ""])]
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            sections.append((node.name, []))
        sections[-1][1].extend(_docstrings(node))
    return [(h, "\n\n".join(p for p in (prose(d) for d in docs) if p)) for h, docs in sections]


def _docstrings(node: ast.AST) -> list[str]:
    """The docstrings of `node` and every class or function inside it, in source order."""
    kinds = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    nodes = sorted((n for n in ast.walk(node) if isinstance(n, kinds)), key=lambda n: n.lineno)
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def prose(text: str) -> str:
    """The prose paragraphs of reST-like plain text, one per blank-line-separated block.

    A block is kept only if it reads as sentences: it ends with sentence punctuation, holds no
    prompt, grammar rule, table or directive, is mostly letters, and is not a deeper-indented
    code or definition body. Bullet markers, reST roles, emphasis and footnote marks are stripped.
    """
    kept: list[str] = []
    for block in _blocks(text):
        paragraph = _clean_block(block)
        if paragraph is not None:
            kept.append(paragraph)
    return "\n\n".join(kept)


def _blocks(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    lines = text.expandtabs().splitlines()
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _HEADING_RULE.match(following) and not _HEADING_RULE.match(line):
            continue  # a heading's text: its underline comes next
        if not line.strip() or _HEADING_RULE.match(line):
            if block:
                yield block
            block = []
            continue
        if _BULLET.match(line) and block:
            yield block  # each list item is its own paragraph
            block = []
        block.append(line)
    if block:
        yield block


def _clean_block(lines: list[str]) -> str | None:
    if any(
        _PROMPT.match(ln) or "::=" in ln or _TABLE_LINE.match(ln) or _DIRECTIVE.match(ln) or _FIELD.match(ln)
        for ln in lines
    ):
        return None
    if lines[0].strip().startswith(("-[", "[")):
        return None  # "-[ Footnotes ]-" and the footnotes under it
    first = lines[0]
    bullet = _BULLET.match(first)
    indent = bullet.end() if bullet else len(first) - len(first.lstrip())
    if any(len(ln) - len(ln.lstrip()) > indent for ln in lines[1:]):
        return None  # a term with an indented body, or a code block with nested lines
    if sum(bool(_CODE_START.match(ln)) for ln in lines) * 2 > len(lines):
        return None
    joined = " ".join(ln.strip() for ln in lines)
    if bullet:
        joined = joined[len(bullet.group(0).strip()) :].strip()
    joined = _ROLE.sub(r"\1", joined)
    joined = _DOUBLE_LITERAL.sub(r"\1", joined)  # first, so a later '' is not taken as a TeX quote's end
    joined = _TEX_QUOTE.sub(r'"\1"', joined)
    joined = _LITERAL.sub(r"\1", joined)
    joined = _EMPHASIS.sub(r"\1", joined)
    joined = _FOOTNOTE_REF.sub("", joined)
    joined = re.sub(r"\s+", " ", joined).strip()
    words = joined.split()
    if len(words) < 4 or not joined.endswith(_END):
        return None  # a signature, a label ("See also:") or a fragment without an end
    visible = [c for c in joined if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < 0.72 * len(visible):
        return None  # mostly symbols: code, an expression or a format table
    return joined
