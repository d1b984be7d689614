"""gigadream profile: a report that stands on its own, made of real measurements."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gigadream
from conftest import read, sha256
from gigadream.baseline import naive_run
from gigadream.config import load_config
from gigadream.pipeline import plan
from gigadream.profile import Trace, stage_rows, top_lines
from gigadream.sample import make_panorama

IDENTITY = ["--set", "mode=identity", "--set", "dream.octaves=2", "--set", "dream.passes=2"]


def gd(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def stage_table(md: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| stage |"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    img = make_panorama(d / "pano.jpg", 1500, 700)
    before = sha256(img)
    r = gd("profile", img, *IDENTITY, "-o", d / "report")
    assert r.returncode == 0, r.stderr
    assert sha256(img) == before
    return d / "report", img, r.stderr


def test_every_stage_has_its_wall_time_peak_and_tiles(report):
    folder, img, stderr = report
    rows = stage_table((folder / "report.md").read_text())
    names = [r[0].split()[0] for r in rows]
    assert names == ["start-up", "ingest", "pyramid", "cluster", "pass", "pass", "pass", "pass",
                     "export"]
    cfg = load_config(None, [a for a in IDENTITY if a != "--set"])
    expected_tiles = [p.tiles for p in plan((700, 1500), cfg)]
    assert [int(r[5]) for r in rows if r[0].startswith("pass")] == expected_tiles
    for r in rows:
        wall, tree, client, children = float(r[1]), float(r[2]), float(r[3]), float(r[4])
        assert wall >= 0 and 30 < tree < 2000 and client > 30, r
        # the peak of a sum lies between the larger part's peak and the sum of the peaks
        assert max(client, children) - 1 <= tree <= client + children + 1, r
    for r in rows:
        if r[0].startswith("pass"):
            assert float(r[6]) > 0 and float(r[7]) > 0      # tiles/s, MP/s
    assert "pass octave 0 pass 2" in stderr                    # progress as it runs


def test_the_report_files_are_real(report):
    import pyvips
    folder, img, _ = report
    png = pyvips.Image.new_from_file(str(folder / "memory.png"))
    assert png.width > 800 and png.height > 500                # two panels: ours and naive
    csv = (folder / "memory.csv").read_text().splitlines()
    assert csv[0] == "run,seconds,stage,started_process_mb,children_mb"
    runs = {ln.split(",")[0] for ln in csv[1:]}
    ours = {ln.split(",")[2] for ln in csv[1:] if ln.startswith("gigadream,")}
    assert runs == {"gigadream", "naive"}
    # every stage that lasted a few sampling periods (0.1 s) has samples under its name; a
    # pass of this small image can be over between two samples
    rows = stage_table((folder / "report.md").read_text())
    long = [r[0].split(":")[0] if r[0].startswith("pass") else r[0].split()[0]
            for r in rows if float(r[1]) >= 0.3]
    assert len(long) >= 2 and set(long) <= ours, (long, ours)     # start-up, cluster at least
    assert read(folder / "result.jpg").shape == (700, 1500, 3)
    assert not (folder / "store").exists() and not (folder / "lines.gdstore").exists()


def test_the_naive_baseline_ran_on_the_same_input_with_its_ratio(report):
    folder, _, _ = report
    md = (folder / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| peak memory |"))
    ours, naive, ratio = (c.strip() for c in row.strip("|").split("|")[1:])
    assert float(ratio) == pytest.approx(float(naive.split()[0]) / float(ours.split()[0]), rel=0.02)
    assert "| wall time |" in md


def test_line_by_line_covers_the_hot_functions_of_every_stage(report):
    folder, _, _ = report
    lines = (folder / "lines.txt").read_text()
    for where in ("gigadream/ingest.py", "gigadream/export.py", "gigadream/engine.py",
                  "gigadream/resample.py", "def _stream", "def run_tile", "def _strip_bytes",
                  "def downsample_tile", "MiB"):
        assert where in lines, where
    assert str(Path(gigadream.__file__).resolve().parent.parent) not in lines
    md = (folder / "report.md").read_text()
    assert md.count("| gigadream/") >= 3          # the highest-memory statements, file:line


def test_profile_refuses_bad_requests_in_one_line(tmp_path, photos):
    r = gd("profile", tmp_path / "nope.jpg", "-o", tmp_path / "r")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    r = gd("profile", photos["chelsea_jpg"], "-o", tmp_path / "full", *IDENTITY)
    assert r.returncode == 2 and "not empty; pass --overwrite" in r.stderr
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    r = gd("profile", photos["chelsea_jpg"], "--set", "dream.octaves=0")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_stage_rows_cut_the_samples_at_each_stage():
    samples = [(t / 10, 50.0 + t, 10.0 * (t >= 5)) for t in range(20)]    # 0.0 .. 1.9 s
    events = [{"t": 0.3, "event": "Stage", "name": "ingest", "detail": ""},
              {"t": 0.5, "event": "Stage", "name": "pass", "detail": "octave 0 pass 1",
               "pixels": 2_000_000},
              {"t": 0.6, "event": "Work", "units": 1}, {"t": 0.7, "event": "Work", "units": 1},
              {"t": 1.02, "event": "Stage", "name": "export", "detail": ""},
              {"t": 1.04, "event": "Stage", "name": "done", "detail": ""}]
    rows = stage_rows(Trace(samples, events, 0.0, 2.0, 0))
    assert [r.name for r in rows] == ["start-up", "ingest", "pass", "export", "done"]
    start, ingest, pass_, export, done = rows
    assert start.peak == 52 and ingest.peak == 54                 # samples 0.0-0.2, 0.3-0.4
    assert pass_.peak == 60 + 10 and pass_.peak_others == 10 and pass_.tiles == 2
    assert pass_.wall == pytest.approx(0.52) and pass_.pixels == 2_000_000
    assert export.peak == 61 + 10        # shorter than a sample: the next sample counts
    assert done.peak == 69 + 10


def test_top_lines_rank_statements_by_the_memory_they_ran_at():
    text = """Filename: gigadream/x.py

Line #    Mem usage    Increment  Occurrences   Line Contents
=============================================================
    10    100.0 MiB    900.0 MiB           1   def f():
    11    150.0 MiB     50.0 MiB           1       a = big()
    12    151.0 MiB      1.0 MiB           3       b = small()
    13                                             # nothing
"""
    assert top_lines(text, 5) == [(151.0, "gigadream/x.py:12", "b = small()"),
                                  (150.0, "gigadream/x.py:11", "a = big()")]


@pytest.mark.parametrize("mode", ["identity", "dream"])
def test_the_naive_baseline_is_a_real_run(photos, tmp_path, mode):
    """Identity gives the photo back; a dream changes it (the same objective as gigadream's)."""
    cfg = load_config(None, [f"mode={mode}", "dream.octaves=2", "dream.passes=1",
                             "tiling.tile=128", "dream.layers=[relu2_2]", "dream.step_size=6"])
    out = tmp_path / "naive.jpg"
    naive_run(photos["chelsea_jpg"], cfg, out)
    diff = np.abs(read(out).astype(float) - read(photos["chelsea_jpg"]).astype(float)).mean()
    assert (diff < 2.5) if mode == "identity" else (diff > 4), diff     # JPEG re-encoding: ~1.6


def test_the_gpu_check_runs_with_torch_alone(tmp_path):
    """profiling/gpu_check.py, for the GPU machine that has torch but no pyvips, zarr or
    Dask: here with those unimportable, on the CPU, in its quick form."""
    from gigadream.models import default_weights
    root = Path(__file__).parent.parent
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in ("dask", "distributed", "zarr", "pyvips"))
    code = f"import runpy, sys; {blocked}; runpy.run_path('profiling/gpu_check.py', run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code, "--weights", str(default_weights("vgg16")),
                        "--device", "cpu", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stdout + r.stderr
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| precision check | | | pass |" in md and "alone (max" in md
    times = [ln for ln in md.splitlines() if ln.startswith("| 96 px |")]
    assert len(times) == 4 and all(float(ln.split("|")[4]) > 0 for ln in times)
    assert "octave-start upsampling" in md
