"""Ingest: what users feed (formats, colour spaces, bit depths, orientation) and bad input."""
import mmap
import re
import threading

import numpy as np
import pytest
import pyvips
import skimage.data
import zarr

from conftest import save, sha256
from gigadream.errors import InputError, StoreError
from gigadream import ingest as ingest_mod
from gigadream.ingest import _Pyramid, _Rows, _Stream, _stream, build_pyramid, ingest
from gigadream.resample import octave_shape
from gigadream.storage.store import Store

CHELSEA = skimage.data.chelsea()          # (300, 451, 3)


def ingested(path, tmp_path) -> np.ndarray:
    store = Store.create(tmp_path / "store")
    view = ingest(path, store)
    return view.array[:].transpose(1, 2, 0)


@pytest.mark.parametrize("suffix,opts", [(".png", {}), (".tif", {}), (".webp", {"lossless": True}),
                                         (".jpg", {"Q": 100})])
def test_formats_arrive_as_decoded(tmp_path, suffix, opts):
    f = save(CHELSEA, tmp_path / f"in{suffix}", **opts)
    ref = pyvips.Image.new_from_file(str(f)).numpy()
    out = ingested(f, tmp_path)
    assert out.dtype == np.uint8 and out.shape == CHELSEA.shape
    np.testing.assert_array_equal(out, ref)


def test_grayscale_becomes_three_equal_bands(tmp_path):
    f = save(skimage.data.camera(), tmp_path / "grey.png")
    out = ingested(f, tmp_path)
    assert out.shape == (512, 512, 3)
    np.testing.assert_array_equal(out[..., 0], skimage.data.camera())
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_is_flattened_onto_white(tmp_path):
    rgba = np.dstack([CHELSEA, np.full(CHELSEA.shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0                                   # top rows transparent
    out = ingested(save(rgba, tmp_path / "rgba.png"), tmp_path)
    assert out.shape == CHELSEA.shape
    assert (out[:100] == 255).all()
    np.testing.assert_array_equal(out[100:], CHELSEA[100:])


def test_16_bit_becomes_8_bit(tmp_path):
    im = pyvips.Image.new_from_array(CHELSEA).copy(interpretation="srgb").colourspace("rgb16")
    f = tmp_path / "deep.png"
    im.pngsave(str(f))
    assert pyvips.Image.new_from_file(str(f)).format == "ushort"
    out = ingested(f, tmp_path)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - CHELSEA).max() <= 1


def test_cmyk_with_icc_profile_becomes_srgb(tmp_path):
    f = tmp_path / "cmyk.jpg"
    pyvips.Image.new_from_array(CHELSEA).copy(interpretation="srgb") \
        .icc_transform("cmyk", input_profile="srgb").jpegsave(str(f), Q=100)
    src = pyvips.Image.new_from_file(str(f))
    assert src.interpretation == "cmyk" and src.bands == 4 and src.get_typeof("icc-profile-data")
    out = ingested(f, tmp_path)
    assert out.shape == CHELSEA.shape
    # A CMYK round trip loses some gamut; read as RGB channels it would be far off.
    assert np.abs(out.astype(int) - CHELSEA).mean() < 10
    assert np.abs(src.numpy()[..., :3].astype(int) - CHELSEA).mean() > 60


@pytest.mark.parametrize("orient", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orient):
    im = pyvips.Image.new_from_array(CHELSEA).copy(interpretation="srgb")
    im.set_type(pyvips.GValue.gint_type, "orientation", orient)
    f = tmp_path / f"o{orient}.jpg"
    im.jpegsave(str(f), Q=100)
    upright = pyvips.Image.new_from_file(str(f)).autorot().numpy()
    out = ingested(f, tmp_path)
    np.testing.assert_array_equal(out, upright)


def test_store_is_ome_zarr_with_a_pyramid(tmp_path, photos):
    store = Store.create(tmp_path / "store")
    ingest(photos["astronaut_png"], store)
    levels = build_pyramid(store, 3, 1.5)
    assert [v.shape for v in levels] == [(512, 512), (341, 341), (228, 228)]
    g = zarr.open_group(str(tmp_path / "store" / "source"), mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    assert g.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 2.25, 2.25]
    arr = zarr.open_array(str(tmp_path / "store" / "source" / "1"), mode="r")
    assert arr.shape == (3, 341, 341) and arr.dtype == np.uint8
    # The coarse level is a faithful smaller picture: close to libvips' own resize.
    ref = pyvips.Image.new_from_file(str(photos["astronaut_png"])).resize(341 / 512).numpy()
    assert np.abs(arr[:].transpose(1, 2, 0).astype(int) - ref[:341, :341]).mean() < 4


def _truncated(tmp_path):
    f = save(CHELSEA, tmp_path / "whole.jpg", Q=95)
    t = tmp_path / "truncated.jpg"
    t.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return t


def _text(tmp_path):
    f = tmp_path / "notes.jpg"
    f.write_text("these are my holiday notes, not a picture\n")
    return f


def _empty(tmp_path):
    f = tmp_path / "empty.jpg"
    f.write_bytes(b"")
    return f


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing.jpg", r"input .*missing.jpg not found; check the path"),
    (lambda d: d, r"is a folder; give an image file"),
    (_empty, r"is empty \(0 bytes\)"),
    (_text, r"cannot be read as an image .*give a JPEG, PNG, TIFF"),
    (_truncated, r"(truncated|damaged|cannot be read)"),
])
def test_bad_input_is_one_clear_line_and_untouched(tmp_path, make, message):
    f = make(tmp_path)
    before = sha256(f) if f.is_file() else None
    store = Store.create(tmp_path / "store")
    with pytest.raises(InputError, match=message) as e:
        ingest(f, store)
    assert "\n" not in str(e.value)
    if before:
        assert sha256(f) == before


@pytest.mark.parametrize("message,line", [
    ("unable to load from file x.jpg\n  VipsForeignLoad: \"x.jpg\" is not a known file format\n",
     'VipsForeignLoad: "x.jpg" is not a known file format'),    # pyvips indents its detail
    ("VipsJpeg: premature end of JPEG file\nVipsForeignLoad: load failed\n",
     "VipsJpeg: premature end of JPEG file"),             # the loader's summary comes last
    ("VipsForeignLoad: only this\n", "VipsForeignLoad: only this"),
    ("", "Exception"),
])
def test_a_libvips_error_is_quoted_by_its_cause(message, line):
    assert ingest_mod._vips_error(Exception(message)) == line


def test_store_refuses_a_folder_holding_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(StoreError, match="holds other data"):
        Store.create(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    with pytest.raises(StoreError, match="is not a gigadream store"):
        Store.open(tmp_path / "mine")


class _Target:                          # stands in for pyvips.TargetCustom
    def on_write(self, handler):
        self.write = handler


class _Pieces:
    """An image that libvips would write to a target in ``pieces`` of raw bytes."""

    def __init__(self, pieces):
        self.pieces, self.taken = pieces, []

    def rawsave_target(self, target):
        self.taken.extend(target.write(p) for p in self.pieces)


def _resized_like_libvips(image: np.ndarray, shapes) -> list[np.ndarray]:
    """Each level libvips' resize of the whole level before it (the pyramid's definition)."""
    levels, prev = [], pyvips.Image.new_from_array(image)
    for h, w in shapes:
        prev = prev.resize(w / prev.width, vscale=h / prev.height,
                           kernel=ingest_mod.PYRAMID_KERNEL, gap=0)
        levels.append(prev.numpy())
        prev = pyvips.Image.new_from_array(levels[-1])
    return levels


def _planar_chunks(view) -> np.ndarray:
    """All chunk files of a level as one planar image, padded to whole chunks."""
    lay = view.layout
    ny, nx = (-(-n // 256) for n in view.shape)
    return np.block([[np.fromfile(lay.file(iy, ix), dtype=np.uint8).reshape(3, 256, 256)
                      for ix in range(nx)] for iy in range(ny)])


def test_a_stream_cut_anywhere_lands_in_level_0_and_the_pyramid(tmp_path, monkeypatch):
    """libvips hands the raw pixels over in pieces that need not end on a line: one byte,
    part of a line, many lines across a chunk-row's end. Every pixel lands in its chunk,
    the outside of the image (right and bottom edge chunks) is zero, zarr's fill, and the
    levels made from the same stream are libvips' resize of the level before."""
    rng = np.random.default_rng(0)
    h, w = 600, 451
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    data, line = image.tobytes(), w * 3
    cuts = {1, 2, 3, line - 1, line + 1, 120 * line + 7, 290 * line + line // 2}
    cuts |= set(rng.integers(3 * line, 500 * line, 300).tolist())
    cuts = sorted(cuts)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    monkeypatch.setattr(pyvips, "TargetCustom", _Target)
    store = Store.create(tmp_path / "store")
    shapes = [octave_shape((h, w), 1.4, k) for k in (1, 2, 3)]
    levels = [store.create_source(s, f"source/{k}") for k, s in enumerate(shapes, start=1)]
    fed = _Pieces(pieces)
    _stream(fed, store.create_source((h, w)), None, tmp_path / "in.raw", levels)
    assert fed.taken == [len(p) for p in pieces]
    planar_ = _planar_chunks(store.source(0))
    assert planar_.shape == (3, 768, 512)
    np.testing.assert_array_equal(planar_[:, :h, :w], image.transpose(2, 0, 1))
    assert not planar_[:, h:].any() and not planar_[:, :, w:].any()
    for k, ref in enumerate(_resized_like_libvips(image, shapes), start=1):
        np.testing.assert_array_equal(store.source(k).array[:].transpose(1, 2, 0), ref)
        planar_ = _planar_chunks(store.source(k))
        assert not planar_[:, ref.shape[0]:].any() and not planar_[:, :, ref.shape[1]:].any()


def test_one_piece_longer_than_the_lead_goes_in(tmp_path, monkeypatch):
    """libvips waits while it is LEAD rows ahead of the readers, yet a single write of more
    rows than that is taken whole (waiting for room for all of it would wait forever)."""
    h, w = ingest_mod.LEAD * 2 + 5, 64
    image = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
    monkeypatch.setattr(pyvips, "TargetCustom", _Target)
    store = Store.create(tmp_path / "store")
    levels = [store.create_source(octave_shape((h, w), 2.0, 1), "source/1")]
    done = threading.Thread(target=_stream, args=(_Pieces([image.tobytes()]),
                                                  store.create_source((h, w)), None,
                                                  tmp_path / "in.raw", levels), daemon=True)
    done.start()
    done.join(timeout=60)
    assert not done.is_alive(), "ingest waits forever"
    np.testing.assert_array_equal(store.source(0).array[:].transpose(1, 2, 0), image)
    ref = _resized_like_libvips(image, [levels[0].shape])[0]
    np.testing.assert_array_equal(store.source(1).array[:].transpose(1, 2, 0), ref)


@pytest.mark.parametrize("shape,scale,octaves", [((1100, 900), 1.4, 4), ((1000, 1300), 2.0, 5),
                                                 ((700, 600), 4.0, 3), ((300, 5), 1.5, 3)])
def test_pyramid_made_as_rows_arrive_is_the_whole_images_resize(tmp_path, monkeypatch, shape,
                                                                 scale, octaves):
    """Rows arrive a few at a time; each level is made as far as the rows in allow, and the
    rows no level needs any more go back to the kernel at once (page by page here, so any
    row handed back too early reads as zeros). The levels equal libvips' resize of the whole
    level before, bit for bit: no band read a row that had not arrived or was gone."""
    monkeypatch.setattr(ingest_mod, "HUGE_PAGE", mmap.PAGESIZE)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    store = Store.create(tmp_path / "store")
    shapes = [octave_shape(shape, scale, k) for k in range(1, octaves)]
    levels = [store.create_source(s, f"source/{k}") for k, s in enumerate(shapes, start=1)]
    rows = _Rows(*shape)
    freed = []
    pyramid = _Pyramid(rows, levels, release=lambda r: (freed.append(r), rows.free_below(r)))
    y, arrivals = 0, []
    while y < shape[0]:
        n = min(shape[0] - y, int(rng.integers(1, 40)))
        rows.pixels[y:y + n] = image[y:y + n]
        y += n
        pyramid.advance(y)
        arrivals.append(y)
    assert [lv.made for lv in pyramid.levels] == [s[0] for s in shapes]
    # At once: after each arrival, every row is handed back but the last two filter reaches
    # (the rows the next output row reads, and those it waits for), whatever the image.
    reach = pyramid.levels[0].reach
    assert len(freed) == len(arrivals)
    for arrived, released in zip(arrivals, freed):
        assert released >= arrived - 2 * reach - 1, (arrived, released, reach)
    for k, ref in enumerate(_resized_like_libvips(image, shapes), start=1):
        assert store.source(k).shape == shapes[k - 1]
        np.testing.assert_array_equal(store.source(k).array[:].transpose(1, 2, 0), ref)


def test_a_failing_chunk_write_stops_the_decoder(tmp_path, monkeypatch):
    """A write that fails (a full disk) ends ingest with its error at once; libvips is told
    to stop at its next write, so no decoding thread is left behind."""
    from gigadream.storage import chunks
    f = save(np.random.default_rng(1).integers(0, 256, (1500, 2000, 3), dtype=np.uint8),
             tmp_path / "in.jpg", Q=90)
    writes = []

    def full_disk(*args):
        writes.append(args[1:3])
        if len(writes) == 3:
            raise OSError(28, "No space left on device")

    returned, real_take = [], _Stream.take

    def take(self, data):
        returned.append(real_take(self, data))
        return returned[-1]

    monkeypatch.setattr(chunks, "write", full_disk)
    monkeypatch.setattr(_Stream, "take", take)
    with pytest.raises(OSError, match="No space left"):
        ingest(f, Store.create(tmp_path / "store"))
    assert len(writes) == 3
    # libvips heeded the first refusal: it wrote nothing more (1500 rows were to come).
    assert returned.count(-1) == 1 and returned[-1] == -1 and len(returned) < 1000
    assert not [t for t in threading.enumerate() if t.name == "gigadream-decode"]


def test_a_truncated_jpeg_says_how_far_it_decoded(tmp_path):
    f = save(np.random.default_rng(2).integers(0, 256, (1200, 800, 3), dtype=np.uint8),
             tmp_path / "whole.jpg", Q=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cannot be decoded past row (\d+) .*truncated") as e:
        ingest(cut, Store.create(tmp_path / "store"))
    row = int(re.search(r"past row (\d+)", str(e.value)).group(1))
    assert 0 < row < 1200


def test_a_stream_that_ends_early_is_refused(tmp_path, monkeypatch):
    """Should libvips end the raw stream early without an error, ingest says so rather than
    leave the rest of the image as zeros."""
    monkeypatch.setattr(pyvips, "TargetCustom", _Target)
    store = Store.create(tmp_path / "store")
    half = _Pieces([bytes(100 * 451 * 3)])          # 100 of its 300 rows, then the end
    with pytest.raises(InputError, match=r"in.jpg ended after row 100 of 300; .*truncated"):
        _stream(half, store.create_source((300, 451)), None, tmp_path / "in.jpg",
                [store.create_source((150, 226), "source/1")])
    assert half.taken == [100 * 451 * 3]


def test_a_failing_pyramid_write_stops_every_thread(tmp_path, monkeypatch):
    """A pyramid level's write that fails (a full disk) ends ingest with its error at once:
    libvips and level 0's writer stop where they are, no thread is left behind, and the
    store is not taken for an ingested one."""
    from gigadream.storage import chunks
    f = save(np.random.default_rng(3).integers(0, 256, (1500, 2000, 3), dtype=np.uint8),
             tmp_path / "in.jpg", Q=90)
    real_write, real_take, returned = chunks.write, _Stream.take, []

    def full_disk(lay, iy, ix, a):
        if lay.path.endswith("source/1"):
            raise OSError(28, "No space left on device")
        real_write(lay, iy, ix, a)

    def take(self, data):
        returned.append(real_take(self, data))
        return returned[-1]

    monkeypatch.setattr(chunks, "write", full_disk)
    monkeypatch.setattr(_Stream, "take", take)
    store = Store.create(tmp_path / "store")
    # chunks.py's decoding pool lives as long as the process (an earlier test may have
    # started it): only threads that ingest starts must be gone
    before = set(threading.enumerate())
    with pytest.raises(OSError, match="No space left"):
        ingest(f, store, octaves=3, scale=1.4)
    assert returned.count(-1) == 1 and returned[-1] == -1 and len(returned) < 1500
    assert not [t for t in set(threading.enumerate()) - before
                if t.name.startswith("gigadream-")]
    assert not store.has_source()


@pytest.mark.parametrize("orient", [3, 6])
def test_a_rotated_photos_pyramid_is_the_upright_photos(tmp_path, orient):
    """EXIF orientation: every level is upright, of the upright image's octave shapes, and
    is the pyramid of the upright image to within libvips' rounding (resizing rows before
    columns or after: a level off by one at most, per level down)."""
    photo = np.asarray(pyvips.Image.new_from_array(skimage.data.astronaut())
                       .resize(1.5).crop(0, 0, 700, 600).numpy())
    im = pyvips.Image.new_from_array(photo).copy(interpretation="srgb")
    im.set_type(pyvips.GValue.gint_type, "orientation", orient)
    f = tmp_path / f"o{orient}.jpg"
    im.jpegsave(str(f), Q=100)
    upright = pyvips.Image.new_from_file(str(f)).autorot().numpy()
    store = Store.create(tmp_path / "store")
    ingest(f, store, octaves=3, scale=1.4)
    shapes = [octave_shape(upright.shape[:2], 1.4, k) for k in (1, 2)]
    np.testing.assert_array_equal(store.source(0).array[:].transpose(1, 2, 0), upright)
    for k, ref in enumerate(_resized_like_libvips(upright, shapes), start=1):
        got = store.source(k).array[:].transpose(1, 2, 0).astype(int)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= k
    assert not (tmp_path / "store" / "source" / "raw").exists()


def _gd(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_a_store_from_the_ingest_command_serves_run(tmp_path):
    """`gigadream ingest` makes the pyramid the config's octaves need; `run --store` takes
    it as it is (no ingest, the levels' chunk files untouched). A run with other octaves
    on a store ingested with the defaults remakes the levels from level 0 instead, as
    ingest would have made them, and drops the level it does not use."""
    import json
    rng = np.random.default_rng(4)
    image = np.clip(skimage.data.astronaut()[:, :480].astype(int)
                    + rng.normal(0, 9, (512, 480, 1)), 0, 255).astype(np.uint8)
    src = save(image, tmp_path / "in.png")
    level0 = pyvips.Image.new_from_file(str(src)).numpy()
    identity = ["--set", "mode=identity", "--set", "dream.passes=1", "--set", "tiling.tile=128",
                "--quiet"]
    store = tmp_path / "store"
    assert _gd("ingest", src, store, "--set", "dream.octaves=3", "--quiet").returncode == 0
    chunk_files = sorted(p for p in (store / "source").rglob("*") if p.is_file()
                         and "c" in p.relative_to(store).parts)
    stamps = [p.stat().st_mtime_ns for p in chunk_files]
    r = _gd("run", src, "-o", tmp_path / "a.tif", "--store", store, "--set", "dream.octaves=3",
            "--events", tmp_path / "a.jsonl", *identity)
    assert r.returncode == 0, r.stderr
    stages = [json.loads(ln).get("name") for ln in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert "ingest" not in stages and "pyramid" in stages
    assert [p.stat().st_mtime_ns for p in chunk_files] == stamps
    np.testing.assert_array_equal(pyvips.Image.new_from_file(str(tmp_path / "a.tif")).numpy(),
                                  level0)

    other = tmp_path / "other"
    assert _gd("ingest", src, other, "--quiet").returncode == 0          # 4 octaves × 1.4
    assert (other / "source" / "3").is_dir()
    r = _gd("run", src, "-o", tmp_path / "b.tif", "--store", other, "--set", "dream.octaves=3",
            "--set", "dream.octave_scale=2.0", *identity)
    assert r.returncode == 0, r.stderr
    st = Store.open(other)
    assert st.record()["pyramid"] == {"levels": 3, "scale": 2.0}
    shapes = [octave_shape(level0.shape[:2], 2.0, k) for k in (1, 2)]
    for k, ref in enumerate(_resized_like_libvips(level0, shapes), start=1):
        np.testing.assert_array_equal(st.source(k).array[:].transpose(1, 2, 0), ref)
    assert not (other / "source" / "3").exists()
    np.testing.assert_array_equal(pyvips.Image.new_from_file(str(tmp_path / "b.tif")).numpy(),
                                  level0)
