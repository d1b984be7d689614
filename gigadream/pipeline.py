"""A whole run: ingest → pyramid → for each pass, coarsest octave first, its tiles → export.

The loop names no mode: the mode (``modes``) plans the passes, prepares what each octave and
each pass share, and hands the engine each pass's processor. The core never prints: it
reports ``Stage`` and ``Work`` events to ``on_event``; the CLI turns them into a progress bar,
tests and profilers attach their own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import __version__, objects
from .config import Config, to_dict, to_yaml
from .engine import BackgroundCluster, TileTask, check_gpus, map_tiles, release_freed_memory
from .errors import InputError, OutputError, StoreError
from .export import check_output, export
from .ingest import build_pyramid, fingerprint, image_shape, ingest, input_name, wrap_setting
from .modes import Mode, PassPlan, mode_for, result_view
from .objects import store_location
from .store import ArrayView, OctaveStart, Store, atomic_write_text, forget_arrays, is_store
from .tiling import grid


@dataclass(frozen=True)
class Stage:
    """A stage begins: ingest, pyramid, cluster, calibrate, grams, pass, export. A pass
    says how many ``pixels`` it covers (for throughput)."""
    name: str
    detail: str = ""
    pixels: int = 0


@dataclass(frozen=True)
class Total:
    """The run will do ``units`` of work in all (sent once, before the work)."""
    units: int


@dataclass(frozen=True)
class Work:
    """``units`` of the run's work are done (a tile × its iterations)."""
    units: int


@dataclass
class RunReport:
    """What a run did and where its time went (for the CLI, benchmarks and profiling)."""
    output: Path | None = None
    shape: tuple[int, int] = (0, 0)
    stage_s: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    model_s: float = 0.0
    model_steps: int = 0          # model calls (forward + backward) of the passes' tiles
    model_mp: float = 0.0         # Σ window megapixels of each model step in model_s


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
    if objects.is_url(out):
        return str(out) + ".gdstore"
    return out.with_name(out.name + ".gdstore")


def run(input_path: Path, cfg: Config, out: Path, *, store_path: Path | None = None,
        overwrite: bool = False, restart: bool = False,
        on_event: Callable[[object], None] = lambda e: None,
        cluster: BackgroundCluster | None = None, prepared: dict | None = None,
        frame: tuple[int, int] | None = None) -> RunReport:
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
    its workers start and load the model once)."""
    # Style images and weights named absolutely in run.json and OUT.yaml: OUT.yaml reproduces
    # the run from any folder, and a resume from another folder whose relative paths name
    # other files is refused. (Workers open the weights file by this path; the style images
    # reach them as pixels.)
    cfg = cfg.resolved(Path.cwd())
    # a file or an object's URL each (objects.store_location)
    input_path, out = store_location(str(input_path)), store_location(str(out))
    shape = image_shape(input_path)              # fails fast on a bad input, decodes nothing
    cfg = with_wrap(cfg, input_path, shape)      # from its header too
    mode = mode_for(cfg, frame)
    check_output(out, shape, overwrite, cfg.export, viewer=True)   # fails fast, before hours of work
    check_config_output(out, overwrite)
    mode.check()
    if cluster is None:
        check_gpus(cfg.engine.gpus, cfg.engine.scheduler)
    keep_store = store_path is not None
    store = open_run_store(store_location(str(store_path or default_store(out))), input_path,
                           cfg, restart)
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
        with _timed(report, "ingest"):      # level 0 and the octave pyramid, in one decode
            _source(input_path, store, shape, octaves, scale, cfg.wraps, keep_store, on_event)
        with _timed(report, "pyramid"):     # only a store ingested for other octaves
            on_event(Stage("pyramid", f"{octaves} octaves"))
            sources = build_pyramid(store, octaves, scale, cfg.wraps)
        if finished:
            on_event(Stage("resume", f"all {len(passes)} passes done"))
            on_event(Work(work_units(passes)))
        else:
            with _timed(report, "cluster"):
                on_event(Stage("cluster", f"{cfg.engine.workers} workers"))
                ex = workers.executor()            # what is left of its start
                if not own:     # its workers may hold arrays of a store since replaced
                    ex.each_worker(forget_arrays)
                resolved = check_resolved(store, mode.resolve(ex))
            with _timed(report, "passes"):
                _passes(_Run(ex, store, report, on_event, resolved, resolved.get("batch", 1),
                             cfg.seed, mode.uses_model, prepared or {}),
                        mode, passes, sources)
            if own:
                workers.close()         # before the export: its memory is not needed there
        with _timed(report, "export"):
            on_event(Stage("export", objects.name(out)))
            result = store.record()["result"]
            export(result_view(result, store.view(result), sources[0]), out, cfg.export,
                   overwrite=overwrite, on_rows=_rows(on_event, "export", shape[0]),
                   kept=store.input_metadata(), before=sources[0])
            _write_text(config_output(out), _reproducible_yaml(cfg, input_path))
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
    (``Mode.shared``), measured on ``executor``'s workers over the store's source pyramid
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
            view = sources[k] if view is None else OctaveStart(sources[k], view, sources[k + 1])
        if octave != k:
            octave = k
            mode.begin_octave(run, k, view, sources[k])
        proc = mode.pass_processor(pp, first=i == 0)
        tiles = grid(pp.shape, pp.tile, pp.offset, proc.margin, mode.align, mode.wrap,
                     mode.align_end)
        data = mode.pass_data(run, pp, view, proc, tiles)
        target = store.canvas(k, pp.pass_ % 2, pp.shape, pp.tile, pp.offset, mode.wrap)
        run.process(pp, view, target, proc, tiles, data, mode.align)
        # with what the result needs to be read back (``modes.result_view``), so that the
        # latest canvas of an unfinished run is readable too (``stored_image``)
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
            self.report.model_s += sum(s.get("model_s", 0.0) for s in stats)
            self.report.model_mp += sum(s.get("model_mp", 0.0) for s in stats)
            if on_done is not None:
                on_done(stats)
        tasks = [TileTask(view, None, proc, t, seed, "stat") for t in tiles]
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
                self.report.model_s += stats.get("model_s", 0.0)
                self.report.model_mp += stats.get("model_mp", 0.0)
                self.report.model_steps += len(stats["model_at"])
                self.on_event(Work(pp.iterations))
        seed = (self.seed, pp.octave, pp.pass_)
        tasks = [TileTask(view, target, proc, t, seed, align=align) for t in tiles]
        map_tiles(self.executor, tasks, self.model, self.batch, done, data, keep=False)
        self.report.tiles += len(tasks)


@contextlib.contextmanager
def _timed(report: RunReport, stage: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        report.stage_s[stage] = time.perf_counter() - t


def _source(input_path: Path, store: Store, shape: tuple[int, int], octaves: int,
            scale: float, wrap: bool, keep_store: bool, on_event) -> None:
    """The input streamed into the store's source pyramid, unless an attempt before did it."""
    if not store.has_source():
        on_event(Stage("ingest", f"{shape[1]}×{shape[0]} px"))
        try:
            ingest(input_path, store, on_rows=_rows(on_event, "ingest", shape[0]),
                   octaves=octaves, scale=scale, wrap=wrap)
        except InputError:      # a damaged input: nothing worth resuming, leave no litter
            if not keep_store:
                store.remove()
            raise
        release_freed_memory()


@dataclass(frozen=True)
class Rows:
    """``done`` of ``total`` image rows of a streamed stage (ingest, export)."""
    stage: str
    done: int
    total: int


class EventLog:
    """Events as JSON lines (``{"t": unix time, "event": "Stage", ...}``), flushed as they
    come, for profilers and batch monitors: ``gigadream run --events FILE``."""

    def __init__(self, path: Path, then: Callable[[object], None] = lambda e: None):
        self.file = open(path, "w", buffering=1)
        self.then = then

    def __call__(self, event) -> None:
        self.file.write(json.dumps({"t": time.time(), "event": type(event).__name__,
                                    **asdict(event)}) + "\n")
        self.then(event)

    def close(self) -> None:
        self.file.close()


def _rows(on_event, stage: str, total: int) -> Callable[[int], None]:
    done = [0]

    def on_rows(n: int) -> None:
        done[0] += n
        on_event(Rows(stage, done[0], total))
    return on_rows


# Settings that change the result; a store made under others cannot be resumed. The engine
# (workers, threads, scheduler) and the export settings may change between attempts.
RESULT_SECTIONS = ("mode", "seed", "model", "dream", "style", "keep_far", "tiling")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("layers", "content_layers", "style_layers"):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def config_difference(recorded: dict, cfg: Config) -> list[str]:
    """Result-changing settings that differ: 'key: STORE → NOW'. Settings that the workers
    resolve (``RESOLVED_SETTINGS``) are compared as resolved instead (``check_resolved``):
    ``auto`` then and ``bf16`` now agree where auto meant bf16."""
    now = _flat({k: v for k, v in to_dict(cfg).items() if k in RESULT_SECTIONS})
    had = _flat({k: v for k, v in recorded.items() if k in RESULT_SECTIONS})
    keys = (set(now) | set(had)) - set(RESOLVED_SETTINGS.values())
    return [f"{k}: {had.get(k)!r} in the store, {now.get(k)!r} now"
            for k in sorted(keys) if now.get(k) != had.get(k)]


def open_run_store(path: Path | str, input_path: Path, cfg: Config, restart: bool) -> Store:
    """The run's store (a folder or a URL): a new one, or the one a previous attempt left,
    checked to belong to this input and config; ``restart`` replaces it (only if it is a
    gigadream store)."""
    if is_store(path) and not restart:
        store = Store.open(path)
        rec = store.record()
        had = rec.get("input")
        if had and had != {"name": input_name(input_path), **fingerprint(input_path)}:
            raise StoreError(f"store {path} was made from another input ({had.get('name')}, "
                             f"{had.get('size')} bytes); pass --restart to start over, or give "
                             "another --store")
        diff = config_difference(rec["config"], cfg) if "config" in rec else []
        if diff:
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            raise StoreError(f"store {path} was made with another config: {diff[0]}{more}; "
                             "run with the same config to resume, or --restart to start over")
    else:
        store = Store.create(path, overwrite=restart)
    if "config" not in store.record():
        store.update_record(config=to_dict(cfg), version=__version__, versions=_versions())
    had, now = store.record()["versions"], _versions()
    for pkg in now:
        if had.get(pkg) != now[pkg]:
            raise StoreError(f"store {path} was made with {pkg} {had.get(pkg)}, this is "
                             f"{pkg} {now[pkg]}: a resumed result could differ from an "
                             "uninterrupted one; resume with the same versions, or pass "
                             "--restart to start over")
    return store


# Packages whose versions shape a result's bytes: a resume under others could differ from an
# uninterrupted run.
RESULT_PACKAGES = ("torch", "zarr", "numpy", "pyvips")


def _versions() -> dict:
    """gigadream's version and those of ``RESULT_PACKAGES``."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"gigadream": __version__}
    for pkg in RESULT_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# What each resolved value is set by, so that a resume can ask for it explicitly.
RESOLVED_SETTINGS = {"batch": "engine.batch", "precision": "model.precision",
                     "threads": "engine.threads"}


def check_resolved(store: Store, resolved: dict) -> dict:
    """The settings the workers resolved (``Mode.resolve``): recorded at a run's first start;
    a resume whose workers resolve them otherwise would compute other pixels, and is
    refused."""
    had = store.record().get("resolved")
    if had is None:
        store.update_record(resolved=resolved)
        return resolved
    for key in sorted(set(had) | set(resolved)):
        if had.get(key) != resolved.get(key):
            how = (f"resume with --set {RESOLVED_SETTINGS[key]}={had.get(key)}"
                   if key in RESOLVED_SETTINGS and had.get(key) != "mixed" else
                   f"resume where the workers' {key} is {had.get(key)}")
            raise StoreError(f"store {store.path} was run with {key} {had.get(key)}, but these "
                             f"workers resolve {resolved.get(key)}, which would change its "
                             f"pixels; {how}, or pass --restart to start over")
    return had


def stored_image(store: Store, partial: bool = False) -> tuple[ArrayView, str | None]:
    """What ``gigadream export`` writes of ``store``, and, where it is not the run's result,
    a line that says what it is. The result of a finished run; the source of a store that
    no run has used (``gigadream ingest``). An unfinished run's store is refused unless
    ``partial``: then its latest canvas (an octave may be smaller than the image), or its
    source before its first pass finishes."""
    rec = store.record()
    if "result" in rec:
        return result_view(rec["result"], store.view(rec["result"]), store.source(0)), None
    if "config" not in rec:
        return store.source(0), None
    done = rec.get("done", -1) + 1
    if not partial:
        raise StoreError(f"store {store.path} holds an unfinished run ({done} passes done, no "
                         "result yet); run the same 'gigadream run' command again to finish "
                         "it, or pass --partial to export what it holds")
    if "canvas" not in rec:
        return store.source(0), "the source image: the run has finished no pass yet"
    canvas = rec["canvas"]
    shape = tuple(canvas["shape"])
    octave = next(k for k in range(rec["pyramid"]["levels"]) if store.source(k).shape == shape)
    view = result_view(canvas, store.view(canvas), store.source(octave))
    (h, w), (h0, w0) = shape, store.source(0).shape
    return view, (f"an unfinished run's latest canvas, after {done} passes: octave {octave}, "
                  f"{w}×{h} px (the image is {w0}×{h0} px)")


def config_output(out: Path | str) -> Path | str:
    """OUT.yaml: the resolved config written beside the result."""
    if objects.is_url(out):
        return str(out) + ".yaml"
    return out.with_name(out.name + ".yaml")


def _write_text(path: Path | str, text: str) -> None:
    """A whole file (renamed into place) or object (one PUT), never seen half-written."""
    if objects.is_url(path):
        objects.put(path, text.encode())
    else:
        atomic_write_text(path, text)


def check_config_output(out: Path | str, overwrite: bool) -> None:
    """Refuse, before any work, to replace an OUT.yaml that is there without ``overwrite``."""
    path = config_output(out)
    there = objects.head(path, "output") is not None if objects.is_url(path) else path.exists()
    if there and not overwrite:
        raise OutputError(f"output {path} (the config of {objects.name(out)}) already exists; "
                          "pass --overwrite to replace it or choose another name with -o")


def _reproducible_yaml(cfg: Config, input_path: Path) -> str:
    return (f"# gigadream {__version__}: the resolved config of this result.\n"
            f"# Reproduce: gigadream run {input_name(input_path)} --config THIS_FILE\n"
            + to_yaml(cfg))
