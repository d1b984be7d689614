"""make bench: one table of ratios, each measured in one run on a synthetic 300 MP panorama.

    ingest ÷ libvips sequential decode of the same file
    export ÷ libvips JPEG re-encode of the same file
    identity pass throughput (MP/s), distributed scheduler
    dream run wall time ÷ time its tiles spent in the model (a small real run)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from gigadream.config import load_config
from gigadream.memory import peak_mb
from gigadream.pipeline import run
from gigadream.sample import make_panorama


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    import pyvips
    pyvips.cache_set_max(0)
    w, h = (int(v) for v in os.environ.get("BENCH_SIZE", "20000x15000").split("x"))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        d = Path(d)
        src = make_panorama(d / "pano.jpg", w, h)
        mp = w * h / 1e6
        decode, _ = timed(lambda: pyvips.Image.new_from_file(str(src), access="sequential").avg())
        reenc, _ = timed(lambda: pyvips.Image.new_from_file(str(src), access="sequential")
                         .jpegsave(str(d / "re.jpg"), Q=92))
        ing_s, _ = timed(lambda: peak_mb(["ingest", str(src), str(d / "store"), "--set",
                                          "dream.octaves=1", "--quiet"]))
        ing_mb = peak_mb(["ingest", str(src), str(d / "store2"), "--set", "dream.octaves=1",
                          "--quiet"])
        exp_s, _ = timed(lambda: peak_mb(["export", str(d / "store"), str(d / "out.jpg")]))
        exp_mb = peak_mb(["export", str(d / "store"), str(d / "out2.jpg")])
        ident = run(src, load_config(None, ["mode=identity", "dream.octaves=1", "dream.passes=1",
                                            "engine.workers=2"]),
                    d / "id.jpg", store_path=d / "store")
        dream_src = make_panorama(d / "small.jpg", 1024, 512)
        t = time.perf_counter()
        dream = run(dream_src, load_config("impressionist", ["dream.octaves=2", "dream.passes=2"]),
                    d / "dream.jpg")
        dream_wall = time.perf_counter() - t
    rows = [
        (f"ingest ÷ libvips decode ({mp:.0f} MP)", f"{ing_s:.1f} s ÷ {decode:.1f} s",
         f"{ing_s / decode:.2f}", "≤ 1.5"),
        ("export ÷ libvips re-encode", f"{exp_s:.1f} s ÷ {reenc:.1f} s", f"{exp_s / reenc:.2f}", "≤ 1.5"),
        ("ingest peak (tree, PSS)", "", f"{ing_mb:.0f} MB", "≤ 400 MB"),
        ("export peak (tree, PSS)", "", f"{exp_mb:.0f} MB", "≤ 400 MB"),
        ("identity pass, 2 workers", f"{mp:.0f} MP in {ident.stage_s['passes']:.1f} s",
         f"{mp / ident.stage_s['passes']:.1f} MP/s", "≥ 60"),
        ("dream wall ÷ model time (0.5 MP)", f"{dream_wall:.1f} s ÷ {dream.model_s:.1f} s",
         f"{dream_wall / dream.model_s:.2f}", "≤ 1.10"),
        ("dream passes ÷ model time", f"{dream.stage_s['passes']:.1f} s ÷ {dream.model_s:.1f} s",
         f"{dream.stage_s['passes'] / dream.model_s:.2f}", ""),
    ]
    print(f"\n{'measure':<36} {'measured':<24} {'ratio':>10}  aim")
    for r in rows:
        print(f"{r[0]:<36} {r[1]:<24} {r[2]:>10}  {r[3]}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
