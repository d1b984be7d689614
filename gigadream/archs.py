"""Architectures as data: layer names and receptive fields, without importing torch.

The CLI and the config validate layer names from here, so neither pays for importing torch;
only worker processes, which run the models, do.
"""
from __future__ import annotations

# VGG16 (Simonyan & Zisserman 2014, configuration D): (block, convs, channels).
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def _vgg16_ops() -> list[tuple[str, str]]:
    """(name, kind) in forward order; kind is conv (3×3, pad 1), relu or pool (2×2, stride 2)."""
    ops = []
    for block, convs, _ in VGG16_BLOCKS:
        for i in range(1, convs + 1):
            ops += [(f"conv{block}_{i}", "conv"), (f"relu{block}_{i}", "relu")]
        if block < 5:
            ops.append((f"pool{block}", "pool"))
    return ops


MODELS = {"vgg16": _vgg16_ops()}


def layer_names(model: str) -> list[str]:
    return [name for name, _ in MODELS[model]]


def receptive_radius(model: str, layer: str) -> int:
    """Pixels on each side of an input pixel that reach a unit of ``layer``: (RF − 1) / 2."""
    rf, jump = 1, 1
    for name, kind in MODELS[model]:
        if kind == "conv":
            rf += 2 * jump
        elif kind == "pool":
            rf += jump
            jump *= 2
        if name == layer:
            return (rf - 1) // 2
    raise KeyError(layer)
