"""What becomes queued rows: a job (an input, a preset or config file, settings), a sweep (one
setting over a list of values, or two styles blended in steps), and ``jobs.yaml``, a list of
them for ``gigadream batch``.

Every job's settings are checked here with ``modes.load_config``, the CLI's own loader, so
that a bad value gets the CLI's one-line error before anything is queued, and a sweep is
queued whole or not at all.

``jobs.yaml``'s format is in ``gigadream batch --help`` (``cli.JOBS_YAML``) and docs/studio.md:
a list of {input, config, set, sweep | blend, priority}.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import Config
from ..modes import load_config
from ..errors import ConfigError

# Settings whose values are paths of files on this machine: they go through the same check as
# an input (``resolve_path``) before they are queued.
PATH_SETTINGS = ("style", "style.images", "model.weights")
SPEC_KEYS = ("input", "config", "set", "overrides", "sweep", "blend", "priority", "name", "kind")


def is_video(path: str | Path) -> bool:
    """Whether a job's input is a video, by its extension (``video.VIDEO_EXTENSIONS``): it
    runs as a sequence, frame after frame, into ``result.mp4``."""
    from ..video import VIDEO_EXTENSIONS
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def override(key: str, value: Any) -> str:
    """``KEY=VALUE`` as ``--set`` takes it: the value as JSON, which YAML reads back as it
    was (a list, a number, a string that looks like a number)."""
    return f"{key}={json.dumps(value)}"


def blend_steps(n: int) -> list[list[float]]:
    """``style.blend_weights`` for two styles in ``n`` steps, from the first alone to the
    second alone: [1, 0], ..., [0, 1]."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"blend: expected a number of steps of at least 2, got {n!r}")
    return [[round(1 - i / (n - 1), 6), round(i / (n - 1), 6)] for i in range(n)]


def check_config(preset: str | None, overrides: list[str]) -> Config:
    """The config a job will run with: ``load_config``, whose ConfigError is the CLI's."""
    return load_config(preset, overrides)


def _paths(settings: dict, resolve_path: Callable[[str], Path]) -> dict:
    out = dict(settings)
    for key in PATH_SETTINGS:
        v = out.get(key)
        if isinstance(v, str):
            out[key] = str(resolve_path(v))
        elif isinstance(v, list) and all(isinstance(p, str) for p in v):
            out[key] = [str(resolve_path(p)) for p in v]
    return out


def expand(spec: dict, resolve_path: Callable[[str], Path],
           resolve_input: Callable[[Any], Path] | None = None) -> tuple[str, str | None, list[dict]]:
    """One job description → (group name, swept key or None, the jobs to queue), each job's
    config checked. ``resolve_path`` turns a path the user gave into an allowed absolute one
    (or raises); ``resolve_input`` the ``input`` value (default: ``resolve_path``)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a job: expected a mapping with input, config, set, sweep; got {spec!r}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"a job: unknown key {unknown[0]!r} (valid: {', '.join(SPEC_KEYS)})")
    if "input" not in spec:
        raise ConfigError("a job: no input; give input: IMAGE")
    src = (resolve_input or resolve_path)(spec["input"])
    preset = spec.get("config")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"config: expected a preset's name or a YAML file, got {preset!r}")
    settings = spec.get("set") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"set: expected a mapping KEY: VALUE, got {settings!r}")
    settings = _paths(settings, resolve_path)
    raw = spec.get("overrides") or []       # KEY=VALUE strings, exactly as --set takes them
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise ConfigError(f"overrides: expected a list of KEY=VALUE strings, got {raw!r}")
    kind = spec.get("kind", "run")
    if kind not in ("run", "preview", "profile"):
        raise ConfigError(f"kind: expected run, preview or profile, got {kind!r}")
    if kind == "profile" and is_video(src):
        raise ConfigError(f"kind: profile measures a still's run; {Path(src).name} is a video: "
                          "run or preview it")
    priority = spec.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"priority: expected an integer, got {priority!r}")
    key, values = _sweep(spec)
    base = [_checked_path_override(o, resolve_path) for o in raw]
    base += [override(k, v) for k, v in settings.items()]
    jobs = []
    for v in values if key else [None]:
        overrides = base + ([override(key, v)] if key else [])
        _confined(check_config(preset, overrides), resolve_path)
        jobs.append({"input": src, "preset": preset, "overrides": overrides,
                     "label": {key: v} if key else {}, "priority": priority, "kind": kind})
    name = spec.get("name") or f"{Path(src).name}" + (f" · {key}" if key else "")
    return str(name), key, jobs


def checked(spec: dict, resolve_path: Callable[[str], Path],
            resolve_input: Callable[[Any], Path] | None = None) -> tuple[str, str | None, list[dict]]:
    """``expand``, and the input's header read: a damaged input fails before it is queued
    (a video: opened as ``run`` opens it, and each job's ``sequence.frames`` checked
    against its frames)."""
    from ..ingest import image_shape
    name, sweep, jobs = expand(spec, resolve_path, resolve_input)
    if is_video(jobs[0]["input"]):
        from ..sequence import frame_indices
        from ..video import open_frames
        with open_frames(str(jobs[0]["input"])) as source:
            for job in jobs:
                frame_indices(check_config(job["preset"], job["overrides"]), source.count)
    else:
        image_shape(jobs[0]["input"])
    return name, sweep, jobs


def _confined(cfg: Config, resolve_path: Callable[[str], Path]) -> None:
    """The files the built config reads, however they were set (a key, a whole section as a
    mapping, a config file), each one ``resolve_path`` allows; and no Dask scheduler of the
    job's own: a Dask client unpickles what its scheduler sends, so only the studio's
    ``--scheduler`` names one."""
    for path in (*cfg.style.images, *([cfg.model.weights] if cfg.model.weights else [])):
        resolve_path(path)
    if cfg.engine.scheduler is not None:
        raise ConfigError("engine.scheduler: a job cannot name its own Dask scheduler; start "
                          "the studio (serve or batch) with --scheduler ADDR")


def _checked_path_override(assignment: str, resolve_path: Callable[[str], Path]) -> str:
    """A ``--set`` string; one that names files (``PATH_SETTINGS``) with its paths checked."""
    key, sep, raw = assignment.partition("=")
    if not sep or key.strip() not in PATH_SETTINGS:
        return assignment
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return override(key.strip(), _paths({key.strip(): value}, resolve_path)[key.strip()])


def _sweep(spec: dict) -> tuple[str | None, list]:
    if "sweep" in spec and "blend" in spec:
        raise ConfigError("a job: give sweep or blend, not both")
    if "blend" in spec:
        return "style.blend_weights", blend_steps(spec["blend"])
    sweep = spec.get("sweep")
    if sweep is None:
        return None, []
    if not isinstance(sweep, dict) or len(sweep) != 1:
        raise ConfigError(f"sweep: expected one setting and its values, e.g. "
                          f"{{dream.step_size: [0.5, 1, 2]}}, got {sweep!r}")
    (key, values), = sweep.items()
    if isinstance(values, str):         # the page's field: a YAML list, as --set reads values
        try:
            values = yaml.safe_load(values)
        except yaml.YAMLError:
            raise ConfigError(f"sweep: {key}: expected a list of values such as [0.5, 1, 2], "
                              f"got {values!r}") from None
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sweep: {key}: expected a list of values, got {values!r}")
    return str(key), values


def read_jobs_file(path: Path) -> list[dict]:
    """The job descriptions of a ``jobs.yaml``: a list, or a mapping with ``jobs:``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"jobs file {path} not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"jobs file {path} is not valid YAML{where}") from None
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"jobs file {path}: expected a list of jobs (input, config, set, "
                          "sweep), see 'gigadream batch --help'")
    return data


def rerun_overrides(job: dict, changes: dict) -> list[str]:
    """A finished job's settings with ``changes`` (KEY: VALUE) applied last (--set's last
    one wins)."""
    return list(job["overrides"]) + [override(k, v) for k, v in changes.items()]


def job_yaml(cfg: Config) -> str:
    from ..config import to_yaml
    return "# gigadream studio: this job's config (its preset and settings, resolved)\n" + to_yaml(cfg)
