"""Runs passes: one task per tile on a Dask cluster. Knows tasks, workers and devices; the
processors (``modes``) know the models.

A task reads its tile's window from the previous canvas, hands it to the processor, and writes
exactly the chunk the tile owns in the next canvas; its result is a small dict of statistics.
``map_tasks`` works over any ``concurrent.futures.Executor``: a Dask client's executor for
runs, a thread pool where a cluster would cost more than the work (the pyramid of ``ingest``).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import dask
import dask.system
import numpy as np
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin

from .errors import ClusterError, ConfigError, GpuMemoryError
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


def run_tile(task: TileTask, data: Any = None) -> dict:
    """One tile; ``data`` is the value every tile of the pass receives (``map_tiles``)."""
    return run_tiles((task,), data)[0]


def run_tiles(tasks: tuple[TileTask, ...], data: Any = None, batch: int | None = None) -> list[dict]:
    """Several tiles in one Dask task. A Dask task costs ~15-20 ms of scheduling here (2
    cores shared with the client): more than an identity tile's own work (3 ms), so cheap
    tiles travel in batches (``tiles_per_task``). Consecutive tiles whose windows share a
    shape go through a processor that has ``batch`` together, ``batch`` at a time
    (``engine.batch``: one model step for them all; None: no limit); others one after the
    other. The heap is trimmed once a task: trimming after every identity tile doubles its
    time (6.2 against 3.1 ms, measured): the next tile faults its buffers' pages in again.

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
        return [(None, s) for s in proc.stat_batch(windows, cores)]
    return proc.process(windows, [t.tile for t in tasks],
                        [tile_rng(*t.seed, t.tile) for t in tasks], data)


# Out of GPU memory. A group of tiles that does not fit is halved, down to one tile; a tile
# that does not fit alone is processed in parts (``tiling.split_tile``: its core cut in 2 × 2,
# each with the tile's margin of context), and each part likewise, down to parts whose core
# is SMALLEST_PART px; what does not fit then is one line naming the settings to lower. What
# fitted is remembered per window shape (``_fits``): the worker's next tiles start there.
SMALLEST_PART = 64
_fits: dict[tuple, int] = {}        # (processor type, kind, window shape) -> tiles at once
_parted: dict[tuple, int] = {}      # (processor type, window shape) -> parts a side


def out_of_memory(e: BaseException) -> bool:
    """``e`` is torch's CUDA out-of-memory error (torch is imported only where it runs)."""
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)


def _free_gpu_memory() -> None:
    """Hand the failed step's cached blocks back before the smaller retry."""
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fitting(tasks: list[TileTask], data: Any) -> list[tuple[Any, dict]]:
    """``_model`` of ``tasks``, retried smaller where the device runs out of memory: halves
    of the group, then (one tile) its parts (``_in_parts``). The halves' tiles get the
    pixels they get in any group (to float rounding: ``engine.batch``); parts do not (see
    ``_in_parts``)."""
    first = tasks[0]
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
    batches. A GPU step on a 550 px window is ~1 ms (its 225 GFLOP at a third of an H200's
    bf16 peak; estimated, not measured), so a task of one batch would pay Dask more than
    the model."""
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
    worker its largest tile's. Called after ingest and after each Dask task (17 ms after a
    640 px VGG16 step that took seconds, measured)."""
    if _glibc() is not None:
        _glibc().malloc_trim(0)


M_ARENA_MAX = -8        # glibc mallopt parameters
M_MMAP_THRESHOLD = -3


def tune_client_malloc(arenas: int = 2, mmap_threshold: int = 1 << 20) -> None:
    """glibc settings for the gigadream process itself (the client: ingest, export).

    - At most ``arenas`` malloc arenas: chunk reads run on a pool of threads and glibc gives
      each its own arena, which keeps what it once held (exporting a 100 MP canvas peaked
      44 MB above a 25 MP one of the same width; with two arenas, 188 MB both).
    - A fixed mmap threshold: glibc raises it to the size of every large block freed, after
      which the 1.5 MB canvas chunks come from the heap and fragment it; exporting a 200 MP
      canvas peaked 258 MB against 229 MB for 25 MP, and 193 against 189 MB with the threshold
      held at 1 MB (measured). Workers keep glibc's default: a fixed threshold made every
      activation of a model step a fresh mmap (see ``cluster``).
    """
    if _glibc() is not None:
        _glibc().mallopt(M_ARENA_MAX, arenas)
        _glibc().mallopt(M_MMAP_THRESHOLD, mmap_threshold)


# Tasks in flight at once: enough to keep every worker busy and its next tile prefetched,
# few enough that the scheduler's state does not grow with the image (all 780 tiles of a
# 200 MP pass submitted at once cost the client ~40 MB more than 100 did).
IN_FLIGHT = 32


def map_tasks(executor: concurrent.futures.Executor, fn: Callable, items: Sequence,
              on_done: Callable[[Any], None] | None = None, args: tuple = (),
              in_flight: int = IN_FLIGHT, keep: bool = True) -> list:
    """``fn(item, *args)`` over ``items`` on ``executor``; results in the order of ``items``
    (``keep``), or none kept: ``on_done`` then is what sees them.

    At most ``in_flight`` tasks are submitted and not yet finished. ``on_done`` sees each
    result as it completes (progress). The first failure cancels the rest and is raised; a
    task whose worker died every time Dask tried it (``KilledWorker``) as a ``ClusterError``.
    """
    results: list = [None] * len(items) if keep else []
    pending: dict = {}
    queue = iter(enumerate(items))

    def submit_next() -> None:
        nxt = next(queue, None)
        if nxt is not None:
            pending[executor.submit(fn, nxt[1], *args)] = nxt[0]

    try:
        for _ in range(in_flight):
            submit_next()
        while pending:
            finished, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                try:
                    result = fut.result()
                except KilledWorker as e:       # Dask's own words are a traceback's worth
                    raise ClusterError(
                        f"a worker died each of the {e.allowed_failures + 1} times it ran the "
                        "same tiles, most often killed by the system for memory "
                        "(see dmesg): fewer engine.workers or a smaller tiling.tile need "
                        "less; what is recorded stays in the store and the same command "
                        "resumes") from None
                if keep:
                    results[i] = result
                if on_done is not None:
                    on_done(result)
                del result, fut
                submit_next()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    return results


class DaskExecutor(concurrent.futures.Executor):
    """A Dask client as an Executor (``submit`` brings each result back), plus ``remote`` and
    ``share``: values that stay on the workers, for tasks to read."""

    def __init__(self, client: Client):
        self.client = client
        self._executor = client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs):
        return self._executor.submit(fn, *args, **kwargs)

    def remote(self, fn: Callable, *args):
        """A Dask future of ``fn(*args)``; pass it to ``submit`` or ``remote`` as an argument."""
        return self.client.submit(fn, *args, pure=False)

    def share(self, value):
        """``value`` sent to every worker once, as a Dask future that tasks take as an
        argument. (In a list: Dask scatters a dict's values under the dict's keys, so two
        dicts with one key would share one future.)"""
        [future] = self.client.scatter([value], broadcast=True, hash=False)
        return future

    def each_worker(self, fn: Callable, *args) -> list:
        """``fn(*args)`` run once in every worker process (not as a task): what each
        resolves for itself (its device, say)."""
        return list(self.client.run(fn, *args).values())


def cuda_devices() -> int:
    """NVIDIA GPUs this process may use, without importing torch: the client never runs a
    model, and importing torch cost it 180 MB (measured). The driver lists its GPUs under
    /proc/driver/nvidia/gpus; CUDA_VISIBLE_DEVICES narrows them, as it does for torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    found = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    n = 0
    for v in visible.split(","):     # CUDA stops at the first invalid entry ("-1": none)
        if not v.strip() or v.strip().startswith("-"):
            break
        n += 1
    return min(found, n)


def worker_threads(setting: int | str, task_threads: int) -> int:
    """Torch threads of a worker of an existing cluster, sized on its own machine
    (``engine.threads``): auto is its Dask thread count, the share of its machine's cores its
    operator gave it (``dask worker`` starts cores / ``--nworkers`` of them), at most the
    cores it may use (affinity and a container's quota count: dask's ``cpu_count``)."""
    if setting != "auto":
        return int(setting)
    return max(1, min(task_threads, dask.system.cpu_count()))


class WorkerSetup(WorkerPlugin):
    """Runs once in each worker process: bounds its threads (``threads`` auto is resolved on
    the worker: ``worker_threads``), gives it its device, and runs ``warm`` (a mode's:
    loading the model) before the first task, so a pass never waits on weights and each
    worker loads them once. ``devices``: the embedded cluster's, one a worker (by its
    number: ``devices.worker_devices``); None: a worker of the embedded cluster runs on the
    CPU, one of an existing cluster (no ``parent``) on the one GPU it sees, and is refused
    in one line where it sees several (``devices.own_device``)."""

    name = "gigadream-setup"

    def __init__(self, threads: int | str, warm: Callable[[], Any] | None = None,
                 parent: int | None = None, devices: list[str] | None = None):
        self.threads = threads
        self.warm = warm
        self.parent = parent
        self.devices = devices

    def setup(self, worker) -> None:
        threads = worker_threads(self.threads, worker.state.nthreads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if self.parent is not None:
            _exit_with_parent(self.parent)
            # as the client's LocalCluster(silence_logs=...): its task errors reach the
            # client anyway, and its workers end with SIGKILL (_kill_workers), which other
            # workers would report, tracebacks and all, on the run's stderr
            logging.getLogger("distributed").setLevel(logging.CRITICAL)
        # torch even without a model: the canvases' float16 conversions go through it
        # (store.convert), 3-7x faster than numpy's: an identity pass runs 1.8x faster.
        import torch
        torch.set_num_threads(threads)
        from .devices import own_device, use_device
        if self.devices and isinstance(worker.name, int):
            use_device(self.devices[worker.name % len(self.devices)])
        elif self.parent is None:
            use_device(own_device(worker.address))
        if self.warm is not None:
            self.warm()


def _exit_with_parent(parent: int) -> None:
    """A worker of an embedded cluster ends when the gigadream process that started it is
    gone (kill -9 gives it no chance to stop its workers): orphans would go on writing into
    a store that a resumed run is using. (Before this runs, a worker has had no task, and
    one whose scheduler is gone exits by itself: tested.)"""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="gigadream-parent-watch", daemon=True).start()


# Task threads of a worker that runs a model: one in the model, one prefetching the next
# tile (see steps.MODEL_LOCK). A worker without a model runs one: its tiles are all I/O.
PREFETCH = 2
# A GPU worker's: its model step is shorter than the I/O around it. Per batch of 4 tiles,
# reads take ~5 ms (a plain pass's 1.3 ms a tile, measured here) and writes ~4 ms, against
# ~4 ms of model (estimated from FLOPs): two threads would keep the GPU busy 60 % of the
# time, four all of it, if the I/O's numpy, torch and file calls (which release the GIL)
# scale over the box's cores. Estimated, not yet measured on a GPU.
GPU_PREFETCH = 4


# oneDNN primitives a CPU worker keeps compiled (its default: 1024). Each window shape's
# DeepDream step creates ~20 (VGG16 to relu3_3: convolutions forward and backward, with their
# reordered weights), and a run's edge tiles bring dozens of shapes: a 2 MP impressionist run's
# worker peaked at 1108-1149 MB with the default, 938 MB with 128, 891 MB with 64, the same
# pixels (measured). 128 keeps a pass's few recurring shapes (the interior tiles' and the
# edges') compiled.
ONEDNN_CACHE = 128


def check_gpus(gpus: str | tuple[int, ...], scheduler: str | None = None) -> list[int]:
    """The GPUs the embedded cluster runs on (``engine.gpus``: ``devices.choose_gpus``), or
    one line on what is wrong with them; checked before anything is written."""
    from .devices import choose_gpus
    if scheduler:
        if gpus != "auto":
            raise ConfigError(f"engine.gpus {','.join(map(str, gpus))} picks GPUs for the "
                              "workers started here; each worker of --scheduler "
                              f"{scheduler} runs on the one GPU it sees (CUDA_VISIBLE_DEVICES): "
                              "leave out --gpus")
        return []
    return choose_gpus(gpus, cuda_devices())


@contextlib.contextmanager
def cluster(workers: int | str = "auto", threads: int | str = "auto",
            scheduler: str | None = None, warm: Callable[[], Any] | None = None,
            gpus: str | tuple[int, ...] = "auto") -> Iterator[DaskExecutor]:
    """An executor backed by Dask: an embedded LocalCluster on loopback, whose workers own a
    GPU each where there are GPUs (``gpus``: all, or those numbered), or ``scheduler``.
    ``warm`` runs once in each worker."""
    from .devices import worker_devices
    chosen = check_gpus(gpus, scheduler)
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"no Dask scheduler answers at {scheduler} ({e.__class__.__name__}); "
                               "check the address, or leave out --scheduler to start one here") from e
        local, devices = None, None
    else:
        n = workers if workers != "auto" else max(1, len(chosen))
        devices = worker_devices(n, chosen)
        # the workers share this machine's cores
        threads = threads if threads != "auto" else max(1, dask.system.cpu_count() // n)
        # Dask starts workers with OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_=64 KiB. The
        # first makes every executor thread single-threaded (OpenMP counts are per thread);
        # the second also freezes glibc's mmap threshold, so every activation is mmapped and
        # faulted in afresh: a VGG16 forward runs 1.7x slower than in a plain process
        # (measured here). run_tiles trims the heap after each task instead.
        spawn_env = {k: str(threads) for k in
                     ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        spawn_env["MALLOC_ARENA_MAX"] = "2"       # see tune_client_malloc
        spawn_env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_CACHE)
        # libgomp's threads spin between parallel regions, and a model worker's other
        # executor thread (jitter, updates, I/O: torch ops on their own OpenMP threads), the
        # client or another process then wait for a core: an impressionist run of a 1 MP
        # panorama took 196 s spinning against 137 s with PASSIVE (sleeping) threads, quiet
        # 2-core machine, the same pixels. OMP_WAIT_POLICY in the environment wins.
        spawn_env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
            prefetch = (GPU_PREFETCH if devices else PREFETCH) if warm else 1
            # The scheduler serves HTTP (health, JSON) even without the dashboard, on 8787
            # unless told otherwise, and warns when another run holds that port; a free
            # loopback port serves as well.
            local = LocalCluster(n_workers=n, threads_per_worker=prefetch,
                                 processes=True,
                                 host="127.0.0.1", dashboard_address=None, memory_limit=0,
                                 scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                 silence_logs=logging.CRITICAL)   # task errors reach us anyway
        client = Client(local)
    try:
        client.register_plugin(WorkerSetup(threads, warm, os.getpid() if local else None,
                                           devices))
        yield DaskExecutor(client)
    finally:
        if local is None:
            client.close()
        else:
            with _quiet("distributed"):
                _kill_workers(local)
                client.close()
                local.close()


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` and those below it say nothing in the block. The scheduler of an
    embedded cluster lives in this process and reports each killed worker's connection
    (``_kill_workers``) with a traceback; LocalCluster's own silence_logs ends as it starts
    to close: without this, one run in three prints one (4 lines) on the run's stderr."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _kill_workers(local: LocalCluster) -> None:
    """End an embedded cluster's worker processes at once. They hold nothing: every task of
    a finished run has written its chunk, and an interrupted pass is redone on resume (as
    after kill -9). Dask's orderly close takes 0.4-0.6 s of every run's wall time here, this
    0.02 s, and it does not wait for a model step to finish."""
    import signal
    for nanny in list(local.workers.values()):
        pid = getattr(nanny, "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class BackgroundCluster:
    """``cluster(...)`` started on a thread of its own, so that the workers start (a process,
    torch, the model: 2-3 s here) while the client ingests and builds the pyramid. Its
    workers' memory then adds to ingest's, which stays below the passes' peak. It stops
    before the export: stopping it while the export runs would save 0.4 s but raise a
    run's peak by the workers' memory (445 → 551 MB at 200 MP, measured).

    A ``--scheduler`` is joined at once: a wrong address fails before hours of ingest.
    """

    def __init__(self, workers: int | str = "auto", threads: int | str = "auto",
                 scheduler: str | None = None, warm: Callable[[], Any] | None = None,
                 gpus: str | tuple[int, ...] = "auto"):
        self._stack = contextlib.ExitStack()
        # one thread: the context is entered and left on the same one
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "gigadream-cluster")
        self._started = self._thread.submit(self._stack.enter_context,
                                            cluster(workers, threads, scheduler, warm, gpus))
        self._closed = False
        if scheduler:
            self.executor()

    def executor(self) -> DaskExecutor:
        """The cluster's executor, once it has started (its start's error, if any)."""
        try:
            return self._started.result()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the cluster, after its start if that is still going on, and wait. Safe to
        call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.submit(self._stack.close).result()
        finally:
            self._thread.shutdown(wait=True)
