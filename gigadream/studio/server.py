"""The studio's web app: server-rendered pages and a JSON API over the queue, progress as
server-sent events, uploads streamed to disk, results in the deep-zoom viewer.

Security (the page runs jobs on someone's GPU box):

- Loopback only by default. Bound to any other address, every request, page and API alike,
  needs the token printed at start (``?token=`` once, then a cookie; or
  ``Authorization: Bearer``), as Jupyter does. ``--token`` asks for it on loopback too.
- On loopback, the Host header must name the studio (a DNS-rebinding page cannot reach it)
  and a POST from another origin is refused (a web page cannot queue jobs here).
- Uploads have a size limit, are checked by libvips before they are kept, and are stored
  under generated names; a picked path must resolve inside an ``--images`` folder (no ``..``,
  no symlink out). Jobs are child processes with argument lists: no user text reaches a shell.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sse_starlette.sse import EventSourceResponse

from ..config import field_choices, field_help, preset_values, presets_dir
from ..errors import ConfigError, GigadreamError, InputError
from .jobs import expand, rerun_overrides
from .runner import Runner, Studio, job_files

TOKEN_COOKIE = "gigadream_token"
# libvips loaders and the extension an upload they read is stored with
EXTENSIONS = {"jpegload": ".jpg", "pngload": ".png", "tiffload": ".tif", "webpload": ".webp",
              "heifload": ".heic", "jp2kload": ".jp2", "gifload": ".gif"}
PICKABLE = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".jp2"}
MAX_PICKABLE = 2000      # files listed from the --images folders


class HTTPError(Exception):
    """A refused request: its status and the one-line reason the page shows."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def confine(text: str, roots: list[Path]) -> Path:
    """The file a user picked, as an absolute path that resolves (symlinks followed) inside
    one of ``roots``; relative paths are taken from the first root. Raises InputError."""
    if not roots:
        raise InputError("no --images folders to pick from; start the studio with "
                         "--images DIR, or upload the image")
    given = Path(text)
    if ".." in given.parts:
        raise InputError(f"{text}: '..' is not allowed in a picked path; give a path inside "
                         "the --images folders")
    path = (given if given.is_absolute() else roots[0] / given).resolve()
    if not any(path.is_relative_to(r.resolve()) for r in roots):
        raise InputError(f"{text} is outside the --images folders "
                         f"({', '.join(str(r) for r in roots)}); pick a file inside them")
    if not path.is_file():
        raise InputError(f"{text}: no such file in the --images folders")
    return path


class App:
    """The studio's state shared by the routes: its folder, queue, scheduler and options."""

    def __init__(self, studio: Studio, runner: Runner | None, roots: list[Path],
                 max_upload: int, token: str | None, host: str, port: int):
        self.studio, self.queue, self.runner = studio, studio.queue, runner
        self.roots = [Path(r).absolute() for r in roots]
        self.max_upload, self.token, self.host, self.port = max_upload, token, host, port
        self.locks: dict[str, asyncio.Lock] = {}

    # --- paths --------------------------------------------------------------------------

    def allowed(self, text: str) -> Path:
        """A path in a job's settings (style images, weights): inside --images or uploads."""
        return confine(text, self.roots + [self.studio.images])

    def input_path(self, value: Any) -> Path:
        """A job's input: an image's id (``images`` table) or a picked path."""
        if isinstance(value, int) and not isinstance(value, bool):
            image = self.queue.image(value)
            if image is None:
                raise InputError(f"image {value} is not in the studio; upload or pick it first")
            return Path(image["path"])
        if not isinstance(value, str):
            raise InputError(f"input: expected an image id or a path, got {value!r}")
        return confine(value, self.roots)

    def pickable(self) -> list[dict]:
        """Image files under the --images folders (symlinks that lead out are left out)."""
        out = []
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    p = Path(folder) / name
                    if p.suffix.lower() not in PICKABLE or name.startswith("."):
                        continue
                    try:
                        real = confine(str(p), self.roots)
                    except InputError:
                        continue
                    out.append({"path": str(p), "resolved": str(real),
                                "bytes": real.stat().st_size})
                    if len(out) >= MAX_PICKABLE:
                        return out
        return out

    # --- jobs ---------------------------------------------------------------------------

    def queue_jobs(self, spec: dict) -> dict:
        """A job or sweep from the page or the API, checked with the CLI's parser before
        anything is queued."""
        if not isinstance(spec, dict):
            raise ConfigError("expected a JSON object: {input, config, set, overrides, sweep}")
        spec = dict(spec)
        if "image" in spec:
            spec["input"] = spec.pop("image")
        config = spec.get("config")
        if isinstance(config, str) and config not in presets():
            spec["config"] = str(confine(config, self.roots))   # a YAML file: picked as images are
        name, sweep, jobs = expand(spec, self.allowed, self.input_path)
        from ..ingest import image_shape
        image_shape(jobs[0]["input"])       # its header: a damaged input fails now
        gid = self.queue.add_group(name, sweep, jobs, self.studio.jobs_dir)
        ids = [j["id"] for j in self.queue.jobs("group_id=?", (gid,))]
        return {"group": gid, "jobs": sorted(ids)}

    def snapshot(self) -> dict:
        """The queue for the page's live view: jobs waiting, running or stopped, those that
        ended in the last 24 h, the counts of all, the total ETA."""
        jobs = self.queue.jobs("status IN ('running','queued','stopped') OR finished > ?",
                               (time.time() - 24 * 3600,))
        return {"jobs": [_public(j) for j in jobs], "counts": self.queue.counts(),
                "eta_s": self.total_eta(jobs)}

    def total_eta(self, jobs: list[dict]) -> float | None:
        """The queue's ETA: the running jobs' longest, plus the queued ones at the mean
        time of recent finished jobs, spread over the slots; None while nothing says."""
        running = [j for j in jobs if j["status"] == "running"]
        queued = [j for j in jobs if j["status"] == "queued"]
        done = [r["run_s"] for r in self.queue.query(
            "SELECT run_s FROM jobs WHERE status='done' ORDER BY finished DESC LIMIT 20")]
        if any(j["eta_s"] is None for j in running) or (queued and not done):
            return None
        slots = len(self.runner.slots) if self.runner else 1
        longest = max((j["eta_s"] for j in running), default=0.0)
        return longest + (statistics.mean(done) * len(queued) / slots if queued else 0.0)

    def act(self, job_id: int, action: str, body: dict) -> dict:
        """stop, resume, cancel, priority, rerun: the queue's buttons."""
        job = self.queue.job(job_id)
        if job is None:
            raise HTTPError(404, f"no job {job_id}")
        q = self.queue
        if action == "stop":
            ok = (q.transition(job_id, ("running",), stop="stop")
                  or q.transition(job_id, ("queued",), status="stopped", stage="stopped"))
        elif action == "cancel":
            ok = (q.transition(job_id, ("running",), stop="cancel")
                  or q.transition(job_id, ("queued", "stopped", "failed"), status="cancelled",
                                  stage="cancelled", finished=time.time()))
        elif action == "resume":
            ok = q.transition(job_id, ("stopped", "failed"), status="queued", stage="",
                              error=None, finished=None)
        elif action == "priority":
            p = body.get("priority")
            if isinstance(p, bool) or not isinstance(p, int):
                raise HTTPError(400, f"priority: expected an integer, got {p!r}")
            ok = q.transition(job_id, ("queued", "running", "stopped"), priority=p)
        elif action == "rerun":
            return self.rerun(job, body)
        else:
            raise HTTPError(404, f"unknown action {action!r}")
        if not ok:
            raise HTTPError(409, f"job {job_id} is {q.job(job_id)['status']}: cannot {action} it")
        return _public(q.job(job_id))

    def rerun(self, job: dict, body: dict) -> dict:
        """A new job: this one's input and settings, with ``set`` / ``overrides`` applied."""
        changes = body.get("set") or {}
        raw = body.get("overrides") or []
        if not isinstance(changes, dict) or not isinstance(raw, list):
            raise ConfigError("rerun: expected set: {KEY: VALUE} and/or overrides: [KEY=VALUE]")
        spec = {"input": job["input"], "config": job["preset"],
                "overrides": rerun_overrides(job, changes) + raw,
                "name": f"re-run of job {job['id']}"}
        name, _, jobs = expand(spec, self.allowed, lambda p: Path(p))
        label = {k: v for k, v in changes.items()} | {
            o.partition("=")[0]: o.partition("=")[2] for o in raw}
        jobs[0].update(label=label, parent=job["id"], priority=job["priority"])
        gid = self.queue.add_group(name, None, jobs, self.studio.jobs_dir)
        return {"group": gid, "jobs": [j["id"] for j in self.queue.jobs("group_id=?", (gid,))]}

    async def derived(self, job: dict, name: str) -> Path:
        """An output made on demand from the job's kept store (once, then kept):
        ``view/result.html`` with its deep zoom layers, or ``result.tif``."""
        f = job_files(job)
        if job["status"] != "done":
            raise HTTPError(409, f"job {job['id']} is {job['status']}; its result comes when "
                                 "it is done")
        out = f["dir"] / ("view/result.dzi" if name == "view" else "result.tif")
        want = f["dir"] / "view/result.html" if name == "view" else out
        out.parent.mkdir(exist_ok=True)
        # `gigadream export`, a child process as the jobs are: libvips' memory stays there
        await self.made_once(f"job {job['id']}'s {name}", want, "-m", "gigadream", "export",
                             str(f["store"]), str(out), "--config", str(f["config"]),
                             "--overwrite")
        return want

    async def input_view(self, image: dict) -> Path:
        """An input's deep zoom and viewer page (``inputview``), made once when first asked
        for, in ``STUDIO/thumbs/image-ID/``."""
        folder = self.studio.thumbs / f"image-{image['id']}"
        await self.made_once(f"image {image['id']}'s deep zoom", folder / "index.html", "-m",
                             "gigadream.studio.inputview", image["path"], str(folder),
                             image["name"])
        return folder

    async def made_once(self, what: str, want: Path, *args: str) -> None:
        """Run ``python ARGS`` (argument list, no shell) unless ``want`` exists; one at a time
        for each ``want``; its last line of stderr as the error."""
        async with self.locks.setdefault(str(want), asyncio.Lock()):
            if want.exists():
                return
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                line = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise HTTPError(500, f"{what} could not be made: {line[0]}")


def _public(job: dict) -> dict:
    keep = ("id", "group_id", "kind", "status", "priority", "input", "preset", "overrides",
            "label", "progress", "stage", "eta_s", "tiles_s", "slot", "error", "parent",
            "created", "started", "finished", "run_s", "attempts")
    return {k: job[k] for k in keep} | {"input_name": Path(job["input"]).name}


# --- uploads -------------------------------------------------------------------------------

class _TooLarge(Exception):
    pass


async def receive_upload(request, app: App) -> dict:
    """The multipart body's ``file`` part, streamed to a temporary file in the studio's
    images folder piece by piece (python-multipart's streaming parser: a 250 MB panorama
    never sits in memory), at most ``app.max_upload`` bytes; checked by libvips (its header,
    decoding nothing), then renamed to a generated name and added to the studio."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPError(400, "expected a multipart/form-data upload with a 'file' field")
    limit_mb = f"{app.max_upload / 2**20:g} MB"
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > app.max_upload + 65536:
        raise HTTPError(413, f"upload of {int(length) / 2**20:.1f} MB is over the studio's "
                             f"limit of {limit_mb} (gigadream serve --max-upload); pick the "
                             "file from an --images folder instead")
    tmp = app.studio.images / f".upload-{uuid.uuid4().hex}.part"
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
            if st["size"] > app.max_upload:
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
        return _accept_upload(app, tmp, st["name"], st["size"])
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


def _accept_upload(app: App, tmp: Path, name: str, size: int) -> dict:
    import pyvips

    from ..ingest import image_shape
    shown = Path(name).name or "upload"
    try:
        h, w = image_shape(tmp)
        loader = pyvips.Image.new_from_file(str(tmp), access="sequential").get("vips-loader")
    except (InputError, pyvips.Error) as e:
        reason = str(e).replace(f"input {tmp} ", "").replace(str(tmp), shown)
        raise HTTPError(400, f"{shown} is not an image libvips can read: {reason}") from None
    final = app.studio.images / f"{uuid.uuid4().hex}{EXTENSIONS.get(loader, '.img')}"
    os.replace(tmp, final)
    return app.queue.add_image(final, shown, "upload", w, h, size)


def pick_image(app: App, text: Any) -> dict:
    from ..ingest import image_shape
    if not isinstance(text, str) or not text:
        raise InputError("pick: expected {\"path\": PATH inside an --images folder}")
    path = confine(text, app.roots)
    h, w = image_shape(path)
    return app.queue.add_image(path, path.name, "pick", w, h, path.stat().st_size)


def thumbnail(src: Path, out: Path, side: int = 256) -> Path:
    """A JPEG at most ``side`` px long of ``src`` (libvips' shrink-on-load: a 250 MB
    panorama's thumbnail reads a fraction of it), cached at ``out``."""
    import pyvips
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp.jpg")   # requests run in threads
        pyvips.Image.thumbnail(str(src), side).jpegsave(str(tmp), Q=85)
        os.replace(tmp, out)
    return out


# --- the settings form ---------------------------------------------------------------------

def presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def settings_form(preset: str | None) -> list[dict]:
    """Every setting (``config.field_help``: the table of ``run --help``) with its help, its
    choices, its default and the preset's value: the form's rows."""
    # the preset's own values, unchecked: a style preset names no style image yet
    values = _flat(preset_values(preset)) if preset else {}
    rows = []
    for key, default, help_ in field_help():
        v = values.get(key, default)
        rows.append({"key": key, "default": _text(default), "value": _text(v), "help": help_,
                     "choices": [str(c) for c in field_choices(key) or ()]})
    return rows


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k in {"model", "dream", "style", "keep_far", "tiling",
                                                  "engine", "export"}:
            out |= _flat(v, f"{k}.")
        else:
            out[prefix + k] = v
    return out


# --- the ASGI app --------------------------------------------------------------------------

def create_app(app: App) -> FastAPI:

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["duration"] = _duration
    env.filters["mb"] = lambda n: f"{(n or 0) / 1e6:.1f} MB"

    @asynccontextmanager
    async def lifespan(_):
        if app.runner is not None:
            app.runner.start()
        try:
            yield
        finally:
            if app.runner is not None:
                await asyncio.to_thread(app.runner.shutdown)

    api = FastAPI(title="gigadream studio", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def page(name: str, request: Request, **ctx) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(request=request, **ctx))

    def error(status: int, message: str, request: Request):
        if request.url.path.startswith("/api/") or "json" in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status)
        return HTMLResponse(env.get_template("error.html").render(message=message, status=status),
                            status)

    @api.middleware("http")
    async def guard(request: Request, call_next):
        """The token where one is required; on loopback without one, the Host and Origin."""
        given = None
        if app.token:
            auth = request.headers.get("authorization", "")
            given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                     or (auth[7:] if auth.lower().startswith("bearer ") else None))
            if not given or not hmac.compare_digest(given, app.token):
                return error(401, "this studio needs its token: open the address that "
                                  "'gigadream serve' printed (…/?token=…), or send "
                                  "'Authorization: Bearer TOKEN'", request)
        else:
            host = request.headers.get("host", "")
            if host not in app_hosts(app):
                return error(421, f"host {host!r} is not this studio's address", request)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and \
                origin.split("://", 1)[-1] != request.headers.get("host"):
            return error(403, f"a request from {origin} is not allowed to change the studio",
                         request)
        response = await call_next(request)
        if app.token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, app.token, httponly=True, samesite="strict")
        return response

    @api.exception_handler(HTTPError)
    async def refused(request: Request, e: HTTPError):
        return error(e.status, str(e), request)

    @api.exception_handler(GigadreamError)
    async def user_error(request: Request, e: GigadreamError):
        """A bad setting, input or path: the CLI's own one-line message."""
        return error(400, str(e), request)

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise HTTPError(400, "expected a JSON body") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "expected a JSON object")
        return data

    def job_or_404(job_id: int) -> dict:
        job = app.queue.job(job_id)
        if job is None:
            raise HTTPError(404, f"no job {job_id}")
        return job

    # pages --------------------------------------------------------------------------------

    @api.get("/", response_class=HTMLResponse)
    def queue_page(request: Request):
        snap = app.snapshot()
        return page("queue.html", request, snap=snap, slots=app.runner.slots if app.runner else [])

    @api.get("/images", response_class=HTMLResponse)
    def images_page(request: Request):
        return page("images.html", request, images=app.queue.images(), pickable=app.pickable(),
                    roots=app.roots, limit=app.max_upload)

    @api.get("/new", response_class=HTMLResponse)
    def new_page(request: Request, image: int | None = None, preset: str | None = None):
        preset = preset or "impressionist"
        if preset not in presets():
            raise HTTPError(404, f"no preset {preset!r}; the presets: {', '.join(presets())}")
        return page("new.html", request, images=app.queue.images(), image=image,
                    presets=presets(), preset=preset, rows=settings_form(preset))

    @api.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int):
        job = job_or_404(job_id)
        f = job_files(job)
        cfg = f["config"].read_text() if f["config"].exists() else ""
        log = f["log"].read_text(errors="replace")[-4000:] if f["log"].exists() else ""
        return page("job.html", request, job=_public(job), config=cfg, log=log,
                    runs=app.queue.runs(job_id), group=app.queue.group(job["group_id"]))

    @api.get("/groups/{group_id}", response_class=HTMLResponse)
    def group_page(request: Request, group_id: int):
        group = app.queue.group(group_id)
        if group is None:
            raise HTTPError(404, f"no group {group_id}")
        jobs = sorted(app.queue.jobs("group_id=?", (group_id,)), key=lambda j: j["id"])
        return page("group.html", request, group=group, jobs=[_public(j) for j in jobs])

    @api.get("/jobs/{job_id}/view/{path:path}")
    async def viewer(job_id: int, path: str):
        job = job_or_404(job_id)
        await app.derived(job, "view")
        return serve_inside(job_files(job)["dir"] / "view", path, f"job {job_id}'s viewer")

    @api.get("/jobs/{job_id}/files/{name}")
    async def job_file(job_id: int, name: str):
        job = job_or_404(job_id)
        f = job_files(job)
        files = {"result.jpg": f["result"], "result.jpg.yaml": f["yaml"],
                 "job.yaml": f["config"], "log.txt": f["log"]}
        if name == "result.tif":
            path = await app.derived(job, "tif")
        elif name in files and files[name].is_file():
            path = files[name]
        else:
            raise HTTPError(404, f"job {job_id} has no {name}")
        media = {".yaml": "text/plain", ".txt": "text/plain"}.get(path.suffix)
        return FileResponse(path, media_type=media, filename=f"job{job_id}-{name}"
                            if path.suffix in (".jpg", ".tif") else None)

    @api.get("/jobs/{job_id}/{kind}/{path:path}")
    def report_file(job_id: int, kind: str, path: str):
        """A preview job's page and images, a profile job's report."""
        if kind not in ("preview", "profile"):
            raise HTTPError(404, f"no {kind} of job {job_id}")
        return serve_inside(job_files(job_or_404(job_id))[kind], path or "index.html",
                            f"job {job_id}'s {kind}")

    @api.get("/images/{image_id}/view/{path:path}")
    async def input_viewer(image_id: int, path: str):
        image = app.queue.image(image_id)
        if image is None:
            raise HTTPError(404, f"no image {image_id}")
        return serve_inside(await app.input_view(image), path, f"image {image_id}'s deep zoom")

    def serve_inside(folder: Path, path: str, what: str):
        folder = folder.resolve()
        target = (folder / path).resolve()
        if not target.is_relative_to(folder) or not target.is_file():
            raise HTTPError(404, f"no file {path} in {what}")
        media = "text/plain; charset=utf-8" if target.suffix in (".md", ".txt", ".csv") else None
        return FileResponse(target, media_type=media)

    @api.get("/thumbs/{kind}/{item}.jpg")
    def thumb(kind: str, item: int):
        if kind == "image":
            image = app.queue.image(item)
            if image is None:
                raise HTTPError(404, f"no image {item}")
            src = Path(image["path"])
        elif kind == "job":
            src = job_files(job_or_404(item))["result"]
            if not src.is_file():
                raise HTTPError(404, f"job {item} has no result yet")
        else:
            raise HTTPError(404, f"no thumbnails of {kind}")
        return FileResponse(thumbnail(src, app.studio.thumbs / f"{kind}-{item}.jpg"))

    # the API ------------------------------------------------------------------------------

    @api.get("/api/jobs")
    def list_jobs():
        return app.snapshot()

    @api.get("/api/jobs/{job_id}")
    def get_job(job_id: int):
        return _public(job_or_404(job_id)) | {"runs": app.queue.runs(job_id)}

    @api.post("/api/jobs")
    async def new_jobs(request: Request):
        return await asyncio.to_thread(app.queue_jobs, await body(request))

    @api.post("/api/jobs/{job_id}/{action}")
    async def job_action(request: Request, job_id: int, action: str):
        data = await body(request) if await request.body() else {}
        return await asyncio.to_thread(app.act, job_id, action, data)

    @api.get("/api/groups/{group_id}")
    def get_group(group_id: int):
        group = app.queue.group(group_id)
        if group is None:
            raise HTTPError(404, f"no group {group_id}")
        return group | {"jobs": [_public(j) for j in app.queue.jobs("group_id=?", (group_id,))]}

    @api.get("/api/images")
    def list_images():
        return {"images": app.queue.images(), "pickable": app.pickable()}

    @api.post("/api/images")
    async def upload(request: Request):
        return await receive_upload(request, app)

    @api.post("/api/images/pick")
    async def pick(request: Request):
        data = await body(request)
        return await asyncio.to_thread(pick_image, app, data.get("path"))

    @api.get("/api/settings")
    def settings(preset: str | None = None):
        return {"presets": presets(), "settings": settings_form(preset)}

    @api.get("/api/events")
    async def events(request: Request):
        """The queue's snapshot whenever it changes (checked twice a second)."""
        async def stream():
            last = None
            while not await request.is_disconnected():
                snap = json.dumps(await asyncio.to_thread(app.snapshot))
                if snap != last:
                    last = snap
                    yield {"event": "queue", "data": snap}
                await asyncio.sleep(0.5)
        return EventSourceResponse(stream(), ping=15)

    @api.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    return api


def app_hosts(app: App) -> set[str]:
    """The Host headers that name this studio on loopback."""
    names = {app.host, "localhost", "127.0.0.1", "[::1]"}
    return {f"{n}:{app.port}" for n in names} | ({n for n in names} if app.port == 80 else set())


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def serve(studio_dir: Path, host: str, port: int, roots: list[Path], slots: int | None,
          scheduler: str | None, max_upload_mb: float, force_token: bool) -> int:
    """``gigadream serve``: the studio's page and scheduler until Ctrl-C or SIGTERM (its jobs
    then stop resumably and wait in the queue for the next start)."""
    import uvicorn
    for r in roots:
        if not Path(r).is_dir():
            raise InputError(f"--images {r}: not a folder")
    studio = Studio(studio_dir)
    runner = Runner(studio, slots, scheduler)
    runner.acquire()        # refuse at once, before the port, if another scheduler runs it
    runner.release()
    token = secrets.token_urlsafe(24) if force_token or not is_loopback(host) else None
    app = App(studio, runner, roots, int(max_upload_mb * 2**20), token, host, port)
    config = uvicorn.Config(create_app(app), host=host, port=port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"gigadream studio {studio.root}: {url}", flush=True)
    print(f"  slots: {', '.join(s for s, _ in runner.slots)}"
          + (f"; images from {', '.join(map(str, roots))}" if roots else ""), flush=True)
    server.run()
    return 0 if server.started else 1
