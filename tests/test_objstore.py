"""Stores on object storage (``--store s3://bucket/prefix``) against a real S3-compatible
server on loopback (``s3server``: moto's server mode, signatures checked).

A store written to a URL holds the same keys with the same bytes as one written to a folder
by the same calls, reads back the same pixels through gigadream and through zarr, and its run
record is one object. A missing bucket, refused credentials and an unreachable endpoint are
each one line within seconds, with nothing written.
"""
from __future__ import annotations

import dataclasses
import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import s3server
from gigadream.storage import chunks, location, objects
from gigadream.errors import StoreError
from gigadream.storage import store as store_mod
from gigadream.storage.store import Store
from gigadream.storage.views import forget_arrays
from gigadream.tiling import Box, grid

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = s3server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


def _forget() -> None:
    """Drop this process's clients and cached arrays: the next call reads the environment."""
    objects._bucket.cache_clear()
    forget_arrays()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The server's variables in this process's environment, as a user's shell has them."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    _forget()
    yield s3
    _forget()


def _fill(store: Store, rng_seed: int = 0) -> dict:
    """The same writes into ``store``, whatever it is: a record, a source level, a canvas
    on a shifted grid (float16, edge tiles), the input's metadata. Returns what was written."""
    rng = np.random.default_rng(rng_seed)
    shape, tile, offset = (300, 500), 128, (17, 41)
    store.update_record(config={"mode": "identity"}, done=-1)
    source = store.create_source(shape)
    pixels = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    for t in grid(shape, 256):
        source.write(t, pixels[(slice(None), *t.core.slices())])
    canvas = store.canvas(0, 1, shape, tile, offset)
    image = rng.uniform(0, 255, (3, *shape)).astype(np.float16)
    for t in grid(shape, tile, offset):
        canvas.write(t, image[(slice(None), *t.core.slices())])
    store.update_record(done=0, canvas=canvas.record())
    store.keep_metadata({"exif": b"Exif\0\0 bytes", "xmp": b"<x:xmpmeta/>"})
    return {"pixels": pixels, "image": image, "shape": shape}


def _folder_keys(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)).replace(os.sep, "/"): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_store_on_s3_is_the_folder_key_for_key(s3_env, tmp_path, monkeypatch):
    """Same calls, same keys, same bytes; the same pixels back through gigadream and zarr;
    the record is one object that a reopened store reads."""
    # the run's id and the canvas's generation are random; here both stores get the same
    monkeypatch.setattr(store_mod, "new_run_id", lambda: "0" * 32)
    folder = Store.create(tmp_path / "local.gdstore")
    wrote = _fill(folder)
    url = s3_env.url("runs/one.gdstore")
    store = Store.create(url)
    assert store.remote and store.root == url
    _fill(store)

    local = _folder_keys(folder.path)
    remote = {k: objects.get(objects.join(url, k)) for k in objects.keys_under(url)}
    assert sorted(remote) == sorted(local)
    assert [k for k in local if local[k] != remote[k]] == []
    assert any(k.startswith("canvas/o0p1/c/0/") for k in remote)

    _forget()
    again = Store.open(url)
    rec = again.record()
    assert rec["done"] == 0 and rec["config"] == {"mode": "identity"}
    assert json.loads(objects.get(objects.join(url, "run.json"))) == rec
    box = Box(100, 290, 200, 480)      # straddles chunks of both grids
    assert np.array_equal(again.source(0).read_uint8(box),
                          np.moveaxis(wrote["pixels"][(slice(None), *box.slices())], 0, -1))
    canvas = again.view(rec["canvas"])
    assert canvas.layout.remote
    assert np.array_equal(canvas.read(box, None), wrote["image"][(slice(None), *box.slices())])
    # any zarr reader, through zarr's own object store, sees the same pixels
    z = zarr.open_array(store=objects.zarr_store(objects.join(url, "source/0")), mode="r")
    assert np.array_equal(z[:], wrote["pixels"])
    assert again.input_metadata() == {"exif": b"Exif\0\0 bytes", "xmp": b"<x:xmpmeta/>"}

    again.drop_canvases(0)                # object storage has no spares: the canvas is gone
    assert not again.exists("canvas/o0p1") and not again.exists("spare")
    again.remove()
    assert objects.keys_under(url) == []


def test_chunk_write_is_one_put(s3_env):
    """A chunk written twice reads back as the second, whole (a PUT replaces the object)."""
    url = s3_env.url("runs/chunk.gdstore")
    store = Store.create(url)
    view = store.create_source((256, 256))
    lay = view.layout
    for value in (7, 9):
        chunks.write(lay, 0, 0, np.full((3, 256, 256), value, dtype=np.uint8))
    assert np.all(chunks.read(lay, 0, 256, 0, 256) == 9)
    store.remove()


@pytest.mark.parametrize("where", ["folder", "url"])
def test_location_does_the_same_job_at_a_folder_and_a_url(s3_env, tmp_path, where):
    """Every ``location`` helper, at a folder and at a URL: what is written reads back,
    what is there exists and is listed, what is removed is gone."""
    root = str(tmp_path / "loc") if where == "folder" else s3_env.url("loc")
    root = location.store_location(root)
    at = location.join(root, "meta", "run.json")
    assert location.read_text(at) is None and not location.exists(root)
    assert location.files(location.join(root, "meta")) == []
    location.write_text(at, '{"a": 1}')
    location.write_bytes(location.join(root, "meta", "exif"), b"\0\1")
    location.write_bytes(location.join(root, "meta", "deeper", "x"), b"x")
    assert location.read_text(at) == '{"a": 1}'
    assert location.read_bytes(location.join(root, "meta", "exif")) == b"\0\1"
    assert location.files(location.join(root, "meta")) == ["exif", "run.json"]
    assert location.exists(at) and location.exists(location.join(root, "meta"))
    location.write_text(at, "replaced")
    assert location.read_text(at) == "replaced"
    assert location.name(at) == "run.json"
    assert str(location.beside(root, ".yaml")) == str(root) + ".yaml"
    location.remove(location.join(root, "meta"))
    assert not location.exists(location.join(root, "meta")) and location.read_text(at) is None
    location.remove(root)               # nothing there: nothing happens


def _refused(url: str, message: str) -> float:
    """``Store.create(url)`` fails with one line matching ``message``; returns the seconds."""
    _forget()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=message) as e:
        Store.create(url)
    took = time.monotonic() - t0
    assert "\n" not in str(e.value) and took < 10
    return took


def test_missing_bucket(s3_env):
    _refused("s3://no-such-bucket/run.gdstore", "bucket s3://no-such-bucket does not exist")


def test_wrong_credentials(s3_env, monkeypatch):
    url = s3_env.url("runs/refused.gdstore")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _refused(url, "refused the credentials")
    assert s3_env.secret not in url and "not-the-secret" not in url
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret)
    _forget()
    assert objects.keys_under(url) == []            # nothing written


def test_unreachable_endpoint(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3server.free_port()}")
    _refused(s3_env.url("runs/nowhere.gdstore"), "cannot be reached")


def test_cli_missing_bucket_is_one_line(s3_env, tmp_path, photos):
    """The CLI's STORE takes a URL; a bad one is one line and a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "gigadream", "ingest", str(photos["chelsea_jpg"]),
                        "s3://no-such-bucket/x.gdstore"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], p.stderr
    assert s3_env.secret not in p.stderr and s3_env.key_id not in p.stderr
    assert list(tmp_path.iterdir()) == []           # no folder named after the URL


def test_identity_run_through_s3_reproduces_the_input(s3_env, tmp_path):
    """``run --store s3://…`` end to end (ingest, pyramid, two octaves of two passes on a
    worker process that reads the server's variables from its environment, export): the
    input back bit for bit, the store kept on the server with its record, no folder made."""
    from conftest import read, save
    from gigadream.config import load_config
    from gigadream.pipeline import run
    rng = np.random.default_rng(5)
    image = save(rng.integers(0, 256, (151, 237, 3), dtype=np.uint8), tmp_path / "odd.png")
    url = s3_env.url("runs/identity.gdstore")
    cfg = load_config(None, ["mode=identity", "tiling.tile=64", "dream.octaves=2",
                             "dream.passes=2", "export.tiff_compression=none"])
    run(image, cfg, tmp_path / "out.tif", store_path=url)
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), read(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.png", "out.tif", "out.tif.yaml"]
    _forget()
    rec = Store.open(url).record()
    assert rec["done"] == 3 and "result" in rec
    assert s3_env.secret not in json.dumps(rec) + (tmp_path / "out.tif.yaml").read_text()
    Store.open(url).remove()


def test_an_image_streams_from_s3(s3_env, photos):
    """libvips decodes an object through ``open_source`` as it decodes the file."""
    import pyvips
    from conftest import read
    url = s3_env.url("inputs/chelsea.jpg")
    objects.put(url, photos["chelsea_jpg"].read_bytes())
    im = pyvips.Image.new_from_source(objects.open_source(url), "", access="sequential")
    assert np.array_equal(im.numpy(), read(photos["chelsea_jpg"]))
    from gigadream.errors import InputError
    with pytest.raises(InputError, match="not found"):
        objects.open_source(s3_env.url("inputs/missing.jpg"))


# -- input and output at URLs ------------------------------------------------------------

def _uploads(server) -> list[str]:
    """Keys of the multipart uploads begun and neither completed nor aborted."""
    import boto3
    s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name=s3server.REGION,
                      aws_access_key_id=server.key_id, aws_secret_access_key=server.secret)
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=server.bucket).get("Uploads", [])]


def test_run_from_an_input_url_to_an_output_url(s3_env, tmp_path):
    """``run s3://…/in.png -o s3://…/out.jpg``: the same JPEG, byte for byte, as the run from
    the file to a file; the input's record names the object (size, ETag, its ends' hash: a
    second run with the kept store resumes, only the export left); no local file made."""
    from conftest import save
    from gigadream.config import load_config
    from gigadream.pipeline import run
    rng = np.random.default_rng(6)
    # noise: a PNG over 2 MiB, so its fingerprint reads both ends
    image = save(rng.integers(0, 256, (700, 1100, 3), dtype=np.uint8), tmp_path / "in.png")
    assert image.stat().st_size > 2 << 20
    src, out = s3_env.url("in/noise.png"), s3_env.url("out/noise.jpg")
    objects.put(src, image.read_bytes())
    cfg = load_config(None, ["mode=identity", "tiling.tile=256", "dream.octaves=1",
                             "dream.passes=1"])
    here = tmp_path / "here"
    here.mkdir()
    run(image, cfg, here / "noise.jpg")
    store = s3_env.url("runs/urls.gdstore")
    run(src, cfg, out, store_path=store)
    assert objects.get(out) == (here / "noise.jpg").read_bytes()
    assert b"mode: identity" in objects.get(out + ".yaml")
    rec = Store.open(store).record()["input"]
    assert rec["name"] == "noise.png" and rec["size"] == image.stat().st_size and rec["etag"]
    run(src, cfg, out, store_path=store, overwrite=True)        # resumed: same input
    assert objects.get(out) == (here / "noise.jpg").read_bytes()
    assert _uploads(s3_env) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "in.png"]
    Store.open(store).remove()
    objects.delete_under(s3_env.url("out"))


class _Noise:
    """A view of random pixels whose read fails at row ``fail_at``."""

    def __init__(self, shape, fail_at=None):
        self.shape, self.fail_at = shape, fail_at

    def read_uint8(self, box):
        if self.fail_at is not None and box.y1 > self.fail_at:
            raise OSError("the store went away")
        rng = np.random.default_rng(box.y0)
        return rng.integers(0, 256, (box.y1 - box.y0, box.x1 - box.x0, 3), dtype=np.uint8)


def test_an_upload_that_fails_leaves_nothing(s3_env, monkeypatch):
    """An export to a URL that fails after parts were sent: no object under the name, and
    the multipart upload aborted; the same export whole is there, a JPEG of its size."""
    import pyvips
    from gigadream.export import export
    monkeypatch.setattr(objects, "PART_BYTES", 5 << 20)     # S3's least: parts go early
    url = s3_env.url("out/failed.jpg")
    sent = []
    put_part = objects.upload

    def upload(*a, **k):        # count what reached the writer before the failure
        with put_part(*a, **k) as w:
            class Counted:
                def write(self, data):
                    sent.append(len(data))
                    return w.write(data)
            yield Counted()
    import contextlib
    monkeypatch.setattr(objects, "upload", contextlib.contextmanager(upload))
    with pytest.raises(OSError, match="went away"):
        export(_Noise((2048, 2048), fail_at=1800), url)
    assert sum(sent) > 5 << 20                      # a part had gone
    assert objects.head(url, "output") is None and _uploads(s3_env) == []
    export(_Noise((2048, 2048)), url)
    im = pyvips.Image.new_from_buffer(objects.get(url), "")
    assert (im.width, im.height) == (2048, 2048)
    objects.delete_under(s3_env.url("out"))


@pytest.mark.parametrize("args, message", [
    (["run", "{missing}", "-o", "{out}"], r"input s3://\S+/in/missing.jpg not found"),
    (["run", "{src}", "-o", "s3://no-such-bucket/x.jpg"],
     r"output s3://no-such-bucket/x.jpg: bucket s3://no-such-bucket does not exist"),
    (["run", "{src}"], r"is an object store's URL: name the result with -o"),
    (["run", "{src}", "-o", "{out_tif}"], r"only a JPEG is uploaded to a URL"),
    (["ingest", "{missing}", "{tmp}/x.gdstore"], r"input s3://\S+ not found"),
    (["run", "{src}", "-o", "{out}", "--set", "mode=style", "--set", "style={missing}"],
     r"style image s3://\S+/in/missing.jpg not found; check the URL"),
    (["preview", "{src}"], r"preview reads a file on this machine, not an object's URL; copy"),
    (["profile", "{src}", "-o", "{tmp}/report"], r"profile reads a file on this machine"),
])
def test_url_input_and_output_refused_in_one_line(s3_env, tmp_path, photos, capsys, args,
                                                  message):
    from gigadream.cli import main
    src = s3_env.url("in/chelsea.jpg")
    objects.put(src, photos["chelsea_jpg"].read_bytes())
    fill = {"missing": s3_env.url("in/missing.jpg"), "src": src, "tmp": str(tmp_path),
            "out": s3_env.url("refused/x.jpg"), "out_tif": s3_env.url("refused/x.tif")}
    mode = [] if "mode=style" in args else ["--set", "mode=identity"]
    code = main([a.format(**fill) for a in args] + mode)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert objects.keys_under(s3_env.url("refused")) == [] and list(tmp_path.iterdir()) == []


def test_plan_of_an_input_url_is_the_plan_of_the_file(s3_env, photos, capsys):
    """``plan s3://…``: the object's header (ranged reads) gives the plan the file gives."""
    from gigadream.cli import main
    src = s3_env.url("in/plan.jpg")
    objects.put(src, photos["chelsea_jpg"].read_bytes())
    args = ["--set", "mode=identity", "--set", "tiling.tile=128"]
    assert main(["plan", str(photos["chelsea_jpg"]), *args]) == 0
    here = capsys.readouterr().out
    assert main(["plan", src, *args]) == 0
    there = capsys.readouterr().out
    assert "451×300 px" in here and "tiles" in here
    # the model time is measured afresh each time; the rest is the same
    assert there.split("this machine")[0] == here.split("this machine")[0]


def test_a_task_s_puts_finish_with_it(s3_env):
    """Within ``chunks.task_io`` a chunk's PUT goes on in the background: the block ends
    with every PUT done, or with the first failure; a chunk read twice is fetched once."""
    url = s3_env.url("runs/task.gdstore")
    store = Store.create(url)
    lay = store.create_source((512, 512)).layout
    with chunks.task_io():
        for i in range(4):
            chunks.write(lay, i // 2, i % 2, np.full((3, 256, 256), i, dtype=np.uint8))
    assert [np.unique(chunks.read(lay, 256 * (i // 2), 256 * (i // 2 + 1),
                                  256 * (i % 2), 256 * (i % 2 + 1))).tolist()
            for i in range(4)] == [[0], [1], [2], [3]]
    got = []
    get = objects.get_buffer
    with chunks.task_io():
        objects.get_buffer = lambda u: got.append(u) or get(u)
        try:
            chunks.read(lay, 0, 300, 0, 300)
            chunks.read(lay, 100, 400, 100, 400)
        finally:
            objects.get_buffer = get
    assert len(got) == 4
    missing = dataclasses.replace(lay, path="s3://no-such-bucket/x/source/0")
    with pytest.raises(StoreError, match="does not exist"):
        with chunks.task_io():
            chunks.write(missing, 0, 0, np.zeros((3, 256, 256), dtype=np.uint8))
    store.remove()
