"""Mode identity: every pass copies its tiles. The engine's own cost, and a bit-exactness check
(a run's result equals its input, byte for byte)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Mode, PassPlan
from ..tiling import Box


@dataclass(frozen=True)
class Identity:
    """Copies the window's core. It takes the window in the canvas's own float16
    (``window_dtype = None``): converting it to float32 and back, which only a model needs,
    would cost 20 % of an identity tile."""

    margin: int = 0
    window_dtype = None
    batchable = False

    def __call__(self, window: np.ndarray, core: Box, rng: np.random.Generator | None = None):
        return window[(slice(None), *core.slices())], {}

    def process(self, windows, tiles, rngs, data=None) -> list[tuple[np.ndarray, dict]]:
        return [self(w, t.core.relative_to(t.window)) for w, t in zip(windows, tiles)]


class IdentityMode(Mode):
    naive = True

    @property
    def passes_per_octave(self) -> int:
        return self.cfg.dream.passes

    @property
    def far_factor(self) -> int:
        """Identity copies: there is no change to keep the far view of."""
        return 0

    def processor(self, pp: PassPlan, first: bool) -> Identity:
        return Identity(self.margin)
