"""Plain-text tables for what the scripts print."""

from __future__ import annotations

from typing import Any


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of dict rows."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(cell(r[c]).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)
