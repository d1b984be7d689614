"""Processors: map a float tile window to the new pixels of its core.

A processor is a small picklable object; the model behind it is loaded lazily, once per worker
process (``models.get_model`` caches it). ``__call__(window, core, rng)`` takes the window
(C, h, w) float32 in 0-255, the core's box relative to the window, and the tile's generator;
it returns the core's new pixels and a dict of statistics for the engine. A processor's
``window_dtype`` (float32 unless it says otherwise) is the dtype its windows arrive in. One
that has ``batch(windows, cores, rngs)`` (and ``stat_batch``) takes windows of one shape
together (``engine.batch``) and returns ``__call__``'s result for each.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .tiling import Box


@dataclass(frozen=True)
class Identity:
    """Copies the window's core: the engine's own cost, and a bit-exactness check. It takes
    the window in the canvas's own float16 (``window_dtype = None``): converting it to float32
    and back, which only a model needs, took 20 % of an identity tile (measured)."""

    margin: int = 0
    window_dtype = None

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator, content=None):
        return window[(slice(None), *core.slices())], {}


@dataclass(frozen=True)
class LayerL2:
    """DeepDream objective of one layer: ½ Σ a², per input pixel and per channel, so weights
    compare across layers of different depth and width."""

    layer: str
    weight: float = 1.0

    def __call__(self, acts: dict, n_pixels: int):
        a = acts[self.layer].float()         # bf16 under autocast: sum in fp32
        return self.weight * 0.5 * a.pow(2).sum() / (a.shape[1] * n_pixels)


@dataclass(frozen=True)
class Channel:
    """One channel of a layer (``block11:37``): its activation summed, per input pixel."""

    layer: str
    channel: int
    weight: float = 1.0

    def __call__(self, acts: dict, n_pixels: int):
        return self.weight * acts[self.layer][:, self.channel].float().sum() / n_pixels


@dataclass(frozen=True)
class ClassLogits:
    """Guided dreaming: the mean logit of ImageNet classes, as the tile's window sees them
    (summed over a batch of windows, as the other objectives are: each window's gradient is
    then its own)."""

    classes: tuple[int, ...]
    weight: float = 1.0
    layer: str = "logits"

    def __call__(self, acts: dict, n_pixels: int):
        return self.weight * acts[self.layer][:, list(self.classes)].float().mean(1).sum()


def objective(layer: str, weight: float) -> LayerL2 | Channel:
    """``relu4_3`` → the layer's L2; ``block11:37`` → channel 37 of block11."""
    name, _, channel = layer.partition(":")
    return Channel(name, int(channel), weight) if channel else LayerL2(name, weight)


@dataclass(frozen=True)
class DeepDream:
    """Gradient ascent on the summed objectives, with jitter, in the tile's window.

    Departure from Mordvintsev et al.'s notebook: there each step is divided by the mean |g|
    of the whole image. A tile cannot see the whole image, so each step is divided by
    ``grad_scale``, the mean |g| over the octave's tiles measured before its first pass
    (``stat``); flat tiles then dream as gently as in a whole-image run.
    ``dose`` multiplies the step: 2 dreams twice as hard, a negative dose descends instead
    (torch-inception's ``acid_dose``: it subtracts the features).
    """

    model: str
    weights: str | None
    objectives: tuple
    iterations: int
    step_size: float
    jitter: int
    margin: int
    grad_scale: float = 1.0
    dose: float = 1.0
    precision: str = "fp32"      # model.precision: auto, fp32, bf16 (auto resolved on the worker)

    def gradient(self, x):
        """Objective gradient w.r.t. x (N, C, h, w); returns (grad, seconds in the model).
        The network runs in ``precision``, the objectives and the gradient are fp32. Every
        objective is a sum over the batch, so each window's gradient is its own."""
        import torch

        from .steps import model_step
        from .models import as_input, autocast, device, dream_precision, get_model

        dev = device()
        net = get_model(self.model, self.weights, dev)
        x = as_input(x.detach().to(dev)).requires_grad_(True)
        with model_step():
            t = time.perf_counter()
            with autocast(dev, dream_precision(self.precision, self.model, dev)):
                acts = net(x, frozenset(o.layer for o in self.objectives))
            n = x.shape[-1] * x.shape[-2]
            loss = sum(o(acts, n) for o in self.objectives)
            (g,) = torch.autograd.grad(loss, x)
            if g.is_cuda:
                torch.cuda.synchronize()   # CUDA runs asynchronously: time the work, not its launch
            return g, time.perf_counter() - t

    def stat(self, window: np.ndarray, core: Box) -> dict:
        """Σ|g| and pixel count over the core: reduced over tiles into ``grad_scale``."""
        return self.stat_batch([window], [core])[0]

    def stat_batch(self, windows: list[np.ndarray], cores: list[Box]) -> list[dict]:
        """``stat`` of windows of one shape, in one model step."""
        import torch

        g, seconds = self.gradient(_batch(windows))
        out = []
        for gi, core in zip(g, cores):
            gc = gi[(slice(None), *core.slices())]
            out.append({"grad_abs_sum": float(gc.abs().sum(dtype=torch.float64)),
                        "count": gc.numel(), "model_s": seconds / len(windows)})
        return out

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator, content=None):
        return self.batch([window], [core], [rng])[0]

    def batch(self, windows: list[np.ndarray], cores: list[Box],
              rngs: list[np.random.Generator]) -> list[tuple[np.ndarray, dict]]:
        """Windows of one shape dreamed together: each step is one forward and backward of
        the batch (a GPU is busier with several windows than with one; ``engine.batch``).
        Each window keeps its own jitter from its own generator, so a tile's pixels are
        those it gets alone, to float rounding."""
        import torch

        from .models import device
        # (N, C, h, w), 0-255, a copy in the models' channels-last layout: the steps below
        # then never change layout (each change is a copy)
        x = _batch(windows).to(device(), memory_format=torch.channels_last, copy=True)
        h, w = windows[0].shape[1:]
        model_s = 0.0
        for _ in range(self.iterations):
            # Jitter inside the window: the wrap-around seam lands in the margin when
            # jitter < margin, so the core never sees it.
            shifts = []
            for rng in rngs:
                dy, dx = (int(v) for v in rng.integers(-self.jitter, self.jitter + 1, size=2))
                shifts.append(((dy % h if h else 0), (dx % w if w else 0)))
            g, s = self.gradient(_roll(x, shifts))
            model_s += s
            g = _roll(g, [(-dy, -dx) for dy, dx in shifts])
            x += (self.dose * self.step_size / self.grad_scale) * g
            x.clamp_(0.0, 255.0)
        # planar again, as callers and store.write expect (a 512 px core: 0.6 ms)
        return [(xi[(slice(None), *core.slices())].contiguous().cpu().numpy(),
                 {"model_s": model_s / len(windows)}) for xi, core in zip(x, cores)]


def _batch(windows: list[np.ndarray]):
    """Windows (C, h, w) of one shape as one (N, C, h, w) tensor (one window: no copy)."""
    import torch
    return torch.from_numpy(windows[0][None] if len(windows) == 1 else np.stack(windows))


def _roll(x, shifts: list[tuple[int, int]]):
    """Each window of the batch x rolled by its own (dy, dx); one roll when they agree."""
    import torch
    if len(set(shifts)) == 1:
        return torch.roll(x, shifts[0], (2, 3))
    out = torch.empty_like(x)          # keeps x's layout (channels last)
    for i, s in enumerate(shifts):
        out[i:i + 1] = torch.roll(x[i:i + 1], s, (2, 3))
    return out
