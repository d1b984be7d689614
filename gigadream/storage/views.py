"""Views of a store's images that tasks read and write by box: ``ArrayView`` (a stored
array, with the offset and wrap of a rolled canvas), ``OctaveStart`` (an octave's first
canvas, computed as it is read), and the pyramid's one task, ``downsample_tile``.

Workers receive views (a root, an array name, an offset), not open arrays, and open them on
first use; so tasks pickle small and each process opens each array once.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from . import chunks, location
from .pixels import convert, interleaved, to_uint8, to_uint16
from ..resample import resample_window
from ..tiling import Box, Tile, circular_runs

# zarr encodes chunks one at a time by default; where zarr still writes (arrays ``chunks``
# does not handle), batching halves the time. Set here, where workers' views open arrays.
zarr.config.set({"codec_pipeline.batch_size": 128})


@functools.lru_cache(maxsize=64)
def _open_array(root: str, name: str, key: tuple = ()) -> zarr.Array:
    """The zarr array ``name`` of the store at ``root``, opened once per ``key``
    (``ArrayView.key``)."""
    return zarr.open_array(store=location.zarr_store(location.join(root, name)), mode="r+")


def forget_arrays() -> None:
    """Arrays were created or removed: drop what this process cached about them. (Workers
    need not be told: what they cache is keyed by the views' ``key``.)"""
    _open_array.cache_clear()
    chunks.layout.cache_clear()


@dataclass(frozen=True)
class ArrayView:
    """An image of ``shape`` held in array ``name`` of the store at ``root``.

    Pixel (y, x) lives at (y + oy, x + ox) of the array; ``read`` returns float32 (C, h, w).
    ``wrap``: x is circular (a 360° panorama): pixel (y, x) lives at (y + oy, (x + ox) mod w),
    and a box may reach past either edge, into the other side (``tiling``).

    ``run``: the id of the run that made the store (``Store.run``); ``generation``: a canvas
    opened for a pass, the token its writes must find there (``chunks.write``). A process
    that serves several runs (a worker of a long-lived cluster) keeps what it opened by
    both (``key``): a store made again at the same path, or a canvas opened again with
    another geometry, is read afresh, never through the old one's layout.
    """

    root: str
    name: str
    shape: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    wrap: bool = False
    run: str = ""
    generation: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return self.run, self.generation

    @property
    def array(self) -> zarr.Array:
        return _open_array(self.root, self.name, self.key)

    def record(self) -> dict[str, Any]:
        """Where the view lives, for run.json; ``Store.view`` reads it back."""
        return {"name": self.name, "shape": list(self.shape), "offset": list(self.offset),
                **({"wrap": True} if self.wrap else {})}

    @property
    def layout(self) -> chunks.Layout | None:
        """The array's chunk layout for ``chunks``; None where zarr reads and writes."""
        return chunks.layout(location.join(self.root, self.name), self.key)

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
        if lay is None and self.generation is not None:    # a canvas, removed since
            raise chunks.StaleWrite(f"{location.join(self.root, self.name)}: its canvas is gone")
        (c, h, w), dtype = (lay.shape, lay.dtype) if lay else (self.array.shape, self.array.dtype)
        oy, ox = self.offset
        chunk = Box(tile.chunk.y0, min(tile.chunk.y1, h), tile.chunk.x0, min(tile.chunk.x1, w))
        at = tile.core.shift(oy, ox).relative_to(chunk)
        if at.shape == chunk.shape:
            buf = convert(core, dtype)
        else:  # an edge tile: the rest of its chunk lies outside the image
            buf = np.zeros((c, *chunk.shape), dtype=dtype)
            buf[(slice(None), *at.slices())] = core
        if lay is None:     # another layout (none of the canvases'): zarr writes, unfenced
            self.array[(slice(None), *chunk.slices())] = buf
        else:
            chunks.write(lay, chunk.y0 // lay.chunk[0], chunk.x0 // lay.chunk[1], buf,
                         self.generation)


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
