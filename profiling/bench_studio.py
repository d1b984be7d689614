"""The studio's three numbers (README "The studio"; profiling/README.md):

1. a job run through the studio against the same `gigadream run`: wall ratio (target <= 1.05);
2. the queue page's latency while two jobs run (p95, target < 100 ms);
3. the server's RSS rise while a 250 MB JPEG is uploaded (target < 50 MB over idle).

    python profiling/bench_studio.py [--mp 10] [--skip run,page,upload] [--out DIR]

On a 2-core machine a 10 MP dream takes long; --mp and --set pick a smaller one (say so
beside the figures). Prints one line per figure.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
DREAM = ["dream.octaves=2", "dream.passes=2", "engine.workers=1"]


def make_image(path: Path, mp: float) -> Path:
    from gigadream.sample import make_panorama
    w = int((mp * 1e6 * 1.5) ** 0.5)
    return make_panorama(path, w, int(w / 1.5), quality=92)


def big_jpeg(path: Path, target_mb: float = 250) -> Path:
    """A JPEG of about ``target_mb``: noise compresses badly, so its size follows its pixels."""
    import pyvips
    side = int((target_mb * 1e6 / 1.6) ** 0.5)
    im = pyvips.Image.gaussnoise(side, side, sigma=60, mean=128).cast("uchar")
    im = im.bandjoin([im.rot90().crop(0, 0, side, side), im.flip("horizontal")]).copy(
        interpretation="srgb")
    im.jpegsave(str(path), Q=95)
    return path


def gd(*args) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - t


def bench_run(d: Path, image: Path, overrides: list[str]) -> None:
    from test_studio import Server
    sets = [a for o in overrides for a in ("--set", o)]
    run_s = gd("run", image, "--config", "impressionist", *sets, "-o", d / "cli.jpg", "--quiet")
    s = Server(d / "studio-run", image.parent)
    try:
        t = time.perf_counter()
        job = s.ok("/api/jobs", {"input": image.name, "config": "impressionist",
                                 "overrides": overrides})["jobs"][0]
        s.wait([job], timeout=24 * 3600)
        wall = time.perf_counter() - t
        run = s.job(job)["runs"][0]
    finally:
        s.stop()
    print(f"studio job, queued to done: {wall:.1f} s; its child: {run['ended'] - run['started']:.1f} s; "
          f"gigadream run: {run_s:.1f} s; ratio {wall / run_s:.3f} (target <= 1.05)")


def bench_page(d: Path, image: Path, overrides: list[str], n: int = 200) -> None:
    from test_studio import Server
    s = Server(d / "studio-page", image.parent, "--slots", 2)
    try:
        ids = [s.ok("/api/jobs", {"input": image.name, "config": "impressionist",
                                  "overrides": overrides + [f"seed={i}"]})["jobs"][0]
               for i in range(2)]
        s.wait(ids, until=lambda j: j["status"] == "running" and j["progress"] > 0, timeout=600)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            r = s.get("/")
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
            time.sleep(0.02)
        states = [s.job(i)["status"] for i in ids]
        for i in ids:
            s.post(f"/api/jobs/{i}/cancel", {})
    finally:
        s.stop()
    times.sort()
    p95 = times[int(0.95 * len(times)) - 1]
    print(f"queue page while two jobs run ({', '.join(states)} at the end): median "
          f"{1000 * statistics.median(times):.1f} ms, p95 {1000 * p95:.1f} ms, max "
          f"{1000 * times[-1]:.1f} ms over {n} requests (target p95 < 100 ms)")


def bench_upload(d: Path) -> None:
    from test_studio import Server
    (d / "empty").mkdir(exist_ok=True)
    big = big_jpeg(d / "big.jpg")
    s = Server(d / "studio-upload", d / "empty")
    try:
        proc = psutil.Process(s.proc.pid)
        s.get("/")
        time.sleep(1)
        idle = proc.memory_info().rss
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(proc.memory_info().rss)
                time.sleep(0.02)
        t = threading.Thread(target=sample)
        t.start()
        start = time.perf_counter()
        with open(big, "rb") as f:
            r = s.post("/api/images", files={"file": ("big.jpg", f, "image/jpeg")})
        took = time.perf_counter() - start
        done.set()
        t.join()
        assert r.status_code == 200, r.text
    finally:
        s.stop()
    size = big.stat().st_size
    print(f"upload of a {size / 1e6:.0f} MB JPEG in {took:.1f} s: server RSS idle "
          f"{idle / 1e6:.0f} MB, peak {max(peak) / 1e6:.0f} MB, rise {(max(peak) - idle) / 1e6:.1f} MB "
          "(target < 50 MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mp", type=float, default=10.0, help="megapixels of the dream (default 10)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="settings of the dream (default: impressionist, 2 octaves x 2 passes)")
    p.add_argument("--skip", default="", help="comma-separated: run, page, upload")
    p.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    overrides = DREAM + args.overrides
    with tempfile.TemporaryDirectory() as tmp:
        d = args.out or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        (d / "images").mkdir(exist_ok=True)
        image = make_image(d / "images" / "bench.jpg", args.mp)
        print(f"image {image.stat().st_size / 1e6:.1f} MB, {args.mp:g} MP; settings: "
              f"impressionist {' '.join(overrides)}")
        if "run" not in skip:
            bench_run(d, image, overrides)
        if "page" not in skip:
            bench_page(d, image, overrides)
        if "upload" not in skip:
            bench_upload(d)


if __name__ == "__main__":
    main()
