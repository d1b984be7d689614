import numpy as np
import pytest

from gigadream.tiling import (Box, Tile, circular_runs, grid, grid_size, padded_shape, pass_offset,
                              tile_rng)


def test_grid_on_a_tiny_image_matches_hand_written_tiles():
    # 5×7 image, 4 px tiles, grid shifted by (1, 2), 1 px margin.
    tiles = grid((5, 7), 4, (1, 2), margin=1)
    assert tiles == [
        Tile(0, 0, core=Box(0, 3, 0, 2), window=Box(0, 4, 0, 3), chunk=Box(0, 4, 0, 4)),
        Tile(0, 1, core=Box(0, 3, 2, 6), window=Box(0, 4, 1, 7), chunk=Box(0, 4, 4, 8)),
        Tile(0, 2, core=Box(0, 3, 6, 7), window=Box(0, 4, 5, 7), chunk=Box(0, 4, 8, 12)),
        Tile(1, 0, core=Box(3, 5, 0, 2), window=Box(2, 5, 0, 3), chunk=Box(4, 8, 0, 4)),
        Tile(1, 1, core=Box(3, 5, 2, 6), window=Box(2, 5, 1, 7), chunk=Box(4, 8, 4, 8)),
        Tile(1, 2, core=Box(3, 5, 6, 7), window=Box(2, 5, 5, 7), chunk=Box(4, 8, 8, 12)),
    ]


def test_unshifted_grid_is_the_chunk_grid():
    tiles = grid((8, 4), 4)
    assert [t.core for t in tiles] == [Box(0, 4, 0, 4), Box(4, 8, 0, 4)]
    assert [t.chunk for t in tiles] == [Box(0, 4, 0, 4), Box(4, 8, 0, 4)]


def test_one_pixel_image_is_one_tile():
    (t,) = grid((1, 1), 512, (511, 3), margin=64)
    assert t.core == Box(0, 1, 0, 1) and t.window == Box(0, 1, 0, 1)
    assert t.chunk == Box(0, 512, 0, 512)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (511, 513), (12345, 677), (64, 64)])
@pytest.mark.parametrize("tile", [16, 64, 512])
def test_every_pixel_is_written_exactly_once_per_pass(shape, tile):
    rng = np.random.default_rng(7)
    for _ in range(12):
        offset = tuple(int(v) for v in rng.integers(0, tile, 2))
        count = np.zeros(shape, dtype=np.uint8)
        stored = padded_shape(shape, tile)
        chunks = set()
        for t in grid(shape, tile, offset, margin=5):
            count[t.core.slices()] += 1
            # The core, stored at +offset, lies inside the tile's own chunk, which is whole
            # and inside the padded canvas; the window holds the core.
            s = t.core.shift(*offset)
            c = t.chunk
            assert c.y0 <= s.y0 and s.y1 <= c.y1 and c.x0 <= s.x0 and s.x1 <= c.x1
            assert c.shape == (tile, tile) and c.y1 <= stored[0] and c.x1 <= stored[1]
            w = t.window
            assert w.y0 <= t.core.y0 and t.core.y1 <= w.y1 and w.x0 <= t.core.x0 and t.core.x1 <= w.x1
            chunks.add((c.y0, c.x0))
        assert count.min() == 1 and count.max() == 1, (shape, tile, offset)
        assert len(chunks) == np.prod(grid_size(shape, tile, offset))


def test_window_is_core_plus_margin_clipped_to_the_image():
    for t in grid((100, 90), 32, (5, 9), margin=7):
        assert t.window == Box(max(0, t.core.y0 - 7), min(100, t.core.y1 + 7),
                               max(0, t.core.x0 - 7), min(90, t.core.x1 + 7))


@pytest.mark.parametrize("wrap", [False, True])
def test_windows_start_and_end_on_the_stride_where_the_image_allows(wrap):
    # A 512 px tile with 43 px margins is 598 px: the CPU's fast convolutions want 600 (dream).
    shape, align = (1203, 1530), 4
    tiles = grid(shape, 512, (101, 77), margin=43, align=align, wrap=wrap, align_end=True)
    for t in tiles:
        w, c = t.window, t.core
        assert w.y0 % align == 0 and w.x0 % align == 0
        assert w.y1 % align == 0 or w.y1 == shape[0]
        assert w.x1 % align == 0 or (not wrap and w.x1 == shape[1])
        assert w.y0 <= c.y0 - min(43, c.y0) and c.y1 + min(43, shape[0] - c.y1) <= w.y1
    inner = [t for t in tiles if t.core.shape == (512, 512) and 0 < t.window.y0
             and t.window.y1 < shape[0] and 0 < t.window.x0 and t.window.x1 < shape[1]]
    assert inner and {t.window.shape for t in inner} <= {(600, 600), (600, 604), (604, 600),
                                                          (604, 604)}
    plain = grid(shape, 512, (101, 77), margin=43, align=align, wrap=wrap)   # style's
    assert [t.window.y1 for t in plain] == [min(shape[0], t.core.y1 + 43) for t in plain]


def test_offset_outside_the_tile_is_refused():
    with pytest.raises(ValueError, match="offset"):
        grid((10, 10), 4, (4, 0))


def test_pass_offsets_are_seeded_and_vary():
    offsets = {pass_offset(0, k, p, 512) for k in range(4) for p in range(4)}
    assert len(offsets) > 12
    assert all(0 <= oy < 512 and 0 <= ox < 512 for oy, ox in offsets)
    assert pass_offset(3, 1, 2, 256) == pass_offset(3, 1, 2, 256)
    assert pass_offset(3, 1, 2, 256) != pass_offset(4, 1, 2, 256)


def test_tile_randomness_depends_only_on_seed_octave_pass_and_tile():
    t = grid((64, 64), 16)[5]
    a = tile_rng(1, 2, 3, t).integers(0, 1000, 8)
    assert np.array_equal(a, tile_rng(1, 2, 3, t).integers(0, 1000, 8))
    assert not np.array_equal(a, tile_rng(1, 2, 4, t).integers(0, 1000, 8))


def test_a_wrapped_grid_on_a_tiny_image_matches_hand_written_tiles():
    # 5×7 image whose x wraps (a 360° panorama), 4 px tiles, grid shifted by (1, 2), 1 px
    # margin: two columns of tiles cover the circle; the first straddles the edge (its core
    # x -2..2 is columns 5, 6, 0, 1) and every window reaches round it.
    tiles = grid((5, 7), 4, (1, 2), margin=1, wrap=True)
    assert tiles == [
        Tile(0, 0, core=Box(0, 3, -2, 2), window=Box(0, 4, -3, 3), chunk=Box(0, 4, 0, 4)),
        Tile(0, 1, core=Box(0, 3, 2, 5), window=Box(0, 4, 1, 6), chunk=Box(0, 4, 4, 8)),
        Tile(1, 0, core=Box(3, 5, -2, 2), window=Box(2, 5, -3, 3), chunk=Box(4, 8, 0, 4)),
        Tile(1, 1, core=Box(3, 5, 2, 5), window=Box(2, 5, 1, 6), chunk=Box(4, 8, 4, 8)),
    ]


@pytest.mark.parametrize("shape", [(1, 2), (9, 1), (51, 133), (64, 64), (17, 1000)])
@pytest.mark.parametrize("tile", [16, 64, 512])
def test_a_wrapped_grid_writes_every_pixel_of_the_circle_once(shape, tile):
    """Cores, taken mod the width, partition the image; each lies, stored at +offset, in its
    own whole chunk within the stored width; windows hold their core and the margin on both
    sides, whatever the edge."""
    rng = np.random.default_rng(8)
    h, w = shape
    for _ in range(12):
        offset = int(rng.integers(0, tile)), int(rng.integers(0, w))    # ox: anywhere round
        count = np.zeros(shape, dtype=np.uint8)
        chunks = set()
        for t in grid(shape, tile, offset, margin=5, wrap=True):
            np.add.at(count, (t.core.slices()[0], np.arange(t.core.x0, t.core.x1) % w), 1)
            s, c, win = t.core.shift(*offset), t.chunk, t.window
            assert c.y0 <= s.y0 and s.y1 <= c.y1 and s.x0 == c.x0 and s.x1 <= min(c.x1, w)
            assert c.x0 < w and c.y1 <= padded_shape(shape, tile)[0]
            assert (win.x0, win.x1) == (t.core.x0 - 5, t.core.x1 + 5)
            assert (win.y0, win.y1) == (max(0, t.core.y0 - 5), min(h, t.core.y1 + 5))
            chunks.add((c.y0, c.x0))
        assert count.min() == 1 and count.max() == 1, (shape, tile, offset)
        assert len(chunks) == np.prod(grid_size(shape, tile, offset, wrap=True))


def test_a_wrapped_grid_may_start_anywhere_round_the_circle():
    # 4 × 10 circle in 4 px tiles from x = -7: cores -7..-3 (columns 3..7), -3..1, and the
    # narrower last one, 1..3, which ends where the first begins (3 = -7 + 10)
    tiles = grid((4, 10), 4, (0, 7), wrap=True)
    assert [(t.core.x0, t.core.x1) for t in tiles] == [(-7, -3), (-3, 1), (1, 3)]
    assert [t.chunk.x0 for t in tiles] == [0, 4, 8]
    with pytest.raises(ValueError, match="offset"):
        grid((4, 10), 4, (0, 10), wrap=True)
    offsets = {pass_offset(0, k, p, 64, wrap=1000)[1] for k in range(4) for p in range(4)}
    assert max(offsets) >= 64 and all(0 <= ox < 1000 for ox in offsets)


def test_circular_runs_cut_an_unrolled_range_at_the_edge():
    assert circular_runs(2, 5, 7) == [(2, 5)]
    assert circular_runs(-3, 3, 7) == [(4, 7), (0, 3)]
    assert circular_runs(5, 20, 7) == [(5, 7), (0, 7), (0, 6)]
    assert circular_runs(7, 9, 7) == [(0, 2)] and circular_runs(3, 3, 7) == []
