"""Shared fixtures: real images made here from scikit-image's photos, written by libvips."""
from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path

# torch's OpenMP threads spin while they wait for work. Where another process holds one of
# the cores (the test's own client beside its worker, or anything else on a shared 2-core
# runner), two spinning threads made a VGG16 step on a 96 px crop 5x slower than one thread
# (1.15 s against 0.23 s); sleeping instead, 0.32 s. Read by libgomp when torch loads, here
# and in every process the tests start (they inherit it). Threads, and so results, as before.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

# Under CI (CI=true, as .ci/run's runners set it) a test that skips fails the run: CI runs as
# root with Chromium installed, so the read-only-output, full-disk and browser tests must run
# there, and a skip would pass without running what CI claims. A test that may skip under CI
# is listed here (a node-id pattern, fnmatch) with the reason it cannot run on a CI runner.
ALLOWED_SKIPS: dict[str, str] = {}


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def allowed_skip(nodeid: str) -> str | None:
    """The reason ``nodeid`` may skip under CI, or None."""
    return next((why for pattern, why in ALLOWED_SKIPS.items()
                 if fnmatch.fnmatchcase(nodeid, pattern)), None)


def _fail_a_skip(report) -> None:
    """A skip under CI becomes a failure that says why, unless ALLOWED_SKIPS lists it (an
    xfail is no skip: it stays)."""
    if (report.skipped and not hasattr(report, "wasxfail") and _under_ci()
            and allowed_skip(report.nodeid) is None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI ({reason}); a test that may skip in CI goes in "
                           f"tests/conftest.py's ALLOWED_SKIPS with the reason")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_a_skip((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_a_skip((yield).get_result())          # a whole module skipped (importorskip)


# make test's two processes take whole modules (--dist loadfile: a module's tests share its
# module fixtures), handed out in the order collected (--no-loadscope-reorder; xdist's own
# order is by number of tests, not time). Modules are collected heaviest first, by the
# seconds in profiling/test-suite.md, so that the processes end together instead of one
# waiting on a long module picked up last; the rest follow in file order. (--dist loadgroup
# with xdist_group marks would split a module's heavy half off, but xdist 3.8 cannot tag node
# ids under pytest 9, so every test would become its own unit and re-run module fixtures.)
HEAVIEST_FIRST = ["test_sequence", "test_style", "test_resume", "test_cli", "test_batch_cluster",
                  "test_cluster_failures", "test_preview", "test_studio", "test_studio_pages",
                  "test_studio_security",
                  "test_gpu", "test_dream", "test_objstore_cluster", "test_wrap", "test_engine",
                  "test_far", "test_literal", "test_objstore", "test_scheduler", "test_profile",
                  "test_install", "test_guided"]


def pytest_collection_modifyitems(config, items):
    rank = {m: i for i, m in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.nodeid.split("::")[0]).stem, len(rank)))


def save(array: np.ndarray, path: Path, **kw) -> Path:
    import pyvips
    im = pyvips.Image.new_from_array(np.ascontiguousarray(array))
    if im.bands == 3:
        im = im.copy(interpretation="srgb")
    im.write_to_file(str(path), **kw)
    return path


def panned_frame(t: int, h: int = 144, w: int = 192, pan: tuple[int, int] = (1, 3)) -> np.ndarray:
    """Frame ``t`` of a camera panning ``pan`` px (down, right) a frame over scikit-image's
    astronaut at half size: a clip whose motion is known (the sequence tests)."""
    import skimage.data
    dy, dx = pan
    im = skimage.data.astronaut()[::2, ::2]                        # 256 × 256
    return np.ascontiguousarray(im[20 + t * dy:20 + t * dy + h, 10 + t * dx:10 + t * dx + w])


def write_frames(folder: Path, frames: list, name: str = "frame") -> Path:
    """``frames`` as ``folder/NAME1.png``, ``NAME2.png``, ... (numbers not zero-padded: only
    natural order puts NAME2 before NAME10)."""
    folder.mkdir(parents=True)
    for t, f in enumerate(frames):
        save(f, folder / f"{name}{t + 1}.png")
    return folder


def write_mp4(path: Path, frames: list, rate: int = 12, tone_s: float = 0.0) -> Path:
    """``frames`` ((h, w, 3) uint8) as an H.264 mp4 at ``rate`` fps (crf 10), and
    ``tone_s`` seconds of a 440 Hz AAC tone where it is not 0."""
    import av
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=rate, options={"crf": "10"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=48000) if tone_s else None
        for f in frames:
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            n = int(48000 * tone_s)
            tone = (0.2 * np.sin(np.arange(n) * 2 * np.pi * 440 / 48000)).astype(np.float32)
            for i in range(0, n, 1024):
                f = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="flt",
                                               layout="mono")
                f.sample_rate, f.pts = 48000, i
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


def read(path: Path) -> np.ndarray:
    """(h, w, 3) uint8 of an image file, decoded by libvips."""
    import pyvips
    return pyvips.Image.new_from_file(str(path)).numpy()


def assert_config_error(overrides: list[str], message: str) -> None:
    """``overrides`` are refused with one line matching ``message``."""
    from gigadream.errors import ConfigError
    from gigadream.modes import load_config
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    import skimage.data
    d = tmp_path_factory.mktemp("photos")
    return {
        "astronaut_png": save(skimage.data.astronaut(), d / "astronaut.png"),
        "chelsea_jpg": save(skimage.data.chelsea(), d / "chelsea.jpg", Q=95),
        "coffee_jpg": save(skimage.data.coffee(), d / "coffee.jpg", Q=95),
    }


@pytest.fixture(scope="session")
def pano(tmp_path_factory) -> Path:
    """A 768×512 panorama of real photos: big enough for many tiles, small enough to dream."""
    from gigadream.sample import make_panorama
    return make_panorama(tmp_path_factory.mktemp("pano") / "pano.jpg", 768, 512, quality=95)
