"""One Dask cluster that serves run after run, as an overnight batch or the studio with
``--scheduler`` uses one: a real ``dask scheduler`` and two ``dask worker``s in folders of
their own (``dask_processes``). Nothing a worker keeps crosses runs: each result equals the
same run on a fresh embedded cluster, pixel for pixel."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import dask
import numpy as np
import pytest

from conftest import read
from dask_processes import dask_cluster
from gigadream.events import Stage, Work
from gigadream.modes import load_config
from gigadream.pipeline import run

# Alone (make test's serial part): the soak measures the workers' memory, and the paused
# worker's removal waits on heartbeats, which a loaded machine delays. The module's tests
# share its cluster and its reference runs.
pytestmark = pytest.mark.serial

HERE = Path(__file__).resolve().parent
OOM_FAULT = str(HERE / "oom_fault.py")
# One torch thread everywhere: torch's reductions round by their thread count, and the
# embedded cluster's reference runs on this machine's cores.
COMMON = ["engine.threads=1"]
IDENTITY = ["mode=identity"]
# How much a worker's RSS may grow from the soak's sixth run to its twelfth (the same six
# configs again). Measured on the test's two workers, per round of six runs: +18, +11, +3,
# +2 MB over five rounds (no kill, no fault), and +23 to +27 MB in this soak's second round
# (with its killed run): glibc's arenas and oneDNN's primitive cache settling, not growing.
# Twice that leaves room for a loaded machine's noise and still catches a leak of 10 MB a
# run (a run's model, canvas chunks or pass data kept), 60 MB over the round.
LEAK_MARGIN_MB = 64


@pytest.fixture(scope="module")
def long_cluster(tmp_path_factory):
    """A scheduler and two one-thread workers that live for the module. Their model calls
    run out of memory while the file ``oom`` holds limits (``oom_fault.switched``)."""
    d = tmp_path_factory.mktemp("long")
    with dask_cluster(d, (1, 1), preload=[OOM_FAULT],
                      environ={"GIGADREAM_TEST_OOM_FILE": str(d / "oom")}) as c:
        yield c


class References:
    """Each config's run on a fresh embedded cluster of two workers, run once, and how long
    it took."""

    def __init__(self, folder: Path):
        self.folder, self.results, self.seconds = folder, {}, {}

    def __call__(self, src: Path, settings: list[str], oom: int | None = None) -> np.ndarray:
        """``oom``: the run's passes with steps above ``oom`` pixels out of memory."""
        key = (str(src), tuple(settings), oom)
        if key not in self.results:
            out = self.folder / f"ref{len(self.results)}.tif"
            cfg = load_config(None, [*COMMON, *settings, "engine.workers=2"])
            t = time.perf_counter()
            if oom is None:
                run(src, cfg, out)
            else:
                switch = self.folder / "oom"
                os.environ["GIGADREAM_TEST_OOM_FILE"] = str(switch)   # the workers inherit it
                try:
                    with dask.config.set({"distributed.worker.preload": [OOM_FAULT]}):
                        run(src, cfg, out, on_event=oom_switch(switch, oom))
                finally:
                    del os.environ["GIGADREAM_TEST_OOM_FILE"]
                    switch.unlink(missing_ok=True)
            self.seconds[key] = time.perf_counter() - t
            self.results[key] = read(out)
        return self.results[key]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return References(tmp_path_factory.mktemp("references"))


def on_cluster(cluster, src: Path, out: Path, store: Path, settings: list[str],
               **kw) -> np.ndarray:
    """``settings``' run of ``src`` on the long-lived ``cluster`` into ``store`` (kept)."""
    cfg = load_config(None, [*COMMON, *settings, f"engine.scheduler={cluster.address}"])
    run(src, cfg, out, store_path=store, overwrite=True, **kw)
    return read(out)


def test_a_store_made_again_at_the_same_path_is_not_read_as_the_old_one(
        long_cluster, pano, references, tmp_path):
    """The issue's case: tile 256 into a store, the store removed, tile 192 into a store at
    the same path: the workers hold the first store's arrays and chunk layouts by path."""
    store = tmp_path / "S"
    first = on_cluster(long_cluster, pano, tmp_path / "a.tif", store,
                       [*IDENTITY, "tiling.tile=256"])
    np.testing.assert_array_equal(first, references(pano, [*IDENTITY, "tiling.tile=256"]))
    shutil.rmtree(store)
    again = on_cluster(long_cluster, pano, tmp_path / "b.tif", store,
                       [*IDENTITY, "tiling.tile=192"])
    np.testing.assert_array_equal(again, references(pano, [*IDENTITY, "tiling.tile=192"]))


# A dream of one octave and four passes: canvases alternate (passes 0 and 2 write one, 1
# and 3 the other), and each tile is a few model steps long, so a worker paused at a random
# moment is in the middle of one.
ZOMBIE_DREAM = ["mode=dream", "dream.layers=[relu2_2]", "dream.octaves=1", "dream.passes=4",
                "dream.iterations=4", "dream.calibration_tiles=2", "tiling.tile=64"]


def test_a_worker_the_scheduler_gave_up_on_writes_nothing_when_it_wakes(
        tmp_path, photos, references):
    """A worker paused (SIGSTOP) in a pass-0 tile until the scheduler removes it (its
    heartbeats stop: worker-ttl, 5 s at least), the run going on with the other worker, then
    resumed (SIGCONT) as pass 3 starts: the tile it finishes would land in the canvas pass 2
    wrote and pass 3 reads. The result equals a clean run's."""
    import pyvips
    src = tmp_path / "cat.png"
    pyvips.Image.new_from_file(str(photos["chelsea_jpg"])).crop(60, 40, 256, 192) \
        .write_to_file(str(src))
    with dask_cluster(tmp_path / "cluster", (1, 1), nanny=False, environ={
            "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "1s"}) as c:
        zombie = c.procs["worker0"]
        passes, paused = [], []

        def on_event(e) -> None:
            if isinstance(e, Stage) and e.name == "pass":
                passes.append(e)
                if len(passes) == 4 and paused:     # pass 3 is about to read pass 2's canvas
                    os.kill(zombie.pid, signal.SIGCONT)
                    zombie.wait(60)                 # its task ends, then the worker exits
            if isinstance(e, Work) and len(passes) == 1 and not paused:
                os.kill(zombie.pid, signal.SIGSTOP)
                paused.append(time.time())

        got = on_cluster(c, src, tmp_path / "out.tif", tmp_path / "S", ZOMBIE_DREAM,
                         on_event=on_event)
        log = (c.folder / "worker0" / "log.txt").read_text()
    assert paused and zombie.returncode is not None, log[-3000:]
    np.testing.assert_array_equal(got, references(src, ZOMBIE_DREAM))
    assert "late write dropped" in log, log[-3000:]     # it finished its tile, and tried


# The soak's modes, each as cheap as it can be and still change the image: dream of a shallow
# layer, two octaves; style of two shallow layers with Adam (it moves pixels from its first
# step), its coarsest octave whole.
DREAM = ["mode=dream", "dream.layers=[relu2_2]", "dream.octaves=2", "dream.passes=2",
         "dream.calibration_tiles=2"]
# One octave: its grad scale is measured before its first pass, when the out-of-memory
# fault is switched on (``oom``), so only the passes' tiles run out of memory. 160 px: a
# whole tile's parts have cores of 64 px or more (engine.SMALLEST_PART) wherever the grid's
# alignment cuts it.
DREAM_BIG_TILES = ["mode=dream", "dream.layers=[relu2_2]", "dream.octaves=1",
                   "dream.passes=2", "dream.calibration_tiles=2", "tiling.tile=160"]


def oom_limit(shape: tuple[int, int], settings: list[str]) -> int:
    """The largest window, in pixels, of the run's tiles that are not whole: above it lie
    the whole tiles' windows only, which then run in parts (``engine._in_parts``), while
    the edge tiles, which could not, fit."""
    from gigadream.modes import mode_for
    from gigadream.pipeline import plan
    from gigadream.tiling import grid
    cfg = load_config(None, settings)
    mode, t = mode_for(cfg), cfg.tiling.tile
    whole, other = [], []
    for pp in plan(shape, cfg):
        for tile in grid(pp.shape, pp.tile, pp.offset, mode.margin, mode.align, mode.wrap,
                         mode.align_end):
            (whole if tile.core.shape == (t, t) else other).append(tile.window.size)
    assert whole and max(other) < min(whole)
    return max(other)


def style(image: Path) -> list[str]:
    return ["mode=style", f"style={image}", "style.optimizer=adam",
            "style.style_layers=[relu1_1, relu2_1]", "style.content_layers=relu2_2",
            "style.whole_size=96", "style.whole_iterations=2", "style.passes=1",
            "style.iterations=1", "tiling.tile=96"]


def oom_switch(path: Path, pixels: int):
    """``on_event`` that makes steps above ``pixels`` run out of memory from the first pass
    on (``oom_fault.switched``: the workers read ``path``), until the run ends."""
    def on_event(e) -> None:
        if isinstance(e, Stage) and e.name == "pass" and not path.exists():
            path.write_text(f"0 {pixels}")
    return on_event


def test_a_dozen_runs_on_one_cluster_equal_the_runs_on_fresh_clusters(
        long_cluster, references, pano, photos, tmp_path):
    """A dozen runs in a row on one long-lived cluster: modes, tile sizes and inputs mixed,
    one --store path for all (made again, restarted, resumed), one killed mid-pass and run
    again, one out of memory in its passes (its tiles run in parts) followed by one of the
    same window shape that fits. Each result equals the same run on a fresh embedded
    cluster; the workers' memory after the second round of six is what it was after the
    first."""
    import subprocess
    import sys

    import pyvips
    from distributed import Client

    from gigadream.config import to_yaml

    cat, coffee = tmp_path / "cat.png", tmp_path / "coffee.png"
    pyvips.Image.new_from_file(str(photos["chelsea_jpg"])).crop(60, 40, 256, 192) \
        .write_to_file(str(cat))
    pyvips.Image.new_from_file(str(photos["coffee_jpg"])).crop(150, 100, 256, 192) \
        .write_to_file(str(coffee))
    painting = photos["astronaut_png"]
    # A whole tile's window does not fit, its parts' do: its tiles run in 2 × 2 parts
    # (engine._in_parts), which changes pixels.
    limit = oom_limit((192, 256), DREAM_BIG_TILES)
    oom_file = long_cluster.folder / "oom"
    store = tmp_path / "S"
    # Two rounds of the same six configs, the inputs swapped in the second (the same window
    # shapes: what a worker caches by shape is full after the first round, and a leak goes
    # on growing). (input, settings, how the store is reused, what the run does besides)
    rounds = [(cat, coffee, "oom", None), (coffee, cat, None, "kill")]
    runs = [run_ for a, b, oom, kill in rounds for run_ in [
        (pano, [*IDENTITY, "tiling.tile=256"], "new" if oom else "restart", None),
        (pano, [*IDENTITY, "tiling.tile=192"], "removed", None),
        (a, [*DREAM, "tiling.tile=64"], "removed" if kill else "restart", kill),
        (b, style(painting), "restart", None),
        (b, DREAM_BIG_TILES, "restart", oom),
        (a, DREAM_BIG_TILES, "restart", None),      # the same windows: none in parts
    ]]
    client = Client(long_cluster.address, timeout="10s")
    rss, seconds = [], []
    try:
        for i, (src, settings, reuse, extra) in enumerate(runs):
            out = tmp_path / f"run{i}.tif"
            t = time.perf_counter()
            if reuse == "removed":
                shutil.rmtree(store, ignore_errors=True)
            if extra == "kill":      # killed (kill -9) in its second pass, then run again
                cfg = tmp_path / "kill.yaml"
                cfg.write_text(to_yaml(load_config(None, [
                    *COMMON, *settings, f"engine.scheduler={long_cluster.address}"])))
                killed = subprocess.run(
                    [sys.executable, str(HERE / "run_and_kill.py"), str(src), str(out),
                     str(store), str(cfg), "pass:1:2"], capture_output=True, text=True,
                    timeout=300)
                assert killed.returncode == -9, killed.stdout + killed.stderr[-3000:]
                assert "kill -9" in killed.stdout
                got = on_cluster(long_cluster, src, out, store, settings)
            elif extra == "oom":
                try:
                    got = on_cluster(long_cluster, src, out, store, settings, restart=True,
                                     on_event=oom_switch(oom_file, limit))
                finally:
                    oom_file.unlink(missing_ok=True)
            else:
                got = on_cluster(long_cluster, src, out, store, settings,
                                 restart=reuse == "restart")
            seconds.append(time.perf_counter() - t)
            # (a lambda: pickled by value, this module is not on the workers' path)
            rss.append(sorted(client.run(
                lambda: __import__("psutil").Process().memory_info().rss).values()))
            want = references(src, settings, oom=limit if extra == "oom" else None)
            if settings[0] == "mode=identity":     # it copies; the others change the image
                np.testing.assert_array_equal(want, read(src))
            else:
                assert np.abs(want.astype(int) - read(src)).mean() > 1
            np.testing.assert_array_equal(got, want, err_msg=f"run {i}: {settings}")
    finally:
        client.close()
    # the fault did fire: the run out of memory differs from the same run that fitted
    assert not np.array_equal(references(coffee, DREAM_BIG_TILES),
                              references(coffee, DREAM_BIG_TILES, oom=limit))
    fresh = sum(references.seconds[(str(src), tuple(s), None if x != "oom" else limit)]
                for src, s, _, x in runs)
    print(f"\nsoak: {sum(seconds):.1f} s on one cluster, {fresh:.1f} s on fresh clusters; "
          f"workers' RSS MB after each run: {[[r >> 20 for r in w] for w in rss]}")
    growth = [(b - a) >> 20 for a, b in zip(rss[len(runs) // 2 - 1], rss[-1])]
    assert max(growth) <= LEAK_MARGIN_MB, (growth, rss)
