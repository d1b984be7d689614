"""One model step at a time in a process, and a record of when each ran.

A model worker runs two tasks at once (``cluster.PREFETCH``): while one runs the model, the
other reads its window (and Dask hands it over), prepares it and waits here, so the model
never waits on I/O. The processors take their steps here, not from ``engine``: they (and a
check of the models on a machine without Dask, ``profiling/gpu_check.py``) then need
neither Dask nor the store.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

MODEL_LOCK = threading.Lock()
_held = threading.local()          # this thread's model steps: (start, end) unix times


@contextlib.contextmanager
def model_step() -> Iterator[None]:
    """What a processor runs its model in (a forward and backward, an optimiser's closure):
    one at a time in the process, under MODEL_LOCK. Only the model: the step's arithmetic
    around it (jitter, the update, layout copies) overlaps the other thread's model step.
    Holding it around the whole processor call would leave 19 ms a tile of such work in the
    model's way (4 % of a dream run's model time in bf16)."""
    with MODEL_LOCK:
        start = time.time()
        try:
            yield
        finally:
            steps = getattr(_held, "steps", None)
            if steps is not None:              # inside recorded_steps: its tiles' statistics
                steps.append((start, time.time()))


@contextlib.contextmanager
def recorded_steps() -> Iterator[list[tuple[float, float]]]:
    """The (start, end) of each model step this thread takes inside the block (the engine's
    tile statistics, ``model_at``). Steps outside any such block, a style target's say, are
    not recorded."""
    _held.steps = steps = []
    try:
        yield steps
    finally:
        _held.steps = None
