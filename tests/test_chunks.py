"""chunks.py reads and writes the store's chunk files itself: zarr must agree, both ways."""
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, TransposeCodec, ZstdCodec

from gigadream.storage import chunks
from gigadream.storage.pixels import interleaved, to_uint8
from gigadream.storage.store import Store
from gigadream.storage.views import ArrayView
from gigadream.tiling import Box, grid

CODECS = {"raw": None, "lz4": BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle"),
          "bitshuffle": BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")}


def make(path, dtype, codec, shape=(3, 300, 520), chunk=(3, 128, 128)):
    return zarr.create_array(store=str(path), shape=shape, chunks=chunk, dtype=dtype,
                             compressors=[codec] if codec else None, fill_value=0)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_what_zarr_wrote_reads_back_here_and_what_we_wrote_reads_in_zarr(tmp_path, codec, dtype):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (3, 300, 520)).astype(dtype)
    ours, theirs = make(tmp_path / "ours", dtype, CODECS[codec]), make(tmp_path / "theirs", dtype, CODECS[codec])
    theirs[:, :200, :] = pixels[:, :200, :]                 # rows 200-299: never written
    lay = chunks.layout(str(tmp_path / "ours"))
    assert lay is not None and lay.chunk == (128, 128)
    for iy in range(3):
        for ix in range(5):
            if iy < 2:
                chunks.write(lay, iy, ix, pixels[:, iy * 128:(iy + 1) * 128, ix * 128:(ix + 1) * 128])
    read_back = zarr.open_array(str(tmp_path / "ours"), mode="r")[:]
    assert np.array_equal(read_back[:, :256], pixels[:, :256])
    assert (read_back[:, 256:] == 0).all()
    lay_theirs = chunks.layout(str(tmp_path / "theirs"))
    for y0, y1, x0, x1 in [(0, 300, 0, 520), (5, 17, 3, 400), (127, 129, 127, 129),
                           (190, 260, 500, 520), (299, 300, 519, 520)]:
        got = chunks.read(lay_theirs, y0, y1, x0, x1)
        want = np.where(np.arange(300)[None, :, None] < 200, pixels, 0)[:, y0:y1, x0:x1]
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, want), (y0, y1, x0, x1)


# Arrays that chunks.py does not read or write itself (chunks.layout is None), each one step
# away from a layout it handles: (create_array arguments, uncompressed unless they say, dtype).
OTHER_LAYOUTS = {
    "channels in separate chunks": ({"chunks": (1, 128, 128)}, "uint8"),
    "zarr v2": ({"chunks": (3, 128, 128), "zarr_format": 2}, "uint8"),
    "zstd, not blosc": ({"chunks": (3, 128, 128), "compressors": [ZstdCodec(level=1)]}, "uint8"),
    "big-endian bytes": ({"chunks": (3, 128, 128), "serializer": BytesCodec(endian="big")},
                         "uint16"),
    "blosc of another typesize": ({"chunks": (3, 128, 128), "compressors": [BloscCodec(
        cname="lz4", clevel=1, shuffle="shuffle", typesize=4)]}, "uint16"),
    "a transpose before the bytes": ({"chunks": (3, 128, 128),
                                      "filters": [TransposeCodec(order=(0, 2, 1))]}, "float16"),
}


@pytest.mark.parametrize("name", OTHER_LAYOUTS)
def test_other_layouts_are_left_to_zarr(tmp_path, name):
    """An array of another layout is read and written through zarr: the store's views give
    and take the same pixels as zarr's own slicing."""
    kw, dtype = OTHER_LAYOUTS[name]
    arr = zarr.create_array(store=str(tmp_path / "a"), shape=(3, 300, 520), dtype=dtype,
                            fill_value=0, **{"compressors": None, **kw})
    assert chunks.layout(str(tmp_path / "a")) is None
    pixels = np.random.default_rng(4).integers(0, 256, (3, 300, 520)).astype(dtype)
    arr[:, :256] = pixels[:, :256]                        # zarr writes the top two chunk rows
    view = ArrayView(str(tmp_path), "a", (300, 520))
    for t in grid((300, 520), 128):                       # the view writes the last one
        if t.row == 2:
            view.write(t, pixels[(slice(None), *t.core.slices())].astype(np.float32))
    assert np.array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[:], pixels)
    for box in [Box(0, 300, 0, 520), Box(5, 17, 3, 400), Box(127, 260, 127, 129),
                Box(299, 300, 519, 520)]:
        want = pixels[(slice(None), *box.slices())]
        assert np.array_equal(view.read(box), want.astype(np.float32)), box
        assert np.array_equal(view.read_uint8(box), to_uint8(want).transpose(1, 2, 0)), box


def test_blosc_of_any_cname_is_read_and_written_here(tmp_path):
    zstd = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2)
    pixels = np.random.default_rng(5).integers(0, 1 << 16, (3, 300, 520)).astype(np.uint16)
    theirs = make(tmp_path / "theirs", "uint16", zstd)
    ours = make(tmp_path / "ours", "uint16", zstd)
    theirs[:] = pixels
    lay = chunks.layout(str(tmp_path / "theirs"))
    assert lay is not None and lay.codec is not None
    assert np.array_equal(chunks.read(lay, 0, 300, 0, 520), pixels)
    lay = chunks.layout(str(tmp_path / "ours"))
    for iy in range(3):
        for ix in range(5):
            chunks.write(lay, iy, ix, pixels[:, iy * 128:(iy + 1) * 128, ix * 128:(ix + 1) * 128])
    assert np.array_equal(ours[:], pixels)


def test_no_array_has_no_layout(tmp_path):
    assert chunks.layout(str(tmp_path / "missing")) is None
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text("{not json")
    assert chunks.layout(str(tmp_path / "junk")) is None


def test_views_through_chunks_match_zarr_slicing(tmp_path):
    """The store's views (offset canvases, edge tiles) agree with zarr's own slicing."""
    st = Store.create(tmp_path / "s")
    view = st.canvas(0, 0, (700, 900), 256, (100, 37))
    rng = np.random.default_rng(1)
    image = rng.uniform(-3, 258, (3, 700, 900)).astype(np.float32)
    for t in grid(view.shape, 256, (100, 37)):
        view.write(t, image[(slice(None), *t.core.slices())])
    arr = zarr.open_array(str(tmp_path / "s" / view.name), mode="r")
    box = Box(13, 690, 250, 899)
    want = arr[:, 13 + 100:690 + 100, 250 + 37:899 + 37]
    assert np.array_equal(view.read(box), want.astype(np.float32))
    assert np.array_equal(view.read_uint8(box), to_uint8(want.astype(np.float32)).transpose(1, 2, 0))
    assert np.array_equal(view.read(Box(0, 700, 0, 900)), image.astype(np.float16).astype(np.float32))


def test_layout_helpers_round_trip():
    a = np.random.default_rng(2).integers(0, 255, (3, 5, 7), dtype=np.uint8)
    assert np.array_equal(interleaved(a), a.transpose(1, 2, 0))
    h = np.random.default_rng(3).integers(0, 1 << 16, 4096, dtype=np.uint16).view(np.float16)
    want = np.clip(np.rint(np.nan_to_num(h.astype(np.float32))), 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(h), want)


def test_a_canvas_takes_writes_of_its_open_generation_only(tmp_path):
    """A canvas opened for a pass takes its tasks' chunks; a task of the opening before
    (the same canvas two passes back), or of the pass once sealed, writes nothing; a
    canvas that is gone is not made again by a late write."""
    st = Store.create(tmp_path / "s")
    old = st.canvas(0, 0, (300, 400), 128, (0, 0))
    new = st.canvas(0, 0, (300, 400), 128, (0, 0))     # the same geometry: reused in place
    assert old.generation != new.generation and old.run == new.run == st.run != ""
    t = grid(new.shape, 128)[0]
    ones, twos = np.ones((3, 128, 128), np.float32), np.full((3, 128, 128), 2, np.float32)
    new.write(t, ones)
    with pytest.raises(chunks.StaleWrite):
        old.write(t, twos)
    st.seal(new)
    with pytest.raises(chunks.StaleWrite):
        new.write(t, twos)
    assert np.array_equal(new.read(t.core), ones)
    st.drop_canvases(0)
    with pytest.raises(chunks.StaleWrite):
        new.write(t, twos)
    assert not (tmp_path / "s" / new.name).exists()


def test_a_writer_that_holds_a_canvas_stops_its_sealing_in_one_line(tmp_path, monkeypatch):
    """A paused process inside a write (it holds the folder's shared lock) keeps the pass
    from ending; after SEAL_WAIT_S the run stops with one line that says what to do."""
    import fcntl
    import os

    from gigadream.errors import StoreError
    st = Store.create(tmp_path / "s")
    view = st.canvas(0, 1, (100, 100), 64, (0, 0))
    fd = os.open(tmp_path / "s" / view.name, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)          # as chunks.write holds it while it writes
    monkeypatch.setattr(chunks, "SEAL_WAIT_S", 0.2)
    try:
        with pytest.raises(StoreError, match=r"canvas .*o0p1: a chunk write has held it for "
                                             r"0 s .*stop that worker, then run the same "
                                             r"command again to resume") as e:
            st.seal(view)
    finally:
        os.close(fd)
    assert "\n" not in str(e.value)
    st.seal(view)                           # released: sealed at once
