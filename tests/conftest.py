"""Shared fixtures: real images made here from scikit-image's photos, written by libvips."""
from __future__ import annotations

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


def save(array: np.ndarray, path: Path, **kw) -> Path:
    import pyvips
    im = pyvips.Image.new_from_array(np.ascontiguousarray(array))
    if im.bands == 3:
        im = im.copy(interpretation="srgb")
    im.write_to_file(str(path), **kw)
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
