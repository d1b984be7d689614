"""Modes: what a run does to the image, as plug-ins of one loop (``pipeline``).

A mode plans the run's passes, prepares what it needs once per octave and once per pass, and
hands the engine a processor for each pass. The pipeline runs every mode the same way:

    for each pass (coarsest octave first):
        mode.begin_octave(run, octave, view, source)  # on a new octave: dream calibrates its
                                                    # gradient scale, style makes its Gram target
        proc = mode.pass_processor(pass_, first)    # what every tile of the pass runs
        tiles = grid(..., proc.margin, mode.align, mode.wrap)
        data = mode.pass_data(run, pass_, view, proc, tiles)   # style: the canvas's Gram
        engine: each tile → proc.process(windows, tiles, rngs, data) → its chunk

A processor is a small picklable object (the model behind it is loaded once per worker
process); the engine calls

    process(windows, tiles, rngs, data) -> [(core pixels (C, h, w), stats), ...]
    stat_batch(windows, cores) -> [stats, ...]          (measure only: ``stat`` tasks)

with windows (C, h, w) in 0-255 (float32, or the canvas's float16 where the processor's
``window_dtype`` is None), the engine's tiles (absolute window and core boxes), and one
generator per tile. ``batchable`` processors take several windows of one shape in one model
step; the others get one window a call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..config import Config
from ..resample import octave_shape
from ..tiling import grid, pass_offset


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


class Run(Protocol):
    """What a mode may use of the running pipeline while it prepares."""

    executor: Any                      # engine.DaskExecutor
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
    """The defaults: tile passes over ``cfg.octaves``, nothing to prepare, no model.

    ``frame``: the shape of the whole image when the run covers a part of it (a preview's
    crop). The run then follows the whole image's octave geometry: its number of octaves
    (style's depends on the image's size) and what a mode sizes by an octave's extent
    (style's image)."""

    uses_model = False

    def __init__(self, cfg: Config, frame: tuple[int, int] | None = None):
        self.cfg = cfg
        self.frame = frame

    def octaves(self, shape: tuple[int, int]) -> tuple[int, float]:
        """(number of octaves, scale between them) of a run over an image of ``shape``."""
        return self.cfg.octaves(self.frame or shape)

    def extent(self, octave: int, shape: tuple[int, int]) -> tuple[int, int]:
        """The shape of the whole image at ``octave``, where the run's octave has ``shape``."""
        if self.frame is None:
            return shape
        n, scale = self.octaves(shape)
        return octave_shape(self.frame, scale, octave)

    @property
    def margin(self) -> int:
        """The context a mode's processor reads around its core: the run's margin, less the
        part that ``keep_far`` reaches (``pass_processor`` adds it back, as its octave
        needs)."""
        return self.cfg.margin - self.cfg.far_margin

    @property
    def align(self) -> int:
        return self.cfg.align

    @property
    def align_end(self) -> bool:
        return self.cfg.align_end

    @property
    def wrap(self) -> bool:
        """x is circular (a 360° panorama): grids, windows and resampling reach across it."""
        return self.cfg.wraps

    @property
    def passes_per_octave(self) -> int:
        return self.cfg.dream.passes

    @property
    def iterations(self) -> int:
        return 1

    def check(self) -> None:
        """Refuse, in one line, what would fail only once the work has begun."""

    def warm_up(self) -> Callable[[], Any] | None:
        """What each worker runs once before its first task (loading the model), or None."""
        return None

    def plan(self, shape: tuple[int, int]) -> list[PassPlan]:
        """Every pass of the run in order, with its random grid offset and tile count."""
        n, scale = self.octaves(shape)
        return [p for k in reversed(range(n))
                for p in self.octave_plan(k, octave_shape(shape, scale, k), n)]

    def octave_plan(self, k: int, shape: tuple[int, int], octaves: int) -> list[PassPlan]:
        t, out = self.cfg.tiling.tile, []
        for p in range(self.passes_per_octave):
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
        part as the whole run would, measured on the whole image's source pyramid
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
        if not self.cfg.keep_far:
            return proc
        from .far import KeepFar
        return KeepFar(proc, self.far_sigma(octave))

    def far_sigma(self, octave: int) -> float:
        """``keep_far``'s low-pass σ in the pixels of ``octave``; 0 when it is off."""
        from .far import far_sigma
        return far_sigma(self.cfg.keep_far, self.cfg.octave_scale ** octave) if self.cfg.keep_far else 0.0

    def pass_data(self, run: Run, pp: PassPlan, view, proc, tiles: list) -> Any:
        """The value every tile of the pass receives (sent to each worker once), or None."""
        return None

    def result_record(self) -> dict:
        """What the run record keeps with the result to rebuild its view (``result_view``)."""
        return {}


def mode_for(cfg: Config, frame: tuple[int, int] | None = None) -> Mode:
    from .dream import DreamMode
    from .identity import IdentityMode
    from .style import StyleMode
    modes = {"identity": IdentityMode, "dream": DreamMode, "style": StyleMode}
    return modes[cfg.mode](cfg, frame)


def result_view(record: dict, view, source):
    """A result view as the run record describes it (``result_record``): the styled canvas in
    the content's colours where the record says so."""
    if record.get("original_colors"):
        from .style import OriginalColors
        return OriginalColors(view, source)
    return view
