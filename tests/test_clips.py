"""Clips with known motion (gigadream.clips): the truth they carry is right, a wrong truth is
told apart, and the temporal errors measure what Ruder et al. measure. Real files: lossless
H.264 in mp4 with an AAC track and VP9 in webm with Opus, written and read back by PyAV, PNG frames read by libvips."""
import av
import numpy as np
import pytest

from gigadream.clips import (ClipTruth, long_term_error, make_clip, read_frames,
                             temporal_error, truth_path, warp)
from gigadream.errors import InputError, OutputError

SHAPE = (120, 160)
N = 8
# Warping input frame t-1 by the true flow gives frame t to within resampling (twice
# bilinear, then uint8): measured 0.6-1.2 levels² in PNG frames, +0.3 through the mp4's YUV.
# The flow negated gives 600-3200.
LOSSLESS = 2.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for motion in ("pan", "zoom", "rotate", "mix"):
        out[motion] = (d / motion, make_clip(d / motion, SHAPE, N, motion, seed=1))
    out["yaw"] = (d / "yaw", make_clip(d / "yaw", (80, 160), N, "yaw"))
    out["mp4"] = (d / "mix.mp4", make_clip(d / "mix.mp4", SHAPE, N, "mix", seed=1, audio=True))
    out["webm"] = (d / "mix.webm", make_clip(d / "mix.webm", SHAPE, N, "mix", seed=1, audio=True))
    return out


def frames(clip) -> list[np.ndarray]:
    return list(read_frames(clip[0]))


def negated(truth: ClipTruth, t: int) -> np.ndarray:
    """Frame t's pixels moved the wrong way: absolute coordinates of x - flow(x)."""
    h, w = truth.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = truth.flow(t)
    return np.stack([xx - f[..., 0], yy - f[..., 1]], -1)


@pytest.mark.parametrize("name", ["pan", "zoom", "rotate", "mix", "yaw", "mp4", "webm"])
def test_the_true_flow_warps_each_frame_onto_the_next(clips, name):
    """Input frame t-1 warped by the true backward flow is input frame t on the visible
    pixels; the same flow negated is far off, so the test can tell a wrong truth."""
    fr, truth = frames(clips[name]), clips[name][1]
    assert len(fr) == N and fr[0].shape == (*truth.shape, 3)
    right = temporal_error(fr, truth)
    wrong = np.mean([((fr[t].astype(np.float32) - warp(fr[t - 1], negated(truth, t), truth.period))
                      [truth.visible(t)] ** 2).mean() for t in range(1, N)])
    print(f"{name}: MSE {right:.2f} levels² with the true flow, {wrong:.0f} negated")
    assert right < LOSSLESS and wrong > 100 * LOSSLESS


@pytest.mark.parametrize("name", ["pan", "zoom", "rotate", "mix", "yaw"])
def test_the_layer_hides_and_reveals_and_content_leaves(clips, name):
    """Every frame has pixels not seen in the one before (the layer's trailing edge reveals
    background, the camera brings content in), but most are seen."""
    truth = clips[name][1]
    for t in range(1, N):
        vis = truth.visible(t)
        shown = truth.layer_at(t)[0]
        assert 0.8 < vis.mean() < 0.995 and 0.05 < shown.mean() < 0.3
        assert vis[shown].any() and vis[~shown].any()


def test_a_truth_without_the_layer_is_told(clips):
    """The layer's own motion matters: the same clip measured as if all of it moved with the
    camera is far off on the layer."""
    fr, truth = frames(clips["mix"]), clips["mix"][1]
    flat = ClipTruth(truth.shape, truth.camera, None, truth.sprite, None, 0.0, truth.fps)
    assert temporal_error(fr, flat) > 20 * temporal_error(fr, truth)


def test_the_truth_is_saved_beside_the_clip(clips):
    path, truth = clips["mp4"]
    assert truth_path(path).name == "mix.mp4.truth.npz"
    loaded = ClipTruth.load(truth_path(path))
    assert loaded.shape == truth.shape and loaded.period is None and loaded.layer is not None
    z = np.load(truth_path(path))
    assert z["flow"].shape == (N - 1, *SHAPE, 2) and z["visible"].shape == (N - 1, *SHAPE)
    for t in (1, N - 1):
        assert np.array_equal(loaded.flow(t), truth.flow(t))
        assert np.array_equal(z["flow"][t - 1], truth.flow(t))
        assert np.array_equal(z["visible"][t - 1], truth.visible(t))
    yaw = ClipTruth.load(truth_path(clips["yaw"][0]))
    assert yaw.period == 160


def test_the_mp4_is_lossless_with_a_tone_and_the_folder_in_natural_order(clips):
    """frame1.png … frame8.png in natural order (frame10 after frame9 is the same rule) are
    the frames of the mp4 rendered from the same truth, to within its YUV round trip."""
    assert sorted(p.name for p in clips["mix"][0].iterdir())[:2] == ["frame1.png", "frame2.png"]
    folder, mp4 = frames(clips["mix"]), frames(clips["mp4"])
    for a, b in zip(folder, mp4):
        assert ((a.astype(float) - b) ** 2).mean() < 0.6     # measured 0.4
    with av.open(str(clips["mp4"][0])) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert abs(float(a.duration * a.time_base) - N / 24) < 0.05
    with av.open(str(clips["webm"][0])) as c:
        assert [s.codec_context.name for s in c.streams] == ["vp9", "opus"]


def test_natural_order_past_nine(tmp_path):
    import cv2
    truth = make_clip(tmp_path / "f", (48, 64), 11, "pan", layer=False)
    names = [p.name for p in sorted((tmp_path / "f").iterdir())]
    assert names.index("frame10.png") == 1     # the trap: sorted() puts it second
    for path in (tmp_path / "f", str(tmp_path / "f" / "frame*.png")):
        for i, f in enumerate(read_frames(path)):
            assert np.array_equal(f, cv2.imread(str(tmp_path / "f" / f"frame{i + 1}.png"))[..., ::-1])
    assert temporal_error(read_frames(tmp_path / "f"), truth) < LOSSLESS


def test_the_noisy_clips_temporal_error_is_its_noise(tmp_path):
    """Independent noise σ per frame: frame t minus frame t-1 warped carries σ² from frame t
    and σ²·Σw² from the bilinear mix of frame t-1 (Σw² of the four weights: 1 on whole
    shifts, 1/4 half way), on top of the clean clip's error. 2σ² at most."""
    sigma = 6.0
    clean = make_clip(tmp_path / "clean", SHAPE, N, "mix", seed=3)
    noisy = make_clip(tmp_path / "noisy", SHAPE, N, "mix", seed=3, noise=sigma)
    measured = temporal_error(read_frames(tmp_path / "noisy"), noisy)
    base = temporal_error(read_frames(tmp_path / "clean"), clean)
    h, w = SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    sw = []
    for t in range(1, N):
        f, v = noisy.flow(t), noisy.visible(t)
        fx, fy = (xx + f[..., 0]) % 1, (yy + f[..., 1]) % 1
        sw.append((((1 - fx) ** 2 + fx ** 2) * ((1 - fy) ** 2 + fy ** 2))[v].mean())
    expected = base + sigma ** 2 * (1 + np.mean(sw))
    print(f"noise σ={sigma}: {measured:.1f} levels², expected {expected:.1f}, 2σ² = {2 * sigma ** 2}")
    assert abs(measured - expected) < 0.1 * expected and measured <= 2 * sigma ** 2 + base


def test_the_360_clip_crosses_its_seam(clips):
    """Content and the layer cross the left/right edge; the flow there wraps (the source of
    a pixel at the edge is on the other side), and warping across it is as good as inside.
    Without the wrap the edge columns are wrong."""
    fr, truth = frames(clips["yaw"]), clips["yaw"][1]
    h, w = truth.shape
    assert any(truth.layer_at(t)[0][:, 0].any() and truth.layer_at(t)[0][:, -1].any()
               for t in range(N))
    xx = np.arange(w, dtype=np.float32)
    for t in range(1, N):
        coords, vis = truth.correspondence(t, t - 1)
        f = truth.flow(t)
        assert np.abs(f[..., 0]).max() < w / 8     # wrapped: no jump of a whole width
        src = xx + f[..., 0]
        across = vis & ((src < 0) | (src > w - 1))  # seen in frame t-1 across the seam
        assert across.sum() >= h
        err = ((fr[t].astype(np.float32) - warp(fr[t - 1], coords, w)) ** 2).mean(-1)
        clamped = np.stack([src, coords[..., 1]], -1)   # the same flow, x not wrapped
        unwrapped = ((fr[t].astype(np.float32) - warp(fr[t - 1], clamped)) ** 2).mean(-1)
        assert err[across].mean() < LOSSLESS and unwrapped[across].mean() > 10 * LOSSLESS
    edge = np.zeros((h, w), bool)
    edge[:, :8] = edge[:, -8:] = True
    assert temporal_error(fr, truth, edge) < LOSSLESS     # the measure itself wraps


def test_long_term_error_counts_background_seen_hidden_and_seen_again(clips):
    """Between frames t-6 and t, background that the layer covered in between is visible in
    both and matches through the composed motion."""
    fr, truth = frames(clips["pan"]), clips["pan"][1]
    gap, t = 6, N - 1
    _, vis = truth.correspondence(t, t - gap)
    hidden_between = np.zeros(truth.shape, bool)       # under the layer in a frame between
    h, w = truth.shape
    for s in range(t - gap + 1, t):
        coords, _ = truth.correspondence(t, s)
        x, y = np.rint(coords[..., 0]).astype(int), np.rint(coords[..., 1]).astype(int)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        hidden_between |= inside & truth.layer_at(s)[0][y.clip(0, h - 1), x.clip(0, w - 1)]
    again = vis & hidden_between & ~truth.layer_at(t)[0]
    assert again.sum() > 50        # measured 144 px of 19200
    coords, _ = truth.correspondence(t, t - gap)
    err = ((fr[t].astype(np.float32) - warp(fr[t - gap], coords)) ** 2).mean(-1)
    assert err[again].mean() < LOSSLESS
    assert long_term_error(fr, truth, gap) < LOSSLESS


@pytest.mark.parametrize("call, match", [
    (lambda d: make_clip(d / "x", motion="spin"), "motion 'spin': expected one of"),
    (lambda d: make_clip(d / "x", (100, 150), motion="yaw"), "twice as wide as high"),
    (lambda d: make_clip(d / "x.gif"), "as .mp4, .webm or a folder"),
    (lambda d: list(read_frames(d)), "no images"),
    (lambda d: list(read_frames(d / "none.mp4")), "no such video file"),
])
def test_bad_input_is_one_line(tmp_path, call, match):
    with pytest.raises((InputError, OutputError), match=match):
        call(tmp_path)


def test_the_measures_refuse_a_result_of_another_size_or_length(clips):
    fr, truth = frames(clips["pan"]), clips["pan"][1]
    with pytest.raises(InputError, match="measure the result at the clip's size"):
        temporal_error([f[:-1] for f in fr], truth)
    with pytest.raises(InputError, match="7 frames against the clip's 8"):
        temporal_error(fr[:-1], truth)
    with pytest.raises(InputError, match="gap 8: expected 1 to 7"):
        long_term_error(fr, truth, 8)
