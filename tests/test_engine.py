"""The engine end to end with the identity processor: real files, store, LocalCluster."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from conftest import read, save
from gigadream.config import load_config
from gigadream.cluster import ONEDNN_CACHE, cluster, map_tasks
from gigadream.errors import ClusterError
from gigadream.pipeline import plan, run
from gigadream.tiling import Box

IDENTITY = ["mode=identity", "tiling.tile=64", "dream.octaves=3", "dream.passes=2",
            "export.tiff_compression=none"]


@pytest.fixture(scope="module")
def odd_image(tmp_path_factory):
    """301×517: odd sizes, so every octave has partial edge tiles."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (301, 517, 3), dtype=np.uint8)
    return save(a, tmp_path_factory.mktemp("odd") / "odd.png")


@pytest.mark.parametrize("workers", [1, 2])
def test_identity_run_reproduces_the_input_bit_exactly(tmp_path, odd_image, workers):
    cfg = load_config(None, IDENTITY + [f"engine.workers={workers}"])
    store = tmp_path / "store"
    report = run(odd_image, cfg, tmp_path / "out.tif", store_path=store)
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), read(odd_image))
    assert report.tiles == sum(p.tiles for p in plan((301, 517), cfg))
    assert not (store / "spare").exists()             # what no canvas took, gone at the end
    # Roll in place: the last pass wrote one whole chunk per tile, each a separate file.
    last = plan((301, 517), cfg)[-1]
    arr = zarr.open_array(str(store / "canvas" / "o0p1"), mode="r")
    assert arr.attrs["offset"] == list(last.offset)
    assert arr.nchunks_initialized == last.tiles
    assert (tmp_path / "out.tif.yaml").read_text().count("mode: identity") == 1


def test_default_store_is_removed_after_success(tmp_path, photos):
    cfg = load_config(None, IDENTITY)
    run(photos["chelsea_jpg"], cfg, tmp_path / "c.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jpg", "c.jpg.yaml"]


def test_map_tasks_keeps_order_and_reports_each_result():
    seen = []
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        out = map_tasks(ex, lambda x: x * x, list(range(20)), seen.append)
    assert out == [x * x for x in range(20)] and sorted(seen) == out


def test_map_tasks_raises_the_first_failure():
    def f(x):
        if x == 3:
            raise ValueError("tile 3 broke")
        return x
    with concurrent.futures.ThreadPoolExecutor(2) as ex, pytest.raises(ValueError, match="tile 3"):
        map_tasks(ex, f, list(range(8)))


def test_cluster_runs_tasks_in_worker_processes():
    import os

    from gigadream.devices import cuda_devices
    from gigadream.modes import mode_for
    from gigadream.modes.common import gpu_batch
    with cluster(workers=2) as ex:
        pids = set(map_tasks(ex, _pid, list(range(16))))
        # engine.batch: auto asks the workers where they run their models: 1 on CPUs, a
        # GPU's batch on GPUs
        cfg = load_config(None, [])
        resolved = mode_for(cfg).resolve(ex)
        window = cfg.tiling.tile + 2 * mode_for(cfg).window_margin
        want = ("cuda", gpu_batch(window)) if cuda_devices() else ("cpu", 1)
        assert (resolved["device"], resolved["batch"]) == want
        assert mode_for(load_config(None, ["engine.batch=3"])).resolve(ex)["batch"] == 3
        # every worker bounds oneDNN's cache of compiled kernels (cluster.ONEDNN_CACHE)
        caps = ex.each_worker(_env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
        assert caps == [str(ONEDNN_CACHE)] * 2, caps
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def _die(_):
    os._exit(1)         # as the kernel's out-of-memory killer ends a worker: no exception


def test_a_task_that_kills_its_worker_every_time_is_one_clear_error():
    """Dask retries a task whose worker died on another (the nanny restarts it), three
    times by default, then gives up with KilledWorker: that reaches the user as one line."""
    with cluster(workers=1, threads=1) as ex, pytest.raises(ClusterError) as e:
        map_tasks(ex, _die, [0])
    message = str(e.value)
    assert "\n" not in message and "a worker died each of the 4 times" in message, message
    assert "engine.workers" in message and "resumes" in message


def test_workers_openmp_threads_sleep_unless_told_otherwise(monkeypatch):
    """A worker's OpenMP threads wait PASSIVE (spinning ones took a 1 MP run from 137 to
    196 s); a user's OMP_WAIT_POLICY wins. (conftest sets PASSIVE for the tests' own
    processes: taken away here, so that only the engine can set it.)"""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    # os.environ.get, not _env: a worker unpickling _env imports this module, and with it
    # conftest, which would set the variable there itself
    with cluster(workers=1) as ex:
        assert ex.each_worker(os.environ.get, "OMP_WAIT_POLICY") == ["PASSIVE"]
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with cluster(workers=1) as ex:
        assert ex.each_worker(os.environ.get, "OMP_WAIT_POLICY") == ["ACTIVE"]


def test_gpu_batches_hold_four_default_windows_of_pixels():
    """engine.batch: auto on GPUs: 4 windows of the default tile's size (512 px and relu4_3's
    margin), as many fewer as larger windows have more pixels, never none."""
    from gigadream.modes.common import gpu_batch
    assert [gpu_batch(w) for w in (166, 550, 602, 700, 851, 1000, 1114, 4096)] == \
        [4, 4, 4, 2, 2, 1, 1, 1]


def test_tiles_are_batched_by_window_shape_and_each_tile_once(odd_image):
    """engine.batch: a pass's tasks in tuples whose windows share a shape (one model step
    each); a run of consecutive same-shape tiles is what run_tiles hands ``batch``."""
    from gigadream.engine import TileTask, _model_groups, batches, tiles_per_task
    from gigadream.modes.dream import DreamMode
    from gigadream.tiling import grid

    proc = DreamMode(load_config(None, [])).make()
    tiles = grid((301, 517), 64, (17, 40), 24, 1)
    tasks = [TileTask(None, None, proc, t, (0, 0, 0)) for t in tiles]
    shapes = {t.window.shape for t in tiles}
    assert len(shapes) > 3                           # interior, edges, corners
    out = batches(tasks, 4, by_shape=True)
    assert sorted(id(t) for b in out for t in b) == sorted(id(t) for t in tasks)
    assert all(len(b) <= 4 and len({t.tile.window.shape for t in b}) == 1 for b in out)
    full = sum(len(b) == 4 for b in out)
    assert full >= len(tiles) // 4 - len(shapes)     # only each shape's last tuple is short
    assert [len(g) for b in out for g in _model_groups(b)] == [len(b) for b in out]
    # a GPU's task: 16 tiles of one shape, model steps of 4 (tiles_per_task)
    assert tiles_per_task(True, 4) == 16 and tiles_per_task(True, 1) == 1
    sixteen = next(b for b in batches(tasks, 16, by_shape=True) if len(b) == 16)
    assert [len(g) for g in _model_groups(sixteen, 4)] == [4, 4, 4, 4]
    mixed = _model_groups(tuple(tasks[:12]))         # grid order: shapes change along a row
    assert sum(map(len, mixed)) == 12 and len(mixed) > 1
    for g in mixed:
        assert len({t.tile.window.shape for t in g}) == 1


def _env(name: str) -> str | None:
    return os.environ.get(name)


def _pid(_):
    import os
    time.sleep(0.05)
    return os.getpid()


def test_closing_an_embedded_cluster_logs_nothing():
    """Its workers end with SIGKILL; the scheduler, in this process, reported each lost
    connection, with a traceback, on the run's stderr (one CLI run in three did)."""
    import logging

    class Catch(logging.Handler):
        records: list = []

        def emit(self, record):
            self.records.append(record)
    catch = Catch(logging.INFO)
    logging.getLogger("distributed").addHandler(catch)
    try:
        with cluster(workers=2) as ex:
            map_tasks(ex, _pid, list(range(4)))
            catch.records.clear()          # from here on: the close, and after it
        time.sleep(1.0)
    finally:
        logging.getLogger("distributed").removeHandler(catch)
    assert [f"{r.name}: {r.getMessage()}" for r in catch.records] == []


def test_unreachable_scheduler_fails_within_seconds():
    t = time.monotonic()
    with pytest.raises(ClusterError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        with cluster(scheduler="tcp://127.0.0.1:9"):
            pass
    assert time.monotonic() - t < 20


@pytest.mark.serial          # reads overlapping model steps: when a core is free for them
def test_a_model_worker_reads_the_next_tile_while_the_model_runs(tmp_path, photos):
    """Prefetch: one worker, two task threads; model steps never overlap (MODEL_LOCK, held
    by the processor around each forward and backward), and a tile's window is read while
    the previous tile is in the model."""
    from gigadream.engine import TileTask, run_tile
    from gigadream.ingest import ingest
    from gigadream.modes import mode_for
    from gigadream.storage.store import Store
    from gigadream.tiling import grid

    cfg = load_config("impressionist", ["tiling.tile=128", "dream.iterations=2"])
    store = Store.create(tmp_path / "store")
    source = ingest(photos["chelsea_jpg"], store)
    target = store.canvas(0, 0, source.shape, 128, (0, 0))
    mode = mode_for(cfg)
    proc = mode.make()
    tasks = [TileTask(source, target, proc, t, (0, 0, 0))
             for t in grid(source.shape, 128, (0, 0), mode.window_margin, mode.align)][:6]
    with cluster(workers=1, warm=mode.warm_up()) as ex:
        stats = map_tasks(ex, run_tile, tasks)
    assert len({s["pid"] for s in stats}) == 1
    steps = sorted(step for s in stats for step in s["model_at"])
    assert len(steps) == 2 * len(tasks)                    # two iterations a tile
    for a, b in zip(steps, steps[1:]):
        assert a[1] <= b[0], "two model steps overlapped"
    by_model = sorted(stats, key=lambda s: s["model_at"][0][0])
    prefetched = [b for a, b in zip(by_model, by_model[1:]) if b["began"] < a["model_at"][-1][1]]
    assert len(prefetched) >= len(tasks) // 2, "tiles waited for the model before reading"


def _chunk_files(folder) -> list:
    return sorted(p for p in folder.rglob("c/**/*") if p.is_file())


def test_later_passes_overwrite_the_canvas_of_two_passes_back_in_place(tmp_path, odd_image):
    """Passes 3 and 4 of an octave reuse the chunk files of passes 1 and 2 (new page-cache
    pages are dear), on other grid offsets; stale chunks outside the image never show. A
    hard link made to each file before pass 3 still names that file after it: the file was
    overwritten, not replaced."""
    cfg = load_config(None, ["mode=identity", "tiling.tile=64", "dream.octaves=2",
                             "dream.passes=4", "export.tiff_compression=none"])
    store, links = tmp_path / "store", tmp_path / "links"
    links.mkdir()

    def on_event(e) -> None:
        if getattr(e, "name", "") == "pass" and e.detail.startswith("octave 0 pass 3"):
            for i, f in enumerate(_chunk_files(store / "canvas" / "o0p0")):
                os.link(f, links / str(i))

    run(odd_image, cfg, tmp_path / "out.tif", store_path=store, on_event=on_event)
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), read(odd_image))
    assert len({p.offset for p in plan((301, 517), cfg) if p.octave == 0}) == 4
    files = _chunk_files(store / "canvas" / "o0p0")
    assert len(list(links.iterdir())) >= 0.9 * len(files) > 0
    assert sum(f.stat().st_nlink == 2 for f in files) >= 0.9 * len(files)


def test_a_canvas_of_another_geometry_is_made_afresh(tmp_path):
    from gigadream.storage.store import Store
    from gigadream.tiling import grid
    store = Store.create(tmp_path / "store")
    first = store.canvas(0, 0, (100, 130), 64, (3, 5))
    for t in grid(first.shape, 64, (3, 5)):
        first.write(t, np.ones((3, *t.core.shape), np.float32))
    files = {f: f.stat().st_ino for f in _chunk_files(store.path / "canvas" / "o0p0")}
    again = store.canvas(0, 0, (100, 130), 64, (40, 9))          # same geometry: kept
    assert {f: f.stat().st_ino for f in _chunk_files(store.path / "canvas" / "o0p0")} == files
    assert zarr.open_array(str(store.path / "canvas" / "o0p0"), mode="r").attrs["offset"] == [40, 9]
    assert again.offset == (40, 9)
    store.canvas(0, 0, (100, 130), 32, (0, 0))                   # other tile size: afresh
    assert _chunk_files(store.path / "canvas" / "o0p0") == []


def test_a_dropped_octaves_chunk_files_become_the_next_canvases(tmp_path):
    """drop_canvases keeps the raw chunk files as spares; a new canvas renames them into the
    chunks its pass's tiles write (page-cache pages already held), and what they held
    never shows once the pass has written."""
    from gigadream.storage.store import Store
    from gigadream.tiling import grid
    store = Store.create(tmp_path / "store")
    old = {}
    for parity, offset in ((0, (3, 5)), (1, (7, 11))):
        c = store.canvas(1, parity, (60, 80), 32, offset)
        for t in grid(c.shape, 32, offset):
            c.write(t, np.ones((3, *t.core.shape), np.float32))
        files = _chunk_files(store.path / "canvas" / f"o1p{parity}")
        old.update({f.stat().st_ino: f for f in files})
    store.drop_canvases(1)
    assert not (store.path / "canvas" / "o1p0").exists()
    assert len(list((store.path / "spare").iterdir())) == len(old) == 6 + 9   # 2×3, 3×3 tiles
    new = store.canvas(0, 1, (100, 130), 32, (9, 2))
    tiles = grid(new.shape, 32, (9, 2))                       # 4 × 5: more than the spares
    files = _chunk_files(store.path / "canvas" / "o0p1")
    assert len(files) == len(old) < len(tiles)
    assert {f.stat().st_ino for f in files} == set(old)      # the same files, renamed
    assert {(int(f.parent.name), int(f.name)) for f in files} <= \
        {(t.chunk.y0 // 32, t.chunk.x0 // 32) for t in tiles}
    assert list((store.path / "spare").iterdir()) == []
    for t in tiles:
        new.write(t, np.full((3, *t.core.shape), 2.0, np.float32))
    np.testing.assert_array_equal(new.read(Box(0, 100, 0, 130)), 2.0)
    store.drop_spares()
    assert not (store.path / "spare").exists()


ORPHAN = """
import os, signal, sys
import distributed, psutil
import gigadream.cluster as cluster
distributed.Client.register_plugin = lambda self, plugin: None   # no plugin ever runs
if __name__ == "__main__":
    with cluster.cluster(workers=1) as ex:
        ex.submit(int).result()
        print(*[p.pid for p in psutil.Process().children()], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_exit_by_themselves_when_their_parent_is_killed_before_any_plugin(tmp_path):
    """The cluster starts during ingest, so kill -9 may come before the client has
    registered the plugin whose thread watches the parent: a worker that has had no task
    yet exits by itself all the same (its scheduler, in the parent, is gone)."""
    import psutil
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    children = [int(p) for p in r.stdout.split()]
    assert children
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) for p in children):
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in children), "a worker outlived its killed parent"
