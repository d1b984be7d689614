"""Test harness: a real gigadream run in its own process that kills itself (SIGKILL, like
``kill -9``) or one of its Dask workers at a chosen moment, and prints the stages it ran
with the number of worker processes it has at each.

    python run_and_kill.py INPUT OUT STORE CONFIG WHEN

STORE may be a folder or a URL (s3://bucket/prefix, credentials from the environment).
WHEN: never | ingest (after the first rows) | pass:I:N (after N tiles of pass I, 0-based) |
export (after the first rows of the export) | worker:I:N (kill a worker process there instead).
"""
import os
import signal
import sys
from pathlib import Path

import psutil

from gigadream.config import load_config
from gigadream.events import Rows, Stage, Work
from gigadream.pipeline import run
from gigadream.storage.location import store_location


def worker_processes(recursive: bool = False) -> list[psutil.Process]:
    """This run's Dask worker processes, alive ones only: those multiprocessing spawned
    (``recursive``: with those they spawned), not its resource tracker."""
    out = []
    for p in psutil.Process().children(recursive=recursive):
        try:
            if "multiprocessing.spawn" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:        # gone, or a killed worker not yet reaped (a zombie)
            pass
    return out


def main() -> None:
    src, out, store, config, when = sys.argv[1:6]
    kind, *at = when.split(":")
    state = {"pass": -1, "tiles": 0, "done": False}

    def kill_worker() -> None:
        workers = worker_processes()
        assert workers, "no worker process to kill"
        workers[0].kill()
        print("killed worker", workers[0].pid, flush=True)

    def on_event(e) -> None:
        if isinstance(e, Stage):
            print("stage", e.name, "workers", len(worker_processes(recursive=True)), flush=True)
            if e.name == "pass":
                state["pass"] += 1
                state["tiles"] = 0
        hit = False
        if isinstance(e, Rows) and kind == e.stage:
            hit = True
        if isinstance(e, Work) and kind in ("pass", "worker") and state["pass"] == int(at[0]):
            state["tiles"] += 1
            hit = state["tiles"] == int(at[1])
        if hit and not state["done"]:
            state["done"] = True
            if kind == "worker":
                kill_worker()
            else:
                print(f"kill -9 with {len(psutil.Process().children())} child processes",
                      flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    run(Path(src), load_config(config), Path(out), store_path=store_location(store),
        on_event=on_event)
    print("finished", flush=True)


if __name__ == "__main__":
    main()
