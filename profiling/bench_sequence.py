"""make bench-sequence: a clip styled and dreamed as a sequence, against the same clip's frames
run as independent stills, measured with the clip's known motion (``gigadream.clips``).

    python profiling/bench_sequence.py

The clip: scikit-image's astronaut through a camera that pans, zooms in and turns, a
rounded rectangle of the cat crossing it (it hides and reveals the background), camera-like
noise; PNG frames, and the true backward flow and visibility beside them. Each mode (style:
``impressionist-style`` with ``gigadream.sample.painting`` as the style; dream:
``impressionist``) runs it twice at the same settings: as a sequence (``gigadream.sequence``:
each frame after the first starts from the previous result carried along the flow) and frame
by frame as cold stills (``pipeline.run``), both on one warm cluster (the workers started and
the model loaded once, as the sequence does; a user's loop of ``gigadream run`` would pay the
process start on top). It prints, measured in this one run:

1. temporal error (Ruder et al.): the mean squared difference, levels² (0-255, RGB), between
   a result frame and the previous one warped by the true flow, over the pixels visible in
   both; sequence ÷ stills (aim ≤ 0.25), beside the noisy input's own; the same between
   frames 6 apart (long-term: background hidden by the layer in between counts);
2. each frame's quality, mean over the frames: trails, how far the result strays from the
   input on background the layer has just revealed over elsewhere (1 = no trail); style, how
   many times closer to the painting's Grams than the photo (``profiling/style/measure.py``'s
   Gram error) and the luminance correlation with the input frame (the photo kept); dream,
   the mean |result − input| in levels (how strongly it dreams);
3. cost: a frame after the first against the same frame as a cold still (medians over frames
   2 to N: the first still also pays the workers' first model call; aim ≤ 1/3), in wall
   seconds and in CPU seconds of the process tree (the workers included): on a shared
   machine the wall time follows the load, the CPU time much less;
4. memory: peak PSS of the whole process tree of ``gigadream run`` on a clip of N frames
   against 10N (identity mode, small frames; aim ≈ 1);
5. 360°: a clip turning about the vertical axis (content crosses the left/right edge),
   dreamed with ``tiling.wrap=x``: the seam's visibility (mean |step| across the edge
   columns ÷ that between interior columns, every frame; 1 = invisible) and the temporal
   error in the 8 columns at each edge against the interior's.

Settings: BENCH_SIZE=WxH (320x240), BENCH_FRAMES (12), BENCH_NOISE (σ in levels, 2),
BENCH_STYLE_ITERATIONS (style.whole_iterations, 40: the preset's 300 take 3 min a frame on
2 cores), BENCH_MEMORY (N: 6 frames of 96×72), BENCH_DIR for the scratch files, BENCH_KEEP=1
keeps them, BENCH_ONLY=style,dream,memory,360 runs those parts.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gigadream.clips import (ClipTruth, long_term_error, make_clip, read_frames,
                             temporal_error, truth_path)

HERE = Path(__file__).resolve().parent
GAP = 6                      # long-term: frames 6 apart (a quarter second at 24 fps)
EDGE = 8                     # 360°: columns at each edge where the seam is measured
AIMS = {"temporal": 0.25, "cost": 1 / 3, "memory": 1.25}
LUMA = np.array([0.299, 0.587, 0.114])


def style_measure():
    """profiling/style/measure.py as a module: the Gram error and luminance correlation that
    the stills' style figures (profiling/style.md) are measured with."""
    spec = importlib.util.spec_from_file_location("style_measure", HERE / "style" / "measure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def save_png(img: np.ndarray, path: Path) -> Path:
    import cv2
    cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]))
    return path


def has_sequence() -> bool:
    return importlib.util.find_spec("gigadream.sequence") is not None


def trail(frames: list[np.ndarray] | None, inputs: list[np.ndarray], truth: ClipTruth
          ) -> float | None:
    """How far the result strays from the input frame (mean |luminance difference|) on the
    background the layer has just revealed (not seen in the frame before, though inside it)
    over that on the pixels seen in both: 1 when a revealed region is painted as any other,
    above 1 when what the previous result left there (a smear of the layer) shows."""
    if frames is None:
        return None
    h, w = truth.shape
    revealed, seen = [], []
    for t in range(1, truth.frames):
        coords, vis = truth.correspondence(t, t - 1)
        inside = ((coords[..., 0] >= 1) & (coords[..., 0] <= w - 2)
                  & (coords[..., 1] >= 1) & (coords[..., 1] <= h - 2))
        d = np.abs((frames[t].astype(np.float64) - inputs[t]) @ LUMA)
        revealed.append(d[~vis & inside].mean())
        seen.append(d[vis].mean())
    return float(np.mean(revealed) / np.mean(seen))


def cluster_for(cfg):
    """One warm cluster (workers started, the model loaded) for a mode's stills and sequence."""
    from gigadream.cluster import BackgroundCluster
    from gigadream.modes import mode_for
    workers = BackgroundCluster(cfg.engine.workers, cfg.engine.threads, cfg.engine.scheduler,
                                mode_for(cfg).warm_up(), cfg.engine.gpus)
    workers.executor()
    return workers


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process and its live children (the cluster's
    nanny and worker processes): what a frame costs whatever else shares the machine."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def stills(clip: Path, cfg, work: Path, workers) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Each frame of ``clip`` (a folder) run alone through ``pipeline.run`` on ``workers``,
    with the same settings (seed included) as a loop over the frames would: the results,
    each run's wall seconds and its CPU seconds."""
    import pyvips

    from gigadream.pipeline import run
    work.mkdir(parents=True, exist_ok=True)
    out, seconds, cpu = [], [], []
    for i, f in enumerate(sorted(clip.glob("frame*.png"), key=lambda p: int(p.stem[5:]))):
        t, c = time.perf_counter(), tree_cpu()
        report = run(f, cfg, work / f"{i + 1}.tif", cluster=workers, overwrite=True)
        seconds.append(time.perf_counter() - t)
        cpu.append(tree_cpu() - c)
        out.append(pyvips.Image.new_from_file(str(report.output)).numpy()[..., :3])
    return out, seconds, cpu


def sequence(clip: Path, cfg, work: Path, workers) -> tuple[list[np.ndarray], list[float], list[float]]:
    """The clip through ``gigadream.sequence.run_sequence`` on ``workers`` into a folder of
    lossless TIFF frames: the results, each frame's wall seconds (``report.seconds``) and
    CPU seconds (the tree's, read when each frame's first event comes)."""
    from gigadream.events import Stage
    from gigadream.sequence import run_sequence
    out = work / "frames"
    out.mkdir(parents=True, exist_ok=True)
    marks: list[float] = []
    current = [None]

    def on_event(e) -> None:
        # a frame's stages are named "frame i/n" (sequence._framed)
        if isinstance(e, Stage) and e.name.startswith("frame ") and e.name != current[0]:
            current[0] = e.name
            marks.append(tree_cpu())

    start = tree_cpu()
    report = run_sequence(str(clip), cfg, out / "%06d.tif", overwrite=True, cluster=workers,
                          on_event=on_event)
    marks = [start] + marks[1:] + [tree_cpu()]
    return list(read_frames(out)), list(report.seconds), list(np.diff(marks))


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(title: str, rows: list[tuple]) -> None:
    """rows: (measure, sequence, stills, aim or None: for sequence ÷ stills)."""
    print(f"\n{title}")
    print(f"| {'measure':<52} | {'sequence':>9} | {'stills':>9} | {'seq ÷ stills':>12} | {'aim':>6} |")
    print(f"|{'-' * 54}|{'-' * 10}:|{'-' * 10}:|{'-' * 13}:|{'-' * 8}|")
    for name, seq, still, aim in rows:
        r = ratio(seq, still) if seq is not None and still is not None else None
        met = "" if aim is None or r is None else (" ✓" if r <= aim else " ✗")
        fmt = lambda v: "" if v is None else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        aim_s = "" if aim is None else f"≤ {aim:.2g}"
        print(f"| {name:<52} | {fmt(seq):>9} | {fmt(still):>9} | "
              f"{'' if r is None else f'{r:.3f}{met}':>12} | {aim_s:>6} |")


def mode_rows(mode: str, label: str, clip: Path, truth: ClipTruth, cfg, work: Path,
              measure) -> None:
    inputs = list(read_frames(clip))
    workers = cluster_for(cfg)
    try:
        t = time.perf_counter()
        still, still_s, still_c = stills(clip, cfg, work / "stills", workers)
        print(f"{mode}: {len(still)} stills in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        seq = seq_s = seq_c = None
        if has_sequence():
            t = time.perf_counter()
            seq, seq_s, seq_c = sequence(clip, cfg, work / "sequence", workers)
            print(f"{mode}: the sequence in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    finally:
        workers.close()
    own = temporal_error(inputs, truth)
    te = lambda fr: None if fr is None else temporal_error(fr, truth)
    gap = min(GAP, truth.frames - 1)
    lt = lambda fr: None if fr is None else long_term_error(fr, truth, gap)
    rows = [(f"temporal error, levels² (input's own {own:.1f})", te(seq), te(still),
             AIMS["temporal"]),
            (f"long-term error, {gap} frames apart, levels²", lt(seq), lt(still), None),
            ("trails: |Δ luma| from the input, revealed ÷ seen", trail(seq, inputs, truth),
             trail(still, inputs, truth), None)]
    if mode == "style":
        style = measure.grams(_style_at(cfg, inputs[0].shape[:2]))
        closer = lambda fr: None if fr is None else float(np.mean(
            [measure.gram_errors(i, style)[0] / measure.gram_errors(f, style)[0]
             for f, i in zip(fr, inputs)]))
        corr = lambda fr: None if fr is None else float(np.mean(
            [measure.luma_correlation(f, i) for f, i in zip(fr, inputs)]))
        rows += [("Grams: times closer to the painting than the photo", closer(seq), closer(still), None),
                 ("luminance correlation with the input frame", corr(seq), corr(still), None)]
    else:
        strength = lambda fr: None if fr is None else float(np.mean(
            [np.abs(f.astype(np.float32) - i).mean() for f, i in zip(fr, inputs)]))
        rows.append(("dream strength: mean |result − input|, levels", strength(seq), strength(still), None))
    later = lambda s: None if s is None else float(np.median(s[1:]))
    # frames 2.. only: the first still pays the workers' first model call
    rows += [("seconds, a frame after the first (median)", later(seq_s), later(still_s),
              AIMS["cost"]),
             ("CPU seconds of the process tree, the same", later(seq_c), later(still_c),
              AIMS["cost"])]
    table(f"{mode}: {label}", rows)


def _style_at(cfg, shape: tuple[int, int]) -> np.ndarray:
    """The style image at the frame's long side, as ``measure.summary`` compares with it."""
    import pyvips
    im = pyvips.Image.new_from_file(str(cfg.style.images[0]))
    return im.resize(max(shape) / max(im.width, im.height)).numpy()[..., :3]


def memory_rows(work: Path, n: int) -> None:
    """Peak PSS of ``gigadream run`` (the process and its workers) on N and 10N frames."""
    from gigadream.memory import peak_mb
    if not has_sequence():
        print("\nmemory: gigadream.sequence is not here yet; skipped")
        return
    peaks = {}
    for k in (n, 10 * n):
        clip = work / f"mem{k}"
        make_clip(clip, (72, 96), k, "pan", seed=2)
        out = work / f"mem{k}-out"
        out.mkdir()
        t = time.perf_counter()
        peaks[k] = peak_mb(["run", str(clip), "--config", "impressionist", "--set", "mode=identity",
                            "-o", str(out), "--quiet", "--overwrite"])
        print(f"memory: {k} frames in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    r = peaks[10 * n] / peaks[n]
    print(f"\nmemory: peak PSS of the process tree, identity, 96×72 frames: {n} frames "
          f"{peaks[n]:.0f} MB, {10 * n} frames {peaks[10 * n]:.0f} MB: ratio {r:.2f} "
          f"(aim ≤ {AIMS['memory']}) {'✓' if r <= AIMS['memory'] else '✗'}")


def seam(frames: list[np.ndarray]) -> float:
    """Mean |step| across the 360° frame's left/right edge ÷ between interior columns."""
    across, inside = [], []
    for f in frames:
        y = f.astype(np.float64) @ LUMA
        across.append(np.abs(y[:, 0] - y[:, -1]).mean())
        inside.append(np.abs(np.diff(y, axis=1)).mean())
    return float(np.mean(across) / np.mean(inside))


def wrap_rows(work: Path, frames: int, cfg) -> None:
    clip = work / "yaw"
    truth = make_clip(clip, (128, 256), frames, "yaw", noise=0.0, seed=0)
    h, w = truth.shape
    edge = np.zeros((h, w), bool)
    edge[:, :EDGE] = edge[:, -EDGE:] = True
    inputs = list(read_frames(clip))
    workers = cluster_for(cfg)
    try:
        still = stills(clip, cfg, work / "yaw-stills", workers)[0]
        seq = sequence(clip, cfg, work / "yaw-sequence", workers)[0] if has_sequence() else None
    finally:
        workers.close()
    pick = lambda fr, f: None if fr is None else f(fr)
    rows = [(f"seam: |step| across the edge ÷ inside (input {seam(inputs):.2f})",
             pick(seq, seam), seam(still), None),
            (f"temporal error, {EDGE} columns at each edge, levels²",
             pick(seq, lambda fr: temporal_error(fr, truth, edge)),
             temporal_error(still, truth, edge), AIMS["temporal"]),
            ("temporal error, the interior, levels²",
             pick(seq, lambda fr: temporal_error(fr, truth, ~edge)),
             temporal_error(still, truth, ~edge), AIMS["temporal"])]
    table(f"360°: {w}×{h}, {frames} frames turning 5° a frame, dream, tiling.wrap=x", rows)


def main() -> None:
    from gigadream.modes import load_config
    from gigadream.sample import painting
    w, h = (int(v) for v in os.environ.get("BENCH_SIZE", "320x240").split("x"))
    n = int(os.environ.get("BENCH_FRAMES", "12"))
    noise = float(os.environ.get("BENCH_NOISE", "2"))
    iterations = os.environ.get("BENCH_STYLE_ITERATIONS", "40")
    mem_n = int(os.environ.get("BENCH_MEMORY", "6"))
    only = os.environ.get("BENCH_ONLY", "style,dream,memory,360").split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-sequence-", dir=os.environ.get("BENCH_DIR")))
    start = time.perf_counter()
    load_before = os.getloadavg()
    try:
        clip = work / "clip"
        truth = make_clip(clip, (h, w), n, "mix", noise=noise, seed=0)
        painting_path = save_png(painting(256, 256), work / "painting.png")
        print(f"bench-sequence: {w}×{h}, {n} frames (camera pans, zooms and turns; a layer "
              f"crosses; noise σ {noise:g}); sequence: "
              f"{'gigadream.sequence' if has_sequence() else 'NOT HERE YET (stills only)'}")
        common = ["export.tiff_compression=none"]
        configs = {
            "style": load_config("impressionist-style", common + [
                f"style={painting_path}", f"style.whole_iterations={iterations}"]),
            "dream": load_config("impressionist", common)}
        measure = style_measure() if "style" in only else None
        labels = {"style": f"impressionist-style, the painting, style.whole_iterations={iterations}",
                  "dream": "impressionist"}
        for mode in ("style", "dream"):
            if mode in only:
                mode_rows(mode, labels[mode], clip, truth, configs[mode], work / mode, measure)
        if "memory" in only:
            memory_rows(work, mem_n)
        if "360" in only:
            wrap_rows(work, n, load_config("impressionist", common + ["tiling.wrap=x"]))
        load_after = os.getloadavg()
        print(f"\nwall {time.perf_counter() - start:.0f} s; load average before "
              f"{load_before[0]:.1f}, after {load_after[0]:.1f} (1 min; {os.cpu_count()} cores)")
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
