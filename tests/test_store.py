"""The octave hand-off: OctaveStart computes the first canvas of octave k from real zarr stores
on disk, tile by tile, as the whole-image formula says:

    canvas_k = source_k + upsample(canvas_{k+1} - source_{k+1})
"""
import sys

import numpy as np
import pytest
import skimage.data
import skimage.transform
import zarr

from gigadream.resample import octave_shape
from gigadream.storage.store import Store
from gigadream.storage.views import OctaveStart
from gigadream.tiling import Box, grid

SHAPE, SCALE = (391, 530), 1.4          # octave 1: 279 × 379, scales of 1.401 and 1.398


def bilinear(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float64 resized to ``shape`` by plain bilinear interpolation, sample centres
    aligned (torch's align_corners=False), edge samples repeated: written here from the
    definition, independently of gigadream.resample."""
    for axis, n_out in ((1, shape[0]), (2, shape[1])):
        n_in = a.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = (src - i0).reshape([-1 if d == axis else 1 for d in range(3)])
        a = np.take(a, i0, axis) * (1 - f) + np.take(a, i1, axis) * f
    return a


@pytest.fixture(scope="module")
def hand_off(tmp_path_factory):
    """A store with two real source levels and a coarse canvas that differs from its source
    everywhere (a dreamed-looking pattern), stored rolled on a pass's grid; and the expected
    fine canvas, computed on whole arrays."""
    photo = skimage.data.coffee()[5:5 + SHAPE[0], 30:30 + SHAPE[1]]          # (h, w, 3) uint8
    coarse_shape = octave_shape(SHAPE, SCALE, 1)
    small = skimage.transform.resize(photo, coarse_shape, anti_aliasing=True, preserve_range=True)
    src0 = photo.transpose(2, 0, 1).copy()
    src1 = np.rint(small).astype(np.uint8).transpose(2, 0, 1).copy()
    y, x = np.mgrid[:coarse_shape[0], :coarse_shape[1]]
    rng = np.random.default_rng(7)
    detail = (40 * np.sin(x / 5.0)[None] * np.cos(y / 7.0)[None]
              + rng.normal(0, 12, (3, *coarse_shape)))
    canvas1 = (src1 + detail).astype(np.float16)          # as the store keeps a canvas

    store = Store.create(tmp_path_factory.mktemp("octave") / "store")
    for level, a in ((0, src0), (1, src1)):
        store.create_source(a.shape[1:], f"source/{level}")
        zarr.open_array(str(store.path / "source" / str(level)), mode="r+")[:] = a
    tile, offset = 128, (37, 90)
    canvas = store.canvas(1, 0, coarse_shape, tile, offset)
    for t in grid(coarse_shape, tile, offset):
        canvas.write(t, canvas1[(slice(None), *t.core.slices())].astype(np.float32))
    stored = zarr.open_array(str(store.path / canvas.name), mode="r")[:]
    assert np.array_equal(stored[:, 37:37 + coarse_shape[0], 90:90 + coarse_shape[1]], canvas1)

    start = OctaveStart(store.source(0), canvas, store.source(1))
    want = src0 + bilinear(canvas1.astype(np.float64) - src1, SHAPE)
    # the canvas really differs from the source, and its detail reaches the fine octave
    assert np.abs(want - src0).mean() > 10
    return start, want


@pytest.mark.parametrize("torch_loaded", [False, True])   # workers resample with torch
def test_octave_start_of_any_box_is_the_whole_image_formula(hand_off, torch_loaded, monkeypatch):
    start, want = hand_off
    if torch_loaded:
        import torch  # noqa: F401
    else:
        monkeypatch.delitem(sys.modules, "torch", raising=False)
    h, w = SHAPE
    boxes = [Box(0, h, 0, w), Box(0, 1, 0, 1), Box(h - 1, h, w - 1, w), Box(200, 201, 0, w),
             Box(13, 150, 377, 530), Box(310, 391, 5, 77)]
    # every window a pass reads: tiles of 96 px with a 20 px margin, on a shifted grid
    boxes += [t.window for t in grid(SHAPE, 96, (51, 8), margin=20)]
    for box in boxes:
        got = start.read(box)
        assert got.dtype == np.float32 and got.shape == (3, *box.shape)
        np.testing.assert_allclose(got, want[(slice(None), *box.slices())], atol=2e-3,
                                   err_msg=str(box))
    # tiles agree where their windows overlap, to the bit: each pixel's value is the same
    # whichever tile reads it
    whole = start.read(Box(0, h, 0, w))
    for t in grid(SHAPE, 96, (51, 8), margin=20):
        assert np.array_equal(start.read(t.window), whole[(slice(None), *t.window.slices())]), t
    # what an export of it would write: the same pixels, rounded
    box = Box(100, 260, 300, 530)
    assert np.array_equal(start.read_uint8(box), np.clip(np.rint(
        whole[(slice(None), *box.slices())]), 0, 255).astype(np.uint8).transpose(1, 2, 0))
