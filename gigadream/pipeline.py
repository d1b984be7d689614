"""A whole run: ingest → pyramid → for each octave, coarsest first, its passes → export.

The core never prints: it reports ``Stage`` and ``Work`` events to ``on_event``; the CLI turns
them into a progress bar, tests and profilers attach their own.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .config import Config, to_dict, to_yaml
from .classes import indices
from .dream import ClassLogits, DeepDream, Identity, objective
from .engine import (BackgroundCluster, TileTask, map_tiles, model_batch, release_freed_memory,
                     run_tile)
from .errors import InputError, StoreError
from .export import check_output, export
from .ingest import build_pyramid, fingerprint, image_shape, ingest
from .resample import octave_shape
from .store import ArrayView, OctaveStart, Store, atomic_write_text, is_store
from .style import OriginalColors, StyleTransfer, add_stats, style_side, style_targets
from .tiling import grid, pass_offset


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


@dataclass(frozen=True)
class PassPlan:
    octave: int
    pass_: int
    shape: tuple[int, int]
    offset: tuple[int, int]
    tiles: int
    tile: int                # tile side (the whole octave when it is stylised whole)
    iterations: int          # processor steps per tile
    stats: bool = False      # style: a Gram-sum task per tile before the pass

    @property
    def whole(self) -> bool:
        """One tile covers the octave: it needs no margin."""
        return self.tiles == 1 and self.tile >= max(self.shape)

    @property
    def units(self) -> int:
        """Progress units: a tile × its steps, plus one per statistics task."""
        return self.tiles * (self.iterations + self.stats)


@dataclass
class RunReport:
    """What a run did and where its time went (for the CLI, benchmarks and profiling)."""
    output: Path | None = None
    shape: tuple[int, int] = (0, 0)
    stage_s: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    model_s: float = 0.0
    model_steps: int = 0          # model calls (forward + backward) of the passes' tiles


def plan(shape: tuple[int, int], cfg: Config) -> list[PassPlan]:
    """Every pass of the run in order, with its random grid offset and tile count.

    Style stylises its coarsest octave whole (one tile, ``whole_iterations`` steps), then
    refines each finer octave tile by tile (Gatys et al. 2017, "Controlling Perceptual
    Factors", section 5: coarse-to-fine for high resolutions).
    """
    out, t = [], cfg.tiling.tile
    n, scale = cfg.octaves(shape)
    for k in reversed(range(n)):
        s = octave_shape(shape, scale, k)
        if cfg.mode == "style" and k == n - 1:
            out.append(PassPlan(k, 0, s, (0, 0), 1, max(s), cfg.style.whole_iterations))
            continue
        passes, its = ((cfg.style.passes, cfg.style.iterations) if cfg.mode == "style" else
                       (cfg.dream.passes, cfg.dream.iterations if cfg.mode == "dream" else 1))
        for p in range(passes):
            # a tile as large as the octave covers it whole: no offset would split it
            off = pass_offset(cfg.seed, k, p, t) if t < max(s) else (0, 0)
            tiles = len(grid(s, t, off))
            out.append(PassPlan(k, p, s, off, tiles, t, its, cfg.mode == "style" and tiles > 1))
    return out


def work_units(passes: list[PassPlan]) -> int:
    return sum(p.units for p in passes)


def make_processor(cfg: Config, grad_scale: float = 1.0, pp: PassPlan | None = None,
                   first: bool = False):
    """The pass's processor. Style: ``pp`` says whether the pass is whole (no margin) and how
    many steps; ``first`` marks the run's first pass (where ``init: random`` applies)."""
    if cfg.mode == "identity":
        return Identity(cfg.margin)
    if cfg.mode == "style":
        s = cfg.style
        return StyleTransfer(cfg.model.name, cfg.model.weights,
                             cfg.style_layer_list("content_layers"),
                             cfg.style_layer_list("style_layers"), s.content_weight,
                             s.style_weight, s.tv_weight, s.optimizer, s.learning_rate,
                             pp.iterations if pp else s.iterations, s.normalize_gradients,
                             s.pooling, 0 if pp is not None and pp.whole else cfg.margin,
                             random_init=first and s.init == "random")
    # Jitter wraps the window round; below the margin, the wrap seam stays out of the core.
    jitter = min(cfg.dream.jitter, cfg.margin - 1) if cfg.margin > 0 else cfg.dream.jitter
    objectives = tuple(objective(n, w) for n, w in cfg.dream_layers)
    if cfg.dream.classes:
        objectives += (ClassLogits(indices(cfg.dream.classes)),)
    return DeepDream(cfg.model.name, cfg.model.weights, objectives, cfg.dream.iterations,
                     cfg.dream.step_size, jitter, cfg.margin, grad_scale, cfg.dream.dose,
                     cfg.model.precision)


def calibrate(executor, view, cfg: Config, octave: int, report: RunReport | None = None,
              batch: int = 1) -> float:
    """Mean |gradient| over a seeded sample of the octave's tiles: the step normaliser that
    every tile of the octave shares (DeepDream's whole-image mean |g|, estimated)."""
    tiles = grid(view.shape, cfg.tiling.tile, (0, 0), cfg.margin, cfg.align)
    rng = np.random.default_rng([cfg.seed, octave, 0xCA1])
    pick = sorted(rng.choice(len(tiles), min(len(tiles), cfg.dream.calibration_tiles), replace=False))
    proc = make_processor(cfg)
    tasks = [TileTask(view, None, proc, tiles[i], (cfg.seed, octave, -1), "stat") for i in pick]
    stats = map_tiles(executor, tasks, True, batch)
    if report is not None:
        report.model_s += sum(s["model_s"] for s in stats)
    total = sum(s["grad_abs_sum"] for s in stats)
    count = sum(s["count"] for s in stats)
    return max(total / max(count, 1), 1e-12)


def _source(input_path: Path, store: Store, shape: tuple[int, int], cfg: Config,
            keep_store: bool, on_event, report: RunReport) -> None:
    """The input streamed into the store's source pyramid, unless an attempt before did it."""
    t = time.perf_counter()
    if not store.has_source():
        on_event(Stage("ingest", f"{shape[1]}×{shape[0]} px"))
        octaves, scale = cfg.octaves(shape)
        try:
            ingest(input_path, store, on_rows=_rows(on_event, "ingest", shape[0]),
                   octaves=octaves, scale=scale)
        except InputError:      # a damaged input: nothing worth resuming, leave no litter
            if not keep_store:
                shutil.rmtree(store.path, ignore_errors=True)
            raise
        release_freed_memory()
    report.stage_s["ingest"] = time.perf_counter() - t
    report.shape = shape


def default_store(out: Path) -> Path:
    return out.with_name(out.name + ".gdstore")


def run(input_path: Path, cfg: Config, out: Path, *, store_path: Path | None = None,
        overwrite: bool = False, restart: bool = False,
        on_event: Callable[[object], None] = lambda e: None) -> RunReport:
    """Ingest, passes, export. The store (``store_path``, default ``OUT.gdstore``) records
    each finished stage and pass; running the same command again resumes after the last one,
    ``restart`` starts over. The default store is removed after success. The Dask cluster
    starts while the source is ingested."""
    input_path, out = Path(input_path), Path(out)
    report = RunReport()
    shape = image_shape(input_path)              # fails fast on a bad input, decodes nothing
    check_output(out, shape, overwrite)          # fails fast before hours of work
    if cfg.mode == "style":
        check_style_images(cfg.style.images)
    keep_store = store_path is not None
    store_path = Path(store_path) if store_path else default_store(out)
    store = open_run_store(store_path, input_path, cfg, restart)
    passes = plan(shape, cfg)
    on_event(Total(work_units(passes)))

    model = (cfg.model.name, cfg.model.weights) if cfg.mode != "identity" else None
    workers = BackgroundCluster(cfg.engine.workers, cfg.engine.threads, cfg.engine.scheduler,
                                model)
    try:
        _source(input_path, store, shape, cfg, keep_store, on_event, report)
        octaves, scale = cfg.octaves(shape)
        t = time.perf_counter()
        # Ingest made the pyramid; a store ingested for other octaves gets its levels here.
        on_event(Stage("pyramid", f"{octaves} octaves"))
        sources = build_pyramid(store, octaves, scale)
        report.stage_s["pyramid"] = time.perf_counter() - t
        t = time.perf_counter()
        on_event(Stage("cluster", f"{cfg.engine.workers} workers"))
        ex = workers.executor()         # what is left of its start
        report.stage_s["cluster"] = time.perf_counter() - t
        t = time.perf_counter()
        _passes(ex, store, sources, cfg, passes, on_event, report)
        report.stage_s["passes"] = time.perf_counter() - t
        workers.close()                 # before the export: its memory is not needed there
        view = result_view(store, store.record()["result"], sources[0])

        t = time.perf_counter()
        on_event(Stage("export", out.name))
        export(view, out, cfg.export, overwrite=overwrite,
               on_rows=_rows(on_event, "export", shape[0]))
        config_text = _reproducible_yaml(cfg, input_path)
        atomic_write_text(out.with_name(out.name + ".yaml"), config_text)
        report.stage_s["export"] = time.perf_counter() - t
    finally:
        workers.close()
    report.output = out
    if not keep_store:
        shutil.rmtree(store.path, ignore_errors=True)
    return report


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
RESULT_SECTIONS = ("mode", "seed", "model", "dream", "style", "tiling")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("layers", "content_layers", "style_layers"):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def config_difference(recorded: dict, cfg: Config) -> list[str]:
    """Result-changing settings that differ: 'key: STORE → NOW'."""
    now = _flat({k: v for k, v in to_dict(cfg).items() if k in RESULT_SECTIONS})
    had = _flat({k: v for k, v in recorded.items() if k in RESULT_SECTIONS})
    return [f"{k}: {had.get(k)!r} in the store, {now.get(k)!r} now"
            for k in sorted(set(now) | set(had)) if now.get(k) != had.get(k)]


def open_run_store(path: Path, input_path: Path, cfg: Config, restart: bool) -> Store:
    """The run's store: a new one, or the one a previous attempt left, checked to belong to
    this input and config; ``restart`` replaces it (only if it is a gigadream store)."""
    if path.exists() and is_store(path) and not restart:
        store = Store.open(path)
        rec = store.record()
        had = rec.get("input")
        if had and had != {"name": input_path.name, **fingerprint(input_path)}:
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
    return store


def _versions() -> dict:
    """Versions that shape the bytes of a result (a resumed run on others may differ)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"gigadream": __version__}
    for pkg in ("torch", "zarr", "numpy", "pyvips", "dask", "distributed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def check_style_images(paths: tuple[str, ...]) -> None:
    """Every style image opens (header only), or one line says which does not."""
    for p in paths:
        image_shape(Path(p), role="style image")


def result_view(store: Store, result: dict, source: ArrayView):
    """The run's result as recorded in run.json, in the content's colours if asked."""
    view = store.view(result)
    return OriginalColors(view, source) if result.get("original_colors") else view


def _reproducible_yaml(cfg: Config, input_path: Path) -> str:
    return (f"# gigadream {__version__}: the resolved config of this result.\n"
            f"# Reproduce: gigadream run {input_path.name} --config THIS_FILE\n" + to_yaml(cfg))


def _passes(ex, store: Store, sources: list[ArrayView], cfg: Config, passes: list[PassPlan],
            on_event, report: RunReport) -> None:
    """Run the passes after the last one the store records as done; each finished pass is
    recorded (atomically) with the canvas it wrote, which the next pass reads."""
    rec = store.record()
    first = rec.get("done", -1) + 1
    view = store.view(rec["canvas"]) if first > 0 else None
    scales = rec.get("grad_scale", {})
    style = cfg.mode == "style"
    octave_ready = None            # the octave whose shared values (scale, style target) we hold
    batch = (model_batch(cfg.engine.batch, ex, cfg.tiling.tile + 2 * cfg.margin)
             if cfg.mode == "dream" else 1)
    if first > 0:
        on_event(Stage("resume", f"after pass {first} of {len(passes)}"))
        on_event(Work(sum(p.units for p in passes[:first])))
        for k in range(passes[first - 1].octave + 1, len(sources)):
            store.drop_canvases(k)      # a kill between recording a pass and this cleanup
    for i in range(first, len(passes)):
        pp, k = passes[i], passes[i].octave
        if pp.pass_ == 0:
            view = sources[k] if view is None else OctaveStart(sources[k], view, sources[k + 1])
        if octave_ready != k:
            octave_ready = k
            if cfg.mode == "dream":
                if str(k) not in scales:    # measured once; a resumed run reuses it
                    on_event(Stage("calibrate", f"octave {k}"))
                    scales[str(k)] = calibrate(ex, view, cfg, k, report, batch)
                    store.update_record(grad_scale=scales)
                proc = make_processor(cfg, scales[str(k)])
            elif style:   # the style Grams at this octave's size, computed once, on a worker
                s = cfg.style
                style_target = ex.remote(style_targets, s.images, s.blend_weights, cfg.model.name,
                                         cfg.model.weights, s.pooling,
                                         cfg.style_layer_list("style_layers"),
                                         style_side(s.style_scale, pp.shape))
            else:
                proc = make_processor(cfg)
        if style:
            proc = make_processor(cfg, pp=pp, first=i == 0)
        tiles = grid(pp.shape, pp.tile, pp.offset, proc.margin, cfg.align)
        seed = (cfg.seed, k, pp.pass_)
        shared = ()
        if style:
            shared = (style_target,)
            if pp.stats:   # one style across tiles: the canvas's Gram, reduced on the workers
                on_event(Stage("grams", f"octave {k} pass {pp.pass_ + 1}"))
                stats = [ex.remote(run_tile, TileTask(view, None, proc, t, seed, "stat"))
                         for t in tiles]
                shared += (ex.tree_reduce(add_stats, stats),)
                ex.wait(stats, lambda: on_event(Work(1)))
        on_event(Stage("pass", f"octave {k} pass {pp.pass_ + 1}: "
                               f"{pp.shape[1]}×{pp.shape[0]} px, {pp.tiles} tiles"
                               + (f", {batch} a step" if batch > 1 else ""),
                       pixels=pp.shape[0] * pp.shape[1]))
        target = store.canvas(k, pp.pass_ % 2, pp.shape, pp.tile, pp.offset)
        tasks = [TileTask(view, target, proc, tile, seed, content=sources[k] if style else None)
                 for tile in tiles]

        def done(results: list[dict]) -> None:
            for stats in results:
                report.model_s += stats.get("model_s", 0.0)
                report.model_steps += len(stats["model_at"])
                on_event(Work(pp.iterations))

        map_tiles(ex, tasks, cfg.mode != "identity", batch, done, shared)
        report.tiles += len(tasks)
        store.update_record(done=i, canvas=target.record())
        if pp.pass_ == 0 and k + 1 < len(sources):
            store.drop_canvases(k + 1)          # its detail now lives in this octave's canvas
        view = target
    store.update_record(result={**store.record()["canvas"],
                                "original_colors": style and cfg.style.original_colors})
    store.drop_spares()
