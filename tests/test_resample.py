import numpy as np
import pytest

from gigadream.resample import axis_weights, octave_shape, resample_window, support
from gigadream.tiling import Box, grid


def _reader(img):
    return lambda b: img[:, b.y0:b.y1, b.x0:b.x1]


@pytest.mark.parametrize("out_shape", [(26, 38), (53, 75), (37, 53), (1, 1)])
def test_windows_reproduce_the_whole_resize(out_shape):
    """Tile by tile as whole, bit for bit; numpy (the client) and torch (the workers) alike."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (3, 37, 53)).astype(np.float32)
    whole = resample_window(_reader(img), (37, 53), out_shape, Box(0, out_shape[0], 0, out_shape[1]),
                            use_torch=False)
    for use_torch in (False, True):
        tiled = np.zeros_like(whole)
        for t in grid(out_shape, 8, (3, 5)):
            tiled[(slice(None), *t.core.slices())] = resample_window(_reader(img), (37, 53),
                                                                     out_shape, t.core, use_torch)
        assert tiled.dtype == np.float32
        assert np.array_equal(tiled, whole)    # each pixel's value never depends on its tile
    i0, i1, my = axis_weights(37, out_shape[0], 0, out_shape[0])
    j0, j1, mx = axis_weights(53, out_shape[1], 0, out_shape[1])
    dense = np.matmul(np.matmul(my, img[:, i0:i1, j0:j1]), mx.T)
    np.testing.assert_allclose(whole, dense, rtol=0, atol=1e-3)


def test_same_size_is_the_identity_and_constants_stay_constant():
    img = np.random.default_rng(1).uniform(0, 255, (3, 20, 30)).astype(np.float32)
    same = resample_window(_reader(img), (20, 30), (20, 30), Box(0, 20, 0, 30))
    np.testing.assert_allclose(same, img, atol=1e-4)
    flat = np.full((3, 20, 30), 77.0, np.float32)
    for out in [(7, 11), (40, 61)]:
        r = resample_window(_reader(flat), (20, 30), out, Box(0, out[0], 0, out[1]))
        np.testing.assert_allclose(r, 77.0, atol=1e-3)


def test_downsampling_by_two_averages_neighbouring_pairs():
    # Antialiased triangle of half-width 2 at centres between pixel pairs: weights 1/8, 3/8, 3/8, 1/8.
    i0, i1, m = axis_weights(8, 4, 1, 2)
    assert (i0, i1) == (1, 5)
    np.testing.assert_allclose(m[0], [1 / 8, 3 / 8, 3 / 8, 1 / 8], atol=1e-6)


def test_support_is_the_window_read():
    s = support((100, 100), (50, 50), Box(10, 20, 30, 40))
    assert s.y0 <= 20 and s.y1 >= 40 and s.x0 <= 60 and s.x1 >= 80


def test_octave_shapes():
    assert octave_shape((15000, 20000), 1.4, 0) == (15000, 20000)
    assert octave_shape((15000, 20000), 1.4, 1) == (10714, 14286)
    assert octave_shape((1, 1), 1.4, 5) == (1, 1)


def _circular_reader(img):
    """Reads an unrolled box of an image whose x wraps."""
    w = img.shape[2]
    return lambda b: img[:, b.y0:b.y1][:, :, np.arange(b.x0, b.x1) % w]


@pytest.mark.parametrize("out_shape", [(26, 38), (53, 75), (37, 53), (19, 2)])
def test_a_circular_x_resizes_across_its_edge(out_shape):
    """With wrap, x is a circle: the resize equals the middle of the same resize of the image
    laid three times side by side (whose edges are then far away), and tiles, including
    unrolled ones that straddle the edge, reproduce the whole bit for bit."""
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 255, (3, 37, 53)).astype(np.float32)
    (h, w), wide = out_shape, np.concatenate([img] * 3, axis=2)
    whole = resample_window(_circular_reader(img), (37, 53), out_shape, Box(0, h, 0, w),
                            use_torch=False, wrap=True)
    middle = resample_window(_reader(wide), (37, 159), (h, 3 * w), Box(0, h, w, 2 * w),
                             use_torch=False)
    np.testing.assert_allclose(whole, middle, rtol=0, atol=1e-3)
    flat = resample_window(_reader(img), (37, 53), out_shape, Box(0, h, 0, w), use_torch=False)
    if out_shape != (37, 53):              # not the edge-repeating resize (same size: copies)
        assert np.abs(flat - whole)[:, :, [0, -1]].max() > 1
    for use_torch in (False, True):
        tiled = np.zeros_like(whole)
        for t in grid(out_shape, 8, (3, 5 % w), wrap=True):
            cols = np.arange(t.core.x0, t.core.x1) % w
            tiled[:, t.core.y0:t.core.y1, cols] = resample_window(
                _circular_reader(img), (37, 53), out_shape, t.core, use_torch, wrap=True)
        assert np.array_equal(tiled, whole)
