"""The naive way, for comparison: DeepDream as it was first scaled up to big images.

    python -m gigadream.baseline INPUT OUT.jpg [--config FILE] [--set KEY=VALUE] [--events FILE]

The whole image is decoded with PIL into one float32 array. Each octave, coarsest first, is the
photo resized whole plus the upsampled detail dreamed so far; each pass rolls the whole array by
a random shift (``np.roll``: a full copy), takes the gradient tile by tile on a fixed grid,
rolls the gradient back and steps by it, normalised by its whole-image mean (the TensorFlow
DeepDream tutorial's ``calc_grad_tiled``). Same model, objective, octaves, passes and tile size
as ``gigadream run``; no margins, no store, no workers. Memory grows with the pixels: about
40 bytes a pixel at the finest octave. ``gigadream profile`` measures it beside the real run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .config import Config
from .modes import load_config, mode_for

BYTES_PER_PIXEL = 40     # uint8 photo + float32 image, rolled copy and gradient (3 × 12)


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float32 → ``shape``, bilinear, channel by channel with PIL."""
    from PIL import Image
    h, w = shape
    return np.stack([np.asarray(Image.fromarray(a[..., c], mode="F").resize((w, h), Image.BILINEAR))
                     for c in range(a.shape[2])], axis=-1)


def _gradient_tiled(img: np.ndarray, tile: int, gradient, rng: np.random.Generator) -> np.ndarray:
    """The whole image's gradient, tile by tile under a random roll (np.roll both ways);
    zeros without a ``gradient`` (identity: only the data moves)."""
    h, w = img.shape[:2]
    sy, sx = (int(v) for v in rng.integers(tile, size=2))
    shifted = np.roll(img, (sy, sx), (0, 1))
    grad = np.zeros_like(img)
    if gradient is not None:
        import torch
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                sub = torch.from_numpy(np.ascontiguousarray(
                    shifted[y:y + tile, x:x + tile].transpose(2, 0, 1)))[None]
                g, _ = gradient(sub)
                grad[y:y + tile, x:x + tile] = g[0].cpu().numpy().transpose(1, 2, 0)
    del shifted
    return np.roll(grad, (-sy, -sx), (0, 1))


def naive_run(input_path: Path, cfg: Config, out: Path, on_stage=lambda name, detail: None) -> None:
    """Dream ``input_path`` into ``out`` the naive way (modes dream and identity)."""
    from PIL import Image

    from .resample import octave_shape

    mode = mode_for(cfg)
    if not mode.naive:
        raise ValueError(f"the naive baseline does dream and identity, not {cfg.mode}")
    Image.MAX_IMAGE_PIXELS = None       # PIL refuses big panoramas by default
    on_stage("decode", Path(input_path).name)
    photo = Image.open(input_path).convert("RGB")
    gradient = mode.naive_gradient()
    rng = np.random.default_rng(cfg.seed)
    n, scale = mode.octaves((photo.height, photo.width))
    img = base = None
    for k in reversed(range(n)):
        h, w = octave_shape((photo.height, photo.width), scale, k)
        on_stage("octave", f"octave {k}: {w}×{h} px")
        new_base = np.asarray(photo.resize((w, h), Image.BILINEAR) if k else photo, np.float32)
        img = new_base if img is None else new_base + _resize(img - base, (h, w))
        base = new_base
        for p in range(mode.passes_per_octave):
            on_stage("pass", f"octave {k} pass {p + 1}")
            for _ in range(mode.iterations):
                g = _gradient_tiled(img, cfg.tiling.tile, gradient, rng)
                if gradient is not None:
                    img += g * (cfg.dream.dose * cfg.dream.step_size / (np.abs(g).mean() + 1e-7))
                    np.clip(img, 0, 255, out=img)
                del g
    on_stage("encode", Path(out).name)
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(
        out, quality=cfg.export.quality)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gigadream.baseline",
                                description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--config", "-c")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--events", type=Path, help="write stages as JSON lines with times")
    args = p.parse_args(argv)
    log = open(args.events, "w", buffering=1) if args.events else None

    def on_stage(name: str, detail: str) -> None:
        if log:
            import json
            log.write(json.dumps({"t": time.time(), "event": "Stage", "name": name,
                                  "detail": detail}) + "\n")
    naive_run(args.input, load_config(args.config, args.overrides), args.output, on_stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
