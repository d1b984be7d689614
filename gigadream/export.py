"""Canvas → JPEG, tiled BigTIFF (8 or 16 bits a channel) or deep zoom (.dzi, .szi, IIIF 3),
streamed.

libvips encodes, but it cannot pull pixels from zarr. So it reads the canvas as an uncompressed
BigTIFF that is never written anywhere (``_VirtualTiff``, a custom source): each strip is read
from the store as libvips reaches it, while libvips encodes the one before: an export takes
about as long as libvips re-encoding the source JPEG, with no temporary file on disk (a
temporary TIFF, written and then encoded, takes 1.3-1.9× as long). Deep zoom is libvips'
``dzsave`` reading the same source: it cuts the tiles and shrinks the next level from strips
as they arrive, so it too holds a few strips a level, whatever the image's height.

A 16-bit TIFF's strips come from the float16 canvas scaled to 0-65535 (``read_uint16``): the
fractions of a level that the passes leave are kept, never rounded to 8 bits on the way.

Every output carries sRGB's ICC profile (deep-zoom tiles too); JPEG and TIFF also carry the
input's EXIF and XMP, orientation 1 (``metadata``).

A file is written under a hidden temporary name in the output's folder and renamed over the
final name only when complete, so a final name never holds a partial image; deep zoom's files
are written in a hidden temporary folder there and moved into place when complete, the .dzi
last.

An output at a URL (``s3://bucket/key.jpg``) is a JPEG uploaded as libvips encodes it: its
bytes go from a custom target into a multipart upload (``objects.upload``), a part at a
time, and the object appears under its name only when the upload completes; a failure aborts
it. A TIFF cannot be sent so (libtiff seeks back to patch offsets into what it wrote), nor
deep zoom's many files: those are written to a folder.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from . import metadata
from .config import ExportConfig
from .errors import OutputError
from .storage import location, objects
from .tiling import Box

JPEG_MAX_SIDE = 65500          # libjpeg's limit
STRIP_ROWS = 256
FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".tif": "tiff", ".tiff": "tiff",
           ".dzi": "dz", ".szi": "szi"}
# PNG holds 2³¹ − 1 px a side (its header's), 8 or 16 bits a channel; libvips writes it row by
# row, deflating on one thread: several times a JPEG's time (profiling/code-figures.md).
PNG_MAX_SIDE = 2 ** 31 - 1
DEEP_ZOOM = ("dz", "szi", "iiif3")
KINDS = {"jpeg": "a JPEG", "png": "a PNG", "dz": "deep zoom", "szi": "deep zoom", "iiif3": "deep zoom"}


def output_format(out: Path, cfg: ExportConfig = ExportConfig()) -> str:
    """jpeg, tiff, dz (.dzi), szi or iiif3 (``export.layout``: a folder): from the name."""
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if cfg.layout == "iiif3":
        if fmt is not None:
            raise OutputError(f"output {out}: export.layout iiif3 writes a folder of tiles, "
                              f"not a {out.suffix} file; name the folder without an image "
                              f"extension (-o {out.with_suffix('').name}), or set "
                              "export.layout=dz")
        return "iiif3"
    if fmt is None:
        raise OutputError(f"output {out}: unknown format {out.suffix or '(no extension)'!r}; "
                          "name it .jpg, .png or .tif (BigTIFF), .dzi or .szi (deep zoom), or set "
                          "export.layout=iiif3 for a IIIF folder")
    return fmt


# Deep zoom layouts a browser reads from disk: the viewer page (``viewer.py``) goes beside them.
# A .szi is one zip, whose tiles a page opened from file:// cannot read: it gets none.
VIEWABLE = ("dz", "iiif3")


def viewer_files(out: Path, cfg: ExportConfig = ExportConfig()) -> tuple[Path, Path] | None:
    """(the viewer page, the input's deep zoom layer) that an export of a run's result to
    ``out`` writes beside it: ``NAME.html`` and ``NAME-input.dzi`` (or the IIIF 3 folder
    ``NAME-input``); None for the formats a page cannot show."""
    out = Path(out)
    fmt = output_format(out, cfg)
    if fmt not in VIEWABLE:
        return None
    stem = out.stem if fmt == "dz" else out.name
    return (out.with_name(stem + ".html"),
            out.with_name(stem + "-input" + (out.suffix if fmt == "dz" else "")))


def outputs(out: Path, cfg: ExportConfig = ExportConfig(), viewer: bool = False) -> list[Path]:
    """Every path that an export to ``out`` writes, first the one a viewer opens (``viewer``:
    with the viewer page and the input's layer, ``viewer_files``):

    - .jpg, .tif: the file.
    - .dzi: ``NAME.dzi`` (the Deep Zoom XML: tile size, overlap, format, size) and
      ``NAME_files/``, its tiles ``NAME_files/LEVEL/COLUMN_ROW.jpeg``, where level 0 is one
      pixel and the last level the full image.
    - .szi: ``NAME.szi``, one zip holding ``NAME/NAME.dzi`` and ``NAME/NAME_files/``.
    - iiif3: the folder ``NAME/``: ``NAME/info.json`` (id ``export.iiif_id``/NAME) and the
      tiles of IIIF Image API 3 level 0, ``NAME/X,Y,W,H/W,H/0/default.jpg``.
    """
    out = Path(out)
    own = [out, out.with_name(out.stem + "_files")] if output_format(out, cfg) == "dz" else [out]
    extra = viewer_files(out, cfg) if viewer else None
    if extra is None:
        return own
    page, layer = extra
    return own + [page] + outputs(layer, cfg)


def check_output(out: Path, shape: tuple[int, int] | None = None, overwrite: bool = False,
                 cfg: ExportConfig = ExportConfig(), viewer: bool = False) -> str:
    """Refuse, before any work, an output that could not be written, or that would replace
    something without ``overwrite`` (``viewer``: also the viewer page and the input's layer
    beside a deep zoom result, ``viewer_files``). Returns its format (``output_format``)."""
    if location.is_url(out):        # an object: a JPEG, one HEAD; a file: its folder's checks
        return _check_object_output(out, shape, overwrite, cfg)
    out = Path(out)
    fmt = output_format(out, cfg)
    if cfg.bits == 16 and fmt not in ("tiff", "png"):
        raise OutputError(f"export.bits 16 needs a TIFF or PNG output, but {out.name} is "
                          f"{KINDS[fmt]} (8 bits a channel); name it "
                          f"{out.with_suffix('.tif').name}, or set export.bits=8")
    for path in outputs(out, cfg, viewer):
        _check_replaceable(path, out, fmt, overwrite)
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


def _check_object_output(url: str, shape: tuple[int, int] | None, overwrite: bool,
                         cfg: ExportConfig) -> str:
    """``check_output`` of an output at a URL: a JPEG, its bucket there and the credentials
    taken (one HEAD), no object under its name unless ``overwrite``."""
    fmt = output_format(Path(location.name(url)), cfg)
    if fmt != "jpeg":
        raise OutputError(f"output {url}: only a JPEG is uploaded to a URL as it is written "
                          "(a TIFF's writer seeks back into what it wrote, deep zoom writes "
                          "many files); name it .jpg, or write this format to a folder")
    if shape is not None and max(shape) > JPEG_MAX_SIDE:
        raise OutputError(f"the image is {shape[1]}×{shape[0]} px but JPEG allows at most "
                          f"{JPEG_MAX_SIDE} px a side; write a BigTIFF to a folder instead")
    if objects.head(url, "output") is not None and not overwrite:
        raise OutputError(f"output {url} already exists; pass --overwrite to replace it or "
                          "choose another name with -o")
    return fmt


def _check_replaceable(path: Path, out: Path, fmt: str, overwrite: bool) -> None:
    """``path``, one of ``out``'s outputs, is free, or ``overwrite`` may replace it: a file
    by a file; a folder by a folder only where it holds deep-zoom tiles and nothing else
    (--overwrite never removes a folder of other files named by mistake)."""
    folder = path.suffix.lower() not in (*FORMATS, ".html")   # NAME_files/, a IIIF folder
    what = (path if path == out else f"{path} (the tiles of {out.name})"
            if path.name.endswith("_files") else f"{path} (beside {out.name}: its viewer)")
    if not folder and path.is_dir():
        raise OutputError(f"output {out} is a folder; give a file name such as {out / 'dream.jpg'}")
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise OutputError(f"output {what} already exists; pass --overwrite to replace it "
                          "or choose another name with -o")
    if folder and not _holds_tiles(path, fmt):
        raise OutputError(f"output {what} exists and holds other files than deep-zoom tiles; "
                          "it is kept even with --overwrite: choose another name with -o")


def _holds_tiles(path: Path, fmt: str) -> bool:
    """Whether the folder ``path`` holds what dzsave writes (or nothing)."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()}
    if fmt == "iiif3":
        try:
            info = json.loads((path / "info.json").read_text())
        except (OSError, ValueError):
            return not names
        return isinstance(info, dict) and "iiif.io/api/image" in str(info.get("@context"))
    return all(n.isdigit() and (path / n).is_dir() or n == "vips-properties.xml" for n in names)


def _bigtiff_header(h: int, w: int, rows: int, bits: int = 8) -> bytes:
    """The bytes before the pixels of an uncompressed, strip-organised RGB BigTIFF of h × w
    px, ``bits`` (8 or 16, little-endian) a sample, in strips of ``rows`` rows: header, the
    one IFD, and its strip offsets and byte counts. The pixels follow it, strip after strip,
    row-major and interleaved."""
    n = -(-h // rows)
    sizes = [min(rows, h - i * rows) * w * 3 * bits // 8 for i in range(n)]
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
           entry(258, short, 3, struct.pack("<3H", bits, bits, bits)),  # BitsPerSample
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
    the next is read. ``bits``: 8 (``view.read_uint8``) or 16 (``view.read_uint16``)."""

    def __init__(self, view, on_rows: Callable[[int], None] | None = None, bits: int = 8):
        self.view, self.on_rows, self.bits = view, on_rows, bits
        h, w = view.shape
        self.head = _bigtiff_header(h, w, STRIP_ROWS, bits)
        self.strip_bytes = STRIP_ROWS * w * 3 * bits // 8
        self.strips = -(-h // STRIP_ROWS)
        self.size = len(self.head) + h * w * 3 * bits // 8
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
        """Strip ``i``: (rows, w, 3) uint8 or little-endian uint16, contiguous."""
        h, w = self.view.shape
        box = Box(i * STRIP_ROWS, min(h, (i + 1) * STRIP_ROWS), 0, w)
        if self.bits == 16:
            return np.ascontiguousarray(self.view.read_uint16(box), dtype="<u2")
        return self.view.read_uint8(box)

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


def _save(im, path: Path, fmt: str, cfg: ExportConfig, kept: dict[str, bytes]) -> None:
    """``im`` into the file ``path``, with sRGB's profile and the input's metadata."""
    im, keep = metadata.attach(im, kept, fmt)
    if fmt == "jpeg":
        # No optimize_coding: libjpeg then buffers every coefficient (3.5 GB at 300 MP).
        im.jpegsave(str(path), Q=cfg.quality, keep=keep)
    elif fmt == "png":
        im.pngsave(str(path), keep=keep)
    else:
        # TIFF tiles are multiples of 16; libvips refuses to read back tiles much larger
        # than the image (a 128 px image in 512 px tiles), so small images get small tiles.
        side = min(512, -(-max(im.width, im.height) // 16) * 16)
        im.tiffsave(str(path), bigtiff=True, tile=True, tile_width=side, tile_height=side,
                    pyramid=False, compression=cfg.tiff_compression, Q=cfg.quality,
                    predictor="horizontal" if cfg.tiff_compression != "jpeg" else "none",
                    keep=keep)
        if metadata.EXIF in kept:
            metadata.append_exif(path, kept[metadata.EXIF])


def _save_to_upload(im, upload, cfg: ExportConfig, kept: dict[str, bytes]) -> None:
    """``im`` as a JPEG into ``upload`` (``objects.upload``'s writer), as libvips encodes it,
    with sRGB's profile and the input's metadata."""
    import pyvips
    im, keep = metadata.attach(im, kept, "jpeg")
    failed: list[BaseException] = []

    def write(data) -> int:
        try:    # a copy: libvips reuses its buffer once the call returns, obstore keeps it
            return upload.write(bytes(data))
        except BaseException as e:  # noqa: BLE001 -- a callback must not raise into libvips
            failed.append(e)
            return -1

    target = pyvips.TargetCustom()
    target.on_write(write)
    try:
        im.jpegsave_target(target, Q=cfg.quality, keep=keep)
    except pyvips.Error:
        if failed:              # the upload's own error says more than libvips' "write failed"
            raise failed[0] from None
        raise
    if failed:
        raise failed[0]


def _save_deep_zoom(im, folder: Path, name: str, fmt: str, cfg: ExportConfig) -> None:
    """``im`` as deep zoom named ``name`` (``outputs``) in ``folder``. Each tile carries
    sRGB's profile."""
    im, keep = metadata.attach(im, {}, fmt)
    if fmt == "dz":            # dzsave adds .dzi (lower case) and _files to the name
        stem = Path(name).stem
        im.dzsave(str(folder / stem), layout="dz", Q=cfg.quality, keep=keep)
        os.replace(folder / f"{stem}.dzi", folder / name)
    elif fmt == "szi":
        im.dzsave(str(folder / name), layout="dz", container="szi", Q=cfg.quality, keep=keep)
    else:
        # dzsave puts a vips-properties.xml beside an IIIF folder: it stays in ``folder``
        im.dzsave(str(folder / name), layout="iiif3", id=cfg.iiif_id, Q=cfg.quality, keep=keep)


def _encode(view, out: Path, bits: int, on_rows, save: Callable) -> None:
    """``save(image)`` of ``view`` read as a ``_VirtualTiff``.

    libvips encodes on a thread of its own; this thread only waits, so Ctrl-C and SIGTERM
    stop an export at once (the reads stop, and libvips fails at its next one).
    """
    import pyvips

    tiff = _VirtualTiff(view, on_rows, bits)
    with concurrent.futures.ThreadPoolExecutor(1, "gigadream-encode") as encoder:
        saving = encoder.submit(lambda: save(pyvips.Image.new_from_source(
            tiff.source(), "", access="sequential")))
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _move_into_place(made: Path, out: Path, cfg: ExportConfig) -> None:
    """Deep zoom's outputs from the folder ``made`` to their places; the .dzi last, so that
    it appears only when its tiles are there. A folder they replace is moved into ``made``
    first (removed with it)."""
    for final in reversed(outputs(out, cfg)):
        if final.is_dir() and not final.is_symlink():
            os.replace(final, made / f"replaced-{final.name}")
        os.replace(made / final.name, final)


def export(view, out: Path, cfg: ExportConfig = ExportConfig(), *, overwrite: bool = False,
           on_rows: Callable[[int], None] | None = None,
           kept: dict[str, bytes] | None = None, before=None) -> Path:
    """Write ``view`` (anything with ``shape`` and ``read_uint8(box)``, and
    ``read_uint16(box)`` for ``export.bits`` 16) to ``out``: the format follows from its
    name and ``cfg.layout`` (``output_format``), the paths written are ``outputs(out,
    cfg)``. ``kept``: the input's metadata (``Store.input_metadata()``) for JPEG and TIFF.

    ``before``: the image the result was made from (a store's source), for deep zoom results
    that a browser reads from disk (.dzi, IIIF 3): it is written beside as a second layer and
    the viewer page compares the two (``viewer_files``; ``viewer.write_viewer``).

    ``out`` at a URL: a JPEG uploaded as it is encoded (``_save_to_upload``).
    """
    if location.is_url(out):        # uploaded as encoded, where a file is renamed into place
        check_output(out, view.shape, overwrite, cfg)
        with objects.upload(out) as upload:     # an exception here aborts the upload
            _encode(view, out, cfg.bits, on_rows,
                    lambda im: _save_to_upload(im, upload, cfg, kept or {}))
        return out
    out = Path(out)
    fmt = check_output(out, view.shape, overwrite, cfg, viewer=before is not None)
    # an export killed outright (kill -9, power loss) leaves its partial file or folder
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            _remove(stale)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        if fmt in DEEP_ZOOM:
            partial.mkdir()
            _encode(view, out, cfg.bits, on_rows,
                    lambda im: _save_deep_zoom(im, partial, out.name, fmt, cfg))
            _move_into_place(partial, out, cfg)
        else:
            _encode(view, out, cfg.bits, on_rows,
                    lambda im: _save(im, partial, fmt, cfg, kept or {}))
            os.replace(partial, out)
    finally:
        _remove(partial)
    extra = viewer_files(out, cfg) if before is not None else None
    if extra is not None:
        from .viewer import write_viewer
        page, layer = extra
        export(before, layer, dataclasses.replace(cfg, bits=8), overwrite=overwrite)
        write_viewer(page, out, layer)
    return out
