"""The README's picture: a crop at 100 % of a result beside the same crop of its input.

    python -m gigadream.sample pano.jpg --width 1600 --height 600
    gigadream run pano.jpg --config impressionist -o pano-dream.jpg
    python docs/images/crop.py pano.jpg pano-dream.jpg docs/images/impressionist-crop.jpg

The default box (x, y, width, height) holds the sample's coffee cup and spoon."""
import argparse

import pyvips


def side_by_side(before: str, after: str, out: str, box: tuple[int, int, int, int]) -> None:
    """Write the box of ``before`` and of ``after``, 8 white px apart, as a JPEG."""
    x, y, w, h = box
    left = pyvips.Image.new_from_file(before).crop(x, y, w, h)
    right = pyvips.Image.new_from_file(after).crop(x, y, w, h)
    gap = pyvips.Image.black(8, h, bands=3) + 255
    left.join(gap, "horizontal").join(right, "horizontal").write_to_file(f"{out}[Q=85,strip]")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("out")
    p.add_argument("--box", default="860,160,440,420", help="x,y,width,height in pixels")
    a = p.parse_args()
    side_by_side(a.before, a.after, a.out, tuple(int(v) for v in a.box.split(",")))
