"""Stream an image file into the store's source pyramid: level 0 and the octave levels.

The file is decoded once, top to bottom (pyvips ``access='sequential'``), by libvips on its own
threads; each chunk-row of level 0 is laid out and written as soon as its rows are in. The
octave levels are made from the same rows on another thread (``_Pyramid``): each is libvips'
resize of its finer neighbour, computed band by band as the rows it needs arrive. Peak memory
is a window of rows per level (``LEAD`` rows of level 0), a chunk-row per octave level and
libvips' strip buffers, whatever the image's height.

A 360° panorama (x circular, ``wrap``) gets its levels from ``resample``'s filter instead, chunk
by chunk once level 0 is in (``wrapped_levels``): its taps reach across the left and right edges,
which libvips' resize cannot do (it repeats the edge pixels, and padding the image with the
other side shifts its output grid by a fraction of a pixel unless the padding is a multiple
of in/gcd(in, out) columns: often the whole width).
"""
from __future__ import annotations

import hashlib
import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import metadata
from .errors import ConfigError, InputError
from .resample import octave_shape
from .storage import chunks, location, objects
from .storage.store import SOURCE_CHUNK, Store
from .storage.views import ArrayView, downsample_tile
from .text import error_line
from .tiling import Box, grid

# The pyramid's filter: libvips' "linear" kernel widened by the scale is a triangle, the
# antialiased bilinear of resample.py (the two agree within 2 levels); gap=0 keeps it one
# triangle at every scale (libvips would box-shrink by 2 first at scale 4).
PYRAMID_KERNEL = "linear"
# A level is fetched from libvips in tiles of BAND_ROWS × BAND_COLS output pixels: full-width
# bands cost 1.5-2.5× the CPU time of 1024-2048 px wide ones (their intermediate rows outgrow
# the caches).
BAND_ROWS = 64
BAND_COLS = 4 * SOURCE_CHUNK


def _vips():
    import pyvips
    # gigadream never repeats an operation; libvips' cache would only hold decoders (and
    # their buffers, which grow with the image width) alive after their last use.
    pyvips.cache_set_max(0)
    return pyvips


def _vips_error(e: Exception) -> str:
    """libvips' reason, in one line: the last of its message, past its loader's name."""
    return error_line(e, skip=("VipsForeignLoad",), last=True)


def open_image(path: Path | str, role: str = "input"):
    """The image at ``path`` (a file, or an object's URL: ``objects.open_source`` streams
    it by ranged GETs, never whole) as 8-bit sRGB, 3 bands, unrotated, for sequential
    reading. ``role`` names the file in errors (input, style image)."""
    pyvips = _vips()
    if location.is_url(path):       # streamed by ranged GETs, where a file is opened by name
        return to_srgb(_open_object(path, role))
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} {path} not found; check the path")
    if path.is_dir():
        raise InputError(f"{role} {path} is a folder; give an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{role} {path} is empty (0 bytes); give an image file")
    try:
        im = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="truncated")
    except pyvips.Error as e:
        raise InputError(f"{role} {path} cannot be read as an image ({_vips_error(e)}); "
                         "give a JPEG, PNG, TIFF, WebP or other image libvips reads")
    return to_srgb(im)


def _open_object(url: str, role: str):
    """The image object at ``url``, decoded as it streams in."""
    pyvips = _vips()
    found = objects.head(url, role if role in objects.ROLES else "input")
    if found is None:
        raise InputError(f"{role} {url} not found; check the URL")
    if found["size"] == 0:
        raise InputError(f"{role} {url} is empty (0 bytes); give an image")
    try:
        return pyvips.Image.new_from_source(objects.open_source(url), "", access="sequential",
                                            fail_on="truncated")
    except pyvips.Error as e:
        raise InputError(f"{role} {url} cannot be read as an image ({_vips_error(e)}); "
                         "give a JPEG, PNG, TIFF, WebP or other image libvips reads")


def _is_srgb_profile(profile: bytes) -> bool:
    return b"sRGB" in profile[:4096] or b"IEC 61966" in profile[:4096]


def to_srgb(im):
    """Normalise what users feed: ICC profiles (CMYK, Adobe RGB…), alpha, 16-bit, grey."""
    if im.get_typeof("icc-profile-data") and not _is_srgb_profile(im.get("icc-profile-data")):
        im = im.icc_transform("srgb", embedded=True, intent="perceptual")
    if im.hasalpha():
        im = im.flatten(background=[255] * (im.bands - 1))
    if im.interpretation != "srgb" or im.format != "uchar":
        im = im.colourspace("srgb")
    if im.bands > 3:
        im = im.extract_band(0, n=3)
    if im.format != "uchar":
        im = im.cast("uchar")
    return im


def orientation(im) -> int:
    return int(im.get("orientation")) if im.get_typeof("orientation") else 1


# EXIF orientation → (transpose, flip rows, flip columns), applied in that order to the stored
# pixels gives the upright image.
ORIENT = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
          4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
          7: (True, True, True), 8: (True, True, False)}


def upright_shape(shape: tuple[int, int], orient: int) -> tuple[int, int]:
    return shape[::-1] if ORIENT[orient][0] else shape


def image_shape(path: Path, role: str = "input") -> tuple[int, int]:
    """The upright (h, w) of the image at ``path``, from its header: fails fast on a bad
    file and decodes nothing."""
    im = open_image(path, role)
    return upright_shape((im.height, im.width), orientation(im))


GPANO = "http://ns.google.com/photos/1.0/panorama/"     # XMP namespace of Google's GPano


def xmp_projection(xmp: bytes) -> str | None:
    """GPano:ProjectionType of an XMP packet (as an attribute of its rdf:Description, as
    PTGui and Hugin write it, or as an element), or None."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(xmp.rstrip(b"\0 \t\r\n"))
    except ET.ParseError:
        return None
    name = f"{{{GPANO}}}ProjectionType"
    for el in root.iter():
        if name in el.attrib:
            return el.attrib[name].strip()
        if el.tag == name:
            return (el.text or "").strip()
    return None


def wrap_setting(setting: str, path: Path, shape: tuple[int, int]) -> tuple[str, str]:
    """``tiling.wrap`` resolved for the input at ``path`` of upright ``shape``: (x or none,
    why). auto is x for an equirectangular 360° panorama: its XMP says so (GPano, which
    stitchers write) and it is twice as wide as high, to a pixel of rounding."""
    h, w = shape
    if setting == "x" and w < 2:
        raise ConfigError(f"tiling.wrap: x joins the image's left and right edges, but input "
                          f"{input_name(path)} is {w} px wide; set tiling.wrap=none")
    if setting != "auto":
        return setting, "as set"
    im = open_image(path)
    xmp = im.get("xmp-data") if im.get_typeof("xmp-data") else b""
    projection = xmp_projection(xmp) if xmp else None
    if (projection or "").lower() != "equirectangular":
        return "none", "auto: the input's XMP says no equirectangular projection"
    if abs(w - 2 * h) > 1:
        return "none", f"auto: its XMP says equirectangular, but {w}×{h} px is not 2:1"
    return "x", "auto: a 360° panorama, its XMP says equirectangular and it is 2:1"


def orient_tile(raw: ArrayView, target: ArrayView, tile, orient: int) -> None:
    """One chunk of the upright image from the stored (raw) orientation."""
    transpose, flip_y, flip_x = ORIENT[orient]
    h, w = target.shape
    b = tile.core
    # Undo the flips (in upright coordinates), then the transpose, to find the raw window.
    y0, y1 = (h - b.y1, h - b.y0) if flip_y else (b.y0, b.y1)
    x0, x1 = (w - b.x1, w - b.x0) if flip_x else (b.x0, b.x1)
    src = Box(x0, x1, y0, y1) if transpose else Box(y0, y1, x0, x1)
    a = raw.array[:, src.y0:src.y1, src.x0:src.x1]
    if transpose:
        a = a.transpose(0, 2, 1)
    if flip_y:
        a = a[:, ::-1]
    if flip_x:
        a = a[:, :, ::-1]
    target.write(tile, a)


def input_name(path: Path | str) -> str:
    """The input's name as the run record and messages give it."""
    return location.name(path)


def fingerprint(path: Path | str) -> dict:
    """Identity of the input: size, mtime, and a hash of its first and last MiB. An object's:
    its size and ETag (a HEAD) and the same hash, from two ranged GETs."""
    if location.is_url(path):       # an object has an ETag and no mtime
        found = objects.head(path)
        if found is None:
            raise InputError(f"input {path} not found; check the URL")
        size = found["size"]
        ends = [(0, min(size, 1 << 20))] + ([(size - (1 << 20), size)] if size > 2 << 20 else [])
        h = hashlib.sha256()
        for part in objects.get_ranges(path, ends):
            h.update(part)
        return {"size": size, "etag": found["etag"], "sha256_ends": h.hexdigest()}
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


def _stream(im, target: ArrayView, on_rows: Callable[[int], None] | None, path: Path,
            levels: Sequence[ArrayView] = ()) -> None:
    """Decode ``im`` top to bottom into ``target``, and into ``levels`` (each octave_shape
    of the one before) the pyramid made from the same rows as they arrive.

    libvips decodes on its threads and hands the raw pixels to ``_Stream`` (``rawsave`` to a
    custom target); this thread lays out each chunk-row of level 0 as soon as its rows are
    in and writes its files, while a second thread makes the pyramid. Decode and our copies
    overlap so; pulling rows with ``Region.fetch`` on this thread would run them one after
    the other."""
    pyvips = _vips()
    lay = target.layout
    assert lay is not None and lay.chunk == (SOURCE_CHUNK, SOURCE_CHUNK), "gigadream's layout"
    h, w = target.shape
    stream = _Stream(h, w, readers=2 if levels else 1)
    sink = pyvips.TargetCustom()
    sink.on_write(stream.take)
    threads = [threading.Thread(target=stream.run, args=(im.rawsave_target, sink),
                                name="gigadream-decode", daemon=True)]
    pyramid = None
    if levels:
        pyramid = _Pyramid(stream.rows, levels, release=lambda row: stream.release(1, row))
        threads.append(threading.Thread(target=pyramid.follow, args=(stream,),
                                        name="gigadream-pyramid", daemon=True))
    for t in threads:
        t.start()
    ok = False
    try:
        _write_level0(stream, lay, on_rows)
        ok = True
    finally:
        if not ok:
            stream.stop()                   # libvips and the pyramid stop where they are
        for t in threads:
            t.join()
    if pyramid is not None and pyramid.error is not None:
        raise pyramid.error
    if stream.error is not None:
        if isinstance(stream.error, pyvips.Error):
            raise InputError(f"input {path} cannot be decoded past row {stream.decoded} "
                             f"({_vips_error(stream.error)}); the file may be truncated or "
                             "damaged")
        raise stream.error
    if stream.decoded < h:                  # libvips said nothing, yet rows are missing
        raise InputError(f"input {path} ended after row {stream.decoded} of {h}; "
                         "the file may be truncated or damaged")


def _write_level0(stream: _Stream, lay: chunks.Layout, on_rows) -> None:
    """Level 0's chunk files, a chunk-row as soon as its rows are in, until the stream ends
    or stops."""
    h, w, s = stream.rows.h, stream.rows.w, SOURCE_CHUNK
    chunk = np.zeros((3, s, s), dtype=np.uint8)
    for iy, y0 in enumerate(range(0, h, s)):
        y1 = min(h, y0 + s)
        if stream.wait(y1) < y1:
            return                          # ended early or stopped: the caller says why
        for ix, x0 in enumerate(range(0, w, s)):
            x1 = min(w, x0 + s)
            if (y1 - y0, x1 - x0) != (s, s):
                chunk[:] = 0                # outside the image: zarr's fill
            _lay_out(chunk[None], 0, 0, stream.rows.pixels[y0:y1, x0:x1])
            chunks.write(lay, iy, ix, chunk)
        stream.release(0, y1)
        if on_rows:
            on_rows(y1 - y0)


def _lay_out(row: np.ndarray, y: int, x: int, lines: np.ndarray) -> None:
    """Interleaved pixels ``lines`` (k, n, 3) into chunk-row ``row`` (nx, 3, S, S) at its
    rows y..y+k and image columns x..x+n, x a multiple of S."""
    k, n, s = lines.shape[0], lines.shape[1], SOURCE_CHUNK
    ix, full = x // s, n // s
    if full:
        row[ix:ix + full, :, y:y + k] = (lines[:, :full * s].reshape(k, full, s, 3)
                                          .transpose(1, 3, 0, 2))
    if full * s < n:
        row[ix + full, :, y:y + k, :n - full * s] = lines[:, full * s:].transpose(2, 0, 1)


# libvips may run this many rows ahead of the slowest reader of the stream: level 0's writer
# holds a chunk-row while the next one arrives, the pyramid a step of rows.
PYRAMID_STEP = 128
LEAD = 2 * SOURCE_CHUNK + PYRAMID_STEP
# Readers wait for row counts that are multiples of this (or the whole image); libvips wakes
# them only when it passes one, not at each of its writes (one line each).
GRAIN = 32


class _Stream:
    """The raw (h, w, 3) uint8 pixels that libvips writes to a target in pieces of any length
    on its own thread (``take``), kept in ``rows`` for the threads that read them (level 0's
    writer, the pyramid). Each reader says which rows it no longer needs (``release``);
    libvips waits while it is ``LEAD`` rows ahead of the slowest (then a piece of any size
    goes in), and the rows that no reader needs go back to the kernel."""

    def __init__(self, h: int, w: int, readers: int):
        self.rows = _Rows(h, w)
        self._flat = self.rows.pixels.reshape(-1)
        self._line = w * 3
        self.received = 0                           # bytes
        self.error: BaseException | None = None
        self._kept = [0] * readers                  # per reader: the rows it released
        self._ended = self._stopped = False
        self._cond = threading.Condition()

    @property
    def decoded(self) -> int:
        """Whole image rows received so far."""
        return self.received // self._line

    def run(self, save, sink) -> None:
        """``save(sink)`` on this thread, then the end of the stream (its error, if any, in
        ``error``)."""
        try:
            save(sink)
        except BaseException as e:  # noqa: BLE001 -- handed to the reading threads
            if self.error is None:
                self.error = e
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def take(self, data) -> int:
        """The target's write callback: ``data`` appended to the stream; -1 stops libvips."""
        try:
            src = np.frombuffer(data, dtype=np.uint8)
            n = min(src.size, self._flat.size - self.received)  # past the last line: ignored
            with self._cond:
                while not self._stopped and self.decoded >= min(self._kept) + LEAD:
                    self._cond.wait()
                if self._stopped:
                    return -1
            before = self.decoded
            self._flat[self.received:self.received + n] = src[:n]
            with self._cond:
                self.received += n
                if self.decoded // GRAIN != before // GRAIN or self.decoded == self.rows.h:
                    self._cond.notify_all()
            return src.size
        except BaseException as e:  # noqa: BLE001 -- a callback must not raise into libvips
            self.error = e
            return -1

    def wait(self, rows: int) -> int:
        """Until ``rows`` rows (a multiple of GRAIN, or all) are in, the stream ended, or it
        stopped; the rows in."""
        with self._cond:
            while self.decoded < rows and not (self._ended or self._stopped):
                self._cond.wait()
            return self.decoded

    @property
    def stopped(self) -> bool:
        return self._stopped

    def release(self, reader: int, row: int) -> None:
        """``reader`` never reads the rows above ``row`` again."""
        with self._cond:
            self._kept[reader] = max(self._kept[reader], row)
            self.rows.free_below(min(self._kept))
            self._cond.notify_all()

    def stop(self) -> None:
        """Whatever the other threads' state: libvips stops at its next write, readers stop
        waiting."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


# Rows go back to the kernel in whole huge pages (2 MiB, the x86-64 and arm64 size): each
# page a stream first touches is a fault and a zeroing, which huge pages (madvise(
# MADV_HUGEPAGE)) halve.
HUGE_PAGE = 2 << 20


class _Rows:
    """An (h, w, 3) uint8 image that arrives top to bottom, for libvips to read as a memory
    image (``image``). It lies in an anonymous mapping of the whole size that the process
    only reserves: rows are written once, in order, and the pages of rows no longer needed
    are handed back to the kernel (``free_below``), so a window of rows is resident,
    whatever h."""

    def __init__(self, h: int, w: int):
        self.h, self.w, self.line = h, w, w * 3
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        self._map = mmap.mmap(-1, h * self.line, flags=flags)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self.pixels = np.frombuffer(self._map, dtype=np.uint8).reshape(h, w, 3)
        self.image = _vips().Image.new_from_memory(self._map, w, h, 3, "uchar")
        self._freed = 0                             # bytes handed back, from the start

    def free_below(self, row: int) -> None:
        """Rows above ``row`` are never read again: the huge pages they fill go back."""
        end = min(max(row, 0), self.h) * self.line // HUGE_PAGE * HUGE_PAGE
        if end > self._freed:
            self._map.madvise(mmap.MADV_DONTNEED, self._freed, end - self._freed)
            self._freed = end


class _Level:
    """One octave level, libvips' resize of the finer level's rows (``parent``) to
    ``target``'s shape, made as those rows arrive: bands of output rows are fetched as soon
    as the input rows under their filter have arrived, laid out chunk-row by chunk-row, and
    each chunk-row is written when whole. ``rows`` keeps the level's own rows for the next
    coarser level, where there is one. ``release(row)``: the parent's rows above ``row``
    are never read again."""

    def __init__(self, parent: _Rows, target: ArrayView, keep_rows: bool,
                 release: Callable[[int], None]):
        h, w = target.shape
        self.parent, self.target, self.h, self.w = parent, target, h, w
        self.release = release
        image = parent.image.resize(w / parent.w, vscale=h / parent.h, kernel=PYRAMID_KERNEL,
                                    gap=0)
        if (image.height, image.width) != (h, w):
            raise AssertionError(f"libvips resized {parent.h}×{parent.w} to "
                                 f"{image.height}×{image.width}, not {h}×{w}")
        self.region = _vips().Region.new(image)
        self.image = image          # the region's pipeline: kept alive with it
        # Output row y is centred on input row (y + 0.5)·f - 0.5 and the triangle reaches f
        # rows either side; 2 more rows cover libvips' rounding of its taps.
        self.f = parent.h / h
        self.reach = math.ceil(self.f) + 2
        self.made = 0                                   # output rows made so far
        self.rows = _Rows(h, w) if keep_rows else None
        self._chunks = np.zeros((-(-w // SOURCE_CHUNK), 3, SOURCE_CHUNK, SOURCE_CHUNK),
                                dtype=np.uint8)

    def advance(self, arrived: int) -> int:
        """Make the output rows that the parent's first ``arrived`` rows determine; the
        rows made so far."""
        if arrived >= self.parent.h:
            n = self.h
        else:    # the rows y with (y + 0.5)·f - 0.5 + reach < arrived
            n = min(self.h, max(self.made, math.ceil((arrived - self.reach + 0.5) / self.f
                                                     - 0.5)))
        s = SOURCE_CHUNK
        while self.made < n:
            y0 = self.made
            y1 = min(n, y0 + BAND_ROWS, (y0 // s + 1) * s)
            self._band(y0, y1)
            self.made = y1
            if y1 % s == 0 or y1 == self.h:
                self._write(y0 // s, y1 - y0 // s * s)
        # Output rows from ``made`` on start reading at (made + 0.5)·f - 0.5 - reach.
        self.release(math.floor((self.made + 0.5) * self.f - 0.5) - self.reach)
        return self.made

    def _band(self, y0: int, y1: int) -> None:
        for x0 in range(0, self.w, BAND_COLS):
            x1 = min(self.w, x0 + BAND_COLS)
            tile = np.frombuffer(self.region.fetch(x0, y0, x1 - x0, y1 - y0), dtype=np.uint8)
            tile = tile.reshape(y1 - y0, x1 - x0, 3)
            if self.rows is not None:
                self.rows.pixels[y0:y1, x0:x1] = tile
            _lay_out(self._chunks, y0 % SOURCE_CHUNK, x0, tile)

    def _write(self, iy: int, rows: int) -> None:
        if rows < SOURCE_CHUNK:                         # the last chunk-row: below the image
            self._chunks[:, :, rows:] = 0
        lay = self.target.layout
        for ix in range(self._chunks.shape[0]):
            chunks.write(lay, iy, ix, self._chunks[ix])


class _Pyramid:
    """Levels 1, 2, … of a source pyramid, made while level 0's rows arrive in ``base``:
    each level from its finer neighbour. ``release`` as ``_Level``'s, for ``base``."""

    def __init__(self, base: _Rows, targets: Sequence[ArrayView],
                 release: Callable[[int], None]):
        self.levels: list[_Level] = []
        self.error: BaseException | None = None
        parent = base
        for k, target in enumerate(targets):
            self.levels.append(_Level(parent, target, keep_rows=k < len(targets) - 1,
                                      release=release if k == 0 else parent.free_below))
            parent = self.levels[-1].rows

    def advance(self, arrived: int) -> None:
        """Level 0's first ``arrived`` rows are in ``base``: make what they determine."""
        for level in self.levels:
            arrived = level.advance(arrived)

    def follow(self, stream: _Stream) -> None:
        """Make the levels as ``stream``'s rows arrive, PYRAMID_STEP rows at a time (on a
        thread of its own: an error lands in ``error`` and stops the stream)."""
        h, seen = stream.rows.h, 0
        try:
            while seen < h:
                got = stream.wait(min(h, (seen // PYRAMID_STEP + 1) * PYRAMID_STEP))
                if got <= seen or stream.stopped:
                    return                  # ended early or stopped: _stream says why
                self.advance(got)
                seen = got
        except BaseException as e:  # noqa: BLE001 -- handed to _stream
            self.error = e
            stream.stop()
        finally:                            # libvips never waits for this thread again
            stream.release(1, h)


def _pyramid_record(levels: int, scale: float | None, wrap: bool) -> dict:
    """The run record's note of the pyramid the store holds (``wrap`` only where it is)."""
    return {"levels": levels, "scale": scale, **({"wrap": True} if wrap else {})}


def _pyramid_shapes(shape: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    return [octave_shape(shape, scale, k) for k in range(1, octaves)]


def ingest(path: Path, store: Store, on_rows: Callable[[int], None] | None = None,
           octaves: int = 1, scale: float | None = None, wrap: bool = False) -> ArrayView:
    """The source pyramid of ``store`` from the image at ``path`` (a file or a URL),
    upright: level 0 and ``octaves - 1`` levels each ``scale`` times smaller than the one
    before (octave_shape), all from one decode. ``wrap``: x is circular, the levels are made
    across its edge (``wrapped_levels``). Returns level 0."""
    path = location.store_location(str(path))
    im = open_image(path)
    orient = orientation(im)
    shape = (im.height, im.width)
    store.update_record(ingested=False, pyramid={"levels": 0, "scale": None})
    # Rotating needs random access: the levels are streamed as stored, then re-tiled upright.
    prefix = "source/" if orient == 1 else "source/raw/"
    raw = [store.create_source(shape, f"{prefix}0")]
    if not wrap:
        raw += [store.create_source(s, f"{prefix}{k}")
                for k, s in enumerate(_pyramid_shapes(shape, octaves, scale), start=1)]
    _stream(im, raw[0], on_rows, path, raw[1:])
    levels = raw
    if orient != 1:
        levels = []
        for k, r in enumerate(raw):
            level = store.create_source(upright_shape(r.shape, orient), f"source/{k}")
            for tile in grid(level.shape, SOURCE_CHUNK):
                orient_tile(r, level, tile, orient)
            levels.append(level)
        store.remove("source/raw")
    if wrap:
        levels = wrapped_levels(store, levels[0], octaves, scale)
    _drop_levels_from(store, octaves)
    store.write_ome(scale or 1.0, octaves)
    store.keep_metadata(metadata.from_image(im, transposed=ORIENT[orient][0]))
    store.update_record(ingested=True, input={"name": input_name(path), **fingerprint(path)},
                        shape=list(levels[0].shape),
                        pyramid=_pyramid_record(octaves, scale, wrap))
    return levels[0]


def wrapped_levels(store: Store, base: ArrayView, octaves: int,
                   scale: float | None) -> list[ArrayView]:
    """Source levels 1..octaves-1 of a circular x, each from its finer neighbour by
    ``resample``'s antialiased triangle, chunk by chunk on a pool of threads (numpy releases
    the GIL in the filter's arithmetic); returns all levels, level 0 (``base``) first."""
    levels = [base]
    with ThreadPoolExecutor(os.cpu_count() or 1, "gigadream-pyramid") as pool:
        for k, s in enumerate(_pyramid_shapes(base.shape, octaves, scale), start=1):
            parent = ArrayView(base.root, levels[-1].name, levels[-1].shape, wrap=True,
                               run=base.run)
            target = store.create_source(s, f"source/{k}")
            for _ in pool.map(lambda t: downsample_tile(parent, target, t),
                              grid(s, SOURCE_CHUNK)):
                pass
            levels.append(target)
    return levels


def _drop_levels_from(store: Store, first: int) -> None:
    """Remove source levels ``first`` and coarser, left by an earlier pyramid."""
    k = first
    while store.exists(f"source/{k}"):
        store.remove(f"source/{k}")
        k += 1


def build_pyramid(store: Store, octaves: int, scale: float,
                  wrap: bool = False) -> list[ArrayView]:
    """Source levels 0..octaves-1, each ``scale`` times smaller than the one before, read
    with x circular where ``wrap``. Reuses the pyramid that ingest made where it matches;
    otherwise remakes levels 1.. from the stored level 0, as ingest makes them."""
    have = store.record().get("pyramid", {})
    if (have.get("scale") == scale and have.get("levels", 1) >= octaves
            and have.get("wrap", False) == wrap):
        return [store.source(k, wrap) for k in range(octaves)]
    base = store.source(0)
    # Until the new levels are whole, the record names level 0 alone (a kill in between
    # leaves no level that a later run would take for a finished one).
    store.update_record(pyramid={"levels": 1, "scale": None})
    if wrap:
        targets = wrapped_levels(store, base, octaves, scale)[1:]
    else:
        targets = [store.create_source(s, f"source/{k}")
                   for k, s in enumerate(_pyramid_shapes(base.shape, octaves, scale), start=1)]
    if targets and not wrap:
        rows = _Rows(*base.shape)
        pyramid = _Pyramid(rows, targets, release=rows.free_below)
        h, w = base.shape
        for y0 in range(0, h, SOURCE_CHUNK):
            y1 = min(h, y0 + SOURCE_CHUNK)
            rows.pixels[y0:y1] = base.read_uint8(Box(y0, y1, 0, w))
            pyramid.advance(y1)
    _drop_levels_from(store, octaves)
    store.write_ome(scale, octaves)
    store.update_record(pyramid=_pyramid_record(octaves, scale, wrap))
    return [store.source(k, wrap) for k in range(octaves)]
