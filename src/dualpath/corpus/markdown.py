"""Markdown to prose: the title from the `# Title` heading, the rest as plain paragraphs.

Concepts are sentences, so Markdown's structure must not leak into them: a heading glued onto the
next sentence ("# Mars Mars is the fourth planet") or a link's URL would become part of a concept's
vector. What is kept: paragraph and list-item text with emphasis, inline code, links and HTML tags
reduced to their text. What is dropped: front matter, headings (the first `# ` one becomes the
title), fenced and indented code blocks, tables, images, link definitions, rules and HTML comments.
Each heading, list item and block quote line group ends a paragraph, so no two are glued together.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^\s{0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE = re.compile(r"^\s*\|.*\|\s*$|^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")
_LINK_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+(?:\[[ xX]\]\s+)?")
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)|!\[([^\]]*)\]\[[^\]]*\]")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPH_STAR = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")
_EMPH_UNDER = re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(.+?)~~")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>|~])")


def markdown_to_text(markdown: str) -> tuple[str | None, str]:
    """(title, text): the first level-1 heading's text, or None; paragraphs separated by blank lines."""
    lines = _HTML_COMMENT.sub("", markdown).splitlines()
    lines = _skip_front_matter(lines)
    title: str | None = None
    paragraphs: list[str] = []
    current: list[str] = []

    def end_paragraph() -> None:
        if current:
            text = _inline(" ".join(current))
            if text:
                paragraphs.append(text)
            current.clear()

    fence: str | None = None
    previous_blank = True
    underline = -1  # the index of a setext heading's underline, skipped with its heading
    for i, line in enumerate(lines):
        if i == underline:
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        opened = _FENCE.match(line)
        if opened:
            end_paragraph()
            fence = opened.group(1)[0] * 3
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        heading = _heading(line, following, bool(current))
        if heading is not None:
            level, text = heading
            if not _ATX.match(line):
                underline = i + 1
            end_paragraph()
            if level == 1 and title is None and text:
                title = _inline(text)
            previous_blank = True
            continue
        if not line.strip():
            end_paragraph()
            previous_blank = True
            continue
        if _RULE.match(line) or _SETEXT.match(line) or _TABLE.match(line) or _LINK_DEF.match(line):
            end_paragraph()
            continue
        if previous_blank and not current and (line.startswith("    ") or line.startswith("\t")):
            continue  # an indented code block (a list item's continuation is never after a blank here)
        quote = _QUOTE.match(line)
        if quote:
            line = line[quote.end() :]
        item = _LIST_ITEM.match(line)
        if item:
            end_paragraph()
            line = line[item.end() :]
        current.append(line.strip())
        previous_blank = False
    end_paragraph()
    return title, "\n\n".join(paragraphs)


def _skip_front_matter(lines: list[str]) -> list[str]:
    if lines and lines[0].strip() == "---":
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                return lines[end + 1 :]
    return lines


def _heading(line: str, following: str, in_paragraph: bool) -> tuple[int, str] | None:
    atx = _ATX.match(line)
    if atx:
        return len(atx.group(1)), (atx.group(2) or "").strip()
    # "Title\n=====" is a heading only when the text line starts a block: under a paragraph's
    # continuation line CommonMark would make the whole paragraph the heading, which we ignore.
    setext = _SETEXT.match(following)
    if setext and line.strip() and not in_paragraph and not _LIST_ITEM.match(line) and not _RULE.match(line):
        return (1 if setext.group(1)[0] == "=" else 2), line.strip()
    return None


def _inline(text: str) -> str:
    text = _IMAGE.sub("", text)
    text = _LINK.sub(lambda m: m.group(1) or m.group(2), text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), text)
    text = _STRONG.sub(r"\2", text)
    text = _EMPH_STAR.sub(r"\1", text)
    text = _EMPH_UNDER.sub(r"\1", text)
    text = _STRIKE.sub(r"\1", text)
    text = _ESCAPE.sub(r"\1", text)
    return re.sub(r"\s+", " ", text).strip()
