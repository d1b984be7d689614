"""The run record: what a store says about the run that made it, what a resume may reuse of
it and what it must refuse, and the resolved config written beside the result (OUT.yaml).

A store is resumed only by a run that would compute the same pixels: the same input, the
same result-changing settings (``RESULT_SECTIONS``), the same versions of the packages that
shape the bytes (``RESULT_PACKAGES``) and the same settings as the workers resolve them
(``check_resolved``). Anything else is refused in one line that says how to resume or start
over.
"""
from __future__ import annotations

from pathlib import Path

from . import __version__
from .config import Config, setting_keys, to_dict, to_yaml
from .errors import OutputError, StoreError
from .ingest import fingerprint, input_name
from .modes import result_view
from .storage import location
from .storage.store import Store, is_store, new_run_id
from .storage.views import ArrayView

# Settings that change the result; a store made under others cannot be resumed. The engine
# (workers, threads, scheduler) and the export settings may change between attempts.
RESULT_SECTIONS = ("mode", "seed", "model", "dream", "style", "keep_far", "tiling")
# Settings that stores made by earlier versions record under another key (config.MOVED):
# the same setting, so a store that agrees on its value resumes.
RECORDED_AS = {"dream.keep_far": "keep_far.factor"}


def config_difference(recorded: dict, cfg: Config) -> list[str]:
    """Result-changing settings that differ: 'key: STORE → NOW'. Settings that the workers
    resolve (``RESOLVED_SETTINGS``) are compared as resolved instead (``check_resolved``):
    ``auto`` then and ``bf16`` now agree where auto meant bf16."""
    now = setting_keys({k: v for k, v in to_dict(cfg).items() if k in RESULT_SECTIONS})
    had = setting_keys({k: v for k, v in recorded.items() if k in RESULT_SECTIONS})
    had = {RECORDED_AS.get(k, k): v for k, v in had.items()}
    keys = (set(now) | set(had)) - set(RESOLVED_SETTINGS.values())
    return [f"{k}: {had.get(k)!r} in the store, {now.get(k)!r} now"
            for k in sorted(keys) if now.get(k) != had.get(k)]


def open_run_store(path: Path | str, input_path: Path, cfg: Config, restart: bool) -> Store:
    """The run's store (a folder or a URL): a new one, or the one a previous attempt left,
    checked to belong to this input and config; ``restart`` replaces it (only if it is a
    gigadream store). Its record names the run (``Store.run``): a new store a new id, a
    resumed one the id its first attempt had."""
    if is_store(path) and not restart:
        store = Store.open(path)
        rec = store.record()
        had = rec.get("input")
        if had and had != {"name": input_name(input_path), **fingerprint(input_path)}:
            raise StoreError(f"store {path} was made from another input ({had.get('name')}, "
                             f"{had.get('size')} bytes); pass --restart to start over, or give "
                             "another --store")
        diff = config_difference(rec["config"], cfg) if "config" in rec else []
        if diff:
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            raise StoreError(f"store {path} was made with another config: {diff[0]}{more}; "
                             "run with the same config to resume, or --restart to start over")
    else:
        store = Store.create(path, overwrite=restart)
    if "config" not in store.record():
        store.update_record(config=to_dict(cfg), version=__version__, versions=_versions())
    if "run" not in store.record():     # a store made before run ids: what workers key by
        store.update_record(run=new_run_id())
    had, now = store.record()["versions"], _versions()
    for pkg in now:
        if had.get(pkg) != now[pkg]:
            raise StoreError(f"store {path} was made with {pkg} {had.get(pkg)}, this is "
                             f"{pkg} {now[pkg]}: a resumed result could differ from an "
                             "uninterrupted one; resume with the same versions, or pass "
                             "--restart to start over")
    return store


# Packages whose versions shape a result's bytes: a resume under others could differ from an
# uninterrupted run.
RESULT_PACKAGES = ("torch", "zarr", "numpy", "pyvips")


def _versions() -> dict:
    """gigadream's version and those of ``RESULT_PACKAGES``."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"gigadream": __version__}
    for pkg in RESULT_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# What each resolved value is set by, so that a resume can ask for it explicitly.
RESOLVED_SETTINGS = {"batch": "engine.batch", "precision": "model.precision",
                     "threads": "engine.threads"}


def check_resolved(store: Store, resolved: dict) -> dict:
    """The settings the workers resolved (``Mode.resolve``): recorded at a run's first start;
    a resume whose workers resolve them otherwise would compute other pixels, and is
    refused."""
    had = store.record().get("resolved")
    if had is None:
        store.update_record(resolved=resolved)
        return resolved
    for key in sorted(set(had) | set(resolved)):
        if had.get(key) != resolved.get(key):
            how = (f"resume with --set {RESOLVED_SETTINGS[key]}={had.get(key)}"
                   if key in RESOLVED_SETTINGS and had.get(key) != "mixed" else
                   f"resume where the workers' {key} is {had.get(key)}")
            raise StoreError(f"store {store.path} was run with {key} {had.get(key)}, but these "
                             f"workers resolve {resolved.get(key)}, which would change its "
                             f"pixels; {how}, or pass --restart to start over")
    return had


def stored_image(store: Store, partial: bool = False) -> tuple[ArrayView, str | None]:
    """What ``gigadream export`` writes of ``store``, and, where it is not the run's result,
    a line that says what it is. The result of a finished run; the source of a store that
    no run has used (``gigadream ingest``). An unfinished run's store is refused unless
    ``partial``: then its latest canvas (an octave may be smaller than the image), or its
    source before its first pass finishes."""
    rec = store.record()
    if "result" in rec:
        return result_view(rec["result"], store.view(rec["result"]), store.source(0)), None
    if "config" not in rec:
        return store.source(0), None
    done = rec.get("done", -1) + 1
    if not partial:
        raise StoreError(f"store {store.path} holds an unfinished run ({done} passes done, no "
                         "result yet); run the same 'gigadream run' command again to finish "
                         "it, or pass --partial to export what it holds")
    if "canvas" not in rec:
        return store.source(0), "the source image: the run has finished no pass yet"
    canvas = rec["canvas"]
    shape = tuple(canvas["shape"])
    octave = next(k for k in range(rec["pyramid"]["levels"]) if store.source(k).shape == shape)
    view = result_view(canvas, store.view(canvas), store.source(octave))
    (h, w), (h0, w0) = shape, store.source(0).shape
    return view, (f"an unfinished run's latest canvas, after {done} passes: octave {octave}, "
                  f"{w}×{h} px (the image is {w0}×{h0} px)")


def config_output(out: Path | str) -> Path | str:
    """OUT.yaml: the resolved config written beside the result."""
    return location.beside(out, ".yaml")


def check_config_output(out: Path | str, overwrite: bool) -> None:
    """Refuse, before any work, to replace an OUT.yaml that is there without ``overwrite``."""
    path = config_output(out)
    if location.is_file(path, "output") and not overwrite:
        raise OutputError(f"output {path} (the config of {location.name(out)}) already exists; "
                          "pass --overwrite to replace it or choose another name with -o")


def write_config_output(out: Path | str, cfg: Config, input_path: Path) -> None:
    """OUT.yaml beside the result ``out``: ``cfg``, with the command that reproduces it."""
    location.write_text(config_output(out), _reproducible_yaml(cfg, input_path))


def _reproducible_yaml(cfg: Config, input_path: Path) -> str:
    return (f"# gigadream {__version__}: the resolved config of this result.\n"
            f"# Reproduce: gigadream run {input_name(input_path)} --config THIS_FILE\n"
            + to_yaml(cfg))
