"""Frames in and out of video files and folders of images: the frame I/O of styling or
dreaming a clip (``sequence`` drives it).

In: ``open_frames`` takes a video file (any container FFmpeg reads), a folder of images or a
glob, and returns a ``FrameSource``. A video is decoded as a stream, one frame in memory at a
time (a 90 s 720p clip decodes in a flat 70 MB); an image sequence yields its files' paths
only, since its frames may be 300 MP panoramas that the tiled engine reads itself.

Out: ``VideoWriter`` encodes RGB frames into .mp4 (H.264, HEVC, VP9 or AV1) or .webm (VP9 or
AV1), with the input's frame timestamps (variable frame rate included) and its first audio
stream, and optionally marks the result as a 360° equirectangular video.

- Odd sizes: 4:2:0 chroma needs an even width and height, so the last row or column of an
  odd-sized frame is cropped (1001×501 → a 1000×500 video). Cropping loses one line that no
  player would show apart; padding would add a copied one, and on a 360° frame a doubled
  column at the seam.
- Colour: frames are converted to BT.709 limited-range YUV and tagged so, as players assume
  for HD and larger; decoding converts with the input's own tags.
- Audio is copied packet for packet where the output can hold its codec (mp4: AAC, MP3,
  Opus, FLAC, ALAC, AC-3, E-AC-3; webm: Opus, Vorbis). Otherwise it is re-encoded: to Opus
  for a .webm (which cannot hold AAC, the common case: refusing would refuse most phone
  videos), to AAC for an .mp4. Audio packets are muxed as the frames arrive, up to each
  frame's time, so the muxer never holds more than the encoder's delay.
- A frame range (``frames(start, stop, stride)``) keeps the audio of the range: the
  output starts where the input starts, every timestamp (video and audio) shifted alike by
  the range's start. A stride keeps the input's timestamps of the kept frames, so the video
  plays at the input's speed at a lower frame rate, and the audio stays in sync.
- Spherical: PyAV cannot attach spherical side data to a stream it encodes, so the mp4 is
  rewritten after muxing (``_inject_spherical``): Spherical Video V2 ``st3d``/``sv3d`` boxes
  in the video sample entry and the V1 ``uuid`` XML in its track. A .webm is encoded into a
  temporary mp4 first, injected, then stream-copied into the .webm, where FFmpeg's matroska
  muxer writes the ``Projection`` element from the side data.
- The output is written under a hidden temporary name beside it and renamed over it when
  complete: a killed run leaves no half-written video under the final name.
"""
from __future__ import annotations

import fractions
import glob
import os
import re
import shutil
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from .errors import ConfigError, InputError, OutputError
from .ingest import image_shape
from .storage import location
from .text import error_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
# Containers read as video by their extension. A GIF is not among them: gigadream reads it
# as a still image (libvips decodes its first page).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts",
                    ".mts", ".m2ts", ".ogv")

# The software encoders offered: name → (default crf, options). The options are each
# encoder's fast settings: an 8K frame encodes in seconds, small next to a style step
# (profiling/sequences-facts.md §1 has each one's time and memory). VP9's crf mode needs b=0.
ENCODERS = {
    "libx264": (20, {"preset": "veryfast"}),
    "libx265": (24, {"preset": "veryfast", "x265-params": "log-level=error"}),
    "libvpx-vp9": (32, {"b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
    "libsvtav1": (35, {"preset": "10"}),
}
# The largest crf each encoder takes (0 is the best quality).
MAX_CRF = {"libx264": 51, "libx265": 51, "libvpx-vp9": 63, "libsvtav1": 63}
ALIASES = {"h264": "libx264", "x264": "libx264", "avc": "libx264", "hevc": "libx265",
           "h265": "libx265", "x265": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1",
           "svtav1": "libsvtav1"}
# Output extension → (FFmpeg muxer, the encoders it holds, the encoder of codec "auto").
CONTAINERS = {".mp4": ("mp4", ("libx264", "libx265", "libvpx-vp9", "libsvtav1"), "libx264"),
              ".webm": ("webm", ("libvpx-vp9", "libsvtav1"), "libvpx-vp9")}
# Audio codecs each muxer takes unchanged, and the encoder for any other.
AUDIO_COPY = {"mp4": {"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"},
              "webm": {"opus", "vorbis"}}
AUDIO_ENCODER = {"mp4": "aac", "webm": "libopus"}
# H.264's largest level (6.2) allows 139264 macroblocks of 16×16 a frame: 8192×4352.
H264_MAX_MACROBLOCKS = 139264
DEFAULT_IMAGE_RATE = 24


@dataclass(frozen=True)
class Frame:
    """One frame of a ``FrameSource``."""
    index: int                          # 0-based position in the input, before any range/stride
    pts: int | None                     # video: its pts in time_base units; images: None
    time_base: fractions.Fraction | None
    path: Path | None                   # images: the frame's file, never decoded here
    pixels: np.ndarray | None           # video: (h, w, 3) uint8 RGB, C-contiguous

    @property
    def time(self) -> Fraction | None:
        """The frame's presentation time in seconds (video), None for an image."""
        return None if self.pts is None else self.pts * self.time_base


class FrameSource:
    """The frames of a video or of an image sequence (``open_frames`` makes one). A context
    manager: ``close`` ends any iteration still open."""

    def __init__(self, kind: str, path: str, shape: tuple[int, int], count: int,
                 rate: Fraction | None = None, spherical: bool = False, *,
                 files: tuple[Path, ...] = (), time_base: Fraction | None = None,
                 audio: str | None = None, rotation: int = 0):
        self.kind = kind                # "video" or "images"
        self.path = path                # what the user gave
        self.shape = shape              # (h, w) of every frame
        self.count = count
        self.rate = rate                # video: its average frame rate
        self.spherical = spherical
        self.files = files              # images: in natural order
        self.time_base = time_base      # video: its stream's time base
        self.audio = audio              # video: the codec of its first audio stream, if any
        # video: how players turn its frames (degrees counter-clockwise; phones record
        # upright video as landscape frames turned by 90 or 270). Frames are as stored.
        self.rotation = rotation
        self._open: list[Iterator[Frame]] = []

    def frames(self, start: int = 0, stop: int | None = None, stride: int = 1) -> Iterator[Frame]:
        """Frames ``start``, ``start + stride``, … before ``stop`` (None: to the end). A video
        is decoded as a stream; the frames skipped are decoded and dropped, never sought to
        (a seek lands on a keyframe, and exactness matters more than the decode time)."""
        _check_range(start, stop, stride, self.count)
        it = self._video(start, stop, stride) if self.kind == "video" else \
            (Frame(i, None, None, self.files[i], None)
             for i in range(start, self.count if stop is None else min(stop, self.count), stride))
        self._open.append(it)
        return it

    def _video(self, start: int, stop: int | None, stride: int) -> Iterator[Frame]:
        with _open_video(self.path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, f in enumerate(c.decode(s)):
                if stop is not None and i >= stop:
                    return
                if i < start or (i - start) % stride:
                    continue
                yield Frame(i, _pts(f, i, self.rate), f.time_base, None, _rgb(f))

    def close(self) -> None:
        for it in self._open:
            if hasattr(it, "close"):
                it.close()
        self._open.clear()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_range(start: int, stop: int | None, stride: int, count: int) -> None:
    if stride < 1:
        raise ConfigError(f"frame stride {stride}: give 1 (every frame) or more")
    if start < 0 or start >= count:
        raise ConfigError(f"first frame {start}: the input has frames 0 to {count - 1}")
    if stop is not None and stop <= start:
        raise ConfigError(f"frame range {start}:{stop} is empty; give an end after the start")


def _pts(f, i: int, rate: Fraction | None) -> int:
    """A decoded frame's pts; where the stream has none (raw streams), the i-th frame's time
    at the average rate."""
    if f.pts is not None:
        return f.pts
    return round(Fraction(i) / (rate or DEFAULT_IMAGE_RATE) / f.time_base)


def _rgb(f) -> np.ndarray:
    """A decoded frame as (h, w, 3) uint8 RGB, converted with its own colour range."""
    rng = f.color_range if f.color_range in (1, 2) else None     # MPEG (limited), JPEG (full)
    return np.ascontiguousarray(f.reformat(format="rgb24", src_color_range=rng).to_ndarray())


def natural_key(name: str) -> list:
    """Sort key putting frame2 before frame10: digit runs compare as numbers."""
    # re.split with a group alternates text and digits, text first, so keys compare pairwise.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def is_sequence_input(spec: str) -> bool:
    """Whether ``spec`` names frames rather than one still image: an existing folder, a glob
    pattern, or a file with a video container's extension (decided by name, nothing read)."""
    path = Path(spec)
    if path.is_dir():
        return True
    if not path.exists() and _is_glob(spec):
        return True
    return path.suffix.lower() in VIDEO_EXTENSIONS


def open_frames(spec: str) -> FrameSource:
    """The frames of a video file, a folder of images or a glob (images in natural order,
    all of one size, each checked from its header). One-line ``InputError`` for anything
    that is not such a sequence."""
    spec = str(spec)
    if location.is_url(spec):
        raise InputError(f"input {spec}: videos and frame sequences are read from local "
                         "files; download it first")
    path = Path(spec)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        return _images(spec, files)
    if not path.exists() and _is_glob(spec):
        files = [Path(p) for p in glob.glob(spec)
                 if Path(p).suffix.lower() in IMAGE_EXTENSIONS and Path(p).is_file()]
        return _images(spec, files)
    if not path.exists():
        raise InputError(f"input {spec} not found; check the path")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"input {spec} is one image, not a sequence; give a video, a folder "
                         "of frames or a glob such as 'frames/*.png'")
    return _video_source(spec)


def _images(spec: str, files: list[Path]) -> FrameSource:
    if not files:
        raise InputError(f"input {spec} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                         "give a folder or glob of frames, or a video file")
    files.sort(key=lambda p: natural_key(str(p)))
    shape = image_shape(files[0], "frame")
    for p in files[1:]:
        other = image_shape(p, "frame")
        if other != shape:
            raise InputError(f"frame {p} is {other[1]}×{other[0]} px but {files[0].name} is "
                             f"{shape[1]}×{shape[0]} px; every frame must be the same size")
    return FrameSource("images", spec, shape, len(files), files=tuple(files))


def _open_video(path: str):
    try:
        return av.open(path)
    except av.FFmpegError as e:
        raise InputError(f"input {path} cannot be read as a video ({error_line(e)}); give an "
                         "mp4, mov, mkv, webm or another file FFmpeg reads") from None


def _video_source(spec: str) -> FrameSource:
    with _open_video(spec) as c:
        if not c.streams.video:
            held = ", ".join(sorted({s.type for s in c.streams})) or "no streams"
            raise InputError(f"input {spec} has no video stream (it holds {held}); give a "
                             "video file")
        s = c.streams.video[0]
        shape = (s.codec_context.height, s.codec_context.width)
        if 0 in shape:
            raise InputError(f"input {spec}: its video stream has no frame size; give a video "
                             "FFmpeg can decode")
        # Not every container records the frame count: count the packets then (no decode).
        count = s.frames or sum(1 for p in c.demux(s) if p.size)
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        rate, time_base = s.average_rate, s.time_base
    if count == 0:
        raise InputError(f"input {spec} holds no video frames; give a video with frames")
    spherical, rotation = _first_frame(spec)
    return FrameSource("video", spec, shape, count, rate, spherical, time_base=time_base,
                       audio=audio, rotation=rotation)


def is_spherical(path: Path | str) -> bool:
    """Whether the first frame of the video at ``path`` carries SPHERICAL side data with
    the equirectangular projection (the demuxer puts the container's spherical metadata,
    mp4's sv3d or V1 XML, matroska's Projection, on every decoded frame)."""
    return _first_frame(path)[0]


def _first_frame(path: Path | str) -> tuple[bool, int]:
    """(``is_spherical``, the display rotation in degrees counter-clockwise) of the video at
    ``path``, from its first decoded frame."""
    with _open_video(str(path)) as c:
        if not c.streams.video:
            return False, 0
        for f in c.decode(c.streams.video[0]):
            spherical = False
            for sd in f.side_data:
                if sd.type.name == "SPHERICAL":
                    # AVSphericalMapping starts with its projection (an int enum):
                    # 0 = AV_SPHERICAL_EQUIRECTANGULAR.
                    spherical = struct.unpack_from("=i", bytes(sd))[0] == 0
            return spherical, int(f.rotation or 0)
    return False, 0


# ---- output ----------------------------------------------------------------------------

def video_codecs() -> list[str]:
    """The encoders gigadream offers that the installed FFmpeg can write (software only)."""
    have = []
    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        have.append(name)
    return have


def _encoder(out: Path, codec: str) -> str:
    """The encoder for ``codec`` (a name, an alias such as h264 or vp9, or "auto") in the
    container of ``out``'s extension; one-line errors for what cannot be written."""
    ext = out.suffix.lower()
    if ext not in CONTAINERS:
        raise OutputError(f"output {out}: a video is written as .mp4 or .webm, not "
                          f"{ext or '(no extension)'}; name it {out.with_suffix('.mp4').name}")
    _, holds, auto = CONTAINERS[ext]
    if codec == "auto":
        return auto
    name = ALIASES.get(codec.lower(), codec.lower())
    have = video_codecs()
    if name not in have:
        raise ConfigError(f"video codec {codec!r} cannot be written here; choose auto, "
                          f"{', '.join(have)}")
    if name not in holds:
        raise ConfigError(f"a {ext} video cannot hold {name}; choose "
                          f"{' or '.join(n for n in holds if n in have)}, or write .mp4")
    return name


def check_video_output(out: Path, codec: str = "auto", overwrite: bool = False,
                       shape: tuple[int, int] | None = None) -> str:
    """Refuse, before any work, a video output that could not be written: an extension
    other than .mp4/.webm, a codec this FFmpeg cannot write or the container cannot hold, an
    existing file without ``overwrite``, a missing or unwritable folder, and (given the
    frames' ``shape``) frames too large for H.264. Returns the encoder's name."""
    if location.is_url(out):
        raise OutputError(f"output {out}: a video is written to a local file; give a path")
    out = Path(out)
    enc = _encoder(out, codec)
    if out.is_dir():
        raise OutputError(f"output {out} is a folder; give a file name such as "
                          f"{out / 'styled.mp4'}")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"output {out} already exists; pass --overwrite to replace it or "
                          "choose another name with -o")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable; choose another with -o")
    if shape is not None and enc == "libx264":
        h, w = shape
        if -(-h // 16) * -(-w // 16) > H264_MAX_MACROBLOCKS:
            raise ConfigError(f"frames of {w}×{h} px are larger than H.264 allows (8192×4320); "
                              "choose libx265 or libsvtav1")
    return enc


class _Audio:
    """The first audio stream of ``src`` into the output ``oc``, read by its own demuxer
    as the video frames arrive: copied where the final container ``fmt`` (and ``oc``'s own
    format, a temporary mp4 on the way to a .webm) holds its codec, else re-encoded."""

    def __init__(self, src: str, oc, fmt: str):
        self._ic = av.open(src)
        self._in = self._ic.streams.audio[0]
        self._packets = self._ic.demux(self._in)
        self._next = None                   # a packet read but not yet due
        self._oc = oc
        name = self._in.codec_context.name
        self.copied = name in AUDIO_COPY[fmt] and name in AUDIO_COPY[oc.format.name.split(",")[0]]
        if self.copied:
            self._out = oc.add_stream_from_template(self._in)
        else:
            enc = AUDIO_ENCODER[fmt]
            rate = 48000 if enc == "libopus" else self._in.codec_context.sample_rate
            layout = self._in.codec_context.layout
            layout = layout if layout.nb_channels <= 2 else "stereo"
            self._out = oc.add_stream(enc, rate=rate, layout=layout)
            cc = self._out.codec_context
            # A float sample format where the encoder takes one (libopus: s16 or flt).
            fmts = [f.name for f in cc.codec.audio_formats]
            fmt = next((f for f in fmts if f in ("fltp", "flt")), fmts[0])
            self._resampler = av.AudioResampler(format=fmt,
                                                layout=layout, rate=rate,
                                                frame_size=cc.frame_size or None)
            self._samples = None            # the next output sample's pts, 1/rate units
        self._start: Fraction | None = None  # packets before this input time are dropped
        self._shift = Fraction(0)            # seconds taken off every kept timestamp

    def start(self, at: Fraction | None, shift: Fraction) -> None:
        """Keep the packets from input time ``at`` (None: from the first), shifted back by
        ``shift`` seconds."""
        self._start, self._shift = at, shift

    def until(self, t: Fraction | None) -> None:
        """Mux the packets that start before input time ``t`` (None: all that are left)."""
        while True:
            pkt = self._next or next(self._packets, None)
            self._next = None
            if pkt is None:
                return
            if pkt.dts is None and pkt.pts is None:        # the demuxer's flush packet
                continue
            at = (pkt.pts if pkt.pts is not None else pkt.dts) * pkt.time_base
            if t is not None and at >= t:
                self._next = pkt
                return
            if self._start is not None and at < self._start:
                continue
            self._mux(pkt)

    def _mux(self, pkt) -> None:
        if self.copied:
            shift = round(self._shift / pkt.time_base)
            if pkt.pts is not None:
                pkt.pts -= shift
            if pkt.dts is not None:
                pkt.dts -= shift
            pkt.stream = self._out
            self._oc.mux(pkt)
            return
        for frame in pkt.decode():
            self._encode(frame)

    def _encode(self, frame) -> None:
        rate = self._out.codec_context.sample_rate
        if self._samples is None and frame is not None:
            # Output timestamps count samples from the first kept frame's (shifted) time.
            t = (frame.pts * frame.time_base if frame.pts is not None else 0) - self._shift
            self._samples = round(t * rate)
        for rf in self._resampler.resample(frame):
            rf.pts, rf.time_base = self._samples, Fraction(1, rate)
            self._samples += rf.samples
            for p in self._out.encode(rf):
                self._oc.mux(p)

    def flush(self) -> None:
        if not self.copied:
            for frame in self._in.codec_context.decode(None):
                self._encode(frame)
            if self._samples is not None:
                self._encode(None)
            for p in self._out.encode(None):
                self._oc.mux(p)

    def close(self) -> None:
        self._ic.close()


class VideoWriter:
    """Encodes (h, w, 3) uint8 RGB frames into ``out`` (.mp4 or .webm), a context manager.

    ``shape``: the frames' (h, w); an odd side is cropped to even (see the module's
    docstring), ``self.shape`` is what is encoded. ``source``: the frames' input. A video
    gives the frame rate, the time base, every frame's timestamp and the display rotation;
    its first audio stream is carried over (copied, or re-encoded to Opus for a .webm that
    cannot hold its codec, e.g. AAC), for a frame range the audio of that range. An image
    sequence is written at ``rate`` frames a second with no audio. ``codec``: see
    ``check_video_output``. ``quality``: the encoder's crf (lower is better and larger;
    None: x264 20, x265 24, VP9 32, AV1 35). ``spherical``: mark the video as 360°
    equirectangular.
    """

    def __init__(self, out: Path, shape: tuple[int, int], source: FrameSource, *,
                 codec: str = "auto", quality: int | None = None, spherical: bool = False,
                 rate: int | Fraction = DEFAULT_IMAGE_RATE):
        self.out = Path(out)
        self.encoder = _encoder(self.out, codec)
        self.shape = (shape[0] - shape[0] % 2, shape[1] - shape[1] % 2)
        if min(self.shape) < 2:
            raise ConfigError(f"frames of {shape[1]}×{shape[0]} px are too small for a video")
        self.source, self.spherical = source, spherical
        self._fmt = CONTAINERS[self.out.suffix.lower()][0]
        self._partial = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}")
        # A spherical .webm is muxed as an mp4 first (see the module's docstring).
        self._muxed = self._partial.with_name(self._partial.name + ".mp4") \
            if spherical and self._fmt == "webm" else self._partial
        self._video = source.kind == "video"
        # 29.97 given as a float becomes 2997/100, not a 52-bit fraction.
        self.rate = Fraction(source.rate if self._video and source.rate else rate) \
            .limit_denominator(100000)
        time_base = source.time_base if self._video else 1 / self.rate
        if self.encoder == "libsvtav1":
            # SVT-AV1 prints its whole configuration to stderr unless told: errors only (read
            # when the encoder starts; a user's own SVT_LOG wins).
            os.environ.setdefault("SVT_LOG", "1")
        crf, opts = ENCODERS[self.encoder]
        if quality is not None and not 0 <= quality <= MAX_CRF[self.encoder]:
            raise ConfigError(f"video quality {quality}: {self.encoder} takes a crf from 0 (best) "
                              f"to {MAX_CRF[self.encoder]} (smallest); its default is {crf}")
        opts = {"crf": str(crf if quality is None else quality), **opts}
        self._oc = av.open(str(self._muxed), "w", format="mp4" if spherical else self._fmt)
        try:
            vs = self._oc.add_stream(self.encoder, rate=self.rate, options=opts)
            vs.height, vs.width = self.shape
            vs.pix_fmt = "yuv420p"
            vs.time_base = vs.codec_context.time_base = time_base
            cc = vs.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = 1   # BT.709
            cc.color_range = 1                                      # limited (MPEG)
            if self._video and source.rotation:
                vs.set_display_rotation(source.rotation)      # played turned, as the input
            self._vs = vs
            self._audio = _Audio(source.path, self._oc, self._fmt) \
                if self._video and source.audio else None
        except BaseException:
            self.abort()
            raise
        self._written = 0
        self._shift = Fraction(0)       # seconds taken off every timestamp (a frame range)
        self._last: Frame | None = None
        self._gap: Fraction | None = None   # the last two frames' distance in seconds

    def write(self, pixels: np.ndarray, frame: Frame) -> None:
        """Encode ``pixels``, the result for ``frame`` (its timestamp is kept for a video)."""
        h, w = self.shape
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] < h or \
                pixels.shape[1] < w or pixels.dtype != np.uint8:
            raise ValueError(f"frame pixels {pixels.shape} {pixels.dtype}: expected "
                             f"({h}, {w}, 3) uint8")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[:h, :w]), format="rgb24")
        vf = vf.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        if self._video:
            t = frame.time
            if self._last is None:
                # A range that starts later is moved to the input's start, and keeps the
                # audio from its first frame on.
                self._shift = t - _start_time(self.source) if frame.index else Fraction(0)
                if self._audio:
                    self._audio.start(t if frame.index else None, self._shift)
            else:
                self._gap = t - self._last.time
            if self._audio:
                self._audio.until(t)
            vf.pts = frame.pts - round(self._shift / frame.time_base)
            vf.time_base = frame.time_base
        else:
            vf.pts, vf.time_base = self._written, 1 / self.rate
        for p in self._vs.encode(vf):
            self._oc.mux(p)
        self._written += 1
        self._last = frame

    def close(self) -> None:
        """Flush the encoder and the audio, add the spherical metadata, and move the video
        into place under its final name."""
        if self._oc is None:
            return
        if not self._written:
            self.abort()
            raise OutputError(f"output {self.out}: no frames were written")
        try:
            for p in self._vs.encode(None):
                self._oc.mux(p)
            if self._audio:
                # The input's last frame: all audio left; else up to the end of the last
                # frame written.
                last = self._last
                end = None if last.index == self.source.count - 1 else \
                    last.time + (self._gap or 1 / self.rate)
                self._audio.until(end)
                self._audio.flush()
                self._audio.close()
            self._oc.close()
            self._oc = None
            if self.spherical:
                _inject_spherical(self._muxed)
                if self._muxed != self._partial:
                    _remux(self._muxed, self._partial, self._fmt)
                    self._muxed.unlink()
            os.replace(self._partial, self.out)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop without an output: close everything, remove the temporary files."""
        if getattr(self, "_audio", None):
            self._audio.close()
        if self._oc is not None:
            try:
                self._oc.close()
            except av.FFmpegError:
                pass
            self._oc = None
        for p in {self._partial, self._muxed}:
            p.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _start_time(source: FrameSource) -> Fraction:
    """The time in seconds of the video's first frame."""
    with _open_video(source.path) as c:
        s = c.streams.video[0]
        return (s.start_time or 0) * s.time_base


def _remux(src: Path, dst: Path, fmt: str) -> None:
    """Stream-copy the video and audio of ``src`` into ``dst`` of format ``fmt``."""
    with av.open(str(src)) as ic, av.open(str(dst), "w", format=fmt) as oc:
        ins = [s for s in ic.streams if s.type in ("video", "audio")]
        # opaque: copy the codec parameters as they are (a video stream otherwise needs an
        # encoder named as its decoder, and AV1 decodes with libdav1d).
        outs = {s.index: oc.add_stream_from_template(s, opaque=True) for s in ins}
        for pkt in ic.demux(*ins):
            if pkt.dts is None:                 # the demuxer's flush packet
                continue
            pkt.stream = outs[pkt.stream.index]
            oc.mux(pkt)


# ---- spherical metadata in an mp4 -----------------------------------------------------

SPHERICAL_V1_UUID = bytes.fromhex("ffcc8263f8554a938814587a02521fdd")
SPHERICAL_V1_XML = (
    b'<?xml version="1.0"?><rdf:SphericalVideo '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
    b'xmlns:GSpherical="http://ns.google.com/videos/1.0/spherical/">'
    b"<GSpherical:Spherical>true</GSpherical:Spherical>"
    b"<GSpherical:Stitched>true</GSpherical:Stitched>"
    b"<GSpherical:StitchingSoftware>gigadream</GSpherical:StitchingSoftware>"
    b"<GSpherical:ProjectionType>equirectangular</GSpherical:ProjectionType>"
    b"</rdf:SphericalVideo>")
# ISO BMFF boxes that hold only boxes, on the way from moov to the sample description.
_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
# A visual sample entry's fields before its child boxes (ISO 14496-12 §12.1.3): 6 reserved,
# data reference index 2, then 70 bytes of sizes, resolution, depth and compressor name.
_VISUAL_ENTRY_FIELDS = 78


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:
    return _box(kind, b"\0\0\0\0" + payload)            # version 0, flags 0


def _spherical_v2() -> bytes:
    """Spherical Video V2 boxes for a mono equirectangular video: st3d (mono) and sv3d
    (source, no yaw/pitch/roll, full-frame bounds)."""
    proj = _full_box(b"prhd", struct.pack(">iii", 0, 0, 0)) + _full_box(b"equi", bytes(16))
    return _full_box(b"st3d", b"\0") + _box(b"sv3d", _full_box(b"svhd", b"gigadream\0") +
                                            _box(b"proj", proj))


def _children(data: bytes, start: int = 0) -> Iterator[tuple[bytes, int, int, int]]:
    """The boxes in ``data[start:]``: (type, start, header size, end)."""
    i = start
    while i + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, i)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, i + 8)[0], 16
        elif size == 0:
            size = len(data) - i
        yield kind, i, head, i + size
        i += size


def _handler(trak: bytes) -> bytes | None:
    """The handler type (b"vide", b"soun"…) of a trak's payload."""
    for kind, s, head, e in _children(trak):
        if kind == b"mdia":
            for k2, s2, h2, _ in _children(trak[s + head:e]):
                if k2 == b"hdlr":         # version/flags 4, pre_defined 4, handler type 4
                    at = s + head + s2 + h2 + 8
                    return trak[at:at + 4]
    return None


def _rebuild(kind: bytes, payload: bytes, video: bool, shift: int) -> bytes:
    """The box ``kind`` with ``payload``, the spherical boxes added where ``video`` (the
    video track's), chunk offsets moved by ``shift`` bytes."""
    if kind in _CONTAINER_BOXES:
        if kind == b"trak":
            video = _handler(payload) == b"vide"
        inner = b"".join(_rebuild(k, payload[s + h:e], video, shift)
                         for k, s, h, e in _children(payload))
        if kind == b"trak" and video:
            inner += _box(b"uuid", SPHERICAL_V1_UUID + SPHERICAL_V1_XML)
        return _box(kind, inner)
    if kind == b"stsd" and video:
        # version/flags 4, entry count 4, then the sample entries; the first is the video's.
        k, s, h, e = next(_children(payload, 8))
        entry = payload[s + h:e] + _spherical_v2()
        return _box(kind, payload[:8] + _box(k, entry) + payload[e:])
    if kind in (b"stco", b"co64") and shift:
        n = struct.unpack_from(">I", payload, 4)[0]
        fmt = f">{n}{'I' if kind == b'stco' else 'Q'}"
        offsets = [o + shift for o in struct.unpack_from(fmt, payload, 8)]
        return _box(kind, payload[:8] + struct.pack(fmt, *offsets))
    return _box(kind, payload)


def _inject_spherical(path: Path) -> None:
    """Mark the mp4 at ``path`` as a 360° equirectangular video, in place: V2 boxes in the
    video sample entry, V1 XML in the video trak. Where moov comes before media data
    (faststart), every chunk offset moves by the bytes added."""
    with open(path, "rb") as f:
        tops, at, size = [], 0, f.seek(0, 2)
        while at + 8 <= size:           # top-level boxes, headers only (mdat may be huge)
            f.seek(at)
            head = f.read(16)
            n, kind = struct.unpack_from(">I4s", head)
            n = struct.unpack_from(">Q", head, 8)[0] if n == 1 else size - at if n == 0 else n
            tops.append((kind, at, at + n))
            at += n
        (moov_at, moov_end), = [(s, e) for k, s, e in tops if k == b"moov"]
        f.seek(moov_at)
        moov = f.read(moov_end - moov_at)
    head = 16 if struct.unpack_from(">I", moov)[0] == 1 else 8
    grown = len(_rebuild(b"moov", moov[head:], False, 0)) - len(moov)
    media_after = any(k == b"mdat" and s > moov_at for k, s, _ in tops)
    new_moov = _rebuild(b"moov", moov[head:], False, grown if media_after else 0)
    if moov_end == size:                # moov last: cut it off, append the new one
        with open(path, "r+b") as f:
            f.truncate(moov_at)
            f.seek(moov_at)
            f.write(new_moov)
        return
    tmp = path.with_name(path.name + ".sph")
    with open(path, "rb") as f, open(tmp, "wb") as g:
        shutil.copyfileobj(_Limited(f, moov_at), g, 1 << 24)
        g.write(new_moov)
        f.seek(moov_end)
        shutil.copyfileobj(f, g, 1 << 24)
    os.replace(tmp, path)


class _Limited:
    """The first ``n`` bytes of a file object, for ``shutil.copyfileobj``."""

    def __init__(self, f, n: int):
        self._f, self._left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._f.read(size)
        self._left -= len(data)
        return data
