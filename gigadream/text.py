"""Small text helpers shared by the CLI, the studio, the tools and the storage rooms."""
from __future__ import annotations


def duration(s: float | None) -> str:
    """Seconds as a clock, ``m:ss`` or ``h:mm:ss``; an en dash while unknown."""
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def error_line(e: BaseException, skip: tuple[str, ...] = (), last: bool = False) -> str:
    """One line of an exception's message, for a one-line error: its first non-blank line
    (``last``: its last, where libvips puts the cause), passing over lines that start with
    one of ``skip`` unless every line does (pyvips indents its detail's first line, which is
    therefore kept); the exception's class name where it says nothing."""
    lines = str(e).strip().splitlines()
    kept = [ln for ln in lines if ln.strip() and not ln.startswith(skip)] or lines
    if not kept:
        return type(e).__name__
    return (kept[-1] if last else kept[0]).strip()
