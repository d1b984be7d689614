"""Keep the far view (``keep_far``): every pass's change loses its low frequencies, so
the result shrunk ``keep_far`` times stays the input shrunk as much, while the detail up close
is as wild as the layers make it.

``KeepFar`` wraps any mode's processor. It has the inner processor paint a wider core (the
tile's core and ``radius`` px around it: every pixel still with the inner margin's context),
then keeps only the high-passed change:

    out = clamp(in + H(inner(in) − in)),    H = (1 − L)², L a Gaussian blur of ``sigma``

and writes the core. H is exact on the core: its taps reach ``radius`` px, all inside the wider
core (at the image's own border, where no tile sees further, the change is mirrored). Tiles
therefore agree where they meet, and the engine's random grids leave no seam.

Why it adds up over a run: each pass's change has no low frequencies, so neither has their
sum, the canvas minus the octave's start. An octave starts from its source plus the coarser
octave's detail, upsampled: that detail was high-passed at the same scale in full-size pixels
(``sigma`` follows the octave: ``far_sigma``), so the low-pass of (canvas − source) stays near
zero from the first octave to the last. Only the clamp to 0-255 adds a little (a bright sky's
detail can only darken it).

The high-pass is a step direction DeepDream may take: H is symmetric with eigenvalues in
[0, 1), so H·g never points against the gradient g; the dream climbs the same objective over
the images whose far view is the input's.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tiling import Box

# σ of the Gaussian in full-size pixels per unit of keep_far. A shrink by F keeps periods
# above 2F px; (1 − L)² with σ = F/4 passes 7 % of a 2F period, 50 % of an F period and 99 %
# of an F/2 period; of F/6, F/4, F/3 and F/2, F/4 raises the layers' activations most per
# level of change in the far view (profiling/keep-far.md).
SIGMA_PER_FACTOR = 0.25
TRUNCATE = 3.0             # the Gaussian's taps reach 3 σ (0.3 % of its weight lies beyond)
POWER = 2                  # (1 − L)²: a sharper cut than 1 − L for twice the reach


def far_sigma(factor: int, octave_scale: float = 1.0) -> float:
    """The low-pass's σ in the pixels of an octave ``octave_scale`` times smaller than the
    image: the far view is set in full-size pixels."""
    return factor * SIGMA_PER_FACTOR / octave_scale


def far_radius(sigma: float) -> int:
    """How far (px) the high-pass of one pixel reaches: the context it needs around a tile."""
    return POWER * math.ceil(TRUNCATE * sigma) if sigma > 0 else 0


def _mirror(n: int, pad: int) -> np.ndarray:
    """Indices of a length-``n`` axis padded by ``pad`` on each side, mirrored at its ends
    (``d c b a | a b c d | d c b a``), for any ``pad``, also longer than the axis."""
    i = np.arange(-pad, n + pad) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


@functools.lru_cache(maxsize=16)
def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32: a Gaussian blur of a length-``n`` axis as a matrix, taps to
    ``TRUNCATE`` σ, mirrored at the ends, each row summing to 1 (a constant passes whole)."""
    r = math.ceil(TRUNCATE * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n))
    rows = np.repeat(np.arange(n), 2 * r + 1)
    cols = _mirror(n, r)[np.arange(n)[:, None] + np.arange(2 * r + 1)].ravel()
    np.add.at(m, (rows, cols), np.tile(k, n))
    return m.astype(np.float32)


def lowpass(x, sigma: float):
    """Gaussian blur of ``x`` (N, C, h, w), separable, mirrored at the edges, as two matrix
    products: a third of the time of torch's depthwise convolutions on a CPU
    (profiling/keep-far.md, "Cost")."""
    import torch

    if math.ceil(TRUNCATE * sigma) == 0:
        return x
    h, w = x.shape[-2:]
    ah = torch.from_numpy(blur_matrix(h, sigma)).to(x.device, x.dtype)
    aw = torch.from_numpy(blur_matrix(w, sigma)).to(x.device, x.dtype)
    return ah @ x @ aw.T


def highpass(x, sigma: float):
    """(1 − L)^POWER x: what a blur of ``sigma`` does not keep. Exact at pixels at least
    ``far_radius(sigma)`` from the array's edges."""
    for _ in range(POWER):
        x = x - lowpass(x, sigma)
    return x


def _wider(core: Box, radius: int, window: Box) -> Box:
    """``core`` grown by ``radius``, within ``window``: clipped only at the image's border
    (the window reaches ``radius`` beyond the core everywhere else)."""
    return Box(max(core.y0 - radius, window.y0), min(core.y1 + radius, window.y1),
               max(core.x0 - radius, window.x0), min(core.x1 + radius, window.x1))


@dataclass(frozen=True)
class KeepFar:
    """``inner``'s pass with the low frequencies of its change removed (``sigma``: the
    Gaussian's σ in this octave's pixels)."""

    inner: Any
    sigma: float

    @property
    def radius(self) -> int:
        return far_radius(self.sigma)

    @property
    def margin(self) -> int:
        return self.inner.margin + self.radius

    @property
    def window_dtype(self):
        return getattr(self.inner, "window_dtype", np.float32)

    @property
    def batchable(self) -> bool:
        return self.inner.batchable

    def stat_batch(self, windows: list[np.ndarray], cores: list[Box], tiles=None) -> list[dict]:
        """The inner's measure over the tiles' own cores (dream's gradient scale, style's
        Grams)."""
        return self.inner.stat_batch(windows, cores, tiles)

    def process(self, windows, tiles, rngs, data=None) -> list[tuple[np.ndarray, dict]]:
        """The inner's pass over each tile's wider core, its change high-passed, the tile's
        own core kept. The high-pass runs on the worker's device: on a CPU it is 2-3 % of a
        VGG16 step, on a GPU it would outlast the step there."""
        import torch

        from ..devices import device
        wide = [dataclasses.replace(t, core=_wider(t.core, self.radius, t.window)) for t in tiles]
        out = []
        for w, t, wt, (new, stats) in zip(windows, tiles, wide,
                                          self.inner.process(windows, wide, rngs, data)):
            before = w[(slice(None), *wt.core.relative_to(wt.window).slices())]
            change = torch.from_numpy(np.asarray(new, np.float32) - before)[None].to(device())
            core = t.core.relative_to(wt.core).slices()
            kept = highpass(change, self.sigma)[(0, slice(None), *core)].cpu().numpy()
            result = before[(slice(None), *core)].astype(np.float32) + kept
            out.append((np.clip(result, 0.0, 255.0, out=result), stats))
        return out
