"""The tenant HTTP API under `/api/` (docs/http-api.md; schema at `GET /openapi.json`).

    GET    /api/calls                              filters + paging, newest first
    GET    /api/calls/{id}                         the call, its transcript, events and metrics
    POST   /api/calls/{id}/hangup                  end a live call (answers once it has ended)
    GET    /api/calls/{id}/recording               the call's stereo WAV (when recorded)
    GET    /api/conversations/{id}/context         every turn of the conversation's calls
    GET    /api/agents         POST /api/agents    list, create
    GET    /api/agents/{id}    PATCH, DELETE       read, update, delete
    GET    /api/numbers        POST /api/numbers   list, route a number to an agent
    DELETE /api/numbers/{number}
    GET    /api/usage?from=YYYY-MM-DD&to=...       per UTC day: calls, minutes, v2v p50/p95...
    GET    /api/webhook        PUT, DELETE         the company's webhook URL and secret

Every request carries an API key as `Authorization: Bearer msk_...`: missing or not live is 401,
more than `limits.requests_per_min` in a minute for one key is 429 with Retry-After. Every store
call passes the key's company, so another company's id answers exactly like an unknown one: 404.
Bad input is 422 naming the field (FastAPI's shape, also for what only the store can check),
a uniqueness conflict 409.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime, and
# they name the dependency made inside `api_routes`.

import asyncio
import contextlib
import datetime as dt
import logging
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from config.settings import LimitsSettings
from mediaserver.admission.ledger import AdmissionLedger
from mediaserver.calls.live_call import LiveCall
from mediaserver.http.api_models import (
    E164,
    AgentCreate,
    AgentOut,
    AgentUpdate,
    CallDetail,
    CallList,
    CallMetrics,
    CallOut,
    ContextMessage,
    ConversationContext,
    EventOut,
    NumberCreate,
    NumberOut,
    Problem,
    TurnOut,
    UsageDay,
    UsageReport,
    WebhookOut,
    WebhookUpdate,
    faq_rules,
    vad_overrides,
)
from mediaserver.store import (
    AgentChanges,
    AgentSpec,
    CallFilter,
    Company,
    Conflict,
    InvalidValue,
    NotFound,
    Store,
    StoreBusy,
    StoreError,
)
from mediaserver.store.reports import summarize_call
from mediaserver.webhooks import new_secret

logger = logging.getLogger(__name__)

MAX_PAGE = 200
HANGUP_WAIT_S = 10.0  # a hang-up answers once the call has ended, or after this long
DEFAULT_USAGE_DAYS = 30
RECENT_DELIVERIES = 20


class StoreErrorRoute(APIRoute):
    """A route whose store errors become HTTP answers: 404, 409, 422 (naming the field), 503."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except NotFound as exc:
                return JSONResponse({"detail": f"{exc} not found"}, status_code=404)
            except InvalidValue as exc:
                where = "query" if request.method == "GET" else "body"
                field = exc.field.replace("[", ".").replace("]", "").split(".")
                detail = [{"loc": [where, *field], "msg": str(exc), "type": "value_error"}]
                return JSONResponse({"detail": detail}, status_code=422)
            except Conflict as exc:
                return JSONResponse({"detail": str(exc)}, status_code=409)
            except StoreBusy:
                logger.warning("= store busy: %s %s", request.method, request.url.path)
                return JSONResponse(
                    {"detail": "busy, try again"}, status_code=503, headers={"Retry-After": "1"}
                )
            except StoreError:
                logger.exception("= store: %s %s", request.method, request.url.path)
                return JSONResponse({"detail": "internal error"}, status_code=500)

        return route


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


class LiveCalls(Protocol):
    """The calls live in this process (the call edge)."""

    def get(self, call_id: str, /) -> LiveCall | None: ...


def api_routes(  # noqa: PLR0915 - one closure per route
    store: Store, limits: LimitsSettings, ledger: AdmissionLedger, calls: LiveCalls | None = None
) -> APIRouter:
    """The `/api` routes of one store; each key's requests per minute are counted by `ledger`.

    With `calls`, `POST /api/calls/{id}/hangup` ends a live call of this process (with workers,
    a request for another worker's call is forwarded to it before it gets here).
    """
    bearer = HTTPBearer(
        auto_error=False,
        scheme_name="ApiKey",
        description="An API key of your company: `Authorization: Bearer msk_...`",
    )

    async def tenant(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Company:
        unauthorized = HTTPException(
            401, "a live API key is required", headers={"WWW-Authenticate": "Bearer"}
        )
        if credentials is None:
            raise unauthorized
        found = await store.authenticate_key(credentials.credentials)
        if found is None:
            raise unauthorized
        company, key = found
        wait_s = await ledger.api_request(key.id)
        if wait_s > 0:
            raise HTTPException(
                429,
                f"over {limits.requests_per_min} requests per minute for this key",
                headers={"Retry-After": str(math.ceil(wait_s))},
            )
        return company

    Tenant = Annotated[Company, Depends(tenant)]  # noqa: N806 - a type alias
    problem: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "No live API key"},
        422: {"model": Problem, "description": "Invalid input; `detail` names each field"},
        429: {"model": Problem, "description": "Over the key's requests per minute"},
    }
    router = APIRouter(prefix="/api", route_class=StoreErrorRoute, responses=problem)
    not_found: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
    conflict: dict[int | str, dict[str, Any]] = {409: {"model": Problem}}

    # -- calls -----------------------------------------------------------------------------------

    @router.get("/calls", tags=["calls"], summary="List calls, newest first")
    async def list_calls(
        company: Tenant,
        *,
        status: Literal["active", "ended"] | None = None,
        agent_id: str | None = None,
        conversation_id: str | None = None,
        transport: Literal["webrtc", "whip", "twilio", "exotel", "text"] | None = None,
        started_after: Annotated[
            dt.datetime | None, Query(description="ISO 8601 or unix seconds, inclusive")
        ] = None,
        started_before: Annotated[
            dt.datetime | None, Query(description="ISO 8601 or unix seconds, exclusive")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> CallList:
        where = CallFilter(
            status=status,
            agent_id=agent_id,
            conversation_id=conversation_id,
            transport=transport,
            started_after=_timestamp(started_after),
            started_before=_timestamp(started_before),
        )
        page = await store.search_calls(company.id, where, limit=limit, offset=offset)
        return CallList(
            items=[CallOut.from_call(c) for c in page.calls],
            total=page.total,
            limit=limit,
            offset=offset,
        )

    @router.get(
        "/calls/{call_id}",
        tags=["calls"],
        summary="A call with its transcript, events and metrics",
        responses=not_found,
    )
    async def get_call(company: Tenant, call_id: str) -> CallDetail:
        call = await store.get_call(company.id, call_id)
        if call is None:
            raise _not_found("call")
        turns = await store.list_turns(company.id, call_id)
        events = await store.list_events(company.id, call_id)
        usage = await store.list_usage(company.id, call_id)
        return CallDetail(
            **CallOut.from_call(call).model_dump(),
            transcript=[TurnOut.from_turn(t) for t in turns],
            events=[EventOut.from_event(e) for e in events],
            metrics=CallMetrics.from_summary(summarize_call(call, turns, usage)),
        )

    @router.post(
        "/calls/{call_id}/hangup",
        tags=["calls"],
        summary="End a live call; answers once it has ended, with the call",
        responses={**not_found, **conflict},
    )
    async def hang_up(company: Tenant, call_id: str) -> CallOut:
        live = calls.get(call_id) if calls is not None else None
        if live is None or live.company_id != company.id:
            call = await store.get_call(company.id, call_id)
            if call is None:
                raise _not_found("call")
            reason = f"ended: {call.end_reason}" if call.ended_at is not None else "not live"
            raise HTTPException(409, f"the call is {reason}")
        live.hang_up("api_hangup")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.finished.wait(), HANGUP_WAIT_S)
        ended = await store.get_call(company.id, call_id)
        assert ended is not None  # a live call's row is written before it is admitted
        return CallOut.from_call(ended)

    @router.get(
        "/calls/{call_id}/recording",
        tags=["calls"],
        summary="The call's recording: stereo WAV, caller left, agent right",
        response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}}}, **not_found},
    )
    async def get_recording(company: Tenant, call_id: str) -> FileResponse:
        call = await store.get_call(company.id, call_id)
        if call is None or call.recording_path is None or not Path(call.recording_path).is_file():
            raise _not_found("recording")
        return FileResponse(call.recording_path, media_type="audio/wav", filename=f"{call_id}.wav")

    @router.get(
        "/conversations/{conversation_id}/context",
        tags=["calls"],
        summary="Every turn of a conversation's calls, oldest first",
        responses=not_found,
    )
    async def conversation_context(company: Tenant, conversation_id: str) -> ConversationContext:
        conversation, turns = await store.conversation_turns(company.id, conversation_id)
        return ConversationContext(
            id=conversation.id,
            agent_id=conversation.agent_id,
            peer_id=conversation.peer_id,
            created_at=conversation.created_at,
            call_ids=list(dict.fromkeys(call_id for call_id, _ in turns)),
            messages=[
                ContextMessage(
                    role=t.role,
                    content=t.text,
                    call_id=call_id,
                    seq=t.seq,
                    interrupted=t.interrupted,
                )
                for call_id, t in turns
            ],
        )

    # -- agents ----------------------------------------------------------------------------------

    @router.get("/agents", tags=["agents"], summary="List agents")
    async def list_agents(company: Tenant) -> list[AgentOut]:
        return [AgentOut.from_agent(a) for a in await store.list_agents(company.id)]

    @router.post(
        "/agents", tags=["agents"], summary="Create an agent", status_code=201, responses=conflict
    )
    async def create_agent(company: Tenant, body: AgentCreate) -> AgentOut:
        spec = AgentSpec(
            **body.model_dump(exclude={"faq", "vad", "is_default"}),
            faq=faq_rules(body.faq),
            vad=vad_overrides(body.vad),
        )
        agent = await store.create_agent(company.id, spec, default=body.is_default)
        return AgentOut.from_agent(agent)

    @router.get("/agents/{agent_id}", tags=["agents"], summary="Read an agent", responses=not_found)
    async def get_agent(company: Tenant, agent_id: str) -> AgentOut:
        agent = await store.get_agent(company.id, agent_id)
        if agent is None:
            raise _not_found("agent")
        return AgentOut.from_agent(agent)

    @router.patch(
        "/agents/{agent_id}",
        tags=["agents"],
        summary="Change some of an agent's fields",
        responses={**not_found, **conflict},
    )
    async def update_agent(company: Tenant, agent_id: str, body: AgentUpdate) -> AgentOut:
        fields = body.model_dump(exclude_unset=True, exclude={"faq", "vad", "is_default"})
        changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        for name in ("stt_fallback", "llm_fallback", "tts_fallback"):
            if name in fields:
                changes[name] = fields[name]  # an explicit null clears a fallback
        if body.faq is not None:
            changes["faq"] = faq_rules(body.faq)
        if body.vad is not None:
            changes["vad"] = vad_overrides(body.vad)
        agent = await store.update_agent(company.id, agent_id, **_agent_changes(changes))
        if body.is_default:
            agent = await store.set_default_agent(company.id, agent_id)
        return AgentOut.from_agent(agent)

    @router.delete(
        "/agents/{agent_id}",
        tags=["agents"],
        summary="Delete an agent that answers no number",
        status_code=204,
        response_class=Response,
        responses={**not_found, **conflict},
    )
    async def delete_agent(company: Tenant, agent_id: str) -> Response:
        await store.delete_agent(company.id, agent_id)
        return Response(status_code=204)

    # -- numbers ---------------------------------------------------------------------------------

    @router.get("/numbers", tags=["numbers"], summary="List phone numbers")
    async def list_numbers(company: Tenant) -> list[NumberOut]:
        return [NumberOut.from_number(n) for n in await store.list_numbers(company.id)]

    @router.post(
        "/numbers",
        tags=["numbers"],
        summary="Route a phone number to an agent",
        status_code=201,
        responses={**not_found, **conflict},
    )
    async def add_number(company: Tenant, body: NumberCreate) -> NumberOut:
        agent_id = body.agent_id
        if agent_id is None:
            agent = await store.get_default_agent(company.id)
            if agent is None:
                raise _not_found("default agent")
            agent_id = agent.id
        return NumberOut.from_number(await store.add_number(company.id, body.number, agent_id))

    @router.delete(
        "/numbers/{number}",
        tags=["numbers"],
        summary="Stop routing a phone number",
        status_code=204,
        response_class=Response,
        responses=not_found,
    )
    async def remove_number(
        company: Tenant, number: Annotated[str, PathParam(pattern=E164)]
    ) -> Response:
        await store.remove_number(company.id, number)
        return Response(status_code=204)

    # -- usage -----------------------------------------------------------------------------------

    @router.get("/usage", tags=["usage"], summary="Usage per UTC day")
    async def usage(
        company: Tenant,
        first: Annotated[
            dt.date | None,
            Query(alias="from", description=f"Default: {DEFAULT_USAGE_DAYS - 1} days before to"),
        ] = None,
        last: Annotated[dt.date | None, Query(alias="to", description="Default: today")] = None,
    ) -> UsageReport:
        last = last or dt.datetime.now(dt.UTC).date()
        first = first or last - dt.timedelta(days=DEFAULT_USAGE_DAYS - 1)
        days = await store.usage_per_day(company.id, first, last)
        return UsageReport(
            from_=first.isoformat(), to=last.isoformat(), days=[UsageDay.from_day(d) for d in days]
        )

    # -- webhook ---------------------------------------------------------------------------------

    @router.get(
        "/webhook",
        tags=["webhook"],
        summary="The webhook and its recent deliveries",
        responses=not_found,
    )
    async def get_webhook(company: Tenant) -> WebhookOut:
        hook = await store.get_webhook(company.id)
        if hook is None:
            raise _not_found("webhook")
        deliveries = await store.list_webhook_deliveries(company.id, limit=RECENT_DELIVERIES)
        return WebhookOut.from_webhook(hook, deliveries=deliveries)

    @router.put(
        "/webhook",
        tags=["webhook"],
        summary="Set the URL that receives call.started and call.ended (and its secret)",
    )
    async def put_webhook(company: Tenant, body: WebhookUpdate) -> WebhookOut:
        hook = await store.set_webhook(company.id, body.url, body.secret or new_secret())
        return WebhookOut.from_webhook(hook, show_secret=True)

    @router.delete(
        "/webhook",
        tags=["webhook"],
        summary="Stop sending events",
        status_code=204,
        response_class=Response,
        responses=not_found,
    )
    async def delete_webhook(company: Tenant) -> Response:
        await store.delete_webhook(company.id)
        return Response(status_code=204)

    return router


def _timestamp(moment: dt.datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # a time without a zone is UTC
    return moment.timestamp()


def _agent_changes(changes: dict[str, Any]) -> AgentChanges:
    # The keys are AgentUpdate's fields, all of which are AgentSpec's; the store checks values.
    return changes  # type: ignore[return-value]  # a dict built key by key from a model
