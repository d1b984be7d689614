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

import numpy as np
import pytest

from conftest import read
from dask_processes import dask_cluster
from gigadream.events import Stage, Work
from gigadream.modes import load_config
from gigadream.pipeline import run

HERE = Path(__file__).resolve().parent
OOM_FAULT = str(HERE / "oom_fault.py")
# One torch thread everywhere: torch's reductions round by their thread count, and the
# embedded cluster's reference runs on this machine's cores.
COMMON = ["engine.threads=1"]
IDENTITY = ["mode=identity"]


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

    def __call__(self, src: Path, settings: list[str]) -> np.ndarray:
        key = (str(src), tuple(settings))
        if key not in self.results:
            out = self.folder / f"ref{len(self.results)}.tif"
            t = time.perf_counter()
            run(src, load_config(None, [*COMMON, *settings, "engine.workers=2"]), out)
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
