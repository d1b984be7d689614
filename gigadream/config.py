"""YAML → frozen, validated dataclasses, one per stage, nested in ``Config``.

Every field carries its parser in its metadata; a parser says what it expected and what it
got. ``load_config`` merges a YAML file and ``--set key=value`` overrides over the defaults;
an unknown key is refused with the nearest valid one.
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


def parse_choice(*choices: str) -> Parser:
    def parse(key: str, v: Any) -> Any:
        if v not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}; got {v!r}")
        return v
    return parse


def parse_optional_str(key: str, v: Any) -> Any:
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string or null, got {v!r} ({_type_name(v)})")
    return v


def parse_layers(key: str, v: Any) -> tuple[tuple[str, float], ...]:
    """``[relu4_3, relu3_3]`` (weight 1 each) or ``{relu4_3: 1.0, relu3_3: 0.5}``."""
    if isinstance(v, str):
        v = [v]
    if isinstance(v, (list, tuple)):
        v = {name: 1.0 for name in v} if all(isinstance(n, str) for n in v) else dict(v)
    if not isinstance(v, dict) or not v:
        raise ConfigError(f"{key}: expected a non-empty list of layer names or a mapping "
                          f"layer: weight, got {v!r}")
    out = []
    for name, weight in v.items():
        if not isinstance(name, str):
            raise ConfigError(f"{key}: layer names are strings, got {name!r}")
        out.append((name, parse_float()(f"{key}.{name}", weight)))
    return tuple(out)


def _field(default: Any, parse: Parser, help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class ModelConfig:
    name: str = _field("vgg16", parse_choice(*archs.MODELS), "backbone network")
    weights: str | None = _field(None, parse_optional_str,
                                 "weights file; null = the bundled ImageNet weights")


@dataclass(frozen=True)
class DreamConfig:
    layers: tuple[tuple[str, float], ...] = _field(
        (("relu4_3", 1.0),), parse_layers, "layers whose activations are amplified, with weights")
    octaves: int = _field(4, parse_int(1, 12), "number of scales, coarsest first")
    octave_scale: float = _field(1.4, parse_float(1.0, 4.0, lo_open=True),
                                 "size ratio between neighbouring octaves")
    passes: int = _field(4, parse_int(1), "randomly offset tile grids per octave")
    iterations: int = _field(1, parse_int(1),
                             "gradient steps per tile per pass; 1 = seamless (each step is the "
                             "whole-image step), more saves I/O but tiles drift apart at edges")
    step_size: float = _field(1.5, parse_float(0.0, lo_open=True),
                              "step in 0-255 pixel units, for a gradient of average size")
    jitter: int = _field(32, parse_int(0), "max random shift (px) of the tile before each step")
    calibration_tiles: int = _field(16, parse_int(1),
                                    "tiles sampled per octave for the shared gradient scale")


@dataclass(frozen=True)
class TilingConfig:
    tile: int = _field(512, parse_int(16, 8192), "tile side in pixels (= canvas chunk side)")
    margin: int | str = _field("auto", parse_int(0, auto=True),
                               "context read around each tile; auto = from the layers' receptive field")


@dataclass(frozen=True)
class EngineConfig:
    workers: int | str = _field("auto", parse_int(1, auto=True),
                                "worker processes; auto = one per GPU, else one")
    threads: int | str = _field("auto", parse_int(1, auto=True),
                                "torch threads per worker; auto = cores / workers")
    scheduler: str | None = _field(None, parse_optional_str,
                                   "address of an existing Dask scheduler; null = start one here")


@dataclass(frozen=True)
class ExportConfig:
    quality: int = _field(92, parse_int(1, 100), "JPEG quality (also TIFF with jpeg compression)")
    tiff_compression: str = _field("deflate", parse_choice("deflate", "jpeg", "lzw", "none"),
                                   "compression of BigTIFF output")


@dataclass(frozen=True)
class Config:
    mode: str = _field("dream", parse_choice("dream", "identity"),
                       "dream, or identity (copies the image: for tests and benchmarks)")
    seed: int = _field(0, parse_int(0), "seed of every random choice; same seed, same result")
    model: ModelConfig = field(default_factory=ModelConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        names = archs.layer_names(self.model.name)
        for layer, _ in self.dream.layers:
            if layer not in names:
                near = difflib.get_close_matches(layer, names, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(f"dream.layers: {layer!r} is not a layer of {self.model.name}; "
                                  f"{hint}'gigadream layers {self.model.name}' lists them")

    @property
    def margin(self) -> int:
        """Context around each tile: the explicit margin, or the receptive-field radius of the
        deepest dream layer, so a core pixel's gradient sees all the pixels it depends on."""
        if self.tiling.margin != "auto":
            return int(self.tiling.margin)
        if self.mode == "identity":
            return 0
        return max(archs.receptive_radius(self.model.name, name) for name, _ in self.dream.layers)


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)


def _build(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, "
                          f"got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
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
        raise ConfigError(f"config file {path} not found; 'gigadream presets' lists the bundled ones")
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
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{p}' is not a section")
    node[leaf] = value


def resolve_preset(name: str) -> Path:
    """A path as given, else a bundled preset by name (``impressionist``)."""
    p = Path(name)
    if p.exists() or p.suffix:
        return p
    bundled = presets_dir() / f"{name}.yaml"
    return bundled if bundled.exists() else p


def presets_dir() -> Path:
    """The bundled presets: ``configs/`` of the source tree (installed editable by make)."""
    return Path(__file__).resolve().parent.parent / "configs"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data = _read_yaml(resolve_preset(str(path))) if path is not None else {}
    for o in overrides:
        _apply_override(data, o)
    return _build(Config, data, "")


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    d["dream"]["layers"] = {name: w for name, w in cfg.dream.layers}
    return d


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting: the reference table in ``--help``."""
    rows = []
    for f in dataclasses.fields(cls):
        if _is_section(f):
            rows += field_help(f.default_factory, f"{prefix}{f.name}.")
        else:
            default = f.default
            if f.name == "layers":
                default = {n: w for n, w in default}
            rows.append((prefix + f.name, default, f.metadata["help"]))
    return rows
