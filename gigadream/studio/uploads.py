"""Images and videos into the studio: uploads streamed to disk with a size limit, checked
before they are kept (an image by libvips, its header, decoding nothing; a video, known by
its extension, opened as ``gigadream run`` opens it: ``video.open_frames``), and stored under
generated names; files picked from the ``--images`` folders; thumbnails."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError
from .jobs import is_video
from .runner import Studio
from .security import HTTPError, confine

# libvips loaders and the extension an upload they read is stored with
EXTENSIONS = {"jpegload": ".jpg", "pngload": ".png", "tiffload": ".tif", "webpload": ".webp",
              "heifload": ".heic", "jp2kload": ".jp2", "gifload": ".gif"}
PICKABLE = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".jp2"}
MAX_PICKABLE = 2000      # files listed from the --images folders


class _TooLarge(Exception):
    pass


async def receive_upload(request, studio: Studio, max_upload: int) -> dict:
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
        return _accept_upload(studio, tmp, st["name"], st["size"])
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


def _accept_upload(studio: Studio, tmp: Path, name: str, size: int) -> dict:
    import pyvips

    from ..ingest import image_shape
    shown = Path(name).name or "upload"
    if is_video(shown):
        return _accept_video(studio, tmp, shown, size)
    try:
        h, w = image_shape(tmp)
        loader = pyvips.Image.new_from_file(str(tmp), access="sequential").get("vips-loader")
    except (InputError, pyvips.Error) as e:
        reason = str(e).replace(f"input {tmp} ", "").replace(str(tmp), shown)
        raise HTTPError(400, f"{shown} is not an image libvips can read: {reason}") from None
    final = studio.images / f"{uuid.uuid4().hex}{EXTENSIONS.get(loader, '.img')}"
    os.replace(tmp, final)
    return studio.queue.add_image(final, shown, "upload", w, h, size)


def _accept_video(studio: Studio, tmp: Path, shown: str, size: int) -> dict:
    """An upload named as a video: kept when FFmpeg opens it as one (a video stream with
    frames), under a generated name with its extension (which makes it a video for
    ``gigadream run``)."""
    try:
        h, w = video_shape(tmp)
    except InputError as e:
        reason = str(e).replace(f"input {tmp} ", "").replace(str(tmp), shown)
        raise HTTPError(400, f"{shown} is not a video FFmpeg can read: {reason}") from None
    final = studio.images / f"{uuid.uuid4().hex}{Path(shown).suffix.lower()}"
    os.replace(tmp, final)
    return studio.queue.add_image(final, shown, "upload", w, h, size)


def video_shape(path: Path) -> tuple[int, int]:
    """(h, w) of the frames of the video at ``path``; InputError where it is none."""
    from ..video import open_frames
    with open_frames(str(path)) as source:
        if source.kind != "video":
            raise InputError(f"input {path} is no video file")
        return source.shape


def pick_image(studio: Studio, roots: list[Path], text: Any) -> dict:
    """A file inside the ``--images`` folders (an image or a video), added to the studio
    where it lies."""
    from ..ingest import image_shape
    if not isinstance(text, str) or not text:
        raise InputError("pick: expected {\"path\": PATH inside an --images folder}")
    path = confine(text, roots)
    h, w = video_shape(path) if is_video(path) else image_shape(path)
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
