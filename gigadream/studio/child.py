"""A studio job's process: ``gigadream`` (``cli.main``, the CLI's own code path) that stops
when the studio that started it dies.

    python -m gigadream.studio.child SERVER_PID run INPUT --config JOB.yaml ...

Linux's ``PR_SET_PDEATHSIG`` sends it SIGTERM when its parent goes, kill -9 included: the
run stops as a preemption notice stops it (every finished pass stays in its store), and the
studio's next start resumes it. A studio that went before this process could ask (the
parent is no longer ``SERVER_PID``) is not waited for: the process exits at once.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """SIGTERM to this process when its parent thread ends (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:      # it died before prctl: nobody will resume our output
        sys.exit(128 + signal.SIGTERM)


def main() -> int:
    die_with(int(sys.argv[1]))
    from ..cli import main as cli_main
    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
