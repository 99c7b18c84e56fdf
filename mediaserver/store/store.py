"""`Store`: the one object the rest of the server holds; each method is one repository call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Unpack

from actors.messages import CrashReason
from mediaserver.store import agents, calls, owners, reports, tenants, webhooks
from mediaserver.store.db import Database
from mediaserver.store.migrations import migrate
from mediaserver.store.models import (
    Agent,
    AgentChanges,
    AgentSpec,
    ApiKey,
    Call,
    CallEvent,
    CallStatus,
    Company,
    Conversation,
    DayUsage,
    Owner,
    PhoneNumber,
    TurnRecord,
    Usage,
    Webhook,
    WebhookDelivery,
)
from mediaserver.store.owners import CallEndedBody
from mediaserver.store.reports import CallFilter, CallPage


class Store:
    """Companies, agents, numbers and call records in one SQLite file.

    Tenant methods take `company_id` first and see only that company's rows: `get_*` returns None
    and a change raises `NotFound` for another company's id. The unscoped methods are the ones a
    tenant can never reach: companies, `authenticate*`, `route_number`, the owners and their
    calls, the webhook worker's claims and `admin_list_calls`. Safe to share between coroutines
    on one loop; other processes (the CLI, the other workers) may open the same file at once.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: str, *, busy_timeout_ms: int = 5000) -> Store:
        """Open or create the file at `path` and migrate it to the newest schema.

        Raises:
            SchemaTooNew: a newer mediaserver has migrated the file.
            StoreBusy: another process held the write lock for more than `busy_timeout_ms`.
        """
        db = await Database.connect(path, busy_timeout_ms=busy_timeout_ms)
        try:
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        """Close the connection; idempotent. Calls after this raise `StoreError`."""
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Companies and API keys

    async def create_company(self, name: str) -> Company:
        return await tenants.create_company(self._db, name)

    async def list_companies(self) -> list[Company]:
        return await tenants.list_companies(self._db)

    async def get_company(self, company_id: str) -> Company | None:
        return await tenants.get_company(self._db, company_id)

    async def create_api_key(self, company_id: str, label: str = "") -> tuple[ApiKey, str]:
        """Return the key's record and its plaintext, which is never available again."""
        return await tenants.create_api_key(self._db, company_id, label)

    async def list_api_keys(self, company_id: str) -> list[ApiKey]:
        return await tenants.list_api_keys(self._db, company_id)

    async def revoke_api_key(self, company_id: str, key_id: str) -> ApiKey:
        """Revoke a key; revoking twice keeps the first `revoked_at`."""
        return await tenants.revoke_api_key(self._db, company_id, key_id)

    async def authenticate(self, plaintext: str) -> Company | None:
        """The company whose live key this is; None for anything else, never an exception."""
        found = await tenants.authenticate_key(self._db, plaintext)
        return None if found is None else found[0]

    async def authenticate_key(self, plaintext: str) -> tuple[Company, ApiKey] | None:
        """Like `authenticate`, also returning the key (for per-key rate limits)."""
        return await tenants.authenticate_key(self._db, plaintext)

    # Agents and phone numbers

    async def create_agent(
        self, company_id: str, spec: AgentSpec, *, default: bool = False
    ) -> Agent:
        """Add an agent; the company's first agent, or one made with `default`, is its default."""
        return await agents.create_agent(self._db, company_id, spec, default=default)

    async def list_agents(self, company_id: str) -> list[Agent]:
        return await agents.list_agents(self._db, company_id)

    async def get_agent(self, company_id: str, agent_id: str) -> Agent | None:
        return await agents.get_agent(self._db, company_id, agent_id)

    async def get_default_agent(self, company_id: str) -> Agent | None:
        return await agents.get_default_agent(self._db, company_id)

    async def update_agent(
        self, company_id: str, agent_id: str, **changes: Unpack[AgentChanges]
    ) -> Agent:
        """Change some fields of an agent; the result is validated as a whole."""
        return await agents.update_agent(self._db, company_id, agent_id, changes)

    async def set_default_agent(self, company_id: str, agent_id: str) -> Agent:
        """Make this agent the company's default; the previous default stops being one."""
        return await agents.set_default_agent(self._db, company_id, agent_id)

    async def delete_agent(self, company_id: str, agent_id: str) -> None:
        """Delete an agent that answers no number; a deleted default passes to the oldest left.

        Raises:
            Conflict: phone numbers still route to the agent.
        """
        await agents.delete_agent(self._db, company_id, agent_id)

    async def add_number(self, company_id: str, number: str, agent_id: str) -> PhoneNumber:
        """Route an E.164 number to one of the company's agents; a number has one owner."""
        return await agents.add_number(self._db, company_id, number, agent_id)

    async def list_numbers(self, company_id: str) -> list[PhoneNumber]:
        return await agents.list_numbers(self._db, company_id)

    async def remove_number(self, company_id: str, number: str) -> None:
        await agents.remove_number(self._db, company_id, number)

    async def route_number(self, number: str) -> tuple[Company, Agent] | None:
        """Who answers a dialled number, across all companies; None if nobody (or not E.164)."""
        return await agents.route_number(self._db, number)

    # Conversations and calls

    async def create_conversation(
        self, company_id: str, agent_id: str, peer_id: str
    ) -> Conversation:
        return await calls.create_conversation(self._db, company_id, agent_id, peer_id)

    async def get_conversation(self, company_id: str, conversation_id: str) -> Conversation | None:
        return await calls.get_conversation(self._db, company_id, conversation_id)

    async def start_call(
        self,
        company_id: str,
        *,
        call_id: str | None = None,
        conversation_id: str | None = None,
        agent_id: str,
        transport: str,
        peer_id: str,
        owner_id: str | None = None,
    ) -> Call:
        """Record a new call; a fresh id is made when `call_id` is None.

        Raises:
            NotFound: the agent, the conversation or the owner does not exist (an owner found
                dead has no row: its process must register again before it starts calls).
        """
        return await calls.start_call(
            self._db,
            company_id,
            call_id=call_id,
            conversation_id=conversation_id,
            agent_id=agent_id,
            transport=transport,
            peer_id=peer_id,
            owner_id=owner_id,
        )

    async def end_call(self, company_id: str, call_id: str, reason: str) -> Call:
        """Mark the call ended; idempotent, the first reason wins."""
        return await calls.end_call(self._db, company_id, call_id, reason)

    async def set_call_recording(self, company_id: str, call_id: str, path: str) -> Call:
        return await calls.set_call_recording(self._db, company_id, call_id, path)

    async def get_call(self, company_id: str, call_id: str) -> Call | None:
        return await calls.get_call(self._db, company_id, call_id)

    async def list_calls(
        self,
        company_id: str,
        *,
        limit: int = 50,
        offset: int = 0,
        status: CallStatus | None = None,
        agent_id: str | None = None,
    ) -> list[Call]:
        """The company's calls, newest first."""
        return await calls.list_calls(
            self._db, company_id, limit=limit, offset=offset, status=status, agent_id=agent_id
        )

    async def admin_list_calls(
        self,
        *,
        company_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        status: CallStatus | None = None,
        agent_id: str | None = None,
    ) -> list[Call]:
        """Every company's calls, newest first, for the operator's CLI; never for tenants."""
        return await calls.list_calls(
            self._db, company_id, limit=limit, offset=offset, status=status, agent_id=agent_id
        )

    async def add_call_event(
        self, company_id: str, call_id: str, kind: str, data: Mapping[str, object] | None = None
    ) -> None:
        await self.add_call_events(company_id, call_id, [CallEvent(kind=kind, data=data or {})])

    async def add_call_events(
        self, company_id: str, call_id: str, events: Sequence[CallEvent]
    ) -> None:
        """Record several events in one transaction: all of them or none."""
        await calls.add_call_events(self._db, company_id, call_id, events)

    async def list_events(self, company_id: str, call_id: str) -> list[CallEvent]:
        return await calls.list_events(self._db, company_id, call_id)

    async def add_turn(self, company_id: str, call_id: str, turn: TurnRecord) -> None:
        """Record a finished turn. Raises `Conflict` if the call already has this `seq`."""
        await calls.add_turn(self._db, company_id, call_id, turn)

    async def list_turns(self, company_id: str, call_id: str) -> list[TurnRecord]:
        return await calls.list_turns(self._db, company_id, call_id)

    async def add_usage(self, company_id: str, call_id: str, usage: Usage) -> None:
        await calls.add_usage(self._db, company_id, call_id, usage)

    async def list_usage(self, company_id: str, call_id: str) -> list[Usage]:
        return await calls.list_usage(self._db, company_id, call_id)

    # Owners: the processes that own calls, and the calls of dead ones (decision 0080)

    async def register_owner(
        self, owner_id: str, *, node_id: str, worker_id: int, host: str, pid: int
    ) -> Owner:
        """Add this process's owner row before it starts calls; `Conflict` if the id is taken."""
        return await owners.register_owner(
            self._db, owner_id, node_id=node_id, worker_id=worker_id, host=host, pid=pid
        )

    async def heartbeat(self, owner_id: str) -> bool:
        """Set `last_seen` to now; False when the row is gone (another process found it dead)."""
        return await owners.heartbeat(self._db, owner_id)

    async def list_owners(self) -> list[Owner]:
        return await owners.list_owners(self._db)

    async def retire_owner(self, owner_id: str, *, call_ended_body: CallEndedBody) -> list[Call]:
        """A clean exit: its calls still open end `shutdown` now, with webhooks; the row goes."""
        return await owners.retire_owner(self._db, owner_id, call_ended_body=call_ended_body)

    async def end_owner_calls(
        self,
        owner_id: str,
        reason: CrashReason,
        *,
        call_ended_body: CallEndedBody,
        if_last_seen: float | None = None,
    ) -> list[Call]:
        """End a dead owner's open calls at its last_seen, with webhooks; delete its row.

        One transaction. `NotFound` when the owner is gone, or has beaten since `if_last_seen`.
        """
        return await owners.end_owner_calls(
            self._db,
            owner_id,
            reason,
            call_ended_body=call_ended_body,
            if_last_seen=if_last_seen,
        )

    async def end_unowned_calls(self, *, call_ended_body: CallEndedBody) -> list[Call]:
        """At start only: open calls from before owners (v4) end `server_crash` now."""
        return await owners.end_unowned_calls(self._db, call_ended_body=call_ended_body)

    # Reports (read-only, tenant-scoped)

    async def search_calls(
        self, company_id: str, where: CallFilter, *, limit: int = 50, offset: int = 0
    ) -> CallPage:
        """The company's calls matching `where`, newest first, with the total count."""
        return await reports.search_calls(self._db, company_id, where, limit=limit, offset=offset)

    async def usage_per_day(self, company_id: str, first: dt.date, last: dt.date) -> list[DayUsage]:
        """Calls, minutes, voice-to-voice p50/p95, interruptions and tokens per UTC day."""
        return await reports.usage_per_day(self._db, company_id, first, last)

    async def conversation_turns(
        self, company_id: str, conversation_id: str
    ) -> tuple[Conversation, list[tuple[str, TurnRecord]]]:
        """A conversation and the `(call_id, turn)`s of all its calls; `NotFound` if unknown."""
        return await reports.conversation_turns(self._db, company_id, conversation_id)

    # Webhooks and their durable outbox

    async def set_webhook(self, company_id: str, url: str, secret: str) -> Webhook:
        """Set (or replace) the company's webhook URL and signing secret."""
        return await webhooks.set_webhook(self._db, company_id, url, secret)

    async def get_webhook(self, company_id: str) -> Webhook | None:
        return await webhooks.get_webhook(self._db, company_id)

    async def delete_webhook(self, company_id: str) -> None:
        """Stop sending events; deliveries already queued still go to the URL they were for."""
        await webhooks.delete_webhook(self._db, company_id)

    async def enqueue_webhook(
        self, company_id: str, *, event_id: str, event: str, call_id: str | None, body: str
    ) -> WebhookDelivery | None:
        """Queue a delivery to the company's webhook; None when it has no webhook."""
        return await webhooks.enqueue_webhook(
            self._db, company_id, event_id=event_id, event=event, call_id=call_id, body=body
        )

    async def claim_webhooks(
        self, claimer: str, *, now: float, limit: int, lease_s: float
    ) -> list[WebhookDelivery]:
        """Claim up to `limit` due deliveries, of every company, until `now + lease_s`.

        No other claimer gets them until `claimer` records its attempt or the lease runs out.
        """
        return await webhooks.claim_webhooks(
            self._db, claimer, now=now, limit=limit, lease_s=lease_s
        )

    async def release_webhooks(self, claimer: str) -> int:
        """Give up every claim `claimer` holds, counting no attempt; return how many."""
        return await webhooks.release_webhooks(self._db, claimer)

    async def next_webhook_due_at(self) -> float | None:
        """When a pending delivery can next be claimed (unix seconds), or None."""
        return await webhooks.next_webhook_due_at(self._db)

    async def webhook_secret(self, company_id: str) -> str | None:
        return await webhooks.webhook_secret(self._db, company_id)

    async def record_webhook_attempt(
        self,
        delivery_id: int,
        *,
        claimer: str,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> bool:
        """Count an attempt: delivered, to be retried at `retry_at`, or failed for good.

        Ends `claimer`'s claim. False, and nothing written, when it no longer holds it.
        """
        return await webhooks.record_webhook_attempt(
            self._db,
            delivery_id,
            claimer=claimer,
            delivered=delivered,
            error=error,
            retry_at=retry_at,
        )

    async def list_webhook_deliveries(
        self, company_id: str, *, limit: int = 20
    ) -> list[WebhookDelivery]:
        return await webhooks.list_webhook_deliveries(self._db, company_id, limit=limit)
