"""The scheduler: runs queued jobs as ``gigadream run`` child processes, one per slot, and
files their progress in the queue.

Slots: one per GPU on a GPU box (the child sees only its own: ``CUDA_VISIBLE_DEVICES``), else
``--slots`` on CPUs (default 1). With ``--scheduler`` every job joins that Dask cluster.

One thread does everything (start, watch, stop, reap): children die with the thread that
started them (``child.py``, ``PR_SET_PDEATHSIG``), so that thread lives as long as the
studio. A kill -9 of the studio therefore stops its jobs as SIGTERM does (resumable), and
its next start waits for any that are still stopping, puts them back in the queue ahead of
newer ones, and they resume from their stores: the same pixels as an uninterrupted run.

Which process is still writing a job's folder is known from the folder itself, not from a
pid recorded after the start (a kill -9 between the two would lose it): each child holds an
exclusive ``flock`` on ``JOB/child.lock`` before it does any work, until it exits. The next
start takes that lock (waiting for, then killing, a child that still holds it) before it
requeues the job, and a new child of the job waits for it too.
"""
from __future__ import annotations

import collections
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import json

from ..devices import cuda_devices
from ..errors import GigadreamError
from ..spawn import python_module
from .db import Queue
from .jobs import check_config, is_video, job_yaml

POLL_S = 0.25
# How a child that SIGTERM or SIGINT stopped exits (cli.main: 128 + the signal; -N: before
# its handlers were installed)
STOPPED_BY_SIGNAL = {-signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGINT}
RATE_WINDOW_S = 30.0         # tiles per second and ETA from the last 30 s of work
STOP_WAIT_S = 120.0          # a stopping child's Dask cluster closes in seconds; then SIGKILL
LOCK_NAME = "child.lock"     # JOB/child.lock: held by the job's child while it runs


class Studio:
    """The studio folder: ``studio.db`` (the queue), ``images/`` (uploads, under generated
    names), ``jobs/<group>/<job>/`` (each job's config, result, store, log), ``thumbs/``."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        for d in (self.root, self.images, self.jobs_dir, self.thumbs):
            d.mkdir(parents=True, exist_ok=True)
        self.queue = Queue(self.root / "studio.db")

    images = property(lambda self: self.root / "images")
    jobs_dir = property(lambda self: self.root / "jobs")
    thumbs = property(lambda self: self.root / "thumbs")
    lock_path = property(lambda self: self.root / "scheduler.lock")

    def add(self, name: str, sweep: str | None, jobs: list[dict]) -> tuple[int, list[int]]:
        """Queue one group of checked jobs (``jobs.expand``): the group's id, its jobs' ids."""
        gid = self.queue.add_group(name, sweep, jobs, self.jobs_dir)
        return gid, sorted(j["id"] for j in self.queue.jobs("group_id=?", (gid,)))


def job_files(job: dict) -> dict[str, Path]:
    """A job's files in its folder; a video's result is ``result.mp4``."""
    d = Path(job["dir"])
    result = d / ("result.mp4" if is_video(job["input"]) else "result.jpg")
    return {"dir": d, "config": d / "job.yaml", "result": result,
            "yaml": d / f"{result.name}.yaml", "store": d / "store", "events": d / "events.jsonl",
            "log": d / "log.txt", "preview": d / "preview", "profile": d / "profile"}


def command(job: dict, scheduler: str | None = None) -> list[str]:
    """The child's command line: ``gigadream run`` (or ``preview``, ``profile``) as a user
    would type it, no shell; user text reaches it only as separate arguments."""
    f = job_files(job)
    if job["kind"] == "profile":      # the run measured, without the naive baseline
        args = ["profile", job["input"], "--config", str(f["config"]), "-o", str(f["profile"]),
                "--no-baseline", "--overwrite"]
    elif job["kind"] == "preview":
        args = ["preview", job["input"], "--config", str(f["config"]), "-o", str(f["preview"]),
                "--overwrite", "--quiet"]
    else:
        # a still's store is kept (the viewer and the TIFF are made from it); a video's
        # (result.mp4.gdseq: every finished frame) goes once the video is written
        store = [] if is_video(job["input"]) else ["--store", str(f["store"])]
        args = ["run", job["input"], "--config", str(f["config"]), "-o", str(f["result"]),
                *store, "--events", str(f["events"]), "--overwrite", "--quiet"]
        if scheduler:
            args += ["--scheduler", scheduler]
    return child_command(f["dir"] / LOCK_NAME, *args)


def child_command(lock: Path | None, *args: str) -> list[str]:
    """``python -m gigadream.studio.child``: ``gigadream ARGS`` in a process that dies with
    this one, reads only the studio's image formats, and holds ``lock`` while it runs."""
    return python_module("gigadream.studio.child", os.getpid(), lock or "-", *args)


def gpu_names() -> list[str]:
    """The GPUs jobs may use, as a child's CUDA_VISIBLE_DEVICES names them: the driver's,
    narrowed by the studio's own CUDA_VISIBLE_DEVICES (``devices.cuda_devices`` counts them
    without importing torch into the studio's process)."""
    n = cuda_devices()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible is not None else []
    return (names or [str(i) for i in range(n)])[:n]


def make_slots(n: int | None, gpus: int | None = None) -> list[tuple[str, dict]]:
    """(name, environment changes) of each slot: gpu0.. with CUDA_VISIBLE_DEVICES, or cpu0.."""
    names = gpu_names() if gpus is None else [str(i) for i in range(gpus)]
    if names:
        # more slots than GPUs share them round the clock face: slot i on GPU i mod gpus
        return [(f"gpu{i}", {"CUDA_VISIBLE_DEVICES": names[i % len(names)]})
                for i in range(n or len(names))]
    return [(f"cpu{i}", {"CUDA_VISIBLE_DEVICES": ""}) for i in range(n or 1)]


@dataclass
class _Watch:
    """What the scheduler follows of a running job: its events file, read as it grows."""
    job: dict
    proc: subprocess.Popen
    slot: str
    offset: int = 0
    total: int = 0
    done: int = 0
    stage: str = "starting"
    work: collections.deque = field(default_factory=collections.deque)   # (t, units, tiles)
    signalled: bool = False
    last_write: float = 0.0


class SchedulerBusy(GigadreamError):
    """Another ``gigadream serve`` or ``batch`` runs this studio's queue."""


class Runner:
    """The scheduler thread of a studio (``start``/``shutdown``), or run in the foreground
    until the queue is empty (``run_until_empty``)."""

    def __init__(self, studio: Studio, slots: int | None = None, scheduler: str | None = None,
                 gpus: int | None = None):
        self.studio, self.queue = studio, studio.queue
        self.slots = make_slots(slots, gpus)
        self.scheduler = scheduler
        self.running: dict[str, _Watch] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file = None

    # --- the lock: one scheduler per studio ---------------------------------------------

    def acquire(self) -> None:
        f = open(self.studio.lock_path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise SchedulerBusy(f"studio {self.studio.root} is already run by another "
                                f"'gigadream serve' or 'batch' (pid {pid}); stop it, or use "
                                "another --studio") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # --- start and stop -----------------------------------------------------------------

    def recover(self) -> list[int]:
        """Jobs a previous studio left running (it was killed): each child still stopping is
        waited for, then the job goes back to the queue to resume from its store (or to
        stopped / cancelled, where that was asked). Returns their ids."""
        ids = []
        for job in self.queue.jobs("status='running'"):
            _wait_gone(job)
            if child_exit(job) == 0:    # it finished after the studio died: done, once
                self.queue.end_run(job["id"], "done", progress=1.0, stage="done", eta_s=0.0)
                continue
            outcome = {"stop": "stopped", "cancel": "cancelled"}.get(job["stop"], "queued")
            self.queue.end_run(job["id"], outcome, stage="" if outcome == "queued" else job["stage"])
            ids.append(job["id"])
        return ids

    def start(self) -> None:
        """Recover, then run the scheduler in a thread of this process."""
        self.acquire()
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="gigadream-scheduler",
                                        daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the children (SIGTERM: resumable) and put their jobs back in the queue."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self.release()

    def run_until_empty(self, on_tick=lambda: None) -> None:
        """``gigadream batch``: in this thread, until no job is queued or running."""
        self.acquire()
        self.recover()
        try:
            while not self._stopping.is_set():
                self._tick()
                on_tick()
                if not self.running and not self.queue.jobs("status='queued'"):
                    break
                time.sleep(POLL_S)
        finally:
            self._stop_all()
            self.release()

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._tick()
                except Exception as e:      # a full disk, a locked db: the studio stays up
                    print(f"gigadream studio: scheduler: {e}", file=sys.stderr)
                self._stopping.wait(POLL_S)
        finally:
            self._stop_all()

    def _stop_all(self) -> None:
        for w in self.running.values():
            _signal(w.proc, signal.SIGTERM)
        for w in list(self.running.values()):
            try:
                w.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self._finish(w, shutting_down=True)
        self.running.clear()

    # --- one round ----------------------------------------------------------------------

    def _tick(self) -> None:
        for slot, w in list(self.running.items()):
            self._follow(w)
            if w.proc.poll() is not None:
                self._follow(w)
                self._finish(w)
                del self.running[slot]
            elif not w.signalled:
                job = self.queue.job(w.job["id"])
                if job and job["stop"]:
                    _signal(w.proc, signal.SIGTERM)
                    w.signalled = True
        for slot, env in self.slots:
            if slot in self.running:
                continue
            job = self.queue.claim(slot)
            if job is None:
                break
            try:
                self.running[slot] = self._launch(job, slot, env)
            except (OSError, GigadreamError) as e:
                self.queue.end_run(job["id"], "failed", error=str(e).splitlines()[0])

    def _launch(self, job: dict, slot: str, env: dict) -> _Watch:
        f = job_files(job)
        f["dir"].mkdir(parents=True, exist_ok=True)
        if not f["config"].exists():       # a resumed job keeps the config it started with
            cfg = check_config(job["preset"], job["overrides"]).resolved(Path.cwd())
            tmp = f["config"].with_suffix(".tmp")
            tmp.write_text(job_yaml(cfg))
            os.replace(tmp, f["config"])
        f["events"].unlink(missing_ok=True)
        with open(f["log"], "a") as log:
            log.write(f"--- attempt {job['attempts']} on {slot} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: gigadream {' '.join(command(job, self.scheduler)[6:])}\n")
            proc = subprocess.Popen(command(job, self.scheduler), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, cwd=f["dir"])
        self.queue.update(job["id"], pid=proc.pid)
        return _Watch(job, proc, slot)

    def _follow(self, w: _Watch) -> None:
        """New lines of the job's events file → its progress, stage, tiles/s and ETA."""
        path = job_files(w.job)["events"]
        try:
            with open(path, "rb") as f:
                f.seek(w.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1        # whole lines only: the child may be mid-line
        w.offset += end
        for line in data[:end].splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            kind = e.get("event")
            if kind == "Total":
                w.total = e["units"]
            elif kind == "Stage":
                w.stage = f"{e['name']} {e.get('detail', '')}".strip()
                if e["name"] == "resume":
                    w.work.clear()
            elif kind == "Work":
                w.done += e["units"]
                if w.stage.startswith("resume"):     # the finished passes, counted at once
                    continue
                w.work.append((e["t"], e["units"]))
            elif kind == "Rows":
                w.stage = f"{e['stage']} {100 * e['done'] // max(e['total'], 1)} %"
        now = time.time()
        while w.work and w.work[0][0] < now - RATE_WINDOW_S:
            w.work.popleft()
        if now - w.last_write < 0.5 and end == 0:
            return
        w.last_write = now
        tiles_s = eta = None
        if len(w.work) >= 2:
            span = max(w.work[-1][0] - w.work[0][0], 1e-3)
            tiles_s = (len(w.work) - 1) / span
            units_s = sum(u for _, u in list(w.work)[1:]) / span
            eta = (w.total - w.done) / units_s if units_s > 0 else None
        self.queue.update(w.job["id"], progress=min(w.done / w.total, 1.0) if w.total else 0.0,
                          stage=w.stage, tiles_s=tiles_s, eta_s=eta)

    def _finish(self, w: _Watch, shutting_down: bool = False) -> None:
        job = self.queue.job(w.job["id"]) or w.job
        rc = w.proc.returncode
        f = job_files(job)
        if rc == 0:
            self.queue.end_run(job["id"], "done", progress=1.0, stage="done", eta_s=0.0)
        elif job["stop"] == "stop":
            self.queue.end_run(job["id"], "stopped", stage="stopped (resumable)")
        elif job["stop"] == "cancel":
            self.queue.end_run(job["id"], "cancelled", stage="cancelled")
        elif shutting_down or rc in STOPPED_BY_SIGNAL:
            # stopped by the studio's shutdown (or Ctrl-C in its terminal, which the children
            # get too): resumed at its next start
            self.queue.end_run(job["id"], "queued", stage="")
        else:
            self.queue.end_run(job["id"], "failed", error=_error_line(f["log"], rc),
                               stage="failed")


def _error_line(log: Path, rc: int) -> str:
    """The child's one-line error (``gigadream: error: ...``), else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("gigadream: ")]
    if errors:
        return errors[-1].removeprefix("gigadream: ").removeprefix("error: ")
    return (lines[-1] if lines and not lines[-1].startswith("---") else f"exit code {rc}")[:500]


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def child_exit(job: dict) -> int | None:
    """The exit code the job's last child wrote in its lock (``child.py``: ``PID exit RC``),
    or None: it was killed, or is still running."""
    try:
        words = (Path(job["dir"]) / LOCK_NAME).read_text().split()
    except OSError:
        return None
    return int(words[2]) if len(words) == 3 and words[1] == "exit" else None


def _wait_gone(job: dict) -> None:
    """Wait for any child a killed studio left in the job's folder to finish stopping
    (PR_SET_PDEATHSIG sent it SIGTERM when the studio died; a second one could cut its
    clean-up short): the resumed run must not share its store with it. Known by the lock it
    holds (``JOB/child.lock``), whether or not its pid was recorded; one that takes longer
    than STOP_WAIT_S is killed."""
    import psutil
    lock = Path(job["dir"]) / LOCK_NAME
    if not lock.exists():
        return
    with open(lock, "r") as f:
        end = time.monotonic() + STOP_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return          # nobody holds it (released at once by the with)
            except BlockingIOError:
                pass
            if time.monotonic() > end:
                break
            time.sleep(POLL_S)
        f.seek(0)
        pid = (f.read().split() or [""])[0]
        try:        # the holder wrote its pid once it had the lock
            p = psutil.Process(int(pid))
            if str(lock) in p.cmdline():
                p.kill()
        except (ValueError, psutil.Error):
            pass
        fcntl.flock(f, fcntl.LOCK_EX)       # until the kernel has released it
