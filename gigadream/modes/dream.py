"""Mode dream: DeepDream as a tile processor, and what the mode prepares per octave.

The processor maps a float tile window to the new pixels of its core by gradient ascent on
the objectives (layers' L2, channels, ImageNet classes: small pieces summed). Every tile of an
octave divides its steps by one gradient scale taken from a sample of the octave's tiles
before its first pass (``DreamMode.begin_octave``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Mode, PassPlan, Run
from .common import agreed, check_layer, gpu_batch, worker_resolution
from .far import far_radius
from .. import archs
from ..errors import ConfigError
from ..tiling import Box, grid


# Objectives are sums over a tile's window divided by this fixed area, not by the window's
# own: a pixel's gradient is then the same in a small window (a sliver of a tile at the
# image's edge, a preview's crop) as in a whole one, as in whole-image DeepDream, whose
# gradient is that of ½ Σ a²; divided by its own area, an edge tile's steps would grow as
# its window shrinks (profiling/preview.md). The value only keeps the loss near 1:
# it cancels in the step, which divides by the octave's mean |g| (``grad_scale``).
OBJECTIVE_PIXELS = 512 * 512


@dataclass(frozen=True)
class LayerL2:
    """DeepDream objective of one layer: ½ Σ a², per channel and per ``OBJECTIVE_PIXELS``
    input pixels, so weights compare across layers of different depth and width."""

    layer: str
    weight: float = 1.0
    pooled = False

    def __call__(self, acts: dict, n_pixels: int):
        a = acts[self.layer].float()         # bf16 under autocast: sum in fp32
        return self.weight * 0.5 * a.pow(2).sum() / (a.shape[1] * n_pixels)


@dataclass(frozen=True)
class Channel:
    """One channel of a layer (``block11:37``): its activation summed, per
    ``OBJECTIVE_PIXELS`` input pixels."""

    layer: str
    channel: int
    weight: float = 1.0
    pooled = False

    def __call__(self, acts: dict, n_pixels: int):
        return self.weight * acts[self.layer][:, self.channel].float().sum() / n_pixels


@dataclass(frozen=True)
class ClassLogits:
    """Guided dreaming: the mean logit of ImageNet classes, as the tile's window sees them
    (summed over a batch of windows, as the other objectives are: each window's gradient is
    then its own).

    The logits are the classifier's average over its last map's cells, so each cell's
    share of the gradient is 1/cells: a window clipped by the image's edge (fewer cells)
    would step harder than its neighbours (``profiling/literal.md``, Seams). ``pooled``
    marks it for ``DeepDream.gradient``, which multiplies it by the window's cells over an
    ``OBJECTIVE_PIXELS`` square's: a sum over the cells per fixed area, as ``LayerL2`` is."""

    classes: tuple[int, ...]
    weight: float = 1.0
    layer: str = "logits"
    pooled = True

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
    ``grad_scale``, the mean |g| over the octave's tiles, taken before its first pass
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
    far_sigma: float = 0.0       # stat measures the gradient as keep_far keeps it (``far``)
    smooth: float = 0.0          # σ (px) of the Gaussian blur of each step
    decorrelate: bool = False    # steps preconditioned in decorrelated colours (``shaped``)
    edge_guard: float = 0.0      # levels/px of the photo's gradient where a step is halved
    source: Any = None           # ArrayView of the octave's photo (edge_guard's edges)
    pass_seed: tuple = ()        # (seed, octave, pass): one jitter for every tile (guided)
    batchable = True

    def shaped(self, g, guards):
        """The step's direction from the objective's gradient g (N, C, h, w), in this order:

        - ``smooth``: a Gaussian blur, so a step has no pixel-sized peaks (lucid's
          transformation robustness does this implicitly): with it and many coarse steps a
          guided dream grows heads a person sees, not a texture that fools the network
          (``profiling/literal.md``);
        - ``decorrelate``: g' = C Cᵀ g per pixel, C the square root of ImageNet's colour
          covariance (lucid's ``color_correlation_svd_sqrt``): gradient ascent in
          decorrelated colour space, whose steps lean toward luminance and away from the
          green-magenta axis that raw RGB steps fringe contours with;
        - ``guards`` (``edge_guard``): each window's weight 1 / (1 + (e/T)²), e the photo's
          gradient magnitude within 2 px (``guard_weights``). A dream grows most along the
          photo's contours, where the layers answer hardest, and each pass reinforces the
          same contour (its features do not move with the jitter, flat regions' do), so
          without it the change piles up within a few px of strong edges: halos
          (``profiling/literal.md``).
        """
        if self.smooth:
            g = gaussian_blur(g, self.smooth)
        if self.decorrelate:
            import torch
            m = torch.as_tensor(DECORRELATE, dtype=g.dtype, device=g.device)
            g = torch.einsum("ij,njhw->nihw", m, g)
        if guards is not None:
            g = g * guards
        return g

    def guard_weights(self, tiles):
        """(N, 1, h, w) weights on the device from the photo's windows of ``tiles``, or
        None without ``edge_guard``."""
        if not self.edge_guard or self.source is None:
            return None
        import torch
        import torch.nn.functional as F

        from ..models import device
        photo = torch.from_numpy(np.stack([self.source.read(t.window) for t in tiles])).to(device())
        grey = gaussian_blur(photo.float().mean(1, keepdim=True), 1.0)
        gy = F.pad(grey[:, :, 2:] - grey[:, :, :-2], (0, 0, 1, 1), mode="replicate")
        gx = F.pad(grey[:, :, :, 2:] - grey[:, :, :, :-2], (1, 1, 0, 0), mode="replicate")
        e = F.max_pool2d(torch.sqrt(gx * gx + gy * gy) / 2, 5, 1, 2)   # within 2 px
        return 1.0 / (1.0 + (e / self.edge_guard) ** 2)

    def gradient(self, x):
        """Objective gradient w.r.t. x (N, C, h, w); returns (grad, seconds in the model).
        The network runs in ``precision``, the objectives and the gradient are fp32. Every
        objective is a sum over the batch, so each window's gradient is its own."""
        import torch

        from ..steps import model_step
        from ..models import as_input, autocast, device, dream_precision, get_model

        dev = device()
        net = get_model(self.model, self.weights, dev)
        x = as_input(x.detach().to(dev)).requires_grad_(True)
        with model_step():
            t = time.perf_counter()
            with autocast(dev, dream_precision(self.precision, self.model, dev)):
                acts = net(x, frozenset(o.layer for o in self.objectives))
            cells = _pooled_share(self.model, x.shape[-2:])
            loss = sum(o(acts, OBJECTIVE_PIXELS) * (cells if o.pooled else 1.0)
                       for o in self.objectives)
            (g,) = torch.autograd.grad(loss, x)
            if g.is_cuda:
                torch.cuda.synchronize()   # CUDA runs asynchronously: time the work, not its launch
            return g, time.perf_counter() - t

    def stat(self, window: np.ndarray, core: Box) -> dict:
        """Σ|g| and pixel count over the core: reduced over tiles into ``grad_scale``. With
        ``far_sigma``, g is high-passed as ``far.KeepFar`` high-passes the steps (the window
        needs ``far.far_radius`` px more around the core): each kept step is then
        ``step_size`` long on average, as a whole step is without keep_far."""
        return self.stat_batch([window], [core])[0]

    def stat_batch(self, windows: list[np.ndarray], cores: list[Box], tiles=None) -> list[dict]:
        """``stat`` of windows of one shape, in one model step; the step's shape
        (``shaped``) as the tiles' passes give it (``tiles``: where their photo is)."""
        import torch

        g, seconds = self.gradient(_batch(windows))
        g = self.shaped(g, None if tiles is None else self.guard_weights(tiles))
        if self.far_sigma:
            from .far import highpass
            g = highpass(g, self.far_sigma)
        out = []
        for gi, core in zip(g, cores):
            gc = gi[(slice(None), *core.slices())]
            out.append({"grad_abs_sum": float(gc.abs().sum(dtype=torch.float64)),
                        "count": gc.numel(), "model_s": seconds / len(windows)})
        return out

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator):
        return self.batch([window], [core], [rng])[0]

    def process(self, windows, tiles, rngs, data=None) -> list[tuple[np.ndarray, dict]]:
        return self.batch(windows, [t.core.relative_to(t.window) for t in tiles], rngs,
                          self.guard_weights(tiles))

    def batch(self, windows: list[np.ndarray], cores: list[Box],
              rngs: list[np.random.Generator], guards=None) -> list[tuple[np.ndarray, dict]]:
        """Windows of one shape dreamed together: each step is one forward and backward of
        the batch (a GPU is busier with several windows than with one; ``engine.batch``).
        A tile's pixels are those it gets alone, to float rounding.

        The jitter: each window is rolled by up to ``jitter`` px a step, and the roll's
        wrap-around seam stays in the margin. Two ways to draw it:

        - a guided dream (``pass_seed``, a classifier's logits): one shift per step for every
          tile of the pass, as a whole-image step rolls the whole image once. A stride-32
          classifier answers a shift modulo 32 differently (aliasing), so tiles shifted each
          their own way meet with differently shaped steps: seams (``profiling/literal.md``).
          Windows start on the stride (``align``), so one shift gives every tile the same
          phase;
        - a layer objective: each window its own generator's. There the margin is the
          layers' receptive radius, and the roll's seam, as near the core as the jitter
          allows, reaches the core's edge pixels a little; drawn per tile that error is
          spread, where one shared draw puts it at every tile's edge at once (test_dream's
          seam bound fails then; ``profiling/literal.md``).
        """
        import torch

        from ..models import device
        # (N, C, h, w), 0-255, a copy in the models' channels-last layout: the steps below
        # then never change layout (each change is a copy)
        x = _batch(windows).to(device(), memory_format=torch.channels_last, copy=True)
        h, w = windows[0].shape[1:]
        model_s = 0.0
        passes = np.random.default_rng([*self.pass_seed, 0x717]) if self.pass_seed else None
        for _ in range(self.iterations):
            # Jitter inside the window: the wrap-around seam lands in the margin when
            # jitter < margin, so the core never sees it.
            shifts = ([_shift(passes, self.jitter, h, w)] * len(rngs) if passes is not None
                      else [_shift(rng, self.jitter, h, w) for rng in rngs])
            g, s = self.gradient(_roll(x, shifts))
            model_s += s
            g = self.shaped(_roll(g, [(-dy, -dx) for dy, dx in shifts]), guards)
            x += (self.dose * self.step_size / self.grad_scale) * g
            x.clamp_(0.0, 255.0)
        # planar again, as callers and store.write expect (a 512 px core: 0.6 ms)
        return [(xi[(slice(None), *core.slices())].contiguous().cpu().numpy(),
                 {"model_s": model_s / len(windows)}) for xi, core in zip(x, cores)]


# lucid's color_correlation_svd_sqrt (the square root of ImageNet's RGB covariance), its
# columns scaled to at most unit norm; DECORRELATE = C Cᵀ (``DeepDream.shaped``).
_C = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_C = _C / np.linalg.norm(_C, axis=0).max()
DECORRELATE = (_C @ _C.T).astype(np.float32)


def gaussian_blur(x, sigma: float):
    """Separable Gaussian blur of (N, C, h, w), taps to 3σ, reflected at the edges (a
    window's sit in its margin: the core is further than 3σ from them at dream's margins).
    Depthwise convolutions: for the σ of 1-2 px used here, far cheaper than ``far.lowpass``'s
    matrix products, which pay off at keep_far's σ of tens of px."""
    import torch
    import torch.nn.functional as F
    r = max(int(3 * sigma + 0.5), 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def _shift(rng: np.random.Generator, jitter: int, h: int, w: int) -> tuple[int, int]:
    """A random roll of at most ``jitter`` px each way, for an (h, w) window."""
    dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
    return (dy % h if h else 0), (dx % w if w else 0)


def _pooled_share(model: str, shape) -> float:
    """A window's cells in the classifier's last map (its average pool's divisor) over
    those of an ``OBJECTIVE_PIXELS`` square (``ClassLogits``)."""
    if "logits" not in archs.layer_names(model):
        return 1.0
    s = archs.stride(model, "logits")
    side = math.isqrt(OBJECTIVE_PIXELS)
    return math.ceil(shape[0] / s) * math.ceil(shape[1] / s) / math.ceil(side / s) ** 2


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


def dream_layers(cfg) -> tuple[tuple[str, float], ...]:
    """``dream.layers`` with ``auto`` resolved: the model's classic layer, none when the
    dream is guided by classes, or with ``dream.literal`` t the layers at t along the
    model's ladder (``archs.literal_layers``)."""
    if cfg.dream.layers != "auto":
        return cfg.dream.layers
    if cfg.dream.classes:
        return ()
    if cfg.dream.literal is not None:
        return archs.literal_layers(cfg.model.name, cfg.dream.literal)
    return tuple((n, 1.0) for n in archs.DEFAULT_LAYERS[cfg.model.name]["dream"])


class DreamMode(Mode):
    uses_model = True
    naive = True

    def __init__(self, cfg, frame=None, prior=None):
        super().__init__(cfg, frame, prior)
        self.precision = cfg.model.precision      # resolved on the workers (begin_octave)
        self.grad_scale = 1.0                      # the octave's (begin_octave)
        self.source = None                         # the octave's photo (begin_octave)

    def check_settings(self) -> None:
        """Layers and classes the model has, something to dream of, and room in the margin
        for the jitter."""
        cfg, m = self.cfg, self.cfg.model
        for layer, _ in dream_layers(cfg):
            check_layer("dream.layers", m.name, layer)
        if cfg.dream.classes and "logits" not in archs.layer_names(m.name):
            raise ConfigError(f"dream.classes: {m.name} has no ImageNet classifier; use "
                              "model.name=efficientnet_lite0 (bundled) or googlenet")
        if not dream_layers(cfg) and not cfg.dream.classes:
            raise ConfigError("dream: nothing to dream of; set dream.layers or dream.classes")
        # Jitter rolls the window round; the roll's seam (and the network's border) stays in
        # the network's margin, so the jitter is capped below it: a margin of 0 leaves it
        # nowhere but the tile itself.
        if self.margin == 0 and cfg.dream.jitter > 0:
            held = " (all of it keep_far's)" if self.far_margin else ""
            raise ConfigError(f"tiling.margin: {self.window_margin}{held} leaves dream.jitter "
                              f"({cfg.dream.jitter} px) no room: its wrap-around seam "
                              "would fall inside every tile; set tiling.margin=auto (or a "
                              "few px: the jitter stays below it), or dream.jitter=0")
        super().check_settings()

    @property
    def layers(self) -> list[str]:
        out = [n.partition(":")[0] for n, _ in dream_layers(self.cfg)]
        return out + (["logits"] if self.cfg.dream.classes else [])

    @property
    def align_end(self) -> bool:
        """A dream step runs faster on windows that end on the stride too."""
        return True

    @property
    def passes_per_octave(self) -> int:
        return self.cfg.dream.passes

    @property
    def iterations(self) -> int:
        return self.cfg.dream.iterations

    def octave_passes(self, k: int, octaves: int) -> int:
        """``passes`` at the finest octave (k = 0), ``coarse_passes`` at the coarsest, the
        octaves between on the geometric steps from one to the other: a coarse octave's
        features span many of the final pixels, and steps there grow the forms a person
        recognises (eyes, heads) where the fine octaves add only their texture. ``auto``:
        ``passes``, or with ``dream.literal`` t, passes · (1 + 5t): the literal end's deep
        layers need the coarse octaves' steps to grow whole forms, not only their texture."""
        d = self.cfg.dream
        coarse = d.coarse_passes
        if coarse == "auto":
            # dream.literal's end grows its forms at the coarse octaves: up to 6× the passes
            coarse = d.passes if d.literal is None else round(d.passes * (1 + 5 * d.literal))
        if octaves == 1:
            return d.passes
        return max(1, round(d.passes * (coarse / d.passes) ** (k / (octaves - 1))))

    @property
    def calibration_tiles(self) -> int:
        return self.cfg.dream.calibration_tiles

    def step_precision(self, device: str) -> str:
        """``model.precision`` as ``device`` resolves it."""
        from ..models import dream_precision
        return dream_precision(self.cfg.model.precision, self.cfg.model.name, device)

    def warm_up(self):
        from ..models import load_on_device
        return load_on_device(self.cfg.model.name, self.cfg.model.weights)

    def resolve(self, executor) -> dict:
        """The device kind and precision every worker resolves, and the batch they imply.
        Workers that disagree resolve to 'mixed': their tiles differ, so no resume matches."""
        m = self.cfg.model
        found = executor.each_worker(worker_resolution, m.precision, m.name)
        device, precision, threads = (agreed({f[i] for f in found}) for i in range(3))
        batch = self.cfg.engine.batch
        if batch == "auto":
            window = self.cfg.tiling.tile + 2 * self.window_margin
            batch = gpu_batch(window) if device == "cuda" else 1
        return {"device": device, "precision": precision, "batch": batch, "threads": threads}

    def begin_octave(self, run: Run, octave: int, view, source) -> None:
        """The octave's gradient scale: computed once, kept in the run record. A run over a
        part of an image (``run.shared``) takes the whole image's into it (``part_scale``)."""
        if run.resolved["precision"] != "mixed":
            self.precision = run.resolved["precision"]
        self.source = source
        own = run.recorded("grad_scale", str(octave), lambda: self.calibrate(run, octave, view))
        whole = run.shared.get("coarsest_grad_scale")
        self.grad_scale = own if whole is None else self.part_scale(run, octave, own, whole)

    def part_scale(self, run: Run, octave: int, own: float, whole: dict) -> float:
        """The gradient scale of a part of an image (a preview's crop) at ``octave``: its own
        (``own``, taken on its octave's start as a whole run takes the whole's)
        times the whole image's over the part's own at the coarsest octave (``whole``:
        ``shared``), where both are taken on the source alone.

        Why not the part's own: it is a mean over the part's tiles, so a busy part would
        dream more gently than the whole run paints it there. Why not the whole image's
        taken on its source pyramid: at finer octaves the run measures its octave's
        start, which holds the coarser octaves' dream, whose gradients exceed the source's
        by a factor that depends on the image and its scale. The ratio at the coarsest
        octave corrects the part's busyness; the part's own octave starts carry the dream's
        growth (the estimators compared: ``profiling/preview.md``)."""
        coarsest = next(iter(whole))
        part = run.recorded("grad_scale", coarsest, lambda: own)   # begin_octave's, by now
        return own * whole[coarsest] / part

    def shared(self, run: Run, sources: list) -> dict:
        """The whole image's gradient scale at its coarsest octave (taken on its source,
        as the whole run takes it there: the same seeded sample of the same grid), for
        a part's ``part_scale``."""
        if run.resolved.get("precision", "mixed") != "mixed":
            self.precision = run.resolved["precision"]
        k = len(sources) - 1
        self.source = sources[k]
        return {"coarsest_grad_scale": {str(k): self.calibrate(run, k, sources[k])}}

    def calibrate(self, run: Run, octave: int, view) -> float:
        """Mean |gradient| over a seeded sample of the octave's tiles: the step normaliser
        that every tile of the octave shares (DeepDream's whole-image mean |g|, estimated)."""
        cfg = self.cfg
        run.stage("calibrate", f"octave {octave}")
        sigma = self.far_sigma(octave)
        tiles = grid(view.shape, cfg.tiling.tile, (0, 0), self.margin + far_radius(sigma),
                     self.align, self.wrap, self.align_end)
        rng = np.random.default_rng([cfg.seed, octave, 0xCA1])
        pick = sorted(rng.choice(len(tiles), min(len(tiles), self.calibration_tiles),
                                 replace=False))
        stats = run.measure(view, self.make(1.0, sigma), [tiles[i] for i in pick],
                            (cfg.seed, octave, -1))
        total = sum(s["grad_abs_sum"] for s in stats)
        count = sum(s["count"] for s in stats)
        return max(total / max(count, 1), 1e-12)

    def processor(self, pp: PassPlan, first: bool) -> "DeepDream":
        return self.make(self.grad_scale, pp=pp)

    def recorded_processor(self, pp: PassPlan, record: dict) -> "DeepDream":
        """The processor with the gradient scale the run recorded for ``pp``'s octave."""
        return self.make(record.get("grad_scale", {}).get(str(pp.octave), 1.0), pp=pp)

    def naive_gradient(self):
        return self.make().gradient

    def make(self, grad_scale: float = 1.0, far_sigma: float = 0.0,
             pp: PassPlan | None = None) -> "DeepDream":
        """The processor of pass ``pp`` with its octave's ``grad_scale`` (``far_sigma``: its
        ``stat`` measures the gradient that keep_far keeps)."""
        from ..classes import indices
        cfg = self.cfg
        # Jitter wraps the window round; below the margin, the wrap seam stays out of the core
        # (``check_settings`` refuses a margin of 0 with jitter).
        jitter = min(cfg.dream.jitter, max(self.margin - 1, 0))
        objectives = tuple(objective(n, w) for n, w in dream_layers(cfg))
        if cfg.dream.classes:
            objectives += (ClassLogits(indices(cfg.dream.classes)),)
        return DeepDream(cfg.model.name, cfg.model.weights, objectives, cfg.dream.iterations,
                         cfg.dream.step_size * self.later_step(pp.octave if pp else 0),
                         jitter, self.margin,
                         grad_scale, cfg.dream.dose, self.precision, far_sigma,
                         cfg.dream.smooth, cfg.dream.decorrelate, cfg.dream.edge_guard,
                         self.source if cfg.dream.edge_guard else None,
                         (cfg.seed, pp.octave, pp.pass_) if pp and cfg.dream.classes else ())

    def later_step(self, octave: int) -> float:
        """The step of a sequence's later frame at ``octave`` relative to a still's:
        (1 − blend)·P/p, P a still's passes at that octave, p the frame's. Each frame keeps
        ``blend`` of the dream it starts from and adds its own passes' steps, so the dream
        settles where D = p·step'/(1 − blend): a still's P·step. ``blend`` then sets only
        how much a frame may change, and so how little the dream flickers, not how strong
        it is. Per octave: with ``coarse_passes``, the coarse octaves' P is many times the
        finest's, and the forms they grow would fade frame by frame at the finest's."""
        if self.prior is None:
            return 1.0
        blend, n = self.cfg.sequence.blend, self.cfg.dream.octaves
        return (max(1.0 - blend, 0.05) * self.octave_passes(octave, n)
                / self.later_passes(octave, n))
