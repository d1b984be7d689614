"""A whole run: ingest → pyramid → for each pass, coarsest octave first, its tiles → export.

The loop names no mode: the mode (``modes``) plans the passes, prepares what each octave and
each pass share, and hands the engine each pass's processor. The core never prints: it
reports ``events`` to ``on_event``. What a store may resume, and OUT.yaml, are ``record``'s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cluster import BackgroundCluster, check_gpus
from .config import Config
from .engine import TileTask, map_tiles
from .errors import InputError
from .events import Stage, Timings, Total, Work, row_counter
from .export import check_output, export
from .ingest import build_pyramid, image_shape, ingest, wrap_setting
from .memory import release_freed_memory
from .modes import Mode, PassPlan, Prior, mode_for, result_view
from .record import check_config_output, check_resolved, open_run_store, write_config_output
from .storage import location
from .storage.location import store_location
from .storage.store import Store
from .storage.views import ArrayView, OctaveStart
from .tiling import grid


@dataclass
class RunReport(Timings):
    """What a run did and where its time went (for the CLI, benchmarks and profiling)."""
    output: Path | None = None
    shape: tuple[int, int] = (0, 0)
    tiles: int = 0
    model_steps: int = 0          # model calls (forward + backward) of the passes' tiles


def plan(shape: tuple[int, int], cfg: Config) -> list[PassPlan]:
    """Every pass of the run in order, with its random grid offset and tile count."""
    return mode_for(cfg).plan(shape)


def with_wrap(cfg: Config, input_path: Path, shape: tuple[int, int]) -> Config:
    """``cfg`` with ``tiling.wrap`` resolved for its input (``ingest.wrap_setting``): x or
    none, as the run record and OUT.yaml then say, so that a resume and a rerun from OUT.yaml
    wrap as this run did."""
    wrap, _ = wrap_setting(cfg.tiling.wrap, input_path, shape)
    return dataclasses.replace(cfg, tiling=dataclasses.replace(cfg.tiling, wrap=wrap))


def work_units(passes: list[PassPlan]) -> int:
    return sum(p.units for p in passes)


def default_store(out: Path | str) -> Path | str:
    """OUT.gdstore beside the output: on object storage beside an output at a URL."""
    return location.beside(out, ".gdstore")


def run(input_path: Path, cfg: Config, out: Path, *, store_path: Path | None = None,
        overwrite: bool = False, restart: bool = False,
        on_event: Callable[[object], None] = lambda e: None,
        cluster: BackgroundCluster | None = None, prepared: dict | None = None,
        frame: tuple[int, int] | None = None, prior: Prior | None = None,
        recorded: dict | None = None, describe: bool = True) -> RunReport:
    """Ingest, passes, export. The store (``store_path``, default ``OUT.gdstore``) records
    each finished stage and pass; running the same command again resumes after the last one,
    ``restart`` starts over. The default store is removed after success. The Dask cluster
    starts while the source is ingested; a resume with only the export left starts none.

    A run over part of a larger image (``preview``'s crops) is processed as the whole image's
    run would process it: ``frame`` is the whole image's shape, whose octave geometry the run
    follows (``modes.Mode``), and ``prepared`` what the mode records from the whole image
    (``shared_record``: dream's gradient scale), which the mode takes into its own
    (``Mode.begin_octave``: ``Run.shared``). ``cluster``: a
    started cluster to run on, which the run leaves running (one cluster for many runs:
    its workers start and load the model once).

    A sequence's frame after the first (``sequence``) gives ``prior``, what the frame before
    left (``modes.Prior``: the mode plans and starts the frame from it), and ``recorded``,
    record sections the run takes as its own before it begins (the first frame's gradient
    scales: every frame dreams as strongly), and no OUT.yaml (``describe``: the sequence
    writes one for the clip)."""
    # Style images and weights named absolutely in run.json and OUT.yaml: OUT.yaml reproduces
    # the run from any folder, and a resume from another folder whose relative paths name
    # other files is refused. (Workers open the weights file by this path; the style images
    # reach them as pixels.)
    cfg = cfg.resolved(Path.cwd())
    # a file or an object's URL each (location.store_location)
    input_path, out = store_location(str(input_path)), store_location(str(out))
    shape = image_shape(input_path)              # fails fast on a bad input, decodes nothing
    cfg = with_wrap(cfg, input_path, shape)      # from its header too
    mode = mode_for(cfg, frame, prior)
    check_output(out, shape, overwrite, cfg.export, viewer=True)   # fails fast, before hours of work
    if describe:
        check_config_output(out, overwrite)
    mode.check_settings()        # a Config built without modes.load_config is checked here too
    mode.check()
    if cluster is None:
        check_gpus(cfg.engine.gpus, cfg.engine.scheduler)
    keep_store = store_path is not None
    store = open_run_store(store_location(str(store_path or default_store(out))), input_path,
                           cfg, restart)
    for section, values in (recorded or {}).items():
        if section not in store.record():
            store.update_record(**{section: values})
    passes = mode.plan(shape)
    on_event(Total(work_units(passes)))
    report = RunReport(shape=shape)
    finished = "result" in store.record()        # only the export is left: no workers
    own = cluster is None and not finished       # a cluster this run starts and stops
    workers = cluster if not own else BackgroundCluster(
        cfg.engine.workers, cfg.engine.threads, cfg.engine.scheduler, mode.warm_up(),
        cfg.engine.gpus)
    try:
        octaves, scale = mode.octaves(shape)
        with report.timed("ingest"):      # level 0 and the octave pyramid, in one decode
            _source(input_path, store, shape, octaves, scale, cfg.wraps, keep_store, on_event)
        with report.timed("pyramid"):     # only a store ingested for other octaves
            on_event(Stage("pyramid", f"{octaves} octaves"))
            sources = build_pyramid(store, octaves, scale, cfg.wraps)
        if finished:
            on_event(Stage("resume", f"all {len(passes)} passes done"))
            on_event(Work(work_units(passes)))
        else:
            with report.timed("cluster"):
                on_event(Stage("cluster", f"{cfg.engine.workers} workers"))
                ex = workers.executor()            # what is left of its start
                resolved = check_resolved(store, mode.resolve(ex))
            with report.timed("passes"):
                _passes(_Run(ex, store, report, on_event, resolved, resolved.get("batch", 1),
                             cfg.seed, mode.uses_model, prepared or {}),
                        mode, passes, sources)
            if own:
                workers.close()         # before the export: its memory is not needed there
        with report.timed("export"):
            on_event(Stage("export", location.name(out)))
            result = store.record()["result"]
            export(result_view(result, store.view(result), sources[0]), out, cfg.export,
                   overwrite=overwrite, on_rows=row_counter(on_event, "export", shape[0]),
                   kept=store.input_metadata(), before=sources[0])
            if describe:
                write_config_output(out, cfg, input_path)
    finally:
        if own:
            workers.close()
    report.output = out
    if not keep_store:
        store.remove()
    return report


def shared_record(store: Store, cfg: Config, executor, sources: list[ArrayView],
                  on_event: Callable[[object], None] = lambda e: None,
                  report: RunReport | None = None) -> dict:
    """What a run over a part of the image in ``store`` takes from the whole image
    (``Mode.shared``), computed on ``executor``'s workers over the store's source pyramid
    ``sources``: the ``prepared`` argument of ``run`` for each part."""
    cfg = cfg.resolved(Path.cwd())
    mode = mode_for(cfg)
    resolved = mode.resolve(executor)
    run_ = _Run(executor, store, report or RunReport(), on_event, resolved,
                resolved.get("batch", 1), cfg.seed, mode.uses_model)
    return mode.shared(run_, sources)


def _passes(run: _Run, mode: Mode, passes: list[PassPlan], sources: list[ArrayView]) -> None:
    """The passes after the last one the store records as done; each finished pass is
    recorded (atomically) with the canvas it wrote, which the next pass reads."""
    store = run.store
    first = store.record().get("done", -1) + 1
    view = store.view(store.record()["canvas"]) if first > 0 else None
    if first > 0:
        run.stage("resume", f"after pass {first} of {len(passes)}")
        run.work(work_units(passes[:first]))
        for k in range(passes[first - 1].octave + 1, len(sources)):
            store.drop_canvases(k)      # a kill between recording a pass and this cleanup
    octave = None
    for i in range(first, len(passes)):
        pp, k = passes[i], passes[i].octave
        if pp.pass_ == 0:   # the octave starts from the coarser one's detail on its source
            view = (mode.first_view(sources[k]) if view is None
                    else OctaveStart(sources[k], view, sources[k + 1]))
        if octave != k:
            octave = k
            mode.begin_octave(run, k, view, sources[k])
        proc = mode.pass_processor(pp, first=i == 0)
        tiles = grid(pp.shape, pp.tile, pp.offset, proc.margin, mode.align, mode.wrap,
                     mode.align_end)
        data = mode.pass_data(run, pp, view, proc, tiles)
        target = store.canvas(k, pp.pass_ % 2, pp.shape, pp.tile, pp.offset, mode.wrap)
        run.process(pp, view, target, proc, tiles, data, mode.align)
        store.seal(target)      # done: a late write of one of its tasks lands nowhere
        # with what the result needs to be read back (``modes.result_view``), so that the
        # latest canvas of an unfinished run is readable too (``record.stored_image``)
        store.update_record(done=i, canvas={**target.record(), **mode.result_record()})
        if pp.pass_ == 0 and k + 1 < len(sources):
            store.drop_canvases(k + 1)          # its detail now lives in this octave's canvas
        view = target
    store.update_record(result=store.record()["canvas"])
    store.drop_spares()


@dataclass
class _Run:
    """What the modes use of a running pipeline (``modes.Run``), and the passes' tiles."""

    executor: Any
    store: Store
    report: RunReport
    on_event: Callable[[object], None]
    resolved: dict
    batch: int
    seed: int
    model: bool                 # the processors run a model (tiles are costly)
    shared: dict = field(default_factory=dict)   # from the whole image (``Mode.shared``)

    def recorded(self, section: str, key: str, compute: Callable[[], Any]) -> Any:
        values = self.store.record().get(section, {})
        if key not in values:
            values[key] = compute()
            self.store.update_record(**{section: values})
        return values[key]

    def stage(self, name: str, detail: str = "") -> None:
        self.on_event(Stage(name, detail))

    def work(self, units: int) -> None:
        self.on_event(Work(units))

    def measure(self, view, proc, tiles: list, seed: tuple[int, int, int],
                on_done: Callable[[list[dict]], None] | None = None) -> list[dict] | None:
        def count(stats: list[dict]) -> None:
            for s in stats:
                self.report.count_model(s)
            if on_done is not None:
                on_done(stats)
        tasks = [TileTask(view, None, proc, t, seed, "stat", run=self.store.run)
                 for t in tiles]
        return map_tiles(self.executor, tasks, True, self.batch, count, keep=on_done is None)

    def process(self, pp: PassPlan, view, target: ArrayView, proc, tiles: list, data,
                align: int = 1) -> None:
        """One pass's tiles: from ``view`` through ``proc`` into ``target`` (``align``: the
        grid's)."""
        self.on_event(Stage("pass", f"octave {pp.octave} pass {pp.pass_ + 1}: "
                                    f"{pp.shape[1]}×{pp.shape[0]} px, {len(tiles)} tiles"
                                    + (f", {self.batch} a step" if self.batch > 1 else ""),
                            pixels=pp.shape[0] * pp.shape[1]))

        def done(results: list[dict]) -> None:
            for stats in results:
                self.report.count_model(stats)
                self.report.model_steps += len(stats["model_at"])
                self.on_event(Work(pp.iterations))
        seed = (self.seed, pp.octave, pp.pass_)
        tasks = [TileTask(view, target, proc, t, seed, align=align, run=self.store.run)
                 for t in tiles]
        map_tiles(self.executor, tasks, self.model, self.batch, done, data, keep=False)
        self.report.tiles += len(tasks)


def ingest_source(input_path: Path, store: Store, shape: tuple[int, int], octaves: int,
                  scale: float, wrap: bool, on_event: Callable[[object], None]) -> None:
    """The input decoded once into ``store``'s source pyramid (``octaves`` levels, ``wrap``:
    x circular, as a 360° panorama's run reads them), its rows reported as they come."""
    on_event(Stage("ingest", f"{shape[1]}×{shape[0]} px"))
    ingest(input_path, store, on_rows=row_counter(on_event, "ingest", shape[0]),
           octaves=octaves, scale=scale, wrap=wrap)
    release_freed_memory()


def _source(input_path: Path, store: Store, shape: tuple[int, int], octaves: int,
            scale: float, wrap: bool, keep_store: bool, on_event) -> None:
    """``ingest_source``, unless an attempt before did it. A damaged input leaves no store
    behind (nothing in it is worth resuming) unless the user named it."""
    if store.has_source():
        return
    try:
        ingest_source(input_path, store, shape, octaves, scale, wrap, on_event)
    except InputError:
        if not keep_store:
            store.remove()
        raise
