"""The rows of `top` as text: the live view's table cells and `top --once`'s lines (no screen library here)."""

from __future__ import annotations

from typing import Any


def age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.0f}{unit}"
        n = n // 1024
    return f"{n}G"


def row_cells(v: Any) -> tuple[str, ...]:
    e = v.egress
    return (
        v.slug,
        v.agent,
        v.state,
        age(v.since),
        str(len(v.requests)) if v.requests else "",
        f"{e.allowed}/{e.denied} {size(e.bytes)}",
        v.doing or (e.last_host and f"last: {e.last_host}") or "",
    )


COLUMNS = ("SLUG", "AGENT", "STATE", "FOR", "REQ", "EGRESS a/d", "DOING")


def text_lines(views: list[Any], width: int = 200) -> list[str]:
    rows = [COLUMNS, *(row_cells(v) for v in views)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return [ln.rstrip()[:width] for ln in lines]
