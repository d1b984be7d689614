"""The viewer page: a deep zoom result and its input, compared behind a curtain, in one HTML file.

The page opens from disk (``file://``) in a stock browser, with no server and no network:

- Browsers refuse scripted reads of ``file://`` URLs (XHR, fetch), so the page cannot load a
  ``.dzi`` or an ``info.json`` itself; their content is inlined as OpenSeadragon tile source
  objects. The tiles load as images, which ``file://`` allows, by URLs relative to the page.
- OpenSeadragon (vendored in ``static/openseadragon/``, BSD-3-Clause) and the buttons it shows
  are inlined too, so the page is one file that still works when copied, with its tile folders,
  to another machine or a USB stick: nothing to keep beside it but the tiles, whose folders
  it names.

The page itself is ``static/viewer.html``; this module fills in its fields.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from .errors import OutputError

OPENSEADRAGON_VERSION = "6.1.1"
DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
# The buttons the page shows (home, zoom in and out, full page), in each state of OpenSeadragon's
# navImages, by the names of its image files: images/zoomin_rest.png, ...
BUTTONS = {"zoomIn": "zoomin", "zoomOut": "zoomout", "home": "home", "fullpage": "fullpage"}
STATES = {"REST": "rest", "GROUP": "grouphover", "HOVER": "hover", "DOWN": "pressed"}


def _static(name: str):
    return resources.files("gigadream") / "static" / name


def _url(target: Path, page_dir: Path) -> str:
    """``target``'s URL relative to a page in ``page_dir``: '/'-separated and percent-encoded,
    so that spaces, '#' or '?' in a name still reach the file."""
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def dzi_source(dzi: Path, page_dir: Path) -> dict:
    """A Deep Zoom descriptor (``NAME.dzi`` beside ``NAME_files/``, as libvips' ``dzsave``
    writes them) as OpenSeadragon's inline object, its tiles' URL relative to ``page_dir``."""
    try:
        root = ET.parse(dzi).getroot()
    except (OSError, ET.ParseError) as e:
        raise OutputError(f"deep zoom descriptor {dzi} cannot be read ({e}); write it again "
                          "with --overwrite") from None
    size = root.find(f"{{{DZI_NAMESPACE}}}Size")
    if root.tag != f"{{{DZI_NAMESPACE}}}Image" or size is None:
        raise OutputError(f"{dzi} is not a Deep Zoom descriptor (<Image> with a <Size> in "
                          f"{DZI_NAMESPACE}); write it again with --overwrite")
    tiles = dzi.with_name(dzi.stem + "_files")
    return {"Image": {
        "xmlns": DZI_NAMESPACE,
        "Url": _url(tiles, page_dir) + "/",
        "Format": root.get("Format"),
        "Overlap": root.get("Overlap"),
        "TileSize": root.get("TileSize"),
        "Size": {"Width": size.get("Width"), "Height": size.get("Height")},
    }}


def iiif_source(info: Path, page_dir: Path) -> dict:
    """An IIIF Image API 3 ``info.json`` (libvips' ``dzsave`` with ``layout='iiif3'``) as
    OpenSeadragon's inline object. Its ``id`` (libvips writes ``https://example.com/iiif/NAME``
    unless told otherwise) becomes the tiles' folder relative to ``page_dir``: OpenSeadragon
    builds each tile's URL as ``id/region/size/0/default.jpg``."""
    try:
        data = json.loads(info.read_text())
    except (OSError, ValueError) as e:
        raise OutputError(f"IIIF descriptor {info} cannot be read ({e}); write it again "
                          "with --overwrite") from None
    if not isinstance(data, dict) or not {"width", "height", "tiles"} <= data.keys():
        raise OutputError(f"{info} is not an IIIF info.json (width, height and tiles); "
                          "write it again with --overwrite")
    return {**data, "id": _url(info.parent, page_dir)}


def tile_source(descriptor: Path, page_dir: Path) -> dict:
    """The inline tile source for a deep zoom output: ``NAME.dzi``, or an IIIF 3 folder or its
    ``info.json``."""
    descriptor = Path(descriptor)
    if descriptor.suffix.lower() == ".dzi":
        return dzi_source(descriptor, page_dir)
    info = descriptor / "info.json" if descriptor.is_dir() else descriptor
    if info.name == "info.json":
        return iiif_source(info, page_dir)
    if descriptor.suffix.lower() == ".szi":
        raise OutputError(f"{descriptor}: a browser cannot read tiles inside a .szi (a zip) "
                          "from disk; the viewer page needs a .dzi or IIIF folder")
    raise OutputError(f"{descriptor}: expected a .dzi file, or an IIIF folder with info.json")


def _openseadragon() -> str:
    """The vendored OpenSeadragon script, safe to inline in a <script> element, after its
    licence (BSD-3-Clause asks that copies carry it)."""
    js = _static("openseadragon/openseadragon.min.js").read_text(encoding="utf-8")
    licence = _static("openseadragon/LICENSE.txt").read_text(encoding="utf-8")
    # "</script" anywhere would end the element early, "*/" the comment; the release has neither.
    assert "</script" not in (js + licence).lower() and "*/" not in licence
    return f"/*! OpenSeadragon {OPENSEADRAGON_VERSION}, https://openseadragon.github.io\n\n{licence}*/\n{js}"


def _nav_images() -> dict:
    """OpenSeadragon's ``navImages`` for the buttons the page shows, as data: URLs (with
    ``prefixUrl: ""`` OpenSeadragon uses them as they are)."""
    images = _static("openseadragon/images")

    def data_url(name: str) -> str:
        png = (images / f"{name}.png").read_bytes()
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    return {button: {state: data_url(f"{stem}_{suffix}") for state, suffix in STATES.items()}
            for button, stem in BUTTONS.items()}


def _script_json(value) -> str:
    """``value`` as JSON to inline in a <script>: '</' escaped so no string ends the element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def _label(descriptor: Path) -> str:
    name = descriptor.name if descriptor.name != "info.json" else descriptor.parent.name
    return name.removesuffix(".dzi")


def viewer_page(page: Path, result: Path, source: Path, title: str | None = None) -> str:
    """The HTML of the viewer page that will live at ``page``; see ``write_viewer``."""
    page_dir = Path(page).parent
    result, source = Path(result), Path(source)
    named, before = _label(result), _label(source)
    # export's own pair (NAME and NAME-input) says nothing that "input" and "result" do not
    pair = before == f"{named}-input"
    fields = {
        "title": html.escape(title or f"{named}: input and result"),
        "input_label": "input" if pair else html.escape(f"input: {before}"),
        "result_label": "result" if pair else html.escape(f"result: {named}"),
        "sources": _script_json({"input": tile_source(source, page_dir),
                                 "result": tile_source(result, page_dir)}),
        "nav_images": _script_json(_nav_images()),
        "openseadragon": _openseadragon(),
    }
    template = _static("viewer.html").read_text(encoding="utf-8")
    # One pass, so that nothing filled in is read as a field itself.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fields[m.group(1)], template)


def write_viewer(page: Path, result: Path, source: Path, title: str | None = None) -> Path:
    """Write the viewer page ``page`` (``result.html``): the deep zoom ``result`` and the
    ``source`` it was made from as two layers of one OpenSeadragon viewer, the input left of
    a draggable curtain and the result right of it, pixels sharp at full zoom.

    ``result`` and ``source`` are deep zoom outputs already on disk: ``NAME.dzi`` (beside its
    ``NAME_files/``) or an IIIF 3 folder (or its ``info.json``). The page refers to their
    tiles by relative URLs, so it must stay where it is relative to them (moving the folder
    that holds all of them is fine). Only ``page`` is written: under a hidden temporary name
    beside it, renamed when complete; an existing ``page`` is replaced (the caller decides
    whether it may be). Returns ``page``.
    """
    page = Path(page)
    text = viewer_page(page, result, source, title)
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, page)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"viewer page {page} cannot be written ({e.strerror})") from None
    return page
