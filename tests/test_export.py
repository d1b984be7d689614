import numpy as np
import pytest
import pyvips

from conftest import read
from gigadream.config import ExportConfig
from gigadream.errors import OutputError
from gigadream.export import check_output, export
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
    out = export(view, tmp_path / "out.tif", ExportConfig(tiff_compression=compression),
                 scratch=store.path)
    np.testing.assert_array_equal(read(out), read(photos["astronaut_png"]))
    im = pyvips.Image.new_from_file(str(out))
    assert im.get("bits-per-sample") == 8 and im.get("tile-width") == 512
    assert not list(store.path.glob(".export-*")), "temporary TIFF left behind"


@pytest.mark.parametrize("h,w", [(128, 128), (1, 1), (40, 300)])
def test_small_images_export_to_tiff_and_read_back(tmp_path, h, w):
    from conftest import save
    rng = np.random.default_rng(h * w)
    src = save(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), tmp_path / "small.png")
    store = Store.create(tmp_path / "store")
    out = export(ingest(src, store), tmp_path / "out.tif", ExportConfig(), scratch=store.path)
    np.testing.assert_array_equal(read(out), read(src))


def test_jpeg_is_close_and_quality_changes_it(tmp_path, source, photos):
    store, view = source
    hi = export(view, tmp_path / "hi.jpg", ExportConfig(quality=95), scratch=store.path)
    lo = export(view, tmp_path / "lo.jpg", ExportConfig(quality=40), scratch=store.path)
    ref = read(photos["astronaut_png"]).astype(int)
    assert np.abs(read(hi).astype(int) - ref).mean() < 2.5
    assert lo.stat().st_size < hi.stat().st_size / 2


def test_existing_output_is_kept_without_overwrite(tmp_path, source):
    store, view = source
    out = tmp_path / "out.jpg"
    out.write_bytes(b"an earlier masterpiece")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        export(view, out, scratch=store.path)
    assert out.read_bytes() == b"an earlier masterpiece"
    export(view, out, scratch=store.path, overwrite=True)
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
        export(Failing(), tmp_path / "out.jpg", scratch=store.path)
    assert list(tmp_path.glob("*out.jpg*")) == []
    assert not list(store.path.glob(".export-*"))
