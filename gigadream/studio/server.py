"""The studio's web app: server-rendered pages (``pages``) and a JSON API (``api``) over the
queue, progress as server-sent events, uploads streamed to disk (``uploads``), results in the
deep-zoom viewer. Who may ask for what is ``security``'s (a token on every request, nothing
built or changed for another site); which files it reads, ``uploads``' (four image formats
and four video containers, known before any decode). Jobs are child processes with
argument lists: no user text reaches a shell.
"""
from __future__ import annotations

import asyncio
import re
import secrets
import statistics
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..config import presets
from ..errors import ConfigError, GigadreamError, InputError
from ..spawn import python_module
from ..text import duration
from . import api as api_routes, pages
from .jobs import checked, expand, is_video, rerun_overrides
from .runner import Runner, Studio, child_command, job_files
from .security import (HTTPError, block_loaders, confine, is_loopback, refusal, secure_cookie,
                       token_redirect, with_headers)
from .uploads import check_media


@dataclass(frozen=True)
class Options:
    """How ``gigadream serve`` was started: what it listens on, its token (None:
    --no-token), its limits, its presets, and who may say it is served over TLS."""
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_upload: int = 8192 * 2**20          # bytes (serve's --max-upload)
    max_pixels: int = 2_000_000_000         # serve's --max-pixels
    presets: dict[str, Path] = field(default_factory=presets)   # by name: the bundled ones
    secure_cookie: bool = False
    trusted_proxies: frozenset[str] = frozenset()


class App:
    """The studio's state shared by the routes: its folder, queue, scheduler and options."""

    def __init__(self, studio: Studio, runner: Runner | None, roots: list[Path],
                 options: Options):
        self.studio, self.queue, self.runner = studio, studio.queue, runner
        self.roots = [Path(r).absolute() for r in roots]
        self.options = o = options
        self.max_upload, self.max_pixels, self.token = o.max_upload, o.max_pixels, o.token
        self.locks: dict[str, asyncio.Lock] = {}

    def preset_file(self, name) -> str:
        """A preset the studio offers (bundled, or in --presets DIR), by name: its YAML
        file's absolute path, which the queue keeps (no file of that name in the server's
        working folder can stand in for it). Never a path from a request."""
        if not isinstance(name, str) or name not in self.options.presets:
            raise ConfigError(f"config: {name!r} is not one of the studio's presets "
                              f"({', '.join(sorted(self.options.presets))}); a request names a "
                              "preset, never a file (start the studio with --presets DIR for "
                              "your own)")
        return str(self.options.presets[name].absolute())

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
        path = confine(value, self.roots)
        check_media(path, value, self.max_pixels)      # as a picked file is checked
        return path

    # --- jobs ---------------------------------------------------------------------------

    def job_or_404(self, job_id: int) -> dict:
        job = self.queue.job(job_id)
        if job is None:
            raise HTTPError(404, f"no job {job_id}")
        return job

    @staticmethod
    def public(job: dict) -> dict:
        """A job's fields that the page and the API show (not its folder on this box)."""
        keep = ("id", "group_id", "kind", "status", "priority", "input", "preset", "overrides",
                "label", "progress", "stage", "eta_s", "tiles_s", "slot", "error", "parent",
                "created", "started", "finished", "run_s", "attempts")
        # a sequence's stages are "frame I/N ..." (sequence._framed): its progress in frames
        at = re.match(r"frame (\d+)/(\d+)\b", job["stage"] or "")
        return {k: job[k] for k in keep} | {
            "preset": Path(job["preset"]).stem if job["preset"] else None,   # a file: its name
            "input_name": Path(job["input"]).name, "video": is_video(job["input"]),
            "frame": [int(at[1]), int(at[2])] if at else None}

    def queue_jobs(self, spec: dict) -> dict:
        """A job or sweep from the page or the API, checked with the CLI's parser before
        anything is queued."""
        if not isinstance(spec, dict):
            raise ConfigError("expected a JSON object: {input, config, set, overrides, sweep}")
        spec = dict(spec)
        if "image" in spec:
            spec["input"] = spec.pop("image")
        if spec.get("config") is not None:
            spec["config"] = self.preset_file(spec["config"])
        gid, ids = self.studio.add(*checked(spec, self.allowed, self.input_path))
        return {"group": gid, "jobs": ids}

    def snapshot(self) -> dict:
        """The queue for the page's live view: jobs waiting, running or stopped, those that
        ended in the last 24 h, the counts of all, the total ETA."""
        jobs = self.queue.jobs("status IN ('running','queued','stopped') OR finished > ?",
                               (time.time() - 24 * 3600,))
        return {"jobs": [self.public(j) for j in jobs], "counts": self.queue.counts(),
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
        job = self.job_or_404(job_id)
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
        return self.public(q.job(job_id))

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
        gid, ids = self.studio.add(name, None, jobs)
        return {"group": gid, "jobs": ids}

    async def derived(self, job: dict, name: str) -> Path:
        """An output made on demand from the job's kept store (once, then kept):
        ``view/result.html`` with its deep zoom layers, or ``result.tif``."""
        f = job_files(job)
        if is_video(job["input"]):
            raise HTTPError(404, f"job {job['id']} made a video: its result is result.mp4")
        if job["status"] != "done":
            raise HTTPError(409, f"job {job['id']} is {job['status']}; its result comes when "
                                 "it is done")
        out = f["dir"] / ("view/result.dzi" if name == "view" else "result.tif")
        want = f["dir"] / "view/result.html" if name == "view" else out
        out.parent.mkdir(exist_ok=True)
        # `gigadream export`, a child process as the jobs are: libvips' memory stays there
        await self.made_once(f"job {job['id']}'s {name}", want, *child_command(
            None, "export", str(f["store"]), str(out), "--config", str(f["config"]),
            "--overwrite"))
        return want

    async def input_view(self, image: dict) -> Path:
        """An input's deep zoom and viewer page (``inputview``), made once when first asked
        for, in ``STUDIO/thumbs/image-ID/``."""
        if is_video(image["path"]):
            raise HTTPError(404, f"image {image['id']} is a video: no deep zoom of it")
        folder = self.studio.thumbs / f"image-{image['id']}"
        check_media(Path(image["path"]), image["name"], self.max_pixels)   # a pick may change
        await self.made_once(f"image {image['id']}'s deep zoom", folder / "index.html",
                             *python_module("gigadream.studio.inputview", image["path"],
                                            folder, image["name"]))
        return folder

    async def made_once(self, what: str, want: Path, *args: str) -> None:
        """Run ``ARGS`` (argument list, no shell) unless ``want`` exists; one at a time
        for each ``want``; its last line of stderr as the error."""
        async with self.locks.setdefault(str(want), asyncio.Lock()):
            if want.exists():
                return
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                line = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise HTTPError(500, f"{what} could not be made: {line[0]}")


def create_app(app: App) -> FastAPI:
    """The ASGI app: the pages and the API behind ``security``'s checks, a refusal or a bad
    setting as one line (JSON for the API, a page otherwise)."""
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["duration"] = duration
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

    web = FastAPI(title="gigadream studio", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def error(status: int, message: str, request: Request):
        if request.url.path.startswith("/api/") or "json" in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status)
        return HTMLResponse(env.get_template("error.html").render(message=message, status=status),
                            status)

    o = app.options

    @web.middleware("http")
    async def guard(request: Request, call_next):
        why = refusal(request, o.token, o.host, o.port)
        if why is not None:
            response = error(why.status, str(why), request)
        else:
            secure = secure_cookie(request, o.secure_cookie, o.trusted_proxies)
            response = token_redirect(request, o.token, o.port, secure) or await call_next(request)
        with_headers(response)
        return response

    @web.exception_handler(HTTPError)
    async def refused(request: Request, e: HTTPError):
        return error(e.status, str(e), request)

    @web.exception_handler(GigadreamError)
    async def user_error(request: Request, e: GigadreamError):
        """A bad setting, input or path: the CLI's own one-line message."""
        return error(400, str(e), request)

    web.include_router(pages.routes(app, env))
    web.include_router(api_routes.routes(app))
    return web


def studio_presets(folder: Path | None) -> dict[str, Path]:
    """The presets the studio offers by name: the bundled ones, and the YAML files of
    ``folder`` (``--presets DIR``; one of a bundled preset's name replaces it)."""
    found = dict(presets())
    if folder is not None:
        if not Path(folder).is_dir():
            raise InputError(f"--presets {folder}: not a folder; give a folder of YAML configs")
        found |= {p.stem: p.absolute() for p in sorted(Path(folder).glob("*.yaml"))}
    return found


def serve(studio_dir: Path, host: str, port: int, roots: list[Path], slots: int | None,
          scheduler: str | None, max_upload_mb: float, no_token: bool, max_pixels: int,
          presets_dir: Path | None, secure: bool, trusted_proxies: list[str]) -> int:
    """``gigadream serve``: the studio's page and scheduler until Ctrl-C or SIGTERM (its jobs
    then stop resumably and wait in the queue for the next start)."""
    import uvicorn
    for r in roots:
        if not Path(r).is_dir():
            raise InputError(f"--images {r}: not a folder")
    if no_token and not is_loopback(host):
        raise ConfigError(f"--no-token: only on loopback (127.0.0.1, ::1); {host} is reachable "
                          "from other machines, so every request needs the token")
    if max_pixels < 1:
        raise ConfigError(f"--max-pixels: expected a number of pixels above 0, got {max_pixels}")
    block_loaders()         # this process's libvips: JPEG, PNG, TIFF, WebP only
    options = Options(host, port, None if no_token else secrets.token_urlsafe(24),
                      int(max_upload_mb * 2**20), int(max_pixels), studio_presets(presets_dir),
                      secure, frozenset(trusted_proxies))
    studio = Studio(studio_dir)
    runner = Runner(studio, slots, scheduler)
    runner.acquire()        # refuse at once, before the port, if another scheduler runs it
    runner.release()
    app = App(studio, runner, roots, options)
    token = options.token
    config = uvicorn.Config(create_app(app), host=host, port=port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5,
                            # uvicorn would believe X-Forwarded-* from 127.0.0.1, any local
                            # user's included: only --trusted-proxy is believed (security)
                            proxy_headers=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"gigadream studio {studio.root}: {url}", flush=True)
    if token is None:
        print("  warning: --no-token: any program or user on this machine can drive the "
              "studio (pages of other sites still cannot)", flush=True)
    print(f"  slots: {', '.join(s for s, _ in runner.slots)}"
          + (f"; images from {', '.join(map(str, roots))}" if roots else ""), flush=True)
    server.run()
    return 0 if server.started else 1
