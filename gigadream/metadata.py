"""The input's EXIF, XMP and resolution, carried from ingest to every export; sRGB's profile.

Ingest keeps them in the store (``from_image``, ``Store.keep_metadata``), normalised for the
upright image the store holds: EXIF's Orientation is 1, its thumbnail (a small copy of the
input, not of the result) and the tags that describe the input's pixel layout are gone, and
XMP's ``tiff:Orientation`` says 1 too. Every other field stays: camera, lens, dates, GPS,
copyright, and XMP such as the ``GPano`` tags that make viewers show a 360° panorama.

Exports attach them (``attach``). libvips writes EXIF into JPEG but not into TIFF, so a TIFF
gets its EXIF here (``append_exif``): an EXIF IFD and a GPS IFD appended to the BigTIFF libvips
wrote, and a new first IFD that points at them.

An EXIF block that does not parse is not kept (a damaged block must not fail an export at the
end of a run); nor is a MakerNote's content understood: it is copied as bytes, and offsets
inside it that count from the original block no longer hold (exiftool fixes a few makers'
ones; no viewer reads them for display).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

EXIF = "exif-data"           # libvips' names for the blobs, and the files in the store
XMP = "xmp-data"
RESOLUTION = "resolution"    # [xres, yres] in pixels per mm, libvips' unit, as JSON
JPEG_MAX_EXIF = 65533 - 2    # one APP1 marker's payload (libjpeg's limit), less its length


class Entry(NamedTuple):
    """One IFD entry: its value's bytes little-endian (``data``), out of line or not."""
    tag: int
    type: int
    count: int
    data: bytes


# Bytes of one element of each TIFF type (LONG8 = 16 and IFD8 = 18 are BigTIFF's), and the
# struct code by which an element's byte order is swapped (rationals are two LONGs).
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
             13: 4, 16: 8, 18: 8}
ELEMENT = {3: "H", 4: "I", 5: "I", 8: "h", 9: "i", 10: "i", 11: "f", 12: "d", 13: "I"}
# Which tags of which IFD point to another IFD, and that IFD's name.
POINTERS = {"0": {34665: "exif", 34853: "gps"}, "exif": {40965: "interop"}}
ORIENTATION = 274
# IFD0 tags that describe the input's pixels (size, samples, strips, tiles, compression,
# YCbCr coding, the thumbnail's place) and the orientation, 1 for the upright stored image.
LAYOUT_TAGS = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 322, 323, 324, 325, 338,
               339, 513, 514, 529, 530, 531, 532, ORIENTATION}
# The EXIF IFD's pixel size: the input's; libvips writes the output's into a JPEG.
EXIF_SIZE_TAGS = {40962, 40963}


def parse_exif(blob: bytes) -> dict[str, list[Entry]]:
    """The IFDs of an EXIF block (as libvips holds it: ``Exif\\0\\0`` and a TIFF structure):
    ``"0"``, and where present ``"exif"``, ``"gps"``, ``"interop"``, pointers left out and
    values little-endian; IFD1 (the thumbnail) is not read. Raises ValueError when the block
    does not parse."""
    data = blob[6:] if blob.startswith(b"Exif\0\0") else blob
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(data[:2])]
        magic, first = struct.unpack(order + "HI", data[2:8])
        if magic != 42:
            raise ValueError(f"TIFF magic {magic}, not 42")
        ifds: dict[str, list[Entry]] = {}
        _read_ifd(data, order, "0", first, ifds)
        return ifds
    except (KeyError, IndexError, struct.error) as e:
        raise ValueError(f"EXIF block does not parse: {e!r}") from None


def _read_ifd(data: bytes, order: str, name: str, at: int, ifds: dict) -> None:
    (n,) = struct.unpack(order + "H", data[at:at + 2])
    entries = []
    for i in range(n):
        at_entry = at + 2 + 12 * i
        tag, typ, count, field = struct.unpack(order + "HHI4s", data[at_entry:at_entry + 12])
        sub = POINTERS.get(name, {}).get(tag)
        if sub is not None:
            if sub not in ifds:
                _read_ifd(data, order, sub, struct.unpack(order + "I", field)[0], ifds)
            continue
        if typ not in TYPE_SIZE or typ in (16, 18):
            continue                                   # not a type classic TIFF has
        size = TYPE_SIZE[typ] * count
        if size <= 4:
            value = field[:size]
        else:
            (off,) = struct.unpack(order + "I", field)
            if off + size > len(data):
                raise IndexError(f"tag {tag}'s value lies past the end of the block")
            value = data[off:off + size]
        entries.append(Entry(tag, typ, count, _little(value, typ, count, order)))
    ifds[name] = entries


def _little(value: bytes, typ: int, count: int, order: str) -> bytes:
    code = ELEMENT.get(typ)
    if order == "<" or code is None:
        return bytes(value)
    n = count * (2 if typ in (5, 10) else 1)
    return struct.pack(f"<{n}{code}", *struct.unpack(f">{n}{code}", value))


@dataclass(frozen=True)
class _Flavour:
    """Classic TIFF or BigTIFF: an IFD's entry count, an entry, an offset; a value of up
    to ``inline`` bytes lies in its entry."""
    count: str
    entry: str
    offset: str
    inline: int
    pointer_type: int


CLASSIC = _Flavour("<H", "<HHI", "<I", 4, 4)
BIG = _Flavour("<Q", "<HHQ", "<Q", 8, 18)


def _append_ifd(out: bytearray, base: int, entries: list[Entry], fl: _Flavour,
                next_ifd: int = 0) -> int:
    """``entries`` as an IFD (sorted by tag) and its values after it, appended to ``out``,
    which starts at file offset ``base``; returns the IFD's offset."""
    if len(out) % 2:
        out += b"\0"                                   # IFDs and values start on words
    at = base + len(out)
    entries = sorted(entries, key=lambda e: e.tag)
    values_at = at + struct.calcsize(fl.count) + len(entries) * (
        struct.calcsize(fl.entry) + fl.inline) + struct.calcsize(fl.offset)
    table, values = bytearray(), bytearray()
    for e in entries:
        if len(e.data) <= fl.inline:
            field = e.data.ljust(fl.inline, b"\0")
        else:
            if len(values) % 2:
                values += b"\0"
            field = struct.pack(fl.offset, values_at + len(values))
            values += e.data
        table += struct.pack(fl.entry, e.tag, e.type, e.count) + field
    out += struct.pack(fl.count, len(entries)) + table + struct.pack(fl.offset, next_ifd) + values
    return at


def _append_ifds(out: bytearray, base: int, ifds: dict[str, list[Entry]], fl: _Flavour,
                 first: list[Entry], next_ifd: int = 0) -> int:
    """The sub-IFDs of ``ifds`` (interop, EXIF, GPS), then ``first`` as the first IFD with
    pointers to them; returns the first IFD's offset."""
    def pointer(tag: int, at: int) -> Entry:
        return Entry(tag, fl.pointer_type, 1, struct.pack(fl.offset, at))
    exif = list(ifds.get("exif", []))
    if ifds.get("interop"):
        exif.append(pointer(40965, _append_ifd(out, base, ifds["interop"], fl)))
    first = list(first)
    if exif:
        first.append(pointer(34665, _append_ifd(out, base, exif, fl)))
    if ifds.get("gps"):
        first.append(pointer(34853, _append_ifd(out, base, ifds["gps"], fl)))
    return _append_ifd(out, base, first, fl, next_ifd)


def normalise_exif(blob: bytes) -> bytes:
    """The EXIF block of the upright stored image, little-endian: Orientation 1, no
    thumbnail, none of the input's layout tags. Raises ValueError when it does not parse."""
    ifds = parse_exif(blob)
    ifds["0"] = [e for e in ifds["0"] if e.tag not in LAYOUT_TAGS]
    ifds["0"].append(Entry(ORIENTATION, 3, 1, struct.pack("<H", 1)))
    ifds["exif"] = [e for e in ifds.get("exif", []) if e.tag not in EXIF_SIZE_TAGS]
    out = bytearray(b"II*\0\0\0\0\0")
    first = _append_ifds(out, 0, ifds, CLASSIC, ifds["0"])
    out[4:8] = struct.pack("<I", first)
    return b"Exif\0\0" + bytes(out)


_XMP_ORIENTATION = [re.compile(rb"(tiff:Orientation\s*=\s*[\"'])\d([\"'])"),
                    re.compile(rb"(<tiff:Orientation>)\s*\d\s*(</tiff:Orientation>)")]


def normalise_xmp(blob: bytes) -> bytes:
    """XMP of the upright stored image: its ``tiff:Orientation`` (where it has one) 1."""
    for pattern in _XMP_ORIENTATION:
        blob = pattern.sub(rb"\g<1>1\g<2>", blob)
    return blob


def from_image(im, transposed: bool) -> dict[str, bytes]:
    """What the store keeps of a libvips image's metadata (``transposed``: the stored image
    is the input turned by 90°, so x and y resolution swap)."""
    kept = {}
    if im.get_typeof(EXIF):
        try:
            kept[EXIF] = normalise_exif(im.get(EXIF))
        except ValueError:
            pass                                       # damaged: not carried (module doc)
    if im.get_typeof(XMP):
        kept[XMP] = normalise_xmp(im.get(XMP))
    res = [im.xres, im.yres]
    kept[RESOLUTION] = json.dumps(res[::-1] if transposed else res).encode()
    return kept


def attach(im, kept: dict[str, bytes], fmt: str):
    """``im`` with sRGB's ICC profile and, where the format holds them, the input's EXIF,
    XMP and resolution (``kept``, from the store); and the ``keep`` flags that make libvips
    write them. Deep-zoom tiles carry the profile alone (480 bytes; a tile's EXIF would
    repeat the camera's in every one of thousands of files)."""
    import pyvips

    im = im.copy()
    im.set_type(pyvips.GValue.blob_type, "icc-profile-data", srgb_profile())
    if fmt not in ("jpeg", "tiff", "png"):
        return im, "icc"
    if RESOLUTION in kept:
        xres, yres = json.loads(kept[RESOLUTION])
        im = im.copy(xres=xres, yres=yres)
    # EXIF through libvips into a JPEG (one marker's worth) and a PNG (its eXIf chunk);
    # libvips' TIFF writer has none (append_exif)
    if (fmt == "png" and EXIF in kept) or (fmt == "jpeg" and EXIF in kept
                                           and len(kept[EXIF]) <= JPEG_MAX_EXIF):
        im.set_type(pyvips.GValue.blob_type, EXIF, kept[EXIF])
    if XMP in kept:
        im.set_type(pyvips.GValue.blob_type, XMP, kept[XMP])
    # no "orientation" field (the virtual TIFF has none): libvips writes orientation 1
    return im, "icc:exif:xmp"


def srgb_profile() -> bytes:
    """libvips' built-in sRGB profile (v4, 480 bytes)."""
    import pyvips
    return pyvips.Image.profile_load("srgb")


def append_exif(path: Path, blob: bytes) -> None:
    """Give the little-endian BigTIFF at ``path`` (as libvips writes one) the EXIF of
    ``blob``: its EXIF and GPS IFDs are appended, and a copy of the first IFD with the IFD0
    tags it lacks (camera, artist, copyright, ...) and the pointers to them; the header then
    names that copy. The pixels, and the old first IFD, stay where they are."""
    ifds = parse_exif(blob)
    with open(path, "r+b") as f:
        head = f.read(16)
        if head[:4] != b"II+\0":
            raise ValueError(f"{path} is not a little-endian BigTIFF")
        (first,) = struct.unpack("<Q", head[8:16])
        f.seek(first)
        (n,) = struct.unpack("<Q", f.read(8))
        table = f.read(20 * n + 8)
        entries = [table[20 * i:20 * i + 20] for i in range(n)]
        have = [Entry(*struct.unpack("<HHQ", e[:12]), e[12:]) for e in entries]
        (next_ifd,) = struct.unpack("<Q", table[20 * n:])
        tags = {e.tag for e in have}
        more = [e for e in ifds["0"] if e.tag not in tags and e.tag not in LAYOUT_TAGS]
        if not more and not any(ifds.get(k) for k in ("exif", "gps")):
            return
        end = f.seek(0, 2)
        out = bytearray(b"\0" * (-end % 8))
        at = _append_ifds(out, end, ifds, BIG, have + more, next_ifd)
        f.write(out)
        f.seek(8)
        f.write(struct.pack("<Q", at))
