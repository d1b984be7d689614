"""keep_far: the result shrunk F times stays the input shrunk F times, the detail up
close stays; tile by tile without seams, in dream and style mode (real weights, real photos)."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import assert_config_error, read, save
from gigadream.judge import boundary_ratio, tile_boundaries
from gigadream.modes import load_config, mode_for
from gigadream.modes.far import KeepFar, far_radius, lowpass
from gigadream.pipeline import plan, run
from gigadream.tiling import Box, Tile, grid


@dataclass(frozen=True)
class Wiggle:
    """A processor whose change does not depend on the tile: each pixel moves by a function of
    its own value (detail) and 20 levels up (a far change, which keep_far removes)."""

    margin: int = 0
    batchable = False

    def process(self, windows, tiles, rngs, data=None):
        return [(np.clip(c + 30 * np.sin(c / 6) + 20, 0, 255), {}) for w, t in zip(windows, tiles)
                for c in [w[(slice(None), *t.core.relative_to(t.window).slices())]]]


def whole_tile(h: int, w: int) -> Tile:
    box = Box(0, h, 0, w)
    return Tile(0, 0, box, box, box)


def low(change: np.ndarray, sigma: float) -> float:
    """Mean |low-pass| of a (C, h, w) change: what a far view sees of it."""
    return float(lowpass(torch.from_numpy(np.ascontiguousarray(change, np.float32))[None], sigma).abs().mean())


def test_a_tiled_pass_equals_the_whole_image_pass_and_keeps_no_far_change(photos):
    """The high-pass fits in the margin: tiles on a shifted grid give the whole image's pass
    (to float rounding), and the pass's low frequencies are gone (measured: 0.78 of 21.0
    levels left, from the clamp to 0-255) while its detail stays (10.7 of 23.6 levels)."""
    img = read(photos["astronaut_png"]).transpose(2, 0, 1).astype(np.float32)
    h, w = img.shape[1:]
    proc = KeepFar(Wiggle(), 4.0)
    whole = proc.process([img], [whole_tile(h, w)], [None])[0][0]
    tiles = grid((h, w), 64, (23, 41), proc.margin)
    tiled = np.zeros_like(img)
    for t in tiles:
        tiled[(slice(None), *t.core.slices())] = proc.process(
            [img[(slice(None), *t.window.slices())]], [t], [None])[0][0]
    assert np.abs(tiled - whole).max() < 1e-3
    inner = Wiggle().process([img], [whole_tile(h, w)], [None])[0][0]
    print(f"far change: {low(inner - img, 4):.2f} -> {low(whole - img, 4):.2f} levels; "
          f"full size {np.abs(inner - img).mean():.2f} -> {np.abs(whole - img).mean():.2f}")
    assert low(whole - img, 4) < 0.05 * low(inner - img, 4)
    assert np.abs(whole - img).mean() > 0.35 * np.abs(inner - img).mean()


def test_a_wrapped_grid_high_passes_round_the_edge(photos):
    """On a 360° panorama (``tiling.wrap: x``) the high-pass reaches across the left and
    right edges: tiles of a grid that straddles the edge, their windows read round it, give
    the pass of the circle (the image thrice side by side, the middle kept), to float
    rounding; the mirror at the border would miss it by several levels there."""
    img = read(photos["astronaut_png"])[:192, :160].transpose(2, 0, 1).astype(np.float32)
    h, w = img.shape[1:]
    proc = KeepFar(Wiggle(), 4.0)
    circle = proc.process([np.tile(img, 3)], [whole_tile(h, 3 * w)], [None])[0][0][:, :, w:2 * w]
    tiled = np.zeros_like(img)
    for t in grid((h, w), 64, (23, 41), proc.margin, wrap=True):
        cols = np.arange(t.window.x0, t.window.x1) % w
        window = img[:, t.window.y0:t.window.y1, cols]
        core = proc.process([window], [t], [None])[0][0]
        tiled[:, t.core.y0:t.core.y1, np.arange(t.core.x0, t.core.x1) % w] = core
    assert np.abs(tiled - circle).max() < 1e-3
    mirrored = proc.process([img], [whole_tile(h, w)], [None])[0][0]
    assert np.abs(mirrored - circle)[:, :, :4].mean() > 1.0, "the test image shows no edge"


def test_the_margin_grows_by_the_low_pass_reach_per_octave():
    cfg = load_config("impressionist", ["keep_far=16"])
    plain = load_config("impressionist", ["keep_far=0"])
    mode, plain_mode = mode_for(cfg), mode_for(plain)
    assert mode.far_margin == far_radius(4.0) == 24
    assert mode.window_margin == plain_mode.window_margin + 24
    procs = [mode.pass_processor(p, first=False) for p in plan((800, 2400), cfg)]
    # σ = keep_far/4 full-size px: 4 at octave 0, 4 / 1.4³ in octave 3's pixels
    assert procs[-1].sigma == 4.0 and procs[0].sigma == pytest.approx(4.0 / 1.4 ** 3)
    assert procs[-1].margin == mode.window_margin and procs[0].margin < mode.window_margin
    off = plain_mode.pass_processor(plan((800, 2400), plain)[0], False)
    assert not isinstance(off, KeepFar) and off.margin == plain_mode.window_margin


def shrink(img: np.ndarray, k: int) -> np.ndarray:
    """``img`` (h, w, 3) shrunk k times by libvips: the mean of each k × k block."""
    import pyvips
    return pyvips.Image.new_from_array(np.ascontiguousarray(img)).shrink(k, k).numpy()


def far_and_near(before: np.ndarray, after: np.ndarray, k: int) -> tuple[float, float]:
    """Mean |change| in 0-255 levels at 1/k size (box shrink) and at full size."""
    b, a = before.astype(np.float64), after.astype(np.float64)
    return np.abs(shrink(a, k) - shrink(b, k)).mean(), np.abs(a - b).mean()


# 320 px of the astronaut, 64 px tiles: 15 tile boundaries a side over the finest octave's passes
DREAM = ["dream.layers=[relu3_3]", "tiling.tile=64", "dream.octaves=2", "dream.passes=3",
         "export.tiff_compression=none"]
FAR = 8


@pytest.fixture(scope="module")
def dreamed(photos, tmp_path_factory):
    d = tmp_path_factory.mktemp("far")
    src = save(read(photos["astronaut_png"])[:320, 96:416], d / "astronaut.png")
    out = {}
    for keep_far in (0, FAR):
        cfg = load_config(None, DREAM + [f"keep_far={keep_far}"])
        out[keep_far] = (read(run(src, cfg, d / f"far{keep_far}.tif").output), cfg)
    return read(src), out


def test_dream_keeps_the_far_view_and_the_detail(dreamed):
    before, runs = dreamed
    (far_off, near_off), (far_on, near_on) = (far_and_near(before, runs[k][0], FAR) for k in (0, FAR))
    print(f"mean change at 1/{FAR}: {far_off:.2f} -> {far_on:.2f} levels; "
          f"full size: {near_off:.2f} -> {near_on:.2f}")
    # measured: 1/8 2.40 -> 0.53 levels, full size 5.03 -> 4.35
    assert far_on < 1.2 and far_on < 0.4 * far_off
    assert near_on > 0.7 * near_off


def test_dream_with_keep_far_has_no_seams(dreamed):
    before, runs = dreamed
    after, cfg = runs[FAR]
    b, a = before.astype(np.float32), after.astype(np.float32)
    for axis in (0, 1):
        lines = tile_boundaries(cfg, a.shape[:2], axis)
        change = boundary_ratio(a - b, lines, axis)
        relative = boundary_ratio(a, lines, axis) / boundary_ratio(b, lines, axis)
        print(f"axis {axis}: {len(lines)} lines, change {change:.3f}, dreamed/input {relative:.3f}")
        assert len(lines) >= 12
        assert abs(change - 1) < 0.05 and abs(relative - 1) < 0.06


def test_style_keeps_the_far_view(tmp_path, photos):
    """Style mode wraps its processor too, the coarsest octave's whole pass included: the
    painting's strokes come, its colours do not (they would change the far view)."""
    from gigadream.sample import painting
    style = save(painting(128, 128), tmp_path / "painting.png")
    src = save(read(photos["coffee_jpg"])[60:220, 220:380], tmp_path / "coffee.png")
    cfg = load_config(None, ["mode=style", f"style={style}", "style.whole_size=80",
                             "style.whole_iterations=20", "style.passes=2", "style.iterations=2",
                             "style.content_layers=[relu3_1]",
                             "style.style_layers=[relu1_1, relu2_1, relu3_1]", "tiling.tile=64",
                             f"keep_far={FAR}", "export.tiff_compression=none"])
    after = read(run(src, cfg, tmp_path / "styled.tif").output)
    far, near = far_and_near(read(src), after, FAR)
    print(f"style with keep_far: mean change at 1/{FAR} {far:.2f}, full size {near:.2f}")
    # measured: 2.15 and 12.8 levels; without keep_far 35.4 and 43.4
    assert far < 0.3 * near and near > 5


BAD = [
    (["keep_far=1"], r"keep_far.factor: expected 0 \(off\) or a shrink factor from 2 to 256, got 1"),
    (["keep_far=-2"], r"keep_far.factor: expected an integer from 0 to 256, got -2"),
    (["keep_far=300"], r"keep_far.factor: expected an integer from 0 to 256, got 300"),
    (["keep_far=far"], r"keep_far.factor: expected an integer, got 'far' \(str\)"),
    (["keep_far=16", "tiling.margin=20"],
     r"tiling.margin: 20 px cannot hold the low-pass of keep_far=16, which reaches 24 px "
     r"around each tile; set tiling.margin=auto"),
    (["keep_far=16", "mode=style", "style=[{style}]", "tiling.margin=20"],
     r"tiling.margin: 20 px cannot hold the low-pass of keep_far=16"),
    (["keep_far=16", "tiling.margin=24"],
     r"tiling.margin: 24 \(all of it keep_far's\) leaves dream.jitter \(32 px\) no room"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_keep_far_values_are_one_line_errors(overrides, message, photos):
    assert_config_error([o.format(style=photos["coffee_jpg"]) for o in overrides], message)


def test_identity_copies_whatever_keep_far_says():
    """Identity paints nothing, so there is no far view to keep: its tiles stay plain copies."""
    from gigadream.modes.identity import Identity
    cfg = load_config(None, ["mode=identity", "keep_far=16"])
    assert mode_for(cfg).far_margin == 0 and mode_for(cfg).window_margin == 0
    assert isinstance(mode_for(cfg).pass_processor(plan((300, 300), cfg)[0], True), Identity)


def test_a_store_made_with_another_keep_far_is_not_resumed():
    """keep_far changes the result: a resume compares it as it compares dream's settings."""
    from gigadream.config import to_dict
    from gigadream.record import config_difference
    on, off = load_config(None, ["keep_far=16"]), load_config(None, ["keep_far=0"])
    assert config_difference(to_dict(on), off) == ["keep_far.factor: 16 in the store, 0 now"]


def test_a_store_recorded_with_dream_keep_far_resumes_under_the_new_key():
    """Stores made before keep_far had its own section record it as dream.keep_far: the same
    setting, so a store that agrees on its value resumes and one that does not is refused."""
    from gigadream.config import to_dict
    from gigadream.record import config_difference
    cfg = load_config(None, ["keep_far=16"])
    old = to_dict(cfg)
    old["dream"]["keep_far"] = old.pop("keep_far")["factor"]      # as an older store records it
    assert config_difference(old, cfg) == []
    assert config_difference(old, load_config(None, ["keep_far=8"])) == [
        "keep_far.factor: 16 in the store, 8 now"]
