"""Guided dreaming on EfficientNet-Lite0 (bundled ImageNet weights), through the whole engine."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_config_error, read
from gigadream import classes
from gigadream.modes import load_config
from gigadream.models import get_model
from gigadream.modes.dream import DreamMode, dream_layers
from gigadream.pipeline import run
from gigadream.tiling import Box

GUIDED = ["model.name=efficientnet_lite0", "dream.classes=[goldfish]", "tiling.tile=128",
          "tiling.margin=32", "dream.octaves=2", "dream.passes=2", "dream.step_size=3", "export.tiff_compression=none"]


def logits(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float()[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return get_model("efficientnet_lite0")(x, {"logits"})["logits"][0]


@pytest.fixture(scope="module")
def dosed(photos, tmp_path_factory):
    d = tmp_path_factory.mktemp("guided")
    return {dose: read(run(photos["chelsea_jpg"], load_config(None, GUIDED + [f"dream.dose={dose}"]),
                           d / f"dose{dose}.tif").output) for dose in (1, -1)}


def test_guided_dream_raises_the_class_logit_and_a_negative_dose_lowers_it(photos, dosed):
    goldfish = classes.resolve("test", "goldfish")[0]
    before = float(logits(read(photos["chelsea_jpg"]))[goldfish])
    up, down = (float(logits(dosed[d])[goldfish]) for d in (1, -1))
    print(f"goldfish logit: input {before:.2f}, dose +1 {up:.2f}, dose -1 {down:.2f}")
    # measured: 0.80 → 2.05 (dose +1) and → -0.93 (dose -1)
    assert up > before + 0.5 and down < before - 0.5


def test_a_channel_objective_raises_that_channel(photos):
    cfg = load_config(None, ["model.name=efficientnet_lite0", "dream.layers=[block10:7]",
                             "dream.iterations=5", "tiling.margin=0", "dream.jitter=0"])
    img = read(photos["coffee_jpg"])[:128, :128].transpose(2, 0, 1).astype(np.float32).copy()

    def channel(x):
        with torch.no_grad():
            return float(get_model("efficientnet_lite0")(torch.from_numpy(x)[None], {"block10"})["block10"][0, 7].mean())
    def dream(cfg):
        stat = DreamMode(cfg).make().stat(img, Box(0, 128, 0, 128))     # the shared step scale
        proc = DreamMode(cfg).make(stat["grad_abs_sum"] / stat["count"])
        return proc(img, Box(0, 128, 0, 128), np.random.default_rng(0))[0]
    out = dream(cfg)
    out8 = dream(load_config(None, ["model.name=efficientnet_lite0", "dream.layers=[block10:8]",
                                    "dream.iterations=5", "tiling.margin=0", "dream.jitter=0"]))
    assert channel(out) > channel(img) + 0.5 and channel(out) > channel(out8)


def test_class_names_indices_and_groups():
    assert classes.resolve("k", "Egyptian cat") == classes.resolve("k", 285) == [285]
    assert classes.resolve("k", "egyptian_cat") == [285]
    dogs = classes.resolve("k", "dog")
    assert len(dogs) == 118 and classes.names()[dogs[0]] == "Chihuahua"
    assert len(classes.names()) == 1000 and classes.names()[967] == "espresso"
    cfg = load_config(None, ["model.name=efficientnet_lite0", "dream.classes=[dog, 285, espresso]"])
    assert dream_layers(cfg) == () and DreamMode(cfg).layers == ["logits"]


BAD = [
    (["dream.classes=[doge]"], r"dream.classes: 'doge' is not an ImageNet class or group; did you mean dog"),
    (["dream.classes=[1000]"], r"dream.classes: ImageNet classes are 0 to 999, got 1000"),
    (["dream.classes=[crane]"], r"dream.classes: 'crane' names classes \[134, 517\]; give the index"),
    (["dream.classes=[dog]", "model.name=vgg16"], r"vgg16 has no ImageNet classifier; use model.name=efficientnet_lite0"),
    (["dream.layers=[block10:112]"], r"dream.layers: 'block10:112': block10 has channels 0 to 111"),
    (["dream.layers=[block99]"], r"'block99' is not a layer of efficientnet_lite0"),
    (["dream.dose=0"], r"dream.dose: expected a non-zero number"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_guides_are_one_line_errors(overrides, message):
    assert_config_error(["model.name=efficientnet_lite0", *overrides], message)


def test_classes_verb_lists_and_filters():
    r = subprocess.run([sys.executable, "-m", "gigadream", "classes", "espresso"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["550", "espresso_maker", "967", "espresso"]
    r = subprocess.run([sys.executable, "-m", "gigadream", "classes"], capture_output=True,
                       text=True, timeout=60)
    assert len(r.stdout.splitlines()) == 1000 + len(classes.GROUPS)


def test_a_window_clipped_by_the_image_steps_as_hard_as_a_whole_one(photos):
    """The logits average the classifier's last map, so without a correction a window of
    half the cells (a tile at the image's edge) would get twice the gradient per pixel:
    the objective is per fixed area (``ClassLogits.pooled``). Measured over the columns both
    windows hold, away from the narrow one's cut."""
    img = read(photos["astronaut_png"]).astype(np.float32)            # 512 × 512
    proc = DreamMode(load_config("guided-dogs")).make()
    window = lambda a: torch.from_numpy(a.transpose(2, 0, 1).copy())[None]
    g_whole, _ = proc.gradient(window(img))
    g_half, _ = proc.gradient(window(img[:, :256]))
    ratio = float(g_half[..., 32:160].abs().mean() / g_whole[..., :, 32:160].abs().mean())
    print(f"mean |g| of the half-width window over the whole one's: {ratio:.2f}")
    assert 0.67 < ratio < 1.5
