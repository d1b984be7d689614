"""Optical flow (``flow``): DIS recovers known motion, the reliability mask covers what the
previous frame did not show, and the previous result warped tile by tile equals the whole
frame's warp, round a 360° panorama's edge too."""
import cv2
import numpy as np
import pytest
import skimage.data

from gigadream.errors import ConfigError, InputError
from gigadream.flow import (flow_shape, frame_flow, reliability, tile_mask, upsample_flow,
                            warp_halo, warp_tile)
from gigadream.tiling import Box, grid


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def affine_pair(img: np.ndarray, shift=(3.3, -1.7), degrees=0.5):
    """``img`` and ``img`` moved by ``shift`` (x, y) px and turned ``degrees`` about its centre
    (cubic), with the true backward flow (h, w, 2): for x of the second, where it was in the
    first (M⁻¹x − x)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[:, 2] += shift
    moved = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    mi = cv2.invertAffineTransform(m)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    true = np.stack([mi[0, 0] * xx + mi[0, 1] * yy + mi[0, 2] - xx,
                     mi[1, 0] * xx + mi[1, 1] * yy + mi[1, 2] - yy], axis=-1)
    return img, moved, true


def epe(flow: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.hypot(flow[..., 0] - true[..., 0], flow[..., 1] - true[..., 1])


@pytest.mark.parametrize("shape, cap, expected", [
    ((512, 512), 512 * 512, (512, 512)),          # fits: the frame itself
    ((2160, 3840), 8_300_000, (2160, 3840)),
    ((4096, 8192), 8_388_608, (2048, 4096)),      # 33.6 MP capped at 8 MP: half
    ((1000, 3000), 750_000, (500, 1500)),
    ((999, 1001), 250_000, (499, 500)),           # rounded, then shrunk under the cap
])
def test_flow_shape(shape, cap, expected):
    fh, fw = flow_shape(shape, cap)
    assert (fh, fw) == expected and fh * fw <= cap


@pytest.mark.parametrize("call, error, match", [
    (lambda: flow_shape((100, 100), 10), ConfigError, "max_pixels 10 is too small"),
    (lambda: frame_flow(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8), "slow"),
     ConfigError, "preset 'slow' is unknown: choose one of ultrafast, fast, medium"),
    (lambda: frame_flow(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)),
     InputError, r"prev frame is uint8 of shape \(64, 64, 3\)"),
    (lambda: frame_flow(np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)),
     InputError, "prev frame is float32"),
    (lambda: frame_flow(np.zeros((64, 64), np.uint8), np.zeros((64, 80), np.uint8)),
     InputError, r"shapes \(64, 64\) and \(64, 80\)"),
    (lambda: frame_flow(np.zeros((8, 64), np.uint8), np.zeros((8, 64), np.uint8)),
     InputError, "64×8 frame"),
    (lambda: warp_tile(np.zeros((3, 10, 10), np.float32), Box(0, 10, 0, 12), Box(0, 10, 0, 10),
                       np.zeros((10, 12, 2), np.float32), (10, 12)),
     InputError, "window is"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_frame_flow_recovers_a_shift_and_turn_and_repeats_its_bits():
    """Astronaut at 512², moved (3.3, −1.7) px and turned 0.5°: MEDIUM's mean endpoint error
    is 0.12 px inside a 5 % border (facts §3 had 0.13 on a smoother 1 MP photo)."""
    prev, cur, true = affine_pair(grey(skimage.data.astronaut()))
    backward, reliable = frame_flow(prev, cur)
    assert backward.shape == (512, 512, 2) and backward.dtype == np.float32
    assert reliable.shape == (512, 512) and reliable.dtype == bool
    inner = (slice(26, -26), slice(26, -26))
    assert epe(backward, true)[inner].mean() < 0.3
    assert reliable[inner].mean() > 0.9          # a rigid motion: almost all of it holds
    for _ in range(3):                           # DIS on its threads: the same bits each time
        again = frame_flow(prev, cur)
        assert np.array_equal(again[0], backward) and np.array_equal(again[1], reliable)


def test_reliable_masks_what_a_moving_square_uncovers():
    """A 120 px square (from the coffee photo) moves (24, 12) px over a still background: the
    background it uncovers was not in the previous frame, so its warp is wrong there. Measured:
    97 % of those pixels masked, 97 % of the rest kept (4.3 % masked for 1.5 % uncovered)."""
    background = grey(skimage.data.astronaut())
    square = grey(skimage.data.coffee())[100:220, 200:320]

    def frame(y, x):
        f, covered = background.copy(), np.zeros(background.shape, bool)
        f[y:y + 120, x:x + 120], covered[y:y + 120, x:x + 120] = square, True
        return f, covered

    (prev, was), (cur, now) = frame(180, 160), frame(192, 184)
    _, reliable = frame_flow(prev, cur)
    uncovered = was & ~now
    assert (~reliable[uncovered]).mean() >= 0.9
    assert reliable[~uncovered].mean() >= 0.85


def pano_pair(turn=-9.6, lift=1.3):
    """A 512×256 x-periodic frame (astronaut and its mirror image) and the same turned
    ``-turn`` px about the vertical axis and moved ``-lift`` px up, so content crosses the x
    edge; the true backward flow is (turn, lift) everywhere."""
    a = grey(cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA))
    prev = np.hstack([a, a[:, ::-1]])
    h, w = prev.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    padded = cv2.copyMakeBorder(prev, 0, 0, 2, 2, cv2.BORDER_WRAP)
    cur = cv2.remap(padded, np.mod(xx + turn, w) + 2, yy + lift, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    true = np.zeros((h, w, 2), np.float32)
    true[..., 0], true[..., 1] = turn, lift
    return prev, cur, true


def test_wrap_flows_across_the_seam_as_inside():
    """Measured EPE, 24 px bands: with wrap 0.04 px at the seam, 0.05 inside; without, 0.47 at
    the seam (5 px at worst), and a quarter of the seam band masked as leaving the frame."""
    prev, cur, true = pano_pair()
    h, w = prev.shape
    rows = slice(16, -16)                                     # y leaves the frame at the poles
    seam = np.r_[0:24, w - 24:w]
    inside = np.r_[w // 4 - 12:w // 4 + 12, 3 * w // 4 - 12:3 * w // 4 + 12]
    band = {}
    for wrap in (True, False):
        backward, reliable = frame_flow(prev, cur, wrap=wrap)
        e = epe(backward, true)[rows]
        band[wrap] = e[:, seam].mean(), e[:, inside].mean(), reliable[rows][:, seam].mean()
    seam_err, inside_err, seam_kept = band[True]
    assert seam_err <= 2 * inside_err and seam_kept > 0.99
    seam_err, inside_err, seam_kept = band[False]       # the test can tell: flat is worse
    assert seam_err > 4 * inside_err and seam_kept < 0.9


@pytest.mark.parametrize("wrap", [False, True])
def test_motion_boundaries_round_the_seam(wrap):
    """A consistent flow (forward = −backward) that steps by 3 px at x = w/2 and, round the
    circle, between x = w − 1 and 0: the step at w/2 is a motion boundary either way; the one
    at the seam is one only where x wraps (the gradient taken x-periodically), and a flat
    frame's edge is none."""
    h, w = 40, 64
    backward = np.zeros((h, w, 2), np.float32)
    backward[:, : w // 2, 1] = 3.0                  # the left half came from 3 px further down
    reliable = reliability(-backward, backward, wrap)
    rows = slice(10, -10)                           # its last 3 rows came from below the frame
    assert not reliable[rows, w // 2 - 1:w // 2 + 1].any()
    assert reliable[rows, 2:w // 2 - 2].all() and reliable[rows, w // 2 + 2:-2].all()
    assert reliable[rows][:, [0, -1]].any() != wrap


def test_consistency_reads_the_forward_flow_round_the_seam():
    """Everything moved 5 px right (backward −5), but the forward flow is 0 on columns 0-7:
    pixels that came from there are inconsistent, masked; pixels 0-4 came from round the
    seam, where the forward flow agrees, and are kept only where x wraps."""
    h, w = 20, 64
    backward = np.zeros((h, w, 2), np.float32)
    backward[..., 0] = -5
    forward = -backward
    forward[:, :8, 0] = 0
    for wrap in (True, False):
        reliable = reliability(forward, backward, wrap)
        assert reliable[:, :5].all() == wrap and not reliable[:, 5:13].any()
        assert reliable[:, 13:].all()


def whole_warp(prev: np.ndarray, backward: np.ndarray, wrap: bool, margin: int) -> np.ndarray:
    """The warp with one core, the whole frame, in a window ``margin`` beyond it round x."""
    h, w = prev.shape[1:]
    window = Box(0, h, -margin, w + margin) if wrap else Box(0, h, 0, w)
    return warp_tile(read(prev, window), window, Box(0, h, 0, w), backward, (h, w), wrap)


def read(frame: np.ndarray, box: Box) -> np.ndarray:
    """(C, h, w) pixels of ``box``, its x taken mod the width (unrolled boxes of a 360° frame)."""
    cols = np.arange(box.x0, box.x1) % frame.shape[2]
    return np.ascontiguousarray(frame[:, box.y0:box.y1][:, :, cols])


def tiled_warp(prev, backward, reliable, wrap, tile, offset, margin):
    """The warp and the mask of each tile of one grid, in windows ``margin`` beyond the cores,
    put together (NaN where no tile wrote)."""
    h, w = prev.shape[1:]
    out = np.full(prev.shape, np.nan, np.float32)
    mask = np.full((h, w), np.nan, np.float32)
    for t in grid((h, w), tile, offset, margin=margin, wrap=wrap):
        cols = np.arange(t.core.x0, t.core.x1) % w
        out[:, t.core.y0:t.core.y1, cols] = warp_tile(read(prev, t.window), t.window, t.core,
                                                      backward, (h, w), wrap)
        mask[t.core.y0:t.core.y1, cols] = tile_mask(reliable, t.core, (h, w), wrap)
    return out, mask


@pytest.fixture(scope="module")
def photo_pair():
    """Coffee (400×600 RGB, float32 (C, h, w)) and the same moved (7.3, −4.6) px and turned 1°;
    the flow at half size (200×300), as a capped flow_shape gives it."""
    rgb = skimage.data.coffee()
    prev, cur, _ = affine_pair(rgb, shift=(7.3, -4.6), degrees=1.0)
    h, w = prev.shape[:2]
    small = [cv2.resize(grey(f), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
             for f in (prev, cur)]
    backward, reliable = frame_flow(*small)
    chw = [np.ascontiguousarray(f.transpose(2, 0, 1), dtype=np.float32) for f in (prev, cur)]
    return chw[0], chw[1], backward, reliable


def test_warp_reproduces_the_next_frame_where_reliable(photo_pair):
    """Frame t−1 warped by the flow (flowed at half size) gives frame t: measured MSE 17 (0-255²,
    RGB) on reliable pixels, 8 with the true flow (bilinear against the cubic that moved it),
    1340 unwarped."""
    prev, cur, backward, reliable = photo_pair
    h, w = prev.shape[1:]
    warped = whole_warp(prev, backward, False, 0)
    weight = tile_mask(reliable, Box(0, h, 0, w), (h, w)) == 1
    inner = np.zeros((h, w), bool)
    inner[20:-20, 20:-20] = True                  # the reflected border moves otherwise
    keep = weight & inner
    assert keep.mean() > 0.8
    mse = ((warped - cur) ** 2).mean(0)[keep].mean()
    assert mse < 30 and ((prev - cur) ** 2).mean(0)[keep].mean() > 20 * mse


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("tile, offset", [(64, (0, 0)), (100, (37, 71)), (128, (5, 301)),
                                          (256, (200, 590))])
def test_tiles_assemble_to_the_whole_frames_warp(photo_pair, wrap, tile, offset):
    """Each pixel's warp and mask are functions of its coordinates alone: tiles of any grid,
    in windows warp_halo wide, give the whole frame's bits (with wrap, tiles straddle x's
    edge: offsets up to the width)."""
    prev, _, backward, reliable = photo_pair
    h, w = prev.shape[1:]
    if not wrap:
        offset = (offset[0] % tile, offset[1] % tile)
    margin = warp_halo(backward, (h, w))
    whole = whole_warp(prev, backward, wrap, margin)
    whole_mask = tile_mask(reliable, Box(0, h, 0, w), (h, w), wrap)
    tiled, mask = tiled_warp(prev, backward, reliable, wrap, tile, offset, margin)
    assert np.array_equal(tiled, whole) and np.array_equal(mask, whole_mask)
    if wrap:   # a window of the frame's own columns: sources beyond its edges go round
        frame = Box(0, h, 0, w)
        assert np.array_equal(warp_tile(prev, frame, frame, backward, (h, w), True), whole)


def test_a_tile_needs_warp_halos_margin(photo_pair):
    """With the margin a few px short of warp_halo's, some core pixels' sources fall outside
    the window, and the tiles no longer give the whole frame's warp."""
    prev, _, backward, reliable = photo_pair
    h, w = prev.shape[1:]
    margin = warp_halo(backward, (h, w))
    assert margin >= 2 + 9                      # a 7.3 px shift, 1° on 600 px: > 9 px
    whole = whole_warp(prev, backward, False, 0)
    short, _ = tiled_warp(prev, backward, reliable, False, 100, (37, 71), margin - 4)
    assert not np.array_equal(short, whole)


@pytest.mark.parametrize("wrap, window, core, dx, expected", [
    # a 1×10 frame whose pixels hold their column; flow at full size, dx everywhere
    (False, Box(0, 1, 2, 8), Box(0, 1, 3, 6), -0.5, [2.5, 3.5, 4.5]),
    (False, Box(0, 1, 0, 10), Box(0, 1, 0, 2), -1.5, [0, 0]),          # the frame's edge repeats
    (False, Box(0, 1, 2, 8), Box(0, 1, 2, 4), -1.5, [2, 2]),           # the window's does too
    (True, Box(0, 1, -2, 3), Box(0, 1, 0, 2), -1.5, [8.5, 4.5]),       # round the seam: 8 9 | 0
    (True, Box(0, 1, -2, 3), Box(0, 1, 10, 12), -1.5, [8.5, 4.5]),     # the core a turn on
    (True, Box(0, 1, 0, 10), Box(0, 1, 8, 10), 1.5, [4.5, 0.5]),       # 9 | 0 1 in the frame's
    (True, Box(0, 1, 2, 6), Box(0, 1, 3, 5), -3.0, [2, 2]),            # 0, 1 outside the window:
    (True, Box(0, 1, 2, 6), Box(0, 1, 3, 5), 4.0, [5, 5]),             # its nearer edge, round
])
def test_warp_tile_samples_by_hand(wrap, window, core, dx, expected):
    columns = np.arange(window.x0, window.x1) % 10
    pixels = columns.astype(np.float32)[None, None, :]
    backward = np.zeros((1, 10, 2), np.float32)
    backward[..., 0] = dx
    out = warp_tile(pixels, window, core, backward, (1, 10), wrap)
    assert out.shape == (1, 1, len(expected)) and np.array_equal(out[0, 0], expected)


def test_flow_upsampled_to_its_own_size_is_itself():
    """At scale 1 the upsampling is the identity, values unscaled; at 2 values double."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 40, 2)).astype(np.float32)
    up = upsample_flow(f, Box(0, 30, 0, 40), (30, 40))
    assert np.array_equal(up, f.transpose(2, 0, 1))
    const = np.zeros((30, 40, 2), np.float32)
    const[..., 0], const[..., 1] = 1.5, -0.5
    up = upsample_flow(const, Box(3, 50, -7, 70), (60, 120), wrap=True)
    assert np.allclose(up[0], 4.5) and np.allclose(up[1], -1.0)
