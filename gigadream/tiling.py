"""Tile geometry: pure functions of image shape, tile size, margin and grid offset.

A pass covers the image with a grid of ``tile``-sized squares shifted by ``offset``
(``0 <= oy, ox < tile``). Pixel (y, x) of the image is *stored* at (y + oy, x + ox) in a
canvas whose chunks are ``tile`` square, so tile (i, j) owns exactly chunk (i, j): every tile
writes whole chunks that no other tile touches ("roll in place", DESIGN.md).

With ``wrap`` (a 360° panorama) x is circular: column x of a w px wide image is column x mod w,
and pixel (y, x) is stored at (y + oy, (x + ox) mod w), a true roll, with ``0 <= ox < w``. The
grid then tiles the circle: tile (i, 0) owns columns [-ox, tile - ox), which may straddle the
edge (its core's x0 is negative: columns are written unrolled, and mean x mod w), and the
windows reach across the edge instead of stopping at it. Where w is no multiple of the tile,
the last tile of a row is narrower; it ends where tile (i, 0) begins, and ``pass_offset``
puts that anywhere on the circle, so the edge is an ordinary place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Half-open rectangle [y0, y1) × [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def size(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def shift(self, dy: int, dx: int) -> Box:
        return Box(self.y0 + dy, self.y1 + dy, self.x0 + dx, self.x1 + dx)

    def grow(self, margin: int, shape: tuple[int, int], wrap: bool = False) -> Box:
        """This box widened by ``margin`` on every side, clipped to an image of ``shape``
        (in y only where x ``wrap``s: there the margin reaches round to the other side)."""
        h, w = shape
        if wrap:
            return Box(max(0, self.y0 - margin), min(h, self.y1 + margin),
                       self.x0 - margin, self.x1 + margin)
        return Box(max(0, self.y0 - margin), min(h, self.y1 + margin),
                   max(0, self.x0 - margin), min(w, self.x1 + margin))

    def relative_to(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer``'s top-left corner."""
        return self.shift(-outer.y0, -outer.x0)


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    core: Box    # image pixels this tile owns and writes (with wrap, x unrolled: x0 may be < 0)
    window: Box  # image pixels it reads: core + margin, clipped to the image (not in x with wrap)
    chunk: Box   # stored coordinates of the one chunk it writes, whole


def grid_size(shape: tuple[int, int], tile: int, offset: tuple[int, int] = (0, 0),
              wrap: bool = False) -> tuple[int, int]:
    """Rows and columns of tiles that a grid shifted by ``offset`` needs to cover ``shape``
    (with ``wrap``, the columns that cover the circle: the shift only rolls them round)."""
    (h, w), (oy, ox) = shape, offset
    return math.ceil((h + oy) / tile), math.ceil(w / tile) if wrap else math.ceil((w + ox) / tile)


def grid(shape: tuple[int, int], tile: int, offset: tuple[int, int] = (0, 0),
         margin: int = 0, align: int = 1, wrap: bool = False,
         align_end: bool = False) -> list[Tile]:
    """The tiles of one pass, row-major. Their cores partition the image exactly (with
    ``wrap``: the circle, x taken mod the width).

    Windows start on multiples of ``align`` (a network's largest stride): then every window's
    pooling grid lines up with the whole image's, and with enough margin a window's features
    equal the whole image's features there (the margin grows by up to align - 1 on the top
    and left sides). With ``wrap`` that holds across the edge too where the width is a
    multiple of ``align``, and ox may be anything in [0, w). With ``align_end``, windows also
    end on multiples of ``align`` where the image allows (``aligned``): the CPU's fast
    convolutions need it."""
    h, w = shape
    oy, ox = offset
    if not (0 <= oy < tile and 0 <= ox < (w if wrap else tile)):
        raise ValueError(f"offset {offset} must lie in [0, {tile})"
                         + (f" × [0, {w})" if wrap else ""))
    rows, cols = grid_size(shape, tile, offset, wrap)
    tiles = []
    for i in range(rows):
        for j in range(cols):
            chunk = Box(i * tile, (i + 1) * tile, j * tile, (j + 1) * tile)
            if wrap:     # stored columns [0, w) hold the circle rolled by ox
                x0, x1 = chunk.x0 - ox, min(w, chunk.x1) - ox
            else:
                x0, x1 = max(0, chunk.x0 - ox), min(w, chunk.x1 - ox)
            core = Box(max(0, chunk.y0 - oy), min(h, chunk.y1 - oy), x0, x1)
            window = aligned(core.grow(margin, shape, wrap), align, shape, wrap, align_end)
            tiles.append(Tile(i, j, core, window, chunk))
    return tiles


def aligned(window: Box, align: int, shape: tuple[int, int], wrap: bool = False,
            end: bool = True) -> Box:
    """``window`` widened to start (and with ``end``, to end) on multiples of ``align``, its
    ends clipped to an image of ``shape`` (not in x where x ``wrap``s). The end matters for
    speed: oneDNN's
    fast (brgemm) convolutions on this CPU fall back to a slower kernel where a feature map
    between two poolings has an odd side, and a 512 px tile with 43 px margins is 598 px,
    299 after the first pooling: a VGG16 step to relu3_3 then costs 1.5× as much CPU time a
    pixel as at 600 px (bf16, 2 threads, medians of 6 alternated steps: 6.4 against 4.2
    CPU-s a megapixel; 604-640 px: 4.3-5.1)."""
    def up(v: int) -> int:
        return v + (-v) % align if end else v
    h, w = shape
    return Box(window.y0 - window.y0 % align, min(h, up(window.y1)),
               window.x0 - window.x0 % align, up(window.x1) if wrap else min(w, up(window.x1)))


def split_tile(tile: Tile, parts: int, margin: int, align: int = 1) -> list[Tile]:
    """``tile``'s core cut into ``parts`` × ``parts`` cores (cut on multiples of ``align``
    where the core allows), row-major, each with ``margin`` px of context within the tile's
    window and its window starting on a multiple of ``align``, as ``grid``'s do: the tiles
    of a tile that does not fit in a GPU's memory (``engine``). Their cores partition the
    tile's; they keep its row, column and chunk (their jitter is the tile's)."""
    def cuts(a: int, b: int) -> list[int]:
        inner = [a + (b - a) * k // parts for k in range(1, parts)]
        inner = [c - c % align if a < c - c % align else c for c in inner]
        return [a, *sorted(set(inner)), b]

    w = tile.window
    ys, xs = cuts(tile.core.y0, tile.core.y1), cuts(tile.core.x0, tile.core.x1)
    out = []
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            core = Box(y0, y1, x0, x1)
            win = Box(max(w.y0, y0 - margin), min(w.y1, y1 + margin),
                      max(w.x0, x0 - margin), min(w.x1, x1 + margin))
            # the tile's window starts on a multiple of align: these stay inside it
            win = aligned(win, align, (w.y1, w.x1), end=False)
            out.append(Tile(tile.row, tile.col, core, win, tile.chunk))
    return out


def circular_runs(x0: int, x1: int, w: int) -> list[tuple[int, int]]:
    """Columns [x0, x1) of a circle w wide, unrolled, as runs [a, b) of columns in [0, w):
    one run where the range stays on one turn, more where it crosses the edge."""
    runs = []
    while x0 < x1:
        a = x0 % w
        b = min(w, a + x1 - x0)
        runs.append((a, b))
        x0 += b - a
    return runs


def padded_shape(shape: tuple[int, int], tile: int) -> tuple[int, int]:
    """Stored extent of a canvas that any offset in [0, tile) fits, in whole chunks."""
    h, w = shape
    return (math.ceil((h + tile - 1) / tile) * tile, math.ceil((w + tile - 1) / tile) * tile)


def pass_offset(seed: int, octave: int, pass_: int, tile: int,
                wrap: int | None = None) -> tuple[int, int]:
    """The random grid offset of one pass; the same (seed, octave, pass) always gives the same.

    ``wrap``: the width of a circular x, over which ox is drawn: the row's narrower last tile
    (where the width is no multiple of the tile) then lands anywhere, not always beside the
    edge, where it would make a step in a dream's change across the edge
    (profiling/code-figures.md: tiling.py)."""
    rng = np.random.default_rng([seed, octave, pass_, 0x0FF5E7])
    oy, ox = rng.integers(0, tile, size=2)
    if wrap is not None:
        ox = rng.integers(0, wrap)
    return int(oy), int(ox)


def tile_rng(seed: int, octave: int, pass_: int, tile: Tile) -> np.random.Generator:
    """Randomness of one tile (its jitter), independent of where and when it runs."""
    return np.random.default_rng([seed, octave, pass_, tile.row, tile.col])
