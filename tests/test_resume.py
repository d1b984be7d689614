"""Overnight runs that survive: real runs killed (SIGKILL, SIGTERM) at several points, a worker
process killed mid-pass, a disk that fills up; each resumes to the uninterrupted result, bit for
bit (CPU, same seed)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import read, sha256

HERE = Path(__file__).parent
# Small but complete: 2 octaves × 2 passes of 128 px tiles on a 768×512 photo panorama.
CONFIG = """mode: dream
dream: {layers: [relu2_2], octaves: 2, passes: 2, iterations: 1, calibration_tiles: 4}
tiling: {tile: 128}
engine: {workers: 1, threads: 1, batch: 1}
export: {tiff_compression: none}
"""


# Every process a run under test starts inherits this variable, with a value of the run's own
# (``marked_env``): Dask's workers and multiprocessing's resource tracker are found by it, whatever
# their command line and whoever adopted them after their parent died.
MARK = "GIGADREAM_TEST_RUN"


def marked_env() -> tuple[dict, str]:
    """An environment for one run under test, and the mark its processes will carry."""
    mark = uuid.uuid4().hex
    return {**os.environ, MARK: mark}, mark


def marked(mark: str) -> list[psutil.Process]:
    """The live processes (zombies excluded) whose environment carries ``mark``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(MARK) == mark:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


# multiprocessing's resource tracker exits when the last process holding its pipe has exited:
# after the run, not by it, so even a finished run's tracker may be seen for a moment (once in
# two fresh-clone runs of the suite). It writes nothing; a process that still holds its pipe
# is a process of the run, and is reported itself.
TRACKER_GRACE = 5.0


def _tracker(p: psutil.Process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except psutil.NoSuchProcess:
        return False


def assert_no_orphans(mark: str, timeout: float = 10.0) -> None:
    """No process of the run marked ``mark`` is alive ``timeout`` s from now at the latest
    (its resource tracker: ``TRACKER_GRACE`` at least): the worker processes of a killed run
    exit by themselves (they watch their parent), as orphans would go on writing into a store
    that a resumed run uses. Each process is judged at its own deadline; orphans found are
    killed, then reported."""
    start, orphans = time.time(), {}
    while True:
        alive = marked(mark)
        for p in alive:
            limit = max(timeout, TRACKER_GRACE) if _tracker(p) else timeout
            if p.pid not in orphans and time.time() - start >= limit:
                try:
                    orphans[p.pid] = f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())}"
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        if all(p.pid in orphans for p in alive):
            break
        time.sleep(0.2)
    lines = list(orphans.values())
    assert not lines, "orphans of the run still alive:\n" + "\n".join(lines)


def test_an_orphan_is_reported_at_its_deadline_and_the_tracker_gets_its_grace():
    """assert_no_orphans itself: a process of the run alive at timeout 0 is reported at
    once; a resource tracker that exits within TRACKER_GRACE is not."""
    env, mark = marked_env()
    tracker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)  "
                                "# multiprocessing.resource_tracker"], env=env)
    try:
        assert_no_orphans(mark, timeout=0)
    finally:
        tracker.wait()
    env, mark = marked_env()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    start = time.time()
    with pytest.raises(AssertionError, match="orphans of the run still alive"):
        assert_no_orphans(mark, timeout=0)
    assert time.time() - start < TRACKER_GRACE
    worker.wait(timeout=10)


def harness(src, out, store, config, when="never", timeout=300, env=None):
    """run_and_kill.py in a process of its own. Its output goes to files, not pipes: a worker
    left alive keeps the pipes open, and reading them to their end would wait for the orphan
    to exit (and hide it)."""
    with tempfile.TemporaryFile("w+") as o, tempfile.TemporaryFile("w+") as e:
        r = subprocess.run([sys.executable, str(HERE / "run_and_kill.py"), str(src), str(out),
                            str(store), str(config), when],
                           stdout=o, stderr=e, text=True, timeout=timeout, env=env)
        o.seek(0)
        e.seek(0)
        return subprocess.CompletedProcess(r.args, r.returncode, o.read(), e.read())


def gd(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(pano, tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "run.yaml").write_text(CONFIG)
    r = harness(pano, d / "reference.tif", d / "reference.gdstore", d / "run.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    return {"dir": d, "config": d / "run.yaml", "reference": read(d / "reference.tif"),
            "input_sha": sha256(pano)}


@pytest.mark.parametrize("when", ["ingest", "pass:0:3", "pass:2:5", "export"])
def test_killed_runs_resume_to_the_same_bytes(setup, pano, when):
    d = setup["dir"] / when.replace(":", "-")
    d.mkdir()
    out, store = d / "out.tif", d / "store"
    env, mark = marked_env()
    r = harness(pano, out, store, setup["config"], when, env=env)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr[-2000:]
    if when.startswith("pass"):     # at ingest the worker may be starting, at export gone
        assert "kill -9 with 2 child processes" in r.stdout     # its worker, resource tracker
    assert not out.exists(), "a killed run left an output under the final name"
    assert_no_orphans(mark)
    record = json.loads((store / "run.json").read_text())
    resumed = harness(pano, out, store, setup["config"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    stages = [ln.split()[1] for ln in resumed.stdout.splitlines() if ln.startswith("stage")]
    if when != "ingest":
        assert "ingest" not in stages                        # the source is reused
    if when.startswith("pass:2") or when == "export":
        assert record["done"] >= 1 and "resume" in stages    # finished passes are not redone
    if when == "export":                                     # no workers, no model
        workers = [int(ln.split()[3]) for ln in resumed.stdout.splitlines()
                   if ln.startswith("stage")]
        assert stages == ["pyramid", "resume", "export"] and workers == [0, 0, 0], resumed.stdout
    np.testing.assert_array_equal(read(out), setup["reference"])
    assert not list(d.glob(".out.tif.partial-*"))
    assert sha256(pano) == setup["input_sha"]


def test_a_killed_worker_is_replaced_and_the_result_is_the_same(setup, pano):
    d = setup["dir"] / "worker"
    d.mkdir()
    config = d / "two.yaml"
    config.write_text(CONFIG.replace("workers: 1", "workers: 2"))
    env, mark = marked_env()
    r = harness(pano, d / "out.tif", d / "store", config, "worker:1:2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_no_orphans(mark, timeout=0)      # a finished run leaves no process behind
    assert "killed worker" in r.stdout and "finished" in r.stdout
    np.testing.assert_array_equal(read(d / "out.tif"), setup["reference"])


def test_sigterm_stops_within_seconds_and_says_how_to_resume(setup, pano):
    d = setup["dir"] / "sigterm"
    d.mkdir()
    out, store = d / "out.tif", d / "store"
    env, mark = marked_env()
    errors = open(d / "stderr", "w+")      # a file, not a pipe: see harness
    p = subprocess.Popen([sys.executable, "-m", "gigadream", "run", pano, "-o", out,
                          "--config", setup["config"], "--store", store, "--quiet"],
                         stderr=errors, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:      # wait until the first pass is recorded: mid-run
        rec = store / "run.json"
        if rec.exists() and json.loads(rec.read_text()).get("done", -1) >= 0:
            break
        time.sleep(0.05)
    # the mark finds the run's processes: the run, its worker, multiprocessing's resource tracker
    assert len(marked(mark)) == 3, [q.cmdline() for q in marked(mark)]
    t = time.time()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    errors.seek(0)
    err = errors.read()
    errors.close()
    stopped = time.time() - t
    print(f"stopped {stopped:.1f} s after SIGTERM")
    assert p.returncode == 128 + signal.SIGTERM and stopped < 15
    assert err.strip().splitlines() == [
        f"gigadream: SIGTERM: stopped; {store} keeps every finished pass. Run the same command "
        "again to resume"]
    assert not out.exists()
    assert_no_orphans(mark)
    r = gd("run", pano, "-o", out, "--config", setup["config"], "--store", store, "--quiet")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read(out), setup["reference"])


def test_another_config_or_input_is_refused_and_restart_starts_over(setup, pano, photos):
    d = setup["dir"] / "mismatch"
    d.mkdir()
    out, store = d / "out.tif", d / "store"
    r = harness(pano, out, store, setup["config"], "pass:1:1")
    assert r.returncode == -signal.SIGKILL
    before = (store / "run.json").read_text()
    r = gd("run", pano, "-o", out, "--config", setup["config"], "--store", store,
           "--set", "dream.step_size=2")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"gigadream: error: store {store} was made with another config: dream.step_size: 1.5 in "
        "the store, 2.0 now; run with the same config to resume, or --restart to start over"]
    r = gd("run", photos["chelsea_jpg"], "-o", out, "--config", setup["config"], "--store", store)
    assert r.returncode == 2 and "was made from another input (pano.jpg" in r.stderr
    assert "pass --restart to start over" in r.stderr
    assert (store / "run.json").read_text() == before              # refused: nothing touched
    # the engine may change between attempts: it does not change the result
    r = gd("run", pano, "-o", out, "--config", setup["config"], "--store", store, "--quiet",
           "--set", "engine.workers=2", "--restart")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read(out), setup["reference"])


def test_a_full_disk_is_one_line_keeps_the_last_canvas_and_resumes(setup, pano):
    mnt = setup["dir"] / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out, store = setup["dir"] / "disk.tif", mnt / "store"
        r = gd("run", pano, "-o", out, "--config", setup["config"], "--store", store, "--quiet")
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines == [f"gigadream: error: no space left on the disk of {store} or "
                         f"{out.parent}; free some space and run the same command again to "
                         "resume (every finished pass is kept)"], r.stderr
        assert not out.exists()
        rec = json.loads((store / "run.json").read_text())
        if rec.get("done", -1) >= 0:              # the last recorded canvas is intact
            import zarr
            arr = zarr.open_array(str(store / rec["canvas"]["name"]), mode="r")
            assert np.isfinite(arr[:].astype(np.float32)).all()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        r = gd("run", pano, "-o", out, "--config", setup["config"], "--store", store, "--quiet")
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(read(out), setup["reference"])
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_store_holding_other_data_is_never_used(setup, pano, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    for extra in ([], ["--restart"]):
        r = gd("run", pano, "-o", tmp_path / "o.tif", "--config", setup["config"],
               "--store", folder, *extra)
        assert r.returncode == 2 and "holds other data" in r.stderr
        assert (folder / "holiday.jpg").read_bytes() == b"precious"
        assert sorted(os.listdir(folder)) == ["holiday.jpg"]


def killed(setup, pano, name: str, when: str = "pass:2:5") -> Path:
    """A store that a run killed mid-way left in ``setup['dir']/name``."""
    d = setup["dir"] / name
    d.mkdir()
    r = harness(pano, d / "out.tif", d / "store", setup["config"], when)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr[-2000:]
    return d


def edit_record(store: Path, edit) -> None:
    rec = json.loads((store / "run.json").read_text())
    edit(rec)
    (store / "run.json").write_text(json.dumps(rec))


def test_a_resume_that_would_change_pixels_is_refused(setup, pano):
    """``engine.batch: auto`` and ``model.precision: auto`` are recorded as the workers
    resolved them, with the versions that shape the bytes; a resume whose workers or
    packages resolve otherwise is refused in one line that offers a way."""
    d = killed(setup, pano, "resolved")
    store, out = d / "store", d / "out.tif"
    rec = json.loads((store / "run.json").read_text())
    assert rec["resolved"]["device"] in ("cpu", "cuda") and rec["resolved"]["batch"] == 1
    assert rec["resolved"]["threads"] == 1                       # engine.threads: 1
    assert rec["resolved"]["precision"] in ("fp32", "bf16")
    resume = ["run", pano, "-o", out, "--config", setup["config"], "--store", store, "--quiet"]

    def refused(*more: str) -> str:
        r = gd(*resume, *more)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
        assert not out.exists()
        return r.stderr

    # as a GPU box resolves engine.batch: auto (4 windows a model step)
    edit_record(store, lambda r: r["resolved"].update(batch=4))
    msg = refused()
    assert "engine.batch=4" in msg and "--restart" in msg
    edit_record(store, lambda r: r["resolved"].update(batch=1, threads=2))
    assert "engine.threads=2" in refused()     # a CPU's sums split over threads differ
    edit_record(store, lambda r: r["resolved"].update(threads=1))
    other = "bf16" if rec["resolved"]["precision"] == "fp32" else "fp32"
    assert f"model.precision={rec['resolved']['precision']}" in refused(
        "--set", f"model.precision={other}")
    edit_record(store, lambda r: r["versions"].update(torch="0.0"))
    msg = refused()
    assert "made with torch 0.0" in msg and "--restart" in msg
    edit_record(store, lambda r: r["versions"].update(torch=rec["versions"]["torch"]))
    # the precision asked for as it was resolved: accepted, and the result is the same
    r = gd(*resume, "--set", f"model.precision={rec['resolved']['precision']}")
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_array_equal(read(out), setup["reference"])


def test_export_of_an_unfinished_run_is_refused_or_says_what_it_writes(pano, tmp_path):
    from gigadream.storage.store import Store
    from gigadream.tiling import Box
    config = tmp_path / "identity.yaml"
    config.write_text(CONFIG.replace("mode: dream", "mode: identity"))
    store, out = tmp_path / "store", tmp_path / "out.tif"
    r = harness(pano, tmp_path / "run.tif", store, config, "pass:2:5")   # octave 0's first pass
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr[-2000:]
    r = gd("export", store, out)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"gigadream: error: store {store} holds an unfinished run (2 passes done, no result "
        "yet); run the same 'gigadream run' command again to finish it, or pass --partial to "
        "export what it holds"]
    assert not out.exists()

    r = gd("export", store, out, "--partial", "--set", "export.tiff_compression=none")
    assert r.returncode == 0, r.stderr
    level1 = Store.open(store).source(1)          # an identity canvas holds the source's pixels
    (h, w) = level1.shape
    assert r.stderr.splitlines() == [
        f"gigadream: writing an unfinished run's latest canvas, after 2 passes: octave 1, "
        f"{w}×{h} px (the image is 768×512 px)", f"wrote {out} ({w}×{h} px)"]
    np.testing.assert_array_equal(read(out), level1.read_uint8(Box(0, h, 0, w)))

    r = harness(pano, tmp_path / "run.tif", store, config)           # finished: its result
    assert r.returncode == 0, r.stderr[-2000:]
    r = gd("export", store, tmp_path / "result.tif", "--set", "export.tiff_compression=none")
    assert r.returncode == 0 and r.stderr.splitlines() == [
        f"wrote {tmp_path / 'result.tif'} (768×512 px)"], r.stderr
    np.testing.assert_array_equal(read(tmp_path / "result.tif"), read(tmp_path / "run.tif"))
