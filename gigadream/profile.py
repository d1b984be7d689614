"""``gigadream profile``: where every byte and second of a run goes.

The run is ``gigadream run`` in a child process, as a user would start it. While it runs, the
memory of its whole process tree (the client, Dask's workers and their helpers) is sampled
every ``SAMPLE_S`` seconds as PSS: shared pages, such as torch's libraries, are split between
the processes that map them rather than counted once per process. The run reports its stages
(``--events``), so each sample falls in a stage. Then the naive baseline (``baseline.py``)
runs on the same input under the same sampler, and memory_profiler follows the hot functions
line by line on a slice of the same data. The report folder:

    report.md       the summary, readable on its own
    memory.png      memory over time, stages marked; the naive run below it
    memory.csv      every sample: seconds, stage, client MB, other processes MB
    lines.txt       memory_profiler's line-by-line output for the hot functions
    events.jsonl    the run's events (stages, tiles, rows) with times
    run.log         the run's own messages
    result.jpg      the run's result (and result.jpg.yaml, its config)
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, to_yaml
from .errors import GigadreamError, OutputError
from .modes import mode_for
from .spawn import python_module

SAMPLE_S = 0.1


@dataclass
class Trace:
    """A child process tree's memory over time and the stages it reported."""
    samples: list[tuple[float, float, float]]   # (unix time, root process MB, others MB)
    events: list[dict]
    start: float
    end: float
    returncode: int


@dataclass
class StageRow:
    name: str
    detail: str
    start: float
    end: float
    peak: float = 0.0          # MB, whole tree
    peak_client: float = 0.0   # MB, the process that was started
    peak_others: float = 0.0   # MB, its children (Dask workers, helpers)
    tiles: int = 0
    pixels: int = 0

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> str:
        """'pass octave 0 pass 2', 'calibrate octave 1', 'ingest': for the CSV."""
        if self.name in ("pass", "calibrate", "grams", "octave"):
            return f"{self.name} {self.detail.split(':')[0]}".strip()
        return self.name


def _tree_pss(root) -> tuple[float, float] | None:
    """PSS in MB of ``root`` and of all its descendants; None once ``root`` is gone."""
    import psutil
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    mine = others = 0.0
    for p in procs:
        try:
            pss = p.memory_full_info().pss / 1e6
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if p.pid == root.pid:
            mine = pss
        else:
            others += pss
    return mine, others


def trace(argv: list[str], events: Path, log: Path, interval: float = SAMPLE_S,
          on_event=lambda e: None) -> Trace:
    """Run ``argv`` (which writes its events to ``events``) and sample its process tree;
    ``on_event`` sees each event as it arrives (progress)."""
    import psutil
    events.unlink(missing_ok=True)
    samples: list[tuple[float, float, float]] = []
    start = time.time()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            t = time.time()
            pss = _tree_pss(root)
            if pss is None:
                break
            samples.append((t, *pss))
            done.wait(max(0.0, interval - (time.time() - t)))

    sampler = threading.Thread(target=sample, name="gigadream-profile-sampler", daemon=True)
    sampler.start()
    seen: list[dict] = []
    reader = None
    while True:
        ended = proc.poll() is not None
        if reader is None and events.exists():
            reader = open(events)
        if reader is not None:
            for line in reader.readlines():
                if line.endswith("\n"):
                    seen.append(json.loads(line))
                    on_event(seen[-1])
        if ended:
            break
        time.sleep(0.2)
    end = time.time()
    done.set()
    sampler.join()
    if reader is not None:
        reader.close()
    return Trace(samples, seen, start, end, proc.returncode)


def stage_rows(tr: Trace) -> list[StageRow]:
    """The trace cut at each Stage event: wall time, peaks, tiles (one Work event per tile
    or statistics task) and pixels of each stage. The time before the first stage is
    'start-up' (imports, reading the header, opening the store)."""
    stages = [e for e in tr.events if e["event"] == "Stage"]
    rows = [StageRow("start-up", "", tr.start, stages[0]["t"] if stages else tr.end)]
    for i, e in enumerate(stages):
        end = stages[i + 1]["t"] if i + 1 < len(stages) else tr.end
        rows.append(StageRow(e["name"], e.get("detail", ""), e["t"], end,
                             pixels=e.get("pixels", 0)))
    for e in tr.events:
        if e["event"] == "Work":
            row = next((r for r in reversed(rows) if r.start <= e["t"]), rows[0])
            row.tiles += 1
    for r in rows:
        # a stage shorter than a sample interval still gets the sample that follows its start
        # (or, for a last stage the process left before the next sample, the one before it)
        inside = [s for s in tr.samples if r.start <= s[0] < r.end] or \
            [s for s in tr.samples if s[0] >= r.start][:1] or \
            [s for s in tr.samples if s[0] < r.start][-1:]
        if inside:
            r.peak = max(s[1] + s[2] for s in inside)
            r.peak_client = max(s[1] for s in inside)
            r.peak_others = max(s[2] for s in inside)
    return rows


def peak(tr: Trace) -> float:
    return max((s[1] + s[2] for s in tr.samples), default=0.0)


# -- the line-by-line profile ------------------------------------------------------------------

LINE_ROWS = 1024          # image rows the line-by-line workload streams (peaks follow the width)
LINE_TILES = 2            # tiles of the last pass it reprocesses


def line_profile(input_path: Path, cfg: Config, store_path: Path, scratch: Path) -> str:
    """memory_profiler, line by line, over the hot functions of every stage, on a slice of
    the run's own data: ingest's streaming of the first ``LINE_ROWS`` rows, a few pyramid
    chunks, ``LINE_TILES`` tiles of the last pass, and export's streaming of the slice."""
    from memory_profiler import LineProfiler, show_results

    from . import engine, export, ingest, resample
    from .storage import store as store_mod, views
    from .pipeline import plan
    from .tiling import grid

    st = store_mod.Store.open(store_path)
    rec = st.record()
    result = st.view(rec["result"])
    h, w = result.shape
    rows = min(h, LINE_ROWS)
    passes = plan((h, w), cfg)
    last = passes[-1]
    mode = mode_for(cfg)
    proc = mode.keep_far(mode.recorded_processor(last, rec), last.octave)
    own = getattr(proc, "inner", proc)         # the mode's processor inside keep_far's
    # ingest's receiving of rows (_Stream.take), its pyramid and export's read-ahead run on
    # threads that the line profiler does not trace; the buffers they fill are made in
    # traced lines.
    funcs = [ingest._stream, ingest._write_level0, ingest._Rows.__init__,
             views.ArrayView.read, views.ArrayView.write, views.downsample_tile,
             resample.resample_window,
             engine.run_tile, export._VirtualTiff.read, export._VirtualTiff._strip_bytes,
             export._VirtualTiff.strip]
    tiles_too = not mode.needs_pass_data
    if tiles_too:
        funcs.append(type(own).__call__)
        if hasattr(own, "gradient"):
            funcs.append(type(own).gradient)
        if own is not proc:
            funcs.append(type(proc).process)
    prof = LineProfiler(backend="psutil")
    for f in funcs:
        prof.add_function(f)
    lines = store_mod.Store.create(scratch, overwrite=True)
    try:
        with prof:
            im = ingest.open_image(input_path)
            level0 = lines.create_source((rows, w))
            ingest._stream(im.crop(0, 0, w, rows) if rows < im.height else im, level0, None,
                           input_path)
            if rows > 1:
                half = lines.create_source((max(1, rows // 2), max(1, w // 2)), "source/1")
                for t in grid(half.shape, store_mod.SOURCE_CHUNK)[:2]:
                    views.downsample_tile(level0, half, t)
            if tiles_too:
                target = lines.canvas(0, 0, result.shape, last.tile, last.offset, result.wrap)
                for t in grid(result.shape, last.tile, last.offset, proc.margin,
                              mode.align, result.wrap)[:LINE_TILES]:
                    engine.run_tile(engine.TileTask(result, target, proc, t,
                                                    (cfg.seed, last.octave, last.pass_)))
            tiff = export._VirtualTiff(dataclasses.replace(result, shape=(rows, w)))
            try:      # libvips' reads of the slice, made here: the encoder is not ours
                while tiff.read(1 << 22):
                    pass
            finally:
                tiff.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    buf = io.StringIO()
    show_results(prof, stream=buf)
    # file names relative to the package, not this machine's paths
    return buf.getvalue().replace(str(Path(__file__).resolve().parent.parent) + os.sep, "")


def top_lines(text: str, n: int = 5) -> list[tuple[float, str, str]]:
    """The ``n`` lines of memory_profiler output at which the process's memory was highest:
    (MiB, file:line, line contents). (Its 'Increment' column is not used: memory_profiler
    measures it against the last line traced in any function, so it mixes functions.)"""
    out, current = [], ""
    for line in text.splitlines():
        if line.startswith("Filename: "):
            current = line[len("Filename: "):]
            continue
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit() and parts[2] == "MiB" and parts[4] == "MiB":
            try:
                usage = float(parts[1])
            except ValueError:
                continue
            code = line.split("MiB", 2)[-1].strip().split(None, 1)[-1] if len(parts) > 6 else ""
            if not code.startswith(("def ", "async def ", "with ", "for ")):
                out.append((usage, f"{current}:{parts[0]}", code))  # statements that allocate
    return sorted(out, key=lambda r: -r[0])[:n]


# -- the report ----------------------------------------------------------------------------------

def _short(row: StageRow) -> str:
    if row.name == "pass" and row.detail.startswith("octave"):
        k, p = row.detail.split(":")[0].replace("octave", "").split("pass")
        return f"o{k.strip()}p{p.strip()}"
    if row.name == "calibrate":
        return "cal" + row.detail.replace("octave", "").strip()
    return row.name[:7]


def plot(path: Path, runs: list[tuple[str, Trace, list[StageRow]]]) -> None:
    """Memory over time (stacked: the started process, then its children), one panel per
    run, stages shaded and labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 3.6 * len(runs)), squeeze=False)
    for ax, (title, tr, rows) in zip(axes[:, 0], runs):
        t = [s[0] - tr.start for s in tr.samples]
        client = [s[1] for s in tr.samples]
        others = [s[2] for s in tr.samples]
        ax.stackplot(t, client, others, labels=["started process", "its children (workers)"],
                     colors=["#4878cf", "#6acc65"], alpha=0.85)
        top = max((a + b for a, b in zip(client, others)), default=1.0) * 1.25
        for i, r in enumerate(rows):
            ax.axvspan(r.start - tr.start, r.end - tr.start, color="0.9" if i % 2 else "1.0",
                       zorder=0)
            if r.wall > 0.015 * (tr.end - tr.start):
                ax.text((r.start + r.end) / 2 - tr.start, top * 0.97, _short(r), rotation=90,
                        ha="center", va="top", fontsize=7)
        ax.set_ylim(0, top)
        ax.set_xlim(0, max(tr.end - tr.start, 1e-3))
        ax.set_title(f"{title}: peak {peak(tr):.0f} MB, {tr.end - tr.start:.1f} s", fontsize=10)
        ax.set_ylabel("PSS, MB")
        ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _machine() -> str:
    import psutil
    import torch
    gib = psutil.virtual_memory().total / 2 ** 30
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores, {gib:.0f} GiB RAM, {device}; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def _table(rows: list[StageRow]) -> list[str]:
    out = ["| stage | wall s | peak MB (tree) | started process MB | children MB | tiles | "
           "tiles/s | MP/s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rate = f"{r.tiles / r.wall:.2f}" if r.tiles and r.wall > 0 else ""
        mps = f"{r.pixels / 1e6 / r.wall:.1f}" if r.pixels and r.wall > 0 else ""
        out.append(f"| {r.name} {r.detail} | {r.wall:.1f} | {r.peak:.0f} | {r.peak_client:.0f} | "
                   f"{r.peak_others:.0f} | {r.tiles or ''} | {rate} | {mps} |")
    return out


def write_report(folder: Path, input_path: Path, shape: tuple[int, int], cfg: Config,
                 ours: Trace, baseline: Trace | None, skipped: str, lines: str) -> Path:
    rows = stage_rows(ours)
    passes = [r for r in rows if r.name == "pass"]
    pass_s = sum(r.wall for r in passes)
    tiles = sum(r.tiles for r in passes)
    pixels = sum(r.pixels for r in passes)
    total = ours.end - ours.start
    runs = [("gigadream run", ours, rows)]
    if baseline is not None:
        runs.append(("naive: PIL + whole float32 array + np.roll", baseline, stage_rows(baseline)))
    plot(folder / "memory.png", runs)
    with open(folder / "memory.csv", "w") as f:
        f.write("run,seconds,stage,started_process_mb,children_mb\n")
        for title, tr, rs in runs:
            name = "gigadream" if tr is ours else "naive"
            for t, a, b in tr.samples:
                stage = next((r.label for r in reversed(rs) if r.start <= t), "")
                f.write(f"{name},{t - tr.start:.2f},{stage},{a:.1f},{b:.1f}\n")
    (folder / "lines.txt").write_text(lines)

    h, w = shape
    mode = mode_for(cfg)
    n, _ = mode.octaves(shape)
    md = [f"# gigadream profile: {input_path.name}", "",
          f"- input: {w}×{h} px ({h * w / 1e6:.0f} MP), {input_path.stat().st_size / 1e6:.1f} MB",
          f"- config: mode {cfg.mode}, model {cfg.model.name}, {n} octaves, tile "
          f"{cfg.tiling.tile} px, margin {mode.window_margin} px, {cfg.engine.workers} workers "
          f"(the whole config: result.jpg.yaml)",
          f"- machine: {_machine()}",
          "- memory: PSS of the whole process tree (shared pages split between the processes "
          f"that map them), sampled every {SAMPLE_S} s; peaks shorter than that can be missed",
          "", "## Where the time and the memory go", "",
          f"Whole run: {total:.1f} s, peak {peak(ours):.0f} MB. Passes: {tiles} tiles in "
          f"{pass_s:.1f} s ({tiles / pass_s if pass_s else 0:.2f} tiles/s, "
          f"{pixels / 1e6 / pass_s if pass_s else 0:.1f} MP/s).", "", *_table(rows), "",
          "![memory over time](memory.png)", "",
          "The plot stacks the started process (the client: ingest, the pyramid on its threads, "
          "export) and its children (the Dask workers that run the tiles).", "",
          "## Against the naive way", ""]
    if baseline is not None:
        bt = baseline.end - baseline.start
        md += ["The naive baseline (`python -m gigadream.baseline`, also "
               "`profiling/naive_dream.py`) decodes the whole image with PIL into one float32 "
               "array and jitters it with `np.roll`, as DeepDream was first scaled up; same "
               "model, octaves, passes and tile size, on the same input, in this same profile.",
               "", "| | gigadream | naive | naive ÷ gigadream |", "| --- | ---: | ---: | ---: |",
               f"| wall time | {total:.1f} s | {bt:.1f} s | {bt / total:.3g} |",
               f"| peak memory | {peak(ours):.0f} MB | {peak(baseline):.0f} MB | "
               f"{peak(baseline) / max(peak(ours), 1e-9):.3g} |", ""]
    else:
        md += [f"The naive baseline did not run: {skipped}.", ""]
    md += ["## Hot functions, line by line", "",
           f"`lines.txt` holds memory_profiler's line-by-line output (RSS of one process) for "
           f"the hot functions of every stage, run on a slice of the same data: ingest's "
           f"streaming of {min(h, LINE_ROWS)} rows, two pyramid chunks, "
           + ("" if mode.needs_pass_data else f"{LINE_TILES} tiles of the last pass, ")
           + "and export's streaming of the slice. The statements at which its memory was "
           "highest:", "", "| MiB | where | line |", "| ---: | --- | --- |"]
    md += [f"| {inc:.1f} | {where} | `{code}` |" for inc, where, code in top_lines(lines)]
    md += ["", "## Files", "",
           "`memory.csv` (every sample), `events.jsonl` (the run's events), `run.log`, "
           "`result.jpg` and `result.jpg.yaml` (the result and the config that reproduces it)."]
    path = folder / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _baseline(input_path: Path, shape: tuple[int, int], cfg: Config, folder: Path, config: Path,
              progress, say) -> tuple[Trace | None, str]:
    """The naive baseline on the same input under the same sampler: (its trace, '') or
    (None, why it did not run)."""
    import psutil

    from .baseline import BYTES_PER_PIXEL
    need = BYTES_PER_PIXEL * shape[0] * shape[1]
    avail = psutil.virtual_memory().available
    if not mode_for(cfg).naive:
        return None, f"it covers DeepDream (and identity), not {cfg.mode}"
    if need > 0.8 * avail:
        return None, (f"it would need about {need / 1e9:.1f} GB and this machine has "
                      f"{avail / 1e9:.1f} GB available")
    say("profile: naive baseline (PIL, whole float32 image, np.roll)")
    ev = folder / "baseline-events.jsonl"
    try:
        tr = trace(python_module("gigadream.baseline", input_path, folder / "baseline.jpg",
                                 "--config", config, "--events", ev),
                   ev, folder / "baseline.log", on_event=progress)
    finally:
        (folder / "baseline.jpg").unlink(missing_ok=True)
        ev.unlink(missing_ok=True)
    if tr.returncode != 0:
        killed = ": killed, probably out of memory" if tr.returncode < 0 else ""
        return None, f"it failed (exit {tr.returncode}; see baseline.log){killed}"
    return tr, ""


def profile(input_path: Path, cfg: Config, folder: Path, *, baseline: bool = True,
            overwrite: bool = False, say=lambda msg: None) -> Path:
    """Run, measure and report into ``folder``; returns the report's path."""
    from .export import check_output
    from .ingest import image_shape

    input_path, folder = Path(input_path), Path(folder)
    shape = image_shape(input_path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"report folder {folder} is a file; give a folder name with -o")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputError(f"report folder {folder} is not empty; pass --overwrite to replace "
                          "its report, or choose another with -o")
    folder.mkdir(parents=True, exist_ok=True)
    check_output(folder / "result.jpg", shape, overwrite=True)
    config = folder / "config.yaml"
    config.write_text(to_yaml(cfg))
    store = folder / "store"

    def progress(e: dict) -> None:
        if e["event"] == "Stage":
            say(f"  {e['name']} {e.get('detail', '')}".rstrip())

    try:      # the run's store is scratch (GBs for a panorama): gone on success and failure
        say(f"profile: gigadream run {input_path.name} ({shape[1]}×{shape[0]} px)")
        ours = trace(python_module("gigadream", "run", input_path, "--config", config, "-o",
                                   folder / "result.jpg", "--store", store, "--restart",
                                   "--overwrite", "--quiet", "--events",
                                   folder / "events.jsonl"),
                     folder / "events.jsonl", folder / "run.log", on_event=progress)
        if ours.returncode != 0:
            log = (folder / "run.log").read_text().strip().splitlines()
            raise GigadreamError(f"the profiled run failed (exit {ours.returncode}): "
                                 f"{log[-1] if log else 'no message'}; see {folder / 'run.log'}")

        base, skipped = (_baseline(input_path, shape, cfg, folder, config, progress, say)
                         if baseline else (None, "--no-baseline"))

        say("profile: line by line (memory_profiler) on a slice")
        lines = line_profile(input_path, cfg, store, folder / "lines.gdstore")
    finally:
        shutil.rmtree(store, ignore_errors=True)
    path = write_report(folder, input_path, shape, cfg, ours, base, skipped, lines)
    return path
