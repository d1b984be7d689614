"""The zarr v3 store of one run: source pyramid, working canvases, run record.

Layout of STORE/:

    zarr.json           group; attributes.gigadream marks it as ours
    source/             OME-Zarr 0.5 image: arrays 0, 1, ... (c, y, x) uint8, finest first
    canvas/o{k}p{n}     float16 canvases of octave k, ping-pong parity n, stored "rolled in
                        place": pixel (y, x) at (y + oy, x + ox), attributes.offset = [oy, ox]
    run.json            the run record, replaced atomically (write, then rename)

Workers receive ``ArrayView``s (a path, an array name, an offset), not open arrays, and open
them on first use; so tasks pickle small and each process opens each array once.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .errors import StoreError
from .resample import resample_window
from .tiling import Box, Tile, padded_shape

FORMAT_VERSION = 1
SOURCE_CHUNK = 256
# Measured here (2 cores): uncompressed zarr writes ~220 MB/s, blosc-lz4 ~190 MB/s at 70 % of
# the size for photos. Sources keep lz4 (they live for the whole run); canvases of dreamed
# float16 pixels hardly compress and are rewritten every pass, so they stay raw.
SOURCE_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")
# zarr encodes chunks one at a time by default; a strip of ingest is ~80 chunks, and batching
# them halved zarr's time here (a 300 MP level 0: 11.5 s → 6.1 s of writing).
zarr.config.set({"codec_pipeline.batch_size": 128})


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Float pixels in 0-255 → uint8, rounded to nearest and clipped."""
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _open_array(root: str, name: str) -> zarr.Array:
    return zarr.open_array(store=os.path.join(root, name), mode="r+")


@dataclass(frozen=True)
class ArrayView:
    """An image of ``shape`` held in array ``name`` of the store at ``root``.

    Pixel (y, x) lives at (y + oy, x + ox) of the array; ``read`` returns float32 (C, h, w).
    """

    root: str
    name: str
    shape: tuple[int, int]
    offset: tuple[int, int] = (0, 0)

    @property
    def array(self) -> zarr.Array:
        return _open_array(self.root, self.name)

    def record(self) -> dict[str, Any]:
        """Where the view lives, for run.json; ``Store.view`` reads it back."""
        return {"name": self.name, "shape": list(self.shape), "offset": list(self.offset)}

    def read(self, box: Box) -> np.ndarray:
        oy, ox = self.offset
        return self.array[:, box.y0 + oy:box.y1 + oy, box.x0 + ox:box.x1 + ox].astype(np.float32)

    def read_uint8(self, box: Box) -> np.ndarray:
        """(h, w, C) uint8 pixels, rounded and clipped: what an exporter writes."""
        oy, ox = self.offset
        a = self.array[:, box.y0 + oy:box.y1 + oy, box.x0 + ox:box.x1 + ox]
        return (a if a.dtype == np.uint8 else to_uint8(a)).transpose(1, 2, 0)

    def write(self, tile: Tile, core: np.ndarray) -> None:
        """Write ``core`` (C, h, w) as the whole chunk that ``tile`` owns."""
        arr = self.array
        oy, ox = self.offset
        chunk = Box(tile.chunk.y0, min(tile.chunk.y1, arr.shape[1]),
                    tile.chunk.x0, min(tile.chunk.x1, arr.shape[2]))
        at = tile.core.shift(oy, ox).relative_to(chunk)
        if at.shape == chunk.shape:
            buf = core.astype(arr.dtype, copy=False)
        else:  # an edge tile: the rest of its chunk lies outside the image
            buf = np.zeros((arr.shape[0], *chunk.shape), dtype=arr.dtype)
            buf[(slice(None), *at.slices())] = core
        arr[(slice(None), *chunk.slices())] = buf


@dataclass(frozen=True)
class OctaveStart:
    """The first canvas of octave k, computed on the fly, never stored:

        canvas_k = source_k + upsample(canvas_{k+1} - source_{k+1})

    so the detail dreamed at the coarser octave carries over onto the finer source.
    """

    source: ArrayView
    coarse_canvas: ArrayView
    coarse_source: ArrayView

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    def _detail(self, box: Box) -> np.ndarray:
        return self.coarse_canvas.read(box) - self.coarse_source.read(box)

    def read(self, box: Box) -> np.ndarray:
        up = resample_window(self._detail, self.coarse_source.shape, self.shape, box)
        return self.source.read(box) + up

    def read_uint8(self, box: Box) -> np.ndarray:
        return to_uint8(self.read(box)).transpose(1, 2, 0)


def downsample_tile(source: ArrayView, target: ArrayView, tile: Tile) -> dict:
    """One pyramid task: the chunk of ``target`` that ``tile`` owns, resized from ``source``."""
    out = resample_window(source.read, source.shape, target.shape, tile.core)
    target.write(tile, to_uint8(out))
    return {}


def is_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return "gigadream" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file, never a part."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Store:
    """A gigadream store on disk. ``Store.create`` makes one, ``Store.open`` checks one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.root = str(self.path)

    @classmethod
    def create(cls, path: Path, overwrite: bool = False) -> Store:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not is_store(path):
                raise StoreError(f"store folder {path} exists and holds other data; "
                                 "choose an empty or new folder with --store")
            if not overwrite:
                raise StoreError(f"store {path} already exists; pass --overwrite to replace it")
            shutil.rmtree(path)
        zarr.open_group(store=str(path), mode="w",
                        attributes={"gigadream": {"format": FORMAT_VERSION}})
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> Store:
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"store {path} does not exist; make one with 'gigadream ingest'")
        if not is_store(path):
            raise StoreError(f"{path} is not a gigadream store (no gigadream zarr.json); "
                             "point --store at a folder made by gigadream")
        return cls(path)

    # -- source pyramid ------------------------------------------------------------------

    def create_source(self, shape: tuple[int, int], name: str = "source/0") -> ArrayView:
        zarr.create_array(store=os.path.join(self.root, name), shape=(3, *shape),
                          chunks=(3, SOURCE_CHUNK, SOURCE_CHUNK), dtype="uint8",
                          compressors=[SOURCE_CODEC], fill_value=0, overwrite=True,
                          dimension_names=("c", "y", "x"))
        _open_array.cache_clear()
        return ArrayView(self.root, name, shape)

    def source(self, level: int) -> ArrayView:
        name = f"source/{level}"
        try:
            arr = zarr.open_array(store=os.path.join(self.root, name), mode="r")
        except (FileNotFoundError, zarr.errors.ArrayNotFoundError) as e:
            raise StoreError(f"store {self.path} has no source level {level}; "
                             "ingest the image first") from e
        return ArrayView(self.root, name, tuple(arr.shape[1:]))

    def has_source(self) -> bool:
        return (self.path / "source" / "0" / "zarr.json").is_file() and \
            self.record().get("ingested", False)

    def write_ome(self, scale: float, levels: int) -> None:
        """OME-Zarr 0.5 multiscales metadata on the source group, finest level first."""
        datasets = [{"path": str(k), "coordinateTransformations":
                     [{"type": "scale", "scale": [1.0, scale ** k, scale ** k]}]}
                    for k in range(levels)]
        ome = {"version": "0.5", "multiscales": [{
            "name": "source",
            "axes": [{"name": "c", "type": "channel"},
                     {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": datasets}]}
        zarr.open_group(store=os.path.join(self.root, "source"), mode="a").attrs["ome"] = ome

    # -- canvases --------------------------------------------------------------------------

    def canvas(self, octave: int, parity: int, shape: tuple[int, int], tile: int,
               offset: tuple[int, int]) -> ArrayView:
        """A fresh canvas of an octave, on the grid of the pass that will write it."""
        name = f"canvas/o{octave}p{parity}"
        zarr.create_array(store=os.path.join(self.root, name), shape=(3, *padded_shape(shape, tile)),
                          chunks=(3, tile, tile), dtype="float16", compressors=None,
                          fill_value=0, overwrite=True, dimension_names=("c", "y", "x"),
                          attributes={"offset": list(offset), "shape": list(shape)})
        _open_array.cache_clear()
        return ArrayView(self.root, name, shape, offset)

    def view(self, record: dict[str, Any]) -> ArrayView:
        """The view an ``ArrayView.record()`` describes, in this store."""
        return ArrayView(self.root, record["name"], tuple(record["shape"]),
                         tuple(record["offset"]))

    def drop_canvases(self, octave: int) -> None:
        for parity in (0, 1):
            shutil.rmtree(self.path / "canvas" / f"o{octave}p{parity}", ignore_errors=True)
        _open_array.cache_clear()

    # -- run record ------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "run.json").read_text())
        except FileNotFoundError:
            return {}

    def update_record(self, **fields: Any) -> None:
        rec = self.record()
        rec.update(fields)
        atomic_write_text(self.path / "run.json", json.dumps(rec, indent=1, sort_keys=True))
