import os
import signal
import threading

import numpy as np
import pytest
import pyvips

from conftest import read
from gigadream.config import ExportConfig
from gigadream.errors import OutputError
from gigadream.export import _VirtualTiff, check_output, export
from gigadream.ingest import ingest
from gigadream.store import Store
from gigadream.tiling import Box


@pytest.fixture
def source(tmp_path, photos):
    store = Store.create(tmp_path / "store")
    return store, ingest(photos["astronaut_png"], store)


@pytest.mark.parametrize("compression", ["none", "deflate", "lzw"])
def test_lossless_bigtiff_round_trips_exactly(tmp_path, source, photos, compression):
    store, view = source
    out = export(view, tmp_path / "out.tif", ExportConfig(tiff_compression=compression))
    np.testing.assert_array_equal(read(out), read(photos["astronaut_png"]))
    im = pyvips.Image.new_from_file(str(out))
    assert im.get("bits-per-sample") == 8 and im.get("tile-width") == 512


@pytest.mark.parametrize("h,w", [(128, 128), (1, 1), (40, 300)])
def test_small_images_export_to_tiff_and_read_back(tmp_path, h, w):
    from conftest import save
    rng = np.random.default_rng(h * w)
    src = save(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), tmp_path / "small.png")
    store = Store.create(tmp_path / "store")
    out = export(ingest(src, store), tmp_path / "out.tif", ExportConfig())
    np.testing.assert_array_equal(read(out), read(src))


def test_jpeg_is_close_and_quality_changes_it(tmp_path, source, photos):
    store, view = source
    hi = export(view, tmp_path / "hi.jpg", ExportConfig(quality=95))
    lo = export(view, tmp_path / "lo.jpg", ExportConfig(quality=40))
    ref = read(photos["astronaut_png"]).astype(int)
    assert np.abs(read(hi).astype(int) - ref).mean() < 2.5
    assert lo.stat().st_size < hi.stat().st_size / 2


def test_existing_output_is_kept_without_overwrite(tmp_path, source):
    store, view = source
    out = tmp_path / "out.jpg"
    out.write_bytes(b"an earlier masterpiece")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        export(view, out)
    assert out.read_bytes() == b"an earlier masterpiece"
    export(view, out, overwrite=True)
    assert read(out).shape == (512, 512, 3)


@pytest.mark.parametrize("name,message", [
    ("nowhere/out.jpg", r"output folder .*nowhere does not exist"),
    ("out.bmp", r"unknown format '.bmp'; name it .jpg or .tif"),
    ("out", r"unknown format '\(no extension\)'"),
])
def test_bad_output_paths(tmp_path, name, message):
    with pytest.raises(OutputError, match=message):
        check_output(tmp_path / name)


def test_jpeg_refuses_sides_over_65500_and_suggests_tiff(tmp_path):
    with pytest.raises(OutputError, match=r"at most 65500 px a side; write a BigTIFF instead \(-o big.tif\)"):
        check_output(tmp_path / "big.jpg", (1000, 70000))
    assert check_output(tmp_path / "big.tif", (1000, 70000)) == "tiff"


def test_a_failed_export_leaves_no_file_under_any_name(tmp_path, source):
    store, view = source

    class Failing:
        shape = view.shape

        def read_uint8(self, box: Box):
            if box.y0 >= 256:
                raise OSError(28, "No space left on device")
            return view.read_uint8(box)

    with pytest.raises(OSError):
        export(Failing(), tmp_path / "out.jpg")
    assert list(tmp_path.glob("*out.jpg*")) == []


class Pixels:
    """A view of given pixels that counts its reads, and can act at a given strip."""

    def __init__(self, pixels: np.ndarray, at_row=None, then=None):
        self.pixels, self.shape = pixels, pixels.shape[:2]
        self.rows_read, self.at_row, self.then = [], at_row, then

    def read_uint8(self, box: Box) -> np.ndarray:
        self.rows_read.append(box.y0)
        if box.y0 == self.at_row:
            self.then()
        return np.ascontiguousarray(self.pixels[box.y0:box.y1, box.x0:box.x1])


@pytest.mark.parametrize("h,w", [(1, 1), (100, 50), (256, 7), (700, 37)])
def test_the_virtual_tiff_is_a_valid_bigtiff_of_the_pixels(h, w):
    """The bytes libvips reads, drained here and parsed by tifffile (not libvips): one strip
    (offsets inline in the IFD), exactly whole strips, and a short last strip."""
    import io

    import tifffile
    pixels = np.random.default_rng(h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    tiff = _VirtualTiff(Pixels(pixels))
    data = io.BytesIO()
    try:
        while chunk := tiff.read(100_000):
            data.write(chunk)
    finally:
        tiff.close()
    assert data.tell() == tiff.size and tiff.error is None
    with tifffile.TiffFile(io.BytesIO(data.getvalue())) as t:
        assert t.is_bigtiff and t.pages[0].rowsperstrip == min(256, h)
        np.testing.assert_array_equal(t.asarray(), pixels)


def test_an_interrupt_stops_the_export_at_once_and_leaves_nothing(tmp_path):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same) while libvips encodes on its
    thread: this thread stops waiting, libvips fails at its next read, no file remains."""
    pixels = np.random.default_rng(0).integers(0, 256, (256 * 40, 64, 3), dtype=np.uint8)
    view = Pixels(pixels, at_row=256 * 3, then=lambda: os.kill(os.getpid(), signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # as outside pytest
    try:
        with pytest.raises(KeyboardInterrupt):
            export(view, tmp_path / "out.jpg")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []
    assert max(view.rows_read) < 256 * 10, "libvips kept reading after the interrupt"
    assert not [t for t in threading.enumerate()
                if t.name.startswith(("gigadream-export", "gigadream-encode"))]
