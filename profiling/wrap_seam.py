"""Seams where a 360° panorama's edges meet: dream and style with ``tiling.wrap`` auto (on: the
input carries GPano equirectangular XMP) and none.

Two panoramas whose left and right edges meet, both 2:1, from a real photo (scikit-image's
astronaut, its middle half):

- ``twins``: a strip of the photo beside its mirror image, twice. The junction where the
  edges meet (the strip's left side against its mirror) recurs in the middle of the image:
  each run has its own control, the same content away from any edge. 560 × 280 px, so that
  at dream's octave scale 1.4 the twin junction (280 px in) falls on a pixel boundary of the
  coarser octave (200 px in) as the edge does (at 512 px it falls mid-pixel, 182.9 px in:
  the coarser octave then samples the two junctions differently).
- ``rolled``: the photo rolled by half its width, so that its edges are neighbouring columns
  of the photo.

Each result's change (result − input) is turned so that the edge lies inside the image (by a
quarter turn for ``twins``, a half for ``rolled``); the figures are the mean |step| of that
change across the edge's column over that across its ``NEIGHBOURS`` neighbours' columns
each side (``edge``), the same at the twin junction (``twin``), and the 5th-95th percentile of
that ratio at all the other columns (the photo's own column-to-column spread). No seam:
edge ≈ twin. How far apart two such twins fall anyway (the dream's jitter, the tile grids)
shows in the other pair of junctions of ``twins``, both inside the image (``pair``). One line
per run:

    PYTHONPATH=. python profiling/wrap_seam.py [--out DIR] [--modes dream,style] [--seeds N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NEIGHBOURS = 12
GPANO_XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
             b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
             b'rdf:about="" xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
             b'GPano:ProjectionType="equirectangular" GPano:UsePanoramaViewer="True"/>'
             b'</rdf:RDF></x:xmpmeta>')

# 560 × 280 px panoramas, two octaves of 128 px tiles (dream) or a whole octave of 256 px and
# a tiled one (style): the default layers, jitter and margins.
DREAM = ["tiling.tile=128", "dream.octaves=2", "dream.passes=2"]
STYLE = ["mode=style", "style.whole_size=256", "style.whole_iterations=100", "style.passes=2",
         "style.iterations=3", "tiling.tile=128"]


def panorama(path: Path, kind: str, width: int = 512) -> Path:
    """A width × width/2 JPEG whose left and right edges meet (``twins`` or ``rolled``), tagged
    as an equirectangular 360° panorama (GPano XMP, as PTGui and Hugin write it)."""
    import pyvips
    import skimage.data
    photo = skimage.data.astronaut()[128:384]                          # 256 × 512
    if width != 512:
        photo = pyvips.Image.new_from_array(photo).resize(width / 512).numpy()
    assert photo.shape[:2] == (width // 2, width), photo.shape
    if kind == "rolled":
        pano = np.roll(photo, width // 2, axis=1)
    else:
        strip = photo[:, width // 4:width // 2]
        pano = np.concatenate([strip, strip[:, ::-1]] * 2, axis=1)
    im = pyvips.Image.new_from_array(np.ascontiguousarray(pano)).copy(interpretation="srgb")
    im.set_type(pyvips.GValue.blob_type, "xmp-data", GPANO_XMP)
    im.jpegsave(str(path), Q=95)
    return path


def painting_file(path: Path) -> Path:
    import pyvips

    from gigadream.sample import painting
    im = pyvips.Image.new_from_array(painting(256, 256)).copy(interpretation="srgb")
    im.write_to_file(str(path))
    return path


def ratios(img: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each column's mean |step| to the next (over rows and channels) over the mean of its
    2k neighbours' (NaN where they run out)."""
    c = np.abs(np.diff(img.astype(np.float64), axis=1)).mean(axis=(0, 2))
    out = np.full(c.shape, np.nan)
    for j in range(k, len(c) - k):
        out[j] = c[j] / np.concatenate([c[j - k:j], c[j + 1:j + k + 1]]).mean()
    return out


def seam(before: np.ndarray, after: np.ndarray, kind: str) -> dict[str, float]:
    """``edge``, ``twin`` and ``pair`` (twins only: the ratio between the other two
    junctions) and the spread (``lo``, ``hi``) of the change's step ratio, the change turned
    so that the edge lies inside the image (by w/8 for twins: every junction is inside)."""
    w = after.shape[1]
    turn = w // 8 if kind == "twins" else w // 2
    r = ratios(np.roll(after.astype(np.float64) - before, turn, axis=1))
    edge = turn - 1                        # the step from former column w - 1 to column 0
    out = {"edge": float(r[edge])}
    if kind == "twins":
        out["twin"] = float(r[edge + w // 2])
        out["pair"] = float(r[edge + w // 4] / r[edge + 3 * w // 4])
    out["lo"], out["hi"] = (float(v) for v in np.nanpercentile(np.delete(r, edge), [5, 95]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="folder for the images (default: a temporary one)")
    p.add_argument("--modes", default="dream,style")
    p.add_argument("--images", default="twins,rolled")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--size", type=int, default=560, help="panorama width (px); height is half")
    args = p.parse_args()
    import pyvips

    from gigadream.config import load_config
    from gigadream.pipeline import run
    out = args.out or Path(tempfile.mkdtemp(prefix="wrap-seam-"))
    out.mkdir(parents=True, exist_ok=True)
    style = painting_file(out / "painting.png")
    for kind in args.images.split(","):
        src = panorama(out / f"{kind}.jpg", kind, args.size)
        before = pyvips.Image.new_from_file(str(src)).numpy().astype(np.float64)
        for mode in args.modes.split(","):
            sets = DREAM if mode == "dream" else STYLE + [f"style={style}"]
            for seed in range(args.seeds):
                for wrap in ("auto", "none"):
                    cfg = load_config(None, sets + [f"tiling.wrap={wrap}", f"seed={seed}",
                                                    "export.tiff_compression=none"])
                    t = time.perf_counter()
                    res = run(src, cfg, out / f"{kind}-{mode}-{wrap}-{seed}.tif",
                              overwrite=True, restart=True)
                    after = pyvips.Image.new_from_file(str(res.output)).numpy()
                    s = seam(before, after, kind)
                    twin = (f", twin {s['twin']:.2f}x: edge/twin {s['edge'] / s['twin']:.2f} "
                            f"(the other pair {s['pair']:.2f})" if "twin" in s else "")
                    print(f"{kind:6} {mode:5} wrap {wrap:4} seed {seed}: step of the change "
                          f"across the edge {s['edge']:.2f}x its neighbours'{twin} (other "
                          f"columns {s['lo']:.2f}-{s['hi']:.2f}); "
                          f"{time.perf_counter() - t:.0f} s", flush=True)
    print(f"images in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
