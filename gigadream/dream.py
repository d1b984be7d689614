"""Processors: map a float tile window to the new pixels of its core.

A processor is a small picklable object; the model behind it is loaded lazily, once per worker
process (``models.get_model`` caches it). ``__call__(window, core, rng)`` takes the window
(C, h, w) float32 in 0-255, the core's box relative to the window, and the tile's generator;
it returns the core's new pixels and a dict of statistics for the engine. A processor's
``window_dtype`` (float32 unless it says otherwise) is the dtype its windows arrive in.
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
    """Guided dreaming: the mean logit of ImageNet classes, as the tile's window sees them."""

    classes: tuple[int, ...]
    weight: float = 1.0
    layer: str = "logits"

    def __call__(self, acts: dict, n_pixels: int):
        return self.weight * acts[self.layer][:, list(self.classes)].float().mean()


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
        """Objective gradient w.r.t. x (1, C, h, w); returns (grad, seconds in the model).
        The network runs in ``precision``, the objectives and the gradient are fp32."""
        import torch

        from .engine import model_step
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
        import torch

        g, seconds = self.gradient(torch.from_numpy(window)[None])
        gc = g[0][(slice(None), *core.slices())]
        return {"grad_abs_sum": float(gc.abs().sum(dtype=torch.float64)), "count": gc.numel(),
                "model_s": seconds}

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator, content=None):
        import torch

        from .models import device
        # (1, C, h, w), 0-255, a copy in the models' channels-last layout: the steps below
        # then never change layout (each change is a copy)
        x = torch.from_numpy(window)[None].to(device(), memory_format=torch.channels_last,
                                               copy=True)
        h, w = window.shape[1:]
        model_s = 0.0
        for _ in range(self.iterations):
            # Jitter inside the window: the wrap-around seam lands in the margin when
            # jitter < margin, so the core never sees it.
            dy, dx = (int(v) for v in rng.integers(-self.jitter, self.jitter + 1, size=2))
            dy, dx = (dy % h if h else 0), (dx % w if w else 0)
            g, s = self.gradient(torch.roll(x, (dy, dx), (2, 3)))
            model_s += s
            g = torch.roll(g, (-dy, -dx), (2, 3))
            x += (self.dose * self.step_size / self.grad_scale) * g
            x.clamp_(0.0, 255.0)
        # planar again, as callers and store.write expect (a 512 px core: 0.6 ms)
        core_px = x[0][(slice(None), *core.slices())].contiguous()
        return core_px.cpu().numpy(), {"model_s": model_s}
