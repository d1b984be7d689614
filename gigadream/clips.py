"""Test clips whose motion is known exactly, and the temporal errors measured against them.

``make_clip`` films a photo through a moving camera (an affine per frame: pan, zoom, rotate,
all three, or a 360° frame turning about the vertical axis), with a second textured layer (a
rounded rectangle of another photo) moving across it with a motion of its own, so content
enters and leaves the frame and the layer hides and reveals the background. Every frame is
rendered straight from the two textures through its own affines, so where each pixel of any
frame was in any other frame is known exactly: ``ClipTruth``.

``temporal_error`` and ``long_term_error`` are Ruder et al. (2016)'s measures of temporal
consistency, taken with that true correspondence instead of an estimated flow:
the mean squared difference (0-255 levels, RGB) between a result frame and an earlier one
warped onto it, over the pixels visible in both.

Coordinates are pixel centres: pixel (row y, column x) is the point (x, y). A frame's
"camera" matrix maps its pixels to background-texture coordinates, its "layer" matrix maps
them to sprite-texture coordinates (3×3, homogeneous, acting on column vectors (x, y, 1)).
"""
from __future__ import annotations

import glob
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from .errors import InputError, OutputError

Motion = Literal["pan", "zoom", "rotate", "mix", "yaw"]
MOTIONS = ("pan", "zoom", "rotate", "mix", "yaw")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm")
# The textures' finest detail is 2.5 texture pixels wide (made at 1/2.5 size and upscaled
# bicubically) and the background is seen 1.6× magnified, so its detail is 4 frame pixels
# wide; the 360° background is seen at 1:1 and made at 1/4 size for the same. A frame warped
# onto the next is a resampling of a resampling, and finer detail makes it differ from the
# next frame rendered directly: warping the input clip's PNG frames by their true flow gives
# 0.5-1.2 levels² this way, 0.8-1.9 with detail 2 texture pixels wide.
DETAIL = 2.5
MAGNIFY = 1.6
YAW_DETAIL = 4.0


@dataclass(frozen=True, eq=False)
class ClipTruth:
    """The exact motion of a clip from ``make_clip``.

    ``camera``: (N, 3, 3) float64, frame t's pixel → background coordinates. ``layer``:
    (N, 3, 3), frame t's pixel → sprite coordinates, or None for a clip without the layer.
    ``sprite``: (height, width, corner radius) of the layer's rounded rectangle in sprite
    coordinates, its top-left corner at (0, 0). ``period``: the frame width for a 360° clip
    (x is circular), else None. ``noise``: the sensor noise σ (levels) added to each frame.
    """

    shape: tuple[int, int]
    camera: np.ndarray
    layer: np.ndarray | None
    sprite: tuple[float, float, float]
    period: int | None
    noise: float
    fps: float

    @property
    def frames(self) -> int:
        return len(self.camera)

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        return xx, yy

    def _copies(self) -> tuple[int, ...]:
        # a 360° frame's layer may straddle the seam: look for it one period either side too
        return (0, -self.period, self.period) if self.period else (0,)

    def layer_at(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Where frame ``t`` shows the layer: (h, w) bool, and each pixel's sprite
        coordinates (h, w, 2) float64 (meaningful where the bool is set)."""
        h, w = self.shape
        shown = np.zeros((h, w), bool)
        q = np.zeros((h, w, 2))
        if self.layer is None:
            return shown, q
        xx, yy = self._grid()
        for k in self._copies():
            qk = _apply(self.layer[t], xx + k, yy)
            inside = _in_rounded_rect(qk, self.sprite) & ~shown
            q[inside] = qk[inside]
            shown |= inside
        return shown, q

    def correspondence(self, t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each pixel of frame ``t`` is in frame ``s``, and whether it is seen there.

        Returns (coords (h, w, 2) float32: the absolute (x, y) position in frame s, x taken
        modulo the width for a 360° clip; visible (h, w) bool). A pixel is visible in both
        when its point lands inside frame s and on the same layer there (the background not
        covered by the layer at s, or the layer's own point): it counts even if hidden in
        the frames between. The test is made at all four pixels that bilinear sampling at
        the position reads, so a visible pixel's warped value mixes nothing of the other
        layer or of the outside.
        """
        xx, yy = self._grid()
        shown_t, q = self.layer_at(t)
        p = _apply(np.linalg.inv(self.camera[s]) @ self.camera[t], xx, yy)
        if self.layer is not None:
            p[shown_t] = _apply(np.linalg.inv(self.layer[s]), q[shown_t, 0], q[shown_t, 1])
        h, w = self.shape
        if self.period:
            p[..., 0] %= self.period
        # bilinear reads floor(p) and the pixel after it on each axis (weight 0 when p is
        # whole), so the point must lie within the outer pixels' centres
        inside = (p[..., 1] >= 0) & (p[..., 1] <= h - 1)
        if not self.period:
            inside &= (p[..., 0] >= 0) & (p[..., 0] <= w - 1)
        x0, y0 = np.floor(p[..., 0]).astype(np.int64), np.floor(p[..., 1]).astype(np.int64)
        shown_s, _ = self.layer_at(s)
        visible = inside.copy()
        for dy in (0, 1):
            for dx in (0, 1):
                yi = np.clip(y0 + dy, 0, h - 1)
                xi = (x0 + dx) % w if self.period else np.clip(x0 + dx, 0, w - 1)
                visible &= shown_s[yi, xi] == shown_t
        return p.astype(np.float32), visible

    def flow(self, t: int) -> np.ndarray:
        """The true backward flow of frame ``t`` >= 1: (h, w, 2) float32, pixel x of frame t
        was at x + flow(x) in frame t - 1 (for a 360° clip, x component in (-w/2, w/2])."""
        self._check(t, 1)
        coords, _ = self.correspondence(t, t - 1)
        xx, yy = self._grid()
        f = np.stack([coords[..., 0] - xx, coords[..., 1] - yy], -1)
        if self.period:
            f[..., 0] = (f[..., 0] + self.period / 2) % self.period - self.period / 2
        return f.astype(np.float32)

    def visible(self, t: int) -> np.ndarray:
        """(h, w) bool: pixels of frame ``t`` >= 1 seen in frame t - 1 on the same layer."""
        self._check(t, 1)
        return self.correspondence(t, t - 1)[1]

    def _check(self, t: int, first: int) -> None:
        if not first <= t < self.frames:
            raise IndexError(f"frame {t} of a {self.frames}-frame clip (from {first})")

    def save(self, path: str | Path) -> Path:
        """Writes the truth to ``path`` (.npz): the matrices above, and for readers without
        this class, ``flow`` (N-1, h, w, 2) float32 and ``visible`` (N-1, h, w) bool, entry
        t-1 for frame t."""
        path = Path(path)
        flows = np.stack([self.flow(t) for t in range(1, self.frames)]) if self.frames > 1 \
            else np.zeros((0, *self.shape, 2), np.float32)
        vis = np.stack([self.visible(t) for t in range(1, self.frames)]) if self.frames > 1 \
            else np.zeros((0, *self.shape), bool)
        np.savez_compressed(
            path, shape=np.array(self.shape), camera=self.camera,
            layer=self.layer if self.layer is not None else np.zeros((0, 3, 3)),
            sprite=np.array(self.sprite), period=np.array(self.period or 0),
            noise=np.array(self.noise), fps=np.array(self.fps), flow=flows, visible=vis)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ClipTruth":
        """The truth saved by ``save`` (``truth_path(clip)`` for a clip of ``make_clip``)."""
        try:
            z = np.load(path)
        except OSError as e:
            raise InputError(f"{path}: cannot read a clip's truth ({e}); make the clip "
                             f"again with gigadream.clips.make_clip") from None
        layer = z["layer"]
        return cls(shape=tuple(int(v) for v in z["shape"]), camera=z["camera"],
                   layer=layer if len(layer) else None,
                   sprite=tuple(float(v) for v in z["sprite"]),
                   period=int(z["period"]) or None, noise=float(z["noise"]), fps=float(z["fps"]))


def truth_path(out: str | Path) -> Path:
    """Where ``make_clip`` puts a clip's truth: beside it, ``clip.mp4`` → ``clip.mp4.truth.npz``,
    folder ``frames/`` → ``frames.truth.npz``."""
    out = Path(out)
    return out.with_name(out.name + ".truth.npz")


def _apply(m: np.ndarray, x, y) -> np.ndarray:
    """Affine ``m`` (3×3) applied to points (x, y): (..., 2) float64."""
    return np.stack([m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]], -1)


def _in_rounded_rect(q: np.ndarray, sprite: tuple[float, float, float]) -> np.ndarray:
    h, w, r = sprite
    x, y = q[..., 0], q[..., 1]
    dx = np.maximum(np.maximum(r - x, x - (w - r)), 0)
    dy = np.maximum(np.maximum(r - y, y - (h - r)), 0)
    return (x >= 0) & (x <= w) & (y >= 0) & (y <= h) & (dx * dx + dy * dy <= r * r)


def _affine(tx=0.0, ty=0.0, angle=0.0, scale=1.0) -> np.ndarray:
    """Translate · rotate (degrees) · scale, as one 3×3 matrix."""
    c, s = np.cos(np.radians(angle)) * scale, np.sin(np.radians(angle)) * scale
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])


def _shift(tx, ty) -> np.ndarray:
    return _affine(tx, ty)


def _photo(photo: str | Path) -> np.ndarray:
    """(h, w, 3) uint8 RGB: a scikit-image photo by name, or an image file."""
    import skimage.data
    if isinstance(photo, str) and not Path(photo).suffix and hasattr(skimage.data, photo):
        img = np.asarray(getattr(skimage.data, photo)())
    else:
        import pyvips
        try:
            v = pyvips.Image.new_from_file(str(photo), access="sequential")
        except pyvips.Error:
            raise InputError(f"{photo}: not a scikit-image photo's name (e.g. astronaut) nor "
                             f"an image file that libvips reads; give one of them") from None
        img = _to_rgb8(v)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _texture(img: np.ndarray, h: int, w: int, detail: float = DETAIL) -> np.ndarray:
    """``img`` resized to h × w float32, its finest detail ``detail`` pixels wide (see DETAIL)."""
    import cv2
    small = cv2.resize(img, (max(1, round(w / detail)), max(1, round(h / detail))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _motions(motion: str, h: int, w: int, n: int, layer: bool, rng, tex_shape, sprite_scale
             ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Per-frame camera and layer matrices (frame px → texture px)."""
    th, tw = tex_shape
    sgn = rng.choice([-1.0, 1.0], 3)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    t = np.arange(n, dtype=np.float64)
    cams = []
    for i in t:
        if motion == "yaw":
            # a turn about the vertical axis is a shift along x of the equirectangular frame:
            # 1.4 % of the width a frame (5°), so a 24-frame clip turns 120°
            cams.append(_shift(0.23 * w + sgn[0] * 0.0139 * w * i, 0.0))
            continue
        pan = (0.0137 * w * sgn[0], 0.0071 * h * sgn[1]) if motion in ("pan", "mix") else (0, 0)
        zoom = 1.013 ** (-i) if motion in ("zoom", "mix") else 1.0     # zooms in 1.3 % a frame
        turn = 0.83 * sgn[2] * i if motion in ("rotate", "mix") else 0.0  # degrees
        cams.append(_shift(tw / 2 + pan[0] / MAGNIFY * i, th / 2 + pan[1] / MAGNIFY * i)
                    @ _affine(angle=turn, scale=zoom / MAGNIFY) @ _shift(-cx, -cy))
    camera = np.stack(cams)
    if not layer:
        return camera, None, (0.0, 0.0, 0.0)
    # the layer: a rounded rectangle 0.42 h × 0.36 w of the frame, going back and forth
    # across 0.62 of the frame's width at 2.6 % of it a frame (8 px at 320 px: a motion DIS
    # follows) while turning, so it hides background and then reveals it; a 360° clip's
    # layer goes round instead, crossing the seam from its first frames
    sh, sw = 0.42 * h * sprite_scale, 0.36 * w * sprite_scale
    sprite = (sh, sw, 0.2 * min(sh, sw))
    speed = 0.026
    lays = []
    for i in t:
        u = 1 - abs(i * speed / 0.62 % 2 - 1)          # 0 → 1 → 0 …, a triangle wave
        if motion == "yaw":
            px = (0.93 - sgn[0] * speed * i) * w % w
            py = 0.5 * h + 0.1 * h * np.sin(np.pi * u)
        else:
            px = cx + sgn[0] * (0.62 * u - 0.31) * w
            py = 0.45 * h + 0.1 * h * u
        place = _shift(px, py) @ _affine(angle=9.0 * u - 4.5, scale=1 / sprite_scale) \
            @ _shift(-sw / 2, -sh / 2)              # sprite → frame
        lays.append(np.linalg.inv(place))
    return camera, np.stack(lays), sprite


def make_clip(out: str | Path, shape: tuple[int, int] = (240, 320), frames: int = 24,
              motion: Motion = "pan", layer: bool = True, noise: float = 0.0, fps: float = 24,
              seed: int = 0, photo: str | Path = "astronaut", audio: bool = False,
              layer_photo: str | Path = "chelsea") -> ClipTruth:
    """Films ``photo`` through a moving camera and writes the clip to ``out``; returns its
    truth, also saved to ``truth_path(out)``.

    out: ``.mp4`` (H.264 lossless, yuv444p; with ``audio`` an AAC tone as long as the
    clip), ``.webm`` (VP9 lossless; Opus tone) or a folder (``frame1.png`` … ``frameN.png``,
    not zero padded). shape: (h, w) of a frame; 2:1 for ``motion="yaw"``. motion: "pan",
    "zoom" (in), "rotate", "mix" (all three) or "yaw" (a 360° equirectangular frame turning
    about the vertical axis: content crosses the left/right edge). layer: a rounded
    rectangle of ``layer_photo`` crossing the frame on its own motion. noise: σ in levels of
    Gaussian sensor noise, drawn anew for each frame. photo: a scikit-image photo's name or
    an image file.
    """
    import cv2
    h, w = (int(v) for v in shape)
    if motion not in MOTIONS:
        raise InputError(f"motion {motion!r}: expected one of {', '.join(MOTIONS)}")
    if h < 16 or w < 16 or frames < 1:
        raise InputError(f"a clip of {frames} frames of {w}×{h} px: give at least 1 frame "
                         f"of 16×16 px")
    if motion == "yaw" and w != 2 * h:
        raise InputError(f"a 360° (yaw) clip of {w}×{h} px: an equirectangular frame is "
                         f"twice as wide as high; give shape=({h}, {2 * h})")
    out = Path(out)
    kind = out.suffix.lower() if out.suffix.lower() in VIDEO_SUFFIXES else "folder"
    if out.suffix and kind == "folder":
        raise OutputError(f"{out}: a clip is written as .mp4, .webm or a folder of PNG frames "
                          f"(a name without a suffix)")
    rng = np.random.default_rng(seed)
    img = _photo(photo)
    if motion == "yaw":
        # one period of the 360° background: the photo beside its mirror image, so the
        # left and right edges meet without a step
        half = _texture(img, h, w // 2, YAW_DETAIL)
        bg = np.concatenate([half, half[:, ::-1]], 1)
        if w % 2:
            bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        ih, iw = img.shape[:2]
        bh = int(round(h / MAGNIFY * 1.25))       # the photo a little taller than the view
        bg = _texture(img, bh, int(round(bh * iw / ih)))
    sprite_scale = 1.25                          # the sprite seen 1.25× magnified, as the bg
    camera, lay, sprite = _motions(motion, h, w, frames, layer, rng, bg.shape[:2], 1 / sprite_scale)
    truth = ClipTruth(shape=(h, w), camera=camera, layer=lay, sprite=sprite,
                      period=w if motion == "yaw" else None, noise=float(noise), fps=float(fps))
    tex = None
    if layer:
        lim = _photo(layer_photo)
        sh, sw, _ = sprite
        # the photo's middle, cropped to the sprite's aspect, a few pixels larger all round
        ih, iw = lim.shape[:2]
        ch, cw = (ih, int(ih * sw / sh)) if iw * sh > ih * sw else (int(iw * sh / sw), iw)
        lim = lim[(ih - ch) // 2:(ih - ch) // 2 + ch, (iw - cw) // 2:(iw - cw) // 2 + cw]
        tex = _texture(lim, int(np.ceil(sh)) + 2, int(np.ceil(sw)) + 2)
    xx, yy = truth._grid()

    def render(t: int) -> np.ndarray:
        b = _apply(camera[t], xx, yy).astype(np.float32)
        if truth.period:    # x circular, y stays on the rows (a pure yaw)
            frame = cv2.remap(bg, b[..., 0] % w, b[..., 1], cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_WRAP)
        else:   # the photo mirrored without end: BORDER_REFLECT repeats with period 2×size
            bx = b[..., 0] % (2 * bg.shape[1])
            by = b[..., 1] % (2 * bg.shape[0])
            frame = cv2.remap(bg, bx, by, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if tex is not None:
            shown, q = truth.layer_at(t)
            q = q.astype(np.float32)
            lf = cv2.remap(tex, q[..., 0], q[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
            frame[shown] = lf[shown]
        if noise:
            frame = frame + rng.normal(0.0, noise, frame.shape).astype(np.float32)
        return np.clip(np.rint(frame), 0, 255).astype(np.uint8)

    frames_iter = (render(t) for t in range(frames))
    if kind == "folder":
        out.mkdir(parents=True, exist_ok=True)
        for t, f in enumerate(frames_iter):
            if not cv2.imwrite(str(out / f"frame{t + 1}.png"), f[..., ::-1]):
                raise OutputError(f"{out}: cannot write frame{t + 1}.png there")
    else:
        _write_video(out, frames_iter, (h, w), fps, audio, frames)
    truth.save(truth_path(out))
    return truth


def _write_video(out: Path, frames: Iterable[np.ndarray], shape, fps, audio: bool, n: int) -> None:
    """Lossless H.264 (.mp4) or VP9 (.webm) in yuv444p, with a tone if ``audio``. Only the
    RGB → YUV → RGB round trip loses anything (profiling/sequences.md gives how much)."""
    import av
    from fractions import Fraction
    h, w = shape
    rate = Fraction(fps).limit_denominator(1001)
    mp4 = out.suffix.lower() == ".mp4"
    try:
        container = av.open(str(out), "w")
    except OSError as e:
        raise OutputError(f"{out}: cannot write the clip there ({e})") from None
    with container:
        if mp4:
            vs = container.add_stream("libx264", rate=rate, options={"qp": "0", "preset": "fast"})
        else:
            vs = container.add_stream("libvpx-vp9", rate=rate,
                                      options={"lossless": "1", "deadline": "realtime",
                                               "cpu-used": "8", "row-mt": "1"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv444p"
        as_ = None
        if audio:
            as_ = container.add_stream("aac" if mp4 else "libopus", rate=48000, layout="mono")
        for t, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf = vf.reformat(format="yuv444p")
            vf.pts = t
            vf.time_base = 1 / rate
            for p in vs.encode(vf):
                container.mux(p)
        for p in vs.encode(None):
            container.mux(p)
        if as_ is not None:
            size, sr = (1024 if mp4 else 960), 48000
            total = int(round(n / float(rate) * sr))
            tone = (0.2 * np.sin(2 * np.pi * 440.0 * np.arange(total) / sr)).astype(np.float32)
            for i in range(0, total, size):
                chunk = tone[i:i + size]
                af = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
                af.sample_rate, af.pts = sr, i
                for p in as_.encode(af):
                    container.mux(p)
            for p in as_.encode(None):
                container.mux(p)


def _natural(name: str) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def _to_rgb8(v) -> np.ndarray:
    """A libvips image as (h, w, 3) uint8 RGB: alpha flattened, 16 bits to 8, grey to RGB."""
    if v.hasalpha():
        v = v.flatten()
    if v.format == "ushort":
        v = v / 257
    if v.format != "uchar":
        v = v.cast("uchar")
    a = v.numpy()
    if a.ndim == 2:
        a = a[..., None]
    return np.ascontiguousarray(np.repeat(a, 3, 2) if a.shape[2] == 1 else a[..., :3])


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """The frames of a clip, one at a time, as (h, w, 3) uint8 RGB: a video file (PyAV), a
    folder of images in natural order (``frame2.png`` before ``frame10.png``; libvips) or a
    glob of images."""
    path = Path(path)
    if path.is_dir() or any(c in str(path) for c in "*?["):
        files = list(path.iterdir()) if path.is_dir() else [Path(p) for p in glob.glob(str(path))]
        files = sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: _natural(p.name))
        if not files:
            raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) there; give a "
                             f"folder of frames, a glob or a video file")
        return _read_images(files)
    if not path.is_file():
        raise InputError(f"{path}: no such video file or folder of frames")
    return _read_video(path)


def _read_images(files: list[Path]) -> Iterator[np.ndarray]:
    import pyvips
    for p in files:
        try:
            yield _to_rgb8(pyvips.Image.new_from_file(str(p), access="sequential"))
        except pyvips.Error:
            raise InputError(f"{p}: not an image libvips can read") from None


def _read_video(path: Path) -> Iterator[np.ndarray]:
    import av
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{path}: not a video PyAV can read ({e})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: has no video stream")
        s = container.streams.video[0]
        s.thread_type = "AUTO"
        for f in container.decode(s):
            yield f.to_ndarray(format="rgb24")


def warp(frame: np.ndarray, coords: np.ndarray, period: int | None = None) -> np.ndarray:
    """``frame`` (h, w, C) sampled bilinearly at ``coords`` (h, w, 2) absolute (x, y):
    float32. ``period``: x is circular with that width (a 360° frame)."""
    import cv2
    src = np.asarray(frame, np.float32)
    mx, my = coords[..., 0].astype(np.float32), coords[..., 1].astype(np.float32)
    if period:
        # two columns from the other edge, so bilinear reads across the seam; y is replicated
        # (cv2's BORDER_WRAP would wrap y too, wrong at the poles)
        src = cv2.copyMakeBorder(src, 0, 0, 2, 2, cv2.BORDER_WRAP)
        mx = np.mod(mx, period) + 2
    return cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _pair_error(now: np.ndarray, before: np.ndarray, coords, visible, period) -> float:
    diff = np.asarray(now, np.float32) - warp(before, coords, period)
    if diff.ndim == 2:
        diff = diff[..., None]
    return float((diff[visible] ** 2).mean()) if visible.any() else float("nan")


def _frames(frames: Sequence[np.ndarray] | Iterable[np.ndarray], truth: ClipTruth):
    n = 0
    for f in frames:
        f = np.asarray(f)
        if f.shape[:2] != truth.shape:
            raise InputError(f"frame {n}: {f.shape[1]}×{f.shape[0]} px, the clip's truth is "
                             f"{truth.shape[1]}×{truth.shape[0]}: measure the result at the "
                             f"clip's size")
        yield f
        n += 1
    if n != truth.frames:
        raise InputError(f"{n} frames against the clip's {truth.frames}: measure the whole "
                         f"result of the whole clip")


def temporal_error(frames: Sequence[np.ndarray] | Iterable[np.ndarray], truth: ClipTruth,
                   where: np.ndarray | None = None) -> float:
    """Ruder et al.'s short-term temporal error: the mean over t >= 1 of the mean squared
    difference (0-255 levels, over pixels and channels) between frame t and frame t-1
    warped by the true backward flow (bilinear), over the pixels visible in both. Frames
    may be any iterable of (h, w, 3) arrays, read once. ``where``: (h, w) bool, only those
    pixels of frame t (e.g. a 360° frame's edge columns)."""
    return long_term_error(frames, truth, 1, where)


def long_term_error(frames: Sequence[np.ndarray] | Iterable[np.ndarray], truth: ClipTruth,
                    gap: int, where: np.ndarray | None = None) -> float:
    """As ``temporal_error`` between frame t and frame t - ``gap`` through the true
    correspondence, over the pixels visible in both (background hidden by the layer in the
    frames between counts), mean over t >= gap."""
    if not 1 <= gap < truth.frames:
        raise InputError(f"gap {gap}: expected 1 to {truth.frames - 1} for a clip of "
                         f"{truth.frames} frames")
    kept: deque = deque(maxlen=gap + 1)
    errors = []
    for t, f in enumerate(_frames(frames, truth)):
        kept.append(f)
        if t >= gap:
            coords, vis = truth.correspondence(t, t - gap)
            if where is not None:
                vis = vis & where
            errors.append(_pair_error(f, kept[0], coords, vis, truth.period))
    return float(np.nanmean(errors))
