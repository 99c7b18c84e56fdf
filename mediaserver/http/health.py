"""`GET /healthz` (the process answers) and `GET /readyz` (it accepts new calls)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mediaserver.lifecycle import Lifecycle


def health_routes(lifecycle: Lifecycle) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        status = 200 if lifecycle.ready else 503
        return JSONResponse({"status": lifecycle.phase.value}, status_code=status)

    return router
