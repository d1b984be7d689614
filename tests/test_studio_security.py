"""The studio among other people's pages (issue 30), with real parts: a running ``gigadream
serve``, headless Chromium opening an attacker's page served on another loopback port, real
files of each refused format and a real decompression bomb, a real orphan child holding its
job's lock, a burst of concurrent clients while two jobs run."""
from __future__ import annotations

import http.server
import json
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest

from test_studio import DREAM, IDENTITY, server, snapshot  # noqa: F401 (server: a fixture)
from test_resume import assert_no_orphans
from test_viewer import browser  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The --images folder: a 96×96 photo and a 160×112 panorama."""
    from gigadream.sample import make_panorama
    d = tmp_path_factory.mktemp("images")
    make_panorama(d / "small.jpg", 96, 96, quality=95)
    make_panorama(d / "pano.jpg", 160, 112, quality=95)
    return d


def png_bomb(path: Path, w: int, h: int) -> Path:
    """A real PNG of ``w`` × ``h`` 1-bit grey pixels, all black: a few hundred kB that
    decode to w·h pixels (a decompression bomb; 40000² is 1.6 gigapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\0" * (1 + (w + 7) // 8)        # filter byte, then the row's bits
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def refused_files(d: Path) -> dict[str, tuple[Path, str]]:
    """One real file of each refused kind, named as an accepted one would be: its name, and
    what the refusal calls it."""
    import pyvips
    im = pyvips.Image.black(8, 8, bands=3) + 90
    im.gifsave(str(d / "anim.gif"))
    im.heifsave(str(d / "photo.heic"), compression="av1")
    im.vipssave(str(d / "raw.v"))
    files = {
        "drawing.svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
                        b'width="40000" height="40000"><rect width="9" height="9"/></svg>', "XML or SVG"),
        "paper.pdf": (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
                      b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n", "a PDF"),
        "anim.gif": ((d / "anim.gif").read_bytes(), "a GIF"),
        "photo.heic": ((d / "photo.heic").read_bytes(), "HEIF or AVIF"),
        "raw.v": ((d / "raw.v").read_bytes(), "an unknown format"),
        "matrix.mat": (b"2 2\n1 2\n3 4\n", "an unknown format"),
        "pixels.ppm": (b"P6\n2 2\n255\n" + bytes(12), "an unknown format"),
        # FFmpeg's HLS demuxer would read the files a playlist names
        "clip.mp4": (b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", "a playlist"),
    }
    out = {}
    for name, (data, kind) in files.items():
        shown = name.rsplit(".", 1)[0] + (".mp4" if name.endswith(".mp4") else ".jpg")
        (d / shown).write_bytes(data)
        out[shown] = (d / shown, kind)
    return out


# --- requests -----------------------------------------------------------------------------

def test_every_request_is_checked_whatever_its_token_says(tmp_path, server):
    """With the right token still: actions only as JSON POSTs (an upload: multipart with a
    header no form sends), nothing for another site or origin, no CORS, the headers on every
    answer (refusals too); the cookie Secure only where a trusted proxy says HTTPS."""
    s = server()
    token = s.url.partition("?token=")[2]
    cookie = httpx.Client(base_url=s.base, cookies={f"gigadream_token_{s.port}": token})
    body = json.dumps({"input": "small.jpg", "overrides": IDENTITY})
    cases = [
        # a text/plain form post skips the browser's preflight: refused, Origin or not
        (cookie.post("/api/jobs", content=body, headers={"Content-Type": "text/plain"}), 415,
         "expected Content-Type: application/json, got text/plain"),
        (cookie.post("/api/jobs", content=body, headers={
            "Content-Type": "application/x-www-form-urlencoded"}), 415, "expected Content-Type"),
        (cookie.post("/api/images", files={"file": ("a.jpg", b"x", "image/jpeg")}), 403,
         "an upload needs the header 'X-Requested-With: gigadream'"),
        (cookie.post("/api/images", content=b"{}", headers={"Content-Type": "application/json",
                                                             "X-Requested-With": "gigadream"}),
         415, "expected a multipart/form-data upload"),
        (cookie.put("/api/jobs", content=body, headers={"Content-Type": "application/json"}),
         405, "PUT is not a studio action"),
        (cookie.post("/api/jobs", content=body, headers={"Content-Type": "application/json",
                                                         "Origin": "http://127.0.0.1:1"}),
         403, "a request from http://127.0.0.1:1 is not allowed"),
        (cookie.post("/api/jobs", content=body, headers={"Content-Type": "application/json",
                                                         "Sec-Fetch-Site": "same-site"}),
         403, "a request from another site (same-site)"),
        (cookie.get("/thumbs/image/1.jpg", headers={"Sec-Fetch-Site": "cross-site",
                                                     "Sec-Fetch-Mode": "navigate",
                                                     "Sec-Fetch-Dest": "document"}),
         403, "a request from another site (cross-site)"),
        (cookie.get("/api/jobs", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors",
                                          "Sec-Fetch-Dest": "empty"}), 403, "another site"),
        (httpx.get(s.base + "/api/jobs"), 401, "this studio needs its token"),
    ]
    for r, status, message in cases:
        assert r.status_code == status and message in r.text, (status, r.text)
    # a link from another site opens a page (no cookie goes with it: SameSite=Strict)
    r = cookie.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                 "Sec-Fetch-Dest": "document"})
    assert r.status_code == 200
    # a preflight is never answered with CORS
    r = cookie.options("/api/jobs", headers={"Origin": "http://127.0.0.1:1",
                                             "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    for r in (r, httpx.get(s.base + "/"), cookie.get("/images"), cookie.get("/jobs/9")):
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert (r.headers["x-frame-options"], r.headers["x-content-type-options"],
                r.headers["referrer-policy"]) == ("DENY", "nosniff", "no-referrer")
    # a script's JSON POST without Origin passes (the token is its Bearer header)
    assert s.post("/api/jobs/9/stop", {}).status_code == 404
    cookie.close()
    forwarded = {"X-Forwarded-Proto": "https"}
    r = httpx.get(s.base + "/", params={"token": token}, headers=forwarded)
    assert r.status_code == 303 and "secure" not in r.headers["set-cookie"].lower()   # untrusted
    proxied = server("--trusted-proxy", "127.0.0.1", studio=tmp_path / "proxied")
    token = proxied.url.partition("?token=")[2]
    r = httpx.get(proxied.base + "/", params={"token": token}, headers=forwarded)
    assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()
    r = httpx.get(proxied.base + "/", params={"token": token})
    assert "secure" not in r.headers["set-cookie"].lower()


# --- formats and pixels ---------------------------------------------------------------

def test_only_four_raster_formats_and_videos_within_the_pixel_limit(tmp_path, images, server):
    """Each refused format (named .jpg or .mp4: the first bytes decide) and a decompression
    bomb are refused in one line, uploaded or picked or given as a job's input, before any
    decode; nothing is stored. libvips itself, in the server and the children, runs only
    the four loaders."""
    from gigadream.studio.uploads import check_media
    bad = tmp_path / "bad"
    bad.mkdir()
    refused = refused_files(bad)
    bomb = png_bomb(images / "bomb.png", 40000, 40000)
    assert bomb.stat().st_size < 1_000_000
    for name, (path, kind) in refused.items():
        with pytest.raises(Exception, match=f"^{name} is {kind}, not a JPEG, PNG, TIFF or WebP"):
            check_media(path, name, 2_000_000_000)
    # 1.6 gigapixels passes the default of 2 and is refused by a lower --max-pixels
    assert check_media(bomb, "bomb.png", 2_000_000_000) == (40000, 40000, ".png")

    studio = tmp_path / "studio"
    s = server("--max-pixels", 1e9)
    before = snapshot(studio)
    over = "bomb.png is 40000×40000 px (1,600 MP), over the studio's limit of 1,000 MP"
    start = time.perf_counter()
    r = s.post("/api/images", files={"file": ("bomb.png", bomb.read_bytes(), "image/png")})
    took = time.perf_counter() - start
    assert (r.status_code, r.json()["error"].split(" (gigadream")[0]) == (400, over), r.text
    assert took < 5, took               # decoding 1.6 GP would take far longer: not decoded
    assert s.post("/api/images/pick", {"path": "bomb.png"}).json()["error"].startswith(over)
    r = s.post("/api/jobs", {"input": "bomb.png", "overrides": IDENTITY})
    assert r.status_code == 400 and r.json()["error"].startswith(over), r.text
    for name, (path, kind) in refused.items():
        r = s.post("/api/images", files={"file": (name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 400 and r.json()["error"].startswith(f"{name} is {kind}, not"), r.text
        assert "\n" not in r.json()["error"]
    (images / "drawing.jpg").write_bytes(refused["drawing.jpg"][0].read_bytes())
    (images / "photo.mp4").write_bytes((images / "small.jpg").read_bytes())
    try:
        r = s.post("/api/images/pick", {"path": "drawing.jpg"})
        assert r.status_code == 400 and "drawing.jpg is XML or SVG" in r.json()["error"], r.text
        # `run` takes a file for a video by its name: a picked file's name must say what it is
        r = s.post("/api/images/pick", {"path": "photo.mp4"})
        assert r.status_code == 400 and r.json()["error"] == (
            "photo.mp4 holds an image but its name says otherwise; rename it to end in .jpg")
    finally:
        (images / "drawing.jpg").unlink()
        (images / "photo.mp4").unlink()
    assert snapshot(studio) == before
    # an accepted image named as another is stored by what it is
    png = tmp_path / "x.png"
    import pyvips
    (pyvips.Image.black(20, 10, bands=3) + 40).pngsave(str(png))
    up = s.post("/api/images", files={"file": ("photo.jpg", png.read_bytes(), "image/jpeg")}).json()
    assert Path(up["path"]).suffix == ".png" and (up["width"], up["height"]) == (20, 10)

    # libvips, blocked as the server and every child block it, reads none of the others
    code = ("import sys, pyvips; from gigadream.studio.security import block_loaders\n"
            "block_loaders() if sys.argv[1] == 'block' else None\n"
            "for p in sys.argv[2:]:\n"
            "    try: pyvips.Image.new_from_file(p).avg(); print('read')\n"
            "    except pyvips.Error: print('refused')\n")
    svg, gif = str(refused["drawing.jpg"][0]), str(refused["anim.jpg"][0])
    run = lambda how: subprocess.run([sys.executable, "-c", code, how, svg, gif, str(png)],
                                     capture_output=True, text=True, check=True).stdout.split()
    assert run("free") == ["read", "read", "read"]          # the files are real
    assert run("block") == ["refused", "refused", "read"]


# --- presets and batch's config ------------------------------------------------------------

def test_presets_by_name_only_and_batch_configs_from_the_jobs_file(tmp_path, images, server,
                                                                   monkeypatch):
    """A request names a preset (bundled, or in --presets DIR); a path is refused, and a
    file of a preset's name in the server's working folder does not stand in for it.
    ``batch`` takes a relative ``config:`` from the jobs file's folder."""
    from gigadream.config import presets, preset_values
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    planted = "dream: {step_size: 9.5}\n"
    (cwd / "impressionist").write_text(planted)
    (cwd / "impressionist.yaml").write_text(planted)
    (tmp_path / "secret.yaml").write_text(planted)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "soft.yaml").write_text("mode: identity\nexport: {quality: 61}\n")
    s = server("--presets", mine, cwd=cwd)
    for preset in (str(tmp_path / "secret.yaml"), "../secret.yaml", "impressionist.yaml"):
        r = s.get("/api/settings", params={"preset": preset})
        assert r.status_code == 400 and "is not one of the studio's presets" in r.json()["error"]
    rows = {r["key"]: r["value"] for r in s.get("/api/settings?preset=impressionist").json()["settings"]}
    bundled = preset_values("impressionist")["dream"]["step_size"]
    assert rows["dream.step_size"] == json.dumps(bundled) != "9.5"
    assert "soft" in s.get("/api/settings").json()["presets"]
    assert 'id="set-export.quality"' in s.get("/new?preset=soft").text
    a = s.ok("/api/jobs", {"input": "small.jpg", "config": "impressionist",
                           "overrides": IDENTITY})["jobs"][0]
    b = s.ok("/api/jobs", {"input": "small.jpg", "config": "soft",
                           "overrides": ["tiling.tile=64", "engine.workers=1"]})["jobs"][0]
    assert s.job(a)["preset"] == "impressionist"
    s.wait([a, b])
    db = __import__("sqlite3").connect(tmp_path / "studio" / "studio.db")
    stored = dict(db.execute("SELECT id, preset FROM jobs").fetchall())
    assert stored == {a: str(presets()["impressionist"]), b: str(mine / "soft.yaml")}
    folder = tmp_path / "studio" / "jobs"
    assert f"step_size: {bundled}" in (folder / "1" / str(a) / "job.yaml").read_text()
    assert "quality: 61" in (folder / "2" / str(b) / "job.yaml").read_text()

    # batch: config: my.yaml beside the jobs file, batch run from another folder
    from gigadream.studio.batch import queue_file
    from gigadream.studio.runner import Runner, Studio
    jobs_dir = tmp_path / "batch"
    jobs_dir.mkdir()
    (jobs_dir / "in.jpg").write_bytes((images / "small.jpg").read_bytes())
    (jobs_dir / "my.yaml").write_text("mode: identity\ntiling: {tile: 64}\nexport: {quality: 47}\n")
    (jobs_dir / "jobs.yaml").write_text("- input: in.jpg\n  config: my.yaml\n"
                                        "  set: {engine.workers: 1}\n")
    monkeypatch.chdir(cwd)
    other = Studio(tmp_path / "studio-batch")
    (job_id,) = queue_file(other, jobs_dir / "jobs.yaml")
    assert other.queue.job(job_id)["preset"] == str(jobs_dir / "my.yaml")
    Runner(other).run_until_empty()
    done = other.queue.job(job_id)
    assert done["status"] == "done", done
    assert "quality: 47" in (Path(done["dir"]) / "job.yaml").read_text()


# --- another site in a browser ---------------------------------------------------------------

ATTACK = """<!doctype html><html><body>
<img src="{s}/images/1/view/index.html"><img src="{s}/images/1/view/input.dzi">
<img src="{s}/jobs/1/files/result.tif"><img src="{s}/jobs/1/view/result.html">
<img src="{s}/thumbs/image/1.jpg"><img src="{s}/thumbs/job/1.jpg">
<iframe src="{s}/images/1/view/index.html"></iframe><iframe src="{s}/"></iframe>
<iframe name="a"></iframe><iframe name="b"></iframe><iframe name="c"></iframe>
<form id="plain" method="post" enctype="text/plain" action="{s}/api/jobs" target="a">
<input name='{{"input": "small.jpg", "overrides": ["mode=identity"], "x": "' value='"}}'></form>
<form id="multi" method="post" enctype="multipart/form-data" action="{s}/api/images/pick" target="b">
<input name="path" value="pano.jpg"></form>
<form id="url" method="post" action="{s}/api/jobs/1/rerun" target="c"><input name="set" value="{{}}"></form>
<script>
const s = "{s}", waits = [];
for (const im of document.images)
  waits.push(new Promise(r => {{ if (im.complete) r(); im.onload = im.onerror = r; }}));
for (const f of document.querySelectorAll("iframe"))
  waits.push(new Promise(r => {{ f.onload = r; setTimeout(r, 8000); }}));
for (const id of ["plain", "multi", "url"]) document.getElementById(id).submit();
const png = Uint8Array.from(atob("{png}"), c => c.charCodeAt(0));
const upload = new FormData();
upload.append("file", new Blob([png], {{type: "image/png"}}), "x.png");
const body = JSON.stringify({{input: "small.jpg", overrides: ["mode=identity"]}});
for (const [path, init] of [
    ["/api/jobs", {{method: "POST", body: body, headers: {{"Content-Type": "text/plain"}}}}],
    ["/api/jobs", {{method: "POST", body: body}}],
    ["/api/jobs/1/rerun", {{method: "POST", body: "{{}}"}}],
    ["/api/images", {{method: "POST", body: upload}}],
    ["/api/images/pick", {{method: "POST", body: '{{"path": "pano.jpg"}}'}}],
    ["/jobs/1/files/result.tif", {{}}], ["/images/1/view/index.html", {{}}],
    ["/thumbs/image/1.jpg", {{}}]])
  waits.push(fetch(s + path, {{mode: "no-cors", credentials: "include", ...init}}).catch(() => 0));
Promise.allSettled(waits).then(() => {{ window.attacked = true; }});
</script></body></html>"""


def attacker(page: str):
    """A web server on another loopback port that serves ``page``: (its URL, its server)."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/", httpd


@pytest.mark.parametrize("token", ["token", "no-token"])
def test_a_page_of_another_site_builds_queues_and_changes_nothing(tmp_path, images, server,
                                                                  browser, token):
    """Chromium holds the studio's cookie (the printed address was opened), then opens a
    page on another loopback port (same-site: the SameSite=Strict cookie goes along) with
    images, iframes, form posts (text/plain, multipart, urlencoded) and no-cors fetches at
    the studio: no deep zoom, TIFF or thumbnail is built, no job queued, no image added.
    The same with --no-token, where no cookie is needed."""
    import base64
    studio = tmp_path / "studio"
    s = server(*(["--no-token"] if token == "no-token" else []))
    png = tmp_path / "x.png"
    import pyvips
    (pyvips.Image.black(8, 8, bands=3) + 9).pngsave(str(png))
    r = s.post("/api/images", files={"file": ("small.jpg", (images / "small.jpg").read_bytes(),
                                              "image/jpeg")},
               headers={"X-Requested-With": "gigadream"})     # the page's header (no token)
    assert r.status_code == 200, r.text
    job = s.ok("/api/jobs", {"image": 1, "overrides": IDENTITY})["jobs"][0]
    s.wait([job])
    browser.get(s.url)                       # the printed address: the cookie is set
    if token == "token":
        assert f"gigadream_token_{s.port}" in {c["name"] for c in browser.get_cookies()}
    before = snapshot(studio)
    url, httpd = attacker(ATTACK.format(s=s.base, png=base64.b64encode(png.read_bytes()).decode()))
    try:
        browser.get(url)
        end = time.time() + 60
        while not browser.execute_script("return window.attacked === true") and time.time() < end:
            time.sleep(0.2)
        assert browser.execute_script("return window.attacked === true"), \
            browser.get_log("browser")
        time.sleep(1)
    finally:
        httpd.shutdown()
    assert snapshot(studio) == before
    assert s.get("/api/jobs").json()["counts"] == {"done": 1}
    # the studio's own page, in the same browser, still builds what it shows
    browser.get(s.base + "/images/1/view/index.html")
    assert (studio / "thumbs" / "image-1" / "index.html").exists()
    assert snapshot(studio) != before


# --- the orphan of a kill -9 between spawn and pid ------------------------------------------

def test_a_child_whose_pid_was_never_recorded_is_waited_for_before_its_job_resumes(
        tmp_path, images, monkeypatch):
    """The studio is killed after a job's child started and before its pid reached the
    queue: the next start's recovery finds the child by the lock it holds on its job's
    folder, waits for it (here: it never stops, so it is killed after STOP_WAIT_S) and only
    then requeues the job."""
    from gigadream.studio import runner
    from gigadream.studio.runner import Runner, Studio, command, job_files
    from test_resume import marked_env
    studio = Studio(tmp_path / "studio")
    studio.add("orphan", None, [{"input": str(images / "pano.jpg"), "preset": None,
                                 "overrides": DREAM}])
    job = studio.queue.claim("cpu0")          # running, and no pid recorded
    assert job["pid"] is None
    f = job_files(job)
    f["dir"].mkdir(parents=True)
    from gigadream.studio.jobs import check_config, job_yaml
    f["config"].write_text(job_yaml(check_config(None, DREAM)))
    env, mark = marked_env()
    # the orphan: the job's own command line, started by this test (its "studio")
    orphan = subprocess.Popen(command(job), cwd=f["dir"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    lock = f["dir"] / runner.LOCK_NAME
    end = time.time() + 30
    while not (lock.exists() and lock.read_text() == str(orphan.pid)) and time.time() < end:
        time.sleep(0.01)
    assert lock.read_text() == str(orphan.pid)
    orphan.send_signal(signal.SIGSTOP)        # it holds the lock and never finishes stopping
    try:
        monkeypatch.setattr(runner, "STOP_WAIT_S", 2.0)
        start = time.monotonic()
        assert Runner(studio).recover() == [job["id"]]
        waited = time.monotonic() - start
        assert orphan.wait(10) == -signal.SIGKILL       # killed by the recovery
        assert waited >= 2.0, waited
        assert studio.queue.job(job["id"])["status"] == "queued"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
    assert_no_orphans(mark)


# --- a burst of clients while two jobs run ---------------------------------------------------

@pytest.mark.serial          # times the page: alone on the machine
def test_the_queue_page_answers_a_burst_of_clients_while_two_jobs_run(tmp_path, images, server):
    """8 clients at once, 25 requests each, of the queue's page while two dreams run on two
    slots: p95 under 100 ms."""
    s = server("--slots", 2)
    ids = [s.ok("/api/jobs", {"input": "pano.jpg", "overrides": DREAM + [f"seed={i}"]})["jobs"][0]
           for i in range(2)]
    s.wait(ids, until=lambda j: j["status"] == "running" and j["progress"] > 0, timeout=300)
    token = s.url.partition("?token=")[2]
    times: list[float] = []

    def client() -> None:
        with httpx.Client(base_url=s.base, headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as c:
            for _ in range(25):
                t = time.perf_counter()
                r = c.get("/")
                times.append(time.perf_counter() - t)
                assert r.status_code == 200
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    running = [s.job(i)["status"] for i in ids]
    for i in ids:
        s.post(f"/api/jobs/{i}/cancel", {})
    times.sort()
    p95 = times[int(0.95 * len(times)) - 1]
    assert len(times) == 200 and running == ["running", "running"], (len(times), running)
    assert p95 < 0.100, f"p95 {1000 * p95:.0f} ms, median {1000 * times[100]:.0f} ms"
