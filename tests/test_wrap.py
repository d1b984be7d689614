"""360° panoramas (``tiling.wrap``): x is circular everywhere, so that a dream or a style closes
round the edge where a stitched equirectangular panorama's left and right sides meet."""
import json
import subprocess
import sys

import numpy as np
import pytest
import pyvips
import yaml

from conftest import read, save
from gigadream.config import load_config
from gigadream.errors import StoreError
from gigadream.estimate import estimate, report
from gigadream.ingest import ingest, wrap_setting
from gigadream.pipeline import run
from gigadream.resample import octave_shape
from gigadream.storage.store import Store

# GPano XMP as stitchers write it: the projection as an attribute of rdf:Description (PTGui,
# Hugin) or as an element; in an xpacket, as in files.
RDF = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
       '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">{}</rdf:RDF></x:xmpmeta>'
       '<?xpacket end="w"?>')
ATTRIBUTE = RDF.format('<rdf:Description rdf:about="" '
                       'xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
                       'GPano:ProjectionType="equirectangular" GPano:UsePanoramaViewer="True"/>')
ELEMENT = RDF.format('<rdf:Description rdf:about="" '
                     'xmlns:G="http://ns.google.com/photos/1.0/panorama/">'
                     '<G:ProjectionType>equirectangular</G:ProjectionType></rdf:Description>')
CYLINDER = ATTRIBUTE.replace("equirectangular", "cylindrical")
OTHER_XMP = RDF.format('<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
                       'dc:format="image/jpeg"/>')


def tagged(array: np.ndarray, path, xmp: str | None = ATTRIBUTE, **kw):
    """``array`` saved by libvips with ``xmp`` as its XMP packet."""
    im = pyvips.Image.new_from_array(np.ascontiguousarray(array)).copy(interpretation="srgb")
    if xmp is not None:
        im.set_type(pyvips.GValue.blob_type, "xmp-data", xmp.encode())
    im.write_to_file(str(path), **kw)
    return path


@pytest.fixture(scope="module")
def panorama():
    """256 × 128 px: a real photo (scikit-image's astronaut, its middle half, halved) rolled
    by half its width, so that its left and right edges are neighbouring columns of the
    photo: a 360° panorama's edges meet so."""
    import skimage.data
    photo = pyvips.Image.new_from_array(skimage.data.astronaut()[128:384]).resize(0.5).numpy()
    return np.roll(photo, photo.shape[1] // 2, axis=1)


@pytest.mark.parametrize("xmp, size, setting, expected", [
    (ATTRIBUTE, (64, 32), "auto", "x"),
    (ELEMENT, (64, 32), "auto", "x"),
    (ATTRIBUTE, (65, 32), "auto", "x"),          # a pixel of rounding
    (ATTRIBUTE, (63, 32), "auto", "x"),
    (ATTRIBUTE, (66, 32), "auto", "none"),       # not 2:1
    (ATTRIBUTE, (64, 48), "auto", "none"),
    (CYLINDER, (64, 32), "auto", "none"),        # another projection
    (OTHER_XMP, (64, 32), "auto", "none"),
    (None, (64, 32), "auto", "none"),            # no XMP at all
    (None, (64, 48), "x", "x"),                  # set: whatever the file says
    (ATTRIBUTE, (64, 32), "none", "none"),
])
def test_auto_wraps_a_2_to_1_equirectangular_panorama_only(tmp_path, xmp, size, setting,
                                                           expected):
    w, h = size
    src = tagged(np.full((h, w, 3), 90, np.uint8), tmp_path / "in.jpg", xmp)
    assert wrap_setting(setting, src, (h, w))[0] == expected
    cfg = load_config(None, [f"tiling.wrap={setting}"])
    assert cfg.wraps == (setting == "x")           # auto is none until resolved for an input


def test_wrap_x_on_a_one_pixel_wide_image_is_one_line_and_writes_nothing(tmp_path):
    src = save(np.full((40, 1, 3), 90, np.uint8), tmp_path / "thin.png")
    before = src.read_bytes()
    r = subprocess.run([sys.executable, "-m", "gigadream", "run", str(src), "-o",
                        str(tmp_path / "out.jpg"), "--set", "tiling.wrap=x",
                        "--set", "mode=identity"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "gigadream: error: tiling.wrap: x joins the image's left and right edges, but input "
        "thin.png is 1 px wide; set tiling.wrap=none"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thin.png"]
    assert src.read_bytes() == before


def test_plan_says_whether_and_why_x_wraps(panorama, tmp_path):
    src = tagged(panorama, tmp_path / "pano.jpg", Q=95)
    plain = tagged(panorama, tmp_path / "plain.jpg", None, Q=95)
    for path, sets, line in (
            (src, [], "wrap           x (auto: a 360° panorama, its XMP says equirectangular "
                      "and it is 2:1)"),
            (plain, [], "wrap           none (auto: the input's XMP says no equirectangular "
                        "projection)"),
            (src, ["tiling.wrap=none"], "wrap           none (as set)")):
        cfg = load_config(None, ["tiling.tile=64", "dream.passes=1"] + sets)
        e = estimate(path, cfg, calibrate=False)
        assert line in report(e, cfg, None).splitlines()
    # the straddling tile replaces the partial one at each side: fewer tiles a pass
    wrapped, flat = (estimate(src, load_config(None, ["tiling.tile=64", f"tiling.wrap={w}"]),
                              calibrate=False).tiles for w in ("x", "none"))
    assert wrapped < flat


def test_a_wrapped_pyramid_resizes_across_the_edge(panorama, tmp_path):
    """The octave levels of a circle: those of the panorama rolled by a quarter turn are the
    panorama's levels rolled alike, bit for bit (scale 2: the roll is whole pixels at every
    level). libvips' pyramid, which repeats the edge pixels, is not."""
    w = panorama.shape[1]
    turned = np.roll(panorama, w // 4, axis=1)
    for wrap in (True, False):
        levels = []
        for name, image in (("pano", panorama), ("turned", turned)):
            store = Store.create(tmp_path / f"{name}-{wrap}")
            ingest(save(image, tmp_path / f"{name}.png"), store, octaves=3, scale=2.0, wrap=wrap)
            levels.append([store.source(k).array[:] for k in range(3)])
        for k in range(1, 3):
            rolled = np.roll(levels[0][k], octave_shape((1, w), 2.0, k)[1] // 4, axis=2)
            assert np.array_equal(rolled, levels[1][k]) == wrap, (k, wrap)
    assert Store(tmp_path / "pano-True").record()["pyramid"] == {"levels": 3, "scale": 2.0,
                                                                 "wrap": True}


IDENTITY = ["mode=identity", "tiling.tile=32", "dream.octaves=3", "dream.octave_scale=1.4",
            "dream.passes=2", "tiling.margin=8", "export.tiff_compression=none"]


def test_a_wrapped_run_is_exact_records_its_wrap_and_resumes_only_so(panorama, tmp_path):
    """Identity through every octave and pass on grids that straddle the edge (cores written
    rolled round it, windows read across it, octave starts resampled across it) gives back
    the input, byte for byte. The resolved wrap is recorded and in OUT.yaml: a resume with
    auto agrees, one with none is refused."""
    src = tagged(panorama, tmp_path / "pano.jpg", Q=95)
    store, out = tmp_path / "store", tmp_path / "out.tif"
    run(src, load_config(None, IDENTITY), out, store_path=store)
    np.testing.assert_array_equal(read(out), read(src))
    # viewers still see a 360° image: the input's GPano XMP is carried into the output
    assert b'GPano:ProjectionType="equirectangular"' in pyvips.Image.new_from_file(
        str(out)).get("xmp-data")
    record = json.loads((store / "run.json").read_text())
    assert record["config"]["tiling"]["wrap"] == "x" and record["result"]["wrap"] is True
    assert yaml.safe_load(out.with_name("out.tif.yaml").read_text())["tiling"]["wrap"] == "x"
    run(src, load_config(None, IDENTITY), out, store_path=store, overwrite=True)
    with pytest.raises(StoreError, match=r"another config: tiling\.wrap: 'x' in the store, "
                                         r"'none' now"):
        run(src, load_config(None, IDENTITY + ["tiling.wrap=none"]), out, store_path=store,
            overwrite=True)


def column_ratios(img: np.ndarray, k: int = 12) -> np.ndarray:
    """Each column's mean |step| to the next (over rows and channels) over the mean of its
    2k neighbours' (NaN where they run out)."""
    c = np.abs(np.diff(img.astype(np.float64), axis=1)).mean(axis=(0, 2))
    out = np.full(c.shape, np.nan)
    for j in range(k, len(c) - k):
        out[j] = c[j] / np.concatenate([c[j - k:j], c[j + 1:j + k + 1]]).mean()
    return out


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A 256 × 128 px panorama whose edges meet, tagged equirectangular: a 64 px strip of a
    real photo beside its mirror image, twice. The junction where its edges meet (the strip's
    mirrored left side) recurs in its middle, so each run has its own control: the same
    content, away from any edge."""
    import skimage.data
    photo = pyvips.Image.new_from_array(skimage.data.astronaut()[128:384]).resize(0.5).numpy()
    strip = photo[:, 64:128]
    pano = np.concatenate([strip, strip[:, ::-1]] * 2, axis=1)
    return tagged(pano, tmp_path_factory.mktemp("twins") / "twins.jpg", Q=95)


def seam(before: np.ndarray, after: np.ndarray) -> float:
    """The run's change (after − before) turned by a quarter: its step across the edge where
    the panorama closes (now at column w/4) over its neighbours', divided by the same at the
    twin junction in its middle (now at 3w/4): 1 = no seam, whatever the content there."""
    w = after.shape[1]
    r = column_ratios(np.roll(after.astype(np.float64) - before, w // 4, axis=1))
    return float(r[w // 4 - 1] / r[3 * w // 4 - 1])


# 256 × 128 px in 64 px tiles, two octaves of scale 2: half the width is a whole number of
# tiles at both. No jitter (it is drawn per tile, by its row and column) and every tile in
# the calibration.
DREAM = ["dream.layers=[relu3_3]", "tiling.tile=64", "dream.octaves=2", "dream.octave_scale=2",
         "dream.passes=2", "dream.jitter=0", "dream.calibration_tiles=100",
         "export.tiff_compression=none"]


def test_a_dream_closes_round_the_edge(twins, tmp_path):
    """With wrap (auto: the XMP) a circle has no place where tiles end: the dream of a
    panorama made of two identical halves is two identical halves, bit for bit, so the edge
    steps exactly as its twin junction inside the image, though every grid, window,
    calibration tile and resampling meets the two at other pixels. Without wrap the edge
    stands out (measured 1.36× its twin; 1.4-2.7× with the default jitter)."""
    before = read(twins).astype(np.float64)
    results, seams = {}, {}
    for wrap in ("auto", "none"):
        cfg = load_config(None, DREAM + [f"tiling.wrap={wrap}"])
        results[wrap] = read(run(twins, cfg, tmp_path / f"{wrap}.tif").output)
        seams[wrap] = seam(before, results[wrap])
    print("step across the edge over its twin's:", seams)
    halves = results["auto"][:, :128], results["auto"][:, 128:]
    assert not np.array_equal(halves[0], read(twins)[:, :128])           # it dreamed
    np.testing.assert_array_equal(*halves)
    assert seams["auto"] == pytest.approx(1, abs=1e-9) and seams["none"] >= 1.2


STYLE = ["mode=style", "style.whole_size=128", "style.whole_iterations=30", "style.passes=2",
         "style.iterations=3", "tiling.tile=128", "style.style_layers=[relu1_1,relu2_1,relu3_1]",
         "style.content_layers=[relu3_1]", "export.tiff_compression=none"]


def test_a_style_closes_round_the_edge(twins, tmp_path):
    """The coarsest octave stylised whole as a circle, the finer one on grids that straddle
    the edge: the style's change steps across the edge as across its twin junction inside
    the image, within a few percent (measured 1.000-1.004×: where the network computes the
    two halves' features at other places of its windows its float sums may differ); without
    wrap the edge stands out (2.1-2.2×)."""
    from gigadream.sample import painting
    style = save(painting(128, 128), tmp_path / "painting.png")
    before = read(twins).astype(np.float64)
    seams = {}
    for wrap in ("auto", "none"):
        cfg = load_config(None, STYLE + [f"style={style}", f"tiling.wrap={wrap}"])
        seams[wrap] = seam(before, read(run(twins, cfg, tmp_path / f"{wrap}.tif").output))
    print("step across the edge over its twin's:", seams)
    assert abs(seams["auto"] - 1) <= 0.05 and seams["none"] >= 1.5
