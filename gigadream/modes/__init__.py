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
    stat_batch(windows, cores, tiles) -> [stats, ...]   (measure only: ``stat`` tasks)

with windows (C, h, w) in 0-255 (float32, or the canvas's float16 where the processor's
``window_dtype`` is None), the engine's tiles (absolute window and core boxes), and one
generator per tile. ``batchable`` processors take several windows of one shape in one model
step; the others get one window a call.

A config is checked in two steps: ``config`` parses its sections and checks what they say
alone and together, knowing no mode (it sits on a lower floor and imports none); the mode
then checks what it alone decides (``Mode.check_settings``). ``load_config`` here does both:
what the CLI, the studio and the tools load.
"""
from __future__ import annotations

from pathlib import Path

from .. import config
from ..config import Config
from .base import Mode, PassPlan, Prior, Run

__all__ = ["Mode", "PassPlan", "Prior", "Run", "load_config", "mode_for", "result_view"]


def mode_for(cfg: Config, frame: tuple[int, int] | None = None,
             prior: Prior | None = None) -> Mode:
    from .dream import DreamMode
    from .identity import IdentityMode
    from .style import StyleMode
    modes = {"identity": IdentityMode, "dream": DreamMode, "style": StyleMode}
    return modes[cfg.mode](cfg, frame, prior)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """``config.load_config`` (the sections parsed, each checked alone and with the others),
    then checked by its mode (``Mode.check_settings``): what a run may start with."""
    cfg = config.load_config(path, overrides)
    mode_for(cfg).check_settings()
    return cfg


def result_view(record: dict, view, source):
    """A result view as the run record describes it (``result_record``): the styled canvas in
    the content's colours where the record says so."""
    if record.get("original_colors"):
        from .style import OriginalColors
        return OriginalColors(view, source)
    return view
