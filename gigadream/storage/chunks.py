"""Whole-chunk reads and writes of the store's arrays, straight to their chunk files.

zarr-python spends about a millisecond per chunk in its asyncio codec pipeline, whatever the
chunk's size, which would be most of ingest's time. gigadream's arrays have one simple layout
(a regular grid, every channel in each chunk, raw bytes or blosc), so this module reads and
writes their chunk files itself, compressed ones decoded several at a time on a small thread
pool (blosc releases the GIL).

The arrays stay plain zarr v3: chunk files at ``c/0/<y>/<x>``, full-sized at the edges,
encoded with the array's own codecs exactly as zarr-python does (numcodecs' blosc), so zarr,
napari and any other zarr reader see the same pixels, and a chunk zarr wrote reads back here
(tests/test_chunks.py, both ways). An array with any other layout goes through zarr.

An array of a store on object storage (``objects``: its path is a URL) has the same layout;
each chunk is then one object, read whole with a GET and written whole with a PUT. Reads and
writes keep a branch each (``_load``, ``write``): a file's rows are read alone and its chunk
overwritten in place, where an object is fetched and replaced whole.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import location, objects
from ..errors import StoreError

# Threads that decode compressed chunks. Raw chunks are read on the calling thread: handing
# 200 KB copies to a pool costs twice what it saves.
THREADS = 4
# Threads that wait on an object store's requests, a process's: a tile's window is four
# chunks, so a worker's two task threads each with a window in flight and a task's tiles'
# PUTs behind them keep 16 busy. They wait, not compute (obstore releases the GIL).
IO_THREADS = 16
# Chunks of object storage a task keeps while it runs (``task_io``): a tile's window straddles
# four, two of them its row neighbour's, so 8 (12 MB of float16 canvas) halve a pass's GETs.
TASK_CHUNKS = 8


@dataclass(frozen=True)
class Layout:
    """What reading and writing an array's chunk files needs."""

    path: str
    shape: tuple[int, int, int]      # (c, h, w)
    chunk: tuple[int, int]           # (h, w); a chunk holds every channel
    dtype: np.dtype
    codec: object | None             # numcodecs.Blosc, or None for raw little-endian bytes
    fill: float
    remote: bool = False             # path is an object store's URL (objects), not a folder

    @property
    def chunk_bytes(self) -> int:
        return self.shape[0] * self.chunk[0] * self.chunk[1] * self.dtype.itemsize

    def file(self, iy: int, ix: int) -> str:
        return location.join(self.path, "c", "0", str(iy), str(ix))

    def chunk_range(self, y0: int, y1: int, x0: int, x1: int):
        ch, cw = self.chunk
        return range(y0 // ch, -(-y1 // ch)), range(x0 // cw, -(-x1 // cw))


def _codec(codecs: list[dict], dtype: np.dtype):
    """(True, codec) for the layouts handled here, (False, None) otherwise."""
    names = [c.get("name") for c in codecs]
    if names[:1] != ["bytes"] or codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return False, None
    if names == ["bytes"]:
        return True, None
    if names == ["bytes", "blosc"]:
        from numcodecs import Blosc
        cfg = codecs[1]["configuration"]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                   "bitshuffle": Blosc.BITSHUFFLE}[cfg["shuffle"]]
        if cfg.get("typesize", dtype.itemsize) != dtype.itemsize:
            return False, None
        return True, Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=shuffle,
                           blocksize=cfg.get("blocksize", 0))
    return False, None


@functools.lru_cache(maxsize=64)
def layout(path: str, key: tuple = ()) -> Layout | None:
    """The chunk layout of the zarr v3 array at ``path``, or None where zarr must do the work.
    Cached by ``path`` and ``key``: a worker that serves run after run is told nothing when
    a store is removed and made again at the same path with other arrays, so the views it
    receives name their array's run and opening (``ArrayView.key``), and another's layout
    is read afresh. (``Store`` clears the cache of its own process after each change.)"""
    try:
        meta = json.loads(location.read_bytes(location.join(path, "zarr.json")) or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    grid, keys = meta.get("chunk_grid", {}), meta.get("chunk_key_encoding", {})
    shape, chunk = meta.get("shape", []), grid.get("configuration", {}).get("chunk_shape", [])
    if (meta.get("zarr_format") != 3 or grid.get("name") != "regular" or len(shape) != 3
            or keys.get("name") != "default"
            or keys.get("configuration", {}).get("separator", "/") != "/"
            or chunk[0] != shape[0] or meta.get("storage_transformers")):
        return None
    dtype = np.dtype(meta["data_type"])
    ok, codec = _codec(meta.get("codecs", []), dtype)
    if not ok:
        return None
    return Layout(path, tuple(shape), tuple(chunk[1:]), dtype, codec, meta.get("fill_value", 0),
                  location.is_url(path))


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="gigadream-chunks")


@functools.cache
def _io_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="gigadream-io")


_local = threading.local()


def _buffer(nbytes: int) -> np.ndarray:
    """This thread's scratch buffer of at least ``nbytes``: reading each chunk into a fresh
    bytes object mapped and faulted in new pages every time (glibc serves blocks this large
    with mmap)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _local.buf = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes]


def _load(lay: Layout, iy: int, ix: int, r0: int = 0, r1: int | None = None,
          cache: _Chunks | None = None) -> np.ndarray | None:
    """Rows [r0:r1] of one chunk, (c, r1 - r0, cw); None where no file was written (it holds
    the fill value). A raw chunk's rows are read alone, channel by channel: a tile's window
    straddles its chunks, and reading them whole reads 4× the bytes it uses (float16 canvas,
    512 px tiles on another pass's grid). They lie in this thread's scratch buffer, valid
    until the thread loads the next. ``cache``: a task's chunks of object storage
    (``task_io``)."""
    ch, cw = lay.chunk
    r1 = ch if r1 is None else r1
    if lay.remote:                  # a whole object a GET, where a file's rows are read alone
        return _get(lay, iy, ix, r0, r1, cache)
    try:
        f = open(lay.file(iy, ix), "rb", buffering=0)
    except FileNotFoundError:
        return None
    with f:
        if lay.codec is not None:
            data = np.frombuffer(lay.codec.decode(f.read()), dtype=lay.dtype)
            return data.reshape(lay.shape[0], ch, cw)[:, r0:r1]
        c, row = lay.shape[0], cw * lay.dtype.itemsize
        band = (r1 - r0) * row
        data = _buffer(c * band)
        for k in range(c):
            at = (k * ch + r0) * row
            if os.preadv(f.fileno(), [data[k * band:(k + 1) * band]], at) != band:
                raise OSError(f"chunk file {lay.file(iy, ix)} is shorter than a chunk")
    return np.frombuffer(data, dtype=lay.dtype).reshape(c, r1 - r0, cw)


class _Chunks:
    """The last ``size`` chunks a task read from object storage, by URL (None: no object);
    shared by the I/O threads that fetch a window's chunks together."""

    def __init__(self, size: int):
        self.size, self.lock = size, threading.Lock()
        self.held: collections.OrderedDict[str, np.ndarray | None] = collections.OrderedDict()

    def get(self, url: str):
        with self.lock:
            if url not in self.held:
                return _ABSENT
            self.held.move_to_end(url)
            return self.held[url]

    def put(self, url: str, a: np.ndarray | None) -> None:
        with self.lock:
            self.held[url] = a
            self.held.move_to_end(url)
            while len(self.held) > self.size:
                self.held.popitem(last=False)


_ABSENT = object()


def _get(lay: Layout, iy: int, ix: int, r0: int, r1: int,
         cache: _Chunks | None = None) -> np.ndarray | None:
    """``_load`` from object storage: the whole object in one GET (a request costs
    milliseconds, so rows are not fetched a channel at a time as from a file: three ranged
    GETs of a chunk's rows cost the server 2.3× one whole GET), or from the task's
    ``cache``."""
    url = lay.file(iy, ix)
    a = _ABSENT if cache is None else cache.get(url)
    if a is _ABSENT:
        data = objects.get_buffer(url)
        a = None if data is None else _chunk_array(lay, url, data)
        if cache is not None:
            cache.put(url, a)
    return None if a is None else a[:, r0:r1]


def _chunk_array(lay: Layout, url: str, data) -> np.ndarray:
    """A chunk object's bytes as its (c, h, w) array (read-only: obstore's buffer)."""
    if lay.codec is not None:
        data = lay.codec.decode(data)
    a = np.frombuffer(data, dtype=lay.dtype)
    if a.size != lay.shape[0] * lay.chunk[0] * lay.chunk[1]:
        raise OSError(f"chunk {url} is not a chunk's size")
    return a.reshape(lay.shape[0], *lay.chunk)


def read(lay: Layout, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of every channel, (c, h, w), decoding each chunk once."""
    out = np.empty((lay.shape[0], y1 - y0, x1 - x0), dtype=lay.dtype)
    ch, cw = lay.chunk
    cache = getattr(_local, "cache", None) if lay.remote else None    # this thread's task's

    def fill(key: tuple[int, int]) -> None:
        iy, ix = key
        ya, yb = max(y0, iy * ch), min(y1, (iy + 1) * ch)
        xa, xb = max(x0, ix * cw), min(x1, (ix + 1) * cw)
        dst = out[:, ya - y0:yb - y0, xa - x0:xb - x0]
        a = _load(lay, iy, ix, ya - iy * ch, yb - iy * ch, cache)
        if a is None:
            dst[...] = lay.fill
        else:
            dst[...] = a[:, :, xa - ix * cw:xb - ix * cw]

    rows, cols = lay.chunk_range(y0, y1, x0, x1)
    keys = [(iy, ix) for iy in rows for ix in cols]
    if len(keys) > 1 and lay.remote:        # GETs wait milliseconds each: wait on them together
        list(_io_pool().map(fill, keys))
    elif len(keys) > 1 and lay.codec is not None:    # decoding is work: spread it
        list(_pool().map(fill, keys))
    else:
        for k in keys:
            fill(k)
    return out


class StaleWrite(Exception):
    """A write into a canvas whose generation is over (``write``'s ``generation``): a task
    of an earlier pass, or of a run since replaced, that a worker the scheduler gave up on
    finished late. Nobody waits for that task: its write is dropped, raised here and logged
    (the worker's log is where an operator sees it)."""

    def __init__(self, message: str):
        super().__init__(message)
        logging.getLogger("gigadream").warning("late write dropped: %s", message)


# Canvases alternate between two arrays (``Store.canvas``), so a task of pass i that a
# worker cut off from the scheduler (paused, partitioned) finishes late would write into the
# canvas of pass i + 2, or into the one pass i + 1 reads. Each opening of a canvas for a pass
# writes a token in its zarr.json (attributes.generation), the pass's views carry it, and a
# chunk is written only while the token is the canvas's: a conditional write rather than a
# generation in each chunk's key, so the chunks stay at zarr's own keys (zarr, napari read
# them) and are still overwritten in place, in pages the page cache holds (``Store.canvas``).
# In a folder the check and the write hold the array folder's shared lock (flock) and every
# change of the token its exclusive lock (``seal``), so a write lands while its pass is open
# or not at all. On object storage there is no lock: the token is read right before the PUT,
# and a writer paused between the two (a GET and a PUT, milliseconds) could still land.
GENERATION = "generation"
# How long ``seal`` waits for a write in flight: a chunk's write takes milliseconds; a writer
# that holds the lock longer is a paused process.
SEAL_WAIT_S = 60.0


def _generation(lay: Layout) -> str | None:
    """The token of the canvas's open generation; None when sealed or gone."""
    meta = location.read_text(location.join(lay.path, "zarr.json"))
    try:
        return json.loads(meta).get("attributes", {}).get(GENERATION) if meta else None
    except ValueError:
        return None


@contextlib.contextmanager
def _folder_lock(path: str, exclusive: bool):
    """The array folder ``path`` locked (flock) for the block: shared by chunk writers,
    exclusive while its generation changes (waiting SEAL_WAIT_S at most). FileNotFoundError
    where the folder is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if exclusive:
            wait_s = SEAL_WAIT_S
            end = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > end:
                        raise StoreError(
                            f"canvas {path}: a chunk write has held it for {wait_s:.0f} s (a "
                            "paused or hung worker process); stop that worker, then run the "
                            "same command again to resume") from None
                    time.sleep(0.01)
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)                # and the lock with it


def open_generation(path: str, token: str | None) -> None:
    """The canvas at ``path`` (a folder's or a URL's array) := generation ``token`` (None:
    sealed), once the writes in flight under the one before are done: from then on only
    tasks that carry ``token`` write into it (see GENERATION)."""
    meta_path = location.join(path, "zarr.json")

    def change() -> None:
        meta = json.loads(location.read_text(meta_path))
        meta["attributes"] = {**meta.get("attributes", {}), GENERATION: token}
        location.write_text(meta_path, json.dumps(meta, indent=2))

    if location.is_url(path):
        change()
        return
    with _folder_lock(path, exclusive=True):
        change()


def seal(path: str) -> None:
    """No write lands in the canvas at ``path`` any more (a pass over it is done, or it is
    replaced or dropped); nothing where there is no canvas."""
    try:
        if location.read_text(location.join(path, "zarr.json")) is not None:
            open_generation(path, None)
    except FileNotFoundError:
        pass


def write(lay: Layout, iy: int, ix: int, a: np.ndarray, generation: str | None = None) -> None:
    """Chunk (iy, ix) := ``a``, (c, h, w) of the array's dtype, at most a chunk in size (an
    edge chunk's outside is filled, as zarr stores it). ``generation``: the canvas's token
    for the pass the task belongs to; the write is dropped (``StaleWrite``) where the canvas
    is in another (see GENERATION)."""
    ch, cw = lay.chunk
    if a.shape[1:] != (ch, cw):
        full = np.full((lay.shape[0], ch, cw), lay.fill, dtype=lay.dtype)
        full[:, :a.shape[1], :a.shape[2]] = a
        a = full
    a = np.ascontiguousarray(a, dtype=lay.dtype)
    data = lay.codec.encode(a) if lay.codec is not None else a
    path = lay.file(iy, ix)
    if lay.remote:                          # one PUT: readers see the old chunk or the new
        cache = getattr(_local, "cache", None)
        if cache is not None:           # read back, the chunk is what was written
            cache.put(path, a)
        pending = getattr(_local, "pending", None)
        put = functools.partial(_put, lay, path, memoryview(data).cast("B"), generation)
        if pending is None:
            put()
        else:
            pending.append(_io_pool().submit(put))
        return
    if generation is None:
        _write_file(path, data, lay.codec is not None)
        return
    try:
        with _folder_lock(lay.path, exclusive=False):
            if _generation(lay) != generation:
                raise StaleWrite(f"{path}: its canvas is no longer in the pass of this task")
            _write_file(path, data, lay.codec is not None, below=lay.path)
    except FileNotFoundError:
        raise StaleWrite(f"{path}: its canvas is gone") from None


def _put(lay: Layout, url: str, data: memoryview, generation: str | None) -> None:
    """``write``'s PUT of one chunk object, once its canvas's token is checked."""
    if generation is not None and _generation(lay) != generation:
        raise StaleWrite(f"{url}: its canvas is no longer in the pass of this task")
    objects.put(url, data)


def _write_file(path: str, data, compressed: bool, below: str | None = None) -> None:
    """The chunk file at ``path`` := ``data``. ``below``: the array's folder, which this
    makes no folder above (a canvas removed while a late write waits is not made again)."""
    # A raw chunk is always whole: an existing file is overwritten in place, keeping its pages
    # (see Store.canvas); a compressed one may shrink, so it is truncated. One os.open for new
    # and existing files alike costs less system time than Python's open() trying "r+b",
    # then "wb" with a makedirs.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if compressed else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:               # the chunk-row's folder is new
        if below is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        else:                               # c/, c/0/, c/0/<y>/: never the array's folder
            parts = os.path.relpath(os.path.dirname(path), below).split(os.sep)
            for k in range(1, len(parts) + 1):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(os.path.join(below, *parts[:k]))
        fd = os.open(path, flags, 0o666)
    try:
        with memoryview(data).cast("B") as m:
            done = 0
            while done < len(m):
                done += os.write(fd, m[done:])
    finally:
        os.close(fd)


@contextlib.contextmanager
def task_io():
    """One task's I/O with object storage (a pass's tiles: ``engine.run_tiles``), on this
    thread, for the block's length:

    - ``write`` returns at once, its PUT on the I/O threads; the block ends when all are done
      (the first failure raised). A tile's PUT (12-35 ms on loopback, more to a cloud) then
      overlaps the next tile's read and processing instead of following it. What a task
      writes is still all written when it returns. The arrays given to ``write`` must not
      change within the block (a pass's tiles are fresh arrays).
    - ``read`` fetches each chunk once while it is among the last ``TASK_CHUNKS`` read: a
      tile's window shares two chunks with the one before it in its row. The arrays a pass
      reads (the previous canvas, the sources) do not change while it runs, and a chunk
      this task writes reads back as written."""
    outer = getattr(_local, "pending", None), getattr(_local, "cache", None)
    _local.pending, _local.cache = [], _Chunks(TASK_CHUNKS)
    try:
        yield
        for f in _local.pending:
            f.result()
    finally:
        for f in _local.pending:        # on failure: no PUT outlives the block
            f.cancel() or f.exception()
        _local.pending, _local.cache = outer
