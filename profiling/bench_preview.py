"""make bench-preview: `gigadream preview` of a 300 MP panorama, as a user runs it.

    python profiling/bench_preview.py

The command runs in a child process (start-up included) under memory-profiler, which samples
the PSS of its whole process tree (the client and the Dask workers) as `make bench` does. It
prints the wall time and peak against the targets (5 minutes, 1.5 GB, on a 2-core CPU), and
where the time went, stage by stage (from the preview's preview.json), with the machine's
load average before and after: on a shared machine other work inflates the time.

The panorama is scikit-image's photos with camera-like noise, as `make bench`'s. Settings:
BENCH_SIZE=WxH (default 20000x15000), BENCH_NOISE (default 9), BENCH_CONFIG (impressionist),
BENCH_CROPS (4), BENCH_DIR for the scratch files; BENCH_KEEP=1 keeps the preview folder
(its index.html) and prints where it is.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from gigadream.memory import peak_mb
from gigadream.sample import make_panorama

AIMS = {"wall_s": 300.0, "peak_mb": 1500.0}


def main() -> None:
    w, h = (int(v) for v in os.environ.get("BENCH_SIZE", "20000x15000").split("x"))
    noise = float(os.environ.get("BENCH_NOISE", "9"))
    config = os.environ.get("BENCH_CONFIG", "impressionist")
    crops = os.environ.get("BENCH_CROPS", "4")
    scratch = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR"))
    d = Path(scratch)
    t = time.perf_counter()
    src = make_panorama(d / "pano.jpg", w, h, noise=noise)
    print(f"panorama {w}×{h} ({src.stat().st_size / 1e6:.0f} MB) made in "
          f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
    out = d / "preview"
    load_before = os.getloadavg()
    t = time.perf_counter()
    peak = peak_mb(["preview", str(src), "--config", config, "--crops", crops, "-o", str(out),
                    "--quiet"])
    wall = time.perf_counter() - t
    load_after = os.getloadavg()
    summary = json.loads((out / "preview.json").read_text())
    stages = summary["stage_s"]
    print(f"\ngigadream preview, {w}×{h} px ({w * h / 1e6:.0f} MP), {config}, {crops} crops "
          f"of {summary['crops'][0]['box'][1] - summary['crops'][0]['box'][0]} px, far view "
          f"{summary['far_shape'][1]}×{summary['far_shape'][0]}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min; "
          f"{os.cpu_count()} cores)\n")
    print(f"{'measure':<34} {'measured':>10}  {'aim':>8}  met")
    for name, value, aim in (("wall (process start to exit), s", wall, AIMS["wall_s"]),
                             ("peak memory (tree, PSS), MB", peak, AIMS["peak_mb"])):
        print(f"{name:<34} {value:>10.0f}  {'≤ %g' % aim:>8}  {'yes' if value <= aim else 'NO'}")
    print(f"{'  of it: time in the model, s':<34} {summary['model_s']:>10.0f}")
    print(f"{'  outside the stages below, s':<34} {wall - sum(stages.values()):>10.0f}")
    for name, s in stages.items():
        print(f"  {name:<32} {s:>10.1f}")
    windows = {tuple(c["window"]) for c in summary["crops"]}
    y0, y1, x0, x1 = next(iter(windows))
    print(f"\ncrop windows (crop and context) {x1 - x0}×{y1 - y0} px")
    if os.environ.get("BENCH_KEEP"):
        print(f"preview kept: {out / 'index.html'}")
    else:
        import shutil
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
