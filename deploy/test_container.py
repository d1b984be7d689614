"""The image that deploy/Dockerfile builds, run as the deploy guide runs it (``make
container-test``: minutes, so it stays out of ``make test`` and out of ``tests/``, which CI
runs). An S3 server (moto, ``tests/s3server.py``) on this machine; a ``dask scheduler`` and two
workers (``gigadream-worker``), each a container of ``GIGADREAM_IMAGE`` on the host's network,
the workers given the server's variables and nothing else (no folder of this machine); a
client, ``gigadream run --scheduler`` in a container of its own with its folder (input,
configs, output) mounted at /work, the store at ``s3://``. Each mode's result equals this
checkout's run on the local disk (embedded cluster, store in a folder), pixel for pixel.

``CONTAINER`` names the engine (podman by default; docker takes the same options).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import s3server  # noqa: E402  (tests/: the object-storage tests' server)
from conftest import read, save  # noqa: E402
from test_objstore_cluster import CONFIGS  # noqa: E402  (their dream and style configs)

ENGINE = os.environ.get("CONTAINER", "podman")
IMAGE = os.environ.get("GIGADREAM_IMAGE", "gigadream:cpu")
# container names of this run: several runs of the test on one machine do not meet
PREFIX = f"gigadream-test-{os.getpid()}"


def engine(*args: str, env: dict | None = None, timeout: float = 600,
           check: bool = True) -> subprocess.CompletedProcess:
    """``podman ARGS`` (or docker), its output as text; a failure shows the command's stderr."""
    r = subprocess.run([ENGINE, *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert not check or r.returncode == 0, f"{ENGINE} {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def logs(name: str) -> str:
    return engine("logs", name, check=False).stdout[-3000:]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = s3server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    """The scheduler and two workers as detached containers on the host's network (each
    process binds 127.0.0.1, ports of its own); the workers read the S3 server's variables
    from the environment ``-e NAME`` passes them (their values stay out of the command line).
    Yields the scheduler's address and the containers' names."""
    assert engine("image", "inspect", IMAGE, check=False).returncode == 0, \
        f"no image {IMAGE}: make container-image first"
    port = s3server.free_port()
    address = f"tcp://127.0.0.1:{port}"
    names = [f"{PREFIX}-scheduler", f"{PREFIX}-worker0", f"{PREFIX}-worker1"]
    env = {**os.environ, **s3.env()}
    try:
        engine("run", "-d", "--name", names[0], "--network", "host", IMAGE,
               "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
               "--no-dashboard")
        for i, name in enumerate(names[1:]):
            engine("run", "-d", "--name", name, "--network", "host",
                   *(f"-e{k}" for k in s3.env()), IMAGE,
                   "gigadream-worker", address, "--host", "127.0.0.1", "--name", f"worker{i}",
                   "--no-dashboard", env=env)
        # asked from inside the scheduler's container: the client library of the image
        wait = (f"from distributed import Client; c = Client('{address}', timeout='60s'); "
                "c.wait_for_workers(2, timeout=120); print(len(c.scheduler_info()['workers']))")
        r = engine("exec", names[0], "python", "-c", wait, check=False, timeout=200)
        assert r.stdout.strip() == "2", (r.stderr[-2000:] + "".join(
            f"\n--- {n}\n{logs(n)}" for n in names))
        yield {"address": address, "names": names}
    finally:
        engine("rm", "-f", *names, check=False)


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory):
    """The client container's /work: the input, the style image and the configs."""
    import skimage.data
    d = tmp_path_factory.mktemp("client")
    (d / "styles").mkdir()
    save(skimage.data.chelsea()[40:232, 60:316], d / "cat.png")      # 256 × 192
    save(skimage.data.coffee(), d / "styles" / "coffee.jpg", Q=95)
    for mode, text in CONFIGS.items():
        (d / f"{mode}.yaml").write_text(text)
    return d


def local_run(client_dir: Path, mode: str) -> np.ndarray:
    """The mode's result from this checkout on this machine: embedded cluster, folder store."""
    r = subprocess.run([sys.executable, "-m", "gigadream", "run", "cat.png", "-o",
                        f"local-{mode}.tif", "--config", f"{mode}.yaml", "--store",
                        f"local-{mode}.gdstore", "-q"], cwd=client_dir, capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    return read(client_dir / f"local-{mode}.tif")


@pytest.mark.parametrize("mode", ["dream", "style"])
def test_containers_sharing_only_s3_equal_the_local_run(s3, cluster, client_dir, mode):
    """``gigadream run --scheduler`` from a client container, the workers in theirs: the run
    completes through the store at ``s3://``, its record on the server says so, and the
    result equals the local run pixel for pixel."""
    url = s3.url(f"container/{mode}.gdstore")
    r = engine("run", "--rm", "--network", "host", "-v", f"{client_dir}:/work",
               *(f"-e{k}" for k in s3.env()), IMAGE,
               "gigadream", "run", "cat.png", "-o", f"cluster-{mode}.tif", "--config",
               f"{mode}.yaml", "--store", url, "--scheduler", cluster["address"], "-q",
               env={**os.environ, **s3.env()}, check=False)
    assert r.returncode == 0, r.stderr[-3000:] + "".join(
        f"\n--- {n}\n{logs(n)}" for n in cluster["names"])
    result = read(client_dir / f"cluster-{mode}.tif")
    np.testing.assert_array_equal(result, local_run(client_dir, mode))
    assert np.abs(result.astype(int) - read(client_dir / "cat.png")).mean() > 1
    from gigadream.storage import objects
    os.environ.update(s3.env())
    objects._bucket.cache_clear()
    record = json.loads(objects.get(objects.join(url, "run.json")))
    assert record["done"] >= 1 and "result" in record


def test_the_workers_ran_the_tiles_and_saw_no_folder_of_this_machine(cluster, client_dir):
    """Both worker containers ran tasks of the runs above, and what they read came from the
    S3 server: neither has the client's folder, and their /work is empty."""
    ask = (f"from distributed import Client; c = Client('{cluster['address']}', timeout='30s'); "
           "print(sorted(c.run(lambda dask_worker: dask_worker.state.executed_count).values()))")
    counts = json.loads(engine("exec", cluster["names"][0], "python", "-c", ask).stdout)
    assert len(counts) == 2 and min(counts) > 0, counts
    for name in cluster["names"][1:]:
        r = engine("exec", name, "sh", "-c", 'test ! -e "$0" && ls -A /work', str(client_dir),
                   check=False)
        assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
