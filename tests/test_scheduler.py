"""``--scheduler``: a real ``dask scheduler`` and two ``dask worker`` processes on loopback, each
started in a folder of its own, as on other machines; ``gigadream run`` joins them from a third
folder with relative paths (input, output, store, style image, model weights). Its result
equals the embedded cluster's pixel for pixel, and each worker sizes its own torch threads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dask_processes as processes
from conftest import read
from gigadream.config import load_config

# Dask threads of the two workers: the first gets fewer torch threads than the second on any
# machine of two cores or more, which a client-side count (cores / workers) cannot give.
WORKER_THREADS = (1, 3)

DREAM = ["--set", "mode=dream", "--set", "dream.layers=[relu2_2]", "--set", "dream.octaves=2",
         "--set", "dream.passes=2", "--set", "dream.calibration_tiles=2",
         "--set", "tiling.tile=64", "--set", "model.weights=weights/vgg16.h5"]
# Two octaves (256 and 128 px): the coarsest stylised whole, the finer one in tiles, with
# the Gram reduction of its tiles on the workers. Shallow layers keep it quick; Adam moves
# pixels by its learning rate from the first step (L-BFGS's first is tiny).
STYLE = ["--set", "mode=style", "--set", "style=styles/coffee.jpg", "--set", "style.optimizer=adam",
         "--set", "style.style_layers=[relu1_1, relu2_1]", "--set", "style.content_layers=relu2_2",
         "--set", "style.whole_size=128", "--set", "style.whole_iterations=2",
         "--set", "style.passes=1", "--set", "style.iterations=1", "--set", "tiling.tile=96",
         "--set", "model.weights=weights/vgg16.h5"]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """The scheduler's address; its processes end with the module, also after a failure."""
    with processes.dask_cluster(tmp_path_factory.mktemp("cluster"), WORKER_THREADS) as c:
        yield c.address


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory, photos):
    """The folder ``gigadream run`` is started in: relative input, style image and weights."""
    from gigadream.models import default_weights
    d = tmp_path_factory.mktemp("client")
    for sub in ("in", "styles", "weights", "out"):
        (d / sub).mkdir()
    import pyvips
    pyvips.Image.new_from_file(str(photos["chelsea_jpg"])).crop(60, 40, 256, 192) \
        .write_to_file(str(d / "in" / "cat.png"))
    (d / "styles" / "coffee.jpg").write_bytes(photos["coffee_jpg"].read_bytes())
    (d / "weights" / "vgg16.h5").symlink_to(default_weights("vgg16"))
    return d


def gd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gigadream", *args], cwd=cwd, env=processes.env(),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("mode,settings", [("dream", DREAM), ("style", STYLE)])
def test_scheduler_run_with_relative_paths_equals_the_embedded_run(dask_cluster, client_dir,
                                                                    mode, settings):
    # One torch thread everywhere: torch's reductions round by their thread count (this
    # style run's result differs by a level in 1 of 147456 values between 1 and 2 threads).
    settings = [*settings, "--set", "engine.threads=1"]
    remote = gd(client_dir, "run", "in/cat.png", "-o", f"out/{mode}-remote.tif",
                "--store", f"stores/{mode}", "--scheduler", dask_cluster, "-q", *settings)
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = gd(client_dir, "run", "in/cat.png", "-o", f"out/{mode}-local.tif", "-q", *settings)
    assert local.returncode == 0, local.stderr[-3000:]
    result, reference = read(client_dir / "out" / f"{mode}-remote.tif"), \
        read(client_dir / "out" / f"{mode}-local.tif")
    source = read(client_dir / "in" / "cat.png")
    assert np.abs(reference.astype(int) - source).mean() > 1    # the run changed the image
    np.testing.assert_array_equal(result, reference)
    # OUT.yaml names the files by absolute paths: it reproduces the run from any folder
    cfg = load_config(client_dir / "out" / f"{mode}-remote.tif.yaml")
    assert cfg.model.weights == str(client_dir / "weights" / "vgg16.h5")
    assert cfg.style.images == ((str(client_dir / "styles" / "coffee.jpg"),) if mode == "style"
                                else ())


def test_workers_of_a_cluster_size_their_own_threads(dask_cluster, client_dir):
    """engine.threads auto: a worker of an existing cluster takes its own Dask thread count,
    at most the cores it may use, whatever the client's machine has."""
    import torch
    from dask.system import cpu_count
    from distributed import Client

    from gigadream.cluster import cluster
    with cluster(scheduler=dask_cluster):
        pass
    with Client(dask_cluster, timeout="10s") as client:
        got = client.run(torch.get_num_threads)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    # Dask's cores of a process (affinity, a container's quota), as the workers (same host) see them
    want = {f"worker{i}": min(n, cpu_count()) for i, n in enumerate(WORKER_THREADS)}
    assert {names[a]: n for a, n in got.items()} == want
