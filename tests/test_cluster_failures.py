"""Every failure of a ``--scheduler`` cluster is one line that says what to do: a real ``dask
scheduler`` and ``dask worker`` processes on loopback, broken as a night breaks them (the
scheduler unreachable or killed mid-run, every worker killed, a worker whose machine lacks
the weights file, a worker of another gigadream version), and ``gigadream run`` joining them."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gigadream
from conftest import read

HERE = Path(__file__).resolve().parent
ROOT = Path(gigadream.__file__).resolve().parent.parent
DREAM = ["-q", "--set", "mode=dream", "--set", "dream.layers=[relu2_2]", "--set", "dream.octaves=1",
         "--set", "dream.passes=3", "--set", "dream.calibration_tiles=2",
         "--set", "tiling.tile=64", "--set", "engine.threads=1"]
IDENTITY = ["-q", "--set", "mode=identity", "--set", "tiling.tile=64"]


def _env() -> dict:
    """The test's environment with this source tree first on the path (workers import it)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def gd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gigadream", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler at ``port`` (a fixed one: started again, it has the same address) and
    workers, each process group in a folder of its own under ``root``."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, argv: list[str], env: dict | None = None) -> None:
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        with open(cwd / "log.txt", "a") as log:
            self.procs[name] = subprocess.Popen(argv, cwd=cwd, env={**_env(), **(env or {})},
                                                stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def scheduler(self) -> None:
        self._start("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler",
                                  "--host", "127.0.0.1", "--port", str(self.port),
                                  "--no-dashboard"])

    def worker(self, name: str, *extra: str, prefix: tuple[str, ...] = ()) -> None:
        self._start(name, [*prefix, sys.executable, "-m", "distributed.cli.dask_worker",
                           self.address, "--host", "127.0.0.1", "--nthreads", "1",
                           "--memory-limit", "0", "--no-dashboard", "--name", name, *extra])

    def start_two(self) -> None:
        """The scheduler and two plain workers, w0 and w1, registered."""
        self.scheduler()
        self.worker("w0")
        self.worker("w1")
        self.wait(2)

    def wait(self, workers: int) -> None:
        from distributed import Client
        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)

    def kill(self, *names: str) -> None:
        """SIGKILL to each named process group (a worker's nanny and its worker), as a
        machine that goes away."""
        for name in names:
            p = self.procs.pop(name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop(self) -> None:
        """SIGTERM to each process group, SIGKILL to what is left after a few seconds."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        end = time.time() + 10
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, end - time.time()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)      # the group, spawned workers and all
            p.wait()
        self.procs.clear()


@pytest.fixture
def make_cluster(tmp_path):
    clusters: list[Cluster] = []

    def make(name: str = "cluster", port: int | None = None) -> Cluster:
        clusters.append(Cluster(tmp_path / name, port))
        return clusters[-1]
    yield make
    for c in clusters:
        c.stop()


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory, photos):
    """The client's folder: a 256×192 input and the weights beside it."""
    from gigadream.models import default_weights
    d = tmp_path_factory.mktemp("client")
    (d / "weights").mkdir()
    import pyvips
    pyvips.Image.new_from_file(str(photos["chelsea_jpg"])).crop(60, 40, 256, 192) \
        .write_to_file(str(d / "cat.png"))
    shutil.copy(default_weights("vgg16"), d / "weights" / "vgg16.h5")
    return d


def one_line(p: subprocess.CompletedProcess) -> str:
    """The run's stderr, which must be one ``gigadream: error:`` line."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("gigadream: error: "), \
        (p.returncode, p.stderr[-6000:])
    return lines[0]


def wait_for(cond, timeout: float = 120, what: str = "") -> None:
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def in_a_pass(events: Path, n: int = 2) -> bool:
    """The run's events show ``n`` tiles done of its first pass."""
    try:
        lines = events.read_text().splitlines()
    except FileNotFoundError:
        return False
    seen = [json.loads(ln) for ln in lines[:-1]]      # the last may be half-written
    first = next((i for i, e in enumerate(seen) if e["event"] == "Stage"
                  and e["name"] == "pass"), None)
    return first is not None and sum(e["event"] == "Work" for e in seen[first:]) >= n


def test_an_unreachable_scheduler_is_one_line(client_dir):
    p = gd(client_dir, "run", "cat.png", "-o", "unreachable.jpg", "--scheduler",
           "tcp://127.0.0.1:1", *IDENTITY)
    assert "no Dask scheduler answers at tcp://127.0.0.1:1" in one_line(p)
    assert not (client_dir / "unreachable.jpg").exists()


def test_workers_of_another_version_are_refused_before_any_work(make_cluster, client_dir):
    c = make_cluster()
    c.scheduler()
    c.worker("same")
    # gigadream.__version__ changed in that worker's process alone; the check reads it there
    c.worker("other", "--preload", str(HERE / "other_version.py"))
    c.wait(2)
    p = gd(client_dir, "run", "cat.png", "-o", "versions.jpg", "--store", "versions",
           "--scheduler", c.address, *IDENTITY)
    line = one_line(p)
    from gigadream import __version__
    assert "worker other (tcp://127.0.0.1:" in line, line
    assert f"runs gigadream 0.0.0+other, this client gigadream {__version__}" in line, line
    assert "torch" not in line        # the same torch: only what differs is named
    # before any work: the store holds the input, no pass
    assert "passes" not in json.loads((client_dir / "versions" / "run.json").read_text()) \
        or not json.loads((client_dir / "versions" / "run.json").read_text())["passes"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_worker_without_the_weights_is_named(make_cluster, client_dir, tmp_path):
    c = make_cluster()
    c.scheduler()
    c.worker("good")
    # "another machine" that lacks the file: a mount namespace where the weights' folder is
    # an empty one (unprivileged: a user namespace of its own)
    empty = tmp_path / "empty"
    empty.mkdir()
    weights = client_dir / "weights"
    c.worker("bare", prefix=("unshare", "-rm", "sh", "-c",
                             f'mount --bind "{empty}" "{weights}" && exec "$0" "$@"'))
    c.wait(2)
    p = gd(client_dir, "run", "cat.png", "-o", "model.jpg", "--scheduler", c.address,
           *DREAM, "--set", "model.weights=weights/vgg16.h5")
    line = one_line(p)
    assert "worker bare (tcp://127.0.0.1:" in line, line
    assert f"cannot load the model: vgg16 weights file {weights / 'vgg16.h5'} not found" in line


def test_a_scheduler_killed_mid_run_is_one_line_and_the_same_command_resumes(
        make_cluster, client_dir):
    c = make_cluster()
    c.start_two()
    argv = [sys.executable, "-m", "gigadream", "run", "cat.png", "-o", "resumed.tif",
            "--store", "resumed", "--scheduler", c.address, "--events", "resumed.jsonl",
            *DREAM, "--set", "model.weights=weights/vgg16.h5"]
    run = subprocess.Popen(argv, cwd=client_dir, env=_env(), stderr=subprocess.PIPE,
                           text=True)
    wait_for(lambda: in_a_pass(client_dir / "resumed.jsonl") or run.poll() is not None,
             what="the first pass")
    c.kill("scheduler")
    err = run.communicate(timeout=120)[1]
    p = subprocess.CompletedProcess(argv, run.returncode, "", err)
    assert f"the Dask scheduler at {c.address} went away mid-run" in one_line(p)
    c.kill("w0", "w1")      # (they end by themselves once their scheduler is gone)
    c.start_two()
    again = subprocess.run(argv, cwd=client_dir, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    local = gd(client_dir, "run", "cat.png", "-o", "local.tif", "-q", *DREAM,
               "--set", "model.weights=weights/vgg16.h5")
    assert local.returncode == 0, local.stderr[-3000:]
    np.testing.assert_array_equal(read(client_dir / "resumed.tif"),
                                  read(client_dir / "local.tif"))


def test_every_worker_gone_mid_run_is_one_line_after_a_bounded_wait(make_cluster, client_dir):
    c = make_cluster()
    c.start_two()
    argv = [sys.executable, "-m", "gigadream", "run", "cat.png", "-o", "gone.jpg",
            "--store", "gone", "--scheduler", c.address, "--events", "gone.jsonl",
            *DREAM, "--set", "model.weights=weights/vgg16.h5"]
    run = subprocess.Popen(argv, cwd=client_dir, stderr=subprocess.PIPE, text=True,
                           env={**_env(), "DASK_GIGADREAM__NO_WORKERS_TIMEOUT": "3s"})
    wait_for(lambda: in_a_pass(client_dir / "gone.jsonl") or run.poll() is not None,
             what="the first pass")
    c.kill("w0", "w1")
    t = time.time()
    try:
        err = run.communicate(timeout=120)[1]
    finally:
        run.kill()      # a run that hangs (the bug this guards) ends with the test
    waited = time.time() - t
    p = subprocess.CompletedProcess(argv, run.returncode, "", err)
    line = one_line(p)
    assert f"every worker of the Dask scheduler at {c.address} is gone and none came back " \
           "in 3 s" in line, line
    assert waited < 3 + 5 + 5, waited      # the timeout, a check's period (WATCH_S), slack
