"""A studio job's process: ``gigadream`` (``cli.main``, the CLI's own code path) that stops
when the studio that started it dies, holds its job's lock while it runs, and reads only the
studio's image formats.

    python -m gigadream.studio.child SERVER_PID LOCK|- run INPUT --config JOB.yaml ...

Linux's ``PR_SET_PDEATHSIG`` sends it SIGTERM when its parent goes, kill -9 included: the
run stops as a preemption notice stops it (every finished pass stays in its store), and the
studio's next start resumes it. A studio that went before this process could ask (the
parent is no longer ``SERVER_PID``) is not waited for: the process exits at once.

Then it takes ``LOCK`` (``JOB/child.lock``, an exclusive ``flock``; waiting while an earlier
attempt's child still stops) and writes its pid in it, before any work: the lock, which the
kernel releases when the process ends, is how the studio knows that nobody writes the job's
store. SIGTERM before the CLI's handlers are installed ends it at once, having written
nothing. Its exit code follows its pid in the lock (``PID exit RC``) before it exits: a
studio killed in between reads it there (``runner.child_exit``) and files a finished job as
done, instead of running it again.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
JOB_NICENESS = 5
_held: list[int] = []      # the lock's descriptor, open (and so held) until the process ends


def die_with(parent: int) -> None:
    """SIGTERM to this process when its parent thread ends (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:      # it died before prctl: nobody will resume our output
        sys.exit(128 + signal.SIGTERM)


def claim(lock: str) -> None:
    """Hold ``lock`` for the rest of this process's life (waiting for its holder), its pid
    written in it. The descriptor is not inherited by programs this one starts."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held.append(fd)


def main() -> int:
    die_with(int(sys.argv[1]))
    # below the server: its pages stay quick (p95 < 100 ms) while jobs fill every core;
    # the jobs lose nothing while the server is idle
    os.nice(JOB_NICENESS)
    if sys.argv[2] != "-":
        claim(sys.argv[2])
    from .security import block_loaders
    block_loaders()
    from ..cli import main as cli_main
    rc = cli_main(sys.argv[3:])
    if _held:       # "PID exit RC": a studio killed before it saw this exit reads it there
        os.write(_held[0], f" exit {rc}".encode())
    return rc


if __name__ == "__main__":
    sys.exit(main())
