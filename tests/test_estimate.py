"""``gigadream plan``: counts from the run's own plan, and a time estimate checked against a
real run's model time."""
import subprocess
import sys

import pytest

from gigadream.config import load_config
from gigadream.estimate import estimate
from gigadream.pipeline import plan, run

SMALL = ["dream.layers=[relu3_3]", "tiling.tile=128", "dream.octaves=2", "dream.passes=2",
         "engine.workers=1", "export.tiff_compression=none"]


@pytest.mark.serial          # a time measured against another: alone on the machine
def test_estimate_counts_match_the_plan_and_the_time_is_near_a_real_run(pano, tmp_path):
    cfg = load_config(None, SMALL)
    e = estimate(pano, cfg)
    passes = plan((512, 768), cfg)
    assert e.shape == (512, 768) and e.passes == len(passes) == 4
    assert e.tiles == sum(p.tiles for p in passes)
    # windows include margins, so the work is more than the pixels dreamed
    assert e.window_mp_iterations > sum(p.shape[0] * p.shape[1] for p in passes) / 1e6
    assert e.flops_per_pixel > 1e5 and e.store_bytes > 3 * 768 * 512
    report = run(pano, cfg, tmp_path / "out.tif")
    # the run's steps went through the window megapixels plan counts (its calibration's
    # windows: their mean, × the sampled tiles)
    assert abs(report.model_mp / e.window_mp_iterations - 1) < 0.05, (report.model_mp,
                                                                      e.window_mp_iterations)
    ratio = e.cpu_seconds / report.model_s
    print(f"estimated model time {e.cpu_seconds:.1f} s ({e.cpu_s_per_step * 1e3:.0f} ms a step, "
          f"{e.cpu_s_per_mp_iteration:.2f} s/MP, {e.cpu_s_per_shape * 1e3:.0f} ms a new shape, "
          f"{e.cpu_s_per_task_mp:.2f} s/MP a task's first step), "
          f"measured {report.model_s:.1f} s")
    # gigadream plan's promise (docs/performance.md): within 0.7-1.25x of a real run's
    # model time
    assert 0.7 < ratio < 1.25, ratio


def test_plan_command_prints_the_costs(pano):
    r = subprocess.run([sys.executable, "-m", "gigadream", "plan", str(pano), "--config",
                        "impressionist", "--gpu", "h100"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    keys = [ln.split()[0] for ln in r.stdout.splitlines()]
    assert keys == ["image", "octaves", "passes", "tiles", "wrap", "model", "FLOPs", "store", "RAM",
                    "this", "h100"]
    r = subprocess.run([sys.executable, "-m", "gigadream", "plan", str(pano), "--gpu", "abacus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'abacus'" in r.stderr
