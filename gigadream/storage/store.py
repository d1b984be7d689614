"""The zarr v3 store of one run: source pyramid, working canvases, run record.

Layout of STORE/:

    zarr.json           group; attributes.gigadream marks it as ours
    source/             OME-Zarr 0.5 image: arrays 0, 1, ... (c, y, x) uint8, finest first
    canvas/o{k}p{n}     float16 canvases of octave k, ping-pong parity n, stored "rolled in
                        place": pixel (y, x) at (y + oy, x + ox), attributes.offset = [oy, ox]
                        (attributes.wrap: x circular, pixel (y, x) at (y + oy, (x + ox) mod w))
    spare/              chunk files of dropped canvases, until new canvases take them
    metadata/           the input's EXIF, XMP and resolution, normalised for the upright
                        image (``metadata.from_image``), for every export
    run.json            the run record, replaced atomically (write, then rename)

A store is a folder on this machine or a URL (``s3://bucket/prefix``, ``gs://…``) with the
same layout, key for key (``objects``). Every byte goes through the few methods below that
name a key (``Store._at``, ``record``, ``update_record``, ``exists``, ``remove``) or through
``chunks``, each with a branch for either; a folder keeps its fast path: chunk files
overwritten in place, spare files renamed into new canvases, the record renamed into place.
On object storage each of those is a plain PUT, atomic by itself, and a dropped canvas is
deleted.

Workers receive ``ArrayView``s (a path, an array name, an offset), not open arrays, and open
them on first use; so tasks pickle small and each process opens each array once.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import chunks, objects
from .errors import StoreError
from .resample import resample_window
from .tiling import Box, Tile, circular_runs, grid, padded_shape

FORMAT_VERSION = 1
SOURCE_CHUNK = 256
SPARES = "spare"           # chunk files of dropped canvases, for new ones (Store.drop_canvases)
METADATA = "metadata"      # the input's metadata, a file per field (Store.keep_metadata)
# Chunk codecs, picked by measurement (200 MP photo panorama, 256 px uint8 chunks, chunks.py
# writing): none 1.8-2.7 s to ingest and 587 MB; blosc-lz4 3.3 s, 218 MB, 0.36 ms to decode a
# chunk; lz4 with bitshuffle 3.6 s, 220 MB, 0.46 ms; zstd 4.1 s, 118 MB. Every pyramid task
# and octave start decodes ~9 source chunks to use ~2 chunks' worth, so decoding dominated
# reads: a pyramid chunk took 12-15 ms from lz4 sources and 9.6 ms from raw ones. Sources
# and canvases are therefore stored raw; the disk cost is ~3 bytes a pixel per level (a
# 300 MP panorama's source pyramid: 1.8 GB, beside 3.6 GB of float16 canvases).
SOURCE_CODEC = None        # or a zarr codec, e.g. zarr.codecs.BloscCodec(cname="lz4", clevel=1)
# zarr encodes chunks one at a time by default; where zarr still writes (arrays chunks.py does
# not handle), batching helps (a 300 MP level 0: 11.5 s → 6.1 s).
zarr.config.set({"codec_pipeline.batch_size": 128})


# Every float16 value's byte (rounded to nearest, clipped, NaN → 0). numpy's float16 ufuncs
# convert element by element: rint and clip of a 602 px tile took 22 ms, this table 2 ms.
_F16_TO_U8 = np.clip(np.rint(np.nan_to_num(
    np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32))), 0, 255).astype(np.uint8)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Float pixels in 0-255 → uint8, rounded to nearest and clipped."""
    if a.dtype == np.float16:
        return np.take(_F16_TO_U8, a.view(np.uint16))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# 0-255 → 0-65535 is × 257 (255 × 257 = 65535), so a uint8 level k is 16-bit level 257 k.
_F16_TO_U16 = np.rint(257 * np.clip(np.nan_to_num(np.arange(
    1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)), 0, 255)).astype(np.uint16)


def to_uint16(a: np.ndarray) -> np.ndarray:
    """Pixels in 0-255 (uint8 or float) → uint16 in 0-65535, rounded to nearest and clipped:
    the float canvas's fractions of a level survive, as they do not in ``to_uint8``."""
    if a.dtype == np.uint8:
        return a.astype(np.uint16) * np.uint16(257)
    if a.dtype == np.float16:
        return np.take(_F16_TO_U16, a.view(np.uint16))
    return np.rint(257 * np.clip(a.astype(np.float32), 0, 255)).astype(np.uint16)


def interleaved(a: np.ndarray) -> np.ndarray:
    """(C, h, w) → contiguous (h, w, C), a channel at a time: numpy's general transposing copy
    took 27 ms for a 256 × 11550 strip, this 5 ms."""
    out = np.empty((*a.shape[1:], a.shape[0]), dtype=a.dtype)
    for c in range(a.shape[0]):
        out[..., c] = a[c]
    return out


def convert(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` as ``dtype``. Between float16 and float32, through torch where the process has
    already loaded it (every model worker): its conversions are 3-7× faster than numpy's
    (602 px tile: 0.9 against 6.6 ms to float16, 0.4 against 2.6 back) and bit-identical
    (both round to nearest even). The client and identity workers never import torch."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    torch = sys.modules.get("torch")
    if torch is not None and {a.dtype, dtype} <= {np.dtype(np.float16), np.dtype(np.float32)}:
        to = torch.float16 if dtype == np.float16 else torch.float32
        return torch.from_numpy(np.ascontiguousarray(a)).to(to).numpy()
    return a.astype(dtype)


def location(root: str, name: str) -> str:
    """Where array or key ``name`` of the store at ``root`` lives: a path, or a URL."""
    return objects.join(root, name) if objects.is_url(root) else os.path.join(root, name)


def zarr_location(root: str, name: str):
    """What zarr opens ``name`` of the store at ``root`` through: the path of a folder, or
    zarr's own store over the objects under a URL."""
    at = location(root, name)
    return objects.zarr_store(at) if objects.is_url(root) else at


@functools.lru_cache(maxsize=64)
def _open_array(root: str, name: str) -> zarr.Array:
    return zarr.open_array(store=zarr_location(root, name), mode="r+")


def forget_arrays() -> None:
    """Arrays were created or removed: drop what this process cached about them. (A worker
    that serves several runs, ``pipeline.run(cluster=...)``, is told to before each: a
    store made again at the same path has other arrays.)"""
    _open_array.cache_clear()
    chunks.layout.cache_clear()


@dataclass(frozen=True)
class ArrayView:
    """An image of ``shape`` held in array ``name`` of the store at ``root``.

    Pixel (y, x) lives at (y + oy, x + ox) of the array; ``read`` returns float32 (C, h, w).
    ``wrap``: x is circular (a 360° panorama): pixel (y, x) lives at (y + oy, (x + ox) mod w),
    and a box may reach past either edge, into the other side (``tiling``).
    """

    root: str
    name: str
    shape: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    wrap: bool = False

    @property
    def array(self) -> zarr.Array:
        return _open_array(self.root, self.name)

    def record(self) -> dict[str, Any]:
        """Where the view lives, for run.json; ``Store.view`` reads it back."""
        return {"name": self.name, "shape": list(self.shape), "offset": list(self.offset),
                **({"wrap": True} if self.wrap else {})}

    @property
    def layout(self) -> chunks.Layout | None:
        """The array's chunk layout for ``chunks``; None where zarr reads and writes."""
        return chunks.layout(location(self.root, self.name))

    def _pixels(self, box: Box) -> np.ndarray:
        """The box's pixels in the array's dtype, (C, h, w)."""
        oy, ox = self.offset
        if self.wrap:   # the box's columns mod w: one run of stored columns, two across the edge
            parts = [self._stored(box.y0 + oy, box.y1 + oy, a, b)
                     for a, b in circular_runs(box.x0 + ox, box.x1 + ox, self.shape[1])]
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
        return self._stored(box.y0 + oy, box.y1 + oy, box.x0 + ox, box.x1 + ox)

    def _stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Array elements [:, y0:y1, x0:x1]."""
        lay = self.layout
        if lay is None:
            return self.array[:, y0:y1, x0:x1]
        return chunks.read(lay, y0, y1, x0, x1)

    def read(self, box: Box, dtype=np.float32) -> np.ndarray:
        """Float pixels (C, h, w) as ``dtype``; ``None``: as stored where the array holds
        floats (a float16 canvas), else float32."""
        a = self._pixels(box)
        if dtype is None:
            dtype = a.dtype if a.dtype.kind == "f" else np.float32
        return convert(a, dtype)

    def read_uint8(self, box: Box) -> np.ndarray:
        """(h, w, C) uint8 pixels, rounded and clipped: what an exporter writes."""
        a = self._pixels(box)
        return interleaved(a if a.dtype == np.uint8 else to_uint8(a))

    def read_uint16(self, box: Box) -> np.ndarray:
        """(h, w, C) uint16 pixels, 0-255 scaled to 0-65535: what a 16-bit exporter writes."""
        return interleaved(to_uint16(self._pixels(box)))

    def write(self, tile: Tile, core: np.ndarray) -> None:
        """Write ``core`` (C, h, w) as the whole chunk that ``tile`` owns."""
        lay = self.layout
        (c, h, w), dtype = (lay.shape, lay.dtype) if lay else (self.array.shape, self.array.dtype)
        oy, ox = self.offset
        chunk = Box(tile.chunk.y0, min(tile.chunk.y1, h), tile.chunk.x0, min(tile.chunk.x1, w))
        at = tile.core.shift(oy, ox).relative_to(chunk)
        if at.shape == chunk.shape:
            buf = convert(core, dtype)
        else:  # an edge tile: the rest of its chunk lies outside the image
            buf = np.zeros((c, *chunk.shape), dtype=dtype)
            buf[(slice(None), *at.slices())] = core
        if lay is None:
            self.array[(slice(None), *chunk.slices())] = buf
        else:
            chunks.write(lay, chunk.y0 // lay.chunk[0], chunk.x0 // lay.chunk[1], buf)


class ComputedView:
    """A view whose float pixels are computed as they are read (``read``); its uint8 pixels
    for export follow from them."""

    def read_uint8(self, box: Box) -> np.ndarray:
        return interleaved(to_uint8(self.read(box)))

    def read_uint16(self, box: Box) -> np.ndarray:
        return interleaved(to_uint16(self.read(box)))


@dataclass(frozen=True)
class OctaveStart(ComputedView):
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

    @property
    def wrap(self) -> bool:
        return self.source.wrap

    def _detail(self, box: Box) -> np.ndarray:
        return self.coarse_canvas.read(box) - self.coarse_source.read(box)

    def read(self, box: Box, dtype=np.float32) -> np.ndarray:
        """float32 pixels, whichever ``dtype`` (computed in float32)."""
        up = resample_window(self._detail, self.coarse_source.shape, self.shape, box,
                             wrap=self.wrap)
        return self.source.read(box) + up


def downsample_tile(source: ArrayView, target: ArrayView, tile: Tile) -> dict:
    """One pyramid task: the chunk of ``target`` that ``tile`` owns, resized from ``source``
    (across x's edge where ``source`` wraps)."""
    out = resample_window(source.read, source.shape, target.shape, tile.core, wrap=source.wrap)
    target.write(tile, to_uint8(out))
    return {}


def is_store(path: Path | str) -> bool:
    if objects.is_url(path):
        try:
            text = objects.get(objects.join(path, "zarr.json"))
        except StoreError:
            objects.check(path)     # the same line, naming the store rather than its zarr.json
            raise
        if text is None:
            return False
    else:
        meta = Path(path) / "zarr.json"
        if not meta.is_file():
            return False
        try:
            text = meta.read_text()
        except OSError:
            return False
    try:
        return "gigadream" in json.loads(text).get("attributes", {})
    except (ValueError, AttributeError):
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
    """A gigadream store, in a folder or at a URL. ``Store.create`` makes one, ``Store.open``
    checks one."""

    def __init__(self, path: Path | str):
        self.remote = objects.is_url(path)
        if self.remote:     # the URL as given (a Path would fold its '//')
            self.path = self.root = str(path).rstrip("/")
        else:
            self.path = Path(path)
            # absolute: workers of a --scheduler cluster, in working folders of their own,
            # open it
            self.root = os.path.abspath(self.path)

    @classmethod
    def create(cls, path: Path | str, overwrite: bool = False) -> Store:
        if objects.is_url(path):
            return cls._create_remote(str(path).rstrip("/"), overwrite)
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
    def _create_remote(cls, url: str, overwrite: bool) -> Store:
        objects.check(url)              # no bucket, credentials refused: one line, nothing written
        if objects.keys_under(url):
            if not is_store(url):
                raise StoreError(f"store {url} exists and holds other data; "
                                 "choose an empty or new prefix with --store")
            if not overwrite:
                raise StoreError(f"store {url} already exists; pass --overwrite to replace it")
            objects.delete_under(url)
        zarr.open_group(store=objects.zarr_store(url), mode="w",
                        attributes={"gigadream": {"format": FORMAT_VERSION}})
        return cls(url)

    @classmethod
    def open(cls, path: Path | str) -> Store:
        if objects.is_url(path):
            url = str(path).rstrip("/")
            objects.check(url)
            if not is_store(url):
                if not objects.keys_under(url):
                    raise StoreError(f"store {url} does not exist; make one with "
                                     "'gigadream ingest'")
                raise StoreError(f"{url} is not a gigadream store (no gigadream zarr.json); "
                                 "point --store at a prefix made by gigadream")
            return cls(url)
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"store {path} does not exist; make one with 'gigadream ingest'")
        if not is_store(path):
            raise StoreError(f"{path} is not a gigadream store (no gigadream zarr.json); "
                             "point --store at a folder made by gigadream")
        return cls(path)

    # -- keys ------------------------------------------------------------------------------

    def _at(self, name: str) -> str:
        return location(self.root, name)

    def _zarr(self, name: str):
        return zarr_location(self.root, name)

    def exists(self, name: str) -> bool:
        """Whether the store holds ``name``: a key, or a folder of keys."""
        if self.remote:
            return objects.get(self._at(name)) is not None or bool(
                objects.keys_under(self._at(name)))
        return os.path.exists(self._at(name))

    def remove(self, name: str = "") -> None:
        """``name`` and everything under it; ``""``: the whole store."""
        if self.remote:
            objects.delete_under(self._at(name) if name else self.root)
        else:
            shutil.rmtree(self._at(name) if name else self.path, ignore_errors=True)

    def _read_text(self, name: str) -> str | None:
        if self.remote:
            data = objects.get(self._at(name))
            return None if data is None else data.decode()
        try:
            return Path(self._at(name)).read_text()
        except FileNotFoundError:
            return None

    def _replace_text(self, name: str, text: str) -> None:
        """``name`` := ``text``; a reader sees the old text or the new, never a part (on
        object storage a PUT is atomic by itself)."""
        if self.remote:
            objects.put(self._at(name), text.encode())
        else:
            atomic_write_text(Path(self._at(name)), text)

    # -- source pyramid ------------------------------------------------------------------

    def create_source(self, shape: tuple[int, int], name: str = "source/0") -> ArrayView:
        zarr.create_array(store=self._zarr(name), shape=(3, *shape),
                          chunks=(3, SOURCE_CHUNK, SOURCE_CHUNK), dtype="uint8",
                          compressors=[SOURCE_CODEC] if SOURCE_CODEC else None, fill_value=0,
                          overwrite=True, dimension_names=("c", "y", "x"))
        forget_arrays()
        return ArrayView(self.root, name, shape)

    def source(self, level: int, wrap: bool = False) -> ArrayView:
        """Source level ``level`` (``wrap``: read with x circular)."""
        name = f"source/{level}"
        try:
            arr = zarr.open_array(store=self._zarr(name), mode="r")
        except (FileNotFoundError, zarr.errors.ArrayNotFoundError) as e:
            raise StoreError(f"store {self.path} has no source level {level}; "
                             "ingest the image first") from e
        return ArrayView(self.root, name, tuple(arr.shape[1:]), wrap=wrap)

    def has_source(self) -> bool:
        return self.exists("source/0/zarr.json") and self.record().get("ingested", False)

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
        zarr.open_group(store=self._zarr("source"), mode="a").attrs["ome"] = ome

    # -- canvases --------------------------------------------------------------------------

    def canvas(self, octave: int, parity: int, shape: tuple[int, int], tile: int,
               offset: tuple[int, int], wrap: bool = False) -> ArrayView:
        """A canvas of an octave, on the grid of the pass that will write it (``wrap``: x
        circular, the grid of ``tiling.grid(..., wrap=True)``).

        Passes alternate between two canvases, so this name holds the canvas of two passes
        back, which nothing reads any more. Where its geometry is the same (it is, within an
        octave) it is reused: only its attributes change, and the pass overwrites its chunk
        files in place (``chunks.write``). Writing 1.5 MB chunks into new files cost 1.5-2.6
        ms each here, into existing ones 0.3 ms: new page-cache pages are dear on this VM.
        Every chunk holding a pixel of the image is written by the pass; the others are
        never read."""
        name = f"canvas/o{octave}p{parity}"
        path = self._at(name)
        attributes = {"offset": list(offset), "shape": list(shape), "wrap": wrap}
        padded = (3, *padded_shape(shape, tile))
        lay = chunks.layout.__wrapped__(path)      # as on disk now, not as cached
        if (lay is not None and lay.shape == padded and lay.chunk == (tile, tile)
                and lay.dtype == np.float16 and lay.codec is None):
            meta = json.loads(self._read_text(f"{name}/zarr.json"))
            meta["attributes"] = {**meta.get("attributes", {}), **attributes}
            self._replace_text(f"{name}/zarr.json", json.dumps(meta, indent=2))
        else:
            zarr.create_array(store=self._zarr(name), shape=padded,
                              chunks=(3, tile, tile), dtype="float16", compressors=None,
                              fill_value=0, overwrite=True, dimension_names=("c", "y", "x"),
                              attributes=attributes)
            self._take_spares(chunks.layout.__wrapped__(path), shape, tile, offset, wrap)
        forget_arrays()
        return ArrayView(self.root, name, shape, offset, wrap)

    def _take_spares(self, lay: chunks.Layout, shape: tuple[int, int], tile: int,
                     offset: tuple[int, int], wrap: bool) -> None:
        """A new canvas's chunk files, as far as there are spares of their size: renamed
        into place where the pass's tiles will write (``drop_canvases``). Each is then
        overwritten whole, into pages the page cache already holds."""
        if self.remote:                 # no pages to keep: a PUT makes each chunk afresh
            return
        spare = self.path / SPARES
        if lay is None or lay.codec is not None or not spare.is_dir():
            return
        size = lay.shape[0] * lay.chunk[0] * lay.chunk[1] * np.dtype(lay.dtype).itemsize
        files = [e.path for e in os.scandir(spare) if e.is_file() and e.stat().st_size == size]
        for path, t in zip(files, grid(shape, tile, offset, wrap=wrap)):
            target = lay.file(t.chunk.y0 // tile, t.chunk.x0 // tile)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(path, target)

    def view(self, record: dict[str, Any]) -> ArrayView:
        """The view an ``ArrayView.record()`` describes, in this store."""
        return ArrayView(self.root, record["name"], tuple(record["shape"]),
                         tuple(record["offset"]), record.get("wrap", False))

    def drop_canvases(self, octave: int) -> None:
        """Remove an octave's canvases. Their raw chunk files are kept as spares, which new
        canvases take (``canvas``): writing into new files filled fresh page-cache pages,
        1.5-2.6 ms a 1.5 MB chunk on this VM, against 0.3 ms into existing ones. The spares
        of octave k + 1, dropped after octave k's first pass, are about as many as octave
        k's second canvas needs (each octave has 1/scale² the chunks, and two canvases).
        On object storage the canvases are deleted."""
        if self.remote:
            for parity in (0, 1):
                self.remove(f"canvas/o{octave}p{parity}")
            forget_arrays()
            return
        spare = self.path / SPARES
        for parity in (0, 1):
            path = self.path / "canvas" / f"o{octave}p{parity}"
            lay = chunks.layout.__wrapped__(str(path))
            if lay is not None and lay.codec is None and (path / "c").is_dir():
                spare.mkdir(exist_ok=True)
                for f in (path / "c").rglob("*"):
                    if f.is_file():    # c/0/iy/ix → spare/o{k}p{n}-0-iy-ix: names stay unique
                        key = "-".join(f.relative_to(path / "c").parts)
                        os.replace(f, spare / f"o{octave}p{parity}-{key}")
            shutil.rmtree(path, ignore_errors=True)
        forget_arrays()

    def drop_spares(self) -> None:
        """The spare chunk files no canvas took (at the end of a run)."""
        if self.remote:
            return
        shutil.rmtree(self.path / SPARES, ignore_errors=True)

    # -- the input's metadata -------------------------------------------------------------

    def keep_metadata(self, fields: dict[str, bytes]) -> None:
        """The input's metadata (``metadata.from_image``: a file per field), for every
        export of this store, also one in another process (``gigadream export``). Replaces
        what an earlier ingest kept."""
        if self.remote:
            self.remove(METADATA)
            for name, data in fields.items():
                objects.put(self._at(f"{METADATA}/{name}"), data)
            return
        folder = self.path / METADATA
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, data in fields.items():
            (folder / name).write_bytes(data)

    def input_metadata(self) -> dict[str, bytes]:
        """What ``keep_metadata`` kept; nothing for a store ingested before it existed."""
        if self.remote:
            return {k: objects.get(self._at(f"{METADATA}/{k}"))
                    for k in objects.keys_under(self._at(METADATA)) if "/" not in k}
        folder = self.path / METADATA
        if not folder.is_dir():
            return {}
        return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}

    # -- run record ------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        text = self._read_text("run.json")
        return {} if text is None else json.loads(text)

    def update_record(self, **fields: Any) -> None:
        rec = self.record()
        rec.update(fields)
        self._replace_text("run.json", json.dumps(rec, indent=1, sort_keys=True))
