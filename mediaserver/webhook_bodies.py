"""What each webhook event says: pure functions, values in, the JSON text that is signed out.

`call.ended` is built in two places from the same function: `WebhookEvents` for a call that
ended normally, and the store's dead-owner sweep (`mediaserver/owners.py`) for a call whose
process died, inside the transaction that ends it (decision 0080). docs/http-api.md shows the
shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mediaserver.store import Call, TurnRecord, Usage
from mediaserver.store.reports import CallSummary, Percentiles, summarize_call


def event_body(*, event_id: str, event: str, data: dict[str, Any], created_at: float) -> str:
    """The JSON body of one event; compact, so what is signed is exactly what is sent."""
    return json.dumps(
        {"id": event_id, "type": event, "created_at": created_at, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def _percentiles(p: Percentiles) -> dict[str, Any]:
    return {"count": p.count, "p50": p.p50, "p95": p.p95, "max": p.max}


def summary_data(summary: CallSummary) -> dict[str, Any]:
    """A call's summary as JSON-ready values (the webhook's and the API's shape)."""
    return {
        "duration_s": summary.duration_s,
        "turn_count": summary.turns,
        "user_turns": summary.user_turns,
        "assistant_turns": summary.assistant_turns,
        "interruptions": summary.interruptions,
        "latency_ms": {name: _percentiles(p) for name, p in summary.latency_ms.items()},
        "usage": {
            "tokens_in": summary.tokens_in,
            "tokens_out": summary.tokens_out,
            "audio_in_s": summary.audio_in_s,
            "audio_out_s": summary.audio_out_s,
        },
    }


def call_started_data(call: Call) -> dict[str, Any]:
    """The `data` of a `call.started` event, which every later event of the call repeats."""
    return {
        "call_id": call.id,
        "agent_id": call.agent_id,
        "conversation_id": call.conversation_id,
        "transport": call.transport,
        "peer_id": call.peer_id,
        "started_at": call.started_at,
    }


def call_ended_data(
    call: Call, turns: Sequence[TurnRecord], usage: Sequence[Usage]
) -> dict[str, Any]:
    """The `data` of a `call.ended` event: the call, its summary and its transcript."""
    return {
        **call_started_data(call),
        "ended_at": call.ended_at,
        "end_reason": call.end_reason,
        **summary_data(summarize_call(call, list(turns), list(usage))),
        "transcript": [
            {
                "seq": t.seq,
                "role": t.role,
                "text": t.text,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "interrupted": t.interrupted,
            }
            for t in turns
        ],
    }


def call_ended_body(
    call: Call,
    turns: Sequence[TurnRecord],
    usage: Sequence[Usage],
    *,
    event_id: str,
    created_at: float,
) -> str:
    """The whole `call.ended` body; a `mediaserver.store.CallEndedBody` for the owners' sweep."""
    return event_body(
        event_id=event_id,
        event="call.ended",
        data=call_ended_data(call, turns, usage),
        created_at=created_at,
    )
