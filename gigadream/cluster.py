"""The Dask cluster's life: start it (an embedded LocalCluster on loopback, or a
``--scheduler`` joined), set up each worker (threads, device, the model loaded once), run
tasks on it, and stop it.

``map_tasks`` runs tasks, a bounded number at once, on any ``concurrent.futures.Executor``:
the cluster's (``DaskExecutor``) for runs, a thread pool in the tests.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import dask
import dask.system
import dask.utils
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin

from .devices import choose_gpus, cuda_devices, worker_devices
from .errors import ClusterError, ConfigError

# Tasks in flight at once: enough to keep every worker busy and its next tile prefetched,
# few enough that the scheduler's state does not grow with the image (a 200 MP pass's 780
# tiles at once would cost the client ~40 MB).
IN_FLIGHT = 32
# How often a run waiting on its tasks asks whether its cluster is still there
# (``DaskExecutor.check``): a round trip to the scheduler, a millisecond on a LAN.
WATCH_S = 5.0
# How long a run waits for a worker when its cluster has none left (all gone mid-run: spot
# machines reclaimed, killed) before it stops in one line: long enough for an operator's
# autoscaler or systemd to start replacements. Dask's config, as an operator sets the rest:
# ``DASK_GIGADREAM__NO_WORKERS_TIMEOUT=5s`` or ``gigadream: {no-workers-timeout: 5m}``.
NO_WORKERS_TIMEOUT = "60s"


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

    check = getattr(executor, "check", lambda cancelled=False: None)
    try:
        for _ in range(in_flight):
            submit_next()
        while pending:
            finished, _ = concurrent.futures.wait(
                pending, timeout=WATCH_S, return_when=concurrent.futures.FIRST_COMPLETED)
            if not finished:
                check()         # a cluster whose scheduler or workers are gone: one line
            for fut in finished:
                i = pending.pop(fut)
                try:
                    result = fut.result()
                except concurrent.futures.CancelledError:
                    check(cancelled=True)       # nothing here cancels a task it waits on
                    raise
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
        self.address = client.scheduler.address
        self._workerless_since: float | None = None

    def check(self, cancelled: bool = False) -> None:
        """Raise a one-line ``ClusterError`` where the cluster cannot finish the run: its
        scheduler gone (Dask cancels every task it waited on: ``cancelled``), or no worker
        left for ``gigadream.no-workers-timeout`` (Dask would wait for one forever). What is
        recorded stays in the store: the same command resumes."""
        lost = ClusterError(f"the Dask scheduler at {self.address} went away mid-run (its "
                            "workers stop with it); start the scheduler and its workers "
                            "again, then run the same command: it resumes from the store")
        if cancelled or self.client.status != "running":
            raise lost
        try:
            workers = len(self.client.nthreads())
        except (OSError, TimeoutError):
            raise lost from None
        if workers:
            self._workerless_since = None
            return
        now = time.monotonic()
        self._workerless_since = self._workerless_since or now
        wait = dask.utils.parse_timedelta(
            dask.config.get("gigadream.no-workers-timeout", NO_WORKERS_TIMEOUT))
        if now - self._workerless_since >= wait:
            raise ClusterError(f"every worker of the Dask scheduler at {self.address} is gone "
                               f"and none came back in {wait:.0f} s; start workers again "
                               f"(dask worker {self.address}), then run the same command: "
                               "it resumes from the store")

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
        # (store.convert), 3-7x faster than numpy's.
        import torch
        torch.set_num_threads(threads)
        from .devices import own_device, use_device
        if self.devices and isinstance(worker.name, int):
            use_device(self.devices[worker.name % len(self.devices)])
        elif self.parent is None:
            use_device(own_device(worker.address))
        if self.warm is not None:
            try:
                self.warm()
            except Exception as e:
                if self.parent is not None:     # this machine's own: said as it is
                    raise
                # a worker of another machine: the client sees this worker's error alone,
                # which names neither the worker nor whose file is missing
                raise ClusterError(f"worker {worker.name} ({worker.address}) cannot load the "
                                   f"model: {e}; put the file at that path on that worker's "
                                   "machine (or set model.weights to a path every worker "
                                   "reaches), then run the same command") from None


def versions() -> dict[str, str]:
    """gigadream's and torch's versions in this process: a client and workers that differ
    compute other pixels (torch) or other tasks (gigadream)."""
    from importlib import metadata

    from . import __version__
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "none"
    return {"gigadream": __version__, "torch": torch}


def check_versions(client: Client, scheduler: str) -> None:
    """One line naming the first worker of ``scheduler`` whose ``versions`` differ from this
    client's, and both versions; before any work (the setup plugin, the model)."""
    own = versions()
    names = {a: w.get("name", a) for a, w in client.scheduler_info()["workers"].items()}
    for address, theirs in sorted(client.run(versions).items()):
        differ = [k for k in own if theirs.get(k) != own[k]]
        if differ:
            raise ClusterError(
                f"worker {names.get(address, address)} ({address}) of {scheduler} runs "
                + ", ".join(f"{k} {theirs.get(k)}" for k in differ) + ", this client "
                + ", ".join(f"{k} {own[k]}" for k in differ) + "; install the same "
                "versions on the client and every worker")


def _exit_with_parent(parent: int) -> None:
    """A worker of an embedded cluster ends when the gigadream process that started it is
    gone (kill -9 gives it no chance to stop its workers): orphans would go on writing into
    a store that a resumed run is using. (Until this runs, a worker has had no task, and
    one whose scheduler is gone exits by itself.)"""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="gigadream-parent-watch", daemon=True).start()


# Task threads of a worker that runs a model: one in the model, one prefetching the next
# tile (see steps.MODEL_LOCK). A worker without a model runs one: its tiles are all I/O.
PREFETCH = 2
# A GPU worker's: its model step (~4 ms a batch of 4 tiles by its FLOPs) is shorter than the
# I/O around it (~9 ms), whose numpy, torch and file calls release the GIL: four threads
# keep the GPU busy where two would leave it idle 40 % of the time.
GPU_PREFETCH = 4


# oneDNN primitives a CPU worker keeps compiled (its default: 1024). Each window shape's
# DeepDream step creates ~20 (VGG16 to relu3_3: convolutions forward and backward, with their
# reordered weights), and a run's edge tiles bring dozens of shapes, which the default keeps
# at ~200 MB a worker. 128 keeps a pass's few recurring shapes (the interior tiles' and the
# edges') compiled.
ONEDNN_CACHE = 128


def check_gpus(gpus: str | tuple[int, ...], scheduler: str | None = None) -> list[int]:
    """The GPUs the embedded cluster runs on (``engine.gpus``: ``devices.choose_gpus``), or
    one line on what is wrong with them; checked before anything is written."""
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
    chosen = check_gpus(gpus, scheduler)
    quiet = contextlib.ExitStack()
    if scheduler:
        # Dask's client (and tornado under it) logs a lost scheduler with tracebacks; the run
        # says it in one line (DaskExecutor.check), as the embedded cluster's silence_logs has it
        # (Dask's logging config gives the last two levels of their own.)
        for name in ("distributed", "distributed.client", "tornado.application"):
            quiet.enter_context(_quiet(name))
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            quiet.close()
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
        # faulted in afresh: a VGG16 forward runs 1.7x slower than in a plain process.
        # engine.run_tiles trims the heap after each task instead.
        spawn_env = {k: str(threads) for k in
                     ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        spawn_env["MALLOC_ARENA_MAX"] = "2"       # see memory.tune_client_malloc
        spawn_env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_CACHE)
        # libgomp's threads spin between parallel regions, and a model worker's other
        # executor thread (jitter, updates, I/O: torch ops on their own OpenMP threads), the
        # client or another process then wait for a core (a dream run takes 1.4x as long);
        # PASSIVE threads sleep. OMP_WAIT_POLICY in the environment wins.
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
        if local is None:
            check_versions(client, scheduler)
        client.register_plugin(WorkerSetup(threads, warm, os.getpid() if local else None,
                                           devices))
        yield DaskExecutor(client)
    finally:
        if local is None:
            with quiet:
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
    after kill -9). Dask's orderly close takes ~0.5 s of every run's wall time, this ~0.02 s,
    and it does not wait for a model step to finish."""
    import signal
    for nanny in list(local.workers.values()):
        pid = getattr(nanny, "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class BackgroundCluster:
    """``cluster(...)`` started on a thread of its own, so that the workers start (a process,
    torch, the model: 2-3 s) while the client ingests and builds the pyramid. Its
    workers' memory then adds to ingest's, which stays below the passes' peak. It stops
    before the export: stopping it while the export runs would save ~0.4 s but add the
    workers' memory to the export's peak.

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
