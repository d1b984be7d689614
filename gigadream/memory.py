"""This process's memory: glibc's malloc tuned for the client, freed memory handed back to
the OS, and the peak of a command's whole process tree (for tests and profiling)."""
from __future__ import annotations

import ctypes
import functools
import subprocess


@functools.cache
def _glibc():
    """The C library when it is glibc (malloc_trim, mallopt), else None: nothing to tune."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand freed memory back to the OS. glibc keeps it in per-thread arenas otherwise: the
    client would carry ingest's peak (it grows with the image width) through every pass, a
    worker its largest tile's. Called after ingest and after each Dask task (~17 ms, against
    a model step's seconds)."""
    if _glibc() is not None:
        _glibc().malloc_trim(0)


M_ARENA_MAX = -8        # glibc mallopt parameters
M_MMAP_THRESHOLD = -3


def tune_client_malloc(arenas: int = 2, mmap_threshold: int = 1 << 20) -> None:
    """glibc settings for the gigadream process itself (the client: ingest, export).

    - At most ``arenas`` malloc arenas: chunk reads run on a pool of threads and glibc gives
      each its own arena, which keeps what it once held; the export's peak would grow with
      the canvas's height.
    - A fixed mmap threshold: glibc raises it to the size of every large block freed, after
      which the 1.5 MB canvas chunks come from the heap and fragment it. Workers keep
      glibc's default: a fixed threshold makes every activation of a model step a fresh
      mmap (see ``cluster.cluster``).
    """
    if _glibc() is not None:
        _glibc().mallopt(M_ARENA_MAX, arenas)
        _glibc().mallopt(M_MMAP_THRESHOLD, mmap_threshold)


def peak_mb(args: list[str], interval: float = 0.05, backend: str = "psutil_pss") -> float:
    """Run ``python -m gigadream ARGS`` (or any argv starting with an executable) in a child
    process and return the peak memory of it and its children, in MB (PSS by default: shared
    library pages are split between the processes that share them, not counted twice)."""
    from memory_profiler import memory_usage

    from .spawn import python_module
    argv = args if args[0].endswith(("python", "python3")) or "/" in args[0] else \
        python_module("gigadream", *args)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = memory_usage(proc, interval=interval, include_children=True, max_usage=True,
                        backend=backend)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return float(peak) * 1.048576   # memory-profiler reports MiB
