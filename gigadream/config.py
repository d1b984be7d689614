"""YAML → frozen, validated dataclasses, one per stage, nested in ``Config``.

Every field carries its parser in its metadata; a parser says what it expected and what it
got. ``load_config`` merges a YAML file and ``--set key=value`` overrides over the defaults;
an unknown key is refused with the nearest valid one. This module knows no mode: what a mode
decides from the settings, and checks, lives in ``modes`` (``modes.load_config``).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import archs
from .errors import ConfigError
from .storage.location import is_url

Parser = Callable[[str, Any], Any]


def _type_name(v: Any) -> str:
    return type(v).__name__


def parse_int(lo: int | None = None, hi: int | None = None, auto: bool = False) -> Parser:
    def parse(key: str, v: Any) -> Any:
        if auto and v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            want = "an integer" + (" or 'auto'" if auto else "")
            raise ConfigError(f"{key}: expected {want}, got {v!r} ({_type_name(v)})")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            raise ConfigError(f"{key}: expected an integer {rng}, got {v}")
        return v
    return parse


def parse_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Parser:
    def parse(key: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {v!r} ({_type_name(v)})")
        v = float(v)
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        if bad_lo or (hi is not None and v > hi):
            lo_s = f"above {lo}" if lo_open else f"at least {lo}"
            rng = f"{lo_s} and at most {hi}" if hi is not None else lo_s
            raise ConfigError(f"{key}: expected a number {rng}, got {v:g}")
        return v
    return parse


def parse_choice(*choices: str | int) -> Parser:
    def parse(key: str, v: Any) -> Any:
        if not any(type(v) is type(c) and v == c for c in choices):   # 16.0, True: refused
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}; got {v!r}")
        return v
    parse.choices = choices         # for forms built from the schema (the studio's page)
    return parse


def parse_gpus(key: str, v: Any) -> str | tuple[int, ...]:
    """``engine.gpus``: auto, or the GPUs' numbers (0,2 or [0, 2]), each once."""
    if v == "auto":
        return v
    items = v.split(",") if isinstance(v, str) else v if isinstance(v, (list, tuple)) else [v]
    out = []
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not (text.isascii() and text.isdigit()):
            raise ConfigError(f"{key}: expected auto or GPU numbers such as 0,2; got {v!r}")
        out.append(int(text))
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"{key}: expected auto or distinct GPU numbers such as 0,2; got {v!r}")
    return tuple(out)


def parse_text(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: expected a non-empty string, got {v!r} ({_type_name(v)})")
    return v


def parse_optional_str(key: str, v: Any) -> Any:
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string or null, got {v!r} ({_type_name(v)})")
    return v


def parse_layers(key: str, v: Any) -> tuple[tuple[str, float], ...] | str:
    """``auto`` (the model's classic layers), ``[relu4_3, relu3_3]`` (weight 1 each) or
    ``{relu4_3: 1.0, relu3_3: 0.5}``; ``layer:N`` names channel N of a layer."""
    if v == "auto":
        return v
    if isinstance(v, str):
        v = [v]
    if isinstance(v, (list, tuple)):
        v = {name: 1.0 for name in v} if all(isinstance(n, str) for n in v) else dict(v)
    if not isinstance(v, dict) or not v:
        raise ConfigError(f"{key}: expected auto, a non-empty list of layer names or a mapping "
                          f"layer: weight, got {v!r}")
    out = []
    for name, weight in v.items():
        if not isinstance(name, str):
            raise ConfigError(f"{key}: layer names are strings, got {name!r}")
        out.append((name, parse_float()(f"{key}.{name}", weight)))
    return tuple(out)


def parse_fraction_or_null(key: str, v: Any) -> float | None:
    """null (off) or a number from 0 to 1 (``dream.literal``)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ConfigError(f"{key}: expected null (off) or a number from 0 to 1, got {v!r}")
    return float(v)


def parse_classes(key: str, v: Any) -> tuple[int | str, ...]:
    """ImageNet classes by index (0-999) or name; checked against the names in ``classes``."""
    from . import classes
    if v is None:
        return ()
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of ImageNet class names or indices, got {v!r}")
    for c in v:
        classes.resolve(key, c)          # raises ConfigError naming the nearest class
    return tuple(v)


def parse_nonzero_float(key: str, v: Any) -> float:
    v = parse_float()(key, v)
    if v == 0:
        raise ConfigError(f"{key}: expected a non-zero number (negative subtracts), got 0")
    return v


def parse_paths(key: str, v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) and p for p in v):
        raise ConfigError(f"{key}: expected an image path or a list of paths, got {v!r}")
    return tuple(v)


def parse_weights_list(key: str, v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: expected a list of numbers, one per style image, got {v!r}")
    out = tuple(parse_float(0.0)(f"{key}[{i}]", w) for i, w in enumerate(v))
    if sum(out) <= 0:
        raise ConfigError(f"{key}: the weights must not all be 0")
    return out


def parse_bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r} ({_type_name(v)})")
    return v


def parse_far(key: str, v: Any) -> int:
    """0 (off) or a shrink factor from 2 (the smallest view that is not the image itself) to
    256 (a 25000 px panorama's far view under 100 px wide, each tile reading 384 px more)."""
    v = parse_int(0, 256)(key, v)
    if v == 1:
        raise ConfigError(f"{key}: expected 0 (off) or a shrink factor from 2 to 256, got 1 "
                          "(the image itself: nothing would change)")
    return v


def _field(default: Any, parse: Parser, help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class ModelConfig:
    name: str = _field("vgg16", parse_choice(*archs.MODELS), "backbone network")
    weights: str | None = _field(None, parse_optional_str,
                                 "weights file; null = the bundled ImageNet weights")
    precision: str = _field("auto", parse_choice("auto", "fp32", "bf16"),
                            "DeepDream's arithmetic: auto = bf16 for VGG models where the "
                            "hardware has it (CPUs with AMX or AVX512-BF16, CUDA GPUs since "
                            "Ampere), else fp32")


@dataclass(frozen=True)
class DreamConfig:
    layers: tuple[tuple[str, float], ...] | str = _field(
        "auto", parse_layers, "layers (or layer:channel) whose activations are amplified, with "
        "weights; auto = the model's classic layer, or none when classes are given")
    classes: tuple[int | str, ...] = _field(
        (), parse_classes, "ImageNet classes to dream of, by name or index (efficientnet_lite0, "
        "googlenet); 'gigadream classes' lists them")
    literal: float | None = _field(
        None, parse_fraction_or_null, "abstract (0: low layers, strokes and textures) to "
        "literal (1: deep layers, eyes and creature-like forms, more coarse passes): picks "
        "the layers on the model's ladder (vgg16, the EfficientNet-Lites); needs layers "
        "auto, no classes; null = off")
    dose: float = _field(1.0, parse_nonzero_float,
                         "strength and sign of the objective; negative subtracts the features")
    octaves: int = _field(4, parse_int(1, 12), "number of scales, coarsest first")
    octave_scale: float = _field(1.4, parse_float(1.0, 4.0, lo_open=True),
                                 "size ratio between neighbouring octaves")
    passes: int = _field(4, parse_int(1), "randomly offset tile grids per octave (the finest's, "
                         "with coarse_passes)")
    coarse_passes: int | str = _field(
        "auto", parse_int(1, auto=True), "passes at the coarsest octave, the octaves between "
        "stepping geometrically to passes; more grows larger forms; auto = passes, or with "
        "literal t: passes × (1 + 5t)")
    iterations: int = _field(1, parse_int(1),
                             "gradient steps per tile per pass; 1 = seamless (each step is the "
                             "whole-image step), more saves I/O but tiles drift apart at edges")
    step_size: float = _field(1.5, parse_float(0.0, lo_open=True),
                              "step in 0-255 pixel units, for a gradient of average size")
    jitter: int = _field(32, parse_int(0), "max random shift (px) of the tile before each step")
    smooth: float = _field(0.0, parse_float(0.0, 8.0),
                           "blur (Gaussian sigma, px) of each step: fewer pixel-sized dots")
    decorrelate: bool = _field(False, parse_bool, "steps in ImageNet's decorrelated colours: "
                               "fewer green and magenta fringes")
    edge_guard: float = _field(0.0, parse_float(0.0),
                               "hold the dream off the photo's strong edges (levels per px "
                               "where a step is halved; 0 = off): no halos along contours")
    calibration_tiles: int = _field(16, parse_int(1),
                                    "tiles sampled per octave for the shared gradient scale")

    def __post_init__(self) -> None:
        if self.literal is not None and (self.layers != "auto" or self.classes):
            chosen = "dream.classes" if self.classes else "dream.layers"
            raise ConfigError(f"dream.literal: {self.literal:g} picks the layers itself, but "
                              f"{chosen} is set too; set dream.layers=auto and "
                              "dream.classes=[], or dream.literal=null to keep them")


@dataclass(frozen=True)
class StyleConfig:
    """Gatys et al. style transfer with jcjohnson/neural-style's options; the losses are
    scale-free (``style.py``), so their weights differ from neural-style's."""

    SHORTHAND = "images"     # ``style: painting.jpg`` means ``style.images: [painting.jpg]``

    images: tuple[str, ...] = _field((), parse_paths, "style image(s); --set style=PATH")
    blend_weights: tuple[float, ...] | None = _field(
        None, parse_weights_list, "weight of each style image; null = equal")
    content_weight: float = _field(1.0, parse_float(0.0),
                                   "weight of the content loss (error relative to the features' energy)")
    style_weight: float = _field(1.0, parse_float(0.0),
                                 "weight of the style loss (each layer's Gram error relative to the style's)")
    tv_weight: float = _field(1.0, parse_float(0.0),
                              "total-variation smoothing (mean squared neighbour step, 0-1 range)")
    content_layers: tuple[tuple[str, float], ...] | str = _field(
        "auto", parse_layers, "content layers; auto = relu4_2 (VGG)")
    style_layers: tuple[tuple[str, float], ...] | str = _field(
        "auto", parse_layers, "style layers; auto = relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (VGG)")
    style_scale: float = _field(1.0, parse_float(0.0, lo_open=True),
                                "style image size relative to the content at each octave "
                                "(never above the style image's own size, nor 1024 px)")
    init: str = _field("image", parse_choice("image", "random"),
                       "start the coarsest octave from the content image or from noise")
    optimizer: str = _field("adam", parse_choice("adam", "lbfgs"), "optimiser of each tile")
    learning_rate: float = _field(5.0, parse_float(0.0, lo_open=True),
                                  "Adam's step size, in pixel levels (0-255)")
    normalize_gradients: bool = _field(False, parse_bool,
                                       "divide each loss's gradient by its L1 norm (per tile)")
    pooling: str = _field("max", parse_choice("max", "avg"), "VGG pooling: max or avg")
    original_colors: bool = _field(False, parse_bool,
                                   "keep the content's colours: transfer luminance only")
    whole_size: int = _field(512, parse_int(16, 4096),
                             "the coarsest octave, at most this long side, is stylised whole")
    whole_iterations: int = _field(300, parse_int(1), "optimiser steps on the coarsest octave")
    octave_scale: float = _field(2.0, parse_float(1.0, 4.0, lo_open=True),
                                 "size ratio between octaves")
    passes: int = _field(8, parse_int(1), "randomly offset tile grids per finer octave")
    iterations: int = _field(5, parse_int(1), "optimiser steps per tile per pass: a few keep "
                             "tile edges invisible (each tile moves against its neighbours' "
                             "pixels as the pass began)")


@dataclass(frozen=True)
class KeepFarConfig:
    """Keep the far view (``modes.far``), in dream and style."""

    SHORTHAND = "factor"     # ``keep_far: 16`` means ``keep_far.factor: 16``

    factor: int = _field(0, parse_far,
                         "the result shrunk this many times stays the input shrunk as much, "
                         "the detail up close stays wild (every pass's change loses its low "
                         "frequencies); 0 = off; --set keep_far=16")


@dataclass(frozen=True)
class TilingConfig:
    tile: int = _field(512, parse_int(16, 8192), "tile side in pixels (= canvas chunk side)")
    margin: int | str = _field("auto", parse_int(0, auto=True),
                               "context read around each tile; auto = from the layers' receptive field")
    wrap: str = _field("auto", parse_choice("auto", "x", "none"),
                       "x: the left and right edges meet (a 360° panorama): tiles, context, "
                       "jitter and resampling reach across them; none: they do not; auto = "
                       "x where the input's XMP says GPano:ProjectionType equirectangular "
                       "and it is 2:1 wide")


@dataclass(frozen=True)
class EngineConfig:
    workers: int | str = _field("auto", parse_int(1, auto=True),
                                "worker processes; auto = one per GPU, else one")
    threads: int | str = _field("auto", parse_int(1, auto=True),
                                "torch threads per worker; auto = cores / workers, or on "
                                "a --scheduler cluster each worker's own Dask threads")
    scheduler: str | None = _field(None, parse_optional_str,
                                   "address of an existing Dask scheduler; null = start one here")
    gpus: str | tuple[int, ...] = _field("auto", parse_gpus,
                                         "GPUs the workers started here run on, one each "
                                         "(--gpus 0,2; torch's numbers); auto = every GPU "
                                         "this machine has. A --scheduler cluster's workers "
                                         "each run on the one GPU they see")
    batch: int | str = _field("auto", parse_int(1, 64, auto=True),
                              "tiles of one shape that a worker runs through its model at once "
                              "(DeepDream; style with adam); auto = 4 on GPU workers (fewer for "
                              "windows above 602 px), 1 on CPUs (no faster there). A batch that "
                              "runs out of GPU memory is retried in halves")


@dataclass(frozen=True)
class ExportConfig:
    """How the result is written; the output's name (-o) picks the format: .jpg, .tif
    (BigTIFF), .dzi or .szi (deep zoom), or a folder (``layout: iiif3``)."""

    quality: int = _field(92, parse_int(1, 100),
                          "JPEG quality (also deep-zoom tiles, and TIFF with jpeg compression)")
    tiff_compression: str = _field("deflate", parse_choice("deflate", "jpeg", "lzw", "none"),
                                   "compression of BigTIFF output")
    bits: int = _field(8, parse_choice(8, 16),
                       "bits a channel: 8, or 16 for print (TIFF only: the float canvas "
                       "scaled to 0-65535, never rounded to 8 bits on the way)")
    layout: str = _field("dz", parse_choice("dz", "iiif3"),
                         "deep zoom: dz (-o NAME.dzi writes NAME.dzi and its tiles in "
                         "NAME_files/; -o NAME.szi, the same in one zip) or iiif3 (-o NAME "
                         "writes the folder NAME/: info.json and tiles, IIIF Image API 3 level 0)")
    iiif_id: str = _field(".", parse_text,
                          "iiif3: the URL of OUT's parent folder as served (info.json's id "
                          "is ID/NAME); '.' = relative, for a page in that folder")

    def __post_init__(self) -> None:
        if self.bits == 16 and self.tiff_compression == "jpeg":
            raise ConfigError("export.bits: 16 cannot be stored with export.tiff_compression "
                              "jpeg (8 bits a channel only); use deflate, lzw or none")


def parse_frames(key: str, v: Any) -> str:
    """``all`` or ``A-B``: frames A to B of the input, counted from 1, both included
    (``A-`` runs to the end)."""
    if v == "all":
        return v
    text = str(v)
    first, sep, last = text.partition("-")
    try:
        a, b = int(first), int(last) if last else None
    except ValueError:
        a = b = -1
    if not sep or a < 1 or (b is not None and b < a):
        raise ConfigError(f"{key}: expected all or FIRST-LAST counted from 1 (e.g. 10-50, "
                          f"or 10- to the end), got {v!r}")
    return text


@dataclass(frozen=True)
class SequenceConfig:
    """Videos and frame sequences (``gigadream run clip.mp4``): each frame after the first
    starts from the previous result carried along the optical flow (Ruder et al. 2016)."""

    frames: str = _field("all", parse_frames,
                         "frames to run: all, or FIRST-LAST counted from 1 (10-50; 10- to the end)")
    stride: int = _field(1, parse_int(1), "run every n-th frame of that range (a quick look)")
    temporal_weight: float = _field(
        200.0, parse_float(0.0),
        "style: weight of the temporal loss that keeps each frame near the previous result "
        "carried along the flow, where the flow is reliable (mean squared step, 0-1 range)")
    blend: float = _field(0.85, parse_float(0.0, 1.0),
                          "dream: the previous dream's share of where the next frame's "
                          "dream starts, where the flow is reliable (the rest is the new "
                          "frame, and its steps are scaled so the dream stays as strong "
                          "as a still's); higher flickers less and follows the scene's "
                          "changes more slowly; 0 = every frame alone")
    passes: int | str = _field(
        "auto", parse_int(1, auto=True),
        "passes per octave of each frame after the first (its start already holds the "
        "previous result); auto = a quarter of the mode's, at least 1 (style: only the "
        "finest octave is run again)")
    iterations: int | str = _field(
        "auto", parse_int(1, auto=True),
        "steps per tile of those passes; auto = the mode's (style, where the frame is "
        "stylised whole: a fifth of style.whole_iterations)")
    flow: str = _field("medium", parse_choice("ultrafast", "fast", "medium"),
                       "OpenCV DIS optical-flow preset between neighbouring input frames")
    flow_pixels: int = _field(4_000_000, parse_int(10_000),
                              "the flow is computed on frames shrunk to at most this many "
                              "pixels (its memory is ~70 bytes a pixel) and scaled up")
    codec: str = _field("auto", parse_text,
                        "video encoder: auto = libx264 for .mp4, libvpx-vp9 for .webm; "
                        "or libx265, libsvtav1 where FFmpeg has them")
    quality: int | str = _field("auto", parse_int(0, 63, auto=True),
                                "the encoder's constant-quality value (crf; lower is "
                                "better); auto = 20 for H.264, 24 for H.265, 32 for VP9, "
                                "35 for AV1")
    rate: float = _field(24.0, parse_float(0.0, lo_open=True),
                         "frames a second of a video made from a folder of images (a "
                         "video input keeps its own rate and timestamps)")


@dataclass(frozen=True)
class Config:
    mode: str = _field("dream", parse_choice("dream", "style", "identity"),
                       "dream, style, or identity (copies the image: for tests and benchmarks)")
    seed: int = _field(0, parse_int(0), "seed of every random choice; same seed, same result")
    model: ModelConfig = field(default_factory=ModelConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    keep_far: KeepFarConfig = field(default_factory=KeepFarConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)

    def __post_init__(self) -> None:
        m = self.model
        if m.weights is None and m.name not in archs.BUNDLED:
            raise ConfigError(f"model.weights: {m.name} has no bundled weights; download "
                              f"torchvision's {m.name} .pth and set model.weights=PATH "
                              f"(bundled: {', '.join(archs.BUNDLED)})")
        if m.weights is not None and not Path(m.weights).is_file():
            raise ConfigError(f"model.weights: file {m.weights} not found")
        if self.dream.literal is not None and m.name not in archs.LITERAL_LADDER:
            raise ConfigError(f"dream.literal: {m.name} has no ladder of layers from abstract "
                              f"to literal (the models with one: "
                              f"{', '.join(archs.LITERAL_LADDER)}); set model.name to one of "
                              "them, or dream.literal=null")

    def resolved(self, base: Path) -> Config:
        """This config with its file paths (style images, model weights) absolute, relative
        ones taken from ``base``: the workers of a ``--scheduler`` cluster open them too, on
        other machines and from working folders of their own. URLs (``s3://…``) stay."""
        def absolute(p: str) -> str:
            return p if is_url(p) else str(Path(base).absolute() / p)
        s, m = self.style, self.model
        return dataclasses.replace(
            self, style=dataclasses.replace(s, images=tuple(map(absolute, s.images))),
            model=dataclasses.replace(m, weights=m.weights and absolute(m.weights)))

    @property
    def wraps(self) -> bool:
        """x is circular (``tiling.wrap``; ``auto`` counts as none until a run resolves it
        from its input: ``pipeline.with_wrap``)."""
        return self.tiling.wrap == "x"


# Keys that moved, with where to: an old config is refused with the new spelling.
MOVED = {"dream.keep_far": "the top-level section 'keep_far' (keep_far: 16)"}


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)


def _build(cls: type, values: dict, prefix: str) -> Any:
    shorthand = getattr(cls, "SHORTHAND", None)
    if shorthand and not isinstance(values, dict):
        values = {shorthand: values}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, "
                          f"got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if f"{prefix}{key}" in MOVED:
            raise ConfigError(f"unknown key '{prefix}{key}': it moved to "
                              f"{MOVED[prefix + key]}")
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint} "
                              f"(valid: {', '.join(prefix + k for k in fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            continue
        if _is_section(f):
            kwargs[name] = _build(f.default_factory, values[name], f"{prefix}{name}.")
        else:
            kwargs[name] = f.metadata["parse"](f"{prefix}{name}", values[name])
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        near = difflib.get_close_matches(Path(path).stem, list(presets()), n=1)
        hint = f"did you mean the preset '{near[0]}'? " if near else ""
        raise ConfigError(f"config file {path} not found; {hint}'gigadream presets' lists "
                          "the bundled ones")
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e.__class__.__name__}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: "
                          f"{getattr(e, 'problem', None) or e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top, "
                          f"got {_type_name(data)}")
    return data


def _apply_override(data: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. dream.iterations=5")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    node = data
    *parents, leaf = key.strip().split(".")
    for i, p in enumerate(parents):
        node = _section_values(node, parents[:i + 1])
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{p}' is not a section")
    shorthand = getattr(_section_class(parents + [leaf]), "SHORTHAND", None)
    if shorthand and not isinstance(value, dict):
        # ``--set style=a.jpg`` sets style.images and keeps the preset's other style keys
        node, leaf = _section_values(node, parents + [leaf]), shorthand
    node[leaf] = value


def _section_values(parent: dict, path: list[str]) -> Any:
    """The values of the section at ``path`` in ``parent`` (the enclosing section's): a new
    mapping where there are none, a mapping where they are a shorthand's value
    (``keep_far: 16`` becomes ``{factor: 16}``), so that an override keeps the others."""
    name = path[-1]
    shorthand = getattr(_section_class(path), "SHORTHAND", None)
    if name not in parent:
        parent[name] = {}
    elif shorthand and not isinstance(parent[name], dict):
        parent[name] = {shorthand: parent[name]}
    return parent[name]


def _section_class(path: list[str]) -> type | None:
    cls: Any = Config
    for name in path:
        f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
        if f is None or not _is_section(f):
            return None
        cls = f.default_factory
    return cls


def resolve_preset(name: str) -> Path:
    """A path as given, else a bundled preset by name (``impressionist``)."""
    p = Path(name)
    if p.exists() or p.suffix:
        return p
    bundled = presets_dir() / f"{name}.yaml"
    return bundled if bundled.exists() else p


def output_label(config: str | Path | None, cfg: Config) -> str:
    """What a result is named after beside its input (``pano-impressionist.jpg``): the
    preset's or the config file's name, else the mode; so a second preset on the same photo
    gets a name of its own."""
    return Path(str(config)).stem if config else cfg.mode


def presets_dir() -> Path:
    """The bundled presets: ``gigadream/configs/``, package data that wheels ship (the
    source tree's top-level ``configs`` links to it)."""
    return Path(__file__).resolve().parent / "configs"


def presets() -> dict[str, Path]:
    """The bundled presets by name, in their files' order: ``gigadream presets`` and the
    studio's list."""
    return {p.stem: p for p in sorted(presets_dir().glob("*.yaml"))}


def preset_values(name: str) -> dict:
    """A preset's (or config file's) own YAML mapping, unchecked: what a form shows before a
    style preset has its style image. A section given by its shorthand's value is spelled out
    (``keep_far: 16`` as ``{factor: 16}``), so each value sits under its own key."""
    data = _read_yaml(resolve_preset(name))
    for key in list(data):
        if isinstance(key, str) and _section_class([key]) is not None:
            _section_values(data, [key])
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data = _read_yaml(resolve_preset(str(path))) if path is not None else {}
    for o in overrides:
        _apply_override(data, o)
    return _build(Config, data, "")


def _plain(v: Any) -> Any:
    """Layer tuples as {layer: weight}, other tuples as lists: what YAML reads back."""
    if isinstance(v, tuple) and v and all(isinstance(e, tuple) and len(e) == 2 for e in v):
        return {n: w for n, w in v}
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return {k: _plain(e) for k, e in v.items()}
    return v


def setting_keys(values: dict) -> dict:
    """A config-shaped mapping keyed as settings are named (``dream.step_size``): each
    section's keys one level down; any other value, a layer weight table included, whole."""
    sections = {f.name for f in dataclasses.fields(Config) if _is_section(f)}
    out = {}
    for k, v in values.items():
        if k in sections and isinstance(v, dict):
            out |= {f"{k}.{kk}": vv for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def to_dict(cfg: Config) -> dict:
    return _plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_choices(key: str) -> tuple | None:
    """The values a setting may take, where it is a choice (``parse_choice``), else None."""
    cls: Any = Config
    *sections, leaf = key.split(".")
    for name in sections:
        cls = {f.name: f for f in dataclasses.fields(cls)}[name].default_factory
    f = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    return getattr(f.metadata["parse"], "choices", None)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting: the reference table in ``--help``."""
    rows = []
    for f in dataclasses.fields(cls):
        if _is_section(f):
            rows += field_help(f.default_factory, f"{prefix}{f.name}.")
        else:
            default = _plain(f.default)
            rows.append((prefix + f.name, default, f.metadata["help"]))
    return rows
