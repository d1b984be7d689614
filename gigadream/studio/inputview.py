"""An input image's deep zoom and its viewer page, made in a child process of the studio on
demand (libvips' memory for a 250 MB panorama stays out of the server):

    python -m gigadream.studio.inputview IMAGE FOLDER NAME

writes FOLDER/input.dzi, FOLDER/input_files/ and FOLDER/index.html (the viewer page with the
input on both sides of its curtain: there is no result yet), the page last.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(src: str, folder: str, name: str) -> int:
    import pyvips

    from ..ingest import to_srgb
    from .security import block_loaders
    block_loaders()         # the studio's formats only, as in every child of the studio
    from ..viewer import write_viewer
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    im = to_srgb(pyvips.Image.new_from_file(src).autorot())      # upright, 8-bit sRGB
    im.dzsave(str(out / "input"), layout="dz", Q=90)
    write_viewer(out / "index.html", out / "input.dzi", out / "input.dzi", title=name)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
