"""Concept segmentation: abbreviations, decimals and initials, and the length rules as invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.config import SegmentConfig
from dualpath.corpus import segment_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith arrived. He sat down.", ["Dr. Smith arrived.", "He sat down."]),
        ("She moved to the U.S. in 1990. It was cold.", ["She moved to the U.S. in 1990.", "It was cold."]),
        ("He lived in the U.S. The end came.", ["He lived in the U.S.", "The end came."]),
        ("Pi is about 3.14 in value. Tau is 6.28.", ["Pi is about 3.14 in value.", "Tau is 6.28."]),
        ("Written by Arthur C. Clarke. It sold.", ["Written by Arthur C. Clarke.", "It sold."]),
        ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
        (
            "Big cats, e.g. lions, roar. Cats, i.e. felids, purr.",
            ["Big cats, e.g. lions, roar.", "Cats, i.e. felids, purr."],
        ),
        ("See No. 5 on the list. Then stop.", ["See No. 5 on the list.", "Then stop."]),
        ("He lived in St. Louis. Later, Paris.", ["He lived in St. Louis.", "Later, Paris."]),
        ("Wow! Really? Yes.", ["Wow!", "Really?", "Yes."]),
        ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
        ("Apples, pears, etc. The rest is jam.", ["Apples, pears, etc.", "The rest is jam."]),
        ("It weighs approx. five tons.", ["It weighs approx. five tons."]),
        ("A first line\n\nA heading without a period", ["A first line", "A heading without a period"]),
    ],
)
def test_sentence_boundaries(text, expected):
    assert segment_sentences(text, SegmentConfig(min_chars=1, max_chars=400)) == expected


def test_short_fragments_merge_and_run_ons_split():
    cfg = SegmentConfig(min_chars=25, max_chars=80)
    assert segment_sentences("Yes. The committee approved the plan after a long debate.", cfg) == [
        "Yes. The committee approved the plan after a long debate."
    ]
    run_on = (
        "The river rises in the hills; it flows through three towns, two lakes and a forest, and it ends in the sea."
    )
    pieces = segment_sentences(run_on, cfg)
    assert pieces == [
        "The river rises in the hills;",
        "it flows through three towns, two lakes and a forest, and it ends in the sea.",
    ]
    assert all(len(p) <= 80 for p in pieces)


def test_a_word_longer_than_max_is_cut():
    pieces = segment_sentences("x" * 130, SegmentConfig(min_chars=5, max_chars=50))
    assert pieces == ["x" * 50, "x" * 50, "x" * 30]


# -- invariants -----------------------------------------------------------------------------------------

words = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=14),
    st.sampled_from(
        ["Dr.", "U.S.", "e.g.", "3.14", "A.", "etc.", "St.", "No.", "The", "He", "It", "...", "!", "?", '"Go."']
    ),
)
separators = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n", ", ", "; ", "\t"])
texts = st.lists(st.tuples(words, separators), max_size=80).map(lambda pairs: "".join(w + s for w, s in pairs))
configs = st.builds(SegmentConfig, min_chars=st.integers(1, 60), max_chars=st.integers(20, 200))


def non_space(text: str) -> str:
    return "".join(text.split())


@settings(max_examples=300, deadline=None)
@given(texts, configs)
def test_segmentation_invariants(text, cfg):
    concepts = segment_sentences(text, cfg)
    assert all(c and c == c.strip() and "  " not in c for c in concepts), "no empty or padded concepts"
    assert non_space("".join(concepts)) == non_space(text), "every non-space character kept, in order"
    assert all(len(c) <= cfg.max_chars for c in concepts)
    for i, concept in enumerate(concepts):
        if len(concept) < cfg.min_chars and len(concepts) > 1:
            # A concept stays short only when neither neighbour can take it within max_chars.
            for j in (i - 1, i + 1):
                if 0 <= j < len(concepts):
                    assert len(concepts[j]) + 1 + len(concept) > cfg.max_chars
