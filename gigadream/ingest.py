"""Stream an image file into the store's source level 0, then build the octave pyramid.

The file is decoded once, top to bottom (pyvips ``access='sequential'``), in strips of
``FETCH_ROWS`` rows; a writer thread cuts each full chunk-row strip into chunks and writes them
while the next is decoded. Peak memory is a few strips, whatever the image size.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from . import chunks
from .errors import InputError
from .resample import octave_shape
from .store import SOURCE_CHUNK, ArrayView, Store, downsample_tile, planar
from .tiling import Box, grid

# Measured on a 20000×15000 JPEG: libvips holds ~3 requests of buffers per fetch, so peak RSS
# grows with the fetch height (64 rows: 309 MB, 128: 353 MB, 512: 660 MB) at equal speed.
FETCH_ROWS = 64


def _vips():
    import pyvips
    # gigadream never repeats an operation; libvips' cache would only hold decoders (and
    # their buffers, which grow with the image width) alive after their last use.
    pyvips.cache_set_max(0)
    return pyvips


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith("VipsForeignLoad")] or text
    return (lines[-1] if lines else e.__class__.__name__).strip()


def open_image(path: Path, role: str = "input"):
    """The image at ``path`` as 8-bit sRGB, 3 bands, unrotated, for sequential reading.
    ``role`` names the file in errors (input, style image)."""
    pyvips = _vips()
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
        raise InputError(f"{role} {path} cannot be read as an image ({_first_line(e)}); "
                         "give a JPEG, PNG, TIFF, WebP or other image libvips reads")
    return to_srgb(im)


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


def fingerprint(path: Path) -> dict:
    """Identity of the input: size, mtime, and a hash of its first and last MiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


def _stream(im, target: ArrayView, on_rows: Callable[[int], None] | None, path: Path) -> None:
    """Decode ``im`` top to bottom into ``target``, one chunk-row at a time: a writer thread
    stores one strip while the next is decoded, so two strips are alive at most."""
    pyvips = _vips()
    h, w = target.shape
    region = pyvips.Region.new(im)
    lay = target.layout
    assert lay is not None and lay.chunk[0] == SOURCE_CHUNK, "sources are gigadream's layout"

    def write(y: int, strip: np.ndarray) -> None:
        """One chunk-row: the strip cut into chunks, (C, h, w) each, encoded in parallel."""
        cw, chw = lay.chunk[1], planar(strip)
        chunks.write_many(lay, [(y // SOURCE_CHUNK, x // cw, chw[:, :, x:x + cw])
                                for x in range(0, w, cw)])

    with concurrent.futures.ThreadPoolExecutor(1) as writer:
        writing = None
        for y0 in range(0, h, SOURCE_CHUNK):
            rows = min(SOURCE_CHUNK, h - y0)
            strip = np.empty((rows, w, 3), dtype=np.uint8)
            for y in range(0, rows, FETCH_ROWS):
                n = min(FETCH_ROWS, rows - y)
                try:
                    data = region.fetch(0, y0 + y, w, n)
                except pyvips.Error as e:
                    raise InputError(f"input {path} cannot be decoded past row {y0 + y} "
                                     f"({_first_line(e)}); the file may be truncated or damaged")
                strip[y:y + n] = np.frombuffer(data, dtype=np.uint8).reshape(n, w, 3)
            if writing is not None:
                writing.result()                 # raises the writer's error, if any
            writing = writer.submit(write, y0, strip)
            if on_rows:
                on_rows(rows)
        if writing is not None:
            writing.result()


def ingest(path: Path, store: Store, on_rows: Callable[[int], None] | None = None) -> ArrayView:
    """Level 0 of ``store``'s source pyramid from the image file at ``path``, upright."""
    path = Path(path)
    im = open_image(path)
    orient = orientation(im)
    shape = (im.height, im.width)
    if orient == 1:
        level0 = store.create_source(shape)
        _stream(im, level0, on_rows, path)
    else:  # rotating needs random access: stream as stored, then re-tile upright
        raw = store.create_source(shape, "source/raw")
        _stream(im, raw, on_rows, path)
        level0 = store.create_source(upright_shape(shape, orient))
        for tile in grid(level0.shape, SOURCE_CHUNK):
            orient_tile(raw, level0, tile, orient)
        shutil.rmtree(store.path / "source" / "raw")
    store.write_ome(1.0, 1)
    store.update_record(ingested=True, input={"name": path.name, **fingerprint(path)},
                        shape=list(level0.shape), pyramid={"levels": 1, "scale": None})
    return level0


def build_pyramid(store: Store, octaves: int, scale: float) -> list[ArrayView]:
    """Source levels 0..octaves-1, each ``scale`` times smaller than the one before, each
    resized from its finer neighbour in chunk-aligned tasks on a pool of this process's
    threads (numpy and file I/O release the GIL). Reuses a matching pyramid."""
    from .engine import map_tasks

    have = store.record().get("pyramid", {})
    base = store.source(0)
    levels = [base]
    if have.get("scale") == scale and have.get("levels", 1) >= octaves:
        return [store.source(k) for k in range(octaves)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as executor:
        for k in range(1, octaves):
            target = store.create_source(octave_shape(base.shape, scale, k), f"source/{k}")
            tasks = [(levels[-1], target, t) for t in grid(target.shape, SOURCE_CHUNK)]
            map_tasks(executor, _downsample, tasks)
            levels.append(target)
    store.write_ome(scale, octaves)
    store.update_record(pyramid={"levels": octaves, "scale": scale})
    return levels


def _downsample(args) -> dict:
    return downsample_tile(*args)
