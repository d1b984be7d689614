"""Neural style on a real photo with the painting-like style, measured as issue 15 asks.

    python profiling/style/measure.py whole OUT_PREFIX --size 512 [--set key=value ...]
    python profiling/style/measure.py tiled OUT_PREFIX [--set key=value ...]

``whole``: the whole-image stage alone (the processor on scikit-image's cat at ``--size`` px),
as every style run starts. ``tiled``: a whole run through the engine on the cat at 512×341 px
(coarsest octave 128 px whole, then 128 px tiles with 32 px of context). Each prints:

- gram: Σ over relu1_1…relu5_1 of neural-style's mean squared Gram difference to the style,
  the photo's over the result's (how many times closer the result is), and each layer's
  relative error ‖G − A‖ / ‖A‖;
- corr: correlation of the result's luminance with the photo's at 1/8 size;
- glow: how much brighter the outer 4 px are than the ring 8-24 px in, result against photo;
- seams (tiled): mean |luminance step| across the tile boundary lines over that elsewhere,
  at the last pass's boundaries and at every pass's of the finest octave (1 = no seam).

The config is the ``impressionist-style`` preset with the style image made by
``gigadream.sample.painting``; ``--set`` overrides it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LUMA = np.array([0.299, 0.587, 0.114])
PRESET = Path(__file__).resolve().parents[2] / "configs" / "impressionist-style.yaml"


def grams(img: np.ndarray) -> dict:
    import torch

    from gigadream.models import get_model
    x = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32).copy())[None]
    with torch.no_grad():
        acts = get_model("vgg16")(x, frozenset(LAYERS))
    return {n: (lambda f: f @ f.T / f.numel())(a[0].reshape(a.shape[1], -1)) for n, a in acts.items()}


def gram_errors(img: np.ndarray, target: dict) -> tuple[float, dict]:
    g = grams(img)
    mse = sum(float((g[n] - target[n]).pow(2).mean()) for n in LAYERS)
    return mse, {n: round(float((g[n] - target[n]).norm() / target[n].norm()), 3) for n in LAYERS}


def luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ LUMA


def luma_correlation(img: np.ndarray, photo: np.ndarray, k: int = 8) -> float:
    def small(a):
        y = luma(a)
        h, w = y.shape[0] // k * k, y.shape[1] // k * k
        return y[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)).ravel()
    return float(np.corrcoef(small(img), small(photo))[0, 1])


def border_glow(img: np.ndarray, photo: np.ndarray) -> float:
    def glow(a):
        y = luma(a)

        def ring(r):
            m = np.zeros(y.shape, bool)
            m[:r], m[-r:], m[:, :r], m[:, -r:] = True, True, True, True
            return m
        return y[ring(4)].mean() - y[ring(24) & ~ring(8)].mean()
    return float(glow(img) - glow(photo))


def boundary_ratio(img: np.ndarray, lines: list[int], axis: int) -> float:
    d = np.abs(np.diff(luma(img), axis=axis))
    return float(d.take(lines, axis=axis).mean() / np.delete(d, lines, axis=axis).mean())


def save(img: np.ndarray, path: Path) -> None:
    import pyvips
    pyvips.Image.new_from_array(np.ascontiguousarray(img)).copy(interpretation="srgb").write_to_file(str(path))


def cat(long_side: int) -> np.ndarray:
    import pyvips
    import skimage.data
    im = pyvips.Image.new_from_array(skimage.data.chelsea()).copy(interpretation="srgb")
    return im.resize(long_side / max(im.width, im.height), kernel="lanczos3").numpy()


def summary(img: np.ndarray, photo: np.ndarray, style_path: Path) -> str:
    import pyvips
    style = pyvips.Image.new_from_file(str(style_path))
    style = style.resize(max(img.shape[:2]) / max(style.width, style.height)).numpy()[..., :3]
    target = grams(style)
    before, _ = gram_errors(photo, target)
    after, rel = gram_errors(img, target)
    return (f"gram {before / after:.1f}x closer than the photo ({before:.1f} -> {after:.1f}; "
            f"relative per layer {rel}), corr {luma_correlation(img, photo):.3f}, "
            f"glow {border_glow(img, photo):+.1f} levels")


def whole(prefix: Path, size: int, overrides: list[str], style_path: Path) -> None:
    from gigadream.modes import load_config
    from gigadream.modes.style import StyleMode, layer_list, style_targets
    from gigadream.pipeline import plan
    from gigadream.tiling import Box
    photo = cat(size)
    h, w = photo.shape[:2]
    cfg = load_config(PRESET, [f"style={style_path}", *overrides])
    pp = plan((h, w), cfg)[0]
    s = cfg.style
    target = style_targets(s.images, s.blend_weights, cfg.model.name, None, s.pooling,
                           layer_list(cfg, "style_layers"), max(h, w))
    content = photo.transpose(2, 0, 1).astype(np.float32).copy()
    t = time.perf_counter()
    out, _ = StyleMode(cfg).processor(pp, first=True)(content, Box(0, h, 0, w),
                                                      np.random.default_rng(0), content, target)
    seconds = time.perf_counter() - t
    img = np.clip(out.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)
    save(img, prefix.with_suffix(".png"))
    print(f"whole {w}x{h}, {pp.iterations} steps, {seconds:.0f} s: {summary(img, photo, style_path)}")


def tiled(prefix: Path, overrides: list[str], style_path: Path) -> None:
    import pyvips

    from gigadream.config import load_config
    from gigadream.pipeline import plan, run
    photo = cat(512)
    src = prefix.with_name(prefix.name + "-cat.png")
    save(photo, src)
    cfg = load_config(PRESET, [f"style={style_path}", "style.whole_size=128", "tiling.tile=128",
                               "tiling.margin=32", "export.tiff_compression=none", *overrides])
    out = prefix.with_suffix(".tif")
    t = time.perf_counter()
    report = run(src, cfg, out, overwrite=True)
    seconds = time.perf_counter() - t
    img = pyvips.Image.new_from_file(str(out)).numpy()
    save(img, prefix.with_suffix(".png"))
    finest = [p for p in plan(img.shape[:2], cfg) if p.octave == 0]
    t_ = cfg.tiling.tile
    seams = []
    for axis in (0, 1):
        per_pass = [[i * t_ - p.offset[axis] - 1 for i in range(1, 99)
                     if 0 < i * t_ - p.offset[axis] < img.shape[axis]] for p in finest]
        every = sorted({y for lines in per_pass for y in lines})
        seams.append(f"{'yx'[axis]}: last pass {boundary_ratio(img, per_pass[-1], axis):.3f}, "
                     f"every pass {boundary_ratio(img, every, axis):.3f}")
    print(f"tiled {img.shape[1]}x{img.shape[0]}, {seconds:.0f} s (model {report.model_s:.0f} s): "
          f"seams {'; '.join(seams)}; {summary(img, photo, style_path)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("whole", "tiled"))
    p.add_argument("prefix", type=Path)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    from gigadream.sample import painting
    style_path = args.prefix.with_name("painting.png")
    save(painting(512, 512), style_path)
    if args.kind == "whole":
        whole(args.prefix, args.size, args.overrides, style_path)
    else:
        tiled(args.prefix, args.overrides, style_path)


if __name__ == "__main__":
    main()
