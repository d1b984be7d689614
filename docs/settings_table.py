"""Rewrite the reference table in docs/settings.md from ``gigadream.config.field_help()``,
the same rows as ``gigadream run --help`` ends with, so the page cannot drift from the code.

    python docs/settings_table.py        # rewrites docs/settings.md between its markers
"""
from pathlib import Path

from gigadream.config import field_help

PAGE = Path(__file__).with_name("settings.md")
BEGIN, END = "<!-- table: docs/settings_table.py -->", "<!-- end of table -->"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def table() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, help in field_help():
        shown = "null" if default is None else default
        rows.append(f"| `{key}` | `{_cell(shown)}` | {_cell(help)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    page = PAGE.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
    print(f"wrote {PAGE}")
