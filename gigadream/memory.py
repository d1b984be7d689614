"""Peak memory of a command's whole process tree, as memory-profiler measures it."""
from __future__ import annotations

import subprocess
import sys


def peak_mb(args: list[str], interval: float = 0.05, backend: str = "psutil_pss") -> float:
    """Run ``python -m gigadream ARGS`` (or any argv starting with an executable) in a child
    process and return the peak memory of it and its children, in MB (PSS by default: shared
    library pages are split between the processes that share them, not counted twice)."""
    from memory_profiler import memory_usage

    argv = args if args[0].endswith(("python", "python3")) or "/" in args[0] else \
        [sys.executable, "-m", "gigadream", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = memory_usage(proc, interval=interval, include_children=True, max_usage=True,
                        backend=backend)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return float(peak) * 1.048576   # memory-profiler reports MiB
