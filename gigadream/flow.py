"""Optical flow between consecutive frames, and the previous frame's result warped along it,
tile by tile (video style transfer after Ruder, Dosovitskiy and Brox, 2016/2018).

A frame's flow is computed once, at a size capped by ``flow_shape`` (OpenCV's DIS flow: under
1 s for 8 MP with MEDIUM on 2 cores, ~66 B/px of transient memory; for smooth motion a
coarser flow is as good in its own pixels, profiling/sequences-facts.md §3). It comes with a
reliability mask (Ruder et al.'s forward-backward consistency and motion-boundary tests,
after Sundaram et al. 2010, plus "the source point lies inside the previous frame"), which
weights the temporal loss.

The warp never needs the whole frame: ``warp_tile`` upsamples the coarse flow for one tile's
core only and samples the previous result from that tile's window, which ``warp_halo`` sizes.
A pixel's value is a function of its own coordinates alone (exact bilinear, fractions taken
in float64 from full-frame coordinates), so tiles assembled equal the whole frame's warp bit
for bit, round a 360° panorama's x edge too (``wrap``: column x means x mod w, as in
``tiling``).

Flow fields are (h, w, 2) float32, channel 0 = dx and 1 = dy in flow pixels (OpenCV's order).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .resample import resample_window
from .tiling import Box

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
           "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}

# cv2.remap asserts dst.cols, dst.rows < SHRT_MAX (facts §5); the consistency test remaps a
# flow field at flow size, so flow frames stay under it.
REMAP_LIMIT = 32767
# DIS's coarsest pyramid level works on 8 px patches: smaller frames have nothing to match.
MIN_SIDE = 16


def flow_shape(shape: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(h, w) at which a frame of ``shape`` gets its flow: ``shape`` itself where it has at
    most ``max_pixels`` pixels, else the same aspect scaled down (rounded) to at most that."""
    h, w = shape
    if max_pixels < MIN_SIDE * MIN_SIDE:
        raise ConfigError(f"flow max_pixels {max_pixels} is too small: give at least "
                          f"{MIN_SIDE * MIN_SIDE} (about 1-8 million suits DIS)")
    if h * w <= max_pixels:
        return h, w
    s = math.sqrt(max_pixels / (h * w))
    while True:
        fh, fw = max(1, round(h * s)), max(1, round(w * s))
        if fh * fw <= max_pixels:
            return fh, fw
        s *= 1 - 1e-4      # rounding up both sides overshot: shrink a hair


def _check_frames(prev: np.ndarray, cur: np.ndarray) -> None:
    for name, f in (("prev", prev), ("cur", cur)):
        if f.ndim != 2 or f.dtype != np.uint8:
            raise InputError(f"frame_flow's {name} frame is {f.dtype} of shape {f.shape}: give "
                             "an (h, w) uint8 grey frame (cv2.cvtColor(..., COLOR_RGB2GRAY))")
    if prev.shape != cur.shape:
        raise InputError(f"frame_flow got frames of shapes {prev.shape} and {cur.shape}: resize "
                         "both to one flow_shape first")
    h, w = cur.shape
    if min(h, w) < MIN_SIDE or max(h, w) >= REMAP_LIMIT:
        raise InputError(f"frame_flow got a {w}×{h} frame: flow frames must be {MIN_SIDE} to "
                         f"{REMAP_LIMIT - 1} px a side; scale them to flow_shape(...) first")


def wrap_pad(w: int) -> int:
    """Columns borrowed from the other edge on each side of a 360° frame before DIS: at least
    32 px and 3× the motion one may expect (w / 48, a 7.5° turn per frame), at most one turn.
    At 32 px and a 9.6 px motion, the seam's EPE fell from 0.52 to 0.067 px, the interior's
    0.10 (facts §3)."""
    return min(w, max(32, w // 16))


def _dis(preset: str) -> cv2.DISOpticalFlow:
    if preset not in PRESETS:
        raise ConfigError(f"flow preset {preset!r} is unknown: choose one of "
                          + ", ".join(PRESETS))
    return cv2.DISOpticalFlow_create(PRESETS[preset])


def frame_flow(prev: np.ndarray, cur: np.ndarray, preset: str = "medium",
               wrap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The backward flow from ``cur`` to ``prev`` and where it can be trusted.

    ``prev``, ``cur``: (h, w) uint8 grey frames of one shape (at ``flow_shape``). Returns
    (backward, reliable): backward (h, w, 2) float32, for each pixel x of ``cur`` the
    displacement to where it was in ``prev``, so that warped(x) = prev_result(x +
    backward(x)); reliable (h, w) bool, where that holds (``reliability``). Both are the same
    bits for the same frames. ``wrap``: x is circular (a 360° equirectangular frame).

    DIS gives I0(x) ≈ I1(x + flow(x)) for calc(I0, I1), so backward = calc(cur, prev), and the
    forward flow calc(prev, cur) serves the consistency test only: two DIS calls a frame.
    """
    _check_frames(prev, cur)
    h, w = cur.shape
    pad = wrap_pad(w) if wrap else 0
    if pad:   # the other edge's columns on each side, so DIS sees across the seam; cropped
        prev, cur = (cv2.copyMakeBorder(f, 0, 0, pad, pad, cv2.BORDER_WRAP) for f in (prev, cur))
    backward = _dis(preset).calc(cur, prev, None)[:, pad:pad + w]
    forward = _dis(preset).calc(prev, cur, None)[:, pad:pad + w]
    backward, forward = np.ascontiguousarray(backward), np.ascontiguousarray(forward)
    return backward, reliability(forward, backward, wrap)


def reliability(forward: np.ndarray, backward: np.ndarray, wrap: bool = False) -> np.ndarray:
    """(h, w) bool: where ``backward`` (t → t−1, ŵ) can be trusted to warp, given ``forward``
    (t−1 → t, w). Ruder et al.'s c = 0 where

    - disocclusion: |w̃ + ŵ|² > 0.01(|w̃|² + |ŵ|²) + 0.5, with w̃(x) = w(x + ŵ(x)):
      going back and forth does not return;
    - motion boundary: |∇û|² + |∇v̂|² > 0.01|ŵ|² + 0.002;
    - and (not in the paper) x + ŵ(x) lies outside the previous frame (in y only where x
      ``wrap``s).

    On a clip with a panning background and a moving square this masked 6.6 % of the frame
    for 2.2 % truly not visible before, with a recall of 98 % (facts §4): the rest is the
    flow smeared over the square's edges, where the warp is wrong too. With ``wrap`` the
    gradient is taken x-periodically and w sampled with x wrapped, so the seam is no edge.
    """
    h, w = backward.shape[:2]
    u, v = cv2.split(backward)                   # contiguous planes: faster than strided views
    mx = u + np.arange(w, dtype=np.float32)      # where each pixel was, in flow px
    my = v + np.arange(h, dtype=np.float32)[:, None]
    if wrap:   # two columns of the other edge on each side: bilinear reaches across the seam
        p = 2
        fwd = cv2.copyMakeBorder(forward, 0, 0, p, p, cv2.BORDER_WRAP)
        sx = np.mod(mx, np.float32(w)) + np.float32(p)
    else:
        fwd, sx = forward, mx
    wu, wv = cv2.split(cv2.remap(fwd, sx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    back_sq = u * u + v * v
    occluded = (wu + u) ** 2 + (wv + v) ** 2 > 0.01 * (wu * wu + wv * wv + back_sq) + 0.5
    boundary = _gradient_sq(u, wrap) + _gradient_sq(v, wrap) > 0.01 * back_sq + 0.002
    outside = (my < 0) | (my > h - 1)
    if not wrap:
        outside |= (mx < 0) | (mx > w - 1)
    return ~(occluded | boundary | outside)


def _gradient_sq(f: np.ndarray, wrap: bool) -> np.ndarray:
    """|∇f|² of an (h, w) float32 plane, h, w >= 2: central differences, one-sided at the
    edges (as np.gradient), except that x is periodic where it ``wrap``s."""
    gx, gy = np.empty_like(f), np.empty_like(f)
    gx[:, 1:-1] = (f[:, 2:] - f[:, :-2]) * 0.5
    gy[1:-1] = (f[2:] - f[:-2]) * 0.5
    if wrap:
        gx[:, 0], gx[:, -1] = (f[:, 1] - f[:, -1]) * 0.5, (f[:, 0] - f[:, -2]) * 0.5
    else:
        gx[:, 0], gx[:, -1] = f[:, 1] - f[:, 0], f[:, -1] - f[:, -2]
    gy[0], gy[-1] = f[1] - f[0], f[-1] - f[-2]
    return gx * gx + gy * gy


def warp_halo(backward: np.ndarray, full_shape: tuple[int, int]) -> int:
    """The margin (full-resolution px) a tile's window needs around its core so that every
    core pixel's source point x + backward(x), and its bilinear neighbours, lie inside the
    window: the largest displacement scaled to ``full_shape``, rounded up, + 2 (one for the
    neighbour, one spare). Upsampling is a convex blend, so it never exceeds that largest."""
    sh, sw = backward.shape[:2]
    fh, fw = full_shape
    if backward.size == 0:
        return 2
    reach = max(float(np.abs(backward[..., 0]).max()) * fw / sw,
                float(np.abs(backward[..., 1]).max()) * fh / sh)
    return math.ceil(reach) + 2


def upsample_to(field: np.ndarray, core_box: Box, full_shape: tuple[int, int],
                wrap: bool = False) -> np.ndarray:
    """``field`` ((sh, sw) or (sh, sw, C), at flow size) resampled bilinearly to the pixels
    of ``core_box`` in a frame of ``full_shape``: (C, ch, cw) float32 (C = 1 for a 2-D field).
    Full pixel x samples the field at (x + 0.5)·sw/fw − 0.5, edge samples repeating (in y
    only where x ``wrap``s; ``core_box``'s x is then unrolled). Values are not scaled. Each
    pixel gets the same bits whichever box asks for it (``resample.resample_window``)."""
    f = field if field.ndim == 3 else field[..., None]
    sh, sw = f.shape[:2]
    f = np.ascontiguousarray(np.moveaxis(f, -1, 0), dtype=np.float32)     # (C, sh, sw)

    def read(box: Box) -> np.ndarray:
        cols = np.arange(box.x0, box.x1) % sw if wrap else slice(box.x0, box.x1)
        return f[:, box.y0:box.y1][:, :, cols]

    return resample_window(read, (sh, sw), tuple(full_shape), core_box, use_torch=False,
                           wrap=wrap)


def upsample_flow(backward: np.ndarray, core_box: Box, full_shape: tuple[int, int],
                  wrap: bool = False) -> np.ndarray:
    """``backward`` at ``core_box``'s full-resolution pixels, in full-resolution px:
    (2, ch, cw) float32, dx then dy, each scaled by full / flow size along its axis."""
    sh, sw = backward.shape[:2]
    up = upsample_to(backward, core_box, full_shape, wrap)
    up[0] *= np.float32(full_shape[1] / sw)
    up[1] *= np.float32(full_shape[0] / sh)
    return up


def _columns(c: np.ndarray, window: Box, w: int, wrap: bool) -> np.ndarray:
    """Frame columns ``c`` (unrolled with ``wrap``) as columns of ``window``: the frame's
    edge repeats (unless x wraps: then the turn that lies in the window), then the window's."""
    if not wrap:
        return np.clip(np.clip(c, 0, w - 1), window.x0, window.x1 - 1) - window.x0
    c = window.x0 + np.mod(c - window.x0, w)         # the turn starting at the window's left
    beyond = c >= window.x1                          # a window narrower than the circle
    if beyond.any():                                 # nearest window edge, round the circle
        left = (window.x0 + w - c) < (c - (window.x1 - 1))
        c = np.where(beyond, np.where(left, window.x0, window.x1 - 1), c)
    return c - window.x0


def warp_tile(window: np.ndarray, window_box: Box, core_box: Box, backward: np.ndarray,
              full_shape: tuple[int, int], wrap: bool = False) -> np.ndarray:
    """The previous frame's result warped into the current frame, over one tile's core.

    ``window``: (C, wh, ww) float32, the previous result over ``window_box`` (full-resolution
    coordinates; with ``wrap`` its x may reach below 0 or beyond w, holding columns x mod w
    in order). ``backward``: the frame's backward flow at flow size (``frame_flow``).
    Returns (C, ch, cw) float32: core pixel x sampled bilinearly at x + backward_up(x)
    (``upsample_flow``). A source point outside the frame repeats its edge in y, and in x
    unless x ``wrap``s (then it goes round); one outside the window is clamped to it, which
    ``warp_halo``'s margin prevents but at the frame's edges.

    Exact bilinear in numpy rather than cv2.remap: remap rounds each coordinate in float32
    window coordinates (to 1/1024 px), so the same pixel would round differently in windows
    placed differently, and tiles would not assemble to the whole frame's warp bit for bit.
    Cost (2 cores): ~0.13 s and 128 B of temporaries a core pixel for C = 3, the flow's
    upsampling a third of the time; a style step on the same pixels costs far more.
    """
    h, w = full_shape
    if window.ndim != 3 or window.shape[1:] != window_box.shape:
        raise InputError(f"warp_tile's window is {window.shape}, its box {window_box.shape}: "
                         "give (C, h, w) pixels of the window's box")
    ch, cw = core_box.shape
    up = upsample_flow(backward, core_box, full_shape, wrap)
    ys = np.arange(core_box.y0, core_box.y1, dtype=np.float64)[:, None] + up[1]
    xs = np.arange(core_box.x0, core_box.x1, dtype=np.float64)[None, :] + up[0]
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)   # from frame coords
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    # rows: the frame's edge repeats, then the window's (the frame's at a frame edge)
    r0, r1 = (np.clip(np.clip(r, 0, h - 1), window_box.y0, window_box.y1 - 1) - window_box.y0
              for r in (y0, y0 + 1))
    c0, c1 = (_columns(c, window_box, w, wrap) for c in (x0, x0 + 1))
    ww = window_box.x1 - window_box.x0
    flat = window.reshape(window.shape[0], -1)
    def at(r, c):
        return np.take(flat, (r * ww + c).ravel(), axis=1).reshape(-1, ch, cw)
    top = at(r0, c0) * (1 - fx) + at(r0, c1) * fx
    bottom = at(r1, c0) * (1 - fx) + at(r1, c1) * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32, copy=False)


def tile_mask(reliable: np.ndarray, core_box: Box, full_shape: tuple[int, int],
              wrap: bool = False) -> np.ndarray:
    """(ch, cw) float32 in [0, 1]: the reliability mask (flow size, bool) over ``core_box``'s
    full-resolution pixels, bilinear on 0/1, the weight of each pixel's temporal loss. Where
    a coarse pixel's neighbour is unreliable the weight ramps down over one coarse pixel
    instead of stepping, so the loss has no hard edge inside a smeared motion boundary."""
    return upsample_to(reliable.astype(np.float32), core_box, full_shape, wrap)[0]
