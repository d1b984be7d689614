"""The GPU path, checked on a machine without a GPU: which device each worker gets (the
embedded cluster's choice, an existing cluster's convention), ``--gpus``, native bf16, style
with its device as a parameter and its tiles in batches, and the retries out of GPU memory
(a fault injected where a full GPU would raise it: ``oom_fault.py``).
``profiling/gpu_check.py`` checks the same on a GPU."""
import collections
import dataclasses
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
from distributed import LocalCluster

import oom_fault
from conftest import read, save
from gigadream import cluster, devices, engine, models
from gigadream.config import load_config
from gigadream.errors import ClusterError, ConfigError, GpuMemoryError
from gigadream.modes.dream import DreamMode
from gigadream.modes.style import StyleMode, add_stats, layer_list, style_model, style_targets
from gigadream.pipeline import plan, run
from gigadream.tiling import Box, grid, split_tile

HERE = Path(__file__).parent
FAKE_GPUS = str(HERE / "fake_gpus.py")        # Dask preloads
OOM_FAULT = str(HERE / "oom_fault.py")


def gd(*args):
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# ---- devices: which GPU each worker runs on ----

def test_each_worker_of_the_embedded_cluster_gets_its_own_gpu():
    assert devices.worker_devices(2, [0, 1]) == ["cuda:0", "cuda:1"]
    assert devices.worker_devices(3, [0, 2]) == ["cuda:0", "cuda:2", "cuda:0"]
    assert devices.worker_devices(2, []) is None
    assert devices.choose_gpus("auto", 2) == [0, 1] and devices.choose_gpus("auto", 0) == []
    assert devices.choose_gpus((2, 0), 4) == [2, 0]
    with pytest.raises(ConfigError, match=r"engine.gpus 0,2: GPU 2 is not there; this machine "
                                          r"has 2 GPUs \(0-1\)"):
        devices.choose_gpus((0, 2), 2)
    with pytest.raises(ConfigError, match="GPU 0 is not there; this machine has no GPU"):
        devices.choose_gpus((0,), 0)


def test_the_engine_hands_each_worker_its_gpu(monkeypatch):
    """A real embedded cluster on a box with (pretend) 3 GPUs and --gpus 2,0: two workers,
    each told its device by the engine when it starts (fake_gpus.py only lets a CPU take a
    CUDA device's name)."""
    monkeypatch.setattr(cluster, "cuda_devices", lambda: 3)
    with dask.config.set({"distributed.worker.preload": [FAKE_GPUS]}), \
            cluster.cluster(gpus=(2, 0)) as ex:
        assert sorted(ex.each_worker(devices.device)) == ["cuda:0", "cuda:2"]


def test_a_worker_of_an_existing_cluster_that_sees_two_gpus_is_one_line():
    """dask-cuda's convention: each worker sees one GPU (CUDA_VISIBLE_DEVICES). A worker
    that sees two would run on the first, as would every other such worker: refused."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, env={"CUDA_VISIBLE_DEVICES": "0,1"},
                      preload=[FAKE_GPUS]) as other:
        with pytest.raises(ClusterError, match=r"sees 2 GPUs \(CUDA_VISIBLE_DEVICES=0,1\); "
                                               r"gigadream runs one GPU a worker.*dask cuda worker") as e:
            with cluster.cluster(scheduler=other.scheduler_address):
                pass
        assert "\n" not in str(e.value)
        with pytest.raises(ConfigError, match="leave out --gpus"):
            with cluster.cluster(scheduler=other.scheduler_address, gpus=(1,)):
                pass


def test_a_worker_that_sees_one_gpu_runs_on_it(monkeypatch):
    for seen, want in ((0, "cpu"), (1, "cuda:0")):
        monkeypatch.setattr(devices, "visible_gpus", lambda: seen)
        assert devices.own_device("w") == want


@pytest.mark.parametrize("value,message", [
    ("a", r"engine.gpus: expected auto or GPU numbers such as 0,2; got 'a'"),
    ("0,0", r"engine.gpus: expected auto or distinct GPU numbers"),
    ("-1", r"expected auto or GPU numbers"),
])
def test_bad_gpus_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, [f"engine.gpus={value}"])
    assert "\n" not in str(e.value)


def test_gpus_parse_as_numbers():
    assert load_config(None, ["engine.gpus=0,2"]).engine.gpus == (0, 2)
    assert load_config(None, ["engine.gpus=[3, 1]"]).engine.gpus == (3, 1)
    assert load_config(None, ["engine.gpus=1"]).engine.gpus == (1,)
    assert load_config(None, []).engine.gpus == "auto"


def test_gpus_flag_picks_devices_or_says_why_not(tmp_path, photos):
    """--gpus on run, plan and preview; a GPU the box lacks is one line and nothing is
    written."""
    out = tmp_path / "out.jpg"
    for args in (["run", photos["chelsea_jpg"], "-o", out], ["plan", photos["chelsea_jpg"]],
                 ["preview", photos["chelsea_jpg"], "-o", tmp_path / "prev", "--crop", 128]):
        r = gd(*args, "--gpus", "99", "--config", "impressionist")
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.count("\n") == 1, r.stderr
        assert "engine.gpus 99: GPU 99 is not there; this machine has" in r.stderr, r.stderr
    r = gd("run", photos["chelsea_jpg"], "-o", out, "--gpus", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "engine.gpus" in r.stderr
    assert list(tmp_path.iterdir()) == []
    assert "--gpus LIST" in gd("run", "--help").stdout


# ---- bf16 where the GPU has it natively ----

def _fake_gpu(monkeypatch, ampere: bool) -> list:
    """torch's capability query as a GPU answers it: bf16 in hardware since Ampere, emulated
    before (torch then says True unless asked natively). Returns the devices asked."""
    asked = []

    class Device:            # torch.cuda.device(i): which GPU the query is about
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            asked.append(self.index)

        def __exit__(self, *exc):
            return False

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return ampere or including_emulation

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    devices.native_bf16.cache_clear()
    return asked


@pytest.fixture
def fresh_bf16():
    devices.native_bf16.cache_clear()
    yield
    devices.native_bf16.cache_clear()


def test_auto_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, fresh_bf16):
    asked = _fake_gpu(monkeypatch, ampere=False)          # a T4, a V100
    assert not devices.native_bf16("cuda:1") and asked == [1]
    assert models.dream_precision("auto", "vgg16", "cuda:1") == "fp32"
    asked = _fake_gpu(monkeypatch, ampere=True)           # an A100, an H100
    assert models.dream_precision("auto", "vgg16", "cuda:3") == "bf16" and asked == [3]
    assert models.dream_precision("auto", "efficientnet_lite0", "cuda:3") == "fp32"


# ---- style on the device it is given ----

STYLE = ["mode=style", "style.iterations=2", "tiling.tile=64", "tiling.margin=32",
         "style.whole_size=64"]


@pytest.fixture(scope="module")
def style_setup(tmp_path_factory):
    import skimage.data

    from gigadream.sample import painting
    d = tmp_path_factory.mktemp("gpu-style")
    style = save(painting(128, 128), d / "painting.png")
    cfg = load_config(None, STYLE + [f"style={style}"])
    photo = skimage.data.coffee()[50:306, 200:456].transpose(2, 0, 1).astype(np.float32)
    s = cfg.style
    target = style_targets(s.images, s.blend_weights, cfg.model.name, None, s.pooling,
                           layer_list(cfg, "style_layers"), 128, device="cpu")
    mode = StyleMode(cfg)
    pp = plan((256, 256), cfg)[-1]
    return cfg, mode, mode.processor(pp, first=False), photo, target


def test_style_runs_on_the_device_it_is_given(style_setup, monkeypatch):
    """device="cpu" runs model, targets, Grams and optimiser on the CPU whatever the
    process's own device is (here "meta", where nothing can be computed); without a device,
    the process's. The model is the one the worker's setup loads (``warm_up``), however its
    device is spelled."""
    cfg, mode, proc, photo, target = style_setup
    window, core = photo[:, :80, :80].copy(), Box(16, 64, 16, 64)
    assert proc.batchable and not dataclasses.replace(proc, optimizer="lbfgs").batchable
    own, _ = proc(window, core, np.random.default_rng(1), window, target)
    assert mode.warm_up()() is proc._net() is style_model("vgg16", None) is \
        models.get_model("vgg16", None, devices.device(), "replicate")
    on_cpu = dataclasses.replace(proc, device="cpu")
    monkeypatch.setattr(devices, "_device", "meta")
    a, _ = on_cpu(window, core, np.random.default_rng(1), window, target)
    stat = on_cpu.stat(window, core)
    assert next(on_cpu._net().parameters()).device.type == "cpu"
    assert on_cpu._net() is models.get_model("vgg16", None, "cpu", "replicate")
    t = style_targets(cfg.style.images, None, "vgg16", None, "max", (("relu1_1", 1.0),), 64,
                      device="cpu")
    assert np.isfinite(t["grams"]["relu1_1"]).all()
    monkeypatch.undo()
    if devices.device() == "cpu":
        np.testing.assert_array_equal(a, own)
        assert stat["grams"]["relu1_1"][0].tobytes() == proc.stat(window, core)["grams"]["relu1_1"][0].tobytes()
    else:                             # a GPU's arithmetic: to float rounding
        assert np.abs(a - own).mean() < 0.5
    assert np.abs(a - window[:, 16:64, 16:64]).mean() > 0.5


def test_style_tiles_in_a_batch_move_as_each_alone(style_setup):
    """engine.batch for style (Adam): each tile's loss, Grams and steps are its own. One
    forward and backward for the batch: the same pixels to float rounding."""
    cfg, mode, proc, photo, target = style_setup
    proc = dataclasses.replace(proc, device="cpu")
    core = Box(16, 64, 16, 64)
    windows = [photo[:, y:y + 80, x:x + 80].copy() for y, x in ((0, 0), (150, 100))]
    canvas = add_stats(*proc.stat_batch(windows, [core] * 2))
    for s, w in zip(proc.stat_batch(windows, [core] * 2), windows):
        one = proc.stat(w, core)
        for layer, (g, n) in s["grams"].items():
            assert n == one["grams"][layer][1]
            assert np.abs(g - one["grams"][layer][0]).max() <= 1e-4 * np.abs(g).max()
    together = proc.optimise(windows, core, [None, None], windows, target, canvas)
    for w, (out, stats) in zip(windows, together):
        single, one = proc.optimise([w], core, [None], [w], target, canvas)[0]
        diff = np.abs(out - single)
        print(f"batched against alone: mean {diff.mean():.2g}, max {diff.max():.2g} levels")
        assert diff.mean() < 0.01 and diff.max() < 1, "a batched tile was stylised otherwise"
        assert stats["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert np.abs(single - w[:, 16:64, 16:64]).mean() > 0.5


# ---- out of GPU memory ----

def test_a_tile_is_split_into_parts_with_the_tiles_margin():
    """Hand-checked: tile (1, 1) of a grid offset by (10, 20), 16 px of margin, windows
    aligned on 8 px."""
    tile = grid((200, 200), 64, (10, 20), 16, 8)[5]
    assert (tile.core, tile.window) == (Box(54, 118, 44, 108), Box(32, 134, 24, 124))
    parts = split_tile(tile, 2, 16, 8)
    assert [p.core for p in parts] == [Box(54, 80, 44, 72), Box(54, 80, 72, 108),
                                       Box(80, 118, 44, 72), Box(80, 118, 72, 108)]
    assert parts[0].window == Box(32, 96, 24, 88) and parts[3].window == Box(64, 134, 56, 124)
    assert sum(p.core.size for p in parts) == tile.core.size
    for p in parts:
        w = p.window
        assert tile.window.y0 <= w.y0 and w.y1 <= tile.window.y1 and w.y0 % 8 == 0
        assert (p.row, p.col, p.chunk) == (tile.row, tile.col, tile.chunk)


class _Canvas:
    """An image in memory with the store's read and write."""

    def __init__(self, a: np.ndarray):
        self.a, self.written = a, {}

    def read(self, box: Box, dtype=np.float32) -> np.ndarray:
        return self.a[:, box.y0:box.y1, box.x0:box.x1].astype(dtype)

    def write(self, tile, core: np.ndarray) -> None:
        self.written[tile] = core


@pytest.fixture
def forget_fits(monkeypatch):
    monkeypatch.setattr(engine, "_memory", collections.OrderedDict())


def test_a_tile_that_does_not_fit_runs_in_parts_and_the_smallest_is_one_line(
        photos, monkeypatch, forget_fits):
    """A lone tile above the GPU's memory: its core in 2 × 2 parts, each with the tile's
    margin, the pass's pixels all written; parts below SMALLEST_PART that still do not fit:
    one line that names the settings to lower."""
    cfg = load_config(None, ["dream.layers=[relu2_2]", "dream.iterations=2", "tiling.tile=128",
                             "model.precision=fp32"])
    mode = DreamMode(cfg)
    photo = read(photos["astronaut_png"]).transpose(2, 0, 1).astype(np.float32)
    tile = grid((512, 512), 128, (0, 0), mode.margin, mode.align)[5]        # inside
    s = mode.make().stat(photo[(slice(None), *tile.window.slices())], tile.core.relative_to(tile.window))
    proc = mode.make(s["grad_abs_sum"] / s["count"])     # steps of dream.step_size on average
    source, target = _Canvas(photo), _Canvas(photo)
    task = engine.TileTask(source, target, proc, tile, (0, 0, 0), align=mode.align)
    limit = tile.window.size - 1                           # the whole window: out of memory
    monkeypatch.setattr(models, "get_model", oom_fault.tight(models.get_model, pixels=limit))
    [stats] = engine.run_tiles((task,))
    out = target.written[tile]
    before = photo[(slice(None), *tile.core.slices())]
    assert stats["parts"] == 4 and out.shape == before.shape
    changed = np.abs(out - before).mean(axis=0)
    assert changed.reshape(4, 32, 4, 32).mean(axis=(1, 3)).min() > 0.1   # every part dreamed
    monkeypatch.setattr(models, "get_model", oom_fault.tight(models.get_model, pixels=100))
    with pytest.raises(GpuMemoryError, match=r"does not fit in the memory of \S+ alone or in "
                                             r"parts of 64 px; lower tiling.tile .* and "
                                             r"engine.batch") as e:
        engine.run_tiles((task,))
    assert "\n" not in str(e.value)


SMALL = ["dream.layers=[relu2_2]", "tiling.tile=64", "dream.octaves=1", "dream.passes=2",
         "dream.iterations=1", "model.precision=fp32", "engine.workers=1",
         "export.tiff_compression=none"]


def test_a_batch_out_of_gpu_memory_is_retried_in_halves_and_the_pass_goes_on(
        photos, tmp_path, monkeypatch):
    """engine.batch=4 on a worker whose model fails any step of more than one window (as a
    full GPU would): every group is halved down to lone tiles, the run completes, and its
    pixels are those of a run one tile at a time, bit for bit."""
    img = save(read(photos["astronaut_png"])[100:292, 150:342], tmp_path / "crop.png")
    reference = run(img, load_config(None, SMALL + ["engine.batch=1"]), tmp_path / "one.tif")
    monkeypatch.setenv("GIGADREAM_TEST_OOM_BATCH", "1")
    with dask.config.set({"distributed.worker.preload": [OOM_FAULT]}):
        faulted = run(img, load_config(None, SMALL + ["engine.batch=4"]), tmp_path / "four.tif")
    diff = np.abs(read(faulted.output).astype(int) - read(reference.output))
    if devices.cuda_devices():     # cuDNN's backward sums in no fixed order
        assert diff.max() <= 2 and diff.mean() < 0.01
    else:
        assert diff.max() == 0
    # the steps that ran out of memory count too: the fault did strike
    assert faulted.model_steps > reference.model_steps == reference.tiles
