"""The ``gigadream`` command. Turns every user error into one line and a non-zero exit."""
from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path

from . import __version__, archs
from .config import Config, field_help, output_label, presets
from .errors import ConfigError, DiskFullError, GigadreamError, InputError, Interrupted
from .modes import load_config, mode_for
from .storage import location
from .storage.location import is_url, store_location
from .text import duration

# What -o / OUT may name; the formats are export.output_format's.
OUTPUTS = (".jpg; .png; .tif (tiled BigTIFF); 16 bits a channel in .png and .tif with --set "
           "export.bits=16; .dzi "
           "(deep zoom: NAME.dzi and tiles in NAME_files/) or .szi (the same in one zip); or a "
           "folder NAME/ of IIIF 3 tiles with --set export.layout=iiif3; or a JPEG at an object "
           "store's URL, s3://bucket/key.jpg, uploaded as it is written")

STUDIO_DIR = "gigadream-studio"
MAX_UPLOAD_MB = 8192
MAX_PIXELS = 2e9        # the studio's largest image or frame: a 63,000 × 31,500 panorama
JOBS_YAML = """jobs.yaml: a list of jobs; paths are relative to its folder.

  - input: pano.jpg                       # the image
    config: impressionist                 # a preset's name or a YAML file (beside jobs.yaml)
    set: {dream.iterations: 2}            # settings, as --set takes them
    sweep: {dream.step_size: [0.5, 1, 2]} # one job per value: a group, a contact sheet
    priority: 0                           # higher runs first
  - input: pano.jpg
    config: impressionist-style
    set: {style.images: [monet.jpg, hokusai.jpg]}
    blend: 5                              # style.blend_weights [1, 0] ... [0, 1] in 5 steps

Results: STUDIO/jobs/GROUP/JOB/result.jpg, its result.jpg.yaml, job.yaml and log.txt."""

# Shortcut flags and the config keys they set; their defaults live in the config alone.
SHORTCUTS = {"seed": "seed", "workers": "engine.workers", "scheduler": "engine.scheduler",
             "gpus": "engine.gpus"}
GPUS_HELP = ("run on these GPUs of this machine, one worker each (torch's numbers, e.g. 0,2; "
             "default: every GPU, else the CPU)")


def _settings_epilog() -> str:
    rows = "\n".join(f"  {k:<26} {d!s:<18} {h}" for k, d, h in field_help())
    return ("settings (YAML keys of --config, or --set KEY=VALUE; default, meaning):\n" + rows)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="YAML config, or a bundled preset's name (see 'gigadream presets')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set dream.iterations=5 (repeatable)")


def _config(args) -> Config:
    overrides = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    unread = mode_for(cfg).unread([o.partition("=")[0].strip() for o in args.overrides])
    if unread:
        other = "style" if unread[0].startswith("style") else "dream"
        given = next(o for o in args.overrides if o.startswith(unread[0]))
        raise ConfigError(f"--set {given}: mode {cfg.mode} does not read {other} settings, so "
                          f"it would change nothing; choose a {other} preset (gigadream "
                          f"presets) or add --set mode={other}")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gigadream",
        description="DeepDream and neural style on giant photographs at full resolution, in "
                    "bounded memory: the image is streamed into a chunked store, processed "
                    "tile by tile on randomly offset grids by Dask workers, and exported "
                    "streamed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with: gigadream run pano.jpg --config impressionist")
    parser.add_argument("--version", action="version", version=f"gigadream {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("run", help="dream or stylise an image end to end: ingest, passes, export",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Dream or stylise INPUT and write the result (JPEG, PNG, "
                                   "BigTIFF or deep zoom) and, beside it, OUT.yaml: the resolved "
                                   "config that reproduces it. A video or a folder of frames "
                                   "runs frame by frame (docs/sequences.md; settings under "
                                   "sequence.*).",
                       epilog=_settings_epilog())
    p.add_argument("input", type=store_location, metavar="INPUT",
                   help="image file (JPEG, PNG, TIFF, WebP, ...), or an image object's URL "
                        "(s3://bucket/key, read in ranged requests, never downloaded whole; "
                        "then -o is needed); or a sequence: a video (mp4, mov, mkv, webm, "
                        "...), a folder of frames, or a quoted glob ('frames/*.png'), frames "
                        "in natural order, each carried into the next along the optical flow")
    _add_config_args(p)
    p.add_argument("-o", "--output", type=store_location, metavar="OUT",
                   help=f"the result: {OUTPUTS} (default: INPUT-PRESET.jpg beside the "
                        "input, named after the --config preset or file, else the mode: "
                        "INPUT-dream.jpg). A sequence's: .mp4 or .webm "
                        "(the input's timestamps and audio), or a folder of frames, OUT/ "
                        "(000001.jpg, ...) or 'OUT/frame-%%04d.png' (.jpg, .png, .tif) "
                        "(default: INPUT-PRESET.mp4 beside a video, FOLDER-PRESET/ beside "
                        "frames)")
    p.add_argument("--store", type=store_location, metavar="DIR",
                   help="working store folder, or an object store's s3://bucket/prefix "
                        "(credentials from the environment), kept afterwards (default: "
                        "OUT.gdstore, a sequence's OUT.gdseq, removed after success). "
                        "Running the same command again "
                        "resumes from it after an interruption")
    p.add_argument("--restart", action="store_true",
                   help="start over: discard what the store holds from an earlier attempt")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="join the Dask scheduler at ADDR (tcp://host:8786) instead of starting one")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the embedded cluster (default: one per GPU, else one)")
    p.add_argument("--gpus", metavar="LIST", help=GPUS_HELP)
    p.add_argument("--seed", type=int, metavar="N", help="random seed (same seed, same result)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--events", type=Path, metavar="FILE",
                   help="also write progress as JSON lines to FILE (stages, tiles, rows, with "
                        "times): for batch monitors and 'gigadream profile'")

    p = sub.add_parser("ingest", help="stream an image into a store (level 0 and octave pyramid)")
    p.add_argument("input", type=store_location, metavar="INPUT",
                   help="image file, or an image object's URL (s3://bucket/key)")
    p.add_argument("store", type=store_location, metavar="STORE",
                   help="new store folder (or s3://bucket/prefix)")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", "-q", action="store_true")

    p = sub.add_parser("export", help="write a store's result (or, before any run, its source) "
                                      "as JPEG, BigTIFF or deep zoom")
    p.add_argument("store", type=store_location, metavar="STORE")
    p.add_argument("output", type=store_location, metavar="OUT", help=OUTPUTS)
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--partial", action="store_true",
                   help="of an unfinished run, write its latest canvas (which may be a "
                        "smaller octave); without it such a store is refused")

    sub.add_parser("presets", help="list the bundled configs")

    p = sub.add_parser("layers", help="list a model's layer names (for dream.layers, style.*_layers)")
    p.add_argument("model", metavar="MODEL", choices=list(archs.MODELS),
                   help=f"one of {', '.join(archs.MODELS)}")

    p = sub.add_parser("plan", help="what a run will cost, before it runs: tiles, passes, "
                                    "model work, FLOPs, disk, RAM, estimated time")
    p.add_argument("input", type=store_location, metavar="INPUT",
                   help="the image: a file, or an object's URL (s3://bucket/key.jpg; its "
                        "header is read, nothing else); or a video, a folder or a glob of "
                        "frames (the frames to run, the first and a later frame's costs)")
    _add_config_args(p)
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="a sequence's output as 'run -o' takes it (default: the run's): a "
                        "video keeps its finished frames in the store until it is encoded")
    from .estimate import GPUS
    p.add_argument("--gpu", choices=sorted(GPUS), metavar="GPU",
                   help=f"also estimate the time on this GPU: {', '.join(sorted(GPUS))}")
    p.add_argument("--gpus", metavar="LIST", help="time the model on this GPU of this machine "
                                                  "(the first of LIST; default: its first GPU, "
                                                  "else the CPU)")

    p = sub.add_parser("preview", help="see the night's result in minutes: the whole image "
                                       "shrunk and dreamed, and full-size crops as the full "
                                       "run paints them, on one page",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Preview what 'gigadream run' will make of INPUT: the far "
                                   "view (the whole image at about 2 MP, run with the same "
                                   "config) and the near view (full-resolution crops, each run "
                                   "as the full run would paint it there: its config, octave "
                                   "scales and gradient scales, with context around it). Writes "
                                   "DIR/index.html (open it in a browser), the images, "
                                   "config.yaml and preview.json, and the full run's estimated "
                                   "time here and on a GPU.",
                       epilog="Example: gigadream preview pano.jpg --config impressionist "
                              "--at 5200,3100 --crops 4 -o pano-preview")
    p.add_argument("input", type=store_location, metavar="INPUT",
                   help="the image, a file; or a video, a folder or a glob of frames")
    _add_config_args(p)
    from .preview import CROP_SIDE, DEFAULT_CROPS, DEFAULT_FRAMES, DEFAULT_GPU
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="folder for the preview, new or empty (default: INPUT-preview beside "
                        "the input)")
    p.add_argument("--at", nargs="+", action="extend", default=[], metavar="X,Y",
                   help="centre a crop on these pixels of the full image (repeatable); "
                        "without it the crops go where the image is busy and varied, spread "
                        "over it")
    p.add_argument("--crops", type=int, metavar="N",
                   help=f"number of crops (default: {DEFAULT_CROPS}, or as many as --at "
                        "points; more than the points: the rest are picked)")
    p.add_argument("--frames", type=int, metavar="K",
                   help=f"a video or a folder of frames: preview K frames spread over the "
                        f"frames the run would run (default {DEFAULT_FRAMES}: the first, the "
                        "middle and the last), each as a still, each in its own folder")
    p.add_argument("--crop", type=int, default=CROP_SIDE, metavar="PX",
                   help=f"side of a crop at full resolution (default {CROP_SIDE})")
    p.add_argument("--gpu", choices=sorted(GPUS), default=DEFAULT_GPU, metavar="GPU",
                   help=f"estimate the full run's time on this GPU too: "
                        f"{', '.join(sorted(GPUS))} (default {DEFAULT_GPU})")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (engine.workers)")
    p.add_argument("--gpus", metavar="LIST", help=GPUS_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the preview in a folder that is not empty (other files stay)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser("profile", help="run and measure: memory over time per stage, the naive "
                                       "baseline beside it, hot functions line by line",
                       description="Run INPUT as 'gigadream run' would, sampling the memory of "
                                   "its whole process tree; then the naive baseline (whole image "
                                   "in a float32 array) on the same input; then memory_profiler "
                                   "line by line on a slice. Writes REPORT/report.md, memory.png, "
                                   "memory.csv, lines.txt, events.jsonl and the result.")
    p.add_argument("input", type=store_location, metavar="INPUT", help="the image, a file")
    _add_config_args(p)
    p.add_argument("-o", "--output", type=Path, metavar="REPORT",
                   help="report folder (default: INPUT-profile beside the input)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (engine.workers)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the naive baseline (it holds the whole image in memory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")

    studio_help = ("the studio's folder: its queue (studio.db), uploads, and each job's "
                   f"result, config and log under jobs/GROUP/JOB/ (default: {STUDIO_DIR}, "
                   "in the current folder)")
    p = sub.add_parser("serve", help="the studio: a web page and job queue on this box "
                                     "(upload or pick images, queue runs and sweeps, watch "
                                     "them, view and download the results)",
                       description="Serve the studio at http://HOST:PORT/. Jobs run as "
                                   "'gigadream run' child processes: one per GPU (each sees "
                                   "its own), else --slots on the CPU. Loopback only unless "
                                   "--host says otherwise; every request needs the token "
                                   "printed at start (the printed address sets a cookie). "
                                   "Ctrl-C stops the running jobs resumably; the next 'serve' "
                                   "resumes them.")
    p.add_argument("--studio", type=Path, default=Path(STUDIO_DIR), metavar="DIR", help=studio_help)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--images", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder whose images the page may pick (repeatable); nothing "
                        "outside these folders can be picked")
    p.add_argument("--slots", type=int, metavar="N",
                   help="jobs at once (default: one per GPU, else 1)")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="run every job on the Dask cluster at ADDR (tcp://host:8786)")
    p.add_argument("--max-upload", type=float, default=MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest upload accepted, in MB (default {MAX_UPLOAD_MB:g})")
    p.add_argument("--max-pixels", type=float, default=MAX_PIXELS, metavar="N",
                   help=f"largest image (or video frame) accepted, in pixels, checked from "
                        f"its header before any decode (default {MAX_PIXELS:.0e})")
    p.add_argument("--presets", type=Path, metavar="DIR",
                   help="a folder of YAML configs the page offers by name, beside the bundled "
                        "presets (requests name presets; they never give a file)")
    p.add_argument("--no-token", action="store_true",
                   help="no token (loopback only): any program or user on this machine may "
                        "then drive the studio")
    p.add_argument("--token", action="store_true", help=argparse.SUPPRESS)   # now the default
    p.add_argument("--secure-cookie", action="store_true",
                   help="mark the token's cookie Secure: the studio is reached over HTTPS "
                        "(a TLS reverse proxy)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                   help="a reverse proxy's address, as the studio sees it connect (e.g. "
                        "127.0.0.1): its X-Forwarded-Proto: https marks the cookie Secure "
                        "(repeatable; nobody else's header is believed)")

    p = sub.add_parser("batch", help="queue the jobs of a jobs.yaml and run them until the "
                                     "queue is empty, without a browser",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Queue the jobs of JOBS (a YAML list) in the studio's queue "
                                   "and run them until the queue is empty; with a 'gigadream "
                                   "serve' running on the same studio, queue them there and "
                                   "return. Every job is checked before any is queued.",
                       epilog=JOBS_YAML)
    p.add_argument("jobs", type=Path, metavar="JOBS", help="jobs.yaml")
    p.add_argument("--studio", type=Path, default=Path(STUDIO_DIR), metavar="DIR", help=studio_help)
    p.add_argument("--slots", type=int, metavar="N", help="jobs at once (default: one per GPU, else 1)")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="run every job on the Dask cluster at ADDR (tcp://host:8786)")

    p = sub.add_parser("jobs", help="the studio's queue in the terminal")
    p.add_argument("--studio", type=Path, default=Path(STUDIO_DIR), metavar="DIR", help=studio_help)
    p.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")

    p = sub.add_parser("classes", help="list the ImageNet classes and groups (for dream.classes)")
    p.add_argument("filter", nargs="?", default="", metavar="TEXT",
                   help="only names containing TEXT")
    return parser


def _on_signal(signum, frame) -> None:
    import signal
    raise Interrupted(signal.Signals(signum).name, signum)


def _run(args) -> int:
    from .video import is_sequence_input
    cfg = _config(args)
    if not is_url(args.input) and is_sequence_input(str(args.input)):
        return _run_sequence(args, cfg)
    from .pipeline import default_store, run
    if args.output is None and is_url(args.input):
        raise ConfigError(f"input {args.input} is an object store's URL: name the result "
                          "with -o (a file, or s3://bucket/key.jpg)")
    out = args.output or args.input.with_name(
        f"{args.input.stem}-{output_label(args.config, cfg)}.jpg")
    report = _with_progress(args, lambda on_event: run(
        args.input, cfg, out, store_path=args.store, overwrite=args.overwrite,
        restart=args.restart, on_event=on_event),
        lambda: args.store or default_store(out), "every finished pass", out, cfg.mode)
    if not args.quiet:
        h, w = report.shape
        total = sum(report.stage_s.values())
        print(f"wrote {report.output} ({w}×{h} px) in {total:.0f} s; "
              f"config in {location.name(report.output)}.yaml"
              f"{_viewer_line(report.output, cfg)}", file=sys.stderr)
    return 0


def _run_sequence(args, cfg) -> int:
    """``run`` of a video or a folder (or glob) of frames (``sequence``)."""
    from .sequence import Output, default_output, run_sequence
    out = args.output or default_output(str(args.input), output_label(args.config, cfg))
    began = time.monotonic()
    report = _with_progress(args, lambda on_event: run_sequence(
        str(args.input), cfg, out, store_path=args.store, overwrite=args.overwrite,
        restart=args.restart, on_event=on_event),
        lambda: args.store or Output.of(out).store, "every finished frame and pass", out,
        cfg.mode)
    if not args.quiet:
        h, w = report.shape
        print(f"wrote {report.output} ({report.frames} frames of {w}×{h} px) in "
              f"{duration(time.monotonic() - began)}; config in {report.output.name}.yaml",
              file=sys.stderr)
    return 0


def _with_progress(args, work, store, kept: str, out, mode: str = "dream"):
    """``work(on_event)`` under the progress bar (and ``--events``); an interrupt or a full
    disk as one line naming the ``store()`` that keeps ``kept`` for the resume."""
    from .events import EventLog
    from .progress import Progress
    progress = Progress(args.quiet, mode)
    on_event = EventLog(args.events, progress) if args.events else progress
    try:
        return work(on_event)
    except Interrupted as e:
        progress.close()
        raise Interrupted(f"{e}: stopped; {store()} keeps {kept}. Run the same "
                          "command again to resume", e.signum) from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = f" or {out.parent}" if isinstance(out, Path) else ""
        raise DiskFullError(f"no space left on the disk of {store()}{where}; free some "
                            f"space and run the same command again to resume ({kept} "
                            "is kept)") from None
    finally:
        progress.close()
        if on_event is not progress:
            on_event.close()


def _ingest(args) -> int:
    from .ingest import image_shape, ingest
    from .pipeline import with_wrap
    from .storage.store import Store
    cfg = _config(args)
    shape = image_shape(args.input)
    cfg = with_wrap(cfg, args.input, shape)
    octaves, scale = mode_for(cfg).octaves(shape)
    store = Store.create(args.store, overwrite=args.overwrite)
    level0 = ingest(args.input, store, octaves=octaves, scale=scale, wrap=cfg.wraps)
    if not args.quiet:
        print(f"ingested {args.input} ({level0.shape[1]}×{level0.shape[0]} px, "
              f"{octaves} octaves) into {args.store}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from .export import check_output, export
    from .record import stored_image
    from .storage.store import Store
    cfg = _config(args)
    store = Store.open(args.store)
    view, what = stored_image(store, args.partial)
    # a run's result beside its input, for the viewer page of a deep zoom output
    before = store.source(0) if "result" in store.record() else None
    check_output(args.output, view.shape, args.overwrite, cfg.export, viewer=before is not None)
    if what:
        print(f"gigadream: writing {what}", file=sys.stderr)
    export(view, args.output, cfg.export, overwrite=args.overwrite, kept=store.input_metadata(),
           before=before)
    h, w = view.shape
    print(f"wrote {args.output} ({w}×{h} px){_viewer_line(args.output, cfg, before)}",
          file=sys.stderr)
    return 0


def _viewer_line(out, cfg: Config, viewer: bool = True) -> str:
    """``; open NAME.html ...`` where a deep zoom output has its viewer page beside it: the
    one file a person opens."""
    from .export import viewer_files
    if not viewer or is_url(out):
        return ""
    extra = viewer_files(Path(out), cfg.export)
    return f"; open {extra[0]} in a browser to see it beside its input" if extra else ""


def _presets(args) -> int:
    for name, path in presets().items():
        print(f"{name:<20} {_description(path)}")
    return 0


def _description(path: Path) -> str:
    """A preset's description: its opening comment, every line of it up to its ``Use:``
    line, as one line (a sentence cut at the first line break reads as broken)."""
    lines = []
    for ln in path.read_text().splitlines():
        text = ln.lstrip("# ").strip()
        if not ln.startswith("#") or not text or text.startswith("Use:"):
            break
        lines.append(text)
    return " ".join(lines)


def _layers(args) -> int:
    name = args.model
    print(f"# {name}: layer, kind, channels, stride, receptive radius (px); "
          f"weights: {'bundled' if name in archs.BUNDLED else 'model.weights = torchvision .pth'}")
    for o in archs.ops(name):
        r = archs.receptive_radius(name, o.name)
        print(f"{o.name:<14} {o.kind:<7} {o.channels:>5} {archs.stride(name, o.name):>4} "
              f"{'whole image' if r is None else r:>6}")
    return 0


def _plan(args) -> int:
    from .estimate import estimate, estimate_sequence, report, sequence_report
    from .video import is_sequence_input
    cfg = _config(args)
    if not is_url(args.input) and is_sequence_input(str(args.input)):
        print(sequence_report(estimate_sequence(str(args.input), cfg, args.output), cfg,
                              args.gpu))
        return 0
    print(report(estimate(args.input, cfg), cfg, args.gpu))
    return 0


def _local_input(args) -> None:
    """preview and profile read the input many times over (the far view, each crop; the
    run, the naive baseline): from a file on this machine, not an object store."""
    if is_url(args.input):
        raise InputError(f"input {args.input}: {args.verb} reads a file on this machine, not "
                         "an object's URL; copy it here first (gigadream run and plan take URLs)")


def _preview(args) -> int:
    from .preview import (DEFAULT_FRAMES, parse_point, preview, preview_sequence,
                          sequence_folder, sequence_name)
    from .video import is_sequence_input
    _local_input(args)
    cfg = _config(args)
    at = [parse_point(a) for a in args.at]
    sequence = is_sequence_input(str(args.input))
    if args.frames is not None and not sequence:
        raise ConfigError(f"--frames {args.frames}: input {args.input} is one image; --frames "
                          "picks frames of a video or a folder of frames")
    name = sequence_name(str(args.input)) if sequence else args.input.name
    folder = args.output or (sequence_folder(str(args.input)) if sequence
                             else args.input.with_name(f"{args.input.stem}-preview"))
    from .progress import Progress
    progress = Progress(args.quiet, cfg.mode)
    try:
        if sequence:
            k = DEFAULT_FRAMES if args.frames is None else args.frames
            report = preview_sequence(
                str(args.input), cfg, folder, frames=k, at=at, crops=args.crops,
                side=args.crop, gpu=args.gpu, overwrite=args.overwrite, on_event=progress)
        else:
            report = preview(args.input, cfg, folder, at=at, crops=args.crops,
                             side=args.crop, gpu=args.gpu, overwrite=args.overwrite,
                             on_event=progress)
    except Interrupted as e:
        raise Interrupted(f"{e}: stopped; nothing of the preview was kept", e.signum) from None
    finally:
        progress.close()
    if args.quiet:
        return 0
    total = sum(report.stage_s.values())
    print(f"preview of {name} in {total:.0f} s: open {report.index}", file=sys.stderr)
    return 0


def _profile(args) -> int:
    from .profile import profile
    _local_input(args)
    cfg = _config(args)
    folder = args.output or args.input.with_name(f"{args.input.stem}-profile")
    path = profile(args.input, cfg, folder, baseline=args.baseline, overwrite=args.overwrite,
                   say=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _classes(args) -> int:
    from .classes import GROUPS, names
    needle = args.filter.lower()
    for i, n in enumerate(names()):
        if needle in n.lower():
            print(f"{i:>4} {n}")
    for g, idx in GROUPS.items():
        if needle in g:
            print(f"group {g}: {len(idx)} classes")
    return 0


def _serve(args) -> int:
    from .studio.server import serve
    try:
        return serve(args.studio, args.host, args.port, args.images, args.slots,
                     args.scheduler, args.max_upload, args.no_token, int(args.max_pixels),
                     args.presets, args.secure_cookie, args.trusted_proxy)
    except Interrupted:     # uvicorn has shut down cleanly, then passes the signal on
        print("gigadream: studio stopped; its running jobs wait in the queue and resume at the "
              "next 'gigadream serve'", file=sys.stderr)
        return 0


def _batch(args) -> int:
    from .studio.batch import batch
    return batch(args.jobs, args.studio, args.slots, args.scheduler)


def _jobs(args) -> int:
    from .studio.batch import show_jobs
    return show_jobs(args.studio, args.watch)


VERBS = {"run": _run, "ingest": _ingest, "export": _export, "presets": _presets,
         "layers": _layers, "classes": _classes, "plan": _plan, "profile": _profile,
         "preview": _preview, "serve": _serve, "batch": _batch, "jobs": _jobs}


def _check_set_spelling(argv: list[str]) -> None:
    """``--set KEY VALUE`` (a space for the =) in one line that shows the spelling, before
    argparse reads VALUE as a stray argument."""
    for i, a in enumerate(argv[:-1]):
        if a == "--set" and "=" not in argv[i + 1]:
            value = argv[i + 2] if i + 2 < len(argv) and not argv[i + 2].startswith("-") else None
            fix = f"--set {argv[i + 1]}={value if value is not None else 'VALUE'}"
            raise ConfigError(f"--set {argv[i + 1]}{' ' + value if value else ''}: a setting "
                              f"and its value go together with =, no space: {fix}")


def main(argv: list[str] | None = None) -> int:
    import signal

    from .memory import tune_client_malloc
    tune_client_malloc()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _check_set_spelling(argv)
    except GigadreamError as e:
        print(f"gigadream: error: {e}", file=sys.stderr)
        return e.exit_code
    args = build_parser().parse_args(argv)
    # Ctrl-C and a cloud's preemption notice (SIGTERM) stop the run where it is; every pass
    # already recorded stays in the store, and the same command resumes.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    try:
        return VERBS[args.verb](args)
    except GigadreamError as e:
        print(f"gigadream: error: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:
        print(f"gigadream: {e}", file=sys.stderr)
        return 128 + e.signum
    except OSError as e:   # disk full, permissions, ...: the system's words and the file
        where = f": {e.filename}" if e.filename else ""
        print(f"gigadream: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
