"""The input's EXIF and XMP reach every JPEG and TIFF output, upright (orientation 1)."""
import io
import struct
import subprocess
import sys

import numpy as np
import pytest
import pyvips

from gigadream.metadata import normalise_exif, normalise_xmp, parse_exif

GPANO_XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
             b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
             b'rdf:about="" xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
             b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" GPano:ProjectionType="equirectangular" '
             b'GPano:UsePanoramaViewer="True" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """A camera JPEG held upright: stored 300 wide × 200 high with EXIF orientation 6
    (turn 90° clockwise to view), an artist, an exposure time, 300 dpi, and a 360° pano's
    XMP; ingested into a store by the command."""
    import skimage.data
    d = tmp_path_factory.mktemp("rotated")
    im = pyvips.Image.new_from_array(skimage.data.chelsea()[:200, :300]).copy(interpretation="srgb")
    im = im.copy(xres=300 / 25.4, yres=300 / 25.4)
    im.set_type(pyvips.GValue.gint_type, "orientation", 6)
    im.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "A. Painter")
    im.set_type(pyvips.GValue.gstr_type, "exif-ifd2-ExposureTime", "1/250")
    im.set_type(pyvips.GValue.blob_type, "xmp-data", GPANO_XMP)
    im.jpegsave(str(d / "rot.jpg"), Q=95)
    r = subprocess.run([sys.executable, "-m", "gigadream", "ingest", d / "rot.jpg", d / "store",
                        "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("name,settings", [("out.jpg", []), ("out.tif", []),
                                           ("out16.tif", ["--set", "export.bits=16"])])
def test_exif_and_xmp_reach_the_output_upright(rotated, tmp_path, name, settings):
    """``gigadream export`` in another process than the ingest: what the store kept."""
    import tifffile
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "gigadream", "export", rotated / "store", out,
                        *settings], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    im = pyvips.Image.new_from_file(str(out))
    assert (im.width, im.height) == (200, 300)                 # stored upright
    upright = pyvips.Image.new_from_file(str(rotated / "rot.jpg")).autorot().numpy()
    pixels = im.numpy() // 257 if im.format == "ushort" else im.numpy()
    assert np.abs(pixels.astype(int) - upright).mean() < 2
    assert im.get("orientation") == 1
    xmp = im.get("xmp-data")
    assert b'GPano:ProjectionType="equirectangular"' in xmp and b'tiff:Orientation="1"' in xmp
    assert abs(im.xres * 25.4 - 300) < 0.5                     # the print resolution
    if name.endswith(".jpg"):
        assert im.get("exif-ifd0-Orientation").startswith("1 ")
        assert im.get("exif-ifd0-Artist").startswith("A. Painter")
        assert im.get("exif-ifd2-ExposureTime").startswith("1/250")
        assert im.get("exif-ifd2-PixelXDimension").startswith("200 ")   # the output's size
        return
    with tifffile.TiffFile(out) as t:                           # libvips reads no TIFF EXIF
        tags = t.pages[0].tags
        assert tags["Orientation"].value == 1 and tags["Artist"].value == "A. Painter"
        assert tags["ExifTag"].value["ExposureTime"] == (1, 250)
        assert tags["BitsPerSample"].value == ((16,) * 3 if "16" in name else (8,) * 3)


def _big_endian_exif() -> bytes:
    """An EXIF block in Motorola byte order (as some cameras write), by tifffile: a 4 × 6
    image's TIFF with an artist, a resolution and orientation 8."""
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 6, 3), np.uint8), byteorder=">", photometric="rgb",
                     resolution=(300, 300), extratags=[(315, "s", 0, "A. Painter", True),
                                                       (274, "H", 1, 8, True)])
    return b"Exif\0\0" + buf.getvalue()


def test_big_endian_exif_is_read_and_normalised():
    ifds = parse_exif(_big_endian_exif())
    tags = {e.tag: e for e in ifds["0"]}
    assert tags[315].data.rstrip(b"\0") == b"A. Painter"
    assert struct.unpack("<II", tags[282].data) == (300, 1)    # a rational, byte-swapped
    assert struct.unpack("<H", tags[274].data) == (8,)
    again = {e.tag: e for e in parse_exif(normalise_exif(_big_endian_exif()))["0"]}
    assert struct.unpack("<H", again[274].data) == (1,)       # upright
    assert again[315] == tags[315] and again[282] == tags[282]
    assert not {256, 257, 258, 273, 279} & set(again)        # the input's pixel layout: gone


@pytest.mark.parametrize("blob", [b"", b"Exif\0\0XX*\0", b"Exif\0\0II*\0\xff\xff\0\0",
                                  b"Exif\0\0II+\0\x08\0\0\0"])
def test_a_damaged_exif_block_is_refused_as_value_error(blob):
    with pytest.raises(ValueError):
        normalise_exif(blob)


def test_xmp_orientation_becomes_1_in_either_spelling():
    assert b'tiff:Orientation="1"' in normalise_xmp(GPANO_XMP)
    assert normalise_xmp(b"<tiff:Orientation>8</tiff:Orientation>") == \
        b"<tiff:Orientation>1</tiff:Orientation>"
