"""Sample panoramas made from real photos (scikit-image's), at any size, streamed; and a
painting-like style image (made, so that nothing needs downloading).

    python -m gigadream.sample OUT.jpg --width 20000 --height 15000
    python -m gigadream.sample painting.png --painting --width 512 --height 512

The photos are joined side by side into one strip, scaled to the height asked for and
repeated across; libvips streams it to JPEG, so a 300 MP file takes seconds and little memory.
"""
from __future__ import annotations

import argparse
from pathlib import Path

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "coins", "camera", "hubble_deep_field")


def make_panorama(out: Path, width: int, height: int, quality: int = 90,
                  noise: float = 0.0) -> Path:
    """``noise``: the standard deviation, in levels, of the sensor noise laid over the photos
    (0: none, smooth as the upscaled photos are)."""
    import numpy as np
    import pyvips
    import skimage.data

    strips = []
    for name in PHOTOS:
        a = np.asarray(getattr(skimage.data, name)())
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        im = pyvips.Image.new_from_array(np.ascontiguousarray(a[..., :3])).copy(interpretation="srgb")
        strips.append(im.resize(512 / im.height))
    strip = strips[0]
    for im in strips[1:]:
        strip = strip.join(im, "horizontal")
    strip = strip.resize(height / strip.height) if height != strip.height else strip
    across = -(-width // strip.width)
    # Mirror every other copy so the repeats meet without a hard edge.
    pair = strip.join(strip.flip("horizontal"), "horizontal")
    pano = pair.replicate(-(-across // 2), 1).crop(0, 0, width, height)
    if noise:
        pano = (pano + _sensor_noise(width, height, noise)).cast("uchar")
    pano = pano.copy(interpretation="srgb")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pano.jpegsave(str(out), Q=quality)
    return Path(out)


NOISE_TILE = 1021          # px; a prime, so its repeats and the photos' never line up


def _sensor_noise(width: int, height: int, sigma: float):
    """Camera-like noise as a libvips image: mostly luminance (the same on all bands), a
    third as much per band (chroma), tiled from one seeded square so it streams."""
    import numpy as np
    import pyvips

    rng = np.random.default_rng(0)
    n = NOISE_TILE
    luma = rng.normal(0, sigma, (n, n, 1))
    chroma = rng.normal(0, sigma / 3, (n, n, 3))
    tile = pyvips.Image.new_from_array(np.rint(luma + chroma).astype(np.int8))
    return tile.replicate(-(-width // n), -(-height // n)).crop(0, 0, width, height)


# Blue and ochre oil colours (sRGB): the palette of the painting-like style image.
PALETTE = ((28, 52, 120), (52, 92, 168), (96, 140, 200), (170, 196, 224),
           (196, 144, 52), (222, 184, 92), (150, 98, 34), (238, 226, 190))


def painting(width: int, height: int, seed: int = 0):
    """(height, width, 3) uint8: thousands of short brush strokes laid along a swirling flow
    field, in blue and ochre (``PALETTE``). Each stroke is a chain of soft round dabs with
    bristle streaks across its width and a colour that drifts along it, so the image has what
    a style loss sees in a painting: oriented strokes at a few pixels' scale, impasto-like
    light and dark within a stroke, and large swirls of colour."""
    import numpy as np

    rng = np.random.default_rng(seed)
    side = max(width, height)
    r = max(1.5, side / 160)                        # brush radius: 3.2 px at 512 px
    yy, xx = np.mgrid[0:height, 0:width] / side
    # swirls: a few vortices plus a slow wave, as angles of the flow at each pixel
    angle = 2.0 * np.sin(3.1 * xx + 1.7 * yy) + 1.3 * np.cos(4.3 * yy - 2.2 * xx)
    for cy, cx, s in rng.uniform((0, 0, -1), (1, 1, 1), (5, 3)):
        angle += 1.5 * np.sign(s) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) * (
            np.arctan2(yy - cy, xx - cx) + np.pi / 2) / np.pi
    # colour regions follow another slow field: mostly blue, ochre in bands
    region = np.sin(5.0 * xx + 2.0 * np.cos(3.0 * yy)) + 0.6 * np.cos(7.0 * yy + xx)
    palette = np.array(PALETTE, np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = palette[1] * 0.6 + palette[4] * 0.4
    n = int(2.5 * width * height / (r * r * 12))    # enough strokes to cover the canvas twice
    k = int(2 * r + 3)
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    for y, x in rng.uniform((0, 0), (height, width), (n, 2)):
        blue = region[int(y), int(x)] + rng.normal(0, 0.5) > -0.3
        colour = palette[rng.integers(0, 4) if blue else rng.integers(4, 8)] + rng.normal(0, 12, 3)
        length = rng.integers(4, 10)
        rad = r * rng.uniform(0.7, 1.3)
        phase = rng.uniform(0, 2 * np.pi)
        for step in range(length):
            iy, ix = int(y), int(x)
            if not (0 <= iy < height and 0 <= ix < width):
                break
            a = angle[iy, ix]
            ca, sa = np.cos(a), np.sin(a)
            across = -dy * ca + dx * sa                # distance across the stroke (bristles)
            mask = np.clip(rad + 0.5 - np.hypot(dy, dx), 0, 1)
            shade = 1.0 + 0.12 * np.sin(2.2 * across + phase)
            ys, xs = slice(max(0, iy - k), min(height, iy + k + 1)), slice(max(0, ix - k), min(width, ix + k + 1))
            my, mx = slice(ys.start - iy + k, ys.stop - iy + k), slice(xs.start - ix + k, xs.stop - ix + k)
            m = mask[my, mx, None]
            img[ys, xs] = img[ys, xs] * (1 - m) + m * colour * shade[my, mx, None]
            colour = colour + rng.normal(0, 3, 3)
            y, x = y + 0.8 * rad * sa, x + 0.8 * rad * ca
    return np.clip(img, 0, 255).astype(np.uint8)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m gigadream.sample",
        description="Write a sample image to try gigadream on: a panorama joined from "
                    "scikit-image's photos, any size, streamed by libvips in seconds; or, "
                    "with --painting, a painting-like style image.")
    p.add_argument("out", type=Path, metavar="OUT",
                   help="the image to write: .jpg, .png or .tif, by its name")
    p.add_argument("--width", type=int, default=3000, help="width in pixels (default 3000)")
    p.add_argument("--height", type=int, default=1000, help="height in pixels (default 1000)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="camera-like noise, its standard deviation in levels (9: ~0.4 bytes a "
                        "pixel at quality 90, as stitched photos are)")
    p.add_argument("--painting", action="store_true", help="a painting-like style image instead")
    args = p.parse_args(argv)
    if args.painting:
        import pyvips
        pyvips.Image.new_from_array(painting(args.width, args.height)).copy(
            interpretation="srgb").write_to_file(str(args.out))
    else:
        make_panorama(args.out, args.width, args.height, noise=args.noise)
    print(f"wrote {args.out} ({args.width}×{args.height} px)")


if __name__ == "__main__":
    main()
