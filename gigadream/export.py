"""Canvas → JPEG or tiled BigTIFF, streamed.

libvips encodes, but it cannot pull pixels from zarr. So it reads the canvas as an uncompressed
BigTIFF that is never written anywhere (``_VirtualTiff``, a custom source): each strip is read
from the store as libvips reaches it, while libvips encodes the one before. Writing that TIFF
to a temporary file first, then encoding it, takes 1.3-1.9× as long as libvips re-encoding the
source JPEG; this way 0.8-1.1× (300 MP, the three alternated in one run), with no temporary
file on disk.

The result is written under a hidden temporary name in the output's folder and renamed over the
final name only when complete, so a final name never holds a partial image.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import struct
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from .config import ExportConfig
from .errors import OutputError
from .tiling import Box

JPEG_MAX_SIDE = 65500          # libjpeg's limit
STRIP_ROWS = 256
FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise OutputError(f"output {out}: unknown format {out.suffix or '(no extension)'!r}; "
                          "name it .jpg or .tif (BigTIFF)")
    return fmt


def check_output(out: Path, shape: tuple[int, int] | None = None, overwrite: bool = False) -> str:
    """Refuse, before any work, an output that could not be written. Returns its format."""
    out = Path(out)
    fmt = output_format(out)
    if out.is_dir():
        raise OutputError(f"output {out} is a folder; give a file name such as {out / 'dream.jpg'}")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists; pass --overwrite to replace it "
                          "or choose another name with -o")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable; choose another with -o")
    if shape is not None and fmt == "jpeg" and max(shape) > JPEG_MAX_SIDE:
        raise OutputError(f"the image is {shape[1]}×{shape[0]} px but JPEG allows at most "
                          f"{JPEG_MAX_SIDE} px a side; write a BigTIFF instead (-o "
                          f"{out.with_suffix('.tif').name})")
    return fmt


def _bigtiff_header(h: int, w: int, rows: int) -> bytes:
    """The bytes before the pixels of an uncompressed, strip-organised, 8-bit RGB BigTIFF of
    h × w px in strips of ``rows`` rows: header, the one IFD, and its strip offsets and byte
    counts. The pixels follow it, strip after strip, row-major and interleaved."""
    n = -(-h // rows)
    sizes = [min(rows, h - i * rows) * w * 3 for i in range(n)]
    ifd_at, entries = 16, 10
    offsets_at = ifd_at + 8 + entries * 20 + 8
    counts_at = offsets_at + 8 * n
    data_at = counts_at + 8 * n if n > 1 else offsets_at    # one strip: both inline
    offsets = list(itertools.accumulate(sizes[:-1], initial=data_at))
    short, long, long8 = 3, 4, 16

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack("<HHQ", tag, kind, count) + value.ljust(8, b"\0")

    def array(values: list[int], at: int) -> bytes:   # inline when it fits in the entry
        return struct.pack("<Q", values[0] if n == 1 else at)

    ifd = [entry(256, long, 1, struct.pack("<I", w)),            # ImageWidth
           entry(257, long, 1, struct.pack("<I", h)),            # ImageLength
           entry(258, short, 3, struct.pack("<3H", 8, 8, 8)),    # BitsPerSample
           entry(259, short, 1, struct.pack("<H", 1)),           # Compression: none
           entry(262, short, 1, struct.pack("<H", 2)),           # Photometric: RGB
           entry(273, long8, n, array(offsets, offsets_at)),     # StripOffsets
           entry(277, short, 1, struct.pack("<H", 3)),           # SamplesPerPixel
           entry(278, long, 1, struct.pack("<I", rows)),         # RowsPerStrip
           entry(279, long8, n, array(sizes, counts_at)),        # StripByteCounts
           entry(284, short, 1, struct.pack("<H", 1))]           # PlanarConfig: contiguous
    head = (b"II" + struct.pack("<HHHQ", 43, 8, 0, ifd_at) + struct.pack("<Q", entries)
            + b"".join(ifd) + struct.pack("<Q", 0))
    if n > 1:
        head += struct.pack(f"<{n}Q", *offsets) + struct.pack(f"<{n}Q", *sizes)
    assert len(head) == data_at
    return head


class _VirtualTiff:
    """``view`` as an uncompressed BigTIFF that exists only as libvips reads it (a custom
    source's read and seek): the header is made up front, as the strips' sizes are known,
    and each strip of pixels is read from the store when libvips reaches it, the next one
    meanwhile on a thread. Nothing is written to disk, and libvips encodes one strip while
    the next is read."""

    def __init__(self, view, on_rows: Callable[[int], None] | None = None):
        self.view, self.on_rows = view, on_rows
        h, w = view.shape
        self.head = _bigtiff_header(h, w, STRIP_ROWS)
        self.strip_bytes = STRIP_ROWS * w * 3
        self.strips = -(-h // STRIP_ROWS)
        self.size = len(self.head) + h * w * 3
        self.pos = 0
        self.error: BaseException | None = None
        self._stopped = threading.Event()
        self._ahead = concurrent.futures.ThreadPoolExecutor(1, "gigadream-export")
        self._next: tuple[int, concurrent.futures.Future] | None = None
        self._current: tuple[int, memoryview] = (-1, memoryview(b""))
        self._reported = -1

    def source(self):
        import pyvips
        src = pyvips.SourceCustom()
        src.on_read(self.read)
        src.on_seek(self.seek)
        return src

    def strip(self, i: int) -> np.ndarray:
        """Strip ``i``: (rows, w, 3) uint8, contiguous."""
        h, w = self.view.shape
        return self.view.read_uint8(Box(i * STRIP_ROWS, min(h, (i + 1) * STRIP_ROWS), 0, w))

    def read(self, n: int):
        """Up to ``n`` bytes from the current position; empty at the end, or once stopped or
        failed (``error`` says why)."""
        if self._stopped.is_set() or self.error is not None:
            return b""
        try:
            p = self.pos
            if p < len(self.head):
                out = self.head[p:p + n]
            elif p >= self.size:
                return b""
            else:
                i, off = divmod(p - len(self.head), self.strip_bytes)
                out = self._strip_bytes(i)[off:off + n]
            self.pos = p + len(out)
            return out
        except BaseException as e:  # noqa: BLE001 -- a callback must not raise into libvips
            self.error = e
            return b""

    def seek(self, offset: int, whence: int) -> int:
        self.pos = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence] + offset
        return self.pos

    def _strip_bytes(self, i: int) -> memoryview:
        if self._current[0] != i:
            if self._next is not None and self._next[0] == i:
                strip = self._next[1].result()
            else:
                strip = self.strip(i)
            self._next = (i + 1, self._ahead.submit(self.strip, i + 1)) if i + 1 < self.strips else None
            self._current = (i, memoryview(strip).cast("B"))
            if self.on_rows and i > self._reported:
                self._reported = i
                self.on_rows(strip.shape[0])
        return self._current[1]

    def close(self) -> None:
        """Stop answering reads, and end the thread that reads ahead."""
        self._stopped.set()
        self._ahead.shutdown(wait=True, cancel_futures=True)


def _alive(pid: str) -> bool:
    """Whether a process ``pid`` (from a temporary's name) still runs: its file is in use."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def _save(im, path: Path, fmt: str, cfg: ExportConfig) -> None:
    if fmt == "jpeg":
        # No optimize_coding: libjpeg then buffers every coefficient (3.5 GB at 300 MP).
        im.jpegsave(str(path), Q=cfg.quality, keep="none")
    else:
        # TIFF tiles are multiples of 16; libvips refuses to read back tiles much larger
        # than the image (a 128 px image in 512 px tiles), so small images get small tiles.
        side = min(512, -(-max(im.width, im.height) // 16) * 16)
        im.tiffsave(str(path), bigtiff=True, tile=True, tile_width=side, tile_height=side,
                    pyramid=False, compression=cfg.tiff_compression, Q=cfg.quality,
                    predictor="horizontal" if cfg.tiff_compression != "jpeg" else "none")


def export(view, out: Path, cfg: ExportConfig = ExportConfig(), *, overwrite: bool = False,
           on_rows: Callable[[int], None] | None = None) -> Path:
    """Write ``view`` (anything with ``shape`` and ``read_uint8(box)``) to ``out``.

    libvips encodes on a thread of its own, reading ``view`` as a ``_VirtualTiff``; this
    thread only waits, so Ctrl-C and SIGTERM stop an export at once (the reads stop, and
    libvips fails at its next one).
    """
    import pyvips

    out = Path(out)
    fmt = check_output(out, view.shape, overwrite)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    # an export killed outright (kill -9, power loss) leaves its partial file: clear it
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            stale.unlink(missing_ok=True)
    tiff = _VirtualTiff(view, on_rows)
    try:
        with concurrent.futures.ThreadPoolExecutor(1, "gigadream-encode") as encoder:
            saving = encoder.submit(lambda: _save(pyvips.Image.new_from_source(
                tiff.source(), "", access="sequential"), partial, fmt, cfg))
            try:
                saving.result()
            except pyvips.Error as e:
                if tiff.error is not None:
                    raise tiff.error from None
                raise OutputError(f"could not write {out}: "
                                  f"{str(e).strip().splitlines()[-1]}") from e
            finally:
                tiff.close()         # on an interrupt, libvips stops at its next read
        if tiff.error is not None:   # libvips may take a short read for the end
            raise tiff.error
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
