"""The viewer page (gigadream.viewer) in a real browser: headless Chromium, Debian's
``chromium`` and ``chromium-driver``, driven by Selenium, opens it from disk as a user would
(no flag that loosens file:// rules), waits for its tiles at several zoom levels, drags the
curtain with pointer actions and reads the screenshot: the input left of the curtain, the
result right of it, sharp pixels at full zoom. Without Chromium those tests are skipped and
say what to install."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import pyvips

from gigadream.errors import OutputError
from gigadream.viewer import OPENSEADRAGON_VERSION, dzi_source, tile_source, write_viewer

INSTALL = ("the viewer's browser tests need Chromium and its WebDriver: apt-get install "
           "chromium chromium-driver (Debian), and pip install selenium (in '.[test]')")
WIDTH, HEIGHT = 2047, 1023      # odd sides: libvips and OpenSeadragon must agree on rounding;
                               # wider than twice the window, so home shows a level below the top


def negative(im: pyvips.Image) -> pyvips.Image:
    return (255 - im).cast("uchar").copy(interpretation="srgb")


@pytest.fixture(scope="module")
def deepzoom(tmp_path_factory):
    """A folder with a panorama's deep zoom ("pano.dzi", the input) and its negative's ("pano
    dream.dzi", a result no one could mistake for it), as libvips' dzsave writes them; and
    the two images as (h, w, 3) arrays."""
    from gigadream.sample import make_panorama
    d = tmp_path_factory.mktemp("deepzoom")
    im = pyvips.Image.new_from_file(str(make_panorama(d / "pano.jpg", WIDTH, HEIGHT, quality=95)))
    im.dzsave(str(d / "pano"))
    negative(im).dzsave(str(d / "pano dream"))
    return d, im.numpy(), negative(im).numpy()


# --- the page, without a browser -------------------------------------------------------------

def test_the_descriptor_is_inlined_with_its_tiles_relative_to_the_page(deepzoom, tmp_path):
    d, _, _ = deepzoom
    src = dzi_source(d / "pano dream.dzi", d)
    assert src == {"Image": {
        "xmlns": "http://schemas.microsoft.com/deepzoom/2008", "Url": "pano%20dream_files/",
        "Format": "jpeg", "Overlap": "1", "TileSize": "254",
        "Size": {"Width": str(WIDTH), "Height": str(HEIGHT)}}}
    assert dzi_source(d / "pano.dzi", d / "pages" / "1")["Image"]["Url"] == "../../pano_files/"
    shutil.copy(d / "pano.dzi", tmp_path / "pano #1?.dzi")
    assert dzi_source(tmp_path / "pano #1?.dzi", tmp_path)["Image"]["Url"] == "pano%20%231%3F_files/"

    page = write_viewer(d / "pano dream.html", d / "pano dream.dzi", d / "pano.dzi")
    text = page.read_text()
    # everything inline: no script or stylesheet from anywhere
    assert "<script src" not in text and "<link" not in text
    assert json.dumps(src["Image"]["Url"]) in text
    # the vendored release, the one viewer.py names, with its licence
    assert f"//! openseadragon {OPENSEADRAGON_VERSION}\n" in text
    assert "Redistribution and use in source and binary forms" in text
    assert [p.name for p in d.glob(".*.tmp")] == []


@pytest.mark.parametrize("name, content, message", [
    ("pano.szi", b"PK", "cannot read tiles inside a .szi"),
    ("pano.jpg", b"", "expected a .dzi file, or an IIIF folder"),
    ("pano.dzi", b"<Image", "cannot be read"),
    ("pano.dzi", b"<Other/>", "is not a Deep Zoom descriptor"),
    ("info.json", b"{}", "is not an IIIF info.json"),
])
def test_what_is_not_a_deep_zoom_output_is_refused_in_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(OutputError, match=message) as e:
        write_viewer(tmp_path / "page.html", tmp_path / name, tmp_path / name)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --- the page in Chromium --------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, its console and network logged. --no-sandbox
    only as root (as in CI containers), where Chromium's sandbox cannot start."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(f"no chromium or chromedriver on PATH: {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--window-size=900,700", "--force-device-scale-factor=1",
                *(["--no-sandbox"] if os.geteuid() == 0 else [])):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=options)
    b.set_script_timeout(30)    # above wait_loaded's own limit
    # every page asks for its tiles again, so that the network log shows what each view needs
    b.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    yield b
    b.quit()


def open_page(browser, page: Path) -> None:
    requested(browser), console_errors(browser)      # what earlier pages logged
    browser.get(page.resolve().as_uri())
    wait_loaded(browser)


def wait_loaded(browser, timeout: float = 15) -> None:
    """Until both layers are open and every tile the view needs is drawn (a few frames after
    the view last moved, so that OpenSeadragon has asked for them); fails at once where the
    page shows an error, and after ``timeout`` seconds otherwise, saying how far it got."""
    state = browser.execute_async_script("""
        const [timeout, done] = arguments, start = performance.now();
        let frames = 0;
        (function check() {
            const g = window.gigadream, w = g && g.viewer.world;
            const items = w ? Array.from({length: w.getItemCount()}, (_, i) => w.getItemAt(i)) : [];
            const loaded = items.length === 2 && items.every(i => i.getFullyLoaded()) && !w.needsDraw();
            const message = (document.getElementById("message") || {}).textContent;
            if ((++frames > 3 && loaded) || message || performance.now() - start > 1000 * timeout) {
                done({loaded: loaded, layers: items.length, message: message,
                      viewer: Boolean(g), body: document.body.innerText.slice(0, 200)});
            } else requestAnimationFrame(check);
        })();""", timeout)
    assert state["loaded"], f"the page did not finish loading its tiles: {state}"


def requested(browser) -> list[str]:
    """The URLs the page asked for since the last call (the DevTools network log)."""
    out = []
    for entry in browser.get_log("performance"):
        m = json.loads(entry["message"])["message"]
        if m["method"] == "Network.requestWillBeSent":
            out.append(m["params"]["request"]["url"])
    return out


def tile_levels(urls: list[str], folder: str) -> set[int]:
    """The pyramid levels of the tiles asked for from ``folder`` (``NAME_files/LEVEL/C_R.jpeg``)."""
    return {int(u.split(folder + "/")[1].split("/")[0]) for u in urls if folder + "/" in u}


def console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def zoom(browser, image_zoom: float, x: float, y: float) -> None:
    """Show the image at ``image_zoom`` screen pixels an image pixel, centred on the point
    (``x``, ``y``) given as fractions of its width and height, at once (no animation), within
    the page's limits as a user's zoom is (applyConstraints, which OpenSeadragon calls after
    each gesture)."""
    browser.execute_script("""
        const [z, x, y] = arguments, v = gigadream.viewer, l = gigadream.layers.input;
        v.viewport.zoomTo(l.imageToViewportZoom(z), null, true);
        const size = l.getContentSize();
        v.viewport.panTo(l.imageToViewportCoordinates(x * size.x, y * size.y), true);
        v.viewport.applyConstraints(true);""",
        image_zoom, x, y)
    wait_loaded(browser)


def screen(browser) -> dict:
    """The screenshot as an (h, w, 3) array and where things are on it: the curtain's x, the
    image's corners, the bottom of the navigator (the buttons are above it), the image zoom."""
    from PIL import Image
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    geo = browser.execute_script("""
        const g = gigadream, l = g.layers.input, size = l.getContentSize();
        const a = l.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
        const b = l.imageToViewerElementCoordinates(size);
        return {curtain: g.curtain() * g.viewer.container.clientWidth, x0: a.x, y0: a.y,
                top: g.viewer.navigator.element.getBoundingClientRect().bottom,
                x1: b.x, y1: b.y, zoom: l.viewportToImageZoom(g.viewer.viewport.getZoom(true)),
                message: document.getElementById("message").textContent};""")
    assert shot.shape[1] == round(browser.execute_script("return window.innerWidth"))
    return {"shot": shot, **geo}


def image_coords(s: dict, shape: tuple[int, int]):
    """For each screen row and column, the image row and column (float) shown there."""
    h, w = shape
    rows = (np.arange(s["shot"].shape[0]) + 0.5 - s["y0"]) * h / (s["y1"] - s["y0"])
    cols = (np.arange(s["shot"].shape[1]) + 0.5 - s["x0"]) * w / (s["x1"] - s["x0"])
    return rows, cols


def band(s: dict, rows: np.ndarray, h: int) -> np.ndarray:
    """Screen rows to compare: inside the image, clear of the buttons and the navigator at the
    top, the labels at the bottom and the curtain's grip in the middle."""
    n = s["shot"].shape[0]
    y = np.arange(n)
    return y[(rows >= 0) & (rows < h) & (y > s["top"] + 5) & (y < n - 40) & (abs(y - n / 2) > 25)]


def sides(s: dict, input_: np.ndarray, result: np.ndarray):
    """The screen columns inside the image, whether each shows the input (else the result),
    and the mean distance (levels) of each from the image it shows."""
    rows, cols = image_coords(s, input_.shape[:2])
    ys = band(s, rows, input_.shape[0])
    xs = np.flatnonzero((cols >= 0) & (cols < input_.shape[1]))
    shown = s["shot"][np.ix_(ys, xs)].astype(int)
    r, c = rows[ys].astype(int)[:, None], cols[xs].astype(int)[None, :]
    d_in = np.abs(shown - input_[r, c]).mean(axis=(0, 2))
    d_res = np.abs(shown - result[r, c]).mean(axis=(0, 2))
    return xs, d_in < d_res, np.minimum(d_in, d_res), np.maximum(d_in, d_res)


def assert_curtain_at(s: dict, input_: np.ndarray, result: np.ndarray) -> None:
    """The input fills the image left of the curtain, the result right of it, each close to
    the picture it is and far from the other (not a blank or an error page)."""
    xs, is_input, near, far = sides(s, input_, result)
    away = abs(xs + 0.5 - s["curtain"]) > 3           # the curtain's 2 px line itself
    left = xs < s["curtain"]
    assert away.sum() > 200, "the image is hardly on screen"
    assert is_input[left & away].all() and not is_input[~left & away].any(), (
        f"curtain at {s['curtain']:.0f} px, input seen at columns "
        f"{xs[is_input].min() if is_input.any() else None}-{xs[is_input].max() if is_input.any() else None}")
    assert near[away].mean() < 25 and far[away].mean() > 60, (near.mean(), far.mean())


def test_the_page_opens_from_disk_with_the_input_left_and_the_result_right(browser, deepzoom):
    d, input_, result = deepzoom
    page = write_viewer(d / "pano dream.html", d / "pano dream.dzi", d / "pano.dzi")
    open_page(browser, page)
    s = screen(browser)
    assert s["message"] == ""
    assert_curtain_at(s, input_, result)
    assert abs(s["curtain"] - s["shot"].shape[1] / 2) < 1
    urls = requested(browser)
    # nothing from the network: the page, its tiles, the buttons inlined as data: URLs
    assert {u.split(":")[0] for u in urls} <= {"file", "data"}, urls
    assert tile_levels(urls, "pano_files") and tile_levels(urls, "pano%20dream_files")
    assert console_errors(browser) == []


def test_dragging_the_curtain_moves_the_boundary(browser, deepzoom):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    d, input_, result = deepzoom
    open_page(browser, write_viewer(d / "pano dream.html", d / "pano dream.dzi", d / "pano.dzi"))
    before = screen(browser)["curtain"]
    grip = browser.find_element(By.CSS_SELECTOR, "#curtain .grip")
    (ActionChains(browser).click_and_hold(grip).move_by_offset(-120, 5)
     .move_by_offset(-80, 0).release().perform())
    wait_loaded(browser)
    s = screen(browser)
    assert abs(s["curtain"] - (before - 200)) <= 1, (before, s["curtain"])
    assert_curtain_at(s, input_, result)
    (ActionChains(browser).click_and_hold(grip).move_by_offset(300, 0).release().perform())
    wait_loaded(browser)
    s = screen(browser)
    assert abs(s["curtain"] - (before + 100)) <= 1
    assert_curtain_at(s, input_, result)
    # the curtain keeps the focus the drag gave it: arrow keys move it by 2 % of the width
    browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    wait_loaded(browser)
    s = screen(browser)
    assert abs(s["curtain"] - (before + 100 - 0.04 * s["shot"].shape[1])) <= 1
    assert_curtain_at(s, input_, result)
    assert console_errors(browser) == []


def test_tiles_load_at_each_zoom_and_full_zoom_shows_sharp_pixels(browser, deepzoom):
    d, input_, result = deepzoom
    open_page(browser, write_viewer(d / "pano dream.html", d / "pano dream.dzi", d / "pano.dzi"))
    top = int(np.ceil(np.log2(max(WIDTH, HEIGHT))))          # the full-size level: 11
    home = tile_levels(requested(browser), "pano_files")
    assert max(home) < top, home                              # the whole image, from below

    zoom(browser, 1, 0.3, 0.5)
    s = screen(browser)
    assert s["zoom"] == pytest.approx(1)
    assert top in tile_levels(requested(browser), "pano_files")
    assert_curtain_at(s, input_, result)

    # Past 1:1, as far as 8 screen pixels an image pixel, on both sides of the curtain.
    zoom(browser, 8, 0.37, 0.45)
    s = screen(browser)
    assert s["zoom"] == pytest.approx(8)
    assert_curtain_at(s, input_, result)
    assert_sharp(s, input_.shape[:2])
    assert console_errors(browser) == []


def assert_sharp(s: dict, shape: tuple[int, int]) -> None:
    """Neighbouring screen pixels that show one image pixel are equal: the canvas draws each
    image pixel as a square (smoothing off), not a blend of its neighbours."""
    rows, cols = image_coords(s, shape)
    ys = band(s, rows, shape[0])
    xs = np.flatnonzero((cols >= 0) & (cols < shape[1]) & (abs(np.arange(len(cols)) - s["curtain"]) > 16))
    shot = s["shot"][np.ix_(ys, xs)].astype(int)
    # pairs of neighbours whose centres fall in one image pixel, clear of its edges
    fr, fc = rows[ys] % 1, cols[xs] % 1
    same_r = (np.floor(rows[ys][1:]) == np.floor(rows[ys][:-1])) & (fr[:-1] > 0.05) & (fr[1:] < 0.95)
    same_c = (np.floor(cols[xs][1:]) == np.floor(cols[xs][:-1])) & (fc[:-1] > 0.05) & (fc[1:] < 0.95)
    across = (shot[:, 1:] == shot[:, :-1]).all(-1)[:, same_c]
    down = (shot[1:] == shot[:-1]).all(-1)[same_r]
    assert same_c.sum() > 100 and same_r.sum() > 50
    # smoothed, about half of them are equal here (0.52, 0.56); sharp, all
    assert across.mean() > 0.98 and down.mean() > 0.98, (across.mean(), down.mean())


def test_iiif3_layers_show_as_the_deep_zoom_ones_do(browser, deepzoom, tmp_path):
    d, input_, result = deepzoom
    im = pyvips.Image.new_from_array(input_).copy(interpretation="srgb")
    im.dzsave(str(tmp_path / "pano"), layout="iiif3")
    negative(im).dzsave(str(tmp_path / "pano dream"), layout="iiif3")
    page = write_viewer(tmp_path / "pano dream.html", tmp_path / "pano dream",
                        tmp_path / "pano" / "info.json")
    assert tile_source(tmp_path / "pano", tmp_path)["id"] == "pano"
    open_page(browser, page)
    zoom(browser, 1, 0.6, 0.5)
    s = screen(browser)
    assert s["message"] == ""
    assert_curtain_at(s, input_, result)
    assert console_errors(browser) == []


def test_a_page_away_from_its_tiles_says_so(browser, deepzoom, tmp_path):
    d, _, _ = deepzoom
    page = write_viewer(tmp_path / "moved.html", d / "pano dream.dzi", d / "pano.dzi")
    (tmp_path / "elsewhere").mkdir()
    browser.get(page.rename(tmp_path / "elsewhere" / "moved.html").as_uri())
    message = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (function check() {
            const text = document.getElementById("message").textContent;
            if (text) done(text); else setTimeout(check, 50);
        })();""")
    assert message.startswith("tiles are missing (")
    console_errors(browser)     # drain: the failed tiles are logged there


# --- the page as `gigadream run` and `gigadream export` write it --------------------------------

def test_a_deep_zoom_run_writes_the_page_and_the_input_layer_beside_it(browser, photos, tmp_path):
    """-o NAME.dzi: the result, the input as NAME-input.dzi, and NAME.html comparing them; the
    page opens both layers from disk. `gigadream export` of the kept store does the same, and
    refuses, before writing anything, a page that is in the way."""
    from test_cli import gd
    out, store = tmp_path / "cat.dzi", tmp_path / "cat.gdstore"
    r = gd("run", photos["chelsea_jpg"], "-o", out, "--store", store, "--quiet",
           "--set", "mode=identity")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cat-input.dzi", "cat-input_files", "cat.dzi", "cat.dzi.yaml", "cat.gdstore", "cat.html",
        "cat_files"]
    open_page(browser, tmp_path / "cat.html")
    urls = requested(browser)
    assert tile_levels(urls, "cat_files") and tile_levels(urls, "cat-input_files")
    assert console_errors(browser) == []

    (tmp_path / "again.html").write_text("someone's page")
    r = gd("export", store, tmp_path / "again.dzi")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "again.html (beside again.dzi: its viewer) already exists" in r.stderr
    assert not (tmp_path / "again.dzi").exists()
    assert (tmp_path / "again.html").read_text() == "someone's page"
    r = gd("export", store, tmp_path / "again.dzi", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again-input.dzi").exists()
    open_page(browser, tmp_path / "again.html")
    assert tile_levels(requested(browser), "again-input_files")
