"""Corpus sources: JSONL, folders and the wiki sample, and their one-line errors."""

from __future__ import annotations

import json
import logging

import pytest

from dualpath.corpus import PYTHON_DOCS, WIKI_SAMPLE, Document, load_documents
from dualpath.errors import CorpusError


def write_jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")


def test_jsonl_documents_in_file_order(tmp_path):
    path = tmp_path / "c.jsonl"
    write_jsonl(
        path,
        [
            {"id": "a", "title": "Alpha", "text": "First text.", "domain": "Arts"},
            "",
            {"id": 7, "text": "Second text."},
        ],
    )
    assert list(load_documents(path)) == [
        Document("a", "Alpha", "First text.", "Arts"),
        Document("7", "7", "Second text.", None),
    ]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "b", "text": "unterminated', "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"id": "b"}', 'missing or non-string "text"'),
        ('{"text": "no id"}', 'missing "id"'),
        ('{"id": "a", "text": "again"}', "duplicate document id 'a'"),
        ('{"id": "b", "text": "x", "domain": 3}', '"title" and "domain" must be strings'),
    ],
)
def test_a_bad_jsonl_line_is_named_or_skipped(tmp_path, caplog, bad_line, message):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [{"id": "a", "text": "Good."}, {"id": "z", "text": "Good too."}, bad_line])
    with pytest.raises(CorpusError, match=f"c.jsonl line 3: {message}") as err:
        list(load_documents(path))
    assert "--skip-bad" in str(err.value) and "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        assert [d.id for d in load_documents(path, skip_bad=True)] == ["a", "z"]
    assert "line 3" in caplog.text


def test_non_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="line 2: not valid UTF-8"):
        list(load_documents(path))
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "latin1.txt").write_bytes(b"Ol\xe9 Mundo.")
    (folder / "ok.txt").write_text("Fine text.")
    with pytest.raises(CorpusError, match=r"latin1\.txt is not valid UTF-8"):
        list(load_documents(folder))
    assert [d.id for d in load_documents(folder, skip_bad=True)] == ["ok"]


def test_empty_documents_are_skipped_and_an_empty_corpus_is_an_error(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [{"id": "blank", "text": "  \n "}, {"id": "real", "text": "Some text."}])
    with caplog.at_level(logging.WARNING):
        assert [d.id for d in load_documents(path)] == ["real"]
    assert "skipping document 'blank'" in caplog.text
    write_jsonl(path, [{"id": "blank", "text": ""}])
    with pytest.raises(CorpusError, match="has no documents with text"):
        list(load_documents(path))
    path.write_text("")
    with pytest.raises(CorpusError, match="has no documents"):
        list(load_documents(path))


def test_folder_of_text_and_markdown(tmp_path):
    (tmp_path / "b.md").write_text("# Bees\n\nBees make honey.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("Ants dig tunnels.")
    (tmp_path / "skip.csv").write_text("not,a,document")
    (tmp_path / ".hidden.txt").write_text("Hidden.")
    docs = list(load_documents(tmp_path))
    assert [(d.id, d.title, d.domain) for d in docs] == [("b", "Bees", None), ("sub/a", "a", "sub")]
    assert docs[0].text == "Bees make honey."
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match=r"holds no \.txt or \.md files"):
        list(load_documents(empty))


def test_missing_and_unsupported_sources(tmp_path):
    with pytest.raises(CorpusError, match="corpus source not found"):
        list(load_documents(tmp_path / "nope.jsonl"))
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="unsupported corpus source"):
        list(load_documents(tmp_path / "data.csv"))
    with pytest.raises(CorpusError, match="--limit-docs must be at least 1"):
        list(load_documents(tmp_path, limit=0))


def test_wiki_sample_maps_topic_to_domain():
    docs = list(load_documents(WIKI_SAMPLE))
    assert len(docs) > 9000
    assert len({d.id for d in docs}) == len(docs)
    assert {d.domain for d in docs} >= {"Arts", "History", "Mathematics", "People", "Geography"}
    first = docs[0]
    assert first.title == first.id and len(first.text) > 100
    assert [d.id for d in load_documents(WIKI_SAMPLE, limit=3)] == [d.id for d in docs[:3]]


MARS_NOTE = """---
tags: [planets]
---
# Mars

Mars is the **fourth** planet from the [Sun](https://en.wikipedia.org/wiki/Sun).
It is often called the *Red Planet*.

## Moons

- Phobos is the larger moon.
- Deimos is the _smaller_ one.

```python
print("not prose")
```

Its surface is covered in `iron oxide` dust. ![a photo](mars.png)

| moon | km |
|------|----|
| Phobos | 22 |

> Quoted lines are text too.

<!-- a comment nobody reads -->
Setext section
--------------
The last paragraph has a <b>tag</b> and a reference [link][1].

[1]: https://example.org
"""


def test_markdown_is_read_as_markdown(tmp_path):
    """The `# ` heading is the title, other headings end paragraphs, and markup is reduced to its text."""
    (tmp_path / "mars.md").write_text(MARS_NOTE, encoding="utf-8")
    (doc,) = load_documents(tmp_path)
    assert (doc.id, doc.title, doc.domain) == ("mars", "Mars", None)
    assert doc.text.split("\n\n") == [
        "Mars is the fourth planet from the Sun. It is often called the Red Planet.",
        "Phobos is the larger moon.",
        "Deimos is the smaller one.",
        "Its surface is covered in iron oxide dust.",
        "Quoted lines are text too.",
        "The last paragraph has a tag and a reference link.",
    ]
    for leftover in ("#", "*", "](", "`", "|", "<", "---", "tags", "print", "Moons", "Setext", "http"):
        assert leftover not in doc.text, leftover


def test_markdown_sentences_do_not_start_with_a_heading(tmp_path):
    from dualpath.corpus import segment_sentences

    note = "# Mars\nMars is the fourth planet from the Sun.\n## History\nIt was known to ancient astronomers.\n"
    (tmp_path / "n.md").write_text(note, encoding="utf-8")
    (doc,) = load_documents(tmp_path)
    assert doc.title == "Mars"
    assert segment_sentences(doc.text) == [
        "Mars is the fourth planet from the Sun.",
        "It was known to ancient astronomers.",
    ]


def test_folder_ids_drop_the_suffix_and_domains_come_from_sub_folders(tmp_path):
    for rel, text in {
        "space/mars.md": "# Red planet\nMars is red.",
        "space/mars.txt": "Another Mars note.",
        "space/deep/pluto.md": "Pluto is far away.",
        "history/rome.md": "# Rome\nRome was not built in a day.",
        "readme.md": "# Notes\nA note at the top.",
    }.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    docs = {d.id: d for d in load_documents(tmp_path)}
    assert sorted(docs) == ["history/rome", "readme", "space/deep/pluto", "space/mars.md", "space/mars.txt"]
    assert {i: d.domain for i, d in docs.items()} == {
        "history/rome": "history",
        "readme": None,
        "space/deep/pluto": "space",
        "space/mars.md": "space",
        "space/mars.txt": "space",
    }
    assert (docs["space/mars.md"].title, docs["space/deep/pluto"].title) == ("Red planet", "pluto")
    (single,) = load_documents(tmp_path / "history" / "rome.md")
    assert (single.id, single.title, single.text) == ("rome", "Rome", "Rome was not built in a day.")


@pytest.fixture(scope="module")
def python_docs_corpus() -> list[Document]:
    return list(load_documents(PYTHON_DOCS))


def test_python_docs_is_a_corpus_of_long_prose_documents(python_docs_corpus):
    from dualpath.corpus import segment_sentences

    docs = python_docs_corpus
    assert len(docs) >= 300
    counts = sorted(len(segment_sentences(d.text)) for d in docs)
    assert counts[0] >= 15  # every document is long, unlike the wiki sample's 3.7 sentences
    assert counts[len(counts) // 2] >= 20
    assert len({d.id for d in docs}) == len(docs)
    assert all(d.domain and d.title for d in docs)
    assert {"language", "library", "asyncio", "email"} <= {d.domain for d in docs}
    by_id = {d.id: d for d in docs}
    assert by_id["reference/assignment"].title == "Assignment statements"
    assert by_id["reference/assignment"].domain == "language"
    assert by_id["library/heapq"].title == "heapq"


def test_python_docs_text_has_no_markup_or_code(python_docs_corpus):
    for doc in python_docs_corpus:
        for paragraph in doc.text.split("\n\n"):
            assert paragraph.strip() == paragraph and paragraph, doc.id
            assert "\n" not in paragraph, doc.id
            assert paragraph.endswith((".", "!", "?", ":", ")", '"', "”")), (doc.id, paragraph)
        for marker in ("::=", ":func:`", ":class:`", "``", "*****", "=====", "+----", "-[ Footnotes ]-", "def __"):
            assert marker not in doc.text, (doc.id, marker)
        # ">>>" only inside prose that talks about the prompt, never as a line of a doctest
        assert not any(p.startswith((">>>", "...")) for p in doc.text.split("\n\n")), doc.id


def test_python_docs_has_no_paragraph_twice(python_docs_corpus):
    """Overlapping topics ("class" in "compound") must not put one text in two documents."""
    paragraphs = [p for d in python_docs_corpus for p in d.text.split("\n\n")]
    assert len(set(paragraphs)) == len(paragraphs)


def test_python_docs_is_stable_and_limitable(python_docs_corpus):
    again = list(load_documents(PYTHON_DOCS, limit=5))
    assert again == python_docs_corpus[:5]
    # "assert" is too short for a document; "assignment" is cut into chapters at its headings
    assert [(d.id, d.title) for d in python_docs_corpus[:2]] == [
        ("reference/assignment", "Assignment statements"),
        (
            "reference/assignment/augmented-assignment-statements",
            "Assignment statements: Augmented assignment statements",
        ),
    ]


def test_prose_keeps_sentences_and_drops_code_and_markup():
    from dualpath.corpus.python_docs import prose

    text = """Title
*****

The :func:`len` function returns the *number* of ``items`` [1].

   >>> len([1, 2])
   2

   expr_stmt ::= starred_expression

   def f(x):
       return x

* A bullet item that is a full sentence.

object.__len__(self)

   Called to implement the built-in function len().

+-----+-----+
| a   | b   |
+-----+-----+

-[ Footnotes ]-

[1] A footnote.
"""
    assert prose(text).split("\n\n") == [
        "The len function returns the number of items.",
        "A bullet item that is a full sentence.",
        "Called to implement the built-in function len().",
    ]
