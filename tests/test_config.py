import subprocess
import sys

import pytest
import yaml

from conftest import assert_config_error
from gigadream import archs, config
from gigadream.config import Config, presets_dir, to_yaml
from gigadream.errors import ConfigError
from gigadream.modes import load_config, mode_for
from gigadream.modes.dream import dream_layers


def margin(overrides: list[str]) -> int:
    return mode_for(load_config(None, overrides)).window_margin


def test_defaults_are_valid_and_margin_follows_the_deepest_layer():
    cfg = Config()
    assert cfg.mode == "dream" and mode_for(cfg).window_margin == 45   # relu4_3's receptive radius
    assert margin(["dream.layers=[relu3_3]"]) == 19
    assert margin(["mode=identity"]) == 0
    assert margin(["tiling.margin=7"]) == 7
    # no margin: no room for the jitter (refused with it, BAD below), nor needed without it
    assert margin(["tiling.margin=0", "dream.jitter=0"]) == 0
    assert margin(["tiling.margin=0", "mode=identity"]) == 0


def test_config_parses_alone_and_the_mode_checks_what_it_decides():
    """``config`` imports no mode; its ``load_config`` parses, ``modes.load_config`` also
    asks the mode (here: the jitter has no room in a margin of 0)."""
    code = ("import sys, gigadream.config; "
            "print(sorted(m for m in sys.modules if m.startswith('gigadream.modes')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    assert config.load_config(None, ["tiling.margin=0"]).tiling.margin == 0
    with pytest.raises(ConfigError, match="no room"):
        load_config(None, ["tiling.margin=0"])


def test_keep_far_is_a_section_with_a_shorthand(tmp_path):
    """``keep_far: 16`` and ``--set keep_far=16`` set ``keep_far.factor``; an override of a
    preset's shorthand replaces its value; a preset's values read unchecked spell it out."""
    assert load_config(None, ["keep_far=16"]).keep_far.factor == 16
    assert load_config(None, ["keep_far.factor=8"]).keep_far.factor == 8
    f = tmp_path / "far.yaml"
    f.write_text("keep_far: 12\n")
    assert load_config(f).keep_far.factor == 12
    assert load_config("impressionist").keep_far.factor == 16
    assert load_config("impressionist", ["keep_far=0"]).keep_far.factor == 0
    assert load_config("impressionist", ["keep_far.factor=4"]).keep_far.factor == 4
    assert Config().keep_far.factor == 0
    # a form's rows (the studio's) find it under its own key
    assert config.preset_values("impressionist")["keep_far"] == {"factor": 16}


def test_the_old_keep_far_key_says_where_it_moved(tmp_path):
    moved = (r"^unknown key 'dream.keep_far': it moved to the top-level section 'keep_far' "
             r"\(keep_far: 16\)$")
    assert_config_error(["dream.keep_far=16"], moved)
    f = tmp_path / "old.yaml"
    f.write_text("dream:\n  keep_far: 16\n")
    with pytest.raises(ConfigError, match=moved):
        load_config(f)


@pytest.mark.parametrize("preset", sorted(p.stem for p in presets_dir().glob("*.yaml")))
def test_bundled_presets_load_and_round_trip(preset, tmp_path, photos):
    # style presets need only the painting: --set style=PATH
    style = yaml.safe_load((presets_dir() / f"{preset}.yaml").read_text())["mode"] == "style"
    cfg = load_config(preset, [f"style={photos['coffee_jpg']}"] if style else [])
    f = tmp_path / "resolved.yaml"
    f.write_text(to_yaml(cfg))
    assert load_config(f) == cfg


def test_presets_exist():
    assert {"impressionist", "dreamscape", "impressionist-style", "guided-dogs"} <= {
        p.stem for p in presets_dir().glob("*.yaml")}


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    cfg = load_config("impressionist", ["dream.iterations=7", "dream.layers={relu4_1: 2}", "seed=9"])
    assert cfg.dream.iterations == 7 and cfg.dream.layers == (("relu4_1", 2.0),) and cfg.seed == 9


def test_resolved_makes_relative_paths_absolute(tmp_path, photos, monkeypatch):
    """Relative style images and weights are taken from the base folder; absolute ones and
    the bundled weights (null) stay as they are; the result validates from any folder."""
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "a.jpg").write_bytes(photos["coffee_jpg"].read_bytes())
    (tmp_path / "vgg.h5").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["mode=style", f"style=[art/a.jpg, {photos['chelsea_jpg']}]",
                             "model.weights=./vgg.h5"])
    monkeypatch.chdir(photos["coffee_jpg"].parent)        # elsewhere: relative paths break
    out = cfg.resolved(tmp_path)
    assert out.style.images == (str(tmp_path / "art" / "a.jpg"), str(photos["chelsea_jpg"]))
    assert out.model.weights == str(tmp_path / "vgg.h5")
    assert out.style.iterations == cfg.style.iterations and out.seed == cfg.seed
    assert load_config(None, ["mode=identity"]).resolved(tmp_path).model.weights is None


def test_dream_literal_walks_the_models_ladder_and_grows_the_coarse_passes():
    """dream.literal t sits at p = t·5 on vgg16's ladder of six layers: one layer at an
    integer p, two by a tent between; the margin follows the layers it picks, and the
    coarsest octave's passes grow to passes · (1 + 5t), as the plan counts them."""
    assert archs.LITERAL_LADDER["vgg16"] == ["relu2_2", "relu3_3", "relu4_1", "relu4_3",
                                             "relu5_1", "relu5_3"]
    # each stage's last block, from the second stage on (archs.EFFICIENTNET_LITE)
    assert archs.LITERAL_LADDER["efficientnet_lite0"] == ["block2", "block4", "block7",
                                                          "block10", "block14", "block15"]
    assert archs.LITERAL_LADDER["efficientnet_lite1"] == ["block3", "block6", "block10",
                                                          "block14", "block19", "block20"]
    cases = {  # t: (layers, margin (each layer's receptive radius), passes coarsest first)
        0: ((("relu2_2", 1.0),), 6, [4, 4, 4, 4]),
        0.5: ((("relu4_1", 0.5), ("relu4_3", 0.5)), 45, [14, 9, 6, 4]),
        0.65: ((("relu4_3", 0.75), ("relu5_1", 0.25)), 65, [17, 10, 6, 4]),
        1: ((("relu5_3", 1.0),), 97, [24, 13, 7, 4]),
    }
    for t, (layers, window_margin, passes) in cases.items():
        mode = mode_for(load_config(None, [f"dream.literal={t}"]))
        assert dream_layers(mode.cfg) == layers, t
        assert mode.window_margin == window_margin, t
        assert [mode.octave_passes(k, 4) for k in (3, 2, 1, 0)] == passes, t
        plan = mode.plan((300, 400))
        assert [sum(p.octave == k for p in plan) for k in (3, 2, 1, 0)] == passes, t
    # off: the model's classic layer and as many passes at every octave
    off = mode_for(load_config(None, []))
    assert dream_layers(off.cfg) == (("relu4_3", 1.0),) and off.octave_passes(3, 4) == 4
    # an explicit coarse_passes stays the artist's; the Lites have a ladder of their own
    assert mode_for(load_config(None, ["dream.literal=1", "dream.coarse_passes=5"])
                    ).octave_passes(3, 4) == 5
    lite = load_config(None, ["model.name=efficientnet_lite0", "dream.literal=0.3"])
    assert dream_layers(lite) == (("block4", 0.5), ("block7", 0.5))


BAD = [
    (["dream.iterations=0"], r"dream.iterations: expected an integer of at least 1, got 0"),
    (["dream.iterations=-3"], r"dream.iterations: expected an integer of at least 1, got -3"),
    (["dream.iterations=many"], r"dream.iterations: expected an integer, got 'many' \(str\)"),
    (["dream.iterations=2.5"], r"dream.iterations: expected an integer, got 2.5 \(float\)"),
    (["dream.octaves=0"], r"dream.octaves: expected an integer from 1 to 12, got 0"),
    (["dream.octave_scale=1"], r"dream.octave_scale: expected a number above 1.0 and at most 4.0, got 1"),
    (["dream.step_size=0"], r"dream.step_size: expected a number above 0.0, got 0"),
    (["dream.step_size=true"], r"dream.step_size: expected a number, got True \(bool\)"),
    (["dream.jitter=-1"], r"dream.jitter: expected an integer of at least 0, got -1"),
    (["dream.layers=[conv9_9]"], r"dream.layers: 'conv9_9' is not a layer of vgg16"),
    (["dream.layers=[relu4_33]"], r"did you mean 'relu4_3'\?"),
    (["dream.layers=[]"], r"dream.layers: expected auto, a non-empty list"),
    (["dream.layers={relu4_3: big}"], r"dream.layers.relu4_3: expected a number, got 'big'"),
    (["tiling.tile=8"], r"tiling.tile: expected an integer from 16 to 8192, got 8"),
    (["tiling.margin=wide"], r"tiling.margin: expected an integer or 'auto', got 'wide'"),
    (["tiling.margin=0"], r"tiling.margin: 0 leaves dream.jitter \(32 px\) no room: its "
                          r"wrap-around seam would fall inside every tile; set "
                          r"tiling.margin=auto .*, or dream.jitter=0"),
    (["engine.workers=0"], r"engine.workers: expected an integer of at least 1, got 0"),
    (["export.quality=101"], r"export.quality: expected an integer from 1 to 100, got 101"),
    (["export.tiff_compression=zip"], r"expected one of deflate, jpeg, lzw, none; got 'zip'"),
    (["mode=paint"], r"mode: expected one of dream, style, identity; got 'paint'"),
    (["model.name=resnet"], r"model.name: expected one of vgg16, vgg19, googlenet, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2; got 'resnet'"),
    (["dream.iteratons=5"], r"unknown key 'dream.iteratons'; did you mean 'dream.iterations'\?"),
    (["colour=red"], r"unknown key 'colour'"),
    (["dream=5"], r"dream: expected a mapping of keys, got 5"),
    (["seed"], r"--set 'seed': expected key=value"),
    (["dream.literal=1.5"], r"^dream.literal: expected null \(off\) or a number from 0 to 1, "
                            r"got 1.5$"),
    (["dream.literal=high"], r"^dream.literal: expected null \(off\) or a number from 0 to "
                             r"1, got 'high'$"),
    (["dream.literal=0.5", "dream.layers=[relu3_3]"],
     r"^dream.literal: 0.5 picks the layers itself, but dream.layers is set too; set "
     r"dream.layers=auto and dream.classes=\[\], or dream.literal=null to keep them$"),
    (["dream.literal=0", "model.name=efficientnet_lite0", "dream.classes=[dog]"],
     r"^dream.literal: 0 picks the layers itself, but dream.classes is set too; set "
     r"dream.layers=auto and dream.classes=\[\], or dream.literal=null"),
    (["dream.literal=1", "model.name=vgg19", f"model.weights={__file__}"],
     r"^dream.literal: vgg19 has no ladder of layers from abstract to literal \(the models "
     r"with one: vgg16, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2\); set "
     r"model.name to one of them, or dream.literal=null$"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_values_and_unknown_keys_are_one_line_errors(overrides, message):
    assert_config_error(overrides, message)


@pytest.mark.parametrize("text,message", [
    ("dream: [unclosed", r"is not valid YAML at line 1"),
    ("- a\n- b\n", r"expected a mapping of keys at the top, got list"),
    ("dream:\n  passes: two\n", r"dream.passes: expected an integer, got 'two'"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file nowhere.yaml not found"):
        load_config("nowhere.yaml")


def test_cli_prints_one_line_and_exits_non_zero_without_traceback(photos, tmp_path):
    r = subprocess.run([sys.executable, "-m", "gigadream", "run", str(photos["chelsea_jpg"]),
                        "-o", str(tmp_path / "x.jpg"), "--set", "dream.iteratons=3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "gigadream: error: unknown key 'dream.iteratons'; did you mean 'dream.iterations'? "
        "(valid: dream.layers, dream.classes, dream.literal, dream.dose, dream.octaves, dream.octave_scale, dream.passes, dream.coarse_passes, "
        "dream.iterations, dream.step_size, dream.jitter, dream.smooth, dream.decorrelate, "
        "dream.edge_guard, dream.calibration_tiles)"]
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize("entry", ["run", "estimate", "preview"])
def test_a_config_built_without_the_checking_loader_is_checked_where_work_starts(
        entry, photos, tmp_path):
    """config.load_config only parses; run, plan's estimate and preview refuse what the mode
    cannot run with before any work, whoever built the config (scripts, the studio)."""
    from gigadream.estimate import estimate
    from gigadream.pipeline import run
    from gigadream.preview import preview
    cfg = config.load_config(None, ["dream.layers=relu9_9"])      # parsed, not checked
    calls = {"run": lambda: run(photos["chelsea_jpg"], cfg, tmp_path / "out.jpg"),
             "estimate": lambda: estimate(photos["chelsea_jpg"], cfg, calibrate=False),
             "preview": lambda: preview(photos["chelsea_jpg"], cfg, tmp_path / "preview", side=128)}
    with pytest.raises(ConfigError, match="'relu9_9' is not a layer of vgg16"):
        calls[entry]()
    assert list(tmp_path.iterdir()) == []
