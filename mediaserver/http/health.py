"""`GET /healthz` (the process answers) and `GET /readyz` (it accepts new calls)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mediaserver.lifecycle import Lifecycle


def health_routes(
    lifecycle: Lifecycle, *, capacity_left: Callable[[], int] | None = None
) -> APIRouter:
    """`capacity_left`, when given, adds how many more calls the server would admit."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        status = 200 if lifecycle.ready else 503
        body: dict[str, object] = {"status": lifecycle.phase.value}
        if capacity_left is not None:
            body["capacity_left"] = capacity_left()
        return JSONResponse(body, status_code=status)

    return router
