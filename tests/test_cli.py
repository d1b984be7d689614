"""The gigadream command as a user types it."""
import subprocess
import sys

import numpy as np
import pytest

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


def test_presets_say_their_whole_description_and_a_misspelt_one_gets_the_nearest():
    lines = gd("presets").stdout.strip().splitlines()
    imp = next(ln for ln in lines if ln.startswith("impressionist "))
    assert imp.endswith("from afar the landscape stays the photo (keep_far).")
    r = gd("run", "x.jpg", "--config", "impresionist")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "gigadream: error: config file impresionist not found; did you mean the preset "
        "'impressionist'? 'gigadream presets' lists the bundled ones"]


@pytest.mark.parametrize("args, fix", [
    (["--set", "dream.step_size", "2"], "--set dream.step_size=2"),
    (["--set", "dream.step_size"], "--set dream.step_size=VALUE")])
def test_a_setting_spelt_with_a_space_says_how_to_write_it(args, fix):
    r = gd("run", "x.jpg", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].endswith(f"no space: {fix}")


def test_results_are_named_after_their_preset_so_a_second_one_does_not_collide(photos,
                                                                               tmp_path):
    src = tmp_path / "pano.jpg"
    src.write_bytes(photos["chelsea_jpg"].read_bytes())
    for name in ("quick", "other"):
        (tmp_path / f"{name}.yaml").write_text("mode: identity\ntiling:\n  tile: 128\n")
        r = gd("run", src, "--config", tmp_path / f"{name}.yaml", "--quiet")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "pano-quick.jpg").is_file() and (tmp_path / "pano-other.jpg").is_file()
    r = gd("run", src, "--set", "mode=identity", "--set", "tiling.tile=128")
    assert r.returncode == 0 and (tmp_path / "pano-identity.jpg").is_file()


def test_a_deep_zoom_run_and_an_export_name_what_to_open(photos, tmp_path):
    out = tmp_path / "pano.dzi"
    r = gd("run", photos["chelsea_jpg"], "--set", "mode=identity", "--set", "tiling.tile=128",
           "-o", out, "--store", tmp_path / "s", "--quiet")
    assert r.returncode == 0, r.stderr
    r = gd("run", photos["chelsea_jpg"], "--set", "mode=identity", "--set", "tiling.tile=128",
           "-o", out, "--store", tmp_path / "s", "--overwrite")
    last = r.stderr.strip().splitlines()[-1]
    assert last.endswith(f"open {tmp_path / 'pano.html'} in a browser to see it beside its input")
    r = gd("export", tmp_path / "s", tmp_path / "again.jpg")
    assert r.returncode == 0
    assert r.stderr.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'again.jpg'} (")


def test_the_sample_command_says_how_it_is_called_and_what_each_option_does():
    r = subprocess.run([sys.executable, "-m", "gigadream.sample", "--help"],
                       capture_output=True, text=True)
    assert r.stdout.startswith("usage: python -m gigadream.sample")
    for option in ("--width", "--height", "--noise", "--painting", "OUT"):
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  " + option))
        assert len(line.split()) > 2, line          # a help text beside the option


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


# ---- the bad-input matrix: each is one line, a non-zero exit, no traceback, the input
# ---- untouched, no output and no store left behind ----

def _img(tmp, name, array, **kw):
    from conftest import save
    return save(array, tmp / name, **kw)


def _photo(tmp):
    import skimage.data
    return _img(tmp, "in.jpg", skimage.data.chelsea(), Q=90)


def _truncated(tmp):
    f = _photo(tmp)
    t = tmp / "cut.jpg"
    t.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return t


MOUNTS: list = []


def _readonly_dir(tmp):
    d = tmp / "ro"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (as root, permissions do not stop writes)")
    MOUNTS.append(d)
    return d


@pytest.fixture
def unmount():
    yield
    while MOUNTS:
        subprocess.run(["umount", "-l", str(MOUNTS.pop())], capture_output=True)


def _tiles_folder(tmp):
    """An earlier deep zoom's tiles, without its .dzi."""
    (tmp / "pano_files" / "9").mkdir(parents=True)
    (tmp / "pano_files" / "9" / "0_0.jpeg").write_bytes(b"an earlier tile")
    return True


def _conf(text):
    def make(tmp):
        (tmp / "c.yaml").write_text(text)
        return ["--config", tmp / "c.yaml"]
    return make


# (case, input maker, extra args maker, message regex)
BAD_RUNS = [
    ("missing file", lambda t: t / "nope.jpg", None, r"input .*nope.jpg not found; check the path"),
    ("a folder without images", lambda t: t, None,
     r"input .* holds no images .*; give a folder or glob of frames, or a video file"),
    ("text named .jpg", lambda t: (t / "notes.jpg").write_text("hello") and t / "notes.jpg", None,
     r"cannot be read as an image .*give a JPEG, PNG, TIFF"),
    ("truncated JPEG", _truncated, None, r"input .*cut.jpg .*(truncated|damaged|cannot be read)"),
    ("zero bytes", lambda t: (t / "z.jpg").write_bytes(b"") or t / "z.jpg", None, r"is empty \(0 bytes\)"),
    ("too large for JPEG", lambda t: _img(t, "wide.png", np.zeros((2, 70000, 3), np.uint8)),
     None, r"65,?500.*\.tif"),
    ("YAML does not parse", _photo, _conf("dream: [unclosed\n"), r"is not valid YAML at line"),
    ("unknown key", _photo, _conf("dream:\n  pases: 3\n"), r"unknown key 'dream.pases'; did you mean 'dream.passes'"),
    ("wrong type", _photo, _conf("dream:\n  passes: many\n"), r"dream.passes: expected an integer, got 'many'"),
    ("zero count", _photo, lambda t: ["--set", "dream.octaves=0"], r"dream.octaves: expected an integer from 1"),
    ("negative count", _photo, lambda t: ["--set", "tiling.tile=-512"], r"tiling.tile: expected an integer from 16"),
    ("style image missing", _photo, lambda t: ["--set", "mode=style", "--set", f"style={t / 'monet.jpg'}"],
     r"style image .*monet.jpg not found"),
    ("output folder missing", _photo, lambda t: ["-o", t / "no" / "such" / "out.jpg"],
     r"output folder .* does not exist"),
    ("output folder not writable", _photo, lambda t: ["-o", _readonly_dir(t) / "out.jpg"],
     r"output folder .* is not writable"),
    ("store is not ours", _photo, lambda t: (t / "mine").mkdir() or (t / "mine" / "a.txt").write_text("x")
     and ["--store", t / "mine"], r"store folder .*mine exists and holds other data"),
    ("config beside the output exists", _photo, lambda t: (t / "r.jpg.yaml").write_text("mine")
     and ["-o", t / "r.jpg"], r"output .*r.jpg.yaml \(the config of r.jpg\) already exists; "
                              r"pass --overwrite"),
    ("16 bits into a JPEG", _photo, lambda t: ["--set", "export.bits=16"],
     r"export.bits 16 needs a TIFF or PNG output, but result.jpg is a JPEG \(8 bits a channel\); "
     r"name it result.tif"),
    ("deep zoom tiles folder exists", _photo, lambda t: _tiles_folder(t) and ["-o", t / "pano.dzi"],
     r"output .*pano_files \(the tiles of pano.dzi\) already exists; pass --overwrite"),
    ("a setting its mode does not read", _photo,
     lambda t: ["--config", "impressionist", "--set", "style=monet.jpg"],
     r"--set style=monet.jpg: mode \w+ does not read style settings, so it would change "
     r"nothing; choose a style preset \(gigadream presets\) or add --set mode=style"),
    ("unknown deep zoom layout", _photo, lambda t: ["--set", "export.layout=zoomify"],
     r"export.layout: expected one of dz, iiif3; got 'zoomify'"),
]


@pytest.mark.parametrize("case,make,extra,message", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_bad_input_matrix(tmp_path, unmount, case, make, extra, message):
    import re
    src = make(tmp_path)
    args = [str(a) for a in (extra(tmp_path) if extra else [])]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out" / "result.jpg")]
        (tmp_path / "out").mkdir()
    before = {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file()}
    r = gd("run", src, *args, "--quiet", "--set", "mode=identity" if "mode=style" not in args else "seed=0")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("gigadream: error: ") and re.search(message, lines[0]), lines[0]
    after = {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "a file was changed, created or removed"
    assert not [p for p in tmp_path.rglob("*.gdstore")], "a store was left behind"


# ---- inputs that must work, through the command: upright 8-bit sRGB out ----

def _exif_rotated(tmp):
    import pyvips
    import skimage.data
    im = pyvips.Image.new_from_array(skimage.data.chelsea()[:200, :300]).copy(interpretation="srgb")
    im = im.copy()
    im.set_type(pyvips.GValue.gint_type, "orientation", 6)     # camera held upright: rotate 90°
    im.write_to_file(str(tmp / "rot.jpg"), Q=95)
    return tmp / "rot.jpg"


GOOD_RUNS = [
    ("1x1 pixel", lambda t: _img(t, "dot.png", np.full((1, 1, 3), 200, np.uint8)), (1, 1)),
    ("thinner than a tile", lambda t: _img(t, "strip.png", np.random.default_rng(0).integers(
        0, 256, (5, 1500, 3), dtype=np.uint8)), (5, 1500)),
    ("grayscale", lambda t: _img(t, "grey.png", np.random.default_rng(1).integers(
        0, 256, (40, 60), dtype=np.uint8)), (40, 60)),
    ("RGBA", lambda t: _img(t, "rgba.png", np.full((30, 20, 4), 255, np.uint8)), (30, 20)),
    ("16-bit", lambda t: _img(t, "deep.png", np.full((30, 20, 3), 40000, np.uint16)), (30, 20)),
    ("EXIF-rotated", _exif_rotated, (300, 200)),
]


@pytest.mark.parametrize("case,make,shape", GOOD_RUNS, ids=[c[0] for c in GOOD_RUNS])
def test_unusual_inputs_work_end_to_end(tmp_path, case, make, shape):
    src = make(tmp_path)
    before = sha256(src)
    r = gd("run", src, "-o", tmp_path / "out.tif", "--set", "mode=identity", "--quiet")
    assert r.returncode == 0, r.stderr
    out = read(tmp_path / "out.tif")
    assert out.shape == (*shape, 3) and out.dtype == np.uint8
    assert sha256(src) == before
    if case in ("grayscale",):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if case == "16-bit":
        assert abs(int(out[0, 0, 0]) - round(40000 / 257)) <= 1
    if case == "EXIF-rotated":                # upright: the photo's top row became its right column
        import pyvips
        upright = pyvips.Image.new_from_file(str(src)).autorot().numpy()
        assert np.abs(out.astype(int) - upright).mean() < 1


def test_a_quiet_run_says_nothing_while_another_holds_the_dashboard_port(photos, tmp_path):
    """Two runs at once on one machine: the second finds Dask's dashboard port (8787) taken.
    The embedded scheduler's HTTP server takes a free loopback port, without a warning."""
    import socket
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 8787))
        held.listen()
    except OSError:
        pass                     # something else holds it already: the case to test
    try:
        r = gd("run", photos["chelsea_jpg"], "-o", tmp_path / "out.jpg", "--set", "mode=identity",
               "--quiet")
    finally:
        held.close()
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_ingest_then_run_on_its_store_equals_a_plain_run(photos, tmp_path):
    """``gigadream ingest`` (its default config: 4 octaves) then ``gigadream run --store`` with
    a small dream config: the run reuses the ingested source and pyramid, and its result is
    a plain run's, pixel for pixel."""
    import json
    src = photos["chelsea_jpg"]
    small = [a for s in ("mode=dream", "dream.layers=[relu2_2]", "dream.octaves=2",
                         "dream.passes=1", "dream.iterations=1", "dream.calibration_tiles=2",
                         "tiling.tile=128", "engine.workers=1", "export.tiff_compression=none")
             for a in ("--set", s)]
    r = gd("run", src, "-o", tmp_path / "plain.tif", "--quiet", *small)
    assert r.returncode == 0, r.stderr
    r = gd("ingest", src, tmp_path / "store", "--quiet")
    assert r.returncode == 0, r.stderr
    r = gd("run", src, "-o", tmp_path / "stored.tif", "--store", tmp_path / "store", "--quiet",
           "--events", tmp_path / "events.jsonl", *small)
    assert r.returncode == 0, r.stderr
    events = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    stages = [e["name"] for e in events if e["event"] == "Stage"]
    assert "ingest" not in stages and stages.count("pass") == 2, stages
    plain = read(tmp_path / "plain.tif")
    assert np.abs(plain.astype(int) - read(src)).mean() > 2       # it dreamed
    np.testing.assert_array_equal(read(tmp_path / "stored.tif"), plain)
