"""``plan`` and ``preview`` of sequences: a real clip (an H.264 mp4 made with PyAV: a photo
panned a few pixels a frame) and the same frames as PNGs; the plans checked against the
run's own plans, the preview's pages and frames read back."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import panned_frame, read, save, write_frames, write_mp4
from gigadream.cli import main
from gigadream.config import load_config
from gigadream.estimate import TIFF_DEFLATE_SHARE, estimate_sequence
from gigadream.modes import Prior, mode_for
from gigadream.pipeline import work_units
from gigadream.preview import spread

H, W, FRAMES = 144, 192, 6
SMALL = ["dream.layers=[relu3_3]", "tiling.tile=128", "dream.octaves=2", "dream.passes=4",
         "engine.workers=1"]


def frame_at(t: int) -> np.ndarray:
    return panned_frame(t, H, W)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4",
                     [frame_at(t) for t in range(FRAMES)])


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    return write_frames(tmp_path_factory.mktemp("frames") / "shots",
                        [frame_at(t) for t in range(FRAMES)], "f")


def decoded(clip: Path) -> list[np.ndarray]:
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


# ---- plan ----

def test_a_later_frame_keeps_each_octaves_dream_strength_with_coarse_passes():
    """With ``dream.coarse_passes`` the octaves' passes differ (2 at the finest, 80 at the
    coarsest); a later frame runs a quarter of each octave's and steps (1 − blend)·P/p
    there, so every octave's dream settles at the still's strength: at the finest
    octave's P/p alone, the coarse octaves' forms (the literal presets' heads and eyes)
    would fade frame by frame."""
    cfg = load_config("guided-dogs", ["sequence.blend=0.85"])
    still, later = mode_for(cfg), mode_for(cfg, prior=Prior())
    n = cfg.dream.octaves
    first_passes = [sum(p.octave == k for p in still.plan((600, 900))) for k in range(n)]
    later_passes = [sum(p.octave == k for p in later.plan((600, 900))) for k in range(n)]
    assert first_passes == [2, 5, 13, 32, 80]
    assert later_passes == [max(1, p // 4) for p in first_passes] == [1, 1, 3, 8, 20]
    for k in range(n):
        settled = later_passes[k] * later.later_step(k) / (1 - 0.85)
        assert settled == pytest.approx(first_passes[k]), k


@pytest.mark.parametrize("mode", ["dream", "style"])
def test_the_plan_of_a_clip_is_the_runs_frames_and_plans(clip, tmp_path, mode):
    """The frames after sequence.frames and stride; the first frame's plan a still's, a
    later frame's ``Mode.later_plan`` (fewer passes; style: the finest octave only), the
    total first + (n − 1) × later; a video output's frames kept in the store."""
    style = [f"style.images=[{tmp_path / 's.png'}]"] if mode == "style" else []
    if style:
        save(frame_at(0), tmp_path / "s.png")
    cfg = load_config(None, [f"mode={mode}", *SMALL, *style, "sequence.frames=2-6",
                             "sequence.stride=2"])
    e = estimate_sequence(str(clip), cfg, calibrate=False)
    assert e.kind == "video" and e.count == FRAMES and e.indices == [1, 3, 5] and e.frames == 3
    assert e.first.shape == e.later.shape == (H, W)
    first, later = mode_for(cfg).plan((H, W)), mode_for(cfg, prior=Prior()).plan((H, W))
    assert e.first.passes == len(first) and e.later.passes == len(later) <= len(first)
    assert e.first.tiles == sum(p.tiles for p in first)
    assert e.later.tiles == sum(p.tiles for p in later)
    assert work_units(later) < work_units(first)
    assert 0 < e.later.window_mp_iterations < e.first.window_mp_iterations
    if mode == "style":
        assert {p.octave for p in later} == {0}
    # dream's first frame calibrates its gradient scales; the later ones adopt them
    assert e.later.steps == sum(p.tiles * (p.iterations + p.stats) for p in later)
    assert e.video_output and e.output.name == f"clip-{mode}.mp4"
    assert e.frame_bytes == int(TIFF_DEFLATE_SHARE * 3 * H * W)
    assert e.store_bytes == e.work_bytes + 3 * e.frame_bytes
    assert e.work_bytes > 2 * e.first.store_bytes
    folder = estimate_sequence(str(clip), cfg, tmp_path / "frames-out", calibrate=False)
    assert not folder.video_output and folder.store_bytes == folder.work_bytes


def test_plan_command_on_a_clip_and_a_folder(clip, frames_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "gigadream", "plan", str(clip), "--set",
                        "mode=identity", "--set", "sequence.stride=2", "--gpu", "h100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["input", "frames", "first", "later", "wrap",
                                               "this", "h100", "store", "RAM", "output"]
    assert lines[0].startswith(f"input          video, {FRAMES} frames of {W}×{H} px")
    assert lines[1].startswith("frames to run  3 (sequence.frames all, stride 2)")
    assert "wrap           none (a video without spherical metadata)" in lines
    disk = next(ln for ln in lines if ln.startswith("store disk"))
    assert "3 finished frames" in disk and "an estimate" in disk
    r = subprocess.run([sys.executable, "-m", "gigadream", "plan", str(frames_dir), "--set",
                        "mode=identity", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"input          frames, {FRAMES} frames" in r.stdout
    assert "the frames go straight into out/" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--set", "sequence.frames=4-9"], r"sequence.frames: 4-9 reaches past the input's 6 "
                                       r"frames; give a range within 1-6"),
    (["-o", "out.png"], r"a sequence is written as .mp4 or .webm, or as a folder"),
])
def test_plan_of_a_clip_refuses_in_one_line(clip, capsys, args, message):
    code = main(["plan", str(clip), "--set", "mode=identity", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err


def test_plan_of_a_file_that_is_no_video(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert main(["plan", str(bad), "--set", "mode=identity"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read as a video" in err[0], err


# ---- preview ----

def test_spread_picks_the_first_the_middle_and_the_last():
    assert spread(range(10), 3) == [0, 4, 9]
    assert spread([1, 3, 5, 7, 9], 3) == [1, 5, 9]
    assert spread([0, 2], 3) == [0, 2]
    assert spread([4, 5, 6], 1) == [4]
    assert spread(range(100), 4) == [0, 33, 66, 99]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("href", "src")]


@pytest.fixture(scope="module")
def previewed(clip, tmp_path_factory):
    """``gigadream preview clip.mp4 --frames 2``: identity mode (a copy through the
    engine), one 64 px crop a frame."""
    out = tmp_path_factory.mktemp("preview") / "clip-preview"
    r = subprocess.run([sys.executable, "-m", "gigadream", "preview", str(clip), "--set",
                        "mode=identity", "--frames", "2", "--crop", "64", "--crops", "1",
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def test_preview_of_a_clip_previews_frames_spread_over_it(clip, previewed):
    out, stderr = previewed
    assert stderr.strip().splitlines()[-1].endswith(f"open {out / 'index.html'}")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "frame-000001", "frame-000006", "index.html", "preview.json"]
    frames = decoded(clip)
    for number in (1, 6):
        sub = out / f"frame-{number:06d}"
        assert {"index.html", "far.jpg", "far-input.jpg", "crop-1.jpg"} <= {
            p.name for p in sub.iterdir()}
        # the frame previewed is that frame of the clip (identity: the result is the input)
        for name in ("far-input.jpg", "far.jpg"):
            got = read(sub / name).astype(int)
            assert got.shape == (H, W, 3)
            errs = [np.abs(got - f).mean() for f in frames]     # JPEG: ~2 levels
            assert np.argmin(errs) == number - 1 and errs[number - 1] < 4, (name, errs)
        page = (sub / "index.html").read_text()
        assert 'href="../index.html"' in page and f"clip.mp4, frame {number} of 6" in page
    summary = json.loads((out / "preview.json").read_text())
    assert [f["frame"] for f in summary["frames"]] == [1, 6]
    assert summary["estimate"].startswith("input          video, 6 frames")


def test_the_sequence_page_links_every_frame_and_says_frames_start_from_the_last(previewed):
    out, _ = previewed
    page = (out / "index.html").read_text()
    links = _Links()
    links.feed(page)
    assert {"frame-000001/index.html", "frame-000006/index.html"} <= set(links.refs)
    for ref in links.refs:
        assert (out / ref).is_file(), ref
    text = " ".join(page.split())
    assert "look like these but not identical" in text
    assert "frames to run 6" in text          # the whole run's estimate


def test_preview_frames_of_a_still_is_refused(tmp_path, capsys):
    src = save(frame_at(0), tmp_path / "still.png")
    code = main(["preview", str(src), "--set", "mode=identity", "--frames", "2", "-o",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--frames 2: input" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--frames", "0", "--crop", "64"], r"--frames 0: expected at least 1 frame"),
    (["--crop", "200"], r"a crop of 200 px is larger than the image \(192×144 px\)"),
    (["--set", "sequence.frames=7-", "--crop", "64"], r"sequence.frames: 7- reaches past"),
])
def test_bad_sequence_previews_are_one_line_and_write_nothing(frames_dir, tmp_path, capsys,
                                                              args, message):
    code = main(["preview", str(frames_dir), "--set", "mode=identity", "-o",
                 str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "out").exists()
