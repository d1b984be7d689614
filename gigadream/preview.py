"""``gigadream preview``: the night's result in minutes, from afar and up close.

An artist judges a giant dream twice: from across the room and up close. The preview shows
both before the night's run:

- the far view: the whole image shrunk to about ``FAR_PIXELS`` (from the store's pyramid),
  run with the same config;
- the near view: a few full-resolution crops, each run with the full run's config and octave
  geometry (``pipeline.run(frame=...)``), on a context box around it (``context``), with
  what the mode measures on the whole image (``Mode.shared``: dream's gradient scale), so
  that its detail is what the full run paints there.

The input is decoded once, streamed into a temporary store inside the output folder (source
pyramid), which every part reads; one Dask cluster serves every run. The folder gets the
images, ``index.html`` (static, opens from disk) and ``preview.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cluster import BackgroundCluster, check_gpus
from .config import Config, to_yaml
from .errors import ConfigError, OutputError
from .events import Stage, Timings, Total, Work
from .ingest import image_shape
from .modes import mode_for
from .pipeline import ingest_source, run, shared_record, with_wrap, work_units
from .resample import octave_shape, resample_window
from .storage.store import Store
from .storage.views import ArrayView
from .tiling import Box

FAR_PIXELS = 2_000_000        # the far view's size: a screen's worth
CROP_SIDE = 1024              # a crop's side at full resolution
DEFAULT_CROPS = 4
MAX_CROPS = 64
DEFAULT_GPU = "h100"
# The files a preview writes into its folder; --overwrite replaces these and no others.
OUR_FILES = ("index.html", "preview.json", "config.yaml", "far.jpg", "far-input.jpg",
             "crop-*.jpg")


@dataclass(frozen=True)
class Crop:
    """A detail crop: ``box`` (full-resolution pixels) is shown, ``window`` (the box and its
    context, clipped to the image) is processed."""

    box: Box
    window: Box
    picked: str              # "--at" or "auto"


@dataclass
class PreviewReport(Timings):
    folder: Path
    index: Path
    shape: tuple[int, int]
    far_shape: tuple[int, int]
    crops: list[Crop]
    estimate: str = ""


# -- validation --------------------------------------------------------------------------

def parse_point(text: str) -> tuple[int, int]:
    """``X,Y`` (pixels of the full image) → (x, y)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ConfigError(f"--at {text!r}: expected X,Y in pixels of the full image, e.g. "
                          "--at 5200,3100")
    return int(parts[0]), int(parts[1])


def check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that cannot take the preview, or one that
    holds files without ``overwrite``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output {folder} is a file; give a folder for the preview with -o")
    if folder.is_dir():
        if any(folder.iterdir()) and not overwrite:
            raise OutputError(f"output folder {folder} is not empty; pass --overwrite to "
                              "replace a preview there, or choose another folder with -o")
        if not os.access(folder, os.W_OK):
            raise OutputError(f"output folder {folder} is not writable; choose another with -o")
        return
    parent = folder.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable; choose another with -o")


def check_crops(shape: tuple[int, int], side: int, n: int | None,
                at: Sequence[tuple[int, int]]) -> int:
    """The number of crops, once the request is checked against the image: every ``--at``
    point inside it, the crop no larger than it, at least one crop. Returns it."""
    h, w = shape
    if n is not None and n < 1:
        raise ConfigError(f"--crops {n}: expected at least 1 crop")
    if n is not None and n > MAX_CROPS:
        raise ConfigError(f"--crops {n}: expected at most {MAX_CROPS} crops")
    if n is not None and n < len(at):
        raise ConfigError(f"--crops {n} but {len(at)} --at points; give --crops {len(at)} or "
                          "more (the rest are picked), or leave --crops out")
    if side < 16:
        raise ConfigError(f"--crop {side}: expected a side of at least 16 px")
    if side > min(h, w):
        raise ConfigError(f"a crop of {side} px is larger than the image ({w}×{h} px); pass "
                          f"--crop {min(h, w)} or less")
    for x, y in at:
        if not (0 <= x < w and 0 <= y < h):
            raise ConfigError(f"--at {x},{y} lies outside the image ({w}×{h} px): X from 0 to "
                              f"{w - 1}, Y from 0 to {h - 1}")
    return n if n is not None else (len(at) or DEFAULT_CROPS)


# -- geometry ----------------------------------------------------------------------------

def crop_box(shape: tuple[int, int], side: int, x: int, y: int) -> Box:
    """The ``side`` square centred on (x, y), moved inside the image where it would leave it."""
    h, w = shape
    y0 = min(max(0, y - side // 2), h - side)
    x0 = min(max(0, x - side // 2), w - side)
    return Box(y0, y0 + side, x0, x0 + side)


def context_window(box: Box, margin: int, shape: tuple[int, int]) -> Box:
    """``box`` grown by ``margin`` on every side and moved inside the image where it would
    leave it (at the image's edge the full run sees an edge too; the context goes to the
    other side), so every crop's window has one shape."""
    h, w = shape
    wh, ww = min(h, box.y1 - box.y0 + 2 * margin), min(w, box.x1 - box.x0 + 2 * margin)
    y0 = min(max(0, box.y0 - margin), h - wh)
    x0 = min(max(0, box.x0 - margin), w - ww)
    return Box(y0, y0 + wh, x0, x0 + ww)


def context(cfg: Config, shape: tuple[int, int], side: int) -> int:
    """Pixels of context on each side of a crop of ``side`` px (full resolution).

    What a pixel becomes depends on its neighbours: each pass moves it by what the network
    sees around it, up to ``margin`` pixels away at its octave, ``margin × scale^k`` at full
    resolution, and the passes and octaves compound that reach. The nearer neighbours weigh
    most (a network's effective receptive field is much smaller than its theoretical one),
    so the context is half of one reach at every octave, summed: crops then correlate with
    the full run's change there as closely as with the whole reach, and as two full runs
    with other seeds do (``profiling/preview.md``). At most half the crop: a deep layer's
    reach (logits: the whole window) would cost many crops' work.

    ``keep_far``'s high-pass adds its reach (``far_margin``, the same at every octave in
    full-size pixels: 24 px for keep_far 16) whole: it subtracts a blur of the change, which
    the crop's edge would otherwise cut short."""
    mode = mode_for(cfg)
    n, scale = mode.octaves(shape)
    reach = sum(mode.margin * scale ** k for k in range(n))
    return min(math.ceil(reach / 2) + mode.far_margin, side // 2)


def far_shape(shape: tuple[int, int], pixels: int = FAR_PIXELS, cfg: Config | None = None
              ) -> tuple[int, int]:
    """The far view's shape: about ``pixels``, the image's own where it is smaller. Each side
    is the one within 1 % of the exact scale whose octaves under ``cfg`` most often end on
    the network's stride: then its edge tiles' windows end there too (``tiling.aligned``),
    where the CPU's convolutions are fast."""
    h, w = shape
    f = min(1.0, math.sqrt(pixels / (h * w)))
    exact = (max(1, round(h * f)), max(1, round(w * f)))
    mode = mode_for(cfg) if cfg is not None else None
    if f == 1.0 or mode is None or not mode.align_end:
        return exact
    octaves, scale = mode.octaves(exact)

    def aligned_octaves(side: int) -> int:
        return sum(octave_shape((side, side), scale, k)[0] % mode.align == 0
                   for k in range(octaves))

    def best(side: int) -> int:
        near = range(max(1, side - side // 100), side + side // 100 + 1)
        return max(near, key=lambda s: (aligned_octaves(s), -abs(s - side)))
    return best(exact[0]), best(exact[1])


def pyramid_levels(shape: tuple[int, int], scale: float, octaves: int, far: tuple[int, int]) -> int:
    """Source levels to ingest: the run's octaves, and enough coarser ones that the far view
    is resized from a level at most ``scale`` times its size (they come from the same
    decode, at a fraction of its cost)."""
    k = 0
    while True:
        nxt = octave_shape(shape, scale, k + 1)
        if nxt[0] < far[0] or nxt[1] < far[1] or k + 1 >= 64:
            break
        k += 1
    return max(octaves, k + 1)


def far_image(levels: list[ArrayView], shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8: the image at ``shape``, resized from the smallest level at least that
    large, in bands of rows (only a band of the level is read at a time)."""
    level = min((lv for lv in levels if lv.shape[0] >= shape[0] and lv.shape[1] >= shape[1]),
                key=lambda lv: lv.shape[0] * lv.shape[1])
    h, w = shape
    if level.shape == shape:
        return level.read_uint8(Box(0, h, 0, w))
    out = np.empty((h, w, 3), np.uint8)
    for y0 in range(0, h, 128):
        y1 = min(h, y0 + 128)
        band = resample_window(level.read, level.shape, shape, Box(y0, y1, 0, w))
        out[y0:y1] = np.clip(np.rint(band), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return out


# -- picking crops -----------------------------------------------------------------------

def detail_map(image: np.ndarray) -> np.ndarray:
    """(h, w) float32: how busy each pixel's neighbourhood is, the gradient magnitude of
    the luminance (0-255 levels per pixel)."""
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    gy, gx = np.gradient(lum)
    return np.hypot(gy, gx)


def _box_means(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Means of ``a`` (h, w, ...) over every ``size`` window, (h - sh + 1, w - sw + 1, ...),
    from an integral image."""
    sh, sw = size
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1, *a.shape[2:]), np.float64)
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return (s[sh:, sw:] - s[:-sh, sw:] - s[sh:, :-sw] + s[:-sh, :-sw]) / (sh * sw)


def pick_crops(image: np.ndarray, shape: tuple[int, int], side: int, n: int,
               fixed: Sequence[Box] = ()) -> list[Box]:
    """``n`` crop boxes of ``side`` px (full resolution), the ``fixed`` ones first, the rest
    picked on ``image`` (the whole image, small: the far view's input): busy, varied and
    spread. Greedy: each pick maximises

        detail × (1 − overlap) × spread × novelty

    over candidate places (a grid of a quarter crop's step): ``detail`` the mean gradient
    magnitude under the crop; ``overlap`` the largest share of it that a pick covers;
    ``spread`` = min(1, distance to the nearest pick / R), R the side of the square each
    crop would have if the N crops tiled the image; ``novelty`` = ½ + ½ min(1, the
    distance of the crop's colour and texture (its mean RGB and detail, each in units of
    its spread over all places) to the nearest pick's). A busy place next to a pick thus
    beats a flat one far away, and a busy place unlike the picks beats one like them."""
    h, w = shape
    ih, iw = image.shape[:2]
    fy, fx = ih / h, iw / w                      # image pixels per full-resolution pixel
    foot = (max(1, min(ih, round(side * fy))), max(1, min(iw, round(side * fx))))
    detail = detail_map(image)
    means = _box_means(np.dstack([image.astype(np.float32), detail]), foot)
    step = max(1, min(foot) // 4)
    ys, xs = np.arange(0, means.shape[0], step), np.arange(0, means.shape[1], step)
    boxes = [crop_box(shape, side, round((x + foot[1] / 2) / fx), round((y + foot[0] / 2) / fy))
             for y in ys for x in xs]
    desc = means[ys][:, xs].reshape(len(boxes), 4)          # mean R, G, B, detail
    score = desc[:, 3]
    desc = (desc - desc.mean(0)) / (desc.std(0) + 1e-6)
    corner = np.array([(b.y0, b.x0) for b in boxes], np.float64)
    reach = math.sqrt(h * w / n)
    picks = list(fixed)
    # a fixed crop's descriptor: that of the candidate nearest to it
    taken = [int(np.argmin(np.abs(corner - (b.y0, b.x0)).sum(1))) for b in fixed]
    while len(picks) < n:
        value = score.copy()
        if picks:
            gap = np.abs(corner[:, None] - np.array([(b.y0, b.x0) for b in picks])[None])
            overlap = (np.clip(side - gap, 0, None).prod(2) / side ** 2).max(1)
            spread = np.minimum(1.0, np.sqrt((gap ** 2).sum(2)).min(1) / reach)
            novel = np.sqrt(((desc[:, None] - desc[taken][None]) ** 2).sum(2)).min(1)
            value = value * (1 - overlap) * spread * (0.5 + 0.5 * np.minimum(1.0, novel))
            value[overlap >= 1] = -1.0                       # the same box again
        i = int(np.argmax(value))
        if value[i] < 0:
            break
        picks.append(boxes[i])
        taken.append(i)
    return picks


# -- the preview -------------------------------------------------------------------------

def _part(on_event: Callable[[object], None], name: str) -> Callable[[object], None]:
    """A run's events as part of the preview's: its stages named after the part, its work
    counted in the preview's one total, its own total and row counts dropped."""
    def forward(event) -> None:
        if isinstance(event, Stage):
            on_event(Stage(f"{name}: {event.name}", event.detail, event.pixels))
        elif isinstance(event, Work):
            on_event(event)
    return forward


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    import pyvips
    im = pyvips.Image.new_from_array(np.ascontiguousarray(pixels)).copy(interpretation="srgb")
    im.jpegsave(str(path), Q=quality, keep="none")


def _save_lossless(pixels: np.ndarray, path: Path) -> None:
    import pyvips
    im = pyvips.Image.new_from_array(np.ascontiguousarray(pixels)).copy(interpretation="srgb")
    im.tiffsave(str(path), compression="none")


def _read(path: Path) -> np.ndarray:
    import pyvips
    return pyvips.Image.new_from_file(str(path)).numpy()


def preview(input_path: Path, cfg: Config, folder: Path, *, at: Sequence[tuple[int, int]] = (),
            crops: int | None = None, side: int = CROP_SIDE, gpu: str = DEFAULT_GPU,
            overwrite: bool = False, far_pixels: int = FAR_PIXELS, estimate_time: bool = True,
            on_event: Callable[[object], None] = lambda e: None,
            cluster: BackgroundCluster | None = None, name: str | None = None,
            up: str | None = None) -> PreviewReport:
    """The far view and ``crops`` detail crops of ``input_path`` under ``cfg``, written into
    ``folder`` with ``index.html``. Everything is checked before anything is written; the
    working files live in a hidden folder inside ``folder`` and go, as does ``folder`` where
    this call made it, whatever stops the preview. ``cluster``: one the caller started and
    closes (a sequence's frames share it); ``name``: what the page calls the input (default
    its file's name); ``up``: the page one level up that links this one (a sequence's)."""
    cfg = cfg.resolved(Path.cwd())
    input_path, folder = Path(input_path), Path(folder)
    shape = image_shape(input_path)
    cfg = with_wrap(cfg, input_path, shape)     # a 360° panorama's far view closes as the run's
    n = check_crops(shape, side, crops, at)
    check_folder(folder, overwrite)
    mode = mode_for(cfg)
    mode.check_settings()
    mode.check()
    if cluster is None:
        check_gpus(cfg.engine.gpus, cfg.engine.scheduler)
    far = far_shape(shape, far_pixels, cfg)
    octaves, scale = mode.octaves(shape)
    margin = context(cfg, shape, side)
    window = context_window(Box(0, side, 0, side), margin, shape).shape
    units = (work_units(mode_for(cfg).plan(far))
             + n * work_units(mode_for(cfg, shape).plan(window)))
    made = not folder.exists()
    folder.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gigadream-preview-", dir=folder))
    report = PreviewReport(folder, folder / "index.html", shape, far, [])
    own = cluster is None
    workers = cluster if not own else BackgroundCluster(
        cfg.engine.workers, cfg.engine.threads, cfg.engine.scheduler, mode.warm_up(),
        cfg.engine.gpus)
    name = name or input_path.name
    ok = False
    try:
        on_event(Total(units))
        store = Store.create(work / "source.gdstore")
        with report.timed("ingest"):
            depth = pyramid_levels(shape, scale, octaves, far)
            ingest_source(input_path, store, shape, depth, scale, cfg.wraps, on_event)
            levels = [store.source(k, cfg.wraps) for k in range(depth)]
        with report.timed("far input"):
            far_in = far_image(levels, far)
        fixed = [crop_box(shape, side, x, y) for x, y in at]
        boxes = pick_crops(far_in, shape, side, n, fixed)
        report.crops = [Crop(b, context_window(b, margin, shape),
                             "--at" if i < len(fixed) else "auto") for i, b in enumerate(boxes)]
        with report.timed("cluster"):
            on_event(Stage("cluster", f"{cfg.engine.workers} workers"))
            ex = workers.executor()
        with report.timed("calibrate"):
            prepared = shared_record(store, cfg, ex, levels[:octaves], on_event)
        out_cfg = dataclasses.replace(
            cfg, export=dataclasses.replace(cfg.export, tiff_compression="none"))
        with report.timed("far view"):
            _save_lossless(far_in, work / "far-input.tif")
            _save_jpeg(far_in, work / "far-input.jpg", cfg.export.quality)
            r = run(work / "far-input.tif", out_cfg, work / "far.tif", cluster=workers,
                    on_event=_part(on_event, "far view"))
            report.count_model(r)
            _save_jpeg(_read(work / "far.tif"), work / "far.jpg", cfg.export.quality)
        for i, c in enumerate(report.crops, start=1):
            with report.timed(f"crop {i}"):
                _crop(store, cfg, out_cfg, c, i, work, workers, prepared, shape, report,
                      _part(on_event, f"crop {i}/{len(report.crops)}"))
        if estimate_time:
            with report.timed("estimate"):
                on_event(Stage("estimate", "the full run's time"))
                from .estimate import estimate, report as estimate_report
                # at the rate the preview's own steps just ran (its windows are the run's
                # tiles' windows) rather than `plan`'s separate timing (seconds more)
                rate = report.model_s / report.model_mp if report.model_mp else None
                report.estimate = estimate_report(
                    estimate(input_path, cfg, executor=ex, rate=rate), cfg, gpu)
        if own:
            workers.close()
        (work / "config.yaml").write_text(
            f"# gigadream preview of {name}: the resolved config. Run the night's "
            f"job with:\n# gigadream run {up or input_path.name} --config config.yaml\n"
            + to_yaml(cfg))
        (work / "preview.json").write_text(json.dumps(_summary(report, input_path), indent=1))
        (work / "index.html").write_text(index_html(report, input_path, cfg, name, up))
        _publish(work, folder)
        ok = True
    finally:
        if own:
            workers.close()
        shutil.rmtree(work, ignore_errors=True)
        if not ok and made:
            shutil.rmtree(folder, ignore_errors=True)
    return report


def _crop(store: Store, cfg: Config, out_cfg: Config, c: Crop, i: int, work: Path,
          workers: BackgroundCluster, prepared: dict, shape: tuple[int, int],
          report: PreviewReport, on_event) -> None:
    """Crop ``i``: its window read from the store's level 0 and run as a part of the whole
    image (its octave geometry, the whole image's gradient scales); its box kept."""
    window = store.source(0).read_uint8(c.window)               # (h, w, 3)
    _save_lossless(window, work / f"crop-{i}-window.tif")
    inner = c.box.relative_to(c.window)
    _save_jpeg(window[inner.slices()], work / f"crop-{i}-input.jpg", cfg.export.quality)
    # A crop is no circle: at a 360° panorama's edge its context lies on one side, where
    # the full run's reads across the edge (``context_window``).
    crop_cfg = dataclasses.replace(out_cfg, tiling=dataclasses.replace(out_cfg.tiling, wrap="none"))
    r = run(work / f"crop-{i}-window.tif", crop_cfg, work / f"crop-{i}-window-out.tif",
            cluster=workers, prepared=prepared, frame=shape, on_event=on_event)
    report.count_model(r)
    _save_jpeg(_read(work / f"crop-{i}-window-out.tif")[inner.slices()], work / f"crop-{i}.jpg",
               cfg.export.quality)


def _publish(work: Path, folder: Path) -> None:
    """The finished preview's files moved from ``work`` into ``folder``, replacing what an
    earlier preview wrote there (``OUR_FILES``); the user's other files stay."""
    for pattern in OUR_FILES:
        for old in folder.glob(pattern):
            if old.is_file():
                old.unlink()
    for f in work.iterdir():
        if f.is_file() and any(f.match(p) for p in OUR_FILES):
            os.replace(f, folder / f.name)


def _summary(report: PreviewReport, input_path: Path) -> dict:
    """preview.json: where the crops are and where the time went (for scripts)."""
    return {"input": input_path.name, "shape": list(report.shape),
            "far_shape": list(report.far_shape),
            "crops": [{"file": f"crop-{i}.jpg", "input": f"crop-{i}-input.jpg",
                       "box": dataclasses.astuple(c.box), "window": dataclasses.astuple(c.window),
                       "picked": c.picked} for i, c in enumerate(report.crops, start=1)],
            "stage_s": {k: round(v, 2) for k, v in report.stage_s.items()},
            "model_s": round(report.model_s, 2), "model_mp": round(report.model_mp, 3),
            "estimate": report.estimate}


# -- the page ----------------------------------------------------------------------------

def _pct(v: float, total: int) -> str:
    return f"{100 * v / total:.4f}%"


def index_html(report: PreviewReport, input_path: Path, cfg: Config, name: str | None = None,
               up: str | None = None) -> str:
    """The preview as one static page (``templates/preview.html``): the far view (its input
    under the pointer) with the crops' places marked, each mark a link to its crop; each crop
    beside its input; the full run's estimated time; the config. No script: it opens from
    disk anywhere. ``name``: the input as the page calls it; ``up``: a sequence's name, its
    page one folder up."""
    h, w = report.shape
    fh, fw = report.far_shape
    return _templates().get_template("preview.html").render(
        name=name or input_path.name, mode=cfg.mode, w=w, h=h, fw=fw, fh=fh,
        crops=report.crops, estimate=report.estimate, pct=_pct, up=up)


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                       autoescape=select_autoescape(["html"]), trim_blocks=True,
                       lstrip_blocks=True, keep_trailing_newline=True)


# -- sequences ---------------------------------------------------------------------------

DEFAULT_FRAMES = 3


@dataclass
class SequencePreviewReport(Timings):
    folder: Path
    index: Path
    shape: tuple[int, int]
    count: int                               # frames of the input
    frames: int                              # frames the run would run
    previews: list[tuple[int, PreviewReport]]   # (input frame, 0-based; its still preview)
    estimate: str = ""


def spread(indices: Sequence[int], k: int) -> list[int]:
    """``k`` of ``indices`` spread evenly from the first to the last (k = 3: first, middle,
    last); all of them where there are no more than ``k``."""
    if k < 1:
        raise ConfigError(f"--frames {k}: expected at least 1 frame")
    n = len(indices)
    if k >= n:
        return list(indices)
    if k == 1:
        return [indices[0]]
    return [indices[round(i * (n - 1) / (k - 1))] for i in range(k)]


def _sequence_path(spec: str) -> Path:
    """A video's file, or the folder of a folder's or a glob's frames."""
    p = Path(spec.split("*")[0].rstrip("/") or ".").absolute()
    return p if p.is_file() or p.is_dir() else p.parent


def sequence_name(spec: str) -> str:
    """A short name of a sequence input: a video's file name, a folder's (or a glob's)."""
    return _sequence_path(spec).name


def sequence_folder(spec: str) -> Path:
    """The default preview folder of a sequence: NAME-preview beside the video or folder."""
    p = _sequence_path(spec)
    return p.with_name(f"{p.stem if p.is_file() else p.name}-preview")


def frame_folder(index: int) -> str:
    """The subfolder of the preview of input frame ``index`` (0-based; named from 1)."""
    return f"frame-{index + 1:06d}"


def preview_sequence(spec: str, cfg: Config, folder: Path, *, frames: int = DEFAULT_FRAMES,
                     at: Sequence[tuple[int, int]] = (), crops: int | None = None,
                     side: int = CROP_SIDE, gpu: str = DEFAULT_GPU, overwrite: bool = False,
                     far_pixels: int = FAR_PIXELS, estimate_time: bool = True,
                     on_event: Callable[[object], None] = lambda e: None
                     ) -> SequencePreviewReport:
    """``frames`` frames of a video or frame sequence ``spec``, spread over the range the
    run would run (``sequence.frames``, ``sequence.stride``), each previewed as a still
    (``preview``: from afar and up close) into ``folder/frame-NNNNNN/``, on one cluster;
    ``folder/index.html`` links them, with the whole run's estimate (``plan``'s, at the
    previews' own rate). Each frame is a cold still: the run's later frames start from the
    previous result, so they look alike but not identical; the page says so. Everything is
    checked before anything is written; nothing stays where the preview fails."""
    from .estimate import estimate_sequence, sequence_report
    from .sequence import frame_indices, resolve_wrap
    from .video import open_frames
    cfg = given = cfg.resolved(Path.cwd())
    folder = Path(folder)
    name = sequence_name(spec)
    with open_frames(spec) as source:
        indices = frame_indices(cfg, source.count)
        picks = spread(indices, frames)
        cfg = resolve_wrap(cfg, source)        # a 360° video's wrap, resolved as the run's
        shape, count = source.shape, source.count
        check_crops(shape, side, crops, at)
        check_folder(folder, overwrite)
        mode = mode_for(cfg)
        mode.check_settings()
        mode.check()
        check_gpus(cfg.engine.gpus, cfg.engine.scheduler)
        made = not folder.exists()
        folder.mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".gigadream-preview-", dir=folder))
        ok = False
        try:
            inputs = _picked_frames(source, indices, picks, work)
            ok = True
        finally:
            if not ok:
                shutil.rmtree(work, ignore_errors=True)
                if made:
                    shutil.rmtree(folder, ignore_errors=True)
    report = SequencePreviewReport(folder, folder / "index.html", shape, count, len(indices), [])
    workers = BackgroundCluster(cfg.engine.workers, cfg.engine.threads, cfg.engine.scheduler,
                                mode.warm_up(), cfg.engine.gpus)
    ok = False
    try:
        for i, (index, path) in enumerate(zip(picks, inputs)):
            sub = folder / frame_folder(index)
            with report.timed(f"frame {index + 1}"):
                r = preview(path, cfg, sub, at=at, crops=crops, side=side, gpu=gpu,
                            overwrite=True, far_pixels=far_pixels, estimate_time=False,
                            on_event=_frame_part(on_event, i, len(picks), index),
                            cluster=workers, name=f"{name}, frame {index + 1} of {count}",
                            up=name)
            report.count_model(r)
            report.previews.append((index, r))
        if estimate_time:
            with report.timed("estimate"):
                on_event(Stage("estimate", "the whole sequence's time"))
                rate = report.model_s / report.model_mp if report.model_mp else None
                report.estimate = sequence_report(
                    estimate_sequence(spec, given, executor=workers.executor(), rate=rate),
                    cfg, gpu)
        workers.close()
        _drop_stale(folder, {frame_folder(i) for i in picks})
        (folder / "config.yaml").write_text(
            f"# gigadream preview of {name}: the resolved config. Run the night's job "
            f"with:\n# gigadream run {name} --config config.yaml\n" + to_yaml(cfg))
        (folder / "preview.json").write_text(json.dumps(
            {"input": name, "shape": list(shape), "count": count, "run_frames": len(indices),
             "frames": [{"frame": i + 1, "folder": frame_folder(i)} for i in picks],
             "stage_s": {k: round(v, 2) for k, v in report.stage_s.items()},
             "estimate": report.estimate}, indent=1))
        (folder / "index.html").write_text(_templates().get_template(
            "preview-sequence.html").render(
            name=name, mode=cfg.mode, w=shape[1], h=shape[0], count=count,
            run_frames=len(indices), frames=[(i + 1, frame_folder(i), r.far_shape)
                                             for i, r in report.previews],
            estimate=report.estimate))
        ok = True
    finally:
        workers.close()
        shutil.rmtree(work, ignore_errors=True)
        if not ok:
            for index, _ in report.previews:
                shutil.rmtree(folder / frame_folder(index), ignore_errors=True)
            if made:
                shutil.rmtree(folder, ignore_errors=True)
    return report


def _picked_frames(source, indices: list[int], picks: list[int], work: Path) -> list[Path]:
    """The image file of each picked frame: a frame sequence's own; a video's frames,
    decoded in one pass over the range (a video is never sought: ``video.FrameSource``),
    as lossless TIFFs in ``work``."""
    if source.kind == "images":
        return [source.files[i] for i in picks]
    want, out = set(picks), {}
    for f in source.frames(picks[0], picks[-1] + 1):
        if f.index in want:
            out[f.index] = work / f"frame-{f.index + 1}.tif"
            _save_lossless(f.pixels, out[f.index])
    return [out[i] for i in picks]


def _frame_part(on_event, i: int, k: int, index: int) -> Callable[[object], None]:
    """Frame ``i`` of ``k``'s preview events as the sequence preview's: its stages named
    with the frame; the first frame's total, × k, the whole preview's (each frame is the
    same work: one shape, one config); the others' dropped."""
    def forward(event) -> None:
        if isinstance(event, Total):
            if i == 0:
                on_event(Total(event.units * k))
            return
        if isinstance(event, Stage):
            event = Stage(f"frame {index + 1} ({i + 1}/{k}): {event.name}", event.detail,
                          event.pixels)
        on_event(event)
    return forward


def _drop_stale(folder: Path, keep: set[str]) -> None:
    """An earlier preview's frame folders (``frame-NNNNNN/`` holding a preview.json) that
    this one did not write: ``--overwrite`` replaces the earlier preview whole."""
    for d in folder.glob("frame-*"):
        if d.is_dir() and d.name not in keep and (d / "preview.json").is_file():
            shutil.rmtree(d, ignore_errors=True)
