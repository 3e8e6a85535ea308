"""Concept segmentation: text → sentence-sized pieces.

Three passes, each simple on its own:
1. sentence boundaries: `.`, `!`, `?` (and closing quotes/brackets) followed by space and a
   capital, digit or opening quote — unless the word before is an abbreviation ("Dr.",
   "e.g.", "U.S."), an initial ("Arthur C. Clarke") or a number label ("No. 5"); a blank
   line is always a boundary;
2. run-ons longer than `max_chars` are split at the last clause boundary (`;`, `:`, `,`,
   then any space) that fits, or cut hard if a single word is longer;
3. fragments shorter than `min_chars` are merged into a neighbour when the result fits.

Whitespace inside a concept is collapsed to single spaces; every other character of the
text is kept, in order, so joining the concepts gives back the text's non-space characters.
"""

from __future__ import annotations

import re

from dualpath.config import SegmentConfig


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Abbreviations after which a period never ends a sentence: titles and Latin forms that a
# name or a clause always follows.
NEVER_FINAL = _words(
    "mr mrs ms dr prof st mt ft gen col lt sgt capt cmdr adm rev hon sen rep gov pres fr e.g i.e vs cf viz approx"
)
# Abbreviations that usually sit inside a sentence but can end one ("... and so on, etc.").
# After them a period ends the sentence only when a common sentence opener follows.
MAYBE_FINAL = _words(
    "etc al inc ltd co corp jr sr bros dept univ est assn ave blvd rd jan feb mar apr jun jul aug "
    "sep sept oct nov dec mon tue wed thu fri sat sun min max"
)
# Labels that a number follows: "No. 5", "pp. 12", "Vol. 3".
BEFORE_NUMBER = _words("no nos vol vols p pp fig figs op ch sec art ed eds ca c b d fl r")
# Words that begin sentences far more often than they follow "U.S." or an initial in a name.
OPENERS = _words(
    "the a an it its he she they we i this that these those there in on at as after before during "
    "however his her their our but and when while since although though from by for with its "
    "today later many most some one two both each such then also thus if because"
)

_CANDIDATE = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
_NEXT_WORD = re.compile(r"\s+([\"'“‘(\[]*)(\S*)")
_DOTTED = re.compile(r"^(?:[A-Za-z]\.){2,}$")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"\s+")


def segment_sentences(text: str, cfg: SegmentConfig | None = None) -> list[str]:
    """Split `text` into concepts within `cfg.min_chars`..`cfg.max_chars` where possible."""
    cfg = cfg or SegmentConfig()
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        for sentence in split_sentences(paragraph):
            sentences.extend(split_long(sentence, cfg.min_chars, cfg.max_chars))
    return merge_short(sentences, cfg.min_chars, cfg.max_chars)


def split_sentences(text: str) -> list[str]:
    """Sentence boundaries only, no length rules; whitespace collapsed, empty pieces dropped."""
    pieces: list[str] = []
    start = 0
    for match in _CANDIDATE.finditer(text):
        end = match.end()
        if _is_boundary(text, match.start(), end):
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:])
    return [s for s in (_SPACE.sub(" ", p).strip() for p in pieces) if s]


def _is_boundary(text: str, punct_start: int, end: int) -> bool:
    following = _NEXT_WORD.match(text, end)
    if following is None:
        return True
    opener, next_word = following.groups()
    if not next_word:
        return True
    first = next_word[0]
    if not (first.isupper() or first.isdigit() or opener):
        return False  # "e.g. the", "approx. five": a lowercase word continues the sentence
    if text[punct_start] != ".":
        return True  # "!" and "?" have no abbreviations
    word_start = punct_start
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start : punct_start + 1].lstrip("\"'“‘([")
    stem = word[:-1].lower() if word.endswith(".") else word.lower()
    if stem.endswith("."):
        return True  # an ellipsis "..." ends a sentence
    if stem in NEVER_FINAL:
        return False
    if stem in BEFORE_NUMBER and first.isdigit():
        return False
    starts_sentence = next_word.strip(".,;:!?\"'”’)").lower() in OPENERS
    is_initial = len(stem) == 1 and word[0].isupper()
    if stem in MAYBE_FINAL or is_initial or _DOTTED.match(word):
        return starts_sentence
    return True


def split_long(sentence: str, min_chars: int, max_chars: int) -> list[str]:
    """Cut a run-on sentence into pieces of at most `max_chars`, at clause boundaries if it can."""
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        cut = _clause_cut(rest, min_chars, max_chars)
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _clause_cut(text: str, min_chars: int, max_chars: int) -> int:
    """The end of the longest head ≤ max_chars ending at the strongest available boundary."""
    lowest = min(min_chars, max_chars // 2)
    for separator in ("; ", ": ", ", ", " "):
        # The head is text[:pos + 1] (the separator's punctuation stays with the head).
        pos = text.rfind(separator, lowest, max_chars)
        if pos != -1:
            return pos + 1 if separator != " " else pos
    pos = text.rfind(" ", 1, max_chars + 1)
    return pos if pos > 0 else max_chars  # one word longer than max_chars: cut it


def merge_short(pieces: list[str], min_chars: int, max_chars: int) -> list[str]:
    """Merge each piece shorter than `min_chars` into its neighbour when the result fits.

    A short piece joins the one before it; a short first piece takes the next one. A piece
    that stays short has no neighbour it fits with.
    """
    merged: list[str] = []
    for piece in pieces:
        if merged:
            previous = merged[-1]
            short = len(previous) < min_chars or len(piece) < min_chars
            if short and len(previous) + 1 + len(piece) <= max_chars:
                merged[-1] = f"{previous} {piece}"
                continue
        merged.append(piece)
    return merged
