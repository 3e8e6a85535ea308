"""Simulated restatements: the prompts of the restated case."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dualpath.corpus.restate import restate

SENTENCE = ("The budgerigar, also known as the common parakeet, shell parakeet or budgie, is a small, long-tailed, "
            "seed-eating parrot (Melopsittacus undulatus) native to Australia.")


def test_a_restatement_drops_asides_and_words_but_keeps_the_opening() -> None:
    said = restate(SENTENCE)
    assert "(" not in said and said.endswith(".")
    assert said.split()[0] == "The"
    assert len(said.split()) < len(SENTENCE.split())
    # Seeds give different restatements of the same sentence; the same seed the same one.
    assert {restate(SENTENCE, seed) for seed in range(8)} != {said}
    assert restate(SENTENCE, 3) == restate(SENTENCE, 3)


@given(st.text(min_size=1, max_size=200).filter(lambda t: bool(t.split())), st.integers(0, 2**31))
def test_a_restatement_of_words_is_never_empty_and_never_longer(text: str, seed: int) -> None:
    said = restate(text, seed)
    assert said.strip()
    assert restate(text, seed) == said
    assert len(said.split()) <= max(1, len(text.split()))
