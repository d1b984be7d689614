"""Backbones: the bundled weights classify real photos; the torchvision loaders take files with
torchvision's real key names and shapes (written out here from torchvision's layer tables, not
from our modules) and refuse anything else with one line."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gigadream import archs
from gigadream.config import load_config
from gigadream.errors import ConfigError, ModelError
from gigadream.models import get_model


def classify(name: str, img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float()[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return get_model(name)(x, {"logits"})["logits"][0].softmax(0)


def test_efficientnet_lite0_recognises_real_photos():
    import skimage.data
    cat, coffee = classify("efficientnet_lite0", skimage.data.chelsea()), classify(
        "efficientnet_lite0", skimage.data.coffee())
    assert int(cat.argmax()) == 285 and float(cat.max()) > 0.5        # Egyptian cat
    assert int(coffee.argmax()) == 967                                  # espresso


def test_every_listed_layer_comes_out_with_its_channels_and_stride():
    x = torch.rand(1, 3, 128, 160) * 255
    for name in archs.BUNDLED:
        layers = archs.layer_names(name)
        with torch.no_grad():
            acts = get_model(name)(x, set(layers))
        assert set(acts) == set(layers)
        for o in archs.ops(name):
            a = acts[o.name]
            assert a.shape[1] == o.channels, (name, o.name)
            if o.kind != "logits":
                s = archs.stride(name, o.name)
                assert a.shape[-2:] == (-(-128 // s), -(-160 // s)), (name, o.name, a.shape)


# ---- torchvision state dicts, spelt out from torchvision's model definitions ----

def torchvision_vgg19() -> dict:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M"]
    state, cin, i = {}, 3, 0
    for v in cfg:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3) * 0.05
        state[f"features.{i}.bias"] = torch.randn(v) * 0.05
        cin, i = v, i + 2                          # conv, ReLU
    for j, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        state[f"classifier.{j}.weight"] = torch.empty(o, n)
        state[f"classifier.{j}.bias"] = torch.zeros(o)
    return state


def _basic(prefix: str, cin: int, cout: int, k: int) -> dict:
    return {f"{prefix}.conv.weight": torch.randn(cout, cin, k, k) * 0.05,
            f"{prefix}.bn.weight": torch.ones(cout), f"{prefix}.bn.bias": torch.zeros(cout),
            f"{prefix}.bn.running_mean": torch.zeros(cout), f"{prefix}.bn.running_var": torch.ones(cout),
            f"{prefix}.bn.num_batches_tracked": torch.tensor(0)}


def torchvision_googlenet() -> dict:
    s = {**_basic("conv1", 3, 64, 7), **_basic("conv2", 64, 64, 1), **_basic("conv3", 64, 192, 3)}
    blocks = {"3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
              "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
              "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
              "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
              "5b": (832, 384, 192, 384, 48, 128, 128)}
    for b, (cin, c1, c3r, c3, c5r, c5, cp) in blocks.items():
        p = f"inception{b}"
        s |= _basic(f"{p}.branch1", cin, c1, 1)
        s |= _basic(f"{p}.branch2.0", cin, c3r, 1) | _basic(f"{p}.branch2.1", c3r, c3, 3)
        s |= _basic(f"{p}.branch3.0", cin, c5r, 1) | _basic(f"{p}.branch3.1", c5r, c5, 3)
        s |= _basic(f"{p}.branch4.1", cin, cp, 1)
    for aux, cin in (("aux1", 512), ("aux2", 528)):
        s |= _basic(f"{aux}.conv", cin, 128, 1)
        s |= {f"{aux}.fc1.weight": torch.empty(1024, 2048), f"{aux}.fc1.bias": torch.zeros(1024),
              f"{aux}.fc2.weight": torch.empty(1000, 1024), f"{aux}.fc2.bias": torch.zeros(1000)}
    return s | {"fc.weight": torch.randn(1000, 1024) * 0.01, "fc.bias": torch.zeros(1000)}


@pytest.fixture(scope="module")
def pth_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pth")
    files = {}
    for name, make in (("vgg19", torchvision_vgg19), ("googlenet", torchvision_googlenet)):
        state = make()
        torch.save(state, d / f"{name}.pth")
        files[name] = (d / f"{name}.pth", state)
    return files


def test_vgg19_loads_torchvision_keys_into_the_right_layers(pth_files):
    path, state = pth_files["vgg19"]
    net = get_model("vgg19", str(path))
    conv5_4 = net.features[archs.layer_names("vgg19").index("conv5_4")]
    assert torch.equal(conv5_4.weight, state["features.34.weight"])
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        acts = net(x, {"relu1_1", "relu4_2", "relu5_4"})
    assert acts["relu4_2"].shape == (1, 512, 8, 8) and acts["relu5_4"].shape == (1, 512, 4, 4)
    # torchvision's normalisation: (x / 255 - mean) / std, then conv1_1
    xn = (x / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = torch.relu(F.conv2d(xn, state["features.0.weight"], state["features.0.bias"], padding=1))
    assert torch.allclose(acts["relu1_1"], ref, atol=1e-4)


def test_googlenet_loads_torchvision_keys(pth_files):
    path, state = pth_files["googlenet"]
    net = get_model("googlenet", str(path))
    assert torch.equal(net.inception4c.branch3[1].conv.weight, state["inception4c.branch3.1.conv.weight"])
    with torch.no_grad():
        acts = net(torch.rand(1, 3, 224, 224) * 255, {"inception4c", "inception5b", "logits"})
    assert acts["inception4c"].shape == (1, 512, 14, 14)
    assert acts["inception5b"].shape == (1, 1024, 7, 7) and acts["logits"].shape == (1, 1000)


def _save(tmp_path, state, name="w.pth"):
    torch.save(state, tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("model", ["vgg19", "googlenet"])
def test_loaders_refuse_wrong_files_in_one_line(tmp_path, pth_files, model):
    _, good = pth_files[model]
    other = "googlenet" if model == "vgg19" else "vgg19"
    missing = {k: v for k, v in good.items() if not k.endswith(".bias")}
    shaped = dict(good)
    key = next(k for k in good if k.endswith("weight") and good[k].ndim == 4)
    shaped[key] = torch.zeros(3, 3, 3, 3)
    extra = dict(good, **{"head.weight": torch.zeros(2)})
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    cases = [(_save(tmp_path, missing, "m.pth"), r"keys missing \(first: .*bias\)"),
             (_save(tmp_path, shaped, "s.pth"), rf"{key} has shape \(3, 3, 3, 3\), expected"),
             (_save(tmp_path, extra, "e.pth"), r"1 unexpected keys \(first: head.weight\)"),
             (pth_files[other][0], r"keys missing|unexpected keys|has shape"),
             (str(text), r"is not a PyTorch weights file"),
             (_save(tmp_path, [1, 2], "l.pth"), r"holds a list, not a state dict")]
    for path, message in cases:
        get_model.cache_clear()
        with pytest.raises(ModelError, match=message) as e:
            get_model(model, path)
        msg = str(e.value)
        assert "\n" not in msg and f"{model}" in msg and ".pth" in msg, msg


def test_models_without_bundled_weights_need_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"model.weights: vgg19 has no bundled weights; download "
                                          r"torchvision's vgg19 .pth"):
        load_config(None, ["model.name=vgg19"])
    with pytest.raises(ConfigError, match=r"model.weights: file .*nope.pth not found"):
        load_config(None, ["model.name=googlenet", f"model.weights={tmp_path / 'nope.pth'}"])


def test_layers_verb_lists_every_layer_with_its_receptive_field():
    r = subprocess.run([sys.executable, "-m", "gigadream", "layers", "googlenet"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines() if not ln.startswith("#")}
    assert list(rows) == archs.layer_names("googlenet")
    assert rows["inception4c"][1:] == ["block", "512", "16", "85"]
    assert "whole" in rows["logits"]
    r = subprocess.run([sys.executable, "-m", "gigadream", "layers", "resnet"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'resnet'" in r.stderr


def test_the_model_device_is_the_cpu_here_and_a_missing_gpu_is_one_line(monkeypatch):
    import torch

    from gigadream import devices
    from gigadream.errors import ModelError
    monkeypatch.setattr(devices, "_device", None)
    assert devices.device().split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    devices.use_device("cpu")
    assert devices.device() == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="device cuda:1 asked for, but torch sees no CUDA"):
            devices.use_device("cuda:1")
        assert devices.device() == "cpu"
