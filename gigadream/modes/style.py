"""Mode style: Gatys et al. style transfer as a tile processor, with one style across the
whole image, and what the mode prepares per octave (the style's Gram target) and per pass
(the canvas's Gram).

Losses. Departures from Gatys et al. and jcjohnson/neural-style, whose weights assume the
Caffe VGG19's feature scales: the bundled VGG16's Grams fall ~10⁴× from relu1_1 to relu5_1,
so with neural-style's weights relu1_1 (colour) outweighs the stroke-making layers by 10⁸ and
the result is a colour wash without strokes. Here every term is scale-free:

- style, per layer: ‖G − A‖² / ‖A‖², the Gram's error relative to the style's Gram (G and A
  normalised by C·H·W, as neural-style); 1 = as far as no Gram at all;
- content, per layer: mean (F − P)² / s, with s the layer's mean square activation over the
  style image (``style_targets``): the error relative to the features' own energy;
- total variation: mean of squared neighbour differences, in units of the full 0-255 range.

Any backbone (VGG16, VGG19, ...) then takes the same weights. The default optimiser is Adam
with a step in pixel levels (as crowsonkb/style-transfer-pytorch), clamped to 0-255 after each
step; L-BFGS remains an option.

One style across tiles. The Gram matrix is additive over pixels, so before each pass every
tile's Gram sum (``stat``) is added into the canvas's global Gram as it comes back
(``StyleMode.pass_data``). A tile then optimises its own pixels (its margin stays fixed, as context) against

    G_est(x) = G_global + Ĝ_tile(x) − Ĝ_tile(x₀)

its own contribution swapped in. Departure: the swapped-in Gram is the tile's own, normalised
by its own cells, not weighted by its share of the image. All tiles of a pass move at once;
with share weighting each would correct the whole image's error by itself and together they
would overshoot by the number of tiles. Normalised, each tile corrects as if every tile moved
as it does, so the sum of their moves is one whole-image correction. A whole image is one tile:
G_est is then its own Gram, exactly the whole-image loss. Every normaliser above is global
(the style's Grams and scales), so tiles weigh their terms alike.

Content and total variation are local, and are taken as means over the tile's core, so that
their balance with the style term is the same in every tile and at every image size.

360° panoramas (``tiling.wrap``). The tiled passes need nothing of their own: their grids tile
the circle, so the cores, and with them the Grams' cells, still count each pixel once, and the
windows read their context across the edge. The coarsest octave, stylised whole, is one core
that is the whole circle (``circular``): its window's margins are the core's own other side,
taken from the pixels being optimised at every step (a circular padding), not fixed as a
tile's context is: over its hundreds of steps a fixed copy of the other side would fall far
behind the pixels it stands for, and the edge would be stylised against the photo.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import Mode, PassPlan, Run
from .. import archs
from ..store import ComputedView
from ..tiling import Box

# Style images are used at most this long (the Gram target of a larger one costs gigabytes).
STYLE_MAX_SIDE = 1024


def style_model(name: str, weights: str | None):
    """The backbone style runs (on the CPU), its convolutions padding the image's borders by
    replication: with zeros there, the optimiser darkened the outer pixels by 6-7 levels to
    match the style's Grams of the padded edge (measured on a 256 px photo, 64 px tiles)."""
    from ..models import get_model
    return get_model(name, weights, "cpu", "replicate")


def _cells(a, box: Box, stride: int):
    """Feature cells of ``a`` (N, C, h, w) whose pixels lie in ``box`` (window pixels)."""
    h, w = a.shape[-2:]
    y0, y1 = min(h, round(box.y0 / stride)), min(h, round(box.y1 / stride))
    x0, x1 = min(w, round(box.x0 / stride)), min(w, round(box.x1 / stride))
    return a[..., y0:y1, x0:x1]


def _gram_sum(f):
    """Σ over cells of f fᵀ: (C, C), from (1, C, h, w)."""
    f = f.reshape(f.shape[1], -1)
    return f @ f.T


def _normalize_grad():
    import torch

    class NormalizeGrad(torch.autograd.Function):
        """Identity forward; backward divides the gradient by its L1 norm (neural-style's
        -normalize_gradients, applied to each loss term's gradient)."""

        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return g / (g.abs().sum() + 1e-8)

    return NormalizeGrad.apply


@dataclass(frozen=True)
class StyleTransfer:
    model: str
    weights: str | None
    content_layers: tuple[tuple[str, float], ...]
    style_layers: tuple[tuple[str, float], ...]
    content_weight: float
    style_weight: float
    tv_weight: float
    optimizer: str
    learning_rate: float
    iterations: int
    normalize_gradients: bool
    pooling: str
    margin: int
    random_init: bool = False
    content: object = None     # ArrayView of the content at the pass's size (``process``)
    circular: bool = False     # the core is a whole octave whose x wraps (a 360° panorama)
    window_dtype = np.float32
    batchable = False

    def _net(self):
        return style_model(self.model, self.weights)

    @property
    def _layers(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.content_layers + self.style_layers)

    def stat(self, window: np.ndarray, core: Box) -> dict:
        """The tile's Gram sums and cell counts per style layer, over its core: summed over
        the tiles of a pass into the canvas's global Gram (``add_stats``)."""
        import torch

        from ..steps import model_step
        with model_step(), torch.no_grad():
            t = time.perf_counter()
            acts = self._net()(torch.from_numpy(window)[None], self._layers, self.pooling)
            forward_s = time.perf_counter() - t
        grams = {}
        for layer, _ in self.style_layers:
            f = _cells(acts[layer], core, archs.stride(self.model, layer))
            grams[layer] = (_gram_sum(f.double()).numpy(), f.shape[-1] * f.shape[-2])
        return {"grams": grams, "model_s": forward_s}

    def stat_batch(self, windows: list[np.ndarray], cores: list[Box]) -> list[dict]:
        return [self.stat(w, c) for w, c in zip(windows, cores)]

    def process(self, windows, tiles, rngs, data) -> list[tuple[np.ndarray, dict]]:
        """One tile at a time (``batchable`` is False); ``data`` is the pass's (style Grams,
        canvas Grams or None)."""
        target, canvas = data
        return [self(w, t.core.relative_to(t.window), rng, self.content.read(t.window),
                     target, canvas) for w, t, rng in zip(windows, tiles, rngs)]

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator,
                 content: np.ndarray | None = None, target: dict | None = None,
                 canvas: dict | None = None):
        """Optimise the core's pixels; ``content`` is the content image's window, ``target``
        the style Grams per layer, ``canvas`` the pass's ``add_stats`` (None: whole image)."""
        import torch

        from ..steps import model_step
        net = self._net()
        fixed = torch.from_numpy(window)[None]                    # (1, C, h, w), 0-255
        cs = core.slices()
        if self.random_init:   # neural-style's -init random: near-flat noise around mid-grey
            start = torch.from_numpy(rng.normal(127.5, 8.0, size=window.shape).astype(np.float32))[None]
            start = start[(slice(None), slice(None), *cs)]
        else:
            start = fixed[(slice(None), slice(None), *cs)]
        x = start.clone().requires_grad_(True)
        if self.circular:   # window column j is core column (j - core.x0) mod w, every row
            assert (core.y0, core.y1) == (0, window.shape[1]), "a whole octave's core"
            around = torch.from_numpy((np.arange(window.shape[2]) - core.x0) % (core.x1 - core.x0))
        norm = _normalize_grad() if self.normalize_gradients else (lambda t: t)
        strides = {n: archs.stride(self.model, n) for n in self._layers}

        with model_step(), torch.no_grad():
            c_acts = net(torch.from_numpy(content)[None], frozenset(n for n, _ in self.content_layers),
                         self.pooling)
            p = {n: _cells(c_acts[n], core, strides[n]) for n, _ in self.content_layers}
            del c_acts
        grams = {n: torch.from_numpy(target["grams"][n]) for n, _ in self.style_layers}
        energy = {n: float(a.pow(2).sum()) for n, a in grams.items()}        # ‖A‖²
        scales = {n: target["scales"][n] for n, _ in self.content_layers}
        offsets: dict = {}                   # G_global − Ĝ_tile(x₀), set at the first step
        model_s = [0.0]

        def loss_fn():
            t = time.perf_counter()
            if self.circular:
                win = x[..., around]
            else:
                win = fixed.clone()
                win[(slice(None), slice(None), *cs)] = x
            acts = net(win, self._layers, self.pooling)
            loss = win.new_zeros(())
            for n, w in self.content_layers:
                f = _cells(norm(acts[n]), core, strides[n])
                loss = loss + self.content_weight * w * (f - p[n]).pow(2).mean() / scales[n]
            for n, w in self.style_layers:
                f = _cells(norm(acts[n]), core, strides[n])
                cells = f.shape[-1] * f.shape[-2]
                if cells == 0:       # a sliver of a tile thinner than the layer's stride
                    continue
                g = _gram_sum(f) / (f.shape[1] * cells)
                if n not in offsets:
                    offsets[n] = (0.0 if canvas is None else
                                  torch.from_numpy(canvas["grams"][n][0] / (f.shape[1] * canvas["grams"][n][1])).float()
                                  - g.detach())
                loss = loss + self.style_weight * w * (g + offsets[n] - grams[n]).pow(2).sum() / energy[n]
            if self.tv_weight:
                dy, dx = x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
                if self.circular:       # and the step from the last column to the first
                    dx = torch.cat([dx, x[..., :, :1] - x[..., :, -1:]], dim=-1)
                tv = (dy.pow(2).mean() + dx.pow(2).mean()) / 255.0 ** 2
                loss = loss + self.tv_weight * tv
            return loss, t

        def closure():
            opt.zero_grad()
            with model_step():
                loss, t = loss_fn()
                loss.backward()
                model_s[0] += time.perf_counter() - t      # forward and backward
            return loss

        if self.optimizer == "adam":
            # crowsonkb's betas: the second moment adapts within a pass's few steps
            opt = torch.optim.Adam([x], lr=self.learning_rate, betas=(0.9, 0.99))
            for _ in range(self.iterations):
                loss = closure()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 255.0)
        else:
            # neural-style's L-BFGS: no tolerance stops, a bounded history (per tile, each
            # pair of history vectors costs two windows of memory)
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=self.iterations,
                                    history_size=min(self.iterations, 20),
                                    tolerance_grad=-1, tolerance_change=-1)
            loss = opt.step(closure)
        out = x.detach()[0].clamp(0.0, 255.0).numpy()
        return out, {"model_s": model_s[0], "loss": float(loss.detach())}


def add_stats(*stats: dict) -> dict:
    """Sum tiles' Gram sums and cell counts, layer by layer."""
    out = {}
    for s in stats:
        for layer, (g, n) in s["grams"].items():
            if layer in out:
                out[layer] = (out[layer][0] + g, out[layer][1] + n)
            else:
                out[layer] = (g.copy(), n)
    return {"grams": out}


def load_style_image(path: str, long_side: int) -> np.ndarray:
    """(3, h, w) float32 0-255 sRGB, resized (down only) so its long side is ``long_side``."""
    from ..ingest import open_image
    im = open_image(path)
    scale = min(1.0, long_side / max(im.width, im.height))
    if scale < 1.0:
        im = im.resize(scale, kernel="lanczos3")
    return im.numpy().transpose(2, 0, 1).astype(np.float32)


def style_targets(images: tuple[str, ...], blend: tuple[float, ...] | None, model: str,
                  weights: str | None, pooling: str, layers: tuple[tuple[str, float], ...],
                  long_side: int) -> dict:
    """What a tile optimises towards: ``grams``, the style Gram per layer of ``layers``, each
    image's Gram normalised by C·H·W, blended by weight (neural-style's -style_blend_weights,
    normalised to sum 1); and ``scales``, the mean square activation of every layer of the
    model over the style images (blended alike), the content loss's normaliser."""
    import torch

    from ..steps import model_step
    net = style_model(model, weights)
    blend = blend or (1.0,) * len(images)
    total = sum(blend)
    every = frozenset(o.name for o in archs.ops(model) if o.kernel is not None)   # spatial maps
    grams: dict = {}
    scales: dict = {}
    pixels = [torch.from_numpy(load_style_image(p, long_side))[None] for p in images]
    with model_step():   # beside the tile tasks of the worker's other thread; decoding above
        for x, w in zip(pixels, blend):
            with torch.no_grad():
                acts = net(x, every, pooling)
            for n, f in acts.items():
                scales[n] = scales.get(n, 0.0) + float(f.double().pow(2).mean()) * (w / total)
            for n, _ in layers:
                f = acts[n]
                g = (_gram_sum(f) / f[0].numel()).numpy() * (w / total)
                grams[n] = grams[n] + g if n in grams else g
    return {"grams": grams, "scales": scales}


def style_side(style_scale: float, octave_shape: tuple[int, int]) -> int:
    """Style image long side at an octave: style_scale × the octave's long side, capped."""
    return max(16, min(STYLE_MAX_SIDE, round(style_scale * max(octave_shape))))


def luminance_transfer(styled: np.ndarray, content: np.ndarray) -> np.ndarray:
    """neural-style's -original_colors: the styled image's luma (Y of YCbCr, BT.601) with the
    content's chroma. Both (C, h, w) 0-255 float; returns the same."""
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                 dtype=np.float32)
    y = np.tensordot(m[0], styled, axes=1)
    cbcr = np.tensordot(m[1:], content, axes=1)
    ycc = np.concatenate([y[None], cbcr])
    return np.tensordot(np.linalg.inv(m), ycc, axes=1)


@dataclass(frozen=True)
class OriginalColors(ComputedView):
    """A result view in the content's colours (``original_colors``), computed as it is read."""

    styled: object          # ArrayView: the styled canvas
    content: object         # ArrayView: the source at the same size

    @property
    def shape(self) -> tuple[int, int]:
        return self.styled.shape

    def read(self, box: Box, dtype=np.float32) -> np.ndarray:
        """float32 pixels, whichever ``dtype`` (computed in float32)."""
        return luminance_transfer(self.styled.read(box), self.content.read(box))


class StyleMode(Mode):
    """Style stylises its coarsest octave whole (one tile, ``whole_iterations`` steps), then
    refines each finer octave tile by tile (Gatys et al. 2017, "Controlling Perceptual
    Factors", section 5: coarse-to-fine for high resolutions). Before each tiled pass the
    canvas's Gram is reduced from every tile's (``pass_data``)."""

    uses_model = True

    def __init__(self, cfg, frame=None):
        super().__init__(cfg, frame)
        self.content = None      # the source at the octave's size (begin_octave)
        self.target = None       # a Dask future of the style's Grams (begin_octave)

    @property
    def passes_per_octave(self) -> int:
        return self.cfg.style.passes

    @property
    def iterations(self) -> int:
        return self.cfg.style.iterations

    def check(self) -> None:
        """Every style image opens (header only), or one line says which does not."""
        from ..ingest import image_shape
        for p in self.cfg.style.images:
            image_shape(Path(p), role="style image")

    def warm_up(self):
        return functools.partial(style_model, self.cfg.model.name, self.cfg.model.weights)

    def resolve(self, executor) -> dict:
        """The workers' device kind (a GPU's arithmetic differs from a CPU's) and threads."""
        from .dream import agreed, worker_resolution
        found = executor.each_worker(worker_resolution, "fp32", self.cfg.model.name)
        return {"device": agreed({f[0] for f in found}), "threads": agreed({f[2] for f in found})}

    def octave_plan(self, k: int, shape: tuple[int, int], octaves: int) -> list[PassPlan]:
        if k == octaves - 1:
            return [PassPlan(k, 0, shape, (0, 0), 1, max(shape), self.cfg.style.whole_iterations)]
        return [dataclasses.replace(p, stats=p.tiles > 1)
                for p in super().octave_plan(k, shape, octaves)]

    def begin_octave(self, run: Run, octave: int, view, source) -> None:
        """The style Grams at this octave's size, computed once, on a worker (they stay
        there: each tile task reads them)."""
        s, m = self.cfg.style, self.cfg.model
        self.content = source
        self.target = run.executor.remote(style_targets, s.images, s.blend_weights, m.name,
                                          m.weights, s.pooling,
                                          self.cfg.style_layer_list("style_layers"),
                                          style_side(s.style_scale,
                                                     self.extent(octave, view.shape)))

    def processor(self, pp: PassPlan, first: bool) -> StyleTransfer:
        """``first`` marks the run's first pass, where ``init: random`` applies; a whole pass
        needs no margin, unless its x wraps (``circular``)."""
        cfg, s = self.cfg, self.cfg.style
        return StyleTransfer(cfg.model.name, cfg.model.weights,
                             cfg.style_layer_list("content_layers"),
                             cfg.style_layer_list("style_layers"), s.content_weight,
                             s.style_weight, s.tv_weight, s.optimizer, s.learning_rate,
                             pp.iterations, s.normalize_gradients, s.pooling,
                             0 if pp.whole and not self.wrap else self.margin,
                             random_init=first and s.init == "random",
                             content=self.content, circular=pp.whole and self.wrap)

    def pass_data(self, run: Run, pp: PassPlan, view, proc, tiles: list):
        """(the style's Grams, the canvas's Grams): the canvas's summed from every tile's as
        they arrive, so only the sum is held, however many tiles (each tile's float64 Grams
        are 4.9 MB for VGG16's default layers)."""
        if not pp.stats:
            return self.target, None
        run.stage("grams", f"octave {pp.octave} pass {pp.pass_ + 1}")
        total = {"grams": {}}

        def add(stats: list[dict]) -> None:
            nonlocal total
            total = add_stats(total, *stats)
            run.work(len(stats))

        run.measure(view, proc, tiles, (self.cfg.seed, pp.octave, pp.pass_), add)
        return self.target, run.executor.share(total)

    def result_record(self) -> dict:
        return {"original_colors": self.cfg.style.original_colors}
