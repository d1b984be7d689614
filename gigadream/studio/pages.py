"""The studio's pages (server-rendered Jinja) and the files they show: results, viewers,
reports, thumbnails."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment

from .jobs import is_video
from .runner import job_files
from .security import HTTPError, inside
from .settings_form import settings_form
from .uploads import check_media, pickable, thumbnail


def routes(app, env: Environment) -> APIRouter:
    """The pages over ``app`` (``server.App``), rendered from ``env``'s templates."""
    router = APIRouter()

    def page(name: str, request: Request, **ctx) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(request=request, **ctx))

    @router.get("/", response_class=HTMLResponse)
    def queue_page(request: Request):
        snap = app.snapshot()
        return page("queue.html", request, snap=snap, slots=app.runner.slots if app.runner else [])

    @router.get("/images", response_class=HTMLResponse)
    def images_page(request: Request):
        images = [im | {"video": is_video(im["path"])} for im in app.queue.images()]
        return page("images.html", request, images=images,
                    pickable=pickable(app.roots), roots=app.roots, limit=app.max_upload)

    @router.get("/new", response_class=HTMLResponse)
    def new_page(request: Request, image: int | None = None, preset: str | None = None):
        preset = preset or "impressionist"
        names = sorted(app.options.presets)
        if preset not in names:
            raise HTTPError(404, f"no preset {preset!r}; the presets: {', '.join(names)}")
        images = [im | {"video": is_video(im["path"])} for im in app.queue.images()]
        return page("new.html", request, images=images, image=image,
                    presets=names, preset=preset, rows=settings_form(app.preset_file(preset)))

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int):
        job = app.job_or_404(job_id)
        f = job_files(job)
        cfg = f["config"].read_text() if f["config"].exists() else ""
        log = f["log"].read_text(errors="replace")[-4000:] if f["log"].exists() else ""
        return page("job.html", request, job=app.public(job), config=cfg, log=log,
                    runs=app.queue.runs(job_id), group=app.queue.group(job["group_id"]))

    @router.get("/groups/{group_id}", response_class=HTMLResponse)
    def group_page(request: Request, group_id: int):
        group = app.queue.group(group_id)
        if group is None:
            raise HTTPError(404, f"no group {group_id}")
        jobs = sorted(app.queue.jobs("group_id=?", (group_id,)), key=lambda j: j["id"])
        return page("group.html", request, group=group, jobs=[app.public(j) for j in jobs])

    @router.get("/jobs/{job_id}/view/{path:path}")
    async def viewer(job_id: int, path: str):
        job = app.job_or_404(job_id)
        await app.derived(job, "view")
        return serve_inside(job_files(job)["dir"] / "view", path, f"job {job_id}'s viewer")

    @router.get("/jobs/{job_id}/files/{name}")
    async def job_file(job_id: int, name: str):
        job = app.job_or_404(job_id)
        f = job_files(job)
        files = {f["result"].name: f["result"], f["yaml"].name: f["yaml"],
                 "job.yaml": f["config"], "log.txt": f["log"]}
        if name == "result.tif" and f["result"].suffix == ".jpg":
            path = await app.derived(job, "tif")
        elif name in files and files[name].is_file():
            path = files[name]
        else:
            raise HTTPError(404, f"job {job_id} has no {name}")
        media = {".yaml": "text/plain", ".txt": "text/plain"}.get(path.suffix)
        return FileResponse(path, media_type=media, filename=f"job{job_id}-{name}"
                            if path.suffix in (".jpg", ".tif", ".mp4") else None)

    @router.get("/jobs/{job_id}/{kind}/{path:path}")
    def report_file(job_id: int, kind: str, path: str):
        """A preview job's page and images, a profile job's report."""
        if kind not in ("preview", "profile"):
            raise HTTPError(404, f"no {kind} of job {job_id}")
        return serve_inside(job_files(app.job_or_404(job_id))[kind], path or "index.html",
                            f"job {job_id}'s {kind}")

    @router.get("/images/{image_id}/view/{path:path}")
    async def input_viewer(image_id: int, path: str):
        image = app.queue.image(image_id)
        if image is None:
            raise HTTPError(404, f"no image {image_id}")
        return serve_inside(await app.input_view(image), path, f"image {image_id}'s deep zoom")

    def serve_inside(folder: Path, path: str, what: str):
        target = inside(folder, path, what)
        media = "text/plain; charset=utf-8" if target.suffix in (".md", ".txt", ".csv") else None
        return FileResponse(target, media_type=media)

    @router.get("/thumbs/{kind}/{item}.jpg")
    def thumb(kind: str, item: int):
        if kind == "image":
            image = app.queue.image(item)
            if image is None:
                raise HTTPError(404, f"no image {item}")
            src = Path(image["path"])
            check_media(src, image["name"], app.max_pixels)     # a picked file may change
        elif kind == "job":
            src = job_files(app.job_or_404(item))["result"]
            if not src.is_file():
                raise HTTPError(404, f"job {item} has no result yet")
        else:
            raise HTTPError(404, f"no thumbnails of {kind}")
        return FileResponse(thumbnail(src, app.studio.thumbs / f"{kind}-{item}.jpg"))

    @router.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    return router
