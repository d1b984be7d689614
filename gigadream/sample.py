"""Sample panoramas made from real photos (scikit-image's), at any size, streamed.

    python -m gigadream.sample OUT.jpg --width 20000 --height 15000

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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=3000)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--noise", type=float, default=0.0,
                   help="camera-like noise, its standard deviation in levels (9: ~0.4 bytes a "
                        "pixel at quality 90, as stitched photos are)")
    args = p.parse_args(argv)
    make_panorama(args.out, args.width, args.height, noise=args.noise)
    print(f"wrote {args.out} ({args.width}×{args.height} px)")


if __name__ == "__main__":
    main()
