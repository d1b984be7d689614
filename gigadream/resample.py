"""Separable, windowed resampling between octave sizes.

Each axis is a dense weight matrix restricted to the rows a window needs, so any output window
is computed from a bounded input window: the same pixel gets the same value whichever tile asks
for it. Downsampling uses a triangle filter widened by the scale factor (antialiased bilinear,
as PIL's and torch's ``antialias=True``); upsampling is plain bilinear. At the edges the edge
samples repeat, except along a circular x (``wrap``: a 360° panorama), where the taps reach
round to the other side.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .devices import loaded_torch
from .tiling import Box


def axis_taps(n_in: int, n_out: int, o0: int, o1: int,
              wrap: bool = False) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The filter taps that map input samples [i0, i1) to output samples [o0, o1).

    Returns (i0, i1, idx, w), both (o1 - o0, taps): output sample o0 + k is
    Σ_t w[k, t] · input[i0 + idx[k, t]], and each row of w sums to 1.

    ``wrap``: the axis is circular; o0, o1 and i0, i1 are unrolled (they may lie outside
    [0, n): sample o means o mod n_out), and a sample's weights are those of o mod n_out,
    bit for bit, whichever turn asks for it.
    """
    scale = n_in / n_out
    width = max(1.0, scale)                      # filter half-width in input pixels
    out = np.arange(o0, o1, dtype=np.int64)
    turn, out = (out // n_out, out % n_out) if wrap else (0, out)
    centre = (out + 0.5) * scale - 0.5
    first = np.ceil(centre - width).astype(np.int64)
    taps = int(math.ceil(2 * width)) + 1
    idx = first[:, None] + np.arange(taps)[None, :]             # (n, taps) input indices
    w = np.clip(1.0 - np.abs(idx - centre[:, None]) / width, 0.0, None)
    if wrap:                                                    # the same taps, one turn on
        idx = idx + (np.asarray(turn) * n_in)[..., None]
    else:
        idx = np.clip(idx, 0, n_in - 1)                         # edge samples repeat
    used = idx[w > 0]                                           # zero taps widen nothing
    i0, i1 = int(used.min()), int(used.max()) + 1
    w = np.where((idx >= i0) & (idx < i1), w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    keep = (w > 0).any(axis=0)      # upsampling's third tap is always zero: a third less work
    return i0, i1, np.clip(idx, i0, i1 - 1)[:, keep] - i0, w[:, keep].astype(np.float32)


def axis_weights(n_in: int, n_out: int, o0: int, o1: int,
                 wrap: bool = False) -> tuple[int, int, np.ndarray]:
    """The same filter as a dense matrix: (i0, i1, M), M of shape (o1 - o0, i1 - i0)."""
    i0, i1, idx, w = axis_taps(n_in, n_out, o0, o1, wrap)
    m = np.zeros((o1 - o0, i1 - i0), dtype=np.float32)
    np.add.at(m, (np.repeat(np.arange(o1 - o0), idx.shape[1]), idx.ravel()), w.ravel())
    return i0, i1, m


def support(in_shape: tuple[int, int], out_shape: tuple[int, int], box: Box,
            wrap: bool = False) -> Box:
    """The input window that output ``box`` depends on (``wrap``: x circular, unrolled)."""
    iy0, iy1, _, _ = axis_taps(in_shape[0], out_shape[0], box.y0, box.y1)
    ix0, ix1, _, _ = axis_taps(in_shape[1], out_shape[1], box.x0, box.x1, wrap)
    return Box(iy0, iy1, ix0, ix1)


def _filter_rows(x: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Apply taps down the rows of (C, h, w) ``x``: per tap, a gather of whole rows and a
    multiply-add. Each output sample sums its own taps in a fixed order, so it gets the same
    value whichever window it is computed in."""
    out = x[:, idx[:, 0]] * w[:, 0, None]
    for t in range(1, idx.shape[1]):
        out += x[:, idx[:, t]] * w[:, t, None]
    return out


def _filter_rows_torch(x, idx: np.ndarray, w: np.ndarray):
    """``_filter_rows`` of a torch tensor, with the same operations in the same order (so
    the same bits), on torch's threads."""
    import torch
    out = None
    for t in range(idx.shape[1]):
        term = x.index_select(1, torch.from_numpy(np.ascontiguousarray(idx[:, t])))
        term.mul_(torch.from_numpy(np.ascontiguousarray(w[:, t]))[:, None])
        out = term if out is None else out.add_(term)
    return out


def resample_window(read: Callable[[Box], np.ndarray], in_shape: tuple[int, int],
                    out_shape: tuple[int, int], box: Box,
                    use_torch: bool | None = None, wrap: bool = False) -> np.ndarray:
    """Output ``box`` (C, h, w) float32 of an image of ``in_shape`` resized to ``out_shape``.

    ``read(box)`` returns the input's (C, h, w) float32 pixels in ``box``. ``wrap``: x is
    circular, ``box`` and the boxes read are unrolled (``axis_taps``). Rows, then (after
    a transpose) columns: gathering whole rows is 2× faster than gathering columns. Taps,
    not dense matrix products: those are slower, and their BLAS summation order varies with
    the window, so neighbouring tiles could differ in the last bit.

    In a process that has loaded torch (every worker), torch does the same arithmetic on its
    threads, bit for bit and ~1.4× faster. The client (the pyramid) never imports torch.
    ``use_torch``: None = torch where it is loaded.
    """
    iy0, iy1, ky, wy = axis_taps(in_shape[0], out_shape[0], box.y0, box.y1)
    ix0, ix1, kx, wx = axis_taps(in_shape[1], out_shape[1], box.x0, box.x1, wrap)
    x = read(Box(iy0, iy1, ix0, ix1))                  # (C, hi, wi)
    if use_torch is None:
        use_torch = loaded_torch() is not None
    if use_torch:
        import torch
        rows = _filter_rows_torch(torch.from_numpy(np.ascontiguousarray(x)), ky, wy)
        rows = rows.transpose(1, 2).contiguous()
        return _filter_rows_torch(rows, kx, wx).transpose(1, 2).contiguous().numpy()
    rows = np.ascontiguousarray(_filter_rows(x, ky, wy).transpose(0, 2, 1))
    return np.ascontiguousarray(_filter_rows(rows, kx, wx).transpose(0, 2, 1))


def octave_shape(shape: tuple[int, int], scale: float, octave: int) -> tuple[int, int]:
    """Size of octave ``octave`` (0 = full resolution), each octave ``scale`` times smaller."""
    f = scale ** octave
    return max(1, round(shape[0] / f)), max(1, round(shape[1] / f))
