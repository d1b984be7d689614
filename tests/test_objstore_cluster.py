"""Runs whose machines share only object storage (issue 20): a real S3 server on loopback
(``s3server``), a real ``dask scheduler`` and two ``dask worker`` processes, each started in an
empty folder of its own, the workers with the server's variables and, where the test may, a
view of the files without the test's folders (``_hidden``); ``gigadream`` runs in a third
folder holding the input and the style image. Nothing reaches a worker through a folder: the
store is at ``s3://``, the style image travels as pixels, the weights are the installed
package's. Each result equals the same config's run on the local disk, pixel for pixel:

- ``ingest`` and ``export`` through a URL store (a rotated photo with x circular) give the
  folder's keys and bytes, and the folder's output file byte for byte;
- dream and style on the cluster;
- the client killed (SIGKILL) mid-pass, then the same command: resumed from the record on the
  server, identical;
- a worker killed mid-pass: Dask runs its tiles again elsewhere, identical (a tile writes whole
  chunks of a canvas no tile reads until the pass is done, each one PUT, and a PUT cut short
  stores nothing: the old object stays);
- a missing bucket, refused credentials, an unreachable endpoint: ``run`` says so in one line
  within seconds, writing nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import pyvips

import gigadream
import s3server
from conftest import read
from test_resume import assert_no_orphans, harness, marked_env
from dask_processes import stop as _stop

ROOT = Path(gigadream.__file__).resolve().parent.parent

# 256×192 px, two octaves, small tiles: a few seconds a run on two cores. One torch thread
# everywhere: a CPU's reductions round by their thread count.
CONFIGS = {
    "dream": """mode: dream
dream: {layers: [relu2_2], octaves: 2, passes: 1, iterations: 1, calibration_tiles: 2}
tiling: {tile: 64}
engine: {threads: 1, batch: 1}
export: {tiff_compression: none}
""",
    # The coarsest octave (128 px) stylised whole, the finer in tiles with the Gram reduction
    # of its tiles on the workers; the style image's pixels come from the client.
    "style": """mode: style
style: {images: [styles/coffee.jpg], optimizer: adam, style_layers: [relu1_1, relu2_1],
        content_layers: [relu2_2], whole_size: 128, whole_iterations: 2, passes: 1,
        iterations: 1}
tiling: {tile: 96}
engine: {threads: 1, batch: 1}
export: {tiff_compression: none}
""",
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = s3server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The server's variables in this process too (the test reads the store's keys)."""
    from gigadream.storage import objects
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    objects._bucket.cache_clear()
    yield s3
    objects._bucket.cache_clear()


def _env(s3=None, **overrides) -> dict:
    """This source tree first on the path (every machine has gigadream installed), and the
    S3 server's variables (``s3``), as each machine's own environment has them."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
            **(s3.env(**overrides) if s3 else {})}


# A worker sees an empty, unreadable folder where the test's folders are (the client's among
# them), as a worker on another machine sees nothing of the client's: a mount namespace of its
# own with a tmpfs over them. Where this test may not (no CAP_SYS_ADMIN), workers see them.
HIDE = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
        'mount -t tmpfs -o size=4k,mode=000 elsewhere "$0" && exec "$@"']


def _hidden(folder: Path) -> list[str]:
    """The command prefix that hides ``folder`` from what it starts, or [] where it cannot."""
    probe = subprocess.run([*HIDE, str(folder), "true"], capture_output=True)
    return [*HIDE, str(folder)] if probe.returncode == 0 else []


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """A scheduler and two workers, each in an empty folder of its own; the workers have the
    S3 server's variables (the scheduler none) and cannot see the test's folders
    (``_hidden``). Yields the address, the workers' folders and processes."""
    import shutil
    import tempfile
    d = tmp_path_factory.mktemp("cluster")
    address_file = d / "scheduler" / "address.json"
    procs: list[subprocess.Popen] = []
    hide = _hidden(tmp_path_factory.getbasetemp())
    folders: list[Path] = []

    def start(name: str, env: dict, *args: str, prefix: tuple = ()) -> None:
        with open(d / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([*prefix, sys.executable, "-m", *args],
                                          cwd=env["HOME"], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    try:
        (d / "scheduler").mkdir()
        start("scheduler", {**_env(), "HOME": str(d / "scheduler")},
              "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
              "--no-dashboard", "--scheduler-file", str(address_file))
        end = time.time() + 60
        while not address_file.exists() and time.time() < end:
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        for i in range(2):
            # outside the test's folders, which it will not see
            folders.append(Path(tempfile.mkdtemp(prefix=f"gigadream-worker{i}-")))
            start(f"worker{i}", {**_env(s3), "HOME": str(folders[-1])},
                  "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                  "--nthreads", "2", "--memory-limit", "0", "--no-dashboard",
                  "--name", f"worker{i}", prefix=hide)
        from distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield {"address": address, "folders": folders, "procs": procs[1:],
               "hidden": bool(hide)}
    finally:
        _stop(procs)
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory, photos):
    """Where ``gigadream`` runs: the input, the style image and the configs, nothing else."""
    d = tmp_path_factory.mktemp("client")
    (d / "styles").mkdir()
    pyvips.Image.new_from_file(str(photos["chelsea_jpg"])).crop(60, 40, 256, 192) \
        .write_to_file(str(d / "cat.png"))
    (d / "styles" / "coffee.jpg").write_bytes(photos["coffee_jpg"].read_bytes())
    for mode, text in CONFIGS.items():
        (d / f"{mode}.yaml").write_text(text)
    return d


def gd(cwd: Path, env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


_references: dict[str, np.ndarray] = {}


def reference(client_dir: Path, mode: str) -> np.ndarray:
    """The mode's result on this machine alone: embedded cluster, store in a folder."""
    if mode not in _references:
        r = gd(client_dir, _env(), "run", "cat.png", "-o", f"local-{mode}.tif", "--config",
               f"{mode}.yaml", "--store", f"local-{mode}.gdstore", "-q")
        assert r.returncode == 0, r.stderr[-3000:]
        _references[mode] = read(client_dir / f"local-{mode}.tif")
        assert np.abs(_references[mode].astype(int) - read(client_dir / "cat.png")).mean() > 1
    return _references[mode]


def _keys(url: str) -> dict[str, bytes]:
    from gigadream.storage import objects
    return {k: objects.get(objects.join(url, k)) for k in objects.keys_under(url)}


def test_ingest_and_export_through_s3_equal_the_folders(s3_env, tmp_path, monkeypatch):
    """``gigadream ingest IMG s3://…`` holds the folder's keys and bytes (EXIF orientation 6:
    the raw level turned upright and dropped; x circular: the levels resized across the
    edge, ``wrapped_levels``), and ``gigadream export s3://… out.jpg`` is the folder's
    file, byte for byte."""
    import skimage.data

    from gigadream import cli
    from gigadream.storage import objects
    from gigadream.storage import store as store_mod
    from gigadream.storage.views import forget_arrays
    # a store's run id is random; here both stores get the same
    monkeypatch.setattr(store_mod, "new_run_id", lambda: "0" * 32)
    im = pyvips.Image.new_from_array(np.ascontiguousarray(skimage.data.astronaut()[:192, ::2])) \
        .copy(interpretation="srgb")
    im.set_type(pyvips.GValue.gint_type, "orientation", 6)  # 256 × 192 stored, 192 × 256 upright
    im.write_to_file(str(tmp_path / "rot.jpg"), Q=90)
    url = s3_env.url("ingest/rot.gdstore")
    settings = ["--set", "dream.octaves=2", "--set", "tiling.wrap=x", "-q"]
    for store, out in ((tmp_path / "rot.gdstore", "folder.jpg"), (url, "s3.jpg")):
        parser = cli.build_parser()
        assert cli.VERBS["ingest"](parser.parse_args(["ingest", str(tmp_path / "rot.jpg"),
                                                      str(store), *settings])) == 0
        forget_arrays()
        assert cli.VERBS["export"](parser.parse_args(["export", str(store),
                                                      str(tmp_path / out)])) == 0
    folder = {str(p.relative_to(tmp_path / "rot.gdstore")): p.read_bytes()
              for p in sorted((tmp_path / "rot.gdstore").rglob("*")) if p.is_file()}
    remote = _keys(url)
    assert sorted(remote) == sorted(folder)
    assert [k for k in folder if folder[k] != remote[k]] == []
    assert "source/1/zarr.json" in remote and not any(k.startswith("source/raw") for k in remote)
    assert json.loads(remote["run.json"])["pyramid"]["wrap"] is True
    assert (tmp_path / "s3.jpg").read_bytes() == (tmp_path / "folder.jpg").read_bytes()
    objects.delete_under(url)


@pytest.mark.parametrize("mode", ["dream", "style"])
def test_a_cluster_sharing_only_s3_equals_the_local_run(s3_env, cluster, client_dir, mode):
    """Scheduler, workers and client in folders of their own: the run completes through the
    store at ``s3://`` and equals the local disk's run pixel for pixel; no machine's folder
    gains a file, the store stays on the server with its record."""
    url = s3_env.url(f"cluster/{mode}.gdstore")
    r = gd(client_dir, _env(s3_env), "run", "cat.png", "-o", f"cluster-{mode}.tif", "--config",
           f"{mode}.yaml", "--store", url, "--scheduler", cluster["address"], "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_array_equal(read(client_dir / f"cluster-{mode}.tif"),
                                  reference(client_dir, mode))
    for folder in cluster["folders"]:
        assert [p.name for p in folder.iterdir()] == [], "a worker wrote into its folder"
    if cluster["hidden"]:           # the workers could not have read the client's files
        from distributed import Client
        with Client(cluster["address"], timeout="30s") as client:
            seen = client.run(os.access, str(client_dir / "styles" / "coffee.jpg"), os.R_OK)
        assert list(seen.values()) == [False, False]
    assert not list(client_dir.glob("*:*")) and not (client_dir / "s3:").exists()
    rec = json.loads(_keys(url)["run.json"])
    assert rec["done"] >= 1 and "result" in rec


def test_a_client_killed_mid_pass_resumes_from_s3(s3_env, cluster, client_dir, tmp_path):
    """kill -9 of ``gigadream run`` in octave 0's pass, its workers on the cluster
    (a laptop's client lost, the rented machines still up); the same command then resumes
    after the passes the record on the server holds, to the uninterrupted result."""
    url = s3_env.url("resume/dream.gdstore")
    config = tmp_path / "dream.yaml"
    config.write_text(CONFIGS["dream"].replace("engine: {", "engine: {scheduler: "
                                               f"'{cluster['address']}', "))
    env, mark = marked_env()
    out = tmp_path / "out.tif"
    r = harness(client_dir / "cat.png", out, url, config, "pass:1:3", env={**env, **_env(s3_env)})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr[-2000:]
    assert not out.exists()
    assert_no_orphans(mark)
    record = json.loads(_keys(url)["run.json"])
    assert record["done"] == 0 and "result" not in record
    resumed = harness(client_dir / "cat.png", out, url, config, env=_env(s3_env))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    stages = [ln.split()[1] for ln in resumed.stdout.splitlines() if ln.startswith("stage")]
    assert "ingest" not in stages and "resume" in stages, resumed.stdout
    np.testing.assert_array_equal(read(out), reference(client_dir, "dream"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dream.yaml", "out.tif", "out.tif.yaml"]


@pytest.mark.parametrize("case, message", [
    ("bucket", "bucket s3://no-such-bucket does not exist"),
    ("credentials", r"refused the credentials \(SignatureDoesNotMatch\)"),
    ("endpoint", "at http://127.0.0.1:[0-9]+ cannot be reached"),
])
def test_a_bad_store_url_is_one_line_and_writes_nothing(s3_env, client_dir, tmp_path, case,
                                                         message):
    """``run --store s3://…`` with no such bucket, a wrong secret, a closed port: one line
    that names the store, within seconds, no key in it, nothing written here or there."""
    import re
    s3 = s3_env
    overrides = {"bucket": {}, "credentials": {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
                 "endpoint": {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3server.free_port()}"}}
    bucket = "no-such-bucket" if case == "bucket" else s3.bucket
    url = f"s3://{bucket}/bad/{case}.gdstore"
    t = time.monotonic()
    r = gd(tmp_path, _env(s3, **overrides[case]), "run", client_dir / "cat.png", "-o", "out.jpg",
           "--config", client_dir / "dream.yaml", "--store", url, "-q", timeout=60)
    took = time.monotonic() - t
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert re.match(f"gigadream: error: store {url}: .*{message}", r.stderr), r.stderr
    assert took < 15, took
    assert s3.secret not in r.stderr and s3.key_id not in r.stderr
    assert list(tmp_path.iterdir()) == []            # no output, no OUT.yaml, no folder
    from gigadream.storage import objects
    assert objects.keys_under(s3.url("bad")) == []


def _signed_put(s3, key: str, body: bytes, sent: int) -> int | None:
    """A PUT of ``body`` at ``key``, signed as any S3 client signs it, whose sender stops
    after ``sent`` bytes of the body and drops the connection (as a killed process's
    kernel does); the response's status where it sent all."""
    import http.client
    from urllib.parse import urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    path = f"/{s3.bucket}/{key}"
    request = AWSRequest("PUT", s3.endpoint + path, headers={
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "Content-Length": str(len(body))})
    S3SigV4Auth(Credentials(s3.key_id, s3.secret), "s3", s3server.REGION).add_auth(request)
    at = urlsplit(s3.endpoint)
    conn = http.client.HTTPConnection(at.hostname, at.port, timeout=10)
    conn.putrequest("PUT", path)
    for k, v in request.headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(body[:sent])
    if sent < len(body):
        conn.close()
        return None
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_put_cut_short_leaves_the_old_object(s3_env):
    """What a worker or client killed while writing leaves: a chunk's (or the record's) PUT
    whose body stops halfway stores nothing, and readers see the old object. The engine's
    retries rest on this: a killed tile's chunk is the old one or the whole new one, and a
    retry writes the same bytes over either; the record is the last one written."""
    from gigadream.storage import objects
    url = s3_env.url("cut/chunk")
    old, new = bytes(1 << 20), b"\x01" * (8 << 20)
    objects.put(url, old)
    assert _signed_put(s3_env, "cut/chunk", new, len(new) // 2) is None
    time.sleep(0.3)                        # the server has seen the connection drop
    assert objects.get(url) == old
    assert _signed_put(s3_env, "cut/chunk", new, len(new)) == 200     # whole, it is stored
    assert objects.get(url) == new


def _worker_process(nanny: subprocess.Popen) -> psutil.Process:
    """The worker process a ``dask worker`` nanny started (it runs the tasks)."""
    [worker] = [p for p in psutil.Process(nanny.pid).children()
                if "multiprocessing.spawn" in " ".join(p.cmdline())]
    return worker


def _pass_tiles(events: Path) -> tuple[int, int]:
    """(passes begun, tiles done in the latest) of a run's ``--events`` file."""
    lines = [json.loads(ln) for ln in events.read_text().splitlines()] if events.exists() else []
    began = [i for i, e in enumerate(lines) if e.get("name") == "pass"]
    if not began:
        return 0, 0
    return len(began), sum(e["event"] == "Work" for e in lines[began[-1]:])


def test_a_worker_killed_mid_pass_is_replaced_and_the_result_is_the_same(s3_env, cluster,
                                                                          client_dir):
    """kill -9 of one worker process while it runs tiles of octave 0's pass: Dask runs
    them again on the other worker (and on the one its nanny starts anew); the result is the
    same."""
    from distributed import Client
    url = s3_env.url("killed-worker/dream.gdstore")
    events = client_dir / "killed-worker.jsonl"
    victim = _worker_process(cluster["procs"][1])
    with open(client_dir / "killed-worker.err", "w+") as err, \
            Client(cluster["address"], timeout="30s") as watch:
        address = next(a for a, w in watch.scheduler_info()["workers"].items()
                       if w["name"] == "worker1")
        p = subprocess.Popen([sys.executable, "-m", "gigadream", "run", "cat.png", "-o",
                              "killed-worker.tif", "--config", "dream.yaml", "--store", url,
                              "--scheduler", cluster["address"], "-q", "--events", events],
                             cwd=client_dir, env=_env(s3_env), stderr=err)
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline:
            passes, tiles = _pass_tiles(events)
            if passes == 2 and tiles >= 2 and watch.processing([address])[address]:
                break
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before the kill"
        busy = watch.processing([address])[address]
        victim.kill()
        assert busy, "the killed worker had no tile to run"
        assert p.wait(300) == 0, err.seek(0) or err.read()[-3000:]
    np.testing.assert_array_equal(read(client_dir / "killed-worker.tif"),
                                  reference(client_dir, "dream"))
