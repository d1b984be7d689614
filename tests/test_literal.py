"""Issue 31's promises on a small photo through the whole engine, measured as make bench-literal
measures them (``gigadream.judge``): edge_guard keeps the dream's halos off the photo's
contours; a guided dog dream shows dogs to a network that did not dream it; the knobs of a
literal dream (coarse_passes, smooth, decorrelate, edge_guard) leave no tile seams."""
import numpy as np
import pytest

from conftest import read, save
from gigadream.config import load_config
from gigadream.judge import (boundary_ratio, halo_ratio, judge, judge_for, seam_ratio,
                             tile_boundaries)
from gigadream.pipeline import run

SIZE = 384
HALO_AIM = 1.5       # the issue's: the shift near strong edges at most 1.5× that elsewhere

# A short, strong VGG16 dream: its halos show after two passes of two octaves.
HALO = ["dream.layers=[relu3_3]", "dream.octaves=2", "dream.passes=2", "dream.step_size=3",
        "export.tiff_compression=none"]

# The preset itself, as it is tuned; the photo is smaller than a tile, so each pass is one window.
GUIDED = ("guided-dogs", ["export.tiff_compression=none"])


@pytest.fixture(scope="module")
def workers():
    """One cluster for the module's four runs: each would start its own (2-3 s)."""
    from gigadream.cluster import BackgroundCluster
    cluster = BackgroundCluster()
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    """scikit-image's astronaut at 384 px (order-3 spline, antialiased), a PNG."""
    import skimage.data
    from skimage.transform import resize
    im = resize(skimage.data.astronaut(), (SIZE, SIZE), order=3, preserve_range=True,
                anti_aliasing=True)
    return save(np.clip(im, 0, 255).round().astype(np.uint8),
                tmp_path_factory.mktemp("literal") / "astronaut.png")


def test_edge_guard_keeps_the_dream_off_the_photo_s_contours(astronaut, workers, tmp_path):
    photo, ratios = read(astronaut), {}
    for guard in (0, 10):
        out = run(astronaut, load_config(None, HALO + [f"dream.edge_guard={guard}"]),
                  tmp_path / f"guard{guard}.tif", cluster=workers).output
        ratios[guard] = halo_ratio(photo, read(out))
    print("halo (chroma, ΔE):", {g: tuple(round(v, 2) for v in r) for g, r in ratios.items()})
    # measured: (1.79, 1.64) without the guard, (0.16, 0.15) with edge_guard 10
    assert min(ratios[0]) > HALO_AIM, "the dream no longer haloes: the test cannot tell"
    assert max(ratios[10]) <= HALO_AIM


def test_a_guided_dog_dream_shows_dogs_to_a_network_that_did_not_dream_it(astronaut, workers,
                                                                          tmp_path):
    photo = read(astronaut)
    dream = read(run(astronaut, load_config(*GUIDED), tmp_path / "dogs.tif",
                     cluster=workers).output)
    judge_name = judge_for("efficientnet_lite0")
    # A 384 px photo has one 224 px crop at scale 1 (the face and collar) and one at 0.6
    # (nearly all of it); the crop at 1 alone swings with where the dogs grew (3-140× over
    # the runs measured), the two together much less.
    before, after = (judge(im, judge_name, scales=(1, 0.6))["dog"] for im in (photo, dream))
    print(f"{judge_name}: dog share {before:.4f} -> {after:.4f} ({after / before:.1f}×)")
    assert judge_name == "efficientnet_lite2"
    # measured with the preset of 2026-12-06: 0.0056 -> 0.15 (27×); with its earlier 4
    # octaves of 4 to 60 passes, 0.45 (80×)
    assert after >= 5 * before


# A VGG16 dream with the literal knobs on 128 px tiles (5 finest passes: 15 tile boundaries a
# side); VGG16's relu3_3 sees 40 px, inside the margin, so a tile's core steps as in a whole
# image's pass and its boundaries cannot show.
KNOBS = ["dream.layers=[relu3_3]", "dream.octaves=2", "dream.octave_scale=2", "dream.passes=5",
         "dream.coarse_passes=8", "dream.step_size=3", "dream.smooth=1.5",
         "dream.decorrelate=true", "dream.edge_guard=10", "tiling.tile=128",
         "export.tiff_compression=none"]


def test_the_literal_knobs_leave_no_tile_seams(astronaut, workers, tmp_path):
    cfg = load_config(None, KNOBS)
    photo = read(astronaut)
    dream = read(run(astronaut, cfg, tmp_path / "knobs.tif", cluster=workers).output)
    lines = [tile_boundaries(cfg, photo.shape[:2], axis) for axis in (0, 1)]
    assert min(map(len, lines)) >= 12
    # the dreamed change has no step at the boundaries, and the dream is as smooth across
    # them as the photo was
    changes = seam_ratio(photo, dream, cfg)
    relatives = [boundary_ratio(dream, ls, axis) / boundary_ratio(photo, ls, axis)
                 for axis, ls in enumerate(lines)]
    print("seams: change", np.round(changes, 3), "dreamed/photo", np.round(relatives, 3))
    # measured: change 1.01 and 0.97, dreamed/photo 0.99 and 1.00 (15 lines a side: the
    # photo's content moves a line's ratio ±10 %)
    assert all(abs(c - 1) < 0.08 for c in changes) and all(abs(r - 1) < 0.06 for r in relatives)


def test_the_judge_is_a_network_that_did_not_dream():
    assert judge_for("vgg16") == judge_for("efficientnet_lite0") == "efficientnet_lite2"
    assert judge_for("efficientnet_lite1") == "efficientnet_lite2"
    assert judge_for("efficientnet_lite2") == "efficientnet_lite0"


def test_the_judge_takes_the_whole_crops_that_fit_at_each_scale(photos):
    from gigadream.judge import crops
    img = read(photos["coffee_jpg"])                                   # 400 × 600
    assert [len(crops(img, s)) for s in (1, 0.6, 0.5)] == [2, 1, 0]
    assert (crops(img, 1)[0].numpy().transpose(1, 2, 0) == img[88:312, 76:300]).all()
    shares = judge(img, "efficientnet_lite2")                      # scales ½ and ¼ left out
    assert set(shares) >= {"animal", "dog", "bird"}
    assert 0 <= shares["dog"] <= shares["animal"] <= 1
    with pytest.raises(ValueError, match="no 224 px crop"):
        judge(img[:200, :200], "efficientnet_lite2")


def test_the_halo_ratio_measures_colour_shifts_in_cielab(photos):
    """Shifts made in CIELAB itself: a* +8 near the strong edges and +2 elsewhere is a ratio
    of 4, chroma and ΔE; a lightness shift alike everywhere, a ΔE ratio of 1."""
    from skimage import color

    from gigadream.judge import edge_zone
    photo = read(photos["astronaut_png"]).astype(np.float64)
    near = edge_zone(photo)
    assert 0.1 < near.mean() < 0.5                      # 5 % strong edges, dilated by 3 px
    lab = color.rgb2lab(photo / 255)

    def shifted(at_edges, elsewhere):
        out = lab.copy()
        out[near] += at_edges
        out[~near] += elsewhere
        return np.clip(color.lab2rgb(out) * 255, 0, 255)
    fringe = halo_ratio(photo, shifted((0, 8, 0), (0, 2, 0)))
    even = halo_ratio(photo, shifted((3, 0, 0), (3, 0, 0)))[1]
    print(f"fringe: chroma {fringe[0]:.2f}, ΔE {fringe[1]:.2f}; even lightness: ΔE {even:.2f}")
    # measured: 3.93, 3.93; 1.0 (on 0-255 values taken for 0-1 ones: 3.26, 3.17)
    assert fringe == pytest.approx((4, 4), abs=0.2)
    assert even == pytest.approx(1, abs=0.1)
