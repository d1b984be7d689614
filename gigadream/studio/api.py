"""The studio's JSON API: the queue, its jobs and their buttons, images in, the settings
form's rows, and the queue's changes as server-sent events. Every change is a POST of JSON
(an upload: multipart), as ``security`` checks."""
from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from .security import HTTPError
from .settings_form import settings_form
from .uploads import pick_image, pickable, receive_upload


async def _body(request: Request) -> dict:
    """The request's JSON object (``security`` refused any other content type)."""
    try:
        data = await request.json()
    except ValueError:
        raise HTTPError(400, "expected a JSON body") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "expected a JSON object")
    return data


def routes(app) -> APIRouter:
    """The API over ``app`` (``server.App``), under ``/api/``."""
    router = APIRouter(prefix="/api")

    @router.get("/jobs")
    def list_jobs():
        return app.snapshot()

    @router.get("/jobs/{job_id}")
    def get_job(job_id: int):
        return app.public(app.job_or_404(job_id)) | {"runs": app.queue.runs(job_id)}

    @router.post("/jobs")
    async def new_jobs(request: Request):
        return await asyncio.to_thread(app.queue_jobs, await _body(request))

    @router.post("/jobs/{job_id}/{action}")
    async def job_action(request: Request, job_id: int, action: str):
        data = await _body(request) if await request.body() else {}
        return await asyncio.to_thread(app.act, job_id, action, data)

    @router.get("/groups/{group_id}")
    def get_group(group_id: int):
        group = app.queue.group(group_id)
        if group is None:
            raise HTTPError(404, f"no group {group_id}")
        return group | {"jobs": [app.public(j)
                                 for j in app.queue.jobs("group_id=?", (group_id,))]}

    @router.get("/images")
    def list_images():
        return {"images": app.queue.images(), "pickable": pickable(app.roots)}

    @router.post("/images")
    async def upload(request: Request):
        return await receive_upload(request, app.studio, app.max_upload, app.max_pixels)

    @router.post("/images/pick")
    async def pick(request: Request):
        data = await _body(request)
        return await asyncio.to_thread(pick_image, app.studio, app.roots, data.get("path"),
                                       app.max_pixels)

    @router.get("/settings")
    def settings(preset: str | None = None):
        """The form's rows for one of the studio's presets, by name (never a file)."""
        return {"presets": sorted(app.options.presets),
                "settings": settings_form(app.preset_file(preset) if preset else None)}

    @router.get("/events")
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

    return router
