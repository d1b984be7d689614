"""The gigadream command as a user types it."""
import subprocess
import sys

import numpy as np

from conftest import read, sha256


def gd(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gigadream", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_help_explains_the_verbs_and_every_setting():
    r = gd("--help")
    assert r.returncode == 0
    for verb in ("run", "ingest", "export", "presets"):
        assert verb in r.stdout
    r = gd("run", "--help")
    assert r.returncode == 0
    for text in ("--config", "--set", "--store", "--scheduler", "--workers", "--seed",
                 "--overwrite", "--quiet", "dream.iterations", "tiling.margin", "export.quality"):
        assert text in r.stdout, text


def test_presets_lists_the_bundled_configs_with_one_line_each():
    r = gd("presets")
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) >= 2
    assert any(ln.startswith("impressionist ") for ln in lines)
    assert any(ln.startswith("dreamscape ") for ln in lines)


def test_ingest_then_export_round_trips_losslessly(photos, tmp_path):
    src = photos["astronaut_png"]
    assert gd("ingest", src, tmp_path / "store", "--quiet").returncode == 0
    r = gd("export", tmp_path / "store", tmp_path / "out.tif", "--set", "export.tiff_compression=lzw")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), read(src))


def test_run_keeps_an_existing_output_and_says_how_to_replace_it(photos, tmp_path):
    out = tmp_path / "out.jpg"
    out.write_bytes(b"yesterday's result")
    before = sha256(photos["chelsea_jpg"])
    r = gd("run", photos["chelsea_jpg"], "-o", out, "--set", "mode=identity")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"gigadream: error: output {out} already exists; pass --overwrite to replace it "
        "or choose another name with -o"]
    assert out.read_bytes() == b"yesterday's result"
    assert sha256(photos["chelsea_jpg"]) == before


def test_run_with_a_missing_input_is_one_line(tmp_path):
    r = gd("run", tmp_path / "nope.jpg", "-o", tmp_path / "o.jpg")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"gigadream: error: input {tmp_path / 'nope.jpg'} not found; check the path"
