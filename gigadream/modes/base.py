"""What every mode is: the pass plan, what a mode may ask of the running pipeline (``Run``)
and the ``Mode`` base class with its defaults. The package's ``__init__`` picks a mode by
name (``mode_for``); the modes import this module, not the package, so neither imports the
other back."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .. import archs
from ..config import Config
from ..errors import ConfigError
from ..resample import octave_shape
from ..tiling import grid, pass_offset
from .far import KeepFar, far_radius, far_sigma


@dataclass(frozen=True)
class PassPlan:
    octave: int
    pass_: int
    shape: tuple[int, int]
    offset: tuple[int, int]
    tiles: int
    tile: int                # tile side (the whole octave when it is processed whole)
    iterations: int          # processor steps per tile
    stats: bool = False      # a measuring task per tile before the pass (style's Grams)

    @property
    def whole(self) -> bool:
        """One tile covers the octave: it needs no margin."""
        return self.tiles == 1 and self.tile >= max(self.shape)

    @property
    def units(self) -> int:
        """Progress units: a tile × its steps, plus one per measuring task."""
        return self.tiles * (self.iterations + self.stats)


@dataclass(frozen=True)
class Prior:
    """A frame after the first of a sequence (``sequence``): what the frame before it left.

    ``view``: the previous frame's result carried along the optical flow into this frame
    (float 0-255, the frame's shape), where the mode starts from it (style); None where the
    mode's input already holds it (dream starts from a blend of the two). ``reliable``:
    (h, w) bool at the flow's size (``flow.frame_flow``), where the warp is trusted."""

    view: Any = None
    reliable: Any = None


class Run(Protocol):
    """What a mode may use of the running pipeline while it prepares."""

    executor: Any                      # cluster.DaskExecutor
    resolved: dict                     # Mode.resolve's, as recorded with the run
    shared: dict                       # Mode.shared's of the whole image, where the run
                                       # covers a part of it (a preview's crop); else empty

    def recorded(self, section: str, key: str, compute: Callable[[], Any]) -> Any:
        """A value kept in the run record (``section.key``): computed once, reused by a
        resumed run."""

    def stage(self, name: str, detail: str = "") -> None:
        """Tell the user that a stage begins."""

    def work(self, units: int) -> None:
        """``units`` of the run's work are done."""

    def measure(self, view, proc, tiles: list, seed: tuple[int, int, int],
                on_done: Callable[[list[dict]], None] | None = None) -> list[dict] | None:
        """``proc.stat_batch`` over ``tiles`` of ``view`` on the workers. Without ``on_done``
        the tiles' statistics come back as a list; with it, each Dask task's list goes to
        ``on_done`` as it arrives and none is kept (a reduction holds only its sum)."""


class Mode:
    """The defaults: tile passes over ``dream.octaves`` octaves, nothing to prepare, no model.

    ``frame``: the shape of the whole image when the run covers a part of it (a preview's
    crop). The run then follows the whole image's octave geometry: its number of octaves
    (style's depends on the image's size) and what a mode sizes by an octave's extent
    (style's image)."""

    uses_model = False
    # The mode-specific config sections the mode reads (``unread``): the others' settings
    # would be ignored without a word.
    sections: tuple[str, ...] = ("dream",)
    needs_pass_data = False     # a tile runs only with its pass's ``pass_data`` (style's Grams)
    naive = False               # ``baseline.py`` has a naive version of the mode

    def __init__(self, cfg: Config, frame: tuple[int, int] | None = None,
                 prior: Prior | None = None):
        self.cfg = cfg
        self.frame = frame
        self.prior = prior      # a sequence's frame after the first: the one before's result

    def check_settings(self) -> None:
        """Refuse, in one line, settings the mode cannot run with (``load_config``): here,
        an explicit margin too small for ``keep_far``'s low-pass."""
        margin, far = self.cfg.tiling.margin, self.far_margin
        if far and margin != "auto" and margin < far:
            raise ConfigError(f"tiling.margin: {margin} px cannot hold the low-pass "
                              f"of keep_far={self.far_factor}, which reaches "
                              f"{far} px around each tile; set tiling.margin=auto "
                              f"(it adds them to the layers' context), or at least "
                              f"{far} plus the context the layers need")

    def unread(self, keys: list[str]) -> list[str]:
        """Of the setting names ``keys``, those in a mode's section this mode does not read
        (``--set style=a.jpg`` under mode dream)."""
        own = set(self.sections)
        return [k for k in keys if k.split(".")[0] in ("dream", "style")
                and k.split(".")[0] not in own]

    def octaves(self, shape: tuple[int, int]) -> tuple[int, float]:
        """(number of octaves, scale between them) of a run over an image of ``shape``."""
        return self.octave_count(self.frame or shape), self.octave_scale

    def octave_count(self, shape: tuple[int, int]) -> int:
        """The number of octaves of an image of ``shape``."""
        return self.cfg.dream.octaves

    @property
    def octave_scale(self) -> float:
        """Size ratio between neighbouring octaves."""
        return self.cfg.dream.octave_scale

    def extent(self, octave: int, shape: tuple[int, int]) -> tuple[int, int]:
        """The shape of the whole image at ``octave``, where the run's octave has ``shape``."""
        if self.frame is None:
            return shape
        n, scale = self.octaves(shape)
        return octave_shape(self.frame, scale, octave)

    @property
    def layers(self) -> list[str]:
        """Every layer the mode's processor reads (for the margin and the alignment)."""
        return []

    @property
    def window_margin(self) -> int:
        """Context read around each tile: the explicit ``tiling.margin``, or the
        receptive-field radius of the deepest layer read (of the last spatial layer for
        logits), so a core pixel's gradient sees all the pixels it depends on; at most half
        a tile, the receptive field's far rim weighs little (its effective field is much
        smaller). ``keep_far``'s low-pass adds its reach (``far_margin``) to that."""
        cfg = self.cfg
        if cfg.tiling.margin != "auto":
            return int(cfg.tiling.margin)
        if not self.layers:
            return 0
        radii = [archs.receptive_radius(cfg.model.name, n) for n in self.layers]
        radius = max(archs.spatial_radius(cfg.model.name) if r is None else r for r in radii)
        return min(radius, cfg.tiling.tile // 2) + self.far_margin

    @property
    def margin(self) -> int:
        """The context a mode's processor reads around its core: the window's, less the
        part that ``keep_far`` reaches (``pass_processor`` adds it back, as its octave
        needs)."""
        return self.window_margin - self.far_margin

    @property
    def far_factor(self) -> int:
        """``keep_far.factor``: the run's result shrunk this many times stays its input
        shrunk as much; 0 = off."""
        return self.cfg.keep_far.factor

    @property
    def far_margin(self) -> int:
        """The part of ``window_margin`` that ``keep_far``'s low-pass reaches at full size
        (px); coarser octaves need less (``far_sigma``)."""
        return far_radius(far_sigma(self.far_factor)) if self.far_factor else 0

    @property
    def align(self) -> int:
        """Windows start on multiples of the largest stride among the layers read."""
        if not self.layers:
            return 1
        name = self.cfg.model.name
        spatial = [n for n in self.layers if archs.receptive_radius(name, n) is not None]
        deepest = [o.name for o in archs.ops(name) if o.kernel is not None][-1]
        return max(archs.stride(name, n) for n in spatial or [deepest])

    @property
    def align_end(self) -> bool:
        """Windows also end on the stride (``tiling.aligned``). Not by default: style's tiles
        keep their extent, its optimiser works on the whole window."""
        return False

    @property
    def wrap(self) -> bool:
        """x is circular (a 360° panorama): grids, windows and resampling reach across it."""
        return self.cfg.wraps

    @property
    def passes_per_octave(self) -> int:
        """Randomly offset tile grids per octave."""
        raise NotImplementedError

    @property
    def iterations(self) -> int:
        return 1

    @property
    def calibration_tiles(self) -> int:
        """Tiles sampled per octave to calibrate the processor before the octave's first
        pass (one model step each); 0: none."""
        return 0

    def step_precision(self, device: str) -> str:
        """The arithmetic of the mode's model steps on ``device``."""
        return "fp32"

    def check(self) -> None:
        """Refuse, in one line, what would fail only once the work has begun."""

    def warm_up(self) -> Callable[[], Any] | None:
        """What each worker runs once before its first task (loading the model), or None."""
        return None

    def plan(self, shape: tuple[int, int]) -> list[PassPlan]:
        """Every pass of the run in order, with its random grid offset and tile count (a
        sequence's later frame: ``later_plan``'s)."""
        n, scale = self.octaves(shape)
        plans = [p for k in reversed(range(n))
                 for p in self.octave_plan(k, octave_shape(shape, scale, k), n)]
        return plans if self.prior is None else self.later_plan(plans)

    def later_passes(self, k: int = 0, octaves: int = 1) -> int:
        """``sequence.passes``: a later frame's passes at octave ``k`` of ``octaves`` (auto:
        a quarter of a still's there, at least one: its start already holds the previous
        frame's result)."""
        v = self.cfg.sequence.passes
        return max(1, self.octave_passes(k, octaves) // 4) if v == "auto" else v

    def later_iterations(self, pp: PassPlan) -> int:
        """``sequence.iterations``: steps per tile of a later frame's pass ``pp`` (auto:
        the still's)."""
        v = self.cfg.sequence.iterations
        return pp.iterations if v == "auto" else v

    def later_plan(self, plans: list[PassPlan]) -> list[PassPlan]:
        """A sequence's later frame, from a still's ``plans``: every octave again (dream
        starts from the new frame blended with the previous dream, and the coarse octaves
        dream what the frame reveals), ``later_passes`` of each, ``later_iterations``."""
        octaves = max(p.octave for p in plans) + 1
        return [dataclasses.replace(p, iterations=self.later_iterations(p))
                for p in plans if p.pass_ < self.later_passes(p.octave, octaves)]

    def first_view(self, source):
        """What the run's first pass reads: ``source``, the input at that pass's octave (a
        later frame's warped previous result where the mode starts from it: style)."""
        return source

    def octave_passes(self, k: int, octaves: int) -> int:
        """Passes of octave ``k`` (0 the finest) of ``octaves``."""
        return self.passes_per_octave

    def octave_plan(self, k: int, shape: tuple[int, int], octaves: int) -> list[PassPlan]:
        t, out = self.cfg.tiling.tile, []
        for p in range(self.octave_passes(k, octaves)):
            # a tile as large as the octave covers it whole: no offset would split it
            off = (pass_offset(self.cfg.seed, k, p, t, shape[1] if self.wrap else None)
                   if t < max(shape) else (0, 0))
            out.append(PassPlan(k, p, shape, off, len(grid(shape, t, off, wrap=self.wrap)), t,
                                self.iterations))
        return out

    def resolve(self, executor) -> dict:
        """Settings resolved on the workers that shape the result's bytes (``auto`` values,
        the device kind): recorded with the run, and a resume must resolve them alike. Its
        ``batch``, where there is one, is how many tiles of one window shape a processor
        step takes at once (1 without)."""
        return {}

    def begin_octave(self, run: Run, octave: int, view, source) -> None:
        """Prepare what every pass of ``octave`` shares (``view``: the octave's start,
        ``source``: the input at the octave's size)."""

    def shared(self, run: Run, sources: list) -> dict:
        """What a run over a part of the image needs from the whole image to process the
        part as the whole run would, computed on the whole image's source pyramid
        ``sources`` (finest first). The part's run receives it as ``Run.shared``
        (``pipeline.run(prepared=...)``). Nothing by default."""
        return {}

    def processor(self, pp: PassPlan, first: bool):
        """The mode's own processor of pass ``pp`` (``first``: the run's first pass)."""
        raise NotImplementedError

    def pass_processor(self, pp: PassPlan, first: bool):
        """What every tile of pass ``pp`` runs: the mode's processor, which ``keep_far``
        wraps so that the pass's change keeps no low frequencies (``far``), at the octave's
        scale."""
        return self.keep_far(self.processor(pp, first), pp.octave)

    def keep_far(self, proc, octave: int):
        """``proc`` wrapped by ``far.KeepFar`` at ``octave``'s scale where ``keep_far`` is on;
        ``proc`` itself where it is off."""
        if not self.far_factor:
            return proc
        return KeepFar(proc, self.far_sigma(octave))

    def far_sigma(self, octave: int) -> float:
        """``keep_far``'s low-pass σ in the pixels of ``octave``; 0 when it is off."""
        return far_sigma(self.far_factor, self.octave_scale ** octave) if self.far_factor else 0.0

    def recorded_processor(self, pp: PassPlan, record: dict):
        """The processor of pass ``pp`` as the run whose record is ``record`` built it (for
        ``profile``'s replay of a few of its tiles)."""
        return self.processor(pp, first=False)

    def naive_gradient(self):
        """``baseline``'s whole-image step: a function of a (1, C, h, w) tensor returning
        (gradient, seconds), or None where the mode moves no pixel (identity)."""
        return None

    def pass_data(self, run: Run, pp: PassPlan, view, proc, tiles: list) -> Any:
        """The value every tile of the pass receives (sent to each worker once), or None."""
        return None

    def result_record(self) -> dict:
        """What the run record keeps with the result to rebuild its view (``result_view``)."""
        return {}
