"""Sentences said again in other words, simulated: the prompts of the *restated* case.

A user rarely types a bank sentence verbatim. "The budgerigar is a small parrot native to Australia."
restates the bank's "The budgerigar, also known as the common parakeet, ..., is a small, long-tailed,
seed-eating parrot native to Australia." at cosine 0.77 (all-MiniLM-L6-v2). Without a paraphrase model
on the machine, a restatement is simulated from the sentence itself: asides in brackets go, one comma
clause of three or more goes, about a fifth of the words go, and the tail is cut. With MiniLM on
Wikipedia leads the result sits at cosine 0.62 / 0.86 / 0.95 (10th / 50th / 90th percentile) to the
original, around the typed example above.

Deterministic: a sentence and a seed always give the same restatement, whatever else is restated.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

WORD_DROP = 0.4  # share of words (never the first) dropped
KEEP = (0.4, 0.8)  # share of the remaining words kept, from the start
CLAUSE_DROP = 0.7  # chance of dropping one inner comma clause when there are three or more
_BRACKETS = re.compile(r"\s*\([^)]*\)")


def restate(sentence: str, seed: int = 0) -> str:
    """`sentence` said again with fewer words (module docstring); never empty."""
    rng = np.random.default_rng([zlib.crc32(sentence.encode("utf-8")), seed])
    text = _BRACKETS.sub("", sentence).strip() or sentence.strip()
    clauses = text.split(", ")
    if len(clauses) > 2 and rng.random() < CLAUSE_DROP:
        del clauses[int(rng.integers(1, len(clauses) - 1))]
    words = ", ".join(clauses).split()
    if not words:
        return sentence
    kept = [words[0]] + [w for w in words[1:] if rng.random() >= WORD_DROP]
    cut = max(min(3, len(kept)), int(len(kept) * rng.uniform(*KEEP)))
    return " ".join(kept[:cut]).rstrip(",;:.") + "."
