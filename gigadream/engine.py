"""Runs a pass's tiles: one Dask task carries a few tiles. Knows tasks and tiles; the
processors (``modes``) know the models, ``cluster`` the workers.

A task reads its tile's window from the previous canvas, hands it to the processor, and writes
exactly the chunk the tile owns in the next canvas; its result is a small dict of statistics.
A group of tiles that runs out of GPU memory is retried smaller (``_fitting``).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .cluster import map_tasks
from .devices import loaded_torch
from .errors import GpuMemoryError
from .memory import release_freed_memory
from .steps import recorded_steps
from .storage import chunks
from .tiling import Tile, tile_rng


@dataclass(frozen=True)
class TileTask:
    """Everything one tile of one pass needs; pickled to a worker."""

    source: Any            # ArrayView or OctaveStart: has read(box)
    target: Any            # ArrayView: has write(tile, core); None for statistics tasks
    processor: Any
    tile: Tile
    seed: tuple[int, int, int]   # (run seed, octave, pass)
    kind: str = "process"        # or "stat": only measure (gradient scale, Gram sums)
    align: int = 1               # the grid's (``tiling.grid``): where parts' windows start
    run: str = ""                # the run's id (``Store.run``): what the worker keeps of it


def run_tile(task: TileTask, data: Any = None) -> dict:
    """One tile; ``data`` is the value every tile of the pass receives (``map_tiles``)."""
    return run_tiles((task,), data)[0]


def run_tiles(tasks: tuple[TileTask, ...], data: Any = None, batch: int | None = None) -> list[dict]:
    """Several tiles in one Dask task. A Dask task costs ~15-20 ms of scheduling, more than
    an identity tile's own work (3 ms), so cheap tiles travel in batches (``tiles_per_task``).
    Consecutive tiles whose windows share a shape go through a processor that has ``batch``
    together, ``batch`` at a time (``engine.batch``: one model step for them all; None: no
    limit); others one after the other. The heap is trimmed once a task, not once a tile:
    the next tile would fault its buffers' pages in again (an identity tile's time doubles).

    A group that runs out of GPU memory is retried smaller (``_fitting``): the task, and the
    pass, go on."""
    stats = []
    with chunks.task_io():      # a store on object storage: PUTs overlap the next tiles
        for group in _model_groups(tasks, batch):
            stats += _process(group, data)
    release_freed_memory()
    return stats


def _model_groups(tasks: Sequence[TileTask], size: int | None = None) -> list[list[TileTask]]:
    """Runs of consecutive tasks, at most ``size`` long, that one ``batch`` call can take:
    same kind, same window shape, a processor that batches. Anything else goes alone."""
    groups: list[list[TileTask]] = []
    for t in tasks:
        last = groups[-1][-1] if groups else None
        if (last is not None and t.processor.batchable and t.processor is last.processor
                and t.kind == last.kind and t.tile.window.shape == last.tile.window.shape
                and (size is None or len(groups[-1]) < size)):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def _process(tasks: list[TileTask], data: Any) -> list[dict]:
    """Tiles of one ``_model_groups`` group: read, process (steps.model_step: one at a time),
    write. Each tile's statistics gain its share of the group's time, when (unix time) the
    group began, the model steps (``model_at``: a list of (start, end), on the group's
    first tile), to show the overlap, and the megapixels its window went through the model
    (``model_mp``: its pixels × the group's steps; with ``model_s``, a run's model rate)."""
    t0, began = time.perf_counter(), time.time()
    with recorded_steps() as steps:
        results = _fitting(tasks, data)
    for task, (out, _) in zip(tasks, results):
        if out is not None:
            task.target.write(task.tile, out)
    seconds = (time.perf_counter() - t0) / len(tasks)
    for i, (task, (_, stats)) in enumerate(zip(tasks, results)):
        h, w = task.tile.window.shape
        stats.update(tile_s=seconds, began=began, model_at=steps if i == 0 else [],
                     model_mp=h * w / 1e6 * len(steps), pid=os.getpid())
    return [stats for _, stats in results]


def _model(tasks: list[TileTask], data: Any) -> list[tuple[Any, dict]]:
    """(core pixels or None, statistics) of each of ``tasks``, one model call for them all."""
    first, proc = tasks[0], tasks[0].processor
    # float32 unless the processor takes the canvas's own float16 (Identity)
    dtype = getattr(proc, "window_dtype", np.float32)
    windows = [t.source.read(t.tile.window, dtype) for t in tasks]
    if first.kind == "stat":
        cores = [t.tile.core.relative_to(t.tile.window) for t in tasks]
        return [(None, s) for s in proc.stat_batch(windows, cores, [t.tile for t in tasks])]
    return proc.process(windows, [t.tile for t in tasks],
                        [tile_rng(*t.seed, t.tile) for t in tasks], data)


# Out of GPU memory. A group of tiles that does not fit is halved, down to one tile; a tile
# that does not fit alone is processed in parts (``tiling.split_tile``: its core cut in 2 × 2,
# each with the tile's margin of context), and each part likewise, down to parts whose core
# is SMALLEST_PART px; what does not fit then is one line naming the settings to lower. What
# fitted is remembered per run and window shape (``_fitted``): the worker's next tiles of
# the run start there. Per run: parts change pixels, and a worker of a long-lived cluster
# serves other runs, which must not be split by this one's memory (another model, another
# batch, or a GPU with other jobs on it then).
SMALLEST_PART = 64
# Runs whose memory a worker keeps, the latest used; an older run that comes back (a resume
# hours later) starts afresh, as on a new worker.
RUNS_KEPT = 8
# run id -> (fits: (processor type, kind, window shape) -> tiles at once,
#            parted: (processor type, window shape) -> parts a side)
_memory: collections.OrderedDict[str, tuple[dict, dict]] = collections.OrderedDict()


def _fitted(run: str) -> tuple[dict, dict]:
    """What fitted in this worker's device for ``run``: (fits, parted)."""
    if run not in _memory:
        _memory[run] = ({}, {})
        while len(_memory) > RUNS_KEPT:
            _memory.popitem(last=False)
    _memory.move_to_end(run)
    return _memory[run]


def out_of_memory(e: BaseException) -> bool:
    """``e`` is torch's CUDA out-of-memory error (torch is imported only where it runs)."""
    torch = loaded_torch()
    return torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)


def _free_gpu_memory() -> None:
    """Hand the failed step's cached blocks back before the smaller retry."""
    torch = loaded_torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fitting(tasks: list[TileTask], data: Any) -> list[tuple[Any, dict]]:
    """``_model`` of ``tasks``, retried smaller where the device runs out of memory: halves
    of the group, then (one tile) its parts (``_in_parts``). The halves' tiles get the
    pixels they get in any group (to float rounding: ``engine.batch``); parts do not (see
    ``_in_parts``)."""
    first = tasks[0]
    _fits, _parted = _fitted(first.run)
    key = (type(first.processor).__name__, first.kind, first.tile.window.shape)
    fits = _fits.get(key, len(tasks))
    if len(tasks) > fits:
        return [r for i in range(0, len(tasks), fits) for r in _fitting(tasks[i:i + fits], data)]
    parts = _parted.get(key[::2], 1)
    if len(tasks) == 1 and parts > 1 and first.kind == "process":
        return [_in_parts(first, data, parts)]
    try:
        return _model(tasks, data)
    except Exception as e:       # handled below, once its frames (and tensors) are gone
        if not out_of_memory(e):
            raise
    _free_gpu_memory()
    if len(tasks) > 1:
        half = (len(tasks) + 1) // 2
        _fits[key] = half
        return _fitting(tasks[:half], data) + _fitting(tasks[half:], data)
    if first.kind != "process":
        raise _too_large(first)
    _parted[key[::2]] = 2
    return [_in_parts(first, data, 2)]


def _in_parts(task: TileTask, data: Any, parts: int) -> tuple[Any, dict]:
    """One tile processed as ``parts`` × ``parts`` tiles (``tiling.split_tile``), its core's
    pixels put together from theirs, and each part cut again where it does not fit. Not the
    pixels of the whole tile: each part holds its neighbours' pixels fixed as context, as any
    tile of a pass does (a finer grid for this tile alone, its boundaries as seamless as the
    grid's); a dream part's jitter is its tile's."""
    from .tiling import split_tile
    sub = split_tile(task.tile, parts, task.processor.margin, task.align)
    if min(min(t.core.shape) for t in sub) < SMALLEST_PART:
        raise _too_large(task)
    out, stats = None, {}
    for t in sub:
        [(pixels, s)] = _fitting([dataclasses.replace(task, tile=t)], data)
        if out is None:
            out = np.empty((pixels.shape[0], *task.tile.core.shape), pixels.dtype)
        out[(slice(None), *t.core.relative_to(task.tile.core).slices())] = pixels
        for k, v in s.items():
            if isinstance(v, (int, float)):
                stats[k] = stats.get(k, 0) + v
    stats["parts"] = len(sub)
    return out, stats


def _too_large(task: TileTask) -> GpuMemoryError:
    """The one line for a tile that fits neither alone nor in the smallest parts."""
    from .devices import device
    (h, w), side = task.tile.window.shape, max(task.tile.core.shape)
    how = f"alone or in parts of {SMALLEST_PART} px" if task.kind == "process" else "alone"
    return GpuMemoryError(
        f"a {w}×{h} px window (a {side} px tile core and its context) does not fit in the "
        f"memory of {device()} {how}; lower tiling.tile (tiles of {side} px or more here) "
        "and engine.batch, or tiling.margin, or run fewer workers on each GPU")


def tiles_per_task(model: bool, batch: int = 1) -> int:
    """Tiles a Dask task carries (its cost: see ``run_tiles``): 16 where a tile is cheap,
    one where it is a model step of seconds (a CPU's; the progress bar then moves per tile).
    Cheap: only I/O (identity), or a GPU's model batches (``batch`` > 1), 16 tiles in whole
    batches. A GPU step on a 550 px window is ~1 ms by its FLOPs (225 GFLOP at a third of an
    H200's bf16 peak), so a task of one batch would pay Dask more than the model."""
    if not model:
        return 16
    return 1 if batch == 1 else max(batch, 16 // batch * batch)


def batches(tasks: Sequence, size: int, by_shape: bool = False) -> list[tuple]:
    """``tasks`` in tuples of ``size``; ``by_shape``: each tuple's tile windows of one shape
    (a pass's interior tiles share theirs, its edge tiles come in a few others). The order
    of the tiles in a pass does not change its result: each reads the previous canvas only."""
    if not by_shape:
        return [tuple(tasks[i:i + size]) for i in range(0, len(tasks), size)]
    groups: dict = {}
    for t in tasks:
        groups.setdefault(t.tile.window.shape, []).append(t)
    return [b for g in groups.values() for b in batches(g, size)]


def map_tiles(executor: concurrent.futures.Executor, tasks: Sequence[TileTask], model: bool,
              batch: int = 1, on_done: Callable[[list[dict]], None] | None = None,
              data: Any = None, keep: bool = True) -> list[dict]:
    """A pass's (or a measurement's) tile tasks on ``executor``: ``tiles_per_task`` tiles a
    Dask task, in model steps of ``batch`` tiles of one window shape; ``data`` goes to every
    tile (a Dask future is sent to each worker once). ``on_done`` sees each Dask task's
    statistics; with ``keep`` all of them come back, a tile's each, in no particular order."""
    done = map_tasks(executor, functools.partial(run_tiles, batch=batch),
                     batches(tasks, tiles_per_task(model, batch), batch > 1), on_done,
                     args=(data,), keep=keep)
    return [stats for task in done for stats in task] if keep else []
