"""What the model-running modes share: checking a layer name, resolving a worker's device and
precision, and sizing a GPU batch."""
from __future__ import annotations

import difflib

from .. import archs
from ..errors import ConfigError

# Tiles a GPU worker runs through its model at once (engine.batch: auto), for windows of the
# default tile (512 px and its margin); as many fewer as larger windows have more pixels, so
# that a batch's activations stay those of four default windows (VGG16 to relu4_3 keeps
# 0.64 GB of them in bf16 for a 602 px window's backward, as gigadream plan counts): a GPU is
# busy with one large window anyway. A CPU is no faster with more (profiling/engine.md, "2026-12-01, later").
GPU_BATCH = 4
GPU_BATCH_PIXELS = GPU_BATCH * 602 * 602


def gpu_batch(window: int) -> int:
    """Windows of ``window`` px a side in one GPU model step (engine.batch: auto)."""
    return max(1, min(GPU_BATCH, GPU_BATCH_PIXELS // (window * window)))


def worker_resolution(precision: str, model: str) -> tuple[str, str, int]:
    """(device kind, precision, torch threads) as a worker resolves them for itself. The
    threads count: a CPU's float sums differ with their split over threads."""
    import torch

    from ..models import device, dream_precision
    dev = device()
    return dev.split(":")[0], dream_precision(precision, model, dev), torch.get_num_threads()


def agreed(values: set):
    """The one value all workers resolved, or 'mixed'."""
    return values.pop() if len(values) == 1 else "mixed"


def check_layer(key: str, model: str, layer: str) -> None:
    """``layer`` (``name`` or ``name:channel``) names a layer of ``model``, or one line says
    which are there."""
    name, _, channel = layer.partition(":")
    names = archs.layer_names(model)
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"{key}: {name!r} is not a layer of {model}; "
                          f"{hint}'gigadream layers {model}' lists them")
    if channel:
        n = archs.op(model, name).channels
        if not channel.isdigit() or int(channel) >= n:
            raise ConfigError(f"{key}: {layer!r}: {name} has channels 0 to {n - 1}, "
                              f"got {channel!r}")
