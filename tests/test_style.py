"""Neural style through the whole engine, with the real VGG16 weights, a real photo and a
painting-like style (``gigadream.sample.painting``: brush strokes in a swirling flow)."""
import numpy as np
import pytest
import torch

from conftest import assert_config_error, read, save
from gigadream.modes import load_config
from gigadream.cluster import cluster
from gigadream.errors import InputError
from gigadream.modes.style import (StyleMode, StyleTransfer, add_stats, layer_list,
                                   luminance_transfer, style_model, style_targets)
from gigadream.pipeline import plan, run
from gigadream.sample import painting
from gigadream.tiling import Box, grid

LAYERS = (("relu1_1", 1.0), ("relu2_1", 1.0), ("relu3_1", 1.0), ("relu4_1", 1.0), ("relu5_1", 1.0))
LUMA = np.array([0.299, 0.587, 0.114])
# 256 px content: the coarsest octave (64 px) is stylised whole, the two finer ones in 64 px
# tiles (4 or 5 a side at the finest) with 32 px of context; 4 passes of 3 steps each.
STYLE = ["mode=style", "style.whole_size=64", "style.whole_iterations=100", "style.passes=4",
         "style.iterations=3", "tiling.margin=32", "export.tiff_compression=none"]
# The layers whose receptive field the 32 px context covers (relu4_1: 29 px). relu5_1's
# (65 px, the default margin) reaches past it: there the tiled result is 2x further from the
# style than the whole one.
COVERED = LAYERS[:4]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import skimage.data
    d = tmp_path_factory.mktemp("style")
    content = skimage.data.coffee()[50:306, 200:456]
    return {"content": save(content, d / "content.png"),
            "style": save(painting(256, 256), d / "painting.png"),
            "style2": save(skimage.data.gravel(), d / "gravel.png"),
            "array": content, "dir": d}


def features(img: np.ndarray, layers, pooling: str = "max") -> dict:
    x = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32).copy())[None]
    with torch.no_grad():
        return style_model("vgg16", None, "cpu")(x, frozenset(layers), pooling)   # as style sees it


def grams(img: np.ndarray, layers=LAYERS, pooling: str = "max") -> dict:
    """Gram per layer, normalised by C·H·W (as ``style_targets``)."""
    acts = features(img, [n for n, _ in layers], pooling)
    return {n: (lambda f: (f @ f.T / f.numel()).numpy())(a[0].reshape(a.shape[1], -1))
            for n, a in acts.items()}


def style_distance(img: np.ndarray, target: dict, layers=LAYERS, pooling: str = "max") -> float:
    """Σ over layers of ‖G − A‖² / ‖A‖²: the style loss at weight 1 (0 = the style's Grams)."""
    g = grams(img, layers, pooling)
    return float(sum(((g[n] - target[n]) ** 2).sum() / (target[n] ** 2).sum() for n, _ in layers))


def content_error(img: np.ndarray, content: np.ndarray, layer: str) -> float:
    a, b = features(img, [layer])[layer], features(content, [layer])[layer]
    return float((a - b).pow(2).mean() / b.pow(2).mean())


def luma_correlation(img: np.ndarray, photo: np.ndarray, k: int = 8) -> float:
    """Correlation of the two luminances at 1/k size (k × k block means)."""
    def small(a):
        y = a.astype(np.float64) @ LUMA
        h, w = y.shape[0] // k * k, y.shape[1] // k * k
        return y[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)).ravel()
    return float(np.corrcoef(small(img), small(photo))[0, 1])


def border_glow(img: np.ndarray, photo: np.ndarray) -> float:
    """How much brighter (levels of luminance) the outer 4 px are than the ring 8-24 px in,
    in the result against the photo: 0 when the border is lit as the photo's is."""
    def glow(a):
        y = a.astype(np.float64) @ LUMA
        def ring(r):
            m = np.zeros(y.shape, bool)
            m[:r], m[-r:], m[:, :r], m[:, -r:] = True, True, True, True
            return m
        return y[ring(4)].mean() - y[ring(24) & ~ring(8)].mean()
    return glow(img) - glow(photo)


def boundary_ratio(img: np.ndarray, lines: list[int], axis: int) -> float:
    """Mean |gradient| across ``lines`` (the step from line to line + 1) over that elsewhere."""
    d = np.abs(np.diff(img.astype(np.float64) @ LUMA, axis=axis))
    return float(d.take(lines, axis=axis).mean() / np.delete(d, lines, axis=axis).mean())


@pytest.fixture(scope="module")
def target(images):
    """The style's Grams at the finest octave's size (256 px), where the result is measured."""
    return style_targets((str(images["style"]),), None, "vgg16", None, "max", LAYERS, 256)["grams"]


@pytest.fixture(scope="module")
def tiled_and_whole(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for name, tile in (("tiled", 64), ("whole", 512)):   # 512: every octave in one tile
        cfg = load_config(None, STYLE + [f"style={images['style']}", f"tiling.tile={tile}"])
        report = run(images["content"], cfg, d / f"{name}.tif")
        out[name] = (read(report.output), report, cfg)
    return out


def test_the_tiled_run_is_tiled_and_the_whole_run_is_not(tiled_and_whole):
    tiled, whole = (tiled_and_whole[k][2] for k in ("tiled", "whole"))
    tiled_plan, whole_plan = plan((256, 256), tiled), plan((256, 256), whole)
    assert [p.tiles for p in tiled_plan][0] == 1 and min(p.tiles for p in tiled_plan[-4:]) >= 16
    assert all(p.stats for p in tiled_plan[1:])
    assert [p.tiles for p in whole_plan] == [1] * 9
    assert [p.iterations for p in tiled_plan] == [p.iterations for p in whole_plan] == [100] + [3] * 8


def test_the_style_is_painted_and_the_photo_kept(tiled_and_whole, images, target):
    photo = images["array"]
    for name in ("tiled", "whole"):
        img = tiled_and_whole[name][0]
        before, after = style_distance(photo, target), style_distance(img, target)
        corr, glow = luma_correlation(img, photo), border_glow(img, photo)
        print(f"{name}: style distance {before:.2f} -> {after:.2f} ({before / after:.1f}x), "
              f"luma correlation {corr:.3f}, border glow {glow:+.1f} levels")
        # measured: 16x, 0.92, -5.0 levels tiled; whole -3.9 (neural-style's losses: +12 to +18)
        assert before / after >= 5 and corr >= 0.6 and abs(glow) <= 6


def test_tiled_equals_whole(tiled_and_whole, images):
    """Tiled runs come as close to the style as whole ones (measured: tiled 12 % closer on an
    AVX512/AMX CPU, 15-16 % with seeds 1, 2 on an AVX2 one), and
    the style stays even from tile-sized square to square: the coefficient of variation of
    the style distance over the 16 squares, tiled against whole (0.214, the same with any
    seed: one tile, no offsets), measured 1.01-1.09 on an AVX512/AMX CPU and 1.56, 1.93, 1.57
    with seeds 0, 1, 2 on an AVX2 one (fp32 either way; L-BFGS on each tile follows the
    rounding). What it guards against, on the same runs: one square of the tiled result left
    unstyled 2.63, half of it 3.91. The limit lies between."""
    target = style_targets((str(images["style"]),), None, "vgg16", None, "max", COVERED, 256)["grams"]
    tiled, whole = tiled_and_whole["tiled"][0], tiled_and_whole["whole"][0]
    lt, lw = style_distance(tiled, target, COVERED), style_distance(whole, target, COVERED)
    print(f"style distance: tiled {lt:.3f}, whole {lw:.3f}, {lt / lw - 1:+.1%}")
    assert lt <= 1.15 * lw          # tiling loses no style; closer is no fault

    def spread(img):
        """Coefficient of variation of the style distance over the 16 tile-sized squares."""
        q = [style_distance(img[i:i + 64, j:j + 64], target, COVERED) for i in range(0, 256, 64)
             for j in range(0, 256, 64)]
        return np.std(q) / np.mean(q)
    st, sw = spread(tiled), spread(whole)
    print(f"per-tile style distance spread: tiled {st:.4f}, whole {sw:.4f}")
    assert st <= sw * 2.2


def test_no_seams_along_the_tile_boundaries(tiled_and_whole, images):
    """The finest octave's tile grids (4 passes, 4 or 5 tiles a side): the stylised image is
    as smooth across any pass's tile boundaries as elsewhere, as the whole run is."""
    img, _, cfg = tiled_and_whole["tiled"]
    whole = tiled_and_whole["whole"][0]
    finest = [p for p in plan(img.shape[:2], cfg) if p.octave == 0]
    t = cfg.tiling.tile
    for axis in (0, 1):
        per_pass = [[i * t - p.offset[axis] - 1 for i in range(1, 6) if 0 < i * t - p.offset[axis] < 256]
                    for p in finest]
        every = sorted({y for lines in per_pass for y in lines})
        last = per_pass[-1]
        ratios = [boundary_ratio(img, lines, axis) / boundary_ratio(whole, lines, axis)
                  for lines in (every, last)]
        print(f"axis {axis}: {len(every)} boundary lines, tiled/whole across them "
              f"{ratios[0]:.3f}, last pass's {len(last)}: {ratios[1]:.3f}")
        assert len(every) >= 12 and len(last) >= 3
        # measured 1.01-1.09 (2 x 20 L-BFGS steps a pass: 15-16 at 128 px tiles)
        assert abs(ratios[0] - 1) <= 0.15 and abs(ratios[1] - 1) <= 0.15


def _gram_pass(images):
    """A tiled pass over the 256 px photo: 96 px tiles, 48 px of context, an offset grid
    aligned on 16 px. (cfg, its PassPlan, the processor, the tiles, the photo as (3, h, w)
    float32, the photo's own Grams)."""
    cfg = load_config(None, ["mode=style", f"style={images['style']}", "style.whole_size=128", "tiling.tile=96",
                             "tiling.margin=48"])
    pp = plan((256, 256), cfg)[1]
    proc = StyleMode(cfg).processor(pp, first=False)
    img = images["array"].transpose(2, 0, 1).astype(np.float32)
    tiles = grid((256, 256), 96, (40, 17), proc.margin, StyleMode(cfg).align)
    return cfg, pp, proc, tiles, img, proc.stat(img, Box(0, 256, 0, 256))["grams"]


def _assert_the_whole_images_grams(total: dict, whole: dict) -> None:
    # margin 48 covers these layers' receptive fields, and aligned windows pool on the image's
    # grid: features equal the whole image's, and core cells partition its cells
    for layer in ("relu1_1", "relu2_1", "relu3_1"):
        (gt, nt), (gw, nw) = total[layer], whole[layer]
        assert nt == nw
        assert np.abs(gt - gw).max() <= 1e-3 * np.abs(gw).max(), layer


def test_grams_of_tiles_add_up_to_the_whole_image(images):
    """The reduction's premise: per-tile Gram sums over the cores add up to the image's Gram."""
    _, _, proc, tiles, img, whole = _gram_pass(images)
    total = add_stats(*[proc.stat(img[(slice(None), *t.window.slices())],
                                  t.core.relative_to(t.window)) for t in tiles])["grams"]
    _assert_the_whole_images_grams(total, whole)


def _echo(value, shared):
    return value, shared


def test_a_pass_gives_its_tiles_the_canvas_gram_of_all_of_them(images, tmp_path):
    """StyleMode.pass_data in a real pass (the photo in a store, a cluster of two workers):
    the tiles' Gram sums, added up as they come back (none kept), are the whole image's
    Gram, and that canvas reaches every worker for the pass's tiles; the next pass's share
    is its own. Without it each tile matches the style on its own Gram, which the tests on
    whole runs cannot tell from the global Gram (profiling/test-suite.md)."""
    from gigadream.cluster import map_tasks
    from gigadream.ingest import ingest
    from gigadream.pipeline import RunReport, _Run
    from gigadream.storage.store import Store
    cfg, pp, proc, tiles, _, whole = _gram_pass(images)
    mode = StyleMode(cfg)
    store = Store.create(tmp_path / "store")
    source = ingest(images["content"], store)
    with cluster(workers=2) as ex:
        resolved = mode.resolve(ex)
        run_ = _Run(ex, store, RunReport(), lambda e: None, resolved, resolved["batch"], cfg.seed, True)
        _, canvas, reliable = mode.pass_data(run_, pp, source, proc, tiles)
        assert reliable is None                 # a still has no previous frame
        seen = [r[1] for r in map_tasks(ex, _echo, list(range(4)), args=(canvas,))]
        other = ex.share({"grams": {"relu1_1": (np.zeros((4, 4)), 0)}})
        assert map_tasks(ex, _echo, [0], args=(other,))[0][1]["grams"]["relu1_1"][1] == 0
    assert len(seen) == 4
    for reduced in seen:
        _assert_the_whole_images_grams(reduced["grams"], whole)


def ycbcr_chroma(img: np.ndarray) -> np.ndarray:
    m = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    return img.astype(np.float64) @ m.T


def test_original_colors_keeps_the_contents_chroma(images, tmp_path):
    small = ["mode=style", f"style={images['style']}", "style.whole_iterations=20",
             "export.tiff_compression=none"]
    content = images["array"][::2, ::2]                                  # 128 px: one whole pass
    src = save(content, tmp_path / "small.png")
    plain = read(run(src, load_config(None, small), tmp_path / "plain.tif").output)
    kept = read(run(src, load_config(None, small + ["style.original_colors=true"]),
                    tmp_path / "kept.tif").output)
    c = ycbcr_chroma(content)
    kept_err = np.abs(ycbcr_chroma(kept) - c).mean()
    plain_err = np.abs(ycbcr_chroma(plain) - c).mean()
    print(f"chroma error: original_colors {kept_err:.2f}, plain {plain_err:.2f}")
    assert kept_err < 1.5 < 5 < plain_err
    # luma is the styled image's: original_colors changes colour, not strokes
    y = np.array([0.299, 0.587, 0.114])
    assert np.abs(kept @ y - plain @ y).mean() < 1.5


def test_luminance_transfer_swaps_chroma_only():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(30, 220, (2, 3, 8, 8)).astype(np.float32)
    out = luminance_transfer(a, b)
    y = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.allclose(np.tensordot(y, out, 1), np.tensordot(y, a, 1), atol=1e-3)
    assert np.allclose(ycbcr_chroma(out.transpose(1, 2, 0)), ycbcr_chroma(b.transpose(1, 2, 0)),
                       atol=1e-3)


# ---- each option moves the result its way: one whole pass on a 96 px crop, processor alone ----

BASE = ["mode=style", "style.whole_iterations=20"]


def crop(images) -> np.ndarray:
    return images["array"][80:176, 80:176]


def stylise(images, overrides: list[str]) -> np.ndarray:
    """(96, 96, 3) float32, 0-255: the crop stylised whole with ``overrides``."""
    cfg = load_config(None, BASE + [f"style={images['style']}"] + overrides)
    content = crop(images).transpose(2, 0, 1).astype(np.float32).copy()
    pp = plan((96, 96), cfg)[0]
    assert pp.tiles == 1 and pp.iterations == 20
    s = cfg.style
    target = style_targets(s.images, s.blend_weights, cfg.model.name, None, s.pooling,
                           layer_list(cfg, "style_layers"), round(96 * s.style_scale))
    proc = StyleMode(cfg).processor(pp, first=True)
    assert isinstance(proc, StyleTransfer)
    rng = np.random.default_rng([cfg.seed, 0, 0])
    out, stats = proc(content, Box(0, 96, 0, 96), rng, content, target)
    assert np.isfinite(stats["loss"])
    if s.original_colors:
        out = luminance_transfer(out, content)
    return out.transpose(1, 2, 0)


@pytest.fixture(scope="module")
def baseline(images):
    return stylise(images, [])


@pytest.fixture(scope="module")
def style_at(images):
    """The style's Grams at a long side and pooling, for ``layers``."""
    def at(side=96, pooling="max", layers=LAYERS, image="style"):
        return style_targets((str(images[image]),), None, "vgg16", None, pooling, layers, side)["grams"]
    return at


def tv(img: np.ndarray) -> float:
    return float(np.mean(np.diff(img, axis=0) ** 2) + np.mean(np.diff(img, axis=1) ** 2))


def test_the_baseline_paints(images, baseline, style_at):
    """What the options below are measured against stylises: 20 steps halve the style
    distance (the run tests above check the full effect)."""
    target = style_at()
    assert style_distance(baseline, target) <= 0.5 * style_distance(crop(images), target)


def test_more_style_weight_matches_the_style_closer(images, baseline, style_at):
    target = style_at()
    more = stylise(images, ["style.style_weight=10"])
    assert style_distance(more, target) < 0.95 * style_distance(baseline, target)   # 0.86


def test_more_content_weight_keeps_the_photo_closer(images, baseline):
    more = stylise(images, ["style.content_weight=20"])
    c = crop(images)
    assert content_error(more, c, "relu4_2") < 0.7 * content_error(baseline, c, "relu4_2")


def test_more_total_variation_smooths(images, baseline):
    assert tv(stylise(images, ["style.tv_weight=1000"])) < 0.7 * tv(baseline)


def test_content_layers_are_the_ones_kept(images, baseline):
    shallow = stylise(images, ["style.content_layers=[relu2_1]", "style.content_weight=4"])
    c = crop(images)
    assert content_error(shallow, c, "relu2_1") < content_error(baseline, c, "relu2_1")
    assert content_error(shallow, c, "relu4_2") > content_error(baseline, c, "relu4_2")


def test_style_layers_are_the_ones_matched(images, baseline, style_at):
    low = (("relu1_1", 1.0), ("relu2_1", 1.0))
    high = (("relu4_1", 1.0), ("relu5_1", 1.0))
    shallow = stylise(images, ["style.style_layers=[relu1_1, relu2_1]"])
    assert style_distance(shallow, style_at(layers=low), low) < style_distance(baseline, style_at(layers=low), low)
    assert style_distance(shallow, style_at(layers=high), high) > style_distance(baseline, style_at(layers=high), high)


def test_style_scale_matches_the_style_at_that_scale(images, baseline, style_at):
    half = stylise(images, ["style.style_scale=0.5"])
    target = style_at(side=48)
    assert style_distance(half, target) < style_distance(baseline, target)


def test_avg_pooling_optimises_in_the_avg_pooled_network(images, baseline, style_at):
    """Average pools change the network the losses are taken in: there the result comes
    close to the style (measured 29x closer than the photo) and it differs from max's."""
    avg = stylise(images, ["style.pooling=avg"])
    target = style_at(pooling="avg")
    assert style_distance(avg, target, pooling="avg") < 0.2 * style_distance(crop(images), target, pooling="avg")
    assert np.abs(avg - baseline).mean() > 1


def test_random_init_loses_the_photo(images, baseline):
    noise = stylise(images, ["style.init=random"])
    assert np.abs(noise - crop(images)).mean() > 2 * np.abs(baseline - crop(images)).mean()
    assert np.abs(stylise(images, ["style.init=random", "seed=1"]) - noise).mean() > 1


def test_a_larger_adam_step_moves_further(images, baseline):
    big = stylise(images, ["style.learning_rate=10"])
    assert np.abs(big - crop(images)).mean() > 1.3 * np.abs(baseline - crop(images)).mean()


def test_lbfgs_paints_as_well(images, baseline, style_at):
    """L-BFGS on the same losses lowers the style distance too (its steps are its own)."""
    target = style_at()
    lbfgs = stylise(images, ["style.optimizer=lbfgs"])
    assert style_distance(lbfgs, target) <= 0.5 * style_distance(crop(images), target)
    assert np.abs(lbfgs - baseline).mean() > 1


def test_normalized_gradients_still_paint(images, baseline, style_at):
    """neural-style's -normalize_gradients: each layer's gradient to unit L1 norm, so the
    terms pull alike; the result differs and still moves towards the style."""
    target = style_at()
    normed = stylise(images, ["style.normalize_gradients=true"])
    assert style_distance(normed, target) < style_distance(crop(images), target)
    assert np.abs(normed - baseline).mean() > 1


def test_original_colors_keeps_the_photos_chroma(images, baseline):
    kept = stylise(images, ["style.original_colors=true"])
    c = ycbcr_chroma(crop(images))
    assert np.abs(ycbcr_chroma(kept) - c).mean() < 0.5 * np.abs(ycbcr_chroma(baseline) - c).mean()


def test_blend_weights_lean_towards_their_image(images, style_at):
    two = stylise(images, [f"style=[{images['style']}, {images['style2']}]"])
    leaning = stylise(images, [f"style=[{images['style']}, {images['style2']}]",
                               "style.blend_weights=[1, 9]"])
    gravel = style_at(image="style2")
    assert style_distance(leaning, gravel) < style_distance(two, gravel)


def test_nothing_else_is_random(images, baseline):
    assert np.array_equal(stylise(images, []), baseline)


def test_schedule_options_change_the_plan(images):
    def p(*o):
        return plan((1000, 3000), load_config(None, ["mode=style", f"style={images['style']}", *o]))
    base = p()
    assert [(q.octave, q.tiles, q.iterations) for q in base][0] == (3, 1, 300)   # 375 px ≤ 512
    assert len(p("style.whole_size=256")) == len(base) + 8       # a finer octave: 8 passes
    assert p("style.whole_iterations=9")[0].iterations == 9
    assert len(p("style.passes=3")) == 1 + 3 * 3
    assert {q.iterations for q in p("style.iterations=7")[1:]} == {7}
    assert len(p("style.octave_scale=3")) < len(base)


BAD_STYLE = [
    ([], r"style.images: mode style needs a style image; add --set style="),
    (["style=missing.jpg"], r"style image missing.jpg not found"),
    (["style.blend_weights=[1, 2]"], r"style.blend_weights: 2 weights for 1 style images"),
    (["style.blend_weights=[0]"], r"style.blend_weights: the weights must not all be 0"),
    (["style.optimizer=sgd"], r"style.optimizer: expected one of adam, lbfgs; got 'sgd'"),
    (["style.init=noise"], r"style.init: expected one of image, random; got 'noise'"),
    (["style.pooling=min"], r"style.pooling: expected one of max, avg"),
    (["style.pooling=avg", "model.name=efficientnet_lite0"], r"avg applies to VGG models only"),
    (["style.learning_rate=0"], r"style.learning_rate: expected a number above 0.0"),
    (["style.content_weight=-1"], r"style.content_weight: expected a number at least 0.0"),
    (["style.style_layers=[relu9_1]"], r"style.style_layers: 'relu9_1' is not a layer of vgg16"),
    (["style.style_layers=[relu3_1:4]"], r"style uses whole layers, not channels"),
    (["style.normalize_gradients=yes please"], r"style.normalize_gradients: expected true or false"),
    (["style.whole_size=8"], r"style.whole_size: expected an integer from 16 to 4096"),
    (["style.style_scale=0"], r"style.style_scale: expected a number above 0.0"),
]


@pytest.mark.parametrize("overrides,message", BAD_STYLE)
def test_bad_style_options_are_one_line_errors(images, overrides, message):
    has_image = any(o.startswith("style=") for o in overrides) or not overrides
    extra = [] if has_image else [f"style={images['style']}"]
    assert_config_error(["mode=style", *extra, *overrides], message)


def test_an_unreadable_style_image_fails_before_any_work(images, tmp_path):
    bad = tmp_path / "painting.jpg"
    bad.write_text("not a jpeg")
    cfg = load_config(None, ["mode=style", f"style={bad}"])
    with pytest.raises(InputError, match="style image .*painting.jpg cannot be read as an image") as e:
        run(images["content"], cfg, tmp_path / "out.jpg")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.jpg").exists() and not (tmp_path / "out.jpg.gdstore").exists()


def test_a_killed_style_run_resumes_to_the_same_bytes(images, tmp_path):
    """Killed (SIGKILL) in the second tiled pass, after its Gram reduction; the resumed run
    equals an uninterrupted one bit for bit (CPU, same seed)."""
    import signal

    from test_resume import harness
    # 96×160: the whole coarsest octave, then 2 × 2 tiled passes (4, 3, 9, 12 tiles); the kill
    # comes after 2 tiles of octave 0's first pass, which starts from octave 1's canvas. One
    # step a tile: the bytes are compared, not the style, and each step costs the same.
    src = save(images["array"][:96, :160], tmp_path / "small.png")
    config = tmp_path / "style.yaml"
    config.write_text(f"""mode: style
style: {{images: [{images['style']}], whole_size: 64, whole_iterations: 2, passes: 2, iterations: 1}}
tiling: {{tile: 64, margin: 32}}
engine: {{workers: 1, threads: 1}}
export: {{tiff_compression: none}}
""")
    reference = harness(src, tmp_path / "reference.tif", tmp_path / "reference.gdstore", config)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out, store = tmp_path / "out.tif", tmp_path / "store"
    killed = harness(src, out, store, config, "pass:3:2")       # octave 0's first pass
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr[-2000:]
    resumed = harness(src, out, store, config)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume" in [ln.split()[1] for ln in resumed.stdout.splitlines() if ln.startswith("stage")]
    np.testing.assert_array_equal(read(out), read(tmp_path / "reference.tif"))
