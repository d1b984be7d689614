"""The overnight batch: ``gigadream batch --scheduler ADDR jobs.yaml`` with a dozen jobs on one
long-lived cluster (a real ``dask scheduler`` and two ``dask worker``s). The batch process is
killed with SIGKILL mid-job and the same command started again: every job done once (its
result written once, one finished attempt), each equal to its own ``gigadream run``.

The batch process alone is killed (``kill -9 PID``, as the kernel's out-of-memory killer or an
operator does), not its process group: that is the case the studio must survive by itself
(its children get SIGTERM through ``PR_SET_PDEATHSIG`` and stop resumably, then the next
start waits for them and requeues). A whole group killed at once is a reboot's case, which the
stores' own kill -9 resume covers (test_resume)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import read
from test_cluster_failures import Cluster, _env, gd, wait_for

DREAM = {"mode": "dream", "dream.layers": ["relu2_2"], "dream.octaves": 1, "dream.passes": 2,
         "dream.iterations": 3, "dream.calibration_tiles": 2, "tiling.tile": 48,
         "engine.threads": 1}
# 12 jobs: identity at three tile sizes (one sweep: a group), dream on four inputs, dream with
# other settings
JOBS = [
    {"input": "a.png", "set": {"mode": "identity"}, "sweep": {"tiling.tile": [32, 48, 64]}},
    *({"input": f"{n}.png", "set": DREAM} for n in "abcd"),
    {"input": "b.png", "set": {**DREAM, "seed": 3}},
    {"input": "c.png", "set": {**DREAM, "tiling.tile": 64}},
    {"input": "d.png", "set": {**DREAM, "dream.passes": 3}},
    {"input": "b.png", "set": {"mode": "identity", "tiling.tile": 40}},
    {"input": "c.png", "set": {"mode": "identity", "tiling.tile": 56}},
]
INTERRUPTED = 5     # the job the batch is killed in: a dream job (the 5th queued)


def _set_args(settings: dict) -> list[str]:
    return [a for k, v in settings.items()
            for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]


def _expanded() -> list[tuple[str, dict]]:
    """(input, settings) of each job in the order queued."""
    out = []
    for spec in JOBS:
        (key, values), = spec.get("sweep", {None: [None]}).items()
        for v in values:
            out.append((spec["input"], spec["set"] | ({key: v} if key else {})))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.scheduler()
        c.worker("w0")
        c.worker("w1")
        c.wait(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    import pyvips
    d = tmp_path_factory.mktemp("batch")
    cat = pyvips.Image.new_from_file(str(photos["chelsea_jpg"]))
    coffee = pyvips.Image.new_from_file(str(photos["coffee_jpg"]))
    for name, im, (x, y) in (("a", cat, (60, 40)), ("b", cat, (150, 90)),
                             ("c", coffee, (100, 50)), ("d", coffee, (250, 150))):
        im.crop(x, y, 128, 96).write_to_file(str(d / f"{name}.png"))
    from gigadream.models import default_weights
    weights = str(default_weights("vgg16"))
    jobs = [j | {"set": j["set"] | ({"model.weights": weights} if j["set"]["mode"] == "dream"
                                   else {})} for j in JOBS]
    import yaml
    (d / "jobs.yaml").write_text(yaml.safe_dump(jobs))
    return d


def _db(folder: Path, sql: str, args=()) -> list[dict]:
    db = folder / "studio" / "studio.db"
    if not db.exists():         # the batch has not made it yet
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute(sql, args)]
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):       # made, its tables not yet
                return []
            raise


def _batch(folder: Path, cluster: Cluster) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gigadream", "batch", "jobs.yaml",
                             "--studio", "studio", "--scheduler", cluster.address],
                            cwd=folder, env=_env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _in_a_pass(job: dict) -> bool:
    try:
        events = [json.loads(ln) for ln in
                  (Path(job["dir"]) / "events.jsonl").read_text().splitlines()[:-1]]
    except FileNotFoundError:
        return False
    return any(e["event"] == "Stage" and e["name"] == "pass" for e in events) and \
        sum(e["event"] == "Work" for e in events) >= 2


def test_a_killed_batch_resumes_every_job_once_each_equal_to_its_run(folder, cluster):
    first = _batch(folder, cluster)
    running = lambda: _db(folder, "SELECT * FROM jobs WHERE id=?", (INTERRUPTED,))
    wait_for(lambda: first.poll() is not None or (
        (job := running()) and job[0]["status"] == "running" and _in_a_pass(job[0])),
        timeout=300, what=f"job {INTERRUPTED} in a pass")
    assert first.poll() is None, first.stderr.read()[-3000:]
    os.kill(first.pid, signal.SIGKILL)          # the batch process alone
    first.wait()
    done_before = {j["id"]: os.stat(Path(j["dir"]) / "result.jpg").st_mtime_ns
                   for j in _db(folder, "SELECT * FROM jobs WHERE status='done'")}
    assert len(done_before) == INTERRUPTED - 1, done_before

    again = _batch(folder, cluster)
    err = again.communicate(timeout=600)[1]
    assert again.returncode == 0, err[-3000:]
    assert "resuming the unfinished batch of jobs.yaml" in err, err

    jobs = _db(folder, "SELECT * FROM jobs ORDER BY id")
    expanded = _expanded()
    assert [j["status"] for j in jobs] == ["done"] * len(expanded)     # none queued twice
    runs = _db(folder, "SELECT job_id, outcome FROM runs ORDER BY rowid")
    # one finished attempt each; the interrupted job's first attempt went back to the queue
    assert sorted(r["job_id"] for r in runs if r["outcome"] == "done") == \
        [j["id"] for j in jobs]
    assert [r for r in runs if r["outcome"] != "done"] == \
        [{"job_id": INTERRUPTED, "outcome": "queued"}]
    # the results finished before the kill were not written again
    assert {i: os.stat(Path(jobs[i - 1]["dir"]) / "result.jpg").st_mtime_ns
            for i in done_before} == done_before

    # each equal to its own 'gigadream run' on the same cluster
    def reference(i: int) -> subprocess.CompletedProcess:
        src, settings = expanded[i]
        return gd(folder, "run", src, "-o", f"ref{i}.jpg", "-q", "--scheduler",
                  cluster.address, *_set_args(settings | (
                      {"model.weights": _weights()} if settings["mode"] == "dream" else {})))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        refs = list(pool.map(reference, range(len(expanded))))
    for i, (job, ref) in enumerate(zip(jobs, refs)):
        assert ref.returncode == 0, ref.stderr[-3000:]
        result = read(Path(job["dir"]) / "result.jpg")
        np.testing.assert_array_equal(result, read(folder / f"ref{i}.jpg"), err_msg=f"job {i + 1}")
    # the dream jobs changed their images
    assert np.abs(read(Path(jobs[INTERRUPTED - 1]["dir"]) / "result.jpg").astype(int)
                  - read(folder / "b.png")).mean() > 1


def _weights() -> str:
    from gigadream.models import default_weights
    return str(default_weights("vgg16"))


@pytest.mark.parametrize("lock,status", [("123 exit 0", "done"), ("123 exit 143", "queued"),
                                          ("123", "queued")])
def test_a_job_whose_child_finished_after_the_studio_died_is_done_not_rerun(tmp_path, lock,
                                                                            status):
    """The child wrote its exit code in its lock before it exited (``child.py``); a studio
    killed before it saw that exit files the job by it at its next start."""
    from gigadream.studio.runner import LOCK_NAME, Runner, Studio
    studio = Studio(tmp_path / "studio")
    _, [jid] = studio.add("a", None, [{"input": str(tmp_path / "a.png"), "overrides": []}])
    job = studio.queue.claim("cpu0")            # running, as the killed studio left it
    Path(job["dir"]).mkdir(parents=True)
    (Path(job["dir"]) / LOCK_NAME).write_text(lock)
    Runner(studio).recover()
    assert studio.queue.job(jid)["status"] == status
