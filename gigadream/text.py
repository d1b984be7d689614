"""Small text helpers shared by the CLI, the studio and the tools."""
from __future__ import annotations


def duration(s: float | None) -> str:
    """Seconds as a clock, ``m:ss`` or ``h:mm:ss``; an en dash while unknown."""
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
