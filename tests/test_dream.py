"""DeepDream on a real photo through the whole engine, with the real VGG16 weights."""
import numpy as np
import pytest
import torch

from conftest import read
from gigadream.config import load_config
from gigadream.judge import boundary_ratio
from gigadream.models import get_model
from gigadream.pipeline import plan, run

# 512×512 photo, 64 px tiles: 7 or 8 tile boundaries per axis in every pass.
# One tile a model step, on a GPU box too (engine.batch: auto is 4 there).
DREAM = ["dream.layers=[relu3_3]", "tiling.tile=64", "dream.octaves=2", "dream.passes=3",
         "dream.iterations=1", "export.tiff_compression=none", "engine.batch=1"]


@pytest.fixture(scope="module")
def dreamed(photos, tmp_path_factory):
    cfg = load_config(None, DREAM)
    out = tmp_path_factory.mktemp("dream") / "dream.tif"
    report = run(photos["astronaut_png"], cfg, out)
    return cfg, read(photos["astronaut_png"]).astype(np.float32), read(out).astype(np.float32), report


def layer_energy(img: np.ndarray, layer: str) -> float:
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        a = get_model("vgg16")(x, {layer})[layer]
    return float(a.pow(2).mean())


def test_dreaming_raises_the_target_layer_activation(dreamed):
    _, before, after, _ = dreamed
    assert layer_energy(after, "relu3_3") > 1.3 * layer_energy(before, "relu3_3")


def test_output_differs_from_input_everywhere(dreamed):
    _, before, after, _ = dreamed
    diff = np.abs(after - before).mean(axis=2)           # lossless output: 0 where untouched
    blocks = diff.reshape(16, 32, 16, 32).mean(axis=(1, 3))
    assert blocks.min() > 1.0, f"a 32×32 block barely changed: mean |diff| {blocks.min():.2f}"


def test_no_seams_along_the_last_pass_tile_boundaries(dreamed):
    cfg, before, after, _ = dreamed
    last = plan(after.shape[:2], cfg)[-1]
    t, (oy, ox) = cfg.tiling.tile, last.offset
    cols = [j * t - ox - 1 for j in range(1, 9) if 0 < j * t - ox < after.shape[1]]
    rows = [i * t - oy - 1 for i in range(1, 9) if 0 < i * t - oy < after.shape[0]]
    assert len(cols) >= 7 and len(rows) >= 7
    for lines, axis in ((cols, 1), (rows, 0)):
        # The photo's own content makes a handful of lines vary by ±10 % (measured), so:
        # the dreamed change itself has no step at the boundaries...
        change = boundary_ratio(after - before, lines, axis)
        # ...and the dreamed image is as smooth across them as the input was.
        relative = boundary_ratio(after, lines, axis) / boundary_ratio(before, lines, axis)
        print(f"axis {axis}: change {change:.3f}, dreamed/input {relative:.3f}")
        assert abs(change - 1) < 0.05 and abs(relative - 1) < 0.06


def test_values_stay_in_range_and_model_time_is_reported(dreamed):
    """The report's model work is its tiles': each pass's windows × its steps, plus one step
    on each octave's calibration sample (windows of the octave's unshifted grid); its model
    time lies within the passes' wall time (one worker)."""
    from gigadream.modes.dream import DreamMode
    from gigadream.resample import octave_shape
    from gigadream.tiling import grid
    cfg, _, after, report = dreamed
    assert after.min() >= 0 and after.max() <= 255
    passes = plan(after.shape[:2], cfg)
    assert report.tiles == sum(p.tiles for p in passes)
    assert report.model_steps == sum(p.tiles * p.iterations for p in passes)
    mode = DreamMode(cfg)
    margin = mode.processor(passes[-1], first=False).margin
    area = [t.window.shape[0] * t.window.shape[1] / 1e6 for t in grid(
        passes[-1].shape, cfg.tiling.tile, (0, 0), margin, mode.align, mode.wrap, mode.align_end)]
    work = sum(t.window.shape[0] * t.window.shape[1] / 1e6 * p.iterations for p in passes
               for t in grid(p.shape, p.tile, p.offset, margin, mode.align, mode.wrap,
                             mode.align_end))
    octaves = {p.octave: p.shape for p in passes}
    n = sum(min(mode.calibration_tiles, len(grid(shape, cfg.tiling.tile, (0, 0), margin,
                                                 mode.align, mode.wrap, mode.align_end)))
            for shape in octaves.values())
    print(f"model: {report.model_mp:.3f} MP-steps ({work:.3f} in the passes, {n} calibration "
          f"steps), {report.model_s:.2f} s of {report.stage_s['passes']:.2f} s of passes")
    assert work + n * min(area) - 1e-9 <= report.model_mp <= work + n * max(area) + 1e-9
    assert 0.5 * report.stage_s["passes"] < report.model_s <= report.stage_s["passes"]


def test_same_seed_same_result_other_seed_other_result(photos, tmp_path):
    small = ["dream.layers=[relu2_2]", "tiling.tile=128", "dream.octaves=1", "dream.passes=1",
             "export.tiff_compression=none"]
    src = photos["chelsea_jpg"]
    a = run(src, load_config(None, small), tmp_path / "a.tif").output
    b = run(src, load_config(None, small), tmp_path / "b.tif").output
    c = run(src, load_config(None, small + ["seed=1"]), tmp_path / "c.tif").output
    assert np.array_equal(read(a), read(b))
    assert not np.array_equal(read(a), read(c))


def test_bf16_dreams_as_fp32_does():
    """model.precision: VGG16's steps in bfloat16 (autocast) on a real photo point where
    fp32's do and are as long. After several steps chaos spreads them apart, but far less
    than a different jitter seed does in fp32: bf16 changes the dream less than the seed
    does. profiling/gpu_check.py's check, on a 160 px window (measured on an AVX2 CPU: one
    step 0.99, four 0.81-0.94 against 0.54-0.76 with the other seed, on four crops of the
    photo; 320 px: 0.99, 0.88 against 0.62). On a CPU without bf16 it is emulated, a step
    40× fp32's (44 s at 320 px), hence the small window. ``auto`` picks bf16 for VGG16 only
    where the hardware has it, never for EfficientNet."""
    import importlib.util
    from pathlib import Path

    from gigadream.models import default_weights, dream_precision, native_bf16
    script = Path(__file__).parent.parent / "profiling" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    lines = []
    ok = gpu_check.check_precision(str(default_weights("vgg16")), 160, lines)
    print("\n".join(lines))
    assert ok
    assert dream_precision("auto", "vgg16", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert dream_precision("auto", "efficientnet_lite0", "cpu") == "fp32"
    assert dream_precision("fp32", "vgg16", "cpu") == "fp32"


@pytest.mark.parametrize("guide", [["dream.layers=[relu3_3]", "model.precision=fp32"],
                                   ["model.name=efficientnet_lite0", "dream.classes=[goldfish]"]])
def test_a_batch_of_windows_dreams_each_as_it_would_alone(photos, guide):
    """engine.batch: windows stacked into one model step get the step and statistics each
    gets alone (every objective, the class logits' mean too, is summed over the batch), each
    with its own jitter. One step: the batch's gradients differ from the lone ones by float
    rounding (1e-6 of their size, measured), which later steps may magnify where the model
    has kinks (EfficientNet's ReLU6: 0.07 levels on average after 3 steps)."""
    import time

    from gigadream.modes.dream import DreamMode
    from gigadream.tiling import Box

    img = read(photos["astronaut_png"]).transpose(2, 0, 1).astype(np.float32)
    windows = [img[:, y:y + 160, x:x + 160].copy() for y, x in ((0, 0), (200, 96), (300, 340))]
    core = Box(32, 128, 32, 128)
    cfg = load_config(None, guide)
    alone = [DreamMode(cfg).make().stat(w, core) for w in windows]
    together = DreamMode(cfg).make().stat_batch(windows, [core] * 3)
    for a, b in zip(alone, together):
        assert b["count"] == a["count"]
        assert b["grad_abs_sum"] == pytest.approx(a["grad_abs_sum"], rel=1e-4)
    proc = DreamMode(cfg).make(alone[0]["grad_abs_sum"] / alone[0]["count"])
    singles = [proc(w, core, np.random.default_rng(i))[0] for i, w in enumerate(windows)]
    t0 = time.perf_counter()
    batched = proc.batch(windows, [core] * 3, [np.random.default_rng(i) for i in range(3)])
    wall = time.perf_counter() - t0
    # the batch's model time is its steps', shared evenly by its windows
    shares = [stats["model_s"] for _, stats in batched]
    assert shares[0] == shares[1] == shares[2] and 0.5 * wall < sum(shares) <= wall, (shares, wall)
    for w, single, (out, stats) in zip(windows, singles, batched):
        assert np.abs(single - w[(slice(None), *core.slices())]).mean() > 0.5
        assert np.abs(out - single).max() < 1e-3, "a batched window dreamed otherwise"


def test_a_run_in_batches_gives_the_run_one_at_a_time(dreamed, photos, tmp_path):
    """The same run with engine.batch=4: a quarter of the model steps for its interior
    tiles (edge tiles batch with their own shapes), the same picture to float rounding."""
    cfg, _, one_by_one, report = dreamed
    batched = run(photos["astronaut_png"], load_config(None, DREAM + ["engine.batch=4"]),
                  tmp_path / "b.tif")
    diff = np.abs(read(batched.output).astype(np.float32) - one_by_one)
    print(f"batch 4: {batched.model_steps} model steps against {report.model_steps}; "
          f"pixels differ by {diff.max():.0f} at most, {diff.mean():.4f} on average")
    assert report.model_steps == report.tiles
    assert batched.tiles == report.tiles and batched.model_steps < 0.4 * report.tiles
    assert diff.max() <= 2 and diff.mean() < 0.01


def test_a_pixel_steps_as_far_in_a_small_window_as_in_a_large_one(photos):
    """A tile's gradient at a pixel does not depend on the size of its window: a sliver of
    a tile at the image's edge (or a preview's crop) dreams as gently as a whole tile.
    Measured on the same 96 px core, with the receptive field's 19 px of margin around it,
    in a 320 px and a 136 px window: mean |g| 1.00× (divided by each window's own area, the
    objective made the small window's 5.5×)."""
    from gigadream.modes.dream import DreamMode

    cfg = load_config(None, ["dream.layers=[relu3_3]", "model.precision=fp32"])
    grad = DreamMode(cfg).make().gradient
    photo = read(photos["astronaut_png"]).transpose(2, 0, 1).astype(np.float32)
    large = photo[:, 100:420, 100:420]                  # the core is [112, 208) of it
    small = photo[:, 192:328, 192:328]                  # the core is [20, 116) of it
    g_large = grad(torch.from_numpy(large[None]))[0][0, :, 112:208, 112:208]
    g_small = grad(torch.from_numpy(small[None]))[0][0, :, 20:116, 20:116]
    ratio = float(g_small.abs().mean() / g_large.abs().mean())
    print(f"mean |g| in the small window over the large one's: {ratio:.3f}")
    assert abs(ratio - 1) < 0.1
