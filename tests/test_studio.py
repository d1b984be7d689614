"""The studio (gigadream serve): a real server process on a free loopback port, a real SQLite
queue, real `gigadream run` children. Every action of the API; two slots running two jobs at
once; a sweep's three results and contact sheet; kill -9 of the server mid-job, then a restart
that finishes the job with the pixels of an uninterrupted run; bad input refused with the
CLI's messages, nothing written, nothing lost."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from conftest import read, sha256
from gigadream.studio.runner import POLL_S
from test_resume import assert_no_orphans, marked_env
from test_viewer import browser, console_errors, wait_loaded  # noqa: F401 (a fixture)

# The smallest real runs: identity jobs (ingest, a pass of copies, export) for the queue's
# actions; a dream small but complete (2 octaves × 3 passes of 64 px tiles) for kill -9.
IDENTITY = ["mode=identity", "dream.octaves=1", "dream.passes=1", "tiling.tile=64",
            "engine.workers=1", "engine.threads=1"]
DREAM = ["mode=dream", "dream.layers=[relu2_2]", "dream.octaves=2", "dream.passes=3",
         "dream.calibration_tiles=4", "keep_far=0", "tiling.tile=64",
         "engine.workers=1", "engine.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``gigadream serve`` in a process of its own, its output in a file; ``url`` is the
    address it printed (with its token, if any)."""

    def __init__(self, studio: Path, images: Path, *args, env=None, cwd=None, command=None):
        self.studio, self.images, self.args, self.cwd = studio, images, args, cwd
        self.command = command or [sys.executable, "-m", "gigadream"]
        self.env, self.mark = env or marked_env()
        self.port = free_port()
        self.start()

    def start(self) -> None:
        self.out = open(self.studio.parent / f"serve-{self.studio.name}-{time.time_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--studio", str(self.studio),
             "--port", str(self.port), "--images", str(self.images), *map(str, self.args)],
            stdout=self.out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        end = time.time() + 60
        while time.time() < end:
            text = Path(self.out.name).read_text()
            found = re.search(r"http://\S+", text)
            if found:
                self.url = found.group(0)
                self.base = self.url.split("?")[0].rstrip("/")
                token = self.url.partition("?token=")[2]
                self.client = httpx.Client(base_url=self.base, timeout=60, headers=(
                    {"Authorization": f"Bearer {token}"} if token else {}))
                try:
                    if self.client.get("/api/jobs").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            assert self.proc.poll() is None, f"serve exited: {text}"
            time.sleep(0.2)
        raise AssertionError(f"serve did not start: {Path(self.out.name).read_text()}")

    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        return self.client.post(path, json=body, **kw) if body is not None or not kw else \
            self.client.post(path, **kw)

    def ok(self, path: str, body=None) -> dict:
        r = self.post(path, body if body is not None else {})
        assert r.status_code == 200, r.text
        return r.json()

    def job(self, job_id: int) -> dict:
        return self.get(f"/api/jobs/{job_id}").json()

    def wait(self, job_ids, status=("done",), timeout: float = 300, until=None) -> list[dict]:
        """Until every job is in ``status`` (or ``until(job)`` holds); fails on a job that
        ends otherwise."""
        end = time.time() + timeout
        while True:
            jobs = [self.job(i) for i in job_ids]
            if all((until(j) if until else j["status"] in status) for j in jobs):
                return jobs
            final = [j for j in jobs if j["status"] in ("failed", "cancelled") and
                     j["status"] not in status]
            assert not final, f"{final}\n{self.log()}"
            assert time.time() < end, f"timed out: {jobs}\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        return Path(self.out.name).read_text()[-3000:]

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The --images folder: a 96×96 photo, a 320×224 panorama, and one in a subfolder."""
    from gigadream.sample import make_panorama
    d = tmp_path_factory.mktemp("images")
    make_panorama(d / "small.jpg", 96, 96, quality=95)
    make_panorama(d / "pano.jpg", 320, 224, quality=95)
    (d / "sub").mkdir()
    make_panorama(d / "sub" / "inner.jpg", 80, 64, quality=90)
    return d


@pytest.fixture
def server(tmp_path, images):
    servers = []

    def start(*args, studio: Path | None = None, cwd=None, command=None) -> Server:
        s = Server(studio or tmp_path / "studio", images, *args, cwd=cwd, command=command)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()
        assert_no_orphans(s.mark)


def gd(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def overlap(a: dict, b: dict) -> float:
    """Seconds during which the attempts ``a`` and ``b`` (rows of ``runs``) both ran."""
    return min(a["ended"], b["ended"]) - max(a["started"], b["started"])


# --- the queue's actions ------------------------------------------------------------------------

def test_upload_pick_queue_sweep_two_slots_priority_cancel_rerun(server, images, tmp_path):
    s = server("--slots", 2)
    studio = tmp_path / "studio"
    # upload: streamed to a generated name, its size and thumbnail known
    data = (images / "small.jpg").read_bytes()
    r = s.post("/api/images", files={"file": ("my photo.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    up = r.json()
    assert (up["name"], up["width"], up["height"], up["bytes"]) == ("my photo.jpg", 96, 96, len(data))
    stored = Path(up["path"])
    assert stored.parent == studio / "images" and stored.name != "my photo.jpg"
    assert stored.read_bytes() == data
    thumb = s.get(f"/thumbs/image/{up['id']}.jpg")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    view = s.get(f"/images/{up['id']}/view/index.html")      # its deep zoom, made on demand
    assert view.status_code == 200 and "input_files/" in view.text
    assert s.get(f"/images/{up['id']}/view/input_files/0/0_0.jpeg").status_code == 200
    # pick: a file under --images, by a path relative to it
    picked = s.ok("/api/images/pick", {"path": "sub/inner.jpg"})
    assert (picked["path"], picked["width"]) == (str((images / "sub/inner.jpg").resolve()), 80)
    page = s.get("/images").text
    assert "my photo.jpg" in page and "inner.jpg" in page and "pano.jpg" in page

    # a sweep of 3 values: a group of 3 jobs, two of which run at once on the two slots
    sweep = s.ok("/api/jobs", {"image": up["id"], "overrides": IDENTITY,
                               "sweep": {"export.quality": [40, 70, 95]}})
    a, b, c = sweep["jobs"]
    # one more, queued behind the sweep's third, then moved ahead of it; stopped while it
    # waits, resumed; stopped while it runs, resumed
    d = s.ok("/api/jobs", {"input": "sub/inner.jpg", "overrides": IDENTITY})["jobs"][0]
    assert s.ok(f"/api/jobs/{d}/stop")["status"] == "stopped"
    assert s.ok(f"/api/jobs/{d}/priority", {"priority": 5})["priority"] == 5
    assert s.ok(f"/api/jobs/{d}/resume")["status"] == "queued"
    assert s.job(c)["status"] == "queued"
    with s.client.stream("GET", "/api/events") as events:      # live progress (SSE)
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        assert next(lines) == "event: queue"
        live = json.loads(next(lines).removeprefix("data: "))
    assert {j["id"]: j["status"] for j in live["jobs"]}.keys() == {a, b, c, d}
    assert {j["slot"] for j in live["jobs"] if j["status"] == "running"} <= {"cpu0", "cpu1"}
    f = s.ok("/api/jobs", {"image": picked["id"], "overrides": IDENTITY, "priority": -1})["jobs"][0]
    assert s.ok(f"/api/jobs/{f}/cancel")["status"] == "cancelled"
    assert s.post(f"/api/jobs/{f}/resume", {}).status_code == 409
    # a job whose input is gone by the time it runs fails with the CLI's one-line reason
    (images / "gone.jpg").write_bytes((images / "small.jpg").read_bytes())
    g = s.ok("/api/jobs", {"input": "gone.jpg", "overrides": IDENTITY, "priority": -2})["jobs"][0]
    (images / "gone.jpg").unlink()

    s.wait([d], until=lambda j: j["status"] == "running")
    assert s.ok(f"/api/jobs/{d}/stop")["status"] == "running"        # asked; stopping
    s.wait([d], ("stopped",))
    assert s.ok(f"/api/jobs/{d}/resume")["status"] == "queued"
    jobs = s.wait([a, b, c, d])
    runs = {j["id"]: j["runs"][0] for j in jobs}
    assert [len(j["runs"]) for j in jobs] == [1, 1, 1, 2]
    assert [r["outcome"] for r in jobs[3]["runs"]] == ["stopped", "done"]
    assert overlap(runs[a], runs[b]) > 0.5, (runs[a], runs[b])      # two slots, two at once
    assert {runs[a]["slot"], runs[b]["slot"]} == {"cpu0", "cpu1"}
    assert runs[d]["started"] < runs[c]["started"]                 # priority 5 went first
    assert s.job(f)["status"] == "cancelled" and s.job(f)["runs"] == []
    (failed,) = s.wait([g], ("failed",))
    assert failed["error"] == f"input {images / 'gone.jpg'} not found; check the path"

    # each result filed with its settings: STUDIO/jobs/<group>/<job>/
    results = {}
    for j in (a, b, c):
        folder = studio / "jobs" / str(sweep["group"]) / str(j)
        assert {"job.yaml", "result.jpg", "result.jpg.yaml", "log.txt"} <= {p.name for p in folder.iterdir()}
        results[j] = (folder / "result.jpg").read_bytes()
    assert len(set(results.values())) == 3
    assert "quality: 40" in (studio / "jobs" / str(sweep["group"]) / str(a) / "result.jpg.yaml").read_text()
    # the contact sheet: three thumbnails, each labelled with its value
    sheet = s.get(f"/groups/{sweep['group']}").text
    for j, q in zip((a, b, c), (40, 70, 95)):
        assert f'src="/thumbs/job/{j}.jpg"' in sheet and f"export.quality={q}" in sheet
        assert s.get(f"/thumbs/job/{j}.jpg").status_code == 200
    got = s.get(f"/jobs/{a}/files/result.jpg")
    assert got.status_code == 200 and got.content == results[a]
    # the TIFF and the viewer's deep zoom, made from the job's kept store when first asked for
    import pyvips
    tif = s.get(f"/jobs/{c}/files/result.tif")
    assert tif.status_code == 200
    t = pyvips.Image.new_from_buffer(tif.content, "").numpy()
    assert t.shape == (96, 96, 3) and np.abs(t.astype(int) - read(studio / "jobs" / str(
        sweep["group"]) / str(c) / "result.jpg")).mean() < 3
    page = s.get(f"/jobs/{c}/view/result.html")
    assert page.status_code == 200 and "result_files/" in page.text
    assert s.get(f"/jobs/{c}/view/result_files/0/0_0.jpeg").status_code == 200
    assert s.get(f"/jobs/{c}/view/%2E%2E/job.yaml").status_code == 404

    # re-run a finished job with a change: a new job, the same as the sweep's 95
    rerun = s.ok(f"/api/jobs/{a}/rerun", {"set": {"export.quality": 95}})["jobs"][0]
    (done,) = s.wait([rerun])
    assert done["parent"] == a and done["label"] == {"export.quality": 95}
    assert s.get(f"/jobs/{rerun}/files/result.jpg").content == results[c]
    # a finished job cannot be stopped or resumed
    r = s.post(f"/api/jobs/{a}/stop", {})
    assert r.status_code == 409 and r.json()["error"] == f"job {a} is done: cannot stop it"
    # the pages
    queue = s.get("/").text
    assert all(f'href="/jobs/{j}"' in queue for j in (a, b, c, d, f, g, rerun))
    assert "input " in queue and "gone.jpg not found" in queue
    assert s.get(f"/jobs/{a}").status_code == 200
    assert 'id="set-dream.step_size"' in s.get("/new?preset=dreamscape").text


# --- kill -9 --------------------------------------------------------------------------------------

def test_a_studio_started_beside_a_source_clone_serves_its_derived_outputs(server, tmp_path):
    """Started from the folder that holds the clone (a ``gigadream/`` folder in the working
    folder, the common case), the job's children still run the installed package: its TIFF
    and viewer, made on demand by children, answer 200, not 500 (issue 32)."""
    home = tmp_path / "home"
    (home / "gigadream").mkdir(parents=True)
    (home / "gigadream" / "README.md").write_text("a clone of the source")
    s = server(cwd=home, command=[str(Path(sys.executable).with_name("gigadream"))])
    [job] = s.ok("/api/jobs", {"input": "small.jpg", "overrides": IDENTITY})["jobs"]
    s.wait([job])
    assert s.get(f"/jobs/{job}/files/result.tif").status_code == 200, s.log()
    assert s.get(f"/jobs/{job}/view/result.html").status_code == 200, s.log()


def test_kill_9_of_the_server_loses_nothing(server, images, tmp_path):
    studio = tmp_path / "studio"
    s = server()
    running = s.ok("/api/jobs", {"input": "pano.jpg", "overrides": DREAM})["jobs"][0]
    folder = studio / "jobs" / "1" / str(running)
    # the uninterrupted `gigadream run` with the job's own config, beside it
    s.wait([running], until=lambda j: (folder / "job.yaml").exists())
    env, mark = marked_env()
    reference = subprocess.Popen(
        [sys.executable, "-m", "gigadream", "run", images / "pano.jpg", "--config",
         folder / "job.yaml", "-o", tmp_path / "reference.jpg", "--quiet"],
        stderr=subprocess.PIPE, text=True, env=env)
    # kill -9 of the server mid-job, a pass or more done
    s.wait([running], until=lambda j: j["status"] == "running"
           and re.search(r"pass [2-9]|octave 0", j["stage"]))
    child = psutil.Process(sqlite3.connect(studio / "studio.db").execute(
        "SELECT pid FROM jobs WHERE id=?", (running,)).fetchone()[0])
    queued = s.ok("/api/jobs", {"input": "small.jpg", "overrides": IDENTITY, "priority": -1})["jobs"][0]
    s.proc.kill()
    s.proc.wait()
    child.wait(60)           # it dies with the server (PR_SET_PDEATHSIG: SIGTERM, resumable)
    db = sqlite3.connect(studio / "studio.db")
    assert db.execute("SELECT status FROM jobs WHERE id=?", (running,)).fetchone()[0] == "running"
    db.close()
    assert_no_orphans(s.mark)
    assert "SIGTERM: stopped" in (folder / "log.txt").read_text()

    s.start()                                    # `gigadream serve` again, same studio
    assert s.job(queued)["status"] == "queued"   # the queue is intact
    assert s.ok(f"/api/jobs/{queued}/cancel")["status"] == "cancelled"
    (done,) = s.wait([running])
    assert done["attempts"] == 2
    assert '"name": "resume"' in (folder / "events.jsonl").read_text()    # from its store

    # the same pixels as the uninterrupted run's
    assert reference.wait(300) == 0, reference.stderr.read()
    assert_no_orphans(mark)
    assert np.array_equal(read(folder / "result.jpg"), read(tmp_path / "reference.jpg"))
    assert sha256(folder / "result.jpg") == sha256(tmp_path / "reference.jpg")

    # finished stays finished: another kill -9 and start leave the done job and its result
    written = (folder / "result.jpg").stat().st_mtime_ns
    s.proc.kill()
    s.proc.wait()
    s.start()
    time.sleep(20 * POLL_S)                      # 20 turns of the scheduler's loop
    again = s.job(running)
    assert (again["status"], again["attempts"]) == ("done", 2), again
    assert (folder / "result.jpg").stat().st_mtime_ns == written


# --- bad input ------------------------------------------------------------------------------------

def snapshot(studio: Path) -> tuple:
    """What the studio holds: its files (not the db's own) and its queue's rows."""
    files = sorted(str(p.relative_to(studio)) for p in studio.rglob("*")
                   if not p.name.startswith("studio.db") and p.name != "scheduler.lock")
    db = sqlite3.connect(studio / "studio.db")
    rows = tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                 for t in ("images", "groups", "jobs"))
    db.close()
    return files, rows


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(server, images, tmp_path):
    studio = tmp_path / "studio"
    s = server("--max-upload", 0.25)
    before = snapshot(studio)
    (tmp_path / "secret.jpg").write_bytes((images / "small.jpg").read_bytes())
    (images / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    try:
        cases = [
            (s.post("/api/images", files={"file": ("notes.jpg", b"just some text\n" * 20, "image/jpeg")}),
             400, "notes.jpg is an unknown format, not a JPEG, PNG, TIFF or WebP image"),
            (s.post("/api/images", files={"file": ("big.jpg", os.urandom(300_000), "image/jpeg")}),
             413, "over the studio's limit of 0.25 MB"),
            (s.post("/api/images/pick", {"path": str(tmp_path / "secret.jpg")}),
             400, "is outside the --images folders"),
            (s.post("/api/images/pick", {"path": "escape.jpg"}), 400, "is outside the --images folders"),
            (s.post("/api/images/pick", {"path": "sub/../../secret.jpg"}), 400, "'..' is not allowed"),
            (s.post("/api/jobs", {"input": "/etc/hostname"}), 400, "is outside the --images folders"),
            (s.post("/api/jobs", {"input": "small.jpg", "config": "../secret.yaml"}), 400,
             "config: '../secret.yaml' is not one of the studio's presets"),
            (s.post("/api/jobs", {"input": "small.jpg", "overrides": ["style.images=/etc/hostname"]}),
             400, "is outside the --images folders"),
            # a whole section as a mapping names files too
            (s.post("/api/jobs", {"input": "small.jpg",
                                  "set": {"model": {"weights": str(tmp_path / "secret.jpg")}}}),
             400, "is outside the --images folders"),
            (s.post("/api/jobs", {"input": "small.jpg", "overrides": ["style={images: [/etc/hostname]}"]}),
             400, "is outside the --images folders"),
            # a Dask client unpickles what its scheduler sends: only the studio's own
            (s.post("/api/jobs", {"input": "small.jpg", "overrides": ["engine.scheduler=tcp://10.9.9.9:8786"]}),
             400, "cannot name its own Dask scheduler"),
            (s.post("/api/jobs", {"image": 999}), 400, "image 999 is not in the studio"),
            (s.post("/api/jobs/999/stop", {}), 404, "no job 999"),
        ]
        for r, status, message in cases:
            assert r.status_code == status and message in r.json()["error"], (r.status_code, r.text)
            assert "\n" not in r.json()["error"]
        # a bad setting: the CLI's own line, before anything is queued (a sweep: all or nothing)
        cli = gd("run", images / "small.jpg", "--set", "dream.bogus=1", "--set", "mode=identity")
        assert cli.returncode == 2
        line = cli.stderr.strip().removeprefix("gigadream: error: ")
        r = s.post("/api/jobs", {"input": "small.jpg", "overrides": ["dream.bogus=1", "mode=identity"]})
        assert (r.status_code, r.json()) == (400, {"error": line})
        r = s.post("/api/jobs", {"input": "small.jpg", "sweep": {"dream.step_size": [1, -2, 3]}})
        assert r.status_code == 400 and "dream.step_size: expected a number above 0" in r.json()["error"]
        # a page from elsewhere cannot change anything
        r = s.post("/api/jobs", {"input": "small.jpg"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert snapshot(studio) == before
    finally:
        (images / "escape.jpg").unlink()


def test_the_token_is_asked_on_every_request_loopback_included(server):
    s = server()
    token = s.url.partition("?token=")[2]
    assert len(token) >= 24 and s.get("/api/jobs").status_code == 200     # the Bearer header
    bare = httpx.Client(base_url=s.base)
    for path in ("/", "/api/jobs", "/images", "/api/events", "/thumbs/image/1.jpg"):
        r = bare.get(path)
        assert r.status_code == 401 and "needs its token" in r.text, path
    r = bare.post("/api/images", files={"file": ("a.jpg", b"x", "image/jpeg")})
    assert r.status_code == 401
    wrong = token[:-1] + ("y" if token.endswith("x") else "x")    # one character off, never the token
    assert bare.get("/", params={"token": wrong}).status_code == 401
    # the printed address: a cookie (this port's, SameSite=Strict, HttpOnly) and the same
    # page again without the token in its address
    r = bare.get("/images", params={"token": token, "x": "1"})
    assert (r.status_code, r.headers["location"]) == (303, "/images?x=1")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"gigadream_token_{s.port}={token};") and "HttpOnly" in cookie \
        and "SameSite=strict" in cookie and "Secure" not in cookie
    assert bare.get("/images").status_code == 200
    bare.close()
    # --no-token: loopback only, with a warning; the Host must then name the studio (a DNS
    # rebinding page cannot reach it)
    open_ = server("--no-token", studio=s.studio.parent / "open")
    assert "?token=" not in open_.url and "warning: --no-token" in open_.log()
    assert httpx.get(open_.base + "/api/jobs").status_code == 200
    r = open_.get("/api/jobs", headers={"Host": f"evil.example:{open_.port}"})
    assert r.status_code == 421
    r = gd("serve", "--no-token", "--host", "0.0.0.0", "--studio", s.studio.parent / "wide")
    assert r.returncode == 2 and "--no-token: only on loopback" in r.stderr
    from gigadream.studio.security import is_loopback
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_batch_runs_a_jobs_file_and_jobs_shows_the_queue(tmp_path, images):
    jobs = tmp_path / "jobs.yaml"
    (tmp_path / "in.jpg").write_bytes((images / "small.jpg").read_bytes())
    jobs.write_text("- input: in.jpg\n  set: {mode: identity, tiling.tile: 64, engine.workers: 1}\n"
                    "  sweep: {export.quality: [50]}\n")
    studio = tmp_path / "studio"
    r = gd("batch", jobs, "--studio", studio)
    assert r.returncode == 0, r.stderr
    assert "1 of 1 jobs done" in r.stderr
    assert (studio / "jobs" / "1" / "1" / "result.jpg").exists()
    table = gd("jobs", "--studio", studio).stdout
    assert table.splitlines()[0].split()[:3] == ["job", "group", "status"]
    rows = table.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[:3] == ["1", "1", "done"]
    assert rows[0].endswith("in.jpg  export.quality=50")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- input: in.jpg\n- input: in.jpg\n  set: {dream.bogus: 1}\n")
    r = gd("batch", bad, "--studio", studio)
    assert r.returncode == 2 and r.stderr.startswith("gigadream: error: unknown key 'dream.bogus'")
    assert gd("jobs", "--studio", studio).stdout.count("\n") == table.count("\n")   # none queued


# --- in a browser ---------------------------------------------------------------------------------

def test_in_a_browser_upload_queue_watch_view_and_download(server, browser, images, tmp_path):
    """Headless Chromium: upload an image, queue a job from a preset with one setting changed,
    watch its bar move, open the result in the viewer, download it: the file equals what
    `gigadream run` makes with the same settings."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    s = server()
    src = images / "small.jpg"
    browser.get(s.url)                  # the printed address: its token kept as a cookie
    browser.get(s.base + "/images")
    browser.find_element(By.ID, "file").send_keys(str(src))
    browser.find_element(By.ID, "upload-button").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "a.new-job"))
    browser.find_element(By.CSS_SELECTOR, "a.new-job").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "set-dream.step_size"))
    assert browser.find_element(By.ID, "preset").get_attribute("value") == "impressionist"
    field = browser.find_element(By.ID, "set-dream.step_size")
    assert field.get_attribute("placeholder") == "1.25"           # the preset's value
    field.send_keys("2")
    browser.find_element(By.ID, "queue").click()
    WebDriverWait(browser, 30).until(lambda b: "/jobs/" in b.current_url)
    job = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])

    seen, end = [], time.time() + 180
    while time.time() < end:
        try:        # the page reloads itself when the job's status changes
            state = browser.execute_script("""
                const bar = document.querySelector('#state progress'), st = document.getElementById('status');
                return bar && st ? [bar.value, st.textContent] : null;""")
        except WebDriverException:
            state = None
        if state:
            seen.append(state)
            if state[1] == "done" and browser.find_elements(By.ID, "viewer"):
                break
            assert state[1] in ("queued", "running"), (state, s.log())
        time.sleep(0.05)
    values = [v for v, st in seen if st == "running"]
    assert any(0 < v < 1 for v in values), seen                   # the bar moved, live
    assert values == sorted(values)

    console_errors(browser)             # what the pages before logged
    browser.find_element(By.ID, "viewer").click()
    wait_loaded(browser, 60)
    assert console_errors(browser) == []
    browser.back()
    folder = tmp_path / "downloads"
    folder.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(folder)})
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "download-jpg"))
    browser.find_element(By.ID, "download-jpg").click()
    got = folder / f"job{job}-result.jpg"
    WebDriverWait(browser, 30).until(lambda b: got.exists() and not list(folder.glob("*.crdownload")))

    r = gd("run", src, "--config", "impressionist", "--set", "dream.step_size=2", "-o",
           tmp_path / "reference.jpg", "--quiet")
    assert r.returncode == 0, r.stderr
    assert got.read_bytes() == (tmp_path / "reference.jpg").read_bytes()


def test_one_slot_per_gpu_each_seeing_its_own_and_jobs_join_a_given_scheduler(monkeypatch):
    """What a GPU box and a --scheduler change, without either: the slots' environments and
    the child's command line (argument lists: no shell)."""
    from gigadream.studio import runner
    from gigadream.studio.runner import command, make_slots
    # a box whose studio was given GPUs 2 and 5: each slot's child sees one of those
    monkeypatch.setattr(runner, "cuda_devices", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert make_slots(None) == [("gpu0", {"CUDA_VISIBLE_DEVICES": "2"}),
                                ("gpu1", {"CUDA_VISIBLE_DEVICES": "5"})]
    assert make_slots(None, gpus=2) == [("gpu0", {"CUDA_VISIBLE_DEVICES": "0"}),
                                        ("gpu1", {"CUDA_VISIBLE_DEVICES": "1"})]
    assert [s for s, _ in make_slots(3, gpus=0)] == ["cpu0", "cpu1", "cpu2"]
    job = {"kind": "run", "input": "/imgs/a b;rm -rf ~.jpg", "dir": "/s/jobs/1/2"}
    argv = command(job, "tcp://10.0.0.5:8786")
    assert argv[1:7] == ["-P", "-m", "gigadream.studio.child", str(os.getpid()),
                         "/s/jobs/1/2/child.lock", "run"]
    assert argv[7] == "/imgs/a b;rm -rf ~.jpg"
    assert argv[-2:] == ["--scheduler", "tcp://10.0.0.5:8786"]
    assert "--scheduler" not in command(job)


# --- videos ----------------------------------------------------------------------------------

def _clip(path: Path, frames: int = 4, h: int = 64, w: int = 96) -> list[np.ndarray]:
    """An H.264 mp4 of a photo panned 3 px a frame (made with PyAV); its frames as decoded."""
    import av
    import skimage.data
    photo = skimage.data.astronaut()[::2, ::2]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=12, options={"crf": "10"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            f = np.ascontiguousarray(photo[40:40 + h, 60 + 3 * t:60 + 3 * t + w])
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return _decoded(path)


def _decoded(path: Path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def test_a_video_uploaded_or_picked_runs_as_a_sequence_with_progress_in_frames(tmp_path):
    """Upload (checked by FFmpeg, kept as .mp4) and pick a video; bad ones refused in one
    line; a job of it runs ``gigadream run`` into result.mp4, its progress named by frame
    (frame I of N) while it runs; the job page plays the video, which reads back with
    PyAV as the clip's frames (identity), and no sequence store is left."""
    folder = tmp_path / "media"
    folder.mkdir()
    frames = _clip(folder / "clip.mp4")
    studio = tmp_path / "studio"
    s = Server(studio, folder)
    try:
        data = (folder / "clip.mp4").read_bytes()
        up = s.post("/api/images", files={"file": ("my clip.mp4", data, "video/mp4")}).json()
        assert (up["name"], up["width"], up["height"]) == ("my clip.mp4", 96, 64), up
        assert Path(up["path"]).suffix == ".mp4" and Path(up["path"]).read_bytes() == data
        thumb = s.get(f"/thumbs/image/{up['id']}.jpg")       # the first frame
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        assert "my clip.mp4" in s.get("/images").text and "clip.mp4" in s.get("/images").text
        picked = s.ok("/api/images/pick", {"path": "clip.mp4"})
        assert (picked["width"], picked["height"]) == (96, 64)
        bad = s.post("/api/images", files={"file": ("notes.mp4", b"no video\n" * 50, "video/mp4")})
        assert bad.status_code == 400 and "notes.mp4 is an unknown format, not a JPEG" in \
            bad.json()["error"], bad.text
        for body, message in [
                ({"image": up["id"], "overrides": [*IDENTITY, "sequence.frames=2-9"]},
                 "sequence.frames: 2-9 reaches past the input's 4 frames"),
                ({"image": up["id"], "overrides": IDENTITY, "kind": "profile"},
                 "is a video: run or preview it")]:
            r = s.post("/api/jobs", body)
            assert r.status_code == 400 and message in r.json()["error"], r.text
        job = s.ok("/api/jobs", {"image": up["id"], "overrides": IDENTITY})["jobs"][0]
        running = s.wait([job], until=lambda j: j["frame"] is not None or j["status"] == "done")[0]
        assert running["frame"] is not None, "no progress in frames was seen while it ran"
        assert running["frame"][1] == 4 and running["stage"].startswith(
            f"frame {running['frame'][0]}/4"), running
        s.wait([job])
        page = s.get(f"/jobs/{job}").text
        assert f'<video id="result-video" src="/jobs/{job}/files/result.mp4"' in page
        video = s.get(f"/jobs/{job}/files/result.mp4")
        assert video.status_code == 200
        out = tmp_path / "result.mp4"
        out.write_bytes(video.content)
        got = _decoded(out)
        assert len(got) == 4 and got[0].shape == (64, 96, 3)
        for i, a in enumerate(got):     # identity: the clip again, through H.264 twice
            errs = [np.abs(a.astype(int) - b).mean() for b in frames]
            assert np.argmin(errs) == i and errs[i] < 5, (i, errs)
        assert s.get(f"/jobs/{job}/files/result.mp4.yaml").status_code == 200
        assert s.get(f"/thumbs/job/{job}.jpg").content[:2] == b"\xff\xd8"
        assert s.get(f"/jobs/{job}/view/result.html").status_code == 404
        job_dir = next((studio / "jobs").glob(f"*/{job}"))
        assert not (job_dir / "result.mp4.gdseq").exists() and not (job_dir / "store").exists()
    finally:
        s.stop()
        assert_no_orphans(s.mark)
