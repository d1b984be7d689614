"""Where a store, an input or an output lives: a path on this machine or an object's URL.

This is the one module that asks which (``is_url``); the rest of gigadream names a location
and reads, writes, checks or removes what is there through the functions below, which do the
same job either way: a file or folder through ``os``, an object or a prefix of objects
through ``objects``. Where the two genuinely differ (chunk files overwritten in place, spare
files renamed into new canvases, an output written beside and renamed into place), the
caller keeps its own branch and says why.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from . import objects

# A URL with a scheme other than file:// names an object store; anything else is a path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | object) -> bool:
    """Whether ``location`` (a store's root, an array's path) names an object store."""
    return isinstance(location, str) and bool(_URL.match(location)) \
        and not location.startswith("file://")


def store_location(text: str) -> Path | str:
    """A store's (or an input's, an output's) location as the user gave it: a URL stays a
    string, anything else is a path. (argparse's ``type`` for every STORE, INPUT and OUT
    argument that may be a URL: this module imports nothing heavy, so the CLI parses
    without zarr.)"""
    return text if is_url(text) else Path(text)


def name(location: Path | str) -> str:
    """The last part of a path or a URL: 'pano.jpg' of 's3://bucket/in/pano.jpg'."""
    return location.rstrip("/").rsplit("/", 1)[-1] if is_url(location) else Path(location).name


def join(root: Path | str, *keys: str) -> str:
    """Key or file ``keys`` under ``root``: a URL ('/'-separated) or a path."""
    return objects.join(root, *keys) if is_url(root) else os.path.join(root, *keys)


def beside(location: Path | str, suffix: str) -> Path | str:
    """The name ``location`` + ``suffix`` next to it: 'out.jpg' → 'out.jpg.yaml'."""
    return str(location) + suffix if is_url(location) else \
        location.with_name(location.name + suffix)


def zarr_store(location: Path | str):
    """What zarr opens at ``location``: the folder's path, or zarr's own store over the
    objects under a URL."""
    return objects.zarr_store(location) if is_url(location) else str(location)


def exists(location: Path | str, role: str = "store") -> bool:
    """Whether anything is at ``location``: a file or a folder; an object, or objects under
    it as under a folder. ``role``: what the location is to the run, for errors
    (``objects.ROLES``)."""
    if is_url(location):
        return (objects.head(location, role, ask_bucket=False) is not None
                or bool(objects.keys_under(location)))
    return os.path.exists(location)


def is_file(location: Path | str, role: str = "output") -> bool:
    """Whether a file (an object) is at ``location``: one HEAD request at a URL, no listing."""
    if is_url(location):
        return objects.head(location, role) is not None
    return os.path.exists(location)


def files(location: Path | str) -> list[str]:
    """The names of the files (objects) right under the folder (prefix) ``location``,
    sorted; none where there is none."""
    if is_url(location):
        return [k for k in objects.keys_under(location) if "/" not in k]
    if not os.path.isdir(location):
        return []
    return sorted(e.name for e in os.scandir(location) if e.is_file())


def read_bytes(location: Path | str) -> bytes | None:
    """The whole file or object at ``location``; None where there is none."""
    if is_url(location):
        return objects.get(location)
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        return None


def read_text(location: Path | str) -> str | None:
    """``read_bytes`` as text."""
    data = read_bytes(location)
    return None if data is None else data.decode()


def write_bytes(location: Path | str, data: bytes) -> None:
    """The file or object at ``location`` := ``data``; a reader sees the old bytes or the
    new, never a part. A file is written beside and renamed into place (its folder made as
    needed); an object is one PUT, atomic by itself."""
    if is_url(location):
        objects.put(location, data)
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(location: Path | str, text: str) -> None:
    """``write_bytes`` of ``text``."""
    write_bytes(location, text.encode())


def remove(location: Path | str) -> None:
    """``location`` and everything under it; nothing where there is nothing."""
    if is_url(location):
        objects.delete_under(location)
    else:
        shutil.rmtree(location, ignore_errors=True)
