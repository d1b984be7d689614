"""The far view and the near view of a run, with and without ``keep_far`` (issue 16).

    python profiling/far/measure.py OUT_DIR [--inputs demo,astronaut,...] [--config PRESET]
                                    [--far 16] [--set key=value ...] [--off key=value ...]
                                    [--style] [--only off|on]

Runs the preset (default ``impressionist``) through the whole engine on each input twice,
with ``keep_far=0`` (and the ``--off`` settings: ``--off dream.step_size=1.0`` is the
preset before keep_far) and with ``keep_far=F`` (``--far``, default 16), and prints one
table row a run:

- full: mean |result − input| at full size, over RGB, in 0-255 levels;
- 1/16 box, 1/16 lanczos: the same with both images shrunk 16×, by libvips ``shrink`` (the
  mean of each 16 × 16 block) and by ``resize`` (Lanczos-3, anti-aliased);
- low-pass: mean |G_σ * (result − input)|, σ = F/4 px: what keep_far removes at each pass;
- gain: the preset's objective, Σ over its layers of weight × mean ½a² (per input pixel
  and channel, as the dream's ``LayerL2``), on the result over the input, at full size;
- seams: the change's mean |step| across the finest octave's tile boundaries over that across
  the lines beside them (1 = no seam), where the run has tiles.

Inputs: ``demo`` is ``make demo``'s panorama (``gigadream.sample``, 2400 × 800); astronaut,
coffee, chelsea, rocket are scikit-image's photos. ``--style`` runs ``impressionist-style``
on chelsea at 451 px instead (coarsest octave 128 px whole, then 128 px tiles), style image
``gigadream.sample.painting``; its gain is the style's Gram distance, photo ÷ result.
OUT_DIR gets the inputs, the results (lossless TIFF) and a crop of each side by side
(``*-crops.jpg``: input, off, on, full size; under them the three at 1/16, enlarged).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def save(img: np.ndarray, path: Path, **kw) -> Path:
    import pyvips
    im = pyvips.Image.new_from_array(np.ascontiguousarray(img))
    im.copy(interpretation="srgb").write_to_file(str(path), **kw)
    return path


def read(path: Path) -> np.ndarray:
    import pyvips
    return pyvips.Image.new_from_file(str(path)).numpy()[..., :3]


def make_input(name: str, out: Path) -> Path:
    if name == "demo":
        from gigadream.sample import make_panorama
        return make_panorama(out / "demo.jpg", 2400, 800)
    import skimage.data
    return save(getattr(skimage.data, name)()[..., :3], out / f"{name}.png")


def shrunk(img: np.ndarray, k: int, how: str) -> np.ndarray:
    import pyvips
    im = pyvips.Image.new_from_array(np.ascontiguousarray(img.astype(np.float32)))
    im = im.shrink(k, k) if how == "box" else im.resize(1 / k, kernel="lanczos3")
    return im.numpy().astype(np.float64)


def lowpass_change(before: np.ndarray, after: np.ndarray, sigma: float) -> float:
    import torch

    from gigadream.modes.far import lowpass
    d = torch.from_numpy((after.astype(np.float32) - before).transpose(2, 0, 1).copy())[None]
    return float(lowpass(d, sigma).abs().mean())


def objective(img: np.ndarray, layers: tuple) -> float:
    """Σ weight × mean ½a² over the layers: the dream's LayerL2 on the whole image."""
    import torch

    from gigadream.models import get_model
    x = torch.from_numpy(img.astype(np.float32).transpose(2, 0, 1).copy())[None]
    names = frozenset(n.partition(":")[0] for n, _ in layers)
    with torch.no_grad():
        acts = get_model("vgg16")(x, names)
    return sum(w * 0.5 * float(acts[n].double().pow(2).sum()) / (acts[n].shape[1] * x.shape[-1] * x.shape[-2])
               for n, w in layers)


def seam_ratio(before: np.ndarray, after: np.ndarray, cfg) -> float | None:
    """The change's mean |step| across the finest octave's tile boundaries (every pass's,
    both axes) over that across the lines 2-5 px beside them: 1 = no seam. Measured against
    the lines nearby, not the whole image, since the change's own strength varies with the
    content far more from column to column of a panorama than a seam would add."""
    from gigadream.pipeline import plan
    finest = [p for p in plan(after.shape[:2], cfg) if p.octave == 0 and p.tiles > 1]
    if not finest:
        return None
    change = (after.astype(np.float64) - before).sum(axis=2)
    at, near = [], []
    for axis in (0, 1):
        d = np.abs(np.diff(change, axis=axis)).mean(axis=1 - axis)    # per boundary line
        t, n = cfg.tiling.tile, d.shape[0]
        lines = [j * t - p.offset[axis] - 1 for p in finest for j in range(1, n // t + 2)
                 if 6 <= j * t - p.offset[axis] < n - 6]
        at += [d[c] for c in lines]
        near += [d[c + k] for c in lines for k in (-5, -4, -3, -2, 2, 3, 4, 5)]
    return float(np.mean(at) / np.mean(near))


def crops(before: np.ndarray, results: list[np.ndarray], path: Path, side: int = 384) -> None:
    """Input and results side by side: a full-size crop of the busiest square, and under it
    each whole image at 1/16 (box shrink), enlarged back to the crop's width (nearest)."""
    import pyvips
    h, w = before.shape[:2]
    side = min(side, h, w)
    g = np.abs(np.diff(before.astype(np.float32).sum(2), axis=1))
    y, x = max(((y, x) for y in range(0, h - side + 1, side // 2)
                for x in range(0, w - side + 1, side // 2)),
               key=lambda p: g[p[0]:p[0] + side, p[1]:p[1] + side].mean())
    top = np.concatenate([im[y:y + side, x:x + side] for im in [before, *results]], axis=1)
    small = []
    for im in [before, *results]:
        s = np.clip(shrunk(im, 16, "box") + 0.5, 0, 255).astype(np.uint8)
        s = pyvips.Image.new_from_array(s).resize(side / s.shape[1], kernel="nearest").numpy()
        small.append(s[:, :side])
    height = min(s.shape[0] for s in small)
    bottom = np.concatenate([s[:height] for s in small], axis=1)
    save(np.concatenate([top, bottom], axis=0), path, Q=90)


def style_gain(before: np.ndarray, after: np.ndarray, style_path: Path) -> float:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "style_measure", Path(__file__).resolve().parents[1] / "style" / "measure.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    import pyvips
    style = pyvips.Image.new_from_file(str(style_path))
    style = style.resize(max(after.shape[:2]) / max(style.width, style.height)).numpy()[..., :3]
    target = m.grams(style)
    return m.gram_errors(before, target)[0] / m.gram_errors(after, target)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--inputs", default="demo," + ",".join(PHOTOS))
    p.add_argument("--config", default="impressionist")
    p.add_argument("--far", type=int, default=16)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--off", action="append", default=[], help="settings of the run without")
    p.add_argument("--style", action="store_true")
    p.add_argument("--only", choices=("off", "on"), help="one of the two runs")
    args = p.parse_args()

    from gigadream.modes import load_config
    from gigadream.modes.dream import dream_layers
    from gigadream.pipeline import run
    args.out.mkdir(parents=True, exist_ok=True)
    base = ["export.tiff_compression=none", *args.overrides]
    if args.style:
        from gigadream.sample import painting
        style = save(painting(512, 512), args.out / "painting.png")
        args.config = "impressionist-style"
        args.inputs = "chelsea"
        base = [f"style={style}", "style.whole_size=128", "tiling.tile=128", *base]
    variants = [("off", ["keep_far=0", *args.off]), ("on", [f"keep_far={args.far}"])]
    if args.only:
        variants = [v for v in variants if v[0] == args.only]
    print(f"{args.config} {' '.join(base)}")
    print("| input | keep_far | full | 1/16 box | 1/16 lanczos | low-pass | gain | seams | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.inputs.split(","):
        src = make_input(name, args.out)
        before = read(src)
        results = []
        for label, extra in variants:
            cfg = load_config(args.config, base + extra)
            out = args.out / f"{name}-{args.config}-{label}.tif"
            t = time.perf_counter()
            run(src, cfg, out, overwrite=True)
            seconds = time.perf_counter() - t
            after = read(out)
            results.append(after)
            b, a = before.astype(np.float64), after.astype(np.float64)
            full = np.abs(a - b).mean()
            box = np.abs(shrunk(after, 16, "box") - shrunk(before, 16, "box")).mean()
            lz = np.abs(shrunk(after, 16, "lanczos") - shrunk(before, 16, "lanczos")).mean()
            low = lowpass_change(before, after, args.far / 4)
            gain = (style_gain(before, after, style) if args.style else
                    objective(after, dream_layers(cfg)) / objective(before, dream_layers(cfg)))
            seams = seam_ratio(before, after, cfg)
            print(f"| {name} {before.shape[1]}×{before.shape[0]} | {cfg.keep_far.factor} | "
                  f"{full:.2f} | {box:.2f} | {lz:.2f} | {low:.2f} | {gain:.2f} | "
                  f"{'-' if seams is None else f'{seams:.3f}'} | {seconds:.0f} |", flush=True)
        if len(results) == 2:
            crops(before, results, args.out / f"{name}-{args.config}-crops.jpg")


if __name__ == "__main__":
    main()
