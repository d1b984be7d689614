"""Video frame I/O: sequences in (folders, globs, videos), video out (timestamps, audio,
spherical metadata), and the one-line errors. Every clip is made here with PyAV, small."""
import hashlib
import re
from fractions import Fraction

import av
import numpy as np
import pytest
import pyvips

from gigadream import video
from gigadream.errors import ConfigError, InputError, OutputError
from gigadream.video import (VideoWriter, check_video_output, is_sequence_input, is_spherical,
                             natural_key, open_frames, video_codecs)

H, W = 48, 64


def level(i: int) -> int:
    """Frame i's grey level: far enough apart to tell frames through a lossy codec."""
    return 30 + 6 * i % 200


def picture(i: int, h: int = H, w: int = W) -> np.ndarray:
    a = np.full((h, w, 3), level(i), np.uint8)
    a[: h // 2, :, 0] = 200                     # some colour and an edge
    return a


def make_clip(path, n=30, rate=25, audio="aac", pts_ms=None, codec="libx264", h=H, w=W,
              options=None):
    """A clip of ``n`` frames (``picture(i)``) at ``rate`` fps, or at ``pts_ms`` (ms) for a
    variable rate; ``audio``: an audio codec (a 440 Hz tone as long as the video) or None."""
    with av.open(str(path), "w", options=options or {}) as oc:
        vs = oc.add_stream(codec, rate=rate, options={"crf": "18", "preset": "ultrafast"}
                           if codec == "libx264" else {"b": "0", "crf": "30",
                                                       "deadline": "realtime", "cpu-used": "8"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if pts_ms:
            vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        aus = oc.add_stream(audio, rate=48000, layout="stereo") if audio else None
        for i in range(n):
            f = av.VideoFrame.from_ndarray(picture(i, h, w), format="rgb24")
            f.pts = pts_ms[i] if pts_ms else i
            for p in vs.encode(f):
                oc.mux(p)
        for p in vs.encode(None):
            oc.mux(p)
        if aus is not None:
            seconds = (pts_ms[-1] / 1000 + 0.04) if pts_ms else n / rate
            size = aus.codec_context.frame_size or 1024
            fmts = {f.name for f in aus.codec_context.codec.audio_formats}
            fmt = "fltp" if "fltp" in fmts else "flt"
            for k in range(int(seconds * 48000) // size):
                t = (np.arange(size) + k * size) / 48000
                tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                arr = np.stack([tone, tone]) if fmt == "fltp" else \
                    np.stack([tone, tone], 1).reshape(1, -1)
                af = av.AudioFrame.from_ndarray(arr, format=fmt, layout="stereo")
                af.sample_rate, af.pts = 48000, k * size
                for p in aus.encode(af):
                    oc.mux(p)
            for p in aus.encode(None):
                oc.mux(p)
    return path


def video_pts(path) -> list[float]:
    with av.open(str(path)) as c:
        return sorted(float(f.pts * f.time_base) for f in c.decode(video=0))


def audio_packets(path) -> list[bytes]:
    """The audio packets' bytes, from a freshly opened file (a seek would skip pre-roll)."""
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.dts is not None]


def timed_audio(path) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as c:
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(audio=0)
                if p.dts is not None]


def side_data(path) -> tuple[set, set]:
    """The side data types of the first and the last decoded frame."""
    with av.open(str(path)) as c:
        frames = [{sd.type.name for sd in f.side_data} for f in c.decode(video=0)]
    return frames[0], frames[-1]


def box_path(data: bytes, kind: bytes, at: int = 0, end: int | None = None) -> list | None:
    """The path of box types from the file's top down to the first ``kind`` box."""
    end = len(data) if end is None else end
    skip = {b"stsd": 8, b"avc1": 78}                        # bytes before their child boxes
    while at + 8 <= end:
        size, t = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        size = len(data) - at if size == 0 else size
        if t == kind:
            return [t]
        if t in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1"):
            inner = box_path(data, kind, at + 8 + skip.get(t, 0), at + size)
            if inner:
                return [t] + inner
        at += size
    return None


def restyle(source, out, **kw):
    """Write the frames of ``source`` (``range``: frames(*range)) inverted into ``out``."""
    span = kw.pop("range", ())
    with open_frames(str(source)) as src, VideoWriter(out, src.shape, src, **kw) as wr:
        for f in src.frames(*span):
            wr.write(255 - f.pixels, f)
    return out


def save_png(path, h=6, w=8):
    pyvips.Image.black(w, h, bands=3).write_to_file(str(path))
    return path


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- input: image sequences -----------------------------------------------------------

def test_natural_key_puts_frame2_before_frame10():
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame9b.png", "frame9.png"]
    assert sorted(names, key=natural_key) == ["Frame1.png", "frame2.png", "frame9.png",
                                              "frame9b.png", "frame10.png"]


def test_folder_in_natural_order(tmp_path):
    for i in (10, 2, 1, 9):
        save_png(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    with open_frames(str(tmp_path)) as src:
        assert (src.kind, src.count, src.shape, src.rate, src.spherical) == \
            ("images", 4, (6, 8), None, False)
        frames = list(src.frames())
        assert [f.path.name for f in frames] == ["frame1.png", "frame2.png", "frame9.png",
                                                 "frame10.png"]
        assert [f.index for f in frames] == [0, 1, 2, 3]
        assert all(f.pixels is None and f.pts is None for f in frames)
        assert [f.path.name for f in src.frames(1, None, 2)] == ["frame2.png", "frame10.png"]


def test_glob_takes_only_what_matches(tmp_path):
    for i in (3, 11):
        save_png(tmp_path / f"f{i}.png")
    pyvips.Image.black(8, 6, bands=3).write_to_file(str(tmp_path / "f5.jpg"))
    src = open_frames(str(tmp_path / "*.png"))
    assert [p.name for p in src.files] == ["f3.png", "f11.png"]
    assert len(open_frames(str(tmp_path / "f?.*")).files) == 2      # f3.png, f5.jpg


def test_is_sequence_input_by_name(tmp_path):
    save_png(tmp_path / "still.png")
    assert is_sequence_input(str(tmp_path))
    assert is_sequence_input(str(tmp_path / "*.png"))
    assert all(is_sequence_input(n) for n in ("clip.MP4", "a.mkv", "b.webm", "c.mov"))
    assert not is_sequence_input(str(tmp_path / "still.png"))
    assert not is_sequence_input("anim.gif") and not is_sequence_input("pano.jpg")


def test_frames_of_different_sizes_refused(tmp_path):
    save_png(tmp_path / "a1.png")
    save_png(tmp_path / "a2.png", h=7)
    with pytest.raises(InputError) as e:
        open_frames(str(tmp_path))
    assert re.search(r"a2\.png is 8×7 px but a1\.png is 8×6 px", one_line(e))


@pytest.mark.parametrize("spec,says", [
    ("empty", "holds no images"),
    ("empty/*.png", "holds no images"),
    ("missing.mp4", "not found"),
    ("notes.mp4", "cannot be read as a video"),
    ("still.jpg", "one image, not a sequence"),
])
def test_bad_inputs_refused_in_one_line(tmp_path, spec, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    pyvips.Image.black(8, 6, bands=3).write_to_file(str(tmp_path / "still.jpg"))
    with pytest.raises(InputError) as e:
        open_frames(str(tmp_path / spec))
    assert says in one_line(e)


def test_video_without_video_stream_refused(tmp_path):
    with av.open(str(tmp_path / "sound.mp4"), "w") as oc:
        aus = oc.add_stream("aac", rate=48000, layout="stereo")
        for k in range(10):
            af = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp",
                                            layout="stereo")
            af.sample_rate, af.pts = 48000, k * 1024
            for p in aus.encode(af):
                oc.mux(p)
        for p in aus.encode(None):
            oc.mux(p)
    with pytest.raises(InputError) as e:
        open_frames(str(tmp_path / "sound.mp4"))
    assert "no video stream (it holds audio)" in one_line(e)


# ---- input: video ---------------------------------------------------------------------

def test_video_decodes_as_encoded(tmp_path):
    clip = make_clip(tmp_path / "in.mp4")
    with open_frames(str(clip)) as src:
        assert (src.kind, src.count, src.shape, src.rate, src.spherical, src.audio) == \
            ("video", 30, (H, W), 25, False, "aac")
        frames = list(src.frames())
        assert [f.index for f in frames] == list(range(30))
        for f in frames:
            assert f.pixels.shape == (H, W, 3) and f.pixels.dtype == np.uint8
            assert f.pixels.flags.c_contiguous and f.path is None
            assert abs(f.pixels[H // 2:].mean() - level(f.index)) < 2       # lossy: means
            assert abs(f.pixels[: H // 2, :, 0].mean() - 200) < 3
        assert [float(f.time) for f in frames] == pytest.approx([i / 25 for i in range(30)])
        part = list(src.frames(3, 20, 4))
        assert [f.index for f in part] == [3, 7, 11, 15, 19]
        assert [f.pts for f in part] == [frames[i].pts for i in (3, 7, 11, 15, 19)]
        np.testing.assert_array_equal(part[2].pixels, frames[11].pixels)


def test_frame_count_without_stream_frames(tmp_path):
    """A webm records no frame count: it is counted from the packets."""
    clip = make_clip(tmp_path / "in.webm", n=12, codec="libvpx-vp9", audio=None)
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames == 0
    assert open_frames(str(clip)).count == 12


def test_bad_frame_range_refused(tmp_path):
    src = open_frames(str(make_clip(tmp_path / "in.mp4", n=5, audio=None)))
    for args, says in [((0, None, 0), "stride 0"), ((5,), "frames 0 to 4"),
                       ((3, 3), "is empty")]:
        with pytest.raises(ConfigError, match=says):
            src.frames(*args)


# ---- output ---------------------------------------------------------------------------

def test_mp4_keeps_timestamps_and_copies_aac(tmp_path):
    clip = make_clip(tmp_path / "in.mp4")
    out = restyle(clip, tmp_path / "out.mp4")
    assert video_pts(out) == pytest.approx(video_pts(clip), abs=1e-6)
    assert audio_packets(out) == audio_packets(clip) and len(audio_packets(clip)) > 20
    with open_frames(str(out)) as back:
        assert (back.count, back.shape, back.rate, back.spherical) == (30, (H, W), 25, False)
        for f in back.frames():
            assert abs(f.pixels[H // 2:].mean() - (255 - level(f.index))) < 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]   # no leftovers


@pytest.mark.parametrize("suffix,tolerance", [(".mp4", 1e-6), (".webm", 1e-3)])
def test_variable_frame_rate_and_opus_survive(tmp_path, suffix, tolerance):
    gaps = [17, 33, 40] * 6
    pts = list(np.cumsum([0] + gaps))
    clip = make_clip(tmp_path / "vfr.mp4", n=len(pts), pts_ms=pts, audio="libopus")
    out = restyle(clip, tmp_path / f"out{suffix}")
    assert video_pts(out) == pytest.approx([p / 1000 for p in pts], abs=tolerance)
    assert audio_packets(out) == audio_packets(clip) and len(audio_packets(clip)) > 20


@pytest.mark.parametrize("suffix,codec", [(s, c) for s in (".mp4", ".webm") for c in video_codecs()
                                          if c in video.CONTAINERS[s][1]])
def test_every_codec_offered_writes_a_spherical_video(tmp_path, suffix, codec):
    clip = make_clip(tmp_path / "in.mp4", n=6, audio=None)
    out = restyle(clip, tmp_path / f"out{suffix}", codec=codec, spherical=True)
    assert video_pts(out) == pytest.approx(video_pts(clip), abs=1e-3)
    assert is_spherical(out)


def test_stride_keeps_timestamps_and_all_audio(tmp_path):
    clip = make_clip(tmp_path / "in.mp4")
    out = restyle(clip, tmp_path / "out.mp4", range=(0, None, 3))
    assert video_pts(out) == pytest.approx(video_pts(clip)[::3], abs=1e-6)
    assert audio_packets(out) == audio_packets(clip)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_display_rotation_carried_over(tmp_path, suffix):
    """A phone's upright video is stored as turned frames and a rotation for the player."""
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as oc:
        vs = oc.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.set_display_rotation(90)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                oc.mux(p)
        for p in vs.encode(None):
            oc.mux(p)
    assert open_frames(str(path)).rotation == 90
    out = restyle(path, tmp_path / f"out{suffix}")
    with av.open(str(out)) as c:
        assert next(c.decode(video=0)).rotation == 90
    plain = restyle(make_clip(tmp_path / "plain.mp4", n=2, audio=None), tmp_path / f"p{suffix}")
    assert open_frames(str(plain)).rotation == 0


def test_aac_into_webm_becomes_opus(tmp_path):
    clip = make_clip(tmp_path / "in.mp4")
    out = restyle(clip, tmp_path / "out.webm")
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert (c.streams.video[0].codec_context.name, a.codec_context.name) == ("vp9", "opus")
        seconds = sum(p.duration for p in c.demux(a) if p.dts is not None) * a.time_base
    assert abs(seconds - 30 / 25) < 0.05
    assert len(video_pts(out)) == 30


def test_frame_range_keeps_its_audio_moved_to_the_start(tmp_path):
    clip = make_clip(tmp_path / "in.mp4")                   # 25 fps, 1.2 s
    out = restyle(clip, tmp_path / "out.mp4", range=(10, 20))
    assert video_pts(out) == pytest.approx([i / 25 for i in range(10)], abs=1e-6)
    src, got = timed_audio(clip), timed_audio(out)
    kept = [(t - 0.4, b) for t, b in src if 0.4 <= t < 0.8]
    assert [b for _, b in got] == [b for _, b in kept]
    # An mp4 track that starts after 0 begins with an empty edit in the movie's time scale
    # (1/1000 s): its first audio packet at 5.33 ms reads back at 5 ms.
    assert [t for t, _ in got] == pytest.approx([t for t, _ in kept], abs=1e-3)


def test_image_sequence_written_at_its_rate(tmp_path):
    for i in range(5):
        pyvips.Image.new_from_array(picture(i)).write_to_file(str(tmp_path / f"p{i}.png"))
    with open_frames(str(tmp_path / "*.png")) as src, \
            VideoWriter(tmp_path / "out.mp4", src.shape, src, rate=12) as wr:
        for f in src.frames():
            wr.write(pyvips.Image.new_from_file(str(f.path)).numpy(), f)
    assert video_pts(tmp_path / "out.mp4") == pytest.approx([i / 12 for i in range(5)])


def test_odd_sizes_are_cropped_to_even(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n=3, audio=None)
    with open_frames(str(clip)) as src, \
            VideoWriter(tmp_path / "out.mp4", (49, 65), src) as wr:
        assert wr.shape == (48, 64)
        for f in src.frames():
            wr.write(np.pad(f.pixels, ((0, 1), (0, 1), (0, 0)), mode="edge"), f)
    assert open_frames(str(tmp_path / "out.mp4")).shape == (48, 64)


def test_audio_muxed_as_the_frames_arrive(tmp_path):
    """After each frame, the audio up to that frame's time is muxed and no more is read: the
    muxer holds the encoder's delay, never the whole clip's audio."""
    clip = make_clip(tmp_path / "in.mp4")
    packet = Fraction(1024, 48000)                          # one AAC packet
    with open_frames(str(clip)) as src, VideoWriter(tmp_path / "out.mp4", src.shape, src) as wr:
        for f in src.frames():
            wr.write(f.pixels, f)
            due = wr._audio._next                           # the first packet not yet muxed
            assert f.time <= due.pts * due.time_base < f.time + packet
            assert not (tmp_path / "out.mp4").exists()      # written under a temporary name


def test_an_error_leaves_no_output(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n=3, audio=None)
    with pytest.raises(RuntimeError):
        with open_frames(str(clip)) as src, VideoWriter(tmp_path / "out.mp4", src.shape, src) as wr:
            for f in src.frames():
                wr.write(f.pixels, f)
                raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


# ---- spherical ------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_spherical_metadata_written(tmp_path, suffix):
    clip = make_clip(tmp_path / "in.mp4", n=8, audio="libopus")
    out = restyle(clip, tmp_path / f"out{suffix}", spherical=True)
    first, last = side_data(out)
    if suffix == ".mp4":                                    # V2 in the sample entry, V1 in trak
        assert box_path(out.read_bytes(), b"sv3d") == [b"moov", b"trak", b"mdia", b"minf",
                                                       b"stbl", b"stsd", b"avc1", b"sv3d"]
        assert box_path(out.read_bytes(), b"st3d")[-2:] == [b"avc1", b"st3d"]
        assert box_path(out.read_bytes(), b"uuid") == [b"moov", b"trak", b"uuid"]
    assert "SPHERICAL" in first and "SPHERICAL" in last
    assert is_spherical(out) and open_frames(str(out)).spherical
    assert audio_packets(out) == audio_packets(clip)              # the remux keeps the audio
    assert video_pts(out) == pytest.approx(video_pts(clip), abs=1e-3)
    flat = restyle(clip, tmp_path / f"flat{suffix}")
    assert "SPHERICAL" not in set().union(*side_data(flat))
    assert not is_spherical(flat)


def test_spherical_into_faststart_mp4_moves_chunk_offsets(tmp_path):
    clip = make_clip(tmp_path / "fs.mp4", n=8, options={"movflags": "faststart"})
    with open(clip, "rb") as f:
        head = f.read(4096)
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head    # moov first

    def decoded(path):
        with av.open(str(path)) as c:
            return ([hashlib.md5(f.to_ndarray().tobytes()).hexdigest() for f in c.decode(video=0)],
                    audio_packets(path))

    before = decoded(clip)
    video._inject_spherical(clip)
    assert decoded(clip) == before
    assert is_spherical(clip)


# ---- output checks --------------------------------------------------------------------

def test_codecs_offered_are_software_encoders_here():
    have = video_codecs()
    assert "libx264" in have and "libvpx-vp9" in have
    assert not any("nvenc" in c or "qsv" in c for c in have)


def test_check_video_output_picks_the_encoder(tmp_path):
    assert check_video_output(tmp_path / "a.mp4", "auto", False) == "libx264"
    assert check_video_output(tmp_path / "a.webm", "auto", False) == "libvpx-vp9"
    assert check_video_output(tmp_path / "a.mp4", "vp9", False) == "libvpx-vp9"
    assert check_video_output(tmp_path / "a.mp4", "h264", False, shape=(4320, 8192)) == "libx264"


@pytest.mark.parametrize("name,codec,kw,error,says", [
    ("a.avi", "auto", {}, OutputError, "written as .mp4 or .webm, not .avi"),
    ("a", "auto", {}, OutputError, r"not \(no extension\); name it a\.mp4"),
    ("a.mp4", "nonsense", {}, ConfigError, "'nonsense' cannot be written here; choose auto, "
                                           "libx264"),
    ("a.mp4", "h264_nvenc", {}, ConfigError, "'h264_nvenc' cannot be written here"),
    ("a.webm", "libx264", {}, ConfigError, "cannot hold libx264; choose libvpx-vp9"),
    ("exists.mp4", "auto", {}, OutputError, "already exists; pass --overwrite"),
    ("no/such/a.mp4", "auto", {}, OutputError, "does not exist; create it first"),
    ("a.mp4", "auto", {"shape": (8192, 16384)}, ConfigError, "larger than H.264 allows"),
])
def test_check_video_output_refuses(tmp_path, name, codec, kw, error, says):
    (tmp_path / "exists.mp4").write_bytes(b"old")
    with pytest.raises(error) as e:
        check_video_output(tmp_path / name, codec, False, **kw)
    assert re.search(says, one_line(e))


def test_quality_out_of_range_refused(tmp_path):
    src = open_frames(str(make_clip(tmp_path / "in.mp4", n=2, audio=None)))
    with pytest.raises(ConfigError, match="libx264 takes a crf from 0 .best. to 51"):
        VideoWriter(tmp_path / "out.mp4", src.shape, src, quality=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_existing_output_replaced_with_overwrite(tmp_path):
    (tmp_path / "exists.mp4").write_bytes(b"old")
    assert check_video_output(tmp_path / "exists.mp4", "auto", True) == "libx264"
