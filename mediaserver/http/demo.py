"""`GET /`: the browser demo page (static HTML and JS in `mediaserver/static`, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"


def demo_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return router


def static_files() -> StaticFiles:
    """Mounted at `/static`: the demo page's script and stylesheet."""
    return StaticFiles(directory=STATIC)
