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
same layout, key for key (``objects``). Every byte goes through ``location`` (keys, the
record, the metadata) or ``chunks`` (the arrays' chunks). A folder keeps its fast path:
chunk files overwritten in place, spare files renamed into new canvases, the record renamed
into place. On object storage each of those is a plain PUT, atomic by itself, and a dropped
canvas is deleted.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import chunks, location, objects
from .views import ArrayView, forget_arrays
from ..errors import StoreError
from ..tiling import grid, padded_shape

FORMAT_VERSION = 1
SOURCE_CHUNK = 256
SPARES = "spare"           # chunk files of dropped canvases, for new ones (Store.drop_canvases)
METADATA = "metadata"      # the input's metadata, a file per field (Store.keep_metadata)
# Sources and canvases are stored raw: every pyramid task and octave start decodes ~9 source
# chunks to use ~2 chunks' worth, so decoding dominates reads, and raw chunks cost ~3 bytes
# a pixel per level on disk (profiling/code-figures.md: storage/store.py).
SOURCE_CODEC = None        # or a zarr codec, e.g. zarr.codecs.BloscCodec(cname="lz4", clevel=1)


def new_run_id() -> str:
    """A token no other run or canvas opening has: 16 random bytes, as hex."""
    return uuid.uuid4().hex


def is_store(path: Path | str) -> bool:
    """Whether ``path`` holds a gigadream store (its zarr.json says so)."""
    try:
        text = location.read_text(location.join(path, "zarr.json"))
    except StoreError:
        objects.check(path)     # the same line, naming the store rather than its zarr.json
        raise
    except OSError:             # a folder named zarr.json, an unreadable file
        return False
    if text is None:
        return False
    try:
        return "gigadream" in json.loads(text).get("attributes", {})
    except (ValueError, AttributeError):
        return False


class Store:
    """A gigadream store, in a folder or at a URL. ``Store.create`` makes one, ``Store.open``
    checks one."""

    def __init__(self, path: Path | str):
        self.remote = location.is_url(path)
        if self.remote:     # the URL as given (a Path would fold its '//')
            self.path = self.root = str(path).rstrip("/")
        else:
            self.path = Path(path)
            # absolute: workers of a --scheduler cluster, in working folders of their own,
            # open it
            self.root = os.path.abspath(self.path)

    # create and open keep a branch each: a folder's messages name a folder, a URL's a prefix,
    # and a URL's bucket and credentials are checked before anything else.
    @classmethod
    def create(cls, path: Path | str, overwrite: bool = False) -> Store:
        url = location.is_url(path)
        if url:
            path = str(path).rstrip("/")
            objects.check(path)         # no bucket, credentials refused: one line, nothing written
            held = bool(objects.keys_under(path))
        else:
            path = Path(path)
            held = path.exists() and any(path.iterdir())
        if held:
            if not is_store(path):
                kind, where = ("", "prefix") if url else (" folder", "folder")
                raise StoreError(f"store{kind} {path} exists and holds other data; "
                                 f"choose an empty or new {where} with --store")
            if not overwrite:
                raise StoreError(f"store {path} already exists; pass --overwrite to replace it")
            if url:
                objects.delete_under(path)
            else:
                shutil.rmtree(path)
        zarr.open_group(store=location.zarr_store(path), mode="w",
                        attributes={"gigadream": {"format": FORMAT_VERSION}})
        store = cls(path)
        store.update_record(run=new_run_id())
        return store

    @classmethod
    def open(cls, path: Path | str) -> Store:
        if location.is_url(path):
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

    @property
    def run(self) -> str:
        """The id of the run that made the store, which its resumes keep (``record``: a
        store made before ids has one from its next run); the views carry it (``ArrayView``).
        "" where there is none yet."""
        if not getattr(self, "_run", ""):
            self._run = self.record().get("run", "")
        return self._run

    def _at(self, name: str) -> str:
        return location.join(self.root, name)

    def _zarr(self, name: str):
        return location.zarr_store(self._at(name))

    def exists(self, name: str) -> bool:
        """Whether the store holds ``name``: a key, or a folder of keys."""
        return location.exists(self._at(name))

    def remove(self, name: str = "") -> None:
        """``name`` and everything under it; ``""``: the whole store."""
        location.remove(self._at(name) if name else self.root)

    # -- source pyramid ------------------------------------------------------------------

    def create_source(self, shape: tuple[int, int], name: str = "source/0") -> ArrayView:
        zarr.create_array(store=self._zarr(name), shape=(3, *shape),
                          chunks=(3, SOURCE_CHUNK, SOURCE_CHUNK), dtype="uint8",
                          compressors=[SOURCE_CODEC] if SOURCE_CODEC else None, fill_value=0,
                          overwrite=True, dimension_names=("c", "y", "x"))
        forget_arrays()
        return ArrayView(self.root, name, shape, run=self.run)

    def source(self, level: int, wrap: bool = False) -> ArrayView:
        """Source level ``level`` (``wrap``: read with x circular)."""
        name = f"source/{level}"
        try:
            arr = zarr.open_array(store=self._zarr(name), mode="r")
        except (FileNotFoundError, zarr.errors.ArrayNotFoundError) as e:
            raise StoreError(f"store {self.path} has no source level {level}; "
                             "ingest the image first") from e
        return ArrayView(self.root, name, tuple(arr.shape[1:]), wrap=wrap, run=self.run)

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
        files in place (``chunks.write``): a chunk written into an existing file costs a
        fifth of one into a new file, whose page-cache pages are new. Every chunk holding a
        pixel of the image is written by the pass; the others are never read.

        Each call opens a new generation of the canvas (``chunks.GENERATION``): only tasks
        with the returned view write into it, until ``seal`` or the next call; a late task
        of a pass before (a worker the scheduler gave up on) writes nothing."""
        name = f"canvas/o{octave}p{parity}"
        path = self._at(name)
        generation = new_run_id()
        attributes = {"offset": list(offset), "shape": list(shape), "wrap": wrap}
        padded = (3, *padded_shape(shape, tile))
        chunks.seal(path)               # the writes in flight under the last opening end
        lay = chunks.layout.__wrapped__(path)      # as on disk now, not as cached
        if (lay is not None and lay.shape == padded and lay.chunk == (tile, tile)
                and lay.dtype == np.float16 and lay.codec is None):
            meta = json.loads(location.read_text(self._at(f"{name}/zarr.json")))
            meta["attributes"] = {**meta.get("attributes", {}), **attributes}
            location.write_text(self._at(f"{name}/zarr.json"), json.dumps(meta, indent=2))
            chunks.open_generation(path, generation)
        else:
            attributes[chunks.GENERATION] = generation
            zarr.create_array(store=self._zarr(name), shape=padded,
                              chunks=(3, tile, tile), dtype="float16", compressors=None,
                              fill_value=0, overwrite=True, dimension_names=("c", "y", "x"),
                              attributes=attributes)
            self._take_spares(chunks.layout.__wrapped__(path), shape, tile, offset, wrap)
        forget_arrays()
        return ArrayView(self.root, name, shape, offset, wrap, self.run, generation)

    def seal(self, view: ArrayView) -> None:
        """No write lands in ``view``'s canvas any more: its pass is done (``canvas``)."""
        chunks.seal(self._at(view.name))

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
                         tuple(record["offset"]), record.get("wrap", False), self.run)

    def drop_canvases(self, octave: int) -> None:
        """Remove an octave's canvases. Their raw chunk files are kept as spares, which new
        canvases take (``canvas``), writing into pages the page cache holds. The spares
        of octave k + 1, dropped after octave k's first pass, are about as many as octave
        k's second canvas needs (each octave has 1/scale² the chunks, and two canvases).
        On object storage the canvases are deleted."""
        for parity in (0, 1):           # a late write would land in a spare, or nowhere
            chunks.seal(self._at(f"canvas/o{octave}p{parity}"))
        if self.remote:                 # no pages to keep: the objects go
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
        if self.remote:                 # none kept (drop_canvases)
            return
        shutil.rmtree(self.path / SPARES, ignore_errors=True)

    # -- the input's metadata -------------------------------------------------------------

    def keep_metadata(self, fields: dict[str, bytes]) -> None:
        """The input's metadata (``metadata.from_image``: a file per field), for every
        export of this store, also one in another process (``gigadream export``). Replaces
        what an earlier ingest kept."""
        self.remove(METADATA)
        for name, data in fields.items():
            location.write_bytes(self._at(f"{METADATA}/{name}"), data)

    def input_metadata(self) -> dict[str, bytes]:
        """What ``keep_metadata`` kept; nothing for a store ingested before it existed."""
        folder = self._at(METADATA)
        return {k: location.read_bytes(location.join(folder, k)) for k in location.files(folder)}

    # -- run record ------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        text = location.read_text(self._at("run.json"))
        return {} if text is None else json.loads(text)

    def update_record(self, **fields: Any) -> None:
        rec = self.record()
        rec.update(fields)
        location.write_text(self._at("run.json"), json.dumps(rec, indent=1, sort_keys=True))
