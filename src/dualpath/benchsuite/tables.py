"""Results as sections of rows, and their Markdown tables.

A section is one table: a title, a note saying what was measured and against which baseline,
the columns to show ((key, header) pairs) and the rows (plain dicts; `name` names the row). Values are
formatted by what their key says they are: `*_ms` milliseconds, `x_*` ratios, `*_share`
percentages, `*_mib` memory, `*_s` seconds, `per_s` rates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Section:
    title: str
    note: str
    columns: list[tuple[str, str]] | dict[str, str]  # row key → column header, in order
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Pairs, not a mapping: results.json is written with sorted keys, and column order matters.
        if isinstance(self.columns, dict):
            self.columns = list(self.columns.items())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_section(section: dict[str, Any] | Section) -> str:
    """One Markdown table with its title and note."""
    s = section.to_dict() if isinstance(section, Section) else section
    lines = [f"### {s['title']}", "", s["note"], ""]
    if not s["rows"]:
        return "\n".join([*lines, "(nothing measured)", ""])
    columns = [(key, header) for key, header in s["columns"]]
    lines.append("| " + " | ".join(header for _, header in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in s["rows"]:
        lines.append("| " + " | ".join(format_value(key, row.get(key)) for key, _ in columns) + " |")
    return "\n".join([*lines, ""])


def render_markdown(sections: dict[str, Any], header: str = "") -> str:
    parts = [header] if header else []
    parts += [render_section(s) for s in sections.values()]
    return "\n".join(parts)


def format_value(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    v = float(value)
    if key.startswith("x_"):
        return f"{v:,.0f}×" if v >= 100 else f"{v:.2f}×" if v >= 0.1 else f"{v:.2g}×"
    if key.endswith(("_share", "_rate")) or key in ("snap", "blend", "novel"):
        return f"{v:.1%}"
    if key.endswith("_ms"):
        return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:,.0f}"
    if key == "per_s" or key.endswith("_per_s"):
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if key.endswith(("_mib", "_s")):
        return f"{v:,.1f}"
    return f"{v:.3f}"


def finite_or_none(obj: Any) -> Any:
    """`obj` with every NaN / infinity replaced by None, so results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj
