"""The package's floors (docs/architecture.md draws them): a module imports only from its own floor or
a lower one, and no two modules import each other, lazily or not. A lower floor importing a
higher one is how config.py came to import modes/ and cli.py and studio/batch.py to import
each other; this test keeps the house from growing them back."""
from __future__ import annotations

import ast
from pathlib import Path

import gigadream

PACKAGE = Path(gigadream.__file__).parent

# Lowest first. A module not listed here fails the test: a new room gets a floor on purpose.
FLOORS = [
    ["__init__", "errors", "text", "archs", "classes", "spawn"],
    ["tiling", "resample", "devices", "memory", "steps", "events", "flow", "progress"],
    ["storage", "config"],
    ["models", "metadata", "ingest", "export", "viewer", "video"],
    ["modes"],
    ["engine", "cluster", "record", "pipeline"],
    ["preview", "estimate", "profile", "baseline", "sample", "sequence", "clips", "judge"],
    ["cli", "__main__", "studio"],
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def modules() -> dict[str, Path]:
    """'storage.store' → its file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (functions too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            elif node.module and node.module.startswith("gigadream"):
                target = node.module.partition(".")[2]
            else:
                continue
            targets = [f"{target}.{a.name}".strip(".") for a in node.names]
            found |= {t for t in targets if t in known} or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names
                      if a.name.startswith("gigadream.")}
    return {t for t in found if t in known and t != name and t != ""}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def floor(module: str) -> int:
    room = module.split(".")[0] if module else "__init__"
    assert room in FLOOR, f"{module}: no floor in test_layout.FLOORS; give its room one"
    return FLOOR[room]


def test_every_module_has_a_floor():
    for name in modules():
        floor(name)


def test_no_module_imports_a_higher_floor():
    upward = sorted(f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
                    for a, targets in graph().items() for b in targets if floor(b) > floor(a))
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path
                               else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [])
    assert not circles, "\n".join(circles)
