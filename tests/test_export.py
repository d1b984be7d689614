import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import pyvips

from conftest import read
from gigadream.config import ExportConfig
from gigadream.errors import OutputError
from gigadream.export import _VirtualTiff, check_output, export
from gigadream.ingest import ingest
from gigadream.metadata import srgb_profile
from gigadream.storage.store import Store
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


@pytest.mark.parametrize("bits", [8, 16])
def test_png_is_lossless_in_8_and_16_bits(tmp_path, source, photos, bits):
    store, view = source
    out = export(view, tmp_path / "out.png", ExportConfig(bits=bits))
    im = pyvips.Image.new_from_file(str(out))
    assert im.get("vips-loader") == "pngload" and im.format == ("uchar" if bits == 8 else "ushort")
    want = read(photos["astronaut_png"]).astype(np.uint16) * (1 if bits == 8 else 257)
    np.testing.assert_array_equal(im.numpy()[..., :3], want)
    assert im.get("icc-profile-data") == srgb_profile()


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
    ("out.bmp", r"unknown format '.bmp'; name it .jpg, .png or .tif"),
    ("out", r"unknown format '\(no extension\)'"),
])
def test_bad_output_paths(tmp_path, name, message):
    with pytest.raises(OutputError, match=message):
        check_output(tmp_path / name)


def test_jpeg_refuses_sides_over_65500_and_suggests_tiff(tmp_path):
    with pytest.raises(OutputError, match=r"at most 65500 px a side; write a BigTIFF instead \(-o big.tif\)"):
        check_output(tmp_path / "big.jpg", (1000, 70000))
    assert check_output(tmp_path / "big.tif", (1000, 70000)) == "tiff"


class FailingAt256:
    """A view whose reads fail from row 256 on, as a full disk would fail them."""

    def __init__(self, view):
        self.view, self.shape = view, view.shape

    def read_uint8(self, box: Box):
        if box.y0 >= 256:
            raise OSError(28, "No space left on device")
        return self.view.read_uint8(box)


@pytest.mark.parametrize("name", ["out.jpg", "out.dzi"])
def test_a_failed_export_leaves_no_file_under_any_name(tmp_path, source, name):
    """Neither a file nor a deep zoom's tiles under any name: only the store is left."""
    store, view = source
    with pytest.raises(OSError):
        export(FailingAt256(view), tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


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


# ---- 16 bits, ICC, deep zoom ----

@pytest.fixture
def canvas(tmp_path, photos):
    """A real float16 canvas (offset, as passes leave them) whose pixels have fractions of a
    level everywhere: the photo dimmed, plus a ramp."""
    from gigadream.tiling import grid
    store = Store.create(tmp_path / "cstore")
    photo = read(photos["astronaut_png"])[:300, :400].transpose(2, 0, 1).astype(np.float32)
    pixels = (0.7 * photo + np.linspace(0.0, 70.0, 400, dtype=np.float32)).astype(np.float16)
    view = store.canvas(0, 0, pixels.shape[1:], 128, (37, 101))
    for t in grid(view.shape, 128, (37, 101)):
        view.write(t, pixels[(slice(None), *t.core.slices())])
    return view, pixels


def test_16_bit_tiff_keeps_the_canvas_fractions_and_matches_8_bit_to_rounding(tmp_path, canvas):
    view, pixels = canvas
    t16 = pyvips.Image.new_from_file(str(export(view, tmp_path / "o16.tif", ExportConfig(bits=16))))
    assert t16.format == "ushort" and t16.get("bits-per-sample") == 16
    a16 = t16.numpy()
    # exactly the float16 canvas × 257: no 8-bit rounding on the way
    want = np.rint(257 * pixels.astype(np.float32).clip(0, 255)).transpose(1, 2, 0)
    np.testing.assert_array_equal(a16, want.astype(np.uint16))
    assert all(len(np.unique(a16[..., c])) > 4 * 256 for c in range(3))
    a8 = read(export(view, tmp_path / "o8.tif", ExportConfig()))
    assert all(len(np.unique(a8[..., c])) <= 256 for c in range(3))
    back = np.rint(a16 / 257.0).astype(int)
    assert np.abs(back - a8).max() <= 1 and (back == a8).mean() > 0.999


def test_16_bit_tiff_of_an_8_bit_source_is_exact(tmp_path, source, photos):
    store, view = source
    out = export(view, tmp_path / "o16.tif", ExportConfig(bits=16, tiff_compression="lzw"))
    np.testing.assert_array_equal(pyvips.Image.new_from_file(str(out)).numpy(),
                                  read(photos["astronaut_png"]).astype(np.uint16) * 257)


def _tile_of(out: Path, kind: str) -> pyvips.Image:
    """One full-resolution tile of a deep-zoom output, as libvips decodes it."""
    import zipfile
    if kind == "szi":
        with zipfile.ZipFile(out) as z:
            name = next(n for n in z.namelist() if n.endswith("_files/9/0_0.jpeg"))
            return pyvips.Image.new_from_buffer(z.read(name), "")
    if kind == "iiif3":
        # the 512 px image's one full-resolution tile: region "full" (the whole image)
        return pyvips.Image.new_from_file(str(out / "full" / "512,512" / "0" / "default.jpg"))
    return pyvips.Image.new_from_file(str(out.with_name(out.stem + "_files") / "9" / "0_0.jpeg"))


KINDS = [("out.jpg", {}, "jpeg"), ("out.tif", {}, "tiff"), ("out16.tif", {"bits": 16}, "tiff"),
         ("out.dzi", {}, "dz"), ("out.szi", {}, "szi"), ("out-iiif", {"layout": "iiif3"}, "iiif3")]


@pytest.mark.parametrize("name,settings,kind", KINDS, ids=[k[2] + str(k[1]) for k in KINDS])
def test_every_output_embeds_the_srgb_profile(tmp_path, source, name, settings, kind):
    store, view = source
    out = export(view, tmp_path / name, ExportConfig(**settings))
    im = _tile_of(out, kind) if kind in ("dz", "szi", "iiif3") else \
        pyvips.Image.new_from_file(str(out))
    assert im.get_typeof("icc-profile-data") and im.get("icc-profile-data") == srgb_profile()


def test_dzi_is_a_deep_zoom_pyramid_of_the_image(tmp_path, source, photos):
    """Levels 0 (one pixel) to 9 (512 px), the tile count of each, and a full-size tile's
    pixels (with its one-pixel overlap) match the image."""
    import xml.etree.ElementTree as ET
    store, view = source
    out = export(view, tmp_path / "pano.dzi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.dzi", "pano_files", "store"]
    dzi = ET.parse(out).getroot()
    size, tile, overlap = dzi[0].attrib, int(dzi.get("TileSize")), int(dzi.get("Overlap"))
    assert (size["Width"], size["Height"], dzi.get("Format")) == ("512", "512", "jpeg")
    files = tmp_path / "pano_files"
    assert sorted(int(p.name) for p in files.iterdir() if p.is_dir()) == list(range(10))
    for level in range(10):
        side = -(-512 // 2 ** (9 - level))
        assert len(list((files / str(level)).glob("*.jpeg"))) == (-(-side // tile)) ** 2, level
    ref = read(photos["astronaut_png"]).astype(int)
    t = pyvips.Image.new_from_file(str(files / "9" / "1_1.jpeg")).numpy().astype(int)
    y0 = x0 = tile - overlap
    assert t.shape == (tile + 2 * overlap, tile + 2 * overlap, 3)
    assert np.abs(t - ref[y0:y0 + t.shape[0], x0:x0 + t.shape[1]]).mean() < 3


def test_an_upper_case_dzi_name_is_kept(tmp_path, source):
    """dzsave names its XML NAME.dzi whatever the case asked for: renamed to the name given."""
    store, view = source
    export(view, tmp_path / "Pano.DZI")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pano.DZI", "Pano_files", "store"]


def test_szi_and_iiif3_hold_the_same_pyramid(tmp_path, source, photos):
    import json
    import zipfile
    store, view = source
    szi = export(view, tmp_path / "pano.szi")
    names = zipfile.ZipFile(szi).namelist()
    assert "pano/pano.dzi" in names and sum(n.startswith("pano/pano_files/9/") for n in names) == 9
    iiif = export(view, tmp_path / "pano",
                  ExportConfig(layout="iiif3", iiif_id="https://x.org/iiif"))
    info = json.loads((iiif / "info.json").read_text())
    assert (info["id"], info["width"], info["height"]) == ("https://x.org/iiif/pano", 512, 512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano", "pano.szi", "store"]
    ref = read(photos["astronaut_png"]).astype(int)
    assert np.abs(_tile_of(iiif, "iiif3").numpy().astype(int) - ref).mean() < 3


def test_deep_zoom_is_written_while_the_strips_arrive(tmp_path):
    """dzsave takes the strips as they come: each is read once, in order, and the tiles of
    the top rows are on disk before the last strip is read (the image is never whole in
    memory)."""
    pixels = np.random.default_rng(5).integers(0, 256, (2000, 64, 3), dtype=np.uint8)
    tiles_before_last = []
    view = Pixels(pixels, at_row=1792,
                  then=lambda: tiles_before_last.append(len(list(tmp_path.rglob("*.jpeg")))))
    out = export(view, tmp_path / "p.dzi")
    assert view.rows_read == list(range(0, 2000, 256))
    assert tiles_before_last[0] >= 5                 # level 11's first rows of 254 px tiles
    tile = read(out.with_name("p_files") / "11" / "0_0.jpeg").astype(int)
    assert np.abs(tile - pixels[:255, :64]).mean() < 12         # noise, JPEG quality 92


def test_deep_zoom_replaces_only_with_overwrite_and_only_tiles(tmp_path, source):
    store, view = source
    files = tmp_path / "pano_files"
    files.mkdir()
    (files / "12").mkdir()                            # a level the new pyramid has not
    with pytest.raises(OutputError, match=r"pano_files \(the tiles of pano.dzi\) already exists; "
                                          r"pass --overwrite"):
        export(view, tmp_path / "pano.dzi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano_files", "store"]
    export(view, tmp_path / "pano.dzi", overwrite=True)
    assert sorted(int(p.name) for p in files.iterdir() if p.is_dir()) == list(range(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.dzi", "pano_files", "store"]
    photos_dir = tmp_path / "holiday"
    photos_dir.mkdir()
    (photos_dir / "me.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="holds other files than deep-zoom tiles; it is kept"):
        export(view, photos_dir, ExportConfig(layout="iiif3"), overwrite=True)
    assert (photos_dir / "me.jpg").read_bytes() == b"precious"



@pytest.mark.parametrize("name,settings,message", [
    ("out.jpg", {"bits": 16}, r"export.bits 16 needs a TIFF or PNG output, but out.jpg is a JPEG .*"
                              r"name it out.tif, or set export.bits=8"),
    ("out.dzi", {"bits": 16}, r"out.dzi is deep zoom"),
    ("out.dzi", {"layout": "iiif3"},
     r"iiif3 writes a folder of tiles, not a .dzi file; .*-o out\)"),
    ("out", {}, r"unknown format .*\.dzi or \.szi \(deep zoom\), or set export.layout=iiif3"),
])
def test_bad_output_settings(tmp_path, name, settings, message):
    with pytest.raises(OutputError, match=message):
        check_output(tmp_path / name, cfg=ExportConfig(**settings))
