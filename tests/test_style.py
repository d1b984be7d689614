"""Neural style through the whole engine, with the real VGG16 weights, a real photo and a real
texture (scikit-image's immunohistochemistry stain) as the style."""
import numpy as np
import pytest
import torch

from conftest import assert_config_error, read, save
from gigadream.config import load_config
from gigadream.engine import cluster
from gigadream.errors import InputError
from gigadream.models import get_model
from gigadream.modes.style import StyleMode
from gigadream.pipeline import plan, run
from gigadream.modes.style import StyleTransfer, add_stats, luminance_transfer, style_targets
from gigadream.tiling import Box, grid

LAYERS = (("relu1_1", 1.0), ("relu2_1", 1.0), ("relu3_1", 1.0), ("relu4_1", 1.0), ("relu5_1", 1.0))
# 256 px content: the coarsest octave (128 px) is stylised whole, the finest refined in 128 px
# tiles (4 to 9 per pass). Style weight 10x neural-style's: the loss must fall 10x in a few steps.
STYLE = ["mode=style", "style.whole_size=128", "style.whole_iterations=50", "style.iterations=5",
         "style.style_weight=1000", "tiling.margin=32", "export.tiff_compression=none"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import skimage.data
    d = tmp_path_factory.mktemp("style")
    content = skimage.data.coffee()[50:306, 200:456]
    return {"content": save(content, d / "content.png"),
            "style": save(skimage.data.immunohistochemistry(), d / "stain.png"),
            "style2": save(skimage.data.gravel(), d / "gravel.png"),
            "array": content, "dir": d}


def style_loss(img: np.ndarray, target: dict) -> float:
    """Σ over the style layers of the mean squared Gram difference (neural-style's loss)."""
    x = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32).copy())[None]
    with torch.no_grad():
        acts = get_model("vgg16")(x, frozenset(n for n, _ in LAYERS))
    total = 0.0
    for n, _ in LAYERS:
        f = acts[n][0].reshape(acts[n].shape[1], -1)
        total += float(((f @ f.T) / f.numel() - torch.from_numpy(target[n])).pow(2).mean())
    return total


@pytest.fixture(scope="module")
def target(images):
    """The style target at the finest octave's size (256 px), where the loss is measured."""
    return style_targets((str(images["style"]),), None, "vgg16", None, "max", LAYERS, 256)


@pytest.fixture(scope="module")
def tiled_and_whole(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for name, tile in (("tiled", 128), ("whole", 512)):   # 512: every octave in one tile
        cfg = load_config(None, STYLE + [f"style={images['style']}", f"tiling.tile={tile}"])
        report = run(images["content"], cfg, d / f"{name}.tif")
        out[name] = (read(report.output), report, cfg)
    return out


def test_the_tiled_run_is_tiled_and_the_whole_run_is_not(tiled_and_whole):
    tiled, whole = (tiled_and_whole[k][2] for k in ("tiled", "whole"))
    tiled_plan, whole_plan = plan((256, 256), tiled), plan((256, 256), whole)
    assert [p.tiles for p in tiled_plan][0] == 1 and min(p.tiles for p in tiled_plan[1:]) >= 4
    assert all(p.stats for p in tiled_plan[1:])
    assert [p.tiles for p in whole_plan] == [1, 1, 1]
    assert [p.iterations for p in tiled_plan] == [p.iterations for p in whole_plan] == [50, 5, 5]


def test_style_loss_falls_tenfold(tiled_and_whole, images, target):
    before = style_loss(images["array"], target)
    after = style_loss(tiled_and_whole["tiled"][0], target)
    print(f"style loss: content {before:.1f}, result {after:.1f}, {before / after:.1f}x")
    assert before / after >= 10


def test_tiled_equals_whole(tiled_and_whole, target):
    tiled, whole = tiled_and_whole["tiled"][0], tiled_and_whole["whole"][0]
    lt, lw = style_loss(tiled, target), style_loss(whole, target)
    print(f"style loss: tiled {lt:.2f}, whole {lw:.2f}")
    assert abs(lt - lw) <= 0.2 * lw

    def spread(img):
        """Coefficient of variation of the style loss over the 4 tile-sized quarters."""
        q = [style_loss(img[i:i + 128, j:j + 128], target) for i in (0, 128) for j in (0, 128)]
        return np.std(q) / np.mean(q)
    st, sw = spread(tiled), spread(whole)
    print(f"per-tile style loss spread: tiled {st:.4f}, whole {sw:.4f}")
    # "no more than": the two differ by ~0.3 % here; 2 % allows for float summation order.
    assert st <= sw * 1.02


def test_grams_of_tiles_add_up_to_the_whole_image(images):
    """The reduction's premise: per-tile Gram sums over the cores add up to the image's Gram."""
    cfg = load_config(None, ["mode=style", f"style={images['style']}", "style.whole_size=128", "tiling.tile=96",
                             "tiling.margin=48"])
    proc = StyleMode(cfg).processor(plan((256, 256), cfg)[1], first=False)
    img = images["array"].transpose(2, 0, 1).astype(np.float32)
    tiles = grid((256, 256), 96, (40, 17), proc.margin, cfg.align)   # aligned on 16 px
    total = add_stats(*[proc.stat(img[(slice(None), *t.window.slices())],
                                  t.core.relative_to(t.window)) for t in tiles])["grams"]
    whole = proc.stat(img, Box(0, 256, 0, 256))["grams"]
    # margin 48 covers these layers' receptive fields, and aligned windows pool on the image's
    # grid: features equal the whole image's, and core cells partition its cells
    for layer in ("relu1_1", "relu2_1", "relu3_1"):
        (gt, nt), (gw, nw) = total[layer], whole[layer]
        assert nt == nw
        assert np.abs(gt - gw).max() <= 1e-3 * np.abs(gw).max(), layer


def _echo(value, shared):
    return value, shared


def test_grams_summed_as_they_arrive_reach_every_worker():
    """The canvas's Gram as StyleMode.pass_data makes it: tasks' Gram sums added up as they
    come back (none kept), then shared with the workers for the pass's tiles."""
    from gigadream.engine import map_tasks
    rng = np.random.default_rng(0)
    stats = [{"grams": {"a": (rng.random((4, 4)), int(rng.integers(1, 9)))}} for _ in range(19)]
    total = {"grams": {}}

    def add(s):
        nonlocal total
        total = add_stats(total, s)
    with cluster(workers=2) as ex:
        assert map_tasks(ex, dict, stats, add, keep=False) == []
        shared = ex.share(total)
        seen = [r[1] for r in map_tasks(ex, _echo, list(range(4)), args=(shared,))]
    assert len(seen) == 4
    for reduced in seen:
        g, n = reduced["grams"]["a"]
        assert np.allclose(g, sum(s["grams"]["a"][0] for s in stats))
        assert n == sum(s["grams"]["a"][1] for s in stats)


def ycbcr_chroma(img: np.ndarray) -> np.ndarray:
    m = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    return img.astype(np.float64) @ m.T


def test_original_colors_keeps_the_contents_chroma(images, tmp_path):
    small = ["mode=style", f"style={images['style']}", "style.whole_iterations=20",
             "style.style_weight=1000", "export.tiff_compression=none"]
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


# ---- every option changes the result: one whole pass on a 64 px crop, processor alone ----

BASE = ["mode=style", "style.iterations=10", "style.whole_iterations=10", "style.style_weight=1000"]


def stylise(images, overrides: list[str]) -> np.ndarray:
    cfg = load_config(None, BASE + [f"style={images['style']}"] + overrides)
    content = images["array"][96:160, 96:160].transpose(2, 0, 1).astype(np.float32).copy()
    pp = plan((64, 64), cfg)[0]
    assert pp.tiles == 1
    s = cfg.style
    target = style_targets(s.images, s.blend_weights, cfg.model.name, None, s.pooling,
                           cfg.style_layer_list("style_layers"), round(64 * s.style_scale))
    proc = StyleMode(cfg).processor(pp, first=True)
    assert isinstance(proc, StyleTransfer)
    rng = np.random.default_rng([cfg.seed, 0, 0])
    out, stats = proc(content, Box(0, 64, 0, 64), rng, content, target)
    assert np.isfinite(stats["loss"])
    if s.original_colors:
        out = luminance_transfer(out, content)
    return out


OPTIONS = [
    ["style.content_weight=50"], ["style.style_weight=10"], ["style.tv_weight=1"],
    ["style.content_layers=[relu3_2]"], ["style.style_layers=[relu1_1, relu2_1]"],
    ["style.style_scale=0.5"], ["style.init=random"], ["style.optimizer=adam"],
    ["style.normalize_gradients=true"], ["style.pooling=avg"], ["style.original_colors=true"],
]


@pytest.fixture(scope="module")
def baseline(images):
    return stylise(images, [])


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: o[0].split("=")[0])
def test_each_option_changes_the_result(images, baseline, overrides):
    out = stylise(images, overrides)
    assert np.abs(out - baseline).mean() > 0.05


def test_more_style_options_change_the_result(images, baseline):
    two = stylise(images, [f"style=[{images['style']}, {images['style2']}]"])
    leaning = stylise(images, [f"style=[{images['style']}, {images['style2']}]",
                               "style.blend_weights=[1, 9]"])
    assert np.abs(two - baseline).mean() > 0.05 and np.abs(leaning - two).mean() > 0.05
    adam = stylise(images, ["style.optimizer=adam"])
    assert np.abs(stylise(images, ["style.optimizer=adam", "style.learning_rate=2"]) - adam).mean() > 0.05
    noise = stylise(images, ["style.init=random"])
    assert np.abs(stylise(images, ["style.init=random", "seed=1"]) - noise).mean() > 0.05
    assert np.array_equal(stylise(images, []), baseline)           # and nothing else is random


def test_schedule_options_change_the_plan(images):
    def p(*o):
        return plan((1000, 3000), load_config(None, ["mode=style", f"style={images['style']}", *o]))
    base = p()
    assert [(q.octave, q.tiles, q.iterations) for q in base][0] == (3, 1, 300)   # 375 px ≤ 512
    assert len(p("style.whole_size=256")) == len(base) + 2
    assert p("style.whole_iterations=9")[0].iterations == 9
    assert len(p("style.passes=3")) == 1 + 3 * 3
    assert {q.iterations for q in p("style.iterations=7")[1:]} == {7}
    assert len(p("style.octave_scale=3")) < len(base)


BAD_STYLE = [
    ([], r"style.images: mode style needs a style image; add --set style="),
    (["style=missing.jpg"], r"style image missing.jpg not found"),
    (["style.blend_weights=[1, 2]"], r"style.blend_weights: 2 weights for 1 style images"),
    (["style.blend_weights=[0]"], r"style.blend_weights: the weights must not all be 0"),
    (["style.optimizer=sgd"], r"style.optimizer: expected one of lbfgs, adam; got 'sgd'"),
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
