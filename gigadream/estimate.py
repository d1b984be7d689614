"""``gigadream plan``: what a run will cost, before anything runs.

Counts come from the run's own plan (the same tiles, windows and steps the passes will use).
FLOPs per pixel are counted by torch's FlopCounterMode on one small window (forward to the
deepest layer and the backward to the pixels). Time on this machine comes from timing that
window (a short calibration); on a named GPU from its peak FLOP rate at an assumed efficiency.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .ingest import image_shape
from .pipeline import plan
from .resample import octave_shape
from .tiling import grid, padded_shape

# Dense fp32 / bf16 peak TFLOP/s (vendor figures) of GPUs people rent.
GPUS = {"t4": (8.1, 65.0), "l4": (30.3, 121.0), "a10": (31.2, 125.0), "a100": (19.5, 312.0),
        "h100": (67.0, 989.0), "h200": (67.0, 989.0), "rtx4090": (82.6, 165.0)}
# Convolutions on tile windows reach about this share of peak (cuDNN, engine.batch's 4 windows
# a step): an assumption, not yet measured.
GPU_EFFICIENCY = 0.35
CALIBRATION_SIDE = 192


@dataclass
class Estimate:
    shape: tuple[int, int]
    octaves: int
    passes: int
    tiles: int
    window_mp_iterations: float      # Σ over tile steps of window megapixels
    steps: int                       # model calls: tile steps, statistics, calibration
    flops_per_pixel: float           # one step: forward and backward, per window pixel
    store_bytes: int
    worker_ram_bytes: int
    cpu_s_per_step: float            # a step costs cpu_s_per_step + pixels × per megapixel
    cpu_s_per_mp_iteration: float
    precision: str = "fp32"          # of the model steps on this machine (model.precision)
    shapes: int = 0                  # distinct window shapes the steps take
    cpu_s_per_shape: float = 0.0     # the first step of each shape in a process costs this more

    @property
    def flops(self) -> float:
        return self.window_mp_iterations * 1e6 * self.flops_per_pixel

    @property
    def cpu_seconds(self) -> float:
        return (self.steps * self.cpu_s_per_step + self.window_mp_iterations * self.cpu_s_per_mp_iteration
                + self.shapes * self.cpu_s_per_shape)

    def gpu_seconds(self, gpu: str, bf16: bool = False) -> float:
        return self.flops / (GPUS[gpu][bf16] * 1e12 * GPU_EFFICIENCY)


def step_precision(cfg: Config) -> str:
    """The precision of the run's model steps on this machine (style always runs in fp32)."""
    from .models import dream_precision
    return (dream_precision(cfg.model.precision, cfg.model.name, "cpu")
            if cfg.mode == "dream" else "fp32")


def _model_costs(cfg: Config, workers: int) -> tuple[float, float, float, int, float]:
    """(FLOPs per pixel, seconds per step call, seconds per megapixel-step, bytes a step keeps
    for the backward per pixel, seconds more for the first step of a new window shape) on
    this CPU: a step costs a + b × pixels, fitted on two window sizes (small windows pay the
    per-call overhead); oneDNN prepares its kernels once per shape (in bf16 the first step of
    a window of a new shape took 25-60 ms more than the next, measured), and tiles at the
    image's edges bring new shapes on every pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import as_input, autocast, get_model

    if cfg.mode == "identity":
        return 0.0, 0.0, 0.0, 0, 0.0
    net = get_model(cfg.model.name, cfg.model.weights)
    layers = frozenset(n.partition(":")[0] for n in cfg.layers)
    torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    precision = step_precision(cfg)

    def step(h, w=None):
        x = as_input(torch.rand(1, 3, h, h if w is None else w) * 255).requires_grad_(True)
        with autocast("cpu", precision):
            acts = net(x, layers)
        sum(a.float().pow(2).mean() for a in acts.values()).backward()

    saved = [0]

    def pack(t):             # tensors autograd keeps for the backward: the step's memory
        saved[0] += t.numel() * t.element_size()
        return t

    side = CALIBRATION_SIDE
    with FlopCounterMode(display=False) as counter, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(side)

    def seconds(h, w=None):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            step(h, w)
            times.append(time.perf_counter() - t)
        return sorted(times)[1]      # the median: a run meets this noisy machine's typical speed
    small, large = seconds(side // 3), seconds(side)
    per_mp = max(large - small, 1e-9) / ((side ** 2 - (side // 3) ** 2) / 1e6)
    per_call = max(0.0, large - per_mp * side ** 2 / 1e6)
    firsts = []
    # shapes not seen yet in this process, of other aspects, as edge tiles have: a shape near
    # one seen may reuse its kernels (192 → 194 px cost 11 ms more, 59 × 166 px 40 ms)
    for h, w in ((side - 29, side - 29), (side // 3 + 7, side - 11), (side - 3, side // 2 + 5)):
        t = time.perf_counter()
        step(h, w)
        firsts.append(time.perf_counter() - t - seconds(h, w))
    return (counter.get_total_flops() / side ** 2, per_call, per_mp, saved[0] / side ** 2,
            max(0.0, sorted(firsts)[1]))


def estimate(input_path: Path, cfg: Config, calibrate: bool = True) -> Estimate:
    shape = image_shape(Path(input_path))
    passes = plan(shape, cfg)
    octaves, scale = cfg.octaves(shape)
    mp_its, tiles, window_px, steps, shapes = 0.0, 0, 0, 0, set()
    for pp in passes:
        for t in grid(pp.shape, pp.tile, pp.offset, 0 if pp.whole else cfg.margin, cfg.align):
            shapes.add(t.window.shape)
            px = t.window.shape[0] * t.window.shape[1]
            window_px = max(window_px, px)
            mp_its += px / 1e6 * (pp.iterations + pp.stats)
            steps += pp.iterations + pp.stats
        tiles += pp.tiles
    if cfg.mode == "dream":       # calibration: one gradient per sampled tile per octave
        for k in range(octaves):
            t = grid(octave_shape(shape, scale, k), cfg.tiling.tile, (0, 0), cfg.margin, cfg.align)
            n = min(len(t), cfg.dream.calibration_tiles)
            shapes.update(x.window.shape for x in t)     # an upper bound: n of them are used
            mp_its += n * sum(x.window.shape[0] * x.window.shape[1] for x in t) / len(t) / 1e6
            steps += n
    # Store: the source pyramid (raw uint8) and, at the peak, the two float16
    # canvases of octave 0 with octave 1's two still on disk during octave 0's first pass.
    src = sum(3 * h * w for h, w in (octave_shape(shape, scale, k) for k in range(octaves)))
    canvases = 0
    for k in (0, 1)[:octaves]:
        tile = next(p.tile for p in passes if p.octave == k)
        h, w = padded_shape(octave_shape(shape, scale, k), tile)
        canvases += 2 * 3 * 2 * h * w
    workers = cfg.engine.workers if cfg.engine.workers != "auto" else 1
    flops_px, per_step, per_mp, bytes_px, per_shape = (_model_costs(cfg, workers) if calibrate
                                                       else (0.0, 0.0, 0.0, 0.0, 0.0))
    # A worker holds the Python/torch runtime and model (~400 MB measured for VGG16), its
    # window (float32 in and out), the next tile's window and content read ahead (prefetch),
    # and one step's saved activations for the largest window.
    worker_ram = int(400e6 + bytes_px * window_px + 6 * 3 * window_px * 4)
    return Estimate(shape, octaves, len(passes), tiles, mp_its, steps, flops_px,
                    src + canvases, worker_ram, per_step, per_mp,
                    step_precision(cfg) if cfg.mode != "identity" else "fp32",
                    len(shapes) if cfg.mode != "identity" else 0, per_shape)


def _duration(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def report(e: Estimate, cfg: Config, gpu: str | None) -> str:
    h, w = e.shape
    lines = [
        f"image          {w}×{h} px ({h * w / 1e6:.1f} MP), mode {cfg.mode}, model {cfg.model.name}",
        f"octaves        {e.octaves}",
        f"passes         {e.passes}",
        f"tiles          {e.tiles} (tile {cfg.tiling.tile} px, margin {cfg.margin} px)",
        f"model work     {e.window_mp_iterations:,.1f} megapixel-steps (windows, margins included)",
        f"FLOPs          {e.flops:.3g} ({e.flops_per_pixel:,.0f} per pixel-step)",
        f"store disk     {e.store_bytes / 1e9:.2f} GB at the peak",
        f"RAM per worker {e.worker_ram_bytes / 1e9:.2f} GB (model, one window's step, the next window)",
        f"this machine   {_duration(e.cpu_seconds)} of model time "
        f"({e.cpu_s_per_mp_iteration:.2f} s per megapixel-step + {e.cpu_s_per_step * 1e3:.0f} ms "
        f"per call + {e.cpu_s_per_shape * 1e3:.0f} ms for each of {e.shapes} window shapes, "
        f"measured now, in {e.precision})",
    ]
    if gpu:
        lines.append(f"{gpu:<14} {_duration(e.gpu_seconds(gpu))} fp32, "
                     f"{_duration(e.gpu_seconds(gpu, bf16=True))} bf16 (from FLOPs at "
                     f"{GPU_EFFICIENCY:.0%} of peak: a rough guide)")
    return "\n".join(lines)
