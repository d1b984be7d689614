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

from .base import Mode, PassPlan, Run
from .common import agreed, check_layer, gpu_batch, worker_resolution
from .. import archs
from ..errors import ConfigError
from ..storage.location import is_url
from ..tiling import Box

# Style images are used at most this long (the Gram target of a larger one costs gigabytes).
STYLE_MAX_SIDE = 1024


def style_model(name: str, weights: str | None, device: str | None = None):
    """The backbone style runs on ``device`` (None: the process's, ``devices.device``: a
    worker's, the one its setup loaded), its convolutions padding the image's borders by
    replication: with zeros there, the optimiser darkens the outer pixels to match the
    style's Grams of the padded edge."""
    from ..devices import device as own_device
    from ..models import get_model
    return get_model(name, weights, device or own_device(), "replicate")


def _stack(arrays: list[np.ndarray]):
    """Arrays (C, h, w) of one shape as one (N, C, h, w) tensor on the CPU (one: no copy)."""
    import torch
    return torch.from_numpy(arrays[0][None] if len(arrays) == 1 else np.stack(arrays))


def _synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): times are then the
    work's, not its launch's."""
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize(device)


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
    device: str | None = None  # None: the worker's (``devices.device``)
    # A sequence's later frame (Ruder et al. 2016): the previous result carried along the
    # flow (a view of the frame's shape) that the temporal loss keeps the pixels near,
    # where the flow is reliable (the pass data's third item, at the flow's size).
    prior: object = None
    temporal_weight: float = 0.0
    window_dtype = np.float32

    @property
    def batchable(self) -> bool:
        """Tiles of one shape optimise together (one forward and backward for them all,
        ``engine.batch``) with Adam: its update is elementwise, so each tile's pixels move as
        they would alone. L-BFGS's line search and history span all its parameters: there
        tiles go one at a time."""
        return self.optimizer == "adam" and not self.circular

    @property
    def _device(self) -> str:
        from ..devices import device
        return self.device or device()

    def _net(self):
        return style_model(self.model, self.weights, self._device)

    @property
    def _layers(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.content_layers + self.style_layers)

    def stat(self, window: np.ndarray, core: Box) -> dict:
        """The tile's Gram sums and cell counts per style layer, over its core: summed over
        the tiles of a pass into the canvas's global Gram (``add_stats``)."""
        return self.stat_batch([window], [core])[0]

    def stat_batch(self, windows: list[np.ndarray], cores: list[Box], tiles=None) -> list[dict]:
        """``stat`` of windows of one shape, in one forward (``tiles``, the engine's, unused). The Gram sums are float64, on
        the device, from the fp32 features: a pass's global Gram is the sum of hundreds of
        tiles' sums of up to 10⁵ cells each, and in float64 it is the whole image's Gram
        whatever the grid (the tiled-equals-whole premise, to ~1e-12); the per-step Gram of
        ``optimise`` is fp32 (no autocast, no TF32 in matrix products: torch's default)."""
        import torch

        from ..steps import model_step
        dev = self._device
        with model_step(), torch.no_grad():
            t = time.perf_counter()
            acts = self._net()(_stack(windows).to(dev), self._layers, self.pooling)
            _synchronize(dev)
            forward_s = time.perf_counter() - t
        out = []
        for i, core in enumerate(cores):
            grams = {}
            for layer, _ in self.style_layers:
                f = _cells(acts[layer][i:i + 1], core, archs.stride(self.model, layer))
                grams[layer] = (_gram_sum(f.double()).cpu().numpy(), f.shape[-1] * f.shape[-2])
            out.append({"grams": grams, "model_s": forward_s / len(windows)})
        return out

    def process(self, windows, tiles, rngs, data) -> list[tuple[np.ndarray, dict]]:
        """Tiles of one window shape (several where ``batchable``): those whose cores sit
        alike in their windows optimise together; ``data`` is the pass's (style Grams,
        canvas Grams or None)."""
        target, canvas, reliable = data if len(data) == 3 else (*data, None)
        cores = [t.core.relative_to(t.window) for t in tiles]
        contents = [self.content.read(t.window) for t in tiles]
        priors = [None] * len(tiles)
        if self.prior is not None and self.temporal_weight:
            priors = [self._temporal_target(t, reliable) for t in tiles]
        alike: dict = {}
        for i, core in enumerate(cores):
            alike.setdefault(core if self.batchable else i, []).append(i)
        out: list = [None] * len(windows)
        for idx in alike.values():
            results = self.optimise([windows[i] for i in idx], cores[idx[0]],
                                    [rngs[i] for i in idx], [contents[i] for i in idx],
                                    target, canvas, [priors[i] for i in idx])
            for i, r in zip(idx, results):
                out[i] = r
        return out

    def _temporal_target(self, tile, reliable) -> tuple[np.ndarray, np.ndarray]:
        """(the previous result carried into the tile's core (C, h, w), the flow's
        reliability there (h, w) in 0-1): what the temporal loss compares the core with."""
        from ..flow import tile_mask
        mask = (np.ones(tile.core.shape, np.float32) if reliable is None else
                tile_mask(reliable, tile.core, self.prior.shape, self.prior.wrap))
        return self.prior.read(tile.core), mask

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator,
                 content: np.ndarray | None = None, target: dict | None = None,
                 canvas: dict | None = None):
        """Optimise the core's pixels; ``content`` is the content image's window, ``target``
        the style Grams per layer, ``canvas`` the pass's ``add_stats`` (None: whole image)."""
        return self.optimise([window], core, [rng], [content], target, canvas)[0]

    def optimise(self, windows: list[np.ndarray], core: Box, rngs: list[np.random.Generator],
                 contents: list[np.ndarray], target: dict | None,
                 canvas: dict | None, priors: list | None = None) -> list[tuple[np.ndarray, dict]]:
        """Windows of one shape whose cores sit at ``core``, optimised together on the
        device: one forward and backward of the batch a step; each tile's loss is its own
        (its Gram swapped into the canvas's, its content, its total variation, and in a
        sequence's later frame its temporal term: ``priors``, each tile's
        ``_temporal_target`` or None), and the batch's loss is their sum, so each tile's
        gradient is its own."""
        import torch

        from ..steps import model_step
        dev = self._device
        net = self._net()
        n = len(windows)
        fixed = _stack(windows).to(dev)                          # (N, C, h, w), 0-255
        cs = core.slices()
        if self.random_init:   # neural-style's -init random: near-flat noise around mid-grey
            noise = [rng.normal(127.5, 8.0, size=windows[0].shape).astype(np.float32)
                     for rng in rngs]
            start = _stack(noise).to(dev)[(slice(None), slice(None), *cs)]
        else:
            start = fixed[(slice(None), slice(None), *cs)]
        x = start.clone().requires_grad_(True)                   # (N, C, core h, core w)
        if self.circular:   # window column j is core column (j - core.x0) mod w, every row
            assert (core.y0, core.y1) == (0, windows[0].shape[1]), "a whole octave's core"
            around = torch.from_numpy((np.arange(windows[0].shape[2]) - core.x0)
                                      % (core.x1 - core.x0)).to(dev)
        norm = _normalize_grad() if self.normalize_gradients else (lambda t: t)
        strides = {name: archs.stride(self.model, name) for name in self._layers}

        with model_step(), torch.no_grad():
            c_acts = net(_stack(contents).to(dev),
                         frozenset(name for name, _ in self.content_layers), self.pooling)
            p = {name: _cells(c_acts[name], core, strides[name]) for name, _ in self.content_layers}
            del c_acts
        grams = {name: torch.from_numpy(target["grams"][name]).to(dev)
                 for name, _ in self.style_layers}
        energy = {name: float(a.pow(2).sum()) for name, a in grams.items()}       # ‖A‖²
        scales = {name: target["scales"][name] for name, _ in self.content_layers}
        # Ruder et al.'s temporal loss: the mean over the core of c·(x − ω)², ω the previous
        # result carried along the flow, c its reliability; in units of the full 0-255 range
        # as the total variation is. Departure: a mean, not a sum over pixels (the paper's
        # weight assumes its image size), so the weight holds at every tile and frame size.
        temporal = None
        if priors and priors[0] is not None:
            temporal = (_stack([p for p, _ in priors]).to(dev),
                        _stack([m[None] for _, m in priors]).to(dev))
        offsets: list[dict] = [{} for _ in range(n)]   # G_global − Ĝ_tile(x₀), at the first step
        model_s = [0.0]
        losses: list = [None] * n                      # each tile's, at the last step

        def tile_loss(i: int, acts: dict):
            """Tile i's loss; ``acts`` are the batch's. A lone tile's terms take the tensors
            themselves, not views of them: the same autograd graph, the same bits."""
            def own(t):
                return t if n == 1 else t[i:i + 1]
            loss = x.new_zeros(())
            for name, w in self.content_layers:
                f = _cells(norm(own(acts[name])), core, strides[name])
                loss = loss + self.content_weight * w * (f - own(p[name])).pow(2).mean() / scales[name]
            for name, w in self.style_layers:
                f = _cells(norm(own(acts[name])), core, strides[name])
                cells = f.shape[-1] * f.shape[-2]
                if cells == 0:       # a sliver of a tile thinner than the layer's stride
                    continue
                g = _gram_sum(f) / (f.shape[1] * cells)
                if name not in offsets[i]:
                    offsets[i][name] = (0.0 if canvas is None else
                                        torch.from_numpy(canvas["grams"][name][0] / (f.shape[1] * canvas["grams"][name][1])).float().to(dev)
                                        - g.detach())
                loss = loss + self.style_weight * w * (g + offsets[i][name] - grams[name]).pow(2).sum() / energy[name]
            if self.tv_weight:
                xi = own(x)
                dy, dx = xi[..., 1:, :] - xi[..., :-1, :], xi[..., :, 1:] - xi[..., :, :-1]
                if self.circular:       # and the step from the last column to the first
                    dx = torch.cat([dx, xi[..., :, :1] - xi[..., :, -1:]], dim=-1)
                tv = (dy.pow(2).mean() + dx.pow(2).mean()) / 255.0 ** 2
                loss = loss + self.tv_weight * tv
            if temporal is not None:
                prior, mask = own(temporal[0]), own(temporal[1])
                step = (mask * (own(x) - prior).pow(2)).mean() / 255.0 ** 2
                loss = loss + self.temporal_weight * step
            return loss

        def closure():
            opt.zero_grad()
            with model_step():
                t = time.perf_counter()
                if self.circular:
                    win = x[..., around]
                else:
                    win = fixed.clone()
                    win[(slice(None), slice(None), *cs)] = x
                acts = net(win, self._layers, self.pooling)
                losses[:] = [tile_loss(i, acts) for i in range(n)]
                loss = losses[0]
                for other in losses[1:]:
                    loss = loss + other
                loss.backward()
                _synchronize(dev)
                model_s[0] += time.perf_counter() - t      # forward and backward
            return loss

        if self.optimizer == "adam":
            # crowsonkb's betas: the second moment adapts within a pass's few steps. Its
            # update is elementwise: a batch's tiles move as each would alone.
            opt = torch.optim.Adam([x], lr=self.learning_rate, betas=(0.9, 0.99))
            for _ in range(self.iterations):
                closure()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 255.0)
            final = [float(v.detach()) for v in losses]
        else:
            # neural-style's L-BFGS (one tile: not ``batchable``): no tolerance stops, a
            # bounded history (per tile, each pair of history vectors costs two windows of
            # memory)
            assert n == 1, "L-BFGS optimises one tile at a time"
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=self.iterations,
                                    history_size=min(self.iterations, 20),
                                    tolerance_grad=-1, tolerance_change=-1)
            final = [float(opt.step(closure).detach())]
        out = x.detach().clamp(0.0, 255.0).cpu().numpy()
        return [(out[i], {"model_s": model_s[0] / n, "loss": final[i]}) for i in range(n)]


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
    return style_pixels(path, long_side).astype(np.float32)


def style_pixels(path: str, long_side: int) -> np.ndarray:
    """(3, h, w) uint8 sRGB of ``load_style_image``: what the client sends the worker that
    computes the targets (at most 3 MB an image), so workers on other machines need no copy
    of the file."""
    from ..ingest import open_image
    im = open_image(path, role="style image")
    scale = min(1.0, long_side / max(im.width, im.height))
    if scale < 1.0:
        im = im.resize(scale, kernel="lanczos3")
    return np.ascontiguousarray(im.numpy().transpose(2, 0, 1))


def style_targets(images: tuple[str, ...], blend: tuple[float, ...] | None, model: str,
                  weights: str | None, pooling: str, layers: tuple[tuple[str, float], ...],
                  long_side: int, device: str | None = None) -> dict:
    """What a tile optimises towards (``targets_of``), from the style image files at
    ``long_side``."""
    return targets_of([load_style_image(p, long_side) for p in images], blend, model, weights,
                      pooling, layers, device)


def targets_of(pixels: list[np.ndarray], blend: tuple[float, ...] | None, model: str,
               weights: str | None, pooling: str, layers: tuple[tuple[str, float], ...],
               device: str | None = None) -> dict:
    """What a tile optimises towards: ``grams``, the style Gram per layer of ``layers``, each
    image's (``pixels``: (3, h, w) float32 0-255) Gram normalised by C·H·W, blended by weight
    (neural-style's -style_blend_weights, normalised to sum 1); and ``scales``, the mean
    square activation of every layer of the model over the style images (blended alike), the
    content loss's normaliser. On ``device`` (None: the worker's). ``pixels`` may be uint8
    (``style_pixels``): they are taken as float32."""
    import torch

    from ..devices import device as own_device
    from ..steps import model_step
    dev = device or own_device()
    net = style_model(model, weights, dev)
    blend = blend or (1.0,) * len(pixels)
    total = sum(blend)
    every = frozenset(o.name for o in archs.ops(model) if o.kernel is not None)   # spatial maps
    grams: dict = {}
    scales: dict = {}
    with model_step():   # beside the tile tasks of the worker's other thread; decoding before
        for p, w in zip(pixels, blend):
            with torch.no_grad():
                acts = net(torch.from_numpy(p.astype(np.float32))[None].to(dev), every,
                           pooling)
            for n, f in acts.items():
                scales[n] = scales.get(n, 0.0) + float(f.double().pow(2).mean()) * (w / total)
            for n, _ in layers:
                f = acts[n]
                g = (_gram_sum(f) / f[0].numel()).cpu().numpy() * (w / total)
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
class OriginalColors:
    """A result view in the content's colours (``original_colors``), computed as it is read
    (a ``views.ComputedView``, whose uint8 and uint16 reads it borrows: this module imports
    no store, so that its processor runs where torch is all there is, ``gpu_check``)."""

    styled: object          # ArrayView: the styled canvas
    content: object         # ArrayView: the source at the same size

    @property
    def shape(self) -> tuple[int, int]:
        return self.styled.shape

    def read(self, box: Box, dtype=np.float32) -> np.ndarray:
        """float32 pixels, whichever ``dtype`` (computed in float32)."""
        return luminance_transfer(self.styled.read(box), self.content.read(box))

    def read_uint8(self, box: Box) -> np.ndarray:
        from ..storage.views import ComputedView
        return ComputedView.read_uint8(self, box)

    def read_uint16(self, box: Box) -> np.ndarray:
        from ..storage.views import ComputedView
        return ComputedView.read_uint16(self, box)


def layer_list(cfg, key: str) -> tuple[tuple[str, float], ...]:
    """``style.content_layers`` or ``style.style_layers`` with ``auto`` resolved."""
    v = getattr(cfg.style, key)
    if v != "auto":
        return v
    return tuple((n, 1.0) for n in archs.DEFAULT_LAYERS[cfg.model.name][key.split("_")[0]])


class StyleMode(Mode):
    """Style stylises its coarsest octave whole (one tile, ``whole_iterations`` steps), then
    refines each finer octave tile by tile (Gatys et al. 2017, "Controlling Perceptual
    Factors", section 5: coarse-to-fine for high resolutions). Before each tiled pass the
    canvas's Gram is reduced from every tile's (``pass_data``)."""

    uses_model = True
    needs_pass_data = True
    sections = ("style",)

    def __init__(self, cfg, frame=None, prior=None):
        super().__init__(cfg, frame, prior)
        self.content = None      # the source at the octave's size (begin_octave)
        self.target = None       # a Dask future of the style's Grams (begin_octave)

    def check_settings(self) -> None:
        """A style image that exists (an object's is checked when the run opens it), one
        blend weight each, whole convolutional layers, and avg pooling on VGG only."""
        s, model = self.cfg.style, self.cfg.model.name
        if not s.images:
            raise ConfigError("style.images: mode style needs a style image; add "
                              "--set style=PAINTING.jpg")
        for p in s.images:
            if not is_url(p) and not Path(p).is_file():
                raise ConfigError(f"style image {p} not found; give an existing image file "
                                  "with --set style=PATH")
        if s.blend_weights is not None and len(s.blend_weights) != len(s.images):
            raise ConfigError(f"style.blend_weights: {len(s.blend_weights)} weights for "
                              f"{len(s.images)} style images; give one per image")
        for key in ("content_layers", "style_layers"):
            for layer, _ in layer_list(self.cfg, key):
                if ":" in layer:
                    raise ConfigError(f"style.{key}: {layer!r}: style uses whole layers, "
                                      "not channels")
                check_layer(f"style.{key}", model, layer)
                if archs.receptive_radius(model, layer) is None:
                    raise ConfigError(f"style.{key}: {layer!r} has no spatial map; pick a "
                                      "convolutional layer")
        if s.pooling == "avg" and not model.startswith("vgg"):
            raise ConfigError(f"style.pooling: avg applies to VGG models only, not {model}")
        super().check_settings()

    def octave_count(self, shape: tuple[int, int]) -> int:
        """Enough octaves that the coarsest is at most ``style.whole_size`` long: it is
        stylised whole."""
        s, n = self.cfg.style, 1
        while max(shape) / s.octave_scale ** (n - 1) > s.whole_size:
            n += 1
        return n

    @property
    def octave_scale(self) -> float:
        return self.cfg.style.octave_scale

    @property
    def layers(self) -> list[str]:
        return [n for key in ("content_layers", "style_layers")
                for n, _ in layer_list(self.cfg, key)]

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
            image_shape(p, role="style image")

    def warm_up(self):
        return functools.partial(style_model, self.cfg.model.name, self.cfg.model.weights)

    def resolve(self, executor) -> dict:
        """The workers' device kind (a GPU's arithmetic differs from a CPU's), threads, and
        batch: ``engine.batch`` auto is dream's on GPUs (``gpu_batch``; style keeps more
        activations, to relu5_1 in fp32, and a batch that does not fit is halved), 1 on
        CPUs and with L-BFGS (not ``batchable``)."""
        found = executor.each_worker(worker_resolution, "fp32", self.cfg.model.name)
        device = agreed({f[0] for f in found})
        batch = self.cfg.engine.batch
        if batch == "auto":
            batch = (gpu_batch(self.cfg.tiling.tile + 2 * self.window_margin)
                     if device == "cuda" and self.cfg.style.optimizer == "adam" else 1)
        return {"device": device, "threads": agreed({f[2] for f in found}), "batch": batch}

    def later_iterations(self, pp: PassPlan) -> int:
        """auto: the still's steps a tile, or a fifth of ``whole_iterations`` where the
        frame is one whole octave (the previous result is most of the way there)."""
        v = self.cfg.sequence.iterations
        if v != "auto":
            return v
        return max(1, pp.iterations // 5) if pp.whole and pp.tiles == 1 else pp.iterations

    def later_plan(self, plans: list[PassPlan]) -> list[PassPlan]:
        """A later frame runs its finest octave only, from the previous result carried
        along the flow (``first_view``): coarse to fine again would start it from the new
        frame's photo and repaint every stroke (Ruder et al. start each frame from the
        warped result and optimise it at the frame's size)."""
        finest = [p for p in plans if p.octave == 0]
        return super().later_plan(finest)

    def first_view(self, source):
        if self.prior is not None and self.prior.view is not None:
            return self.prior.view
        return source

    def octave_plan(self, k: int, shape: tuple[int, int], octaves: int) -> list[PassPlan]:
        if k == octaves - 1:
            return [PassPlan(k, 0, shape, (0, 0), 1, max(shape), self.cfg.style.whole_iterations)]
        return [dataclasses.replace(p, stats=p.tiles > 1)
                for p in super().octave_plan(k, shape, octaves)]

    def begin_octave(self, run: Run, octave: int, view, source) -> None:
        """The style Grams at this octave's size, computed once, on a worker (they stay
        there: each tile task reads them). The style images are decoded here, on the
        client, and travel as pixels: the workers of a cluster on other machines share no
        folder with it (the store may be on object storage). The pixels are the task's
        argument, not scattered data: where the worker holding the Grams dies, Dask computes
        them again elsewhere."""
        s, m = self.cfg.style, self.cfg.model
        self.content = source
        side = style_side(s.style_scale, self.extent(octave, view.shape))
        pixels = [style_pixels(p, side) for p in s.images]
        self.target = run.executor.remote(targets_of, pixels, s.blend_weights, m.name,
                                          m.weights, s.pooling,
                                          layer_list(self.cfg, "style_layers"))

    def processor(self, pp: PassPlan, first: bool) -> StyleTransfer:
        """``first`` marks the run's first pass, where ``init: random`` applies; a whole pass
        needs no margin, unless its x wraps (``circular``)."""
        cfg, s = self.cfg, self.cfg.style
        return StyleTransfer(cfg.model.name, cfg.model.weights,
                             layer_list(cfg, "content_layers"),
                             layer_list(cfg, "style_layers"), s.content_weight,
                             s.style_weight, s.tv_weight, s.optimizer, s.learning_rate,
                             pp.iterations, s.normalize_gradients, s.pooling,
                             0 if pp.whole and not self.wrap else self.margin,
                             random_init=first and s.init == "random" and self.prior is None,
                             content=self.content, circular=pp.whole and self.wrap,
                             prior=self.prior and self.prior.view,
                             temporal_weight=self.cfg.sequence.temporal_weight
                             if self.prior is not None else 0.0)

    def pass_data(self, run: Run, pp: PassPlan, view, proc, tiles: list):
        """(the style's Grams, the canvas's Grams): the canvas's summed from every tile's as
        they arrive, so only the sum is held, however many tiles (each tile's float64 Grams
        are 4.9 MB for VGG16's default layers)."""
        reliable = None
        if self.prior is not None and self.prior.reliable is not None:
            reliable = run.executor.share(self.prior.reliable)
        if not pp.stats:
            return self.target, None, reliable
        run.stage("grams", f"octave {pp.octave} pass {pp.pass_ + 1}")
        total = {"grams": {}}

        def add(stats: list[dict]) -> None:
            nonlocal total
            total = add_stats(total, *stats)
            run.work(len(stats))

        run.measure(view, proc, tiles, (self.cfg.seed, pp.octave, pp.pass_), add)
        return self.target, run.executor.share(total), reliable

    def result_record(self) -> dict:
        return {"original_colors": self.cfg.style.original_colors}
