"""`GET /healthz` (the process answers) and `GET /readyz` (it would admit a new call).

`/readyz` answers `{"status": S}`: 200 when S is "ready", else 503 with S one of "starting",
"full" (no room for a new call: the load gate is closed or the ledger is full), "draining",
"stopped" or "admission_failed" (the Switchboard is dead: nothing can be admitted). S comes from
one async callable, so a server made of several processes can answer for all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mediaserver.lifecycle import Lifecycle, Readiness

ReadinessCheck = Callable[[], Awaitable[Readiness]]


def lifecycle_readiness(lifecycle: Lifecycle) -> ReadinessCheck:
    """Readiness from the lifecycle alone (a server without calls: the tenant API only)."""

    async def readiness() -> Readiness:
        return lifecycle.readiness()

    return readiness


def health_routes(readiness: ReadinessCheck) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        status = await readiness()
        return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)

    return router
