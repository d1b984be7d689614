"""Runs passes: one task per tile on a Dask cluster. Knows nothing of neural networks.

A task reads its tile's window from the previous canvas, hands it to the processor, and writes
exactly the chunk the tile owns in the next canvas; its result is a small dict of statistics.
``map_tasks`` works over any ``concurrent.futures.Executor``: a Dask client's executor for
runs, a thread pool where a cluster would cost more than the work (the pyramid of ``ingest``).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from distributed import Client, LocalCluster, WorkerPlugin

from .errors import ClusterError
from .tiling import Tile, tile_rng


@dataclass(frozen=True)
class TileTask:
    """Everything one tile of one pass needs; pickled to a worker."""

    source: Any            # ArrayView or OctaveStart: has read(box)
    target: Any            # ArrayView: has write(tile, core); None for statistics tasks
    processor: Any
    tile: Tile
    seed: tuple[int, int, int]   # (run seed, octave, pass)
    kind: str = "process"        # or "stat": only measure the gradient (DeepDream calibration)


def run_tile(task: TileTask) -> dict:
    t0 = time.perf_counter()
    window = task.source.read(task.tile.window)
    core = task.tile.core.relative_to(task.tile.window)
    if task.kind == "stat":
        stats = task.processor.gradient_stat(window, core)
    else:
        out, stats = task.processor(window, core, tile_rng(*task.seed, task.tile))
        task.target.write(task.tile, out)
    stats["tile_s"] = time.perf_counter() - t0
    return stats


def map_tasks(executor: concurrent.futures.Executor, fn: Callable, items: Sequence,
              on_done: Callable[[Any], None] | None = None) -> list:
    """``fn`` over ``items`` on ``executor``; results in the order of ``items``.

    ``on_done`` sees each result as it completes (progress). The first failure cancels what
    has not started and is raised.
    """
    futures = {executor.submit(fn, item): i for i, item in enumerate(items)}
    results: list = [None] * len(items)
    try:
        for fut in concurrent.futures.as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_done is not None:
                on_done(results[futures[fut]])
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return results


def cuda_devices() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0


class WorkerSetup(WorkerPlugin):
    """Runs once in each worker process: bounds its threads, loads the model before the
    first task, so a pass never waits on weights and each worker loads them once."""

    name = "gigadream-setup"

    def __init__(self, threads: int, model: tuple[str, str | None] | None):
        self.threads = threads
        self.model = model

    def setup(self, worker) -> None:
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        if self.model is not None:
            import torch

            from .models import get_model
            torch.set_num_threads(self.threads)
            get_model(*self.model)


@contextlib.contextmanager
def cluster(workers: int | str = "auto", threads: int | str = "auto",
            scheduler: str | None = None,
            model: tuple[str, str | None] | None = None) -> Iterator[concurrent.futures.Executor]:
    """An executor backed by Dask: an embedded LocalCluster on loopback, or ``scheduler``."""
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"no Dask scheduler answers at {scheduler} ({e.__class__.__name__}); "
                               "check the address, or leave out --scheduler to start one here") from e
        local = None
        n = len(client.scheduler_info()["workers"]) or 1
    else:
        n = workers if workers != "auto" else max(1, cuda_devices())
        local = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                             host="127.0.0.1", dashboard_address=None, memory_limit=0,
                             silence_logs=logging.ERROR)
        client = Client(local)
    nthreads = threads if threads != "auto" else max(1, (os.cpu_count() or 1) // n)
    try:
        client.register_plugin(WorkerSetup(nthreads, model))
        yield client.get_executor(pure=False)
    finally:
        client.close()
        if local is not None:
            local.close()
