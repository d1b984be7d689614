"""Videos and frame sequences: every frame through the still pipeline, each after the first
started from the result of the one before, carried along the optical flow (Ruder,
Dosovitskiy and Brox, *Artistic style transfer for videos*, 2016), so strokes and dreams move
with the scene instead of boiling.

For frame t after the first:

1. flow: DIS optical flow between the input frames t−1 and t, on greys shrunk to at most
   ``sequence.flow_pixels`` (``flow.frame_flow``), with Ruder et al.'s reliability mask;
2. warp: a tiled pass over the frame (``Warp``, on the run's cluster) carries frame t−1's
   result, read from its store, into frame t's geometry, tile by tile (a halo as wide as the
   largest motion), so no step holds a whole giant frame. Dream blends it with the new frame
   (``sequence.blend``): that blend is the frame's input;
3. the still run of the frame (``pipeline.run``) with a ``modes.Prior``: style starts from
   the warped result at its finest octave and keeps near it where the flow is reliable (the
   temporal loss); dream runs every octave again with fewer passes, at the first frame's
   gradient scales.

One cluster and one model load serve every frame. The sequence store (``OUT.gdseq`` beside
the output, or ``--store``) records each finished frame; a killed run resumes in the frame it
was in (its still store resumes after its last pass), and, as every step is a pure function
of what is recorded, the frames equal an uninterrupted run's. A video output is encoded once
every frame is done, from the frames the store keeps losslessly (8-bit TIFF), so a resume
never reopens a half-written video.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cluster import BackgroundCluster, check_gpus
from .config import Config, ExportConfig, to_dict
from .engine import TileTask, map_tiles
from .errors import ConfigError, OutputError
from .events import Stage, Timings, Total, Work
from .export import FORMATS, check_output, export
from .flow import flow_shape, frame_flow, tile_mask, warp_halo, warp_tile
from .ingest import ingest, open_image, wrap_setting
from .modes import Prior, mode_for, result_view
from .pipeline import run as run_still, work_units
from .record import RESULT_SECTIONS, check_config_output, write_config_output
from .storage.location import is_url
from .storage.store import Store
from .tiling import grid
from .video import (VIDEO_EXTENSIONS, Frame, FrameSource, VideoWriter, check_video_output,
                    is_sequence_input, open_frames)

__all__ = ["SequenceReport", "is_sequence_input", "run_sequence", "default_output"]

VIDEO = (".mp4", ".webm")
# Frames are files the still export writes, one image each (not deep zoom).
FRAME_FORMATS = ("jpeg", "png", "tiff")
# Sequence settings that change a frame's pixels: a store recorded with others is not resumed.
RESULT_KEYS = ("frames", "stride", "temporal_weight", "blend", "passes", "iterations", "flow",
               "flow_pixels")
RECORD = "sequence.json"


@dataclass
class SequenceReport(Timings):
    """What a sequence run did: the frames it ran (resumed ones not included) and the
    seconds each took, its first frame (a cold still) first."""
    output: Path | None = None
    shape: tuple[int, int] = (0, 0)
    frames: int = 0                       # frames of the output
    indices: list[int] = field(default_factory=list)   # input frames (0-based) run now
    seconds: list[float] = field(default_factory=list)  # wall time of each, in that order


def default_output(spec: str, label: str) -> Path:
    """INPUT-LABEL.mp4 beside a video; FOLDER-LABEL/ (JPEG frames) beside a folder of
    frames (``label``: ``config.output_label``, the preset's name or the mode)."""
    p = Path(spec.split("*")[0].rstrip("/") or ".")
    if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
        return p.with_name(f"{p.stem}-{label}.mp4")
    folder = p if p.is_dir() else p.parent
    return folder.with_name(f"{folder.name}-{label}")


def frame_indices(cfg: Config, count: int) -> list[int]:
    """The input frames to run (0-based): ``sequence.frames`` (counted from 1) every
    ``sequence.stride``-th; one line where the range falls outside the clip."""
    s = cfg.sequence
    first, last = 1, count
    if s.frames != "all":
        a, _, b = s.frames.partition("-")
        first, last = int(a), int(b) if b else count
        if first > count or last > count:
            raise ConfigError(f"sequence.frames: {s.frames} reaches past the input's "
                              f"{count} frames; give a range within 1-{count}")
    return list(range(first - 1, last, s.stride))


@dataclass(frozen=True)
class Output:
    """Where the frames go: a video (``.mp4``/``.webm``), or a folder of numbered frames
    (``-o DIR`` writes ``DIR/000001.jpg``...; ``-o 'DIR/frame-%04d.tif'`` names them)."""
    path: Path
    video: bool
    pattern: str = "%06d.jpg"            # a frame's name in the folder, from its number (1-)

    @classmethod
    def of(cls, out: Path) -> Output:
        out = Path(out)
        if out.suffix.lower() in VIDEO:
            return cls(out, True)
        if "%" in out.name:
            ext = Path(out.name.replace("%", "")).suffix.lower()
            if FORMATS.get(ext) not in FRAME_FORMATS:
                raise OutputError(f"output {out}: frames are written as .jpg, .png or .tif "
                                  "(16-bit with export.bits=16); name them so, e.g. "
                                  f"{out.parent}/%06d.jpg")
            try:
                out.name % 1
            except (TypeError, ValueError):
                raise OutputError(f"output {out}: the frame number goes where %d (or %06d) "
                                  "stands, once; e.g. frame-%06d.jpg") from None
            return cls(out.parent, False, out.name)
        if out.suffix:
            raise OutputError(f"output {out}: a sequence is written as .mp4 or .webm, or as "
                              "a folder of frames (-o FOLDER, or -o 'FOLDER/%06d.tif')")
        return cls(out, False)

    def frame(self, index: int) -> Path:
        """The output file of input frame ``index`` (0-based; numbered from 1)."""
        return self.path / (self.pattern % (index + 1))

    @property
    def store(self) -> Path:
        """The default sequence store: OUT.gdseq beside the video or the folder."""
        return self.path.with_name(self.path.name + ".gdseq")

    @property
    def describes(self) -> Path:
        """Where OUT.yaml goes: beside the video, or the folder."""
        return self.path


class _SequenceStore:
    """The sequence's working folder: ``sequence.json`` (what is done), one still store per
    frame in flight (``f000012.gdstore``), the warp's store, small grey frames for the flow,
    and, for a video output, every finished frame as a lossless TIFF (``frames/``)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def record(self) -> dict:
        p = self.path / RECORD
        return json.loads(p.read_text()) if p.exists() else {}

    def done(self) -> list[tuple[int, int | None]]:
        """(input frame, pts) of each finished frame, in order. The record holds their
        number, ``frames.txt`` one line each (appended: the record stays small and each
        frame writes a line, however long the clip); a line past the number is a frame
        whose end the record never saw, and it is run again."""
        n = self.record().get("done", 0)
        p = self.path / "frames.txt"
        lines = p.read_text().splitlines()[:n] if n else []
        return [(int(i), None if t == "-" else int(t)) for i, t in (ln.split() for ln in lines)]

    def finish(self, index: int, pts: int | None) -> None:
        """Frame ``index`` is done: its line, then the record's count."""
        done = self.done()
        p = self.path / "frames.txt"
        if len(p.read_text().splitlines()) != len(done):      # a line past the count
            p.write_text("".join(f"{i} {'-' if t is None else t}\n" for i, t in done))
        with open(p, "a") as f:
            f.write(f"{index} {'-' if pts is None else pts}\n")
            f.flush()
            os.fsync(f.fileno())
        self.update(done=len(done) + 1)

    def update(self, **fields: Any) -> None:
        rec = {**self.record(), **fields}
        tmp = self.path / (RECORD + ".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(self.path / RECORD)     # a kill leaves the old record or the new

    def still(self, index: int) -> Path:
        return self.path / f"f{index:06d}.gdstore"

    def grey(self, index: int) -> Path:
        return self.path / f"grey{index:06d}.npy"

    def frame(self, index: int) -> Path:
        return self.path / "frames" / f"{index:06d}.tif"

    def input(self, index: int) -> Path:
        """A video frame's pixels, the input of its still run (made once: the still store
        that resumes it knows its input by size, time and content)."""
        return self.path / f"input{index:06d}.tif"

    def warp(self, index: int) -> Path:
        """The warp pass's store of frame ``index`` (a store of its own, with its own run
        id: what workers keep open of one frame's is not the next one's)."""
        return self.path / f"warp{index:06d}.gdstore"

    def blend(self, index: int) -> Path:
        """A dream frame's start, the input of its still run (made once, likewise)."""
        return self.path / f"blend{index:06d}.tif"

    def remove(self, path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _open_sequence_store(path: Path, spec: str, source: FrameSource, cfg: Config,
                         restart: bool) -> _SequenceStore:
    """The store a previous attempt left, checked to belong to this input and these
    settings, or a new one."""
    store = _SequenceStore(path)
    identity = {"input": str(Path(spec).absolute()) if "*" not in spec else spec,
                "frames": source.count, "shape": list(source.shape),
                "config": _result_settings(cfg)}
    if path.exists() and restart:
        shutil.rmtree(path)
    if path.exists():
        rec = store.record()
        if not rec:
            raise OutputError(f"{path} exists but is no sequence store; remove it or name "
                              "another with --store")
        if {k: rec.get(k) for k in identity} != identity:
            raise OutputError(f"{path} holds a run of other frames or settings; pass "
                              "--restart to start over, or use another --store")
        return store
    path.mkdir(parents=True)
    store.update(**identity, done=0, time_base=None)
    (path / "frames.txt").write_text("")
    return store


def _result_settings(cfg: Config) -> dict:
    d = to_dict(cfg)
    out = {k: d[k] for k in RESULT_SECTIONS}
    out["sequence"] = {k: d["sequence"][k] for k in RESULT_KEYS}
    return json.loads(json.dumps(out))


def resolve_wrap(cfg: Config, source: FrameSource) -> Config:
    """``tiling.wrap`` for the clip: x where a video says it is 360° (spherical metadata);
    otherwise as a still resolves it, from the first frame's file (XMP and a 2:1 shape)."""
    w = cfg.tiling.wrap
    if w == "auto":
        if source.spherical:
            w = "x"
        elif source.kind == "images":
            first = next(iter(source.frames(0, 1)))
            w, _ = wrap_setting("auto", first.path, source.shape)
        else:
            w = "none"
    return dataclasses.replace(cfg, tiling=dataclasses.replace(cfg.tiling, wrap=w))


def _grey(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The frame at ``path`` as (h, w) uint8 grey of ``shape``: what the flow compares."""
    im = open_image(path)
    h, w = shape
    im = im.thumbnail_image(w, height=h, size="force")
    if im.bands >= 3:
        im = im.extract_band(0, n=3).colourspace("b-w")
    else:
        im = im.extract_band(0)
    if im.format != "uchar":
        im = (im * (255.0 / 65535.0) if im.format == "ushort" else im).cast("uchar")
    return np.ascontiguousarray(im.numpy().reshape(h, w))


def _write_pixels(pixels: np.ndarray, path: Path) -> None:
    """A decoded video frame (h, w, 3) uint8 as an uncompressed TIFF: the still run's input."""
    import pyvips
    im = pyvips.Image.new_from_array(pixels).copy(interpretation="srgb")
    tmp = path.with_suffix(".part.tif")
    im.tiffsave(str(tmp), compression="none", tile=True, tile_width=256, tile_height=256)
    tmp.replace(path)


@dataclass(frozen=True)
class Warp:
    """The warp pass's processor: each tile's core is the previous result (the window the
    engine reads, with ``margin`` of halo) sampled at x + backward(x) (``flow.warp_tile``);
    with ``blend`` (dream) mixed with the new frame where the flow is reliable (c):
    frame + blend·c·(warped − frame). Where it is not (what the motion reveals, motion
    boundaries) the new frame stands alone: a smeared old dream there would ghost. The
    pass data, (backward flow, reliability) at the flow's size, goes to each worker once."""

    shape: tuple[int, int]
    margin: int
    wrap: bool
    blend: float | None = None
    frame: Any = None              # ArrayView of the new frame (dream's blend)
    batchable = False
    window_dtype = np.float32

    def process(self, windows, tiles, rngs, data) -> list[tuple[np.ndarray, dict]]:
        backward, reliable = data
        out = []
        for window, tile in zip(windows, tiles):
            core = warp_tile(window, tile.window, tile.core, backward, self.shape, self.wrap)
            if self.blend is not None:
                frame = self.frame.read(tile.core)
                c = tile_mask(reliable, tile.core, self.shape, self.wrap)
                core = frame + (self.blend * c) * (core - frame)
            out.append((core, {}))
        return out


def run_sequence(spec: str, cfg: Config, out: Path | None = None, *,
                 store_path: Path | None = None, overwrite: bool = False,
                 restart: bool = False, on_event: Callable[[object], None] = lambda e: None,
                 cluster: BackgroundCluster | None = None) -> SequenceReport:
    """Run ``cfg`` over every frame of ``spec`` (a video file, a folder or a glob of
    images) into ``out`` (``Output``); see the module's docstring for the steps."""
    cfg = cfg.resolved(Path.cwd())
    for what, where in (("output", out), ("store", store_path)):
        if where is not None and is_url(str(where)):
            raise OutputError(f"{what} {where}: a sequence's frames, store and video are "
                              "written on this machine's disks; give a local path (copy "
                              "the result to object storage afterwards)")
    with open_frames(spec) as source:
        out = Path(out or default_output(spec, cfg.mode))
        target = Output.of(out)
        indices = frame_indices(cfg, source.count)
        cfg = resolve_wrap(cfg, source)
        mode = mode_for(cfg)
        mode.check_settings()
        mode.check()
        keep_store = store_path is not None
        seq_path = Path(store_path or target.store)
        frames_export = _frame_export(cfg, target)
        _check_outputs(target, source, indices, cfg, overwrite, seq_path, restart)
        if cluster is None:
            check_gpus(cfg.engine.gpus, cfg.engine.scheduler)
        store = _open_sequence_store(seq_path, spec, source, cfg, restart)
        done = [i for i, _ in store.done()]
        report = SequenceReport(shape=source.shape, frames=len(indices))
        first_units = work_units(mode.plan(source.shape))
        later_units = work_units(mode_for(cfg, prior=Prior()).plan(source.shape))
        on_event(Total(first_units + later_units * (len(indices) - 1)))
        if done:
            on_event(Stage("resume", f"{len(done)} of {len(indices)} frames done"))
            on_event(Work(first_units + later_units * (len(done) - 1)))
        own = cluster is None and len(done) < len(indices)
        workers = cluster if not own else BackgroundCluster(
            cfg.engine.workers, cfg.engine.threads, cfg.engine.scheduler, mode.warm_up(),
            cfg.engine.gpus)
        try:
            if len(done) < len(indices):
                _frames(source, indices, done, cfg, target, store, workers, frames_export,
                        report, on_event)
            if own:
                workers.close()
            if target.video:
                _encode(source, store, indices, cfg, target, on_event)
            write_config_output(target.describes, cfg, spec)
        finally:
            if own:
                workers.close()
        report.output = out
        if not keep_store:
            shutil.rmtree(seq_path, ignore_errors=True)
        return report


def _frame_export(cfg: Config, target: Output) -> ExportConfig:
    """How each frame's still run exports: the user's export settings into a folder of
    frames; a lossless 8-bit TIFF into the store when a video is made of them."""
    if not target.video:
        return cfg.export
    return dataclasses.replace(cfg.export, bits=8, tiff_compression="deflate")


def _check_outputs(target: Output, source: FrameSource, indices: list[int], cfg: Config,
                   overwrite: bool, seq_path: Path, restart: bool) -> None:
    """Refuse, before any work, outputs that cannot be written or would replace files
    without ``overwrite``: the video, or each frame that no attempt before wrote (a resume
    writes those again: they are its own)."""
    check_config_output(target.describes, overwrite)
    if target.video:
        check_video_output(target.path, cfg.sequence.codec, overwrite)
        return
    if target.path.exists() and not target.path.is_dir():
        raise OutputError(f"output {target.path} is a file; name a folder for the frames")
    if not target.path.exists():
        if not target.path.parent.is_dir():
            raise OutputError(f"output folder {target.path.parent} does not exist; "
                              "create it first")
        check_output(target.path.parent / target.frame(indices[0]).name, source.shape, True,
                     cfg.export)        # the format, the bits and the folder's rights
        return
    ours = set()
    if seq_path.exists() and not restart:
        ours = {i for i, _ in _SequenceStore(seq_path).done()}
    for i in indices:
        if i not in ours:
            check_output(target.frame(i), source.shape, overwrite, cfg.export)


def _frames(source: FrameSource, indices: list[int], done: list[int], cfg: Config,
            target: Output, store: _SequenceStore, workers, frames_export: ExportConfig,
            report: SequenceReport, on_event) -> None:
    """Every frame not done yet, in order; each one recorded when its result is out."""
    n = len(indices)
    if not target.video:
        target.path.mkdir(exist_ok=True)
    (store.path / "frames").mkdir(exist_ok=True)
    position = {idx: i for i, idx in enumerate(indices)}
    on_event(Stage("cluster", f"{cfg.engine.workers} workers"))
    workers.executor()      # started and its model loaded: no frame's time includes that
    for frame in source.frames(indices[len(done)], indices[-1] + 1, cfg.sequence.stride):
        i = position[frame.index]
        t0 = time.perf_counter()
        path = frame.path
        if path is None:
            path = store.input(frame.index)
            if not path.exists():
                _write_pixels(frame.pixels, path)
        # each frame its own seed: tile grids and jitter that stood still while the scene
        # moves would show as a fixed pattern over it
        frame_cfg = dataclasses.replace(cfg, seed=cfg.seed + frame.index,
                                        export=frames_export)
        result = store.frame(frame.index) if target.video else target.frame(frame.index)
        tell = _framed(on_event, i, n)
        fshape = flow_shape(source.shape, cfg.sequence.flow_pixels)
        grey = _grey(path, fshape)
        np.save(store.grey(frame.index), grey)
        if i == 0:
            run_still(path, frame_cfg, result, store_path=store.still(frame.index),
                      overwrite=True, on_event=tell, cluster=workers, describe=False)
        else:
            prev = indices[i - 1]
            path, prior, recorded = _carry(store, prev, frame.index, path, grey, fshape,
                                           frame_cfg, workers, tell)
            run_still(path, frame_cfg, result, store_path=store.still(frame.index),
                      overwrite=True, on_event=tell, cluster=workers, prior=prior,
                      recorded=recorded, describe=False)
        if i == 0:
            store.update(first=_first_record(store.still(frame.index)),
                         time_base=str(frame.time_base) if frame.time_base else None)
        store.finish(frame.index, frame.pts)
        if i > 0:       # its result was the warp's source; the new one's is next
            store.remove(store.still(indices[i - 1]))
            store.remove(store.grey(indices[i - 1]))
        for made in (store.warp(frame.index), store.blend(frame.index),
                     store.input(frame.index)):
            store.remove(made)
        report.indices.append(frame.index)
        report.seconds.append(time.perf_counter() - t0)


def _first_record(still: Path) -> dict:
    """What later frames take from the first frame's run record: dream's gradient scales
    (every frame then dreams as strongly, and none calibrates again)."""
    rec = Store.open(still).record()
    return {k: rec[k] for k in ("grad_scale",) if k in rec}


def _framed(on_event, i: int, n: int):
    """The still runs' events as the sequence's: their stages named with the frame, their
    totals dropped (the sequence announced the whole clip's)."""
    def tell(e) -> None:
        if isinstance(e, Total):
            return
        if isinstance(e, Stage):
            e = dataclasses.replace(e, name=f"frame {i + 1}/{n}",
                                    detail=f"{e.name} {e.detail}".strip())
        on_event(e)
    return tell


def _carry(store: _SequenceStore, prev: int, index: int, path: Path, grey: np.ndarray,
           fshape: tuple[int, int], cfg: Config, workers, tell):
    """Frame ``index``'s start from frame ``prev``'s result: (the still run's input, its
    ``Prior``, the record sections it adopts)."""
    s = cfg.sequence
    recorded = store.record().get("first", {})
    dream = cfg.mode == "dream"
    if dream and store.blend(index).exists():       # an attempt before made it
        return store.blend(index), Prior(), recorded
    tell(Stage("flow", f"{fshape[1]}×{fshape[0]} px, {s.flow}"))
    backward, reliable = frame_flow(np.load(store.grey(prev)), grey, s.flow, cfg.wraps)
    still = Store.open(store.still(prev))
    rec = still.record()
    previous = result_view(rec["result"], still.view(rec["result"]),
                           still.source(0, cfg.wraps))
    shape = previous.shape
    warp_store = Store.create(store.warp(index), overwrite=True)
    # Where the flow is not reliable (what the motion reveals), style starts from the new
    # frame too (blend 1 elsewhere): started from the smeared warp there, its few steps left
    # streaks that the next frames carried along as if they were strokes (profiling/
    # sequences.md, trails); started from the photo, the patch is painted over a few frames.
    blend = s.blend if dream else 1.0 if cfg.mode == "style" else None
    frame = None
    if blend is not None:
        ingest(path, warp_store, octaves=1, wrap=cfg.wraps)
        frame = warp_store.source(0, cfg.wraps)
    halo = warp_halo(backward, shape)
    tile = cfg.tiling.tile
    canvas = warp_store.canvas(0, 0, shape, tile, (0, 0), cfg.wraps)
    proc = Warp(shape, halo, cfg.wraps, blend, frame)
    tiles = grid(shape, tile, (0, 0), halo, wrap=cfg.wraps)
    tell(Stage("warp", f"{len(tiles)} tiles, halo {halo} px"))
    ex = workers.executor()
    map_tiles(ex, [TileTask(previous, canvas, proc, t, (cfg.seed, 0, 0), run=warp_store.run)
                   for t in tiles],
              False, data=ex.share((backward, reliable)), keep=False)
    warp_store.seal(canvas)
    if dream:
        blend = store.blend(index)
        export(canvas, blend, dataclasses.replace(cfg.export, bits=8, tiff_compression="none"),
               overwrite=True)
        return blend, Prior(), recorded
    if cfg.mode == "style":
        return path, Prior(canvas, reliable), recorded
    return path, Prior(), recorded


def _encode(source: FrameSource, store: _SequenceStore, indices: list[int], cfg: Config,
            target: Output, on_event) -> None:
    """The video, from the frames the store keeps, with the input's timestamps (and audio
    where the input has it: ``video.VideoWriter``)."""
    import pyvips
    rec, done = store.record(), store.done()
    tb = Fraction(rec["time_base"]) if rec.get("time_base") else None
    on_event(Stage("encode", f"{len(done)} frames → {target.path.name}"))
    with VideoWriter(target.path, source.shape, source, codec=cfg.sequence.codec,
                     quality=None if cfg.sequence.quality == "auto" else cfg.sequence.quality,
                     spherical=cfg.wraps) as writer:
        for index, pts in done:
            im = pyvips.Image.new_from_file(str(store.frame(index)), access="sequential")
            writer.write(np.ascontiguousarray(im.numpy()[..., :3]),
                         Frame(index, pts, tb, None, None))
