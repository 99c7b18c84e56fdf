"""The tenant store: companies, their API keys, agents and phone numbers, and call records.

One SQLite file in WAL mode, opened with `Store.open`, migrated forward at open
(`migrations.py`: v1 tenants, v2 calls, v3 webhooks, v4 owners). Schema, by owner:

    companies ─┬─ api_keys        only SHA-256 of the secret + a public 8-char prefix
               ├─ agents ─── phone_numbers   (company_id, agent_id) -> agents: same company
               ├─ conversations ─── calls ─┬─ call_events
               │                           ├─ turns
               │                           └─ usage
               ├─ webhooks        one URL + signing secret
               └─ webhook_outbox  durable deliveries (pending, delivered, failed), each
                                  claimed by one process at a time (a lease)
    owners                        processes that own calls (no company); calls.owner_id

Isolation rule: every tenant-facing query carries `company_id` in its WHERE clause, and child
tables hold `company_id` with a composite foreign key to their parent, so a row of one company can
neither be read through nor attached to another's. Another company's id looks exactly like an
unknown id: None from `get_*`, `NotFound` from anything that changes rows.
Timestamps are unix seconds (REAL). Errors are in `errors.py`, rooted at `StoreError`.
"""

from mediaserver.store.errors import (
    Conflict,
    InvalidValue,
    NotFound,
    SchemaTooNew,
    StoreBusy,
    StoreError,
)
from mediaserver.store.migrations import LATEST_VERSION
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
    FaqRule,
    Owner,
    PhoneNumber,
    Transport,
    TurnRecord,
    TurnRole,
    Usage,
    VadOverrides,
    Webhook,
    WebhookDelivery,
)
from mediaserver.store.owners import CallEndedBody
from mediaserver.store.reports import CallFilter, CallPage, CallSummary, Percentiles
from mediaserver.store.store import Store
from mediaserver.store.validation import (
    LLM_ENGINES,
    STT_ENGINES,
    TTS_ENGINES,
    is_e164,
    parse_faq,
    parse_vad,
)

__all__ = [
    "LATEST_VERSION",
    "LLM_ENGINES",
    "STT_ENGINES",
    "TTS_ENGINES",
    "Agent",
    "AgentChanges",
    "AgentSpec",
    "ApiKey",
    "Call",
    "CallEndedBody",
    "CallEvent",
    "CallFilter",
    "CallPage",
    "CallStatus",
    "CallSummary",
    "Company",
    "Conflict",
    "Conversation",
    "DayUsage",
    "FaqRule",
    "InvalidValue",
    "NotFound",
    "Owner",
    "Percentiles",
    "PhoneNumber",
    "SchemaTooNew",
    "Store",
    "StoreBusy",
    "StoreError",
    "Transport",
    "TurnRecord",
    "TurnRole",
    "Usage",
    "VadOverrides",
    "Webhook",
    "WebhookDelivery",
    "is_e164",
    "parse_faq",
    "parse_vad",
]
