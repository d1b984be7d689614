"""Test harness: a real Dask cluster of processes on loopback, as an operator starts one on
other machines: a ``dask scheduler`` and ``dask worker``s, each in a folder of its own, with
this source tree first on their path. Used where a test needs a cluster that outlives runs
(``--scheduler``), or processes it can pause and kill."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import gigadream

ROOT = Path(gigadream.__file__).resolve().parent.parent


def env(**extra: str) -> dict:
    """The test's environment with this source tree first on the path (workers import it)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
            **extra}


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGCONT and SIGTERM to each started process group (a worker's nanny and the worker it
    spawned), SIGKILL to what is left after a few seconds."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)        # a paused one too
                os.killpg(p.pid, signal.SIGTERM)
    end = time.time() + 10
    for p in procs:
        try:
            p.wait(max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)      # the group, spawned workers and all
        p.wait()


@dataclass
class Cluster:
    """A started cluster: its scheduler's address and its processes by name."""
    address: str
    folder: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)


@contextlib.contextmanager
def dask_cluster(folder: Path, threads: tuple[int, ...] = (1, 1), nanny: bool = True,
                 environ: dict[str, str] | None = None,
                 preload: list[str] = ()) -> Iterator[Cluster]:
    """A scheduler and a worker of ``threads[i]`` Dask threads each (``worker0``...), in
    folders under ``folder``; ``environ``: more environment for every process (Dask settings
    as DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=..., a preload's); ``preload``: worker preloads.
    Without a ``nanny`` a worker is the started process itself (a test can SIGSTOP it).
    Every process ends with the block, also after a failure."""
    info = folder / "scheduler.json"
    procs: dict[str, subprocess.Popen] = {}
    environ = env(**(environ or {}))

    def start(name: str, *args: str) -> None:
        cwd = folder / name
        cwd.mkdir(parents=True)
        with open(cwd / "log.txt", "w") as log:
            procs[name] = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=environ,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)

    try:
        start("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
              "--port", "0", "--no-dashboard", "--scheduler-file", str(info))
        for i, n in enumerate(threads):
            start(f"worker{i}", "distributed.cli.dask_worker", "--scheduler-file", str(info),
                  "--host", "127.0.0.1", "--nthreads", str(n), "--memory-limit", "0",
                  "--no-dashboard", "--name", f"worker{i}",
                  *([] if nanny else ["--no-nanny"]),
                  *[a for p in preload for a in ("--preload", p)])
        from distributed import Client
        end = time.time() + 60
        while not info.exists() and time.time() < end:
            time.sleep(0.2)
        with Client(scheduler_file=str(info), timeout="30s") as client:
            client.wait_for_workers(len(threads), timeout=60)
        yield Cluster(json.loads(info.read_text())["address"], folder, procs)
    finally:
        stop(list(procs.values()))
