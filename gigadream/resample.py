"""Separable, windowed resampling between octave sizes.

Each axis is a dense weight matrix restricted to the rows a window needs, so any output window
is computed from a bounded input window: the same pixel gets the same value whichever tile asks
for it. Downsampling uses a triangle filter widened by the scale factor (antialiased bilinear,
as PIL's and torch's ``antialias=True``); upsampling is plain bilinear.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .tiling import Box


def axis_weights(n_in: int, n_out: int, o0: int, o1: int) -> tuple[int, int, np.ndarray]:
    """Weights mapping input samples [i0, i1) to output samples [o0, o1).

    Returns (i0, i1, M) with M of shape (o1 - o0, i1 - i0); each row sums to 1.
    """
    scale = n_in / n_out
    width = max(1.0, scale)                      # filter half-width in input pixels
    out = np.arange(o0, o1, dtype=np.float64)
    centre = (out + 0.5) * scale - 0.5
    first = np.ceil(centre - width).astype(np.int64)
    taps = int(math.ceil(2 * width)) + 1
    idx = first[:, None] + np.arange(taps)[None, :]             # (n, taps) input indices
    w = np.clip(1.0 - np.abs(idx - centre[:, None]) / width, 0.0, None)
    idx = np.clip(idx, 0, n_in - 1)                             # edge samples repeat
    used = idx[w > 0]                                           # zero taps widen nothing
    i0, i1 = int(used.min()), int(used.max()) + 1
    w = np.where((idx >= i0) & (idx < i1), w, 0.0)
    idx = np.clip(idx, i0, i1 - 1)
    m = np.zeros((o1 - o0, i1 - i0), dtype=np.float64)
    np.add.at(m, (np.repeat(np.arange(o1 - o0), taps), (idx - i0).ravel()), w.ravel())
    m /= m.sum(axis=1, keepdims=True)
    return i0, i1, m.astype(np.float32)


def support(in_shape: tuple[int, int], out_shape: tuple[int, int], box: Box) -> Box:
    """The input window that output ``box`` depends on."""
    iy0, iy1, _ = axis_weights(in_shape[0], out_shape[0], box.y0, box.y1)
    ix0, ix1, _ = axis_weights(in_shape[1], out_shape[1], box.x0, box.x1)
    return Box(iy0, iy1, ix0, ix1)


def resample_window(read: Callable[[Box], np.ndarray], in_shape: tuple[int, int],
                    out_shape: tuple[int, int], box: Box) -> np.ndarray:
    """Output ``box`` (C, h, w) float32 of an image of ``in_shape`` resized to ``out_shape``.

    ``read(box)`` returns the input's (C, h, w) float32 pixels in ``box``.
    """
    iy0, iy1, my = axis_weights(in_shape[0], out_shape[0], box.y0, box.y1)
    ix0, ix1, mx = axis_weights(in_shape[1], out_shape[1], box.x0, box.x1)
    x = read(Box(iy0, iy1, ix0, ix1))                  # (C, hi, wi)
    return np.matmul(np.matmul(my, x), mx.T)            # (C, h, w)


def octave_shape(shape: tuple[int, int], scale: float, octave: int) -> tuple[int, int]:
    """Size of octave ``octave`` (0 = full resolution), each octave ``scale`` times smaller."""
    f = scale ** octave
    return max(1, round(shape[0] / f)), max(1, round(shape[1] / f))
