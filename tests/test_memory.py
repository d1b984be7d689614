"""Peak memory (memory-profiler, whole process tree, PSS) stays bounded, whatever the image size.

Budgets carry margins: memory-profiler samples every 50 ms and these machines are noisy.
"""
import sys

import pytest

from gigadream.memory import peak_mb
from gigadream.sample import make_panorama

IDENTITY = ["--set", "mode=identity", "--set", "dream.octaves=2", "--set", "dream.passes=1",
            "--quiet", "--overwrite"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    # 25 and 100 MP share a width: see test_identity_run_peak_does_not_grow_with_the_image.
    return {mp: make_panorama(d / f"p{mp}.jpg", *size) for mp, size in
            {25: (11550, 2165), 100: (11550, 8660), 200: (16330, 12250)}.items()}


def test_ingest_and_export_of_200_megapixels_peak_under_600_mb(big, tmp_path):
    store = tmp_path / "store"
    ingest = peak_mb(["ingest", str(big[200]), str(store), "--set", "dream.octaves=1", "--quiet"])
    export = peak_mb(["export", str(store), str(tmp_path / "out.jpg")])
    print(f"200 MP: ingest {ingest:.0f} MB, export {export:.0f} MB")
    assert ingest < 600 and export < 600
    assert (tmp_path / "out.jpg").stat().st_size > 10_000_000


def test_identity_run_peak_does_not_grow_with_the_image(big, tmp_path):
    """4× the pixels, same peak. The images share their width on purpose: JPEG decoding is
    row-sequential, so libvips' decoder and the ingest strips hold rows whose size is the
    width (measured: ~16 KB per column in all, e.g. +90 MB from 5800 to 11550 px wide)."""
    peaks = {mp: peak_mb(["run", str(big[mp]), "-o", str(tmp_path / f"o{mp}.jpg"), *IDENTITY])
             for mp in (25, 100)}
    print(f"identity run peak: 25 MP {peaks[25]:.0f} MB, 100 MP {peaks[100]:.0f} MB")
    assert abs(peaks[100] - peaks[25]) / peaks[25] < 0.15


WORKING_SET = """
import torch, numpy as np
from gigadream.config import load_config
from gigadream.pipeline import make_processor
from gigadream.tiling import Box
cfg = load_config(None, {overrides!r})
torch.set_num_threads(2)
side = cfg.tiling.tile + 2 * cfg.margin
window = np.random.default_rng(0).uniform(0, 255, (3, side, side)).astype(np.float32)
make_processor(cfg)(window, Box(0, side, 0, side), np.random.default_rng(0))
"""


def test_dream_run_stays_within_the_model_working_set_plus_a_constant(photos, tmp_path):
    overrides = ["dream.layers=[relu3_3]", "tiling.tile=128", "dream.octaves=2", "dream.passes=1"]
    model = peak_mb([sys.executable, "-c", WORKING_SET.format(overrides=overrides)])
    sets = [a for o in overrides for a in ("--set", o)]
    run = peak_mb(["run", str(photos["astronaut_png"]), "-o", str(tmp_path / "d.jpg"), *sets,
                   "--quiet"])
    print(f"model working set {model:.0f} MB, whole dream run {run:.0f} MB")
    # The constant: the client (no torch), the in-process scheduler, the worker's nanny.
    assert run < model + 450
