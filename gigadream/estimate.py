"""``gigadream plan``: what a run will cost, before anything runs.

Counts come from the run's own plan (the same tiles, windows and steps the passes will use).
FLOPs per pixel are counted by torch's FlopCounterMode on one small window (forward to the
deepest layer and the backward to the pixels). Time on this machine comes from timing a few
of the run's own window shapes (a short calibration); on a named GPU from its peak FLOP rate
at an assumed efficiency.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .ingest import image_shape, wrap_setting
from .modes import Prior, mode_for
from .pipeline import with_wrap
from .resample import octave_shape
from .tiling import grid, padded_shape

# Dense fp32 / bf16 peak TFLOP/s (vendor figures) of GPUs people rent.
GPUS = {"t4": (8.1, 65.0), "l4": (30.3, 121.0), "a10": (31.2, 125.0), "a100": (19.5, 312.0),
        "h100": (67.0, 989.0), "h200": (67.0, 989.0), "rtx4090": (82.6, 165.0)}
# Convolutions on tile windows reach about this share of peak (cuDNN, engine.batch's 4 windows
# a step): an assumed figure, not a fitted one.
GPU_EFFICIENCY = 0.35
# plan times the model on PROBES of the run's window shapes (at most this side): a first step
# of each, then rounds of one step of each for CALIBRATION_S, at least REPEATS rounds. The
# time a run's steps take follows the machine's load; a few seconds of rounds sample more of
# it than a few steps would.
CALIBRATION_SIDE = 192
PROBES = 5
REPEATS = 2
CALIBRATION_S = 8.0


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
    shapes: int = 0                  # first steps of a window shape in a worker process
    cpu_s_per_shape: float = 0.0     # the first step of each shape in a process costs this more
    task_mp: float = 0.0             # Σ window megapixels of each Dask task's first step
    cpu_s_per_task_mp: float = 0.0   # a task's first step costs this more per megapixel
    wrap: str = "none"               # tiling.wrap as the run resolves it, and why
    rate_of: str = ""                # "": timed now (probes in a worker); else whose steps'
                                     # rate cpu_s_per_mp_iteration is, all costs included
    costs: tuple = ()                # _model_costs' measures, for another estimate here

    @property
    def flops(self) -> float:
        return self.window_mp_iterations * 1e6 * self.flops_per_pixel

    @property
    def cpu_seconds(self) -> float:
        return (self.steps * self.cpu_s_per_step
                + self.window_mp_iterations * self.cpu_s_per_mp_iteration
                + self.shapes * self.cpu_s_per_shape + self.task_mp * self.cpu_s_per_task_mp)

    def gpu_seconds(self, gpu: str, bf16: bool = False) -> float:
        return self.flops / (GPUS[gpu][bf16] * 1e12 * GPU_EFFICIENCY)


def _probe_shapes(shapes: list[tuple[int, int]], n: int = PROBES) -> list[tuple[int, int]]:
    """``n`` of the run's window shapes, from its smallest to its largest by area, windows
    larger than a CALIBRATION_SIDE square replaced by that square (a 700 px window's steps
    would make ``plan`` last minutes): the fit's cost per pixel extends to them."""
    cap = CALIBRATION_SIDE ** 2
    by_area = sorted({s if s[0] * s[1] <= cap else (CALIBRATION_SIDE, CALIBRATION_SIDE)
                      for s in shapes}, key=lambda s: (s[0] * s[1], s))
    if len(by_area) <= n:
        return by_area
    return [by_area[round(i * (len(by_area) - 1) / (n - 1))] for i in range(n)]


def _model_costs(cfg: Config, workers: int, shapes: list[tuple[int, int]],
                 executor=None, timed: bool = True) -> tuple[float, float, float, int, float, float]:
    """(FLOPs per pixel, seconds per step call, seconds per megapixel-step, bytes a step keeps
    for the backward per pixel, seconds more for the first step of a new window shape,
    seconds more per megapixel for the first step of a Dask task) on
    this CPU, timed where a run takes its steps: in a task of a worker of an embedded
    cluster (its environment, threads and allocator settings), which costs ``plan`` the
    worker's start, 3-5 s. Steps timed in the calling process run at another speed, several
    times a worker's (profiling/engine.md).

    The steps are those of the run's own window ``shapes`` (``_probe_shapes``): edge tiles
    bring thin windows that cost more per pixel than a square's. A step costs a + b ×
    pixels, fitted by least squares on repeated steps of each probed shape. oneDNN prepares
    its kernels once per shape in a process, and in a small image most windows are the
    first of their shape: each probe's first step is timed against the fit. A worker trims
    its heap after each Dask task (memory.release_freed_memory), so a task's first step
    faults its activations in afresh; that cost is timed after a trim, per megapixel.
    ``executor``: a started cluster's (``preview``), whose worker has the model loaded,
    instead of one started here. Without ``timed``, only the FLOPs and the bytes kept (one
    small step), the times zero: the caller has its own rate."""
    from .cluster import cluster

    mode = mode_for(cfg)
    if not mode.uses_model:
        return 0.0, 0.0, 0.0, 0, 0.0, 0.0
    if executor is not None:
        return executor.submit(_time_steps, cfg, shapes, timed).result()
    threads = max(1, (os.cpu_count() or 1) // workers)      # a run's worker's (cluster.cluster)
    with cluster(1, threads, warm=mode.warm_up(), gpus=cfg.engine.gpus) as ex:
        return ex.submit(_time_steps, cfg, shapes, timed).result()


def _time_steps(cfg: Config, shapes: list[tuple[int, int]],
                timed: bool = True) -> tuple[float, float, float, int, float, float]:
    """``_model_costs``, measured in the calling process (a worker's task)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .devices import device
    from .memory import release_freed_memory
    from .models import as_input, autocast

    mode = mode_for(cfg)
    net = mode.warm_up()()              # the model the worker's setup loaded, on its device
    dev = device()
    layers = frozenset(mode.layers)
    precision = mode.step_precision(dev)

    def step(h, w) -> float:
        x = as_input(torch.rand(1, 3, h, w) * 255).to(dev).requires_grad_(True)
        t = time.perf_counter()
        with autocast(dev, precision):
            acts = net(x, layers)
        sum(a.float().pow(2).mean() for a in acts.values()).backward()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    saved = [0]

    def pack(t):             # tensors autograd keeps for the backward: the step's memory
        saved[0] += t.numel() * t.element_size()
        return t

    side = CALIBRATION_SIDE
    with FlopCounterMode(display=False) as counter, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(side, side + 1)         # a shape no probe has: it stays new to them
    flops_px, bytes_px = counter.get_total_flops() / (side * (side + 1)), saved[0] / (side * (side + 1))
    if not timed:
        return flops_px, 0.0, 0.0, bytes_px, 0.0, 0.0
    probes = _probe_shapes(shapes)
    first = {s: step(*s) for s in probes}
    pixels, seconds, again, trimmed = [], [], {s: [] for s in probes}, []
    end = time.perf_counter() + CALIBRATION_S
    while min(map(len, again.values())) < REPEATS or time.perf_counter() < end:
        for s in probes:             # round after round: each sees the machine's changes
            release_freed_memory()   # as after each Dask task: a task's first step
            after_trim = step(*s)
            again[s].append(step(*s))
            pixels.append(s[0] * s[1] / 1e6)
            seconds.append(again[s][-1])
            trimmed.append(after_trim - again[s][-1])
    firsts = [first[s] - float(np.mean(again[s])) for s in probes]
    if len(set(pixels)) > 1:
        per_mp, per_call = np.polyfit(pixels, seconds, 1)
    else:                            # one shape: the whole step per its pixels
        per_mp, per_call = float(np.median(seconds)) / pixels[0], 0.0
    return (flops_px, max(float(per_call), 0.0), max(float(per_mp), 0.0), bytes_px,
            max(0.0, float(np.mean(firsts))), max(0.0, sum(trimmed) / sum(pixels)))


def estimate(input_path: Path | str, cfg: Config, calibrate: bool = True, executor=None,
             rate: float | None = None) -> Estimate:
    """What a run of ``cfg`` on ``input_path`` (a file or a URL) will cost; ``calibrate``
    times the model on this machine, in a worker of ``executor`` where one is given.
    ``rate``: seconds per window megapixel-step that steps of this config just took on this
    machine (the preview's), all costs included, used instead of timing probes (the FLOPs
    and bytes are still counted in one small step)."""
    shape = image_shape(input_path)                 # a file, or an object's URL
    wrap, why = wrap_setting(cfg.tiling.wrap, input_path, shape)
    cfg = with_wrap(cfg, input_path, shape)
    return estimate_shape(shape, cfg, f"{wrap} ({why})", calibrate, executor, rate)


def estimate_shape(shape: tuple[int, int], cfg: Config, wrap: str, calibrate: bool = True,
                   executor=None, rate: float | None = None, *, prior: Prior | None = None,
                   costs: tuple | None = None) -> Estimate:
    """``estimate`` of an image of ``shape`` (h, w) under ``cfg``, whose ``tiling.wrap`` is
    already resolved (``wrap``: how, for the report). ``prior``: a sequence's frame after
    the first (``Mode.later_plan``; its gradient scales are the first frame's, so it
    calibrates nothing). ``costs``: another estimate's measured model costs
    (``Estimate.costs``), reused instead of timing the model again."""
    mode = mode_for(cfg, prior=prior)
    mode.check_settings()
    passes = mode.plan(shape)
    octaves, scale = mode.octaves(shape)
    mp_its, task_mp, tiles, window_px, steps, shapes = 0.0, 0.0, 0, 0, 0, Counter()
    for pp in passes:
        # a whole octave needs no margin, but on a circle it reads round the edge
        margin = 0 if pp.whole and not mode.wrap else mode.window_margin
        for t in grid(pp.shape, pp.tile, pp.offset, margin, mode.align, mode.wrap,
                      mode.align_end):
            shapes[t.window.shape] += 1
            px = t.window.shape[0] * t.window.shape[1]
            window_px = max(window_px, px)
            mp_its += px / 1e6 * (pp.iterations + pp.stats)
            steps += pp.iterations + pp.stats
            task_mp += px / 1e6 * (1 + pp.stats)     # a CPU's model task: one tile
        tiles += pp.tiles
    if mode.calibration_tiles and prior is None:    # one gradient per sampled tile per octave
        for k in range(octaves):
            t = grid(octave_shape(shape, scale, k), cfg.tiling.tile, (0, 0), mode.window_margin,
                     mode.align, mode.wrap, mode.align_end)
            n = min(len(t), mode.calibration_tiles)
            shapes.update(x.window.shape for x in t)     # an upper bound: n of them are used
            mean_mp = sum(x.window.shape[0] * x.window.shape[1] for x in t) / len(t) / 1e6
            mp_its += n * mean_mp
            task_mp += n * mean_mp
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
    if costs is None:
        costs = (_model_costs(cfg, workers, list(shapes), executor, timed=rate is None)
                 if calibrate else (0.0,) * 6)
    flops_px, per_step, per_mp, bytes_px, per_shape, per_task_mp = costs
    if rate is not None:
        per_mp = rate
    # each worker process meets a shape for the first time once, if its tiles reach it
    firsts = sum(min(workers, n) for n in shapes.values())
    # A worker holds the Python/torch runtime and model (~400 MB for VGG16), its
    # window (float32 in and out), the next tile's window and content read ahead (prefetch),
    # and one step's saved activations for the largest window.
    worker_ram = int(400e6 + bytes_px * window_px + 6 * 3 * window_px * 4)
    return Estimate(shape, octaves, len(passes), tiles, mp_its, steps, flops_px,
                    src + canvases, worker_ram, per_step, per_mp,
                    mode.step_precision("cpu"), firsts if mode.uses_model else 0, per_shape,
                    task_mp, per_task_mp,
                    wrap, "the preview's own steps" if rate is not None else "", costs)


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
    margin = mode_for(cfg).window_margin
    lines = [
        f"image          {w}×{h} px ({h * w / 1e6:.1f} MP), mode {cfg.mode}, model {cfg.model.name}",
        f"octaves        {e.octaves}",
        f"passes         {e.passes}",
        f"tiles          {e.tiles} (tile {cfg.tiling.tile} px, margin {margin} px)",
        f"wrap           {e.wrap}",
        f"model work     {e.window_mp_iterations:,.1f} megapixel-steps (windows, margins included)",
        f"FLOPs          {e.flops:.3g} ({e.flops_per_pixel:,.0f} per pixel-step)",
        f"store disk     {e.store_bytes / 1e9:.2f} GB at the peak",
        f"RAM per worker {e.worker_ram_bytes / 1e9:.2f} GB (model, one window's step, the next window)",
        f"this machine   {_duration(e.cpu_seconds)} of model time "
        + (f"({e.cpu_s_per_mp_iteration:.2f} s per megapixel-step + {e.cpu_s_per_step * 1e3:.0f} ms "
           f"per call + {e.cpu_s_per_shape * 1e3:.0f} ms for each of {e.shapes} first steps of a "
           f"window shape + {e.cpu_s_per_task_mp:.2f} s per megapixel of a task's first step, "
           f"measured now in a worker, in {e.precision})" if not e.rate_of else
           f"({e.cpu_s_per_mp_iteration:.2f} s per megapixel-step, all costs included, the rate "
           f"of {e.rate_of}, in {e.precision})"),
    ]
    if gpu:
        lines.append(f"{gpu:<14} {_duration(e.gpu_seconds(gpu))} fp32, "
                     f"{_duration(e.gpu_seconds(gpu, bf16=True))} bf16 (from FLOPs at "
                     f"{GPU_EFFICIENCY:.0%} of peak: a rough guide)")
    return "\n".join(lines)


# -- sequences ---------------------------------------------------------------------------

# A finished frame of a video output waits in the sequence store as an 8-bit deflate TIFF
# until the video is encoded: about this share of its raw h × w × 3 bytes (deflate on
# photographic frames; flat frames take less, noisy ones more). An assumed figure.
TIFF_DEFLATE_SHARE = 0.6


@dataclass
class SequenceEstimate:
    """What a run of a video or frame sequence will cost: its first frame is a cold still
    (``first``), every later one starts from the previous result (``later``, ``Prior``)."""
    kind: str                        # "video" or "images"
    count: int                       # frames of the input
    indices: list[int]               # the input frames (0-based) a run runs
    rate: object                     # a video's frames per second (Fraction), else None
    first: Estimate
    later: Estimate
    output: Path                     # what the run writes (its default, or -o)
    video_output: bool
    work_bytes: int                  # the store at the peak without the finished frames
    frame_bytes: int                 # each finished frame kept in the store (video output)

    @property
    def frames(self) -> int:
        return len(self.indices)

    @property
    def cpu_seconds(self) -> float:
        return self.first.cpu_seconds + (self.frames - 1) * self.later.cpu_seconds

    def gpu_seconds(self, gpu: str, bf16: bool = False) -> float:
        return (self.first.gpu_seconds(gpu, bf16)
                + (self.frames - 1) * self.later.gpu_seconds(gpu, bf16))

    @property
    def store_bytes(self) -> int:
        return self.work_bytes + self.frames * self.frame_bytes


def estimate_sequence(spec: str, cfg: Config, out: Path | None = None,
                      calibrate: bool = True, executor=None,
                      rate: float | None = None) -> SequenceEstimate:
    """What ``gigadream run SPEC`` (a video, a folder or a glob of frames) will cost under
    ``cfg``, writing ``out`` (default: the run's): the frames ``sequence.frames`` and
    ``sequence.stride`` select, the first frame's still estimate and a later frame's (the
    model timed once, here or in ``executor``'s worker; ``rate`` as ``estimate``'s), and
    the sequence store's disk. The optical flow and the warp pass of each later frame are
    not counted: no model steps (a few seconds a frame on a 33 MP frame)."""
    from .sequence import Output, default_output, frame_indices, resolve_wrap
    from .video import open_frames
    cfg = cfg.resolved(Path.cwd())
    with open_frames(spec) as source:
        indices = frame_indices(cfg, source.count)
        setting, cfg = cfg.tiling.wrap, resolve_wrap(cfg, source)
        kind, count, fps, shape = source.kind, source.count, source.rate, source.shape
        wrap = _sequence_wrap_note(setting, cfg.tiling.wrap, source)
    out = Path(out or default_output(spec, cfg.mode))
    video_out = Output.of(out).video
    first = estimate_shape(shape, cfg, wrap, calibrate, executor, rate)
    later = estimate_shape(shape, cfg, wrap, calibrate, rate=rate, prior=Prior(),
                           costs=first.costs)
    h, w = shape
    ph, pw = padded_shape(shape, cfg.tiling.tile)
    # At the peak (a later frame's run): the previous frame's still store (the warp reads its
    # result) beside the current one's, the warp's float16 canvas, a video frame's decoded
    # input as an uncompressed TIFF, and for dream the new frame ingested for the blend and
    # the blend as a TIFF.
    work = 2 * first.store_bytes + 6 * ph * pw + (3 * h * w if kind == "video" else 0)
    if cfg.mode == "dream":
        work += 2 * 3 * h * w
    frame = int(TIFF_DEFLATE_SHARE * 3 * h * w) if video_out else 0
    return SequenceEstimate(kind, count, indices, fps, first, later, out, video_out, work,
                            frame)


def _sequence_wrap_note(setting: str, w: str, source) -> str:
    """``tiling.wrap`` as a sequence resolves ``setting`` (``w``: ``sequence.resolve_wrap``'s)
    and why, for the report."""
    if setting != "auto":
        return f"{w} (as set)"
    if source.kind == "images":
        first = source.files[0]
        return f"{w} ({wrap_setting('auto', first, source.shape)[1]}, from {first.name})"
    if source.spherical:
        return f"{w} (its spherical metadata says 360°)"
    return f"{w} (a video without spherical metadata)"


def _size(n: float) -> str:
    return (f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6
            else f"{n / 1e3:.0f} kB")


def sequence_report(e: SequenceEstimate, cfg: Config, gpu: str | None) -> str:
    """``gigadream plan`` of a sequence: the frames, the first and a later frame's costs,
    the whole run's time, the store's disk."""
    h, w = e.first.shape
    s = cfg.sequence
    n = e.frames
    what = "video" if e.kind == "video" else "frames"
    rate = f", {float(e.rate):.3g} fps" if e.rate else ""
    later_s, first_s = e.later.cpu_seconds, e.first.cpu_seconds

    def frame_line(x: Estimate) -> str:
        return (f"{x.passes} passes, {x.tiles} tiles, {x.window_mp_iterations:,.1f} "
                f"megapixel-steps, {_duration(x.cpu_seconds)} here")

    lines = [
        f"input          {what}, {e.count} frames of {w}×{h} px ({h * w / 1e6:.1f} MP){rate}, "
        f"mode {cfg.mode}, model {cfg.model.name}",
        f"frames to run  {n} (sequence.frames {s.frames}, stride {s.stride})",
        f"first frame    a cold still: {e.first.octaves} octave(s), {frame_line(e.first)}",
        f"later frames   each from the previous result: {frame_line(e.later)} "
        "(+ optical flow and warp, not counted)",
        f"wrap           {e.first.wrap}",
        f"this machine   {_duration(first_s + (n - 1) * later_s)} of model time: "
        f"{_duration(first_s)} + {n - 1} × {_duration(later_s)} "
        + (f"({e.first.cpu_s_per_mp_iteration:.2f} s per megapixel-step and the costs of "
           f"calls, measured now in a worker, in {e.first.precision})" if not e.first.rate_of
           else f"(at the rate of {e.first.rate_of}, in {e.first.precision})"),
    ]
    if gpu:
        lines.append(f"{gpu:<14} {_duration(e.gpu_seconds(gpu))} fp32, "
                     f"{_duration(e.gpu_seconds(gpu, bf16=True))} bf16 (from FLOPs at "
                     f"{GPU_EFFICIENCY:.0%} of peak: a rough guide)")
    disk = (f"store disk     about {_size(e.store_bytes)} at the end: "
            f"{_size(e.work_bytes)} of work (two frames' stores, the warp) ")
    if e.video_output:
        disk += (f"+ {n} finished frames kept until the video is encoded, 8-bit deflate TIFF, "
                 f"~{_size(e.frame_bytes)} each (an estimate: "
                 f"{TIFF_DEFLATE_SHARE:g} × w × h × 3; busy frames take more)")
    else:
        disk += f"(the frames go straight into {e.output.name}/)"
    lines += [disk,
              f"RAM per worker {e.first.worker_ram_bytes / 1e9:.2f} GB (model, one window's "
              "step, the next window)",
              f"output         {e.output}"]
    return "\n".join(lines)
