"""Images and videos into the studio: uploads streamed to disk with a size limit, checked
before they are kept and picked files before they are added (``check_media``: an accepted
format by its first bytes, then its size in pixels by its header, decoding nothing; a video
then opened as ``gigadream run`` opens it), uploads stored under generated names; the
``--images`` folders' files; thumbnails."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError
from .jobs import is_video
from .runner import Studio
from .security import HTTPError, confine

# What the studio reads, known by the file's first bytes before any library parses it: the
# raster formats libvips decodes in its own core (libjpeg, libpng, libtiff, libwebp: what
# panoramas come as) and the video containers FFmpeg demuxes as `gigadream run` does. SVG,
# PDF, HEIF, GIF, libvips' own and matrix formats, HLS or concat playlists: refused.
IMAGE_MAGIC = ((b"\xff\xd8\xff", "jpegload", ".jpg"), (b"\x89PNG\r\n\x1a\n", "pngload", ".png"),
               (b"II*\x00", "tiffload", ".tif"), (b"MM\x00*", "tiffload", ".tif"),
               (b"II+\x00", "tiffload", ".tif"), (b"MM\x00+", "tiffload", ".tif"))
MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")   # ISO/QuickTime
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
               b"avif", b"avis")
EBML = b"\x1a\x45\xdf\xa3"                         # Matroska and WebM
FFMPEG_FORMATS = {"mov", "mp4", "matroska", "webm"}   # demuxer names (av: format.name)
ACCEPTED = "a JPEG, PNG, TIFF or WebP image, or an mp4, mov, mkv or webm video"
PICKABLE = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
MAX_PICKABLE = 2000      # files listed from the --images folders


def sniff(path: Path) -> tuple[str, str] | None:
    """(libvips loader or ``"video"``, the extension it is stored with) of the file at
    ``path`` by its first 16 bytes; None for anything the studio does not read."""
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, loader, ext in IMAGE_MAGIC:
        if head.startswith(magic):
            return loader, ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webpload", ".webp"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return None         # HEIF and AVIF stills: ISO boxes too, but libheif's, refused
    if head[4:8] in MP4_BOXES:
        return "video", ".mp4" if head[8:12].startswith(b"mp4") or head[8:11] == b"iso" else ".mov"
    if head.startswith(EBML):
        return "video", ".webm" if b"webm" in head else ".mkv"
    return None


def _what(path: Path) -> str:
    """A refused file's kind, for its one-line message."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip()
    for magic, kind in ((b"%PDF", "a PDF"), (b"GIF8", "a GIF"), (b"<", "XML or SVG"),
                        (b"#EXTM3U", "a playlist"), (b"ffconcat", "a playlist")):
        if head.startswith(magic) or (magic == b"<" and b"<svg" in head):
            return kind
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "HEIF or AVIF"
    return "an unknown format"


def check_media(path: Path, shown: str, max_pixels: int) -> tuple[int, int, str]:
    """(h, w, extension) of an upload or a picked file: refused in one line (InputError)
    unless its first bytes say it is one of the accepted formats, whose header (never its
    pixels) says it is at most ``max_pixels``."""
    found = sniff(path)
    if found is None:
        raise InputError(f"{shown} is {_what(path)}, not {ACCEPTED}; the studio reads only "
                         "those (convert it first)")
    loader, ext = found
    if loader == "video":
        h, w = video_shape(path, shown, max_pixels)
    else:
        h, w = image_header(path, shown, loader)
    if h * w > max_pixels:
        raise InputError(f"{shown} is {w}×{h} px ({h * w / 1e6:,.0f} MP), over the studio's "
                         f"limit of {max_pixels / 1e6:,.0f} MP (gigadream serve --max-pixels); "
                         "run it with 'gigadream run'")
    return h, w, ext


def image_header(path: Path, shown: str, loader: str) -> tuple[int, int]:
    """(h, w) from the image's header, read by ``loader`` alone (libvips opens lazily:
    nothing is decoded). The server's libvips runs no other loader (``block_loaders``)."""
    import pyvips
    try:
        im = pyvips.Image.new_from_file(str(path), access="sequential")
        used = im.get("vips-loader")
    except pyvips.Error as e:
        reason = str(e).replace(str(path), shown).strip().splitlines()[-1:] or ["?"]
        raise InputError(f"{shown} is not an image libvips can read: {reason[0]}") from None
    if used != loader:
        raise InputError(f"{shown} starts as {loader[:-4].upper()} but libvips reads it as "
                         f"{used}; give {ACCEPTED}")
    return im.height, im.width


class _TooLarge(Exception):
    pass


async def receive_upload(request, studio: Studio, max_upload: int, max_pixels: int) -> dict:
    """The multipart body's ``file`` part, streamed to a temporary file in the studio's
    images folder piece by piece (python-multipart's streaming parser: a 250 MB panorama
    never sits in memory), at most ``max_upload`` bytes; checked by libvips, then renamed to
    a generated name and added to the studio."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPError(400, "expected a multipart/form-data upload with a 'file' field")
    limit_mb = f"{max_upload / 2**20:g} MB"
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_upload + 65536:
        raise HTTPError(413, f"upload of {int(length) / 2**20:.1f} MB is over the studio's "
                             f"limit of {limit_mb} (gigadream serve --max-upload); pick the "
                             "file from an --images folder instead")
    tmp = studio.images / f".upload-{uuid.uuid4().hex}.part"
    st: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "file": None,
                          "name": None, "size": 0, "done": False}

    def header_end() -> None:
        st["headers"][st["field"].lower()] = st["value"]
        st.update(field=b"", value=b"")

    def headers_finished() -> None:
        _, p = parse_options_header(st["headers"].get(b"content-disposition", b""))
        if p.get(b"name") == b"file" and st["file"] is None and not st["done"]:
            st["name"] = p.get(b"filename", b"upload").decode("utf-8", "replace")
            st["file"] = open(tmp, "wb")
        st["headers"] = {}

    def part_data(data: bytes, start: int, end: int) -> None:
        f = st["file"]
        if f is not None and not f.closed:
            st["size"] += end - start
            if st["size"] > max_upload:
                raise _TooLarge
            f.write(data[start:end])

    def part_end() -> None:
        if st["file"] is not None and not st["file"].closed:
            st["file"].close()
            st["done"] = True

    parser = MultipartParser(params[b"boundary"], {
        "on_header_field": lambda d, s, e: st.__setitem__("field", st["field"] + d[s:e]),
        "on_header_value": lambda d, s, e: st.__setitem__("value", st["value"] + d[s:e]),
        "on_header_end": header_end, "on_headers_finished": headers_finished,
        "on_part_data": part_data, "on_part_end": part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if not st["done"]:
            raise HTTPError(400, "the upload has no complete 'file' field")
        return _accept_upload(studio, tmp, st["name"], st["size"], max_pixels)
    except _TooLarge:
        raise HTTPError(413, f"upload over the studio's limit of {limit_mb} (gigadream "
                             "serve --max-upload); pick the file from an --images folder "
                             "instead") from None
    except ValueError as e:     # python-multipart: a malformed body
        raise HTTPError(400, f"malformed multipart upload: {e}") from None
    finally:
        if st["file"] is not None:
            st["file"].close()
        tmp.unlink(missing_ok=True)


def _accept_upload(studio: Studio, tmp: Path, name: str, size: int, max_pixels: int) -> dict:
    shown = Path(name).name or "upload"
    try:
        h, w, ext = check_media(tmp, shown, max_pixels)
    except InputError as e:
        raise HTTPError(400, str(e)) from None
    # its name says what its first bytes said: a video's extension makes it one for `run`
    final = studio.images / f"{uuid.uuid4().hex}{ext}"
    os.replace(tmp, final)
    return studio.queue.add_image(final, shown, "upload", w, h, size)


def video_shape(path: Path, shown: str, max_pixels: int) -> tuple[int, int]:
    """(h, w) of the frames of the video at ``path``: its container one of
    ``FFMPEG_FORMATS`` and its frame size within ``max_pixels`` (from the stream's header),
    before it is opened as ``gigadream run`` opens it (``video.open_frames``, which decodes
    its first frame). InputError where it is none."""
    import av

    from ..video import open_frames
    try:
        with av.open(str(path)) as c:
            formats = set(c.format.name.split(","))
            stream = c.streams.video[0] if c.streams.video else None
            size = (stream.codec_context.height, stream.codec_context.width) if stream else (0, 0)
    except av.FFmpegError as e:
        raise InputError(f"{shown} is not a video FFmpeg can read ({e.strerror or e}); give "
                         f"{ACCEPTED}") from None
    if not formats & FFMPEG_FORMATS:
        raise InputError(f"{shown} is a {c.format.name} file, not {ACCEPTED}")
    if size[0] * size[1] > max_pixels:
        return size         # check_media refuses it, with the limit
    try:
        with open_frames(str(path)) as source:
            if source.kind != "video":
                raise InputError(f"{shown} is no video file; give {ACCEPTED}")
            return source.shape
    except InputError as e:
        reason = str(e).replace(f"input {path} ", "").replace(str(path), shown)
        raise InputError(f"{shown} is not a video FFmpeg can read: {reason}") from None


def pick_image(studio: Studio, roots: list[Path], text: Any, max_pixels: int) -> dict:
    """A file inside the ``--images`` folders (an image or a video), checked as an upload is
    (``check_media``), added to the studio where it lies."""
    if not isinstance(text, str) or not text:
        raise InputError("pick: expected {\"path\": PATH inside an --images folder}")
    path = confine(text, roots)
    h, w, ext = check_media(path, path.name, max_pixels)
    video = is_video(f"file{ext}")
    if video != is_video(path):
        raise InputError(f"{path.name} holds {'a video' if video else 'an image'} but "
                         f"its name says otherwise; rename it to end in {ext}")
    return studio.queue.add_image(path, path.name, "pick", w, h, path.stat().st_size)


def pickable(roots: list[Path]) -> list[dict]:
    """Image files under the --images folders (symlinks that lead out are left out)."""
    out = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                p = Path(folder) / name
                if (p.suffix.lower() not in PICKABLE and not is_video(p)) or name.startswith("."):
                    continue
                try:
                    real = confine(str(p), roots)
                except InputError:
                    continue
                out.append({"path": str(p), "resolved": str(real),
                            "bytes": real.stat().st_size})
                if len(out) >= MAX_PICKABLE:
                    return out
    return out


def thumbnail(src: Path, out: Path, side: int = 256) -> Path:
    """A JPEG at most ``side`` px long of ``src`` (libvips' shrink-on-load: a 250 MB
    panorama's thumbnail reads a fraction of it; a video's: its first frame), cached at
    ``out``."""
    import pyvips
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp.jpg")   # requests run in threads
        if is_video(src):
            from ..video import open_frames
            with open_frames(str(src)) as source:
                first = next(iter(source.frames(0, 1))).pixels
            im = pyvips.Image.new_from_array(first).copy(interpretation="srgb")
            im.thumbnail_image(side, height=side).jpegsave(str(tmp), Q=85)
        else:
            pyvips.Image.thumbnail(str(src), side).jpegsave(str(tmp), Q=85)
        os.replace(tmp, out)
    return out
