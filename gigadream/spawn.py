"""How gigadream starts a Python child of its own (a studio job, a derived output, a traced
run): this interpreter, with ``-P``, so the child imports the installed package whatever
folder it starts in. Without it, ``python -m`` puts the working folder first on the import
path, and a folder named ``gigadream`` there (the source clone beside a user's photos, the
common case) shadows the package: "cannot import name '__version__' from 'gigadream'"."""
from __future__ import annotations

import sys


def python_module(module: str, *args) -> list[str]:
    """The argv of ``python -m MODULE ARGS`` in this interpreter, the working folder kept
    off the import path (``-P``, Python 3.11)."""
    return [sys.executable, "-P", "-m", module, *map(str, args)]
