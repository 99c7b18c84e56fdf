"""Conversations, calls, and what is recorded about a call: events, turns, usage."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence

from mediaserver.store.agents import require_agent
from mediaserver.store.db import Database, Session
from mediaserver.store.errors import InvalidValue, NotFound
from mediaserver.store.models import (
    TRANSPORTS,
    TURN_ROLES,
    Call,
    CallEvent,
    CallStatus,
    Conversation,
    TurnRecord,
    Usage,
)
from mediaserver.store.validation import (
    check_choice,
    check_count,
    check_finite,
    check_name,
    data_to_json,
)

logger = logging.getLogger(__name__)

CALL_COLUMNS = (
    "id, company_id, conversation_id, agent_id, transport, peer_id,"
    " started_at, ended_at, end_reason, recording_path, owner_id"
)
_TURN_COLUMNS = (
    "seq, role, text, started_at, ended_at, interrupted,"
    " stt_ms, llm_first_token_ms, tts_first_audio_ms, voice_to_voice_ms"
)
_STATUS_FILTERS = {"active": "ended_at IS NULL", "ended": "ended_at IS NOT NULL"}


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        id=row["id"],
        company_id=row["company_id"],
        agent_id=row["agent_id"],
        peer_id=row["peer_id"],
        created_at=row["created_at"],
    )


def call_from_row(row: sqlite3.Row) -> Call:
    return Call(**dict(row))


async def _fetch_call(session: Session, company_id: str, call_id: str) -> Call:
    row = await session.fetchone(
        f"SELECT {CALL_COLUMNS} FROM calls WHERE company_id = ? AND id = ?", (company_id, call_id)
    )
    if row is None:
        raise NotFound(f"call {call_id!r}")
    return call_from_row(row)


async def create_conversation(
    db: Database, company_id: str, agent_id: str, peer_id: str
) -> Conversation:
    conversation = Conversation(
        id=uuid.uuid4().hex,
        company_id=company_id,
        agent_id=agent_id,
        peer_id=check_name("peer_id", peer_id),
        created_at=time.time(),
    )
    async with db.transaction() as tx:
        await require_agent(tx, company_id, agent_id)
        await tx.execute(
            "INSERT INTO conversations (id, company_id, agent_id, peer_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (conversation.id, company_id, agent_id, conversation.peer_id, conversation.created_at),
        )
    return conversation


async def get_conversation(
    db: Database, company_id: str, conversation_id: str
) -> Conversation | None:
    row = await db.fetchone(
        "SELECT * FROM conversations WHERE company_id = ? AND id = ?", (company_id, conversation_id)
    )
    return None if row is None else _conversation(row)


async def start_call(
    db: Database,
    company_id: str,
    *,
    call_id: str | None,
    conversation_id: str | None,
    agent_id: str,
    transport: str,
    peer_id: str,
    owner_id: str | None,
) -> Call:
    check_choice("transport", transport, TRANSPORTS)
    call_id = uuid.uuid4().hex if call_id is None else check_name("call_id", call_id)
    peer_id = check_name("peer_id", peer_id)
    async with db.transaction() as tx:
        await require_agent(tx, company_id, agent_id)
        if conversation_id is not None and not await tx.fetchone(
            "SELECT 1 FROM conversations WHERE company_id = ? AND id = ?",
            (company_id, conversation_id),
        ):
            raise NotFound(f"conversation {conversation_id!r}")
        # Checked in the same transaction that deletes a dead owner's row with its open calls,
        # so every open call with an owner has that owner's row: none is ever orphaned.
        if owner_id is not None and not await tx.fetchone(
            "SELECT 1 FROM owners WHERE id = ?", (owner_id,)
        ):
            raise NotFound(f"owner {owner_id!r}")
        # A duplicate call id raises Conflict through the primary key.
        await tx.execute(
            "INSERT INTO calls (id, company_id, conversation_id, agent_id, transport, peer_id,"
            " started_at, owner_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call_id,
                company_id,
                conversation_id,
                agent_id,
                transport,
                peer_id,
                time.time(),
                owner_id,
            ),
        )
        call = await _fetch_call(tx, company_id, call_id)
    logger.info(
        "= call %s started (%s, agent %s)",
        call_id,
        transport,
        agent_id,
        extra={"call_id": call_id},
    )
    return call


async def end_call(db: Database, company_id: str, call_id: str, reason: str) -> Call:
    reason = check_name("reason", reason)
    async with db.transaction() as tx:
        # The first reason wins: a second end_call changes nothing.
        ended = await tx.execute(
            "UPDATE calls SET ended_at = ?, end_reason = ?"
            " WHERE company_id = ? AND id = ? AND ended_at IS NULL",
            (time.time(), reason, company_id, call_id),
        )
        call = await _fetch_call(tx, company_id, call_id)
    if ended:
        logger.info("= call %s ended: %s", call_id, reason, extra={"call_id": call_id})
    return call


async def set_call_recording(db: Database, company_id: str, call_id: str, path: str) -> Call:
    path = check_name("recording_path", path)
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE calls SET recording_path = ? WHERE company_id = ? AND id = ?",
            (path, company_id, call_id),
        )
        return await _fetch_call(tx, company_id, call_id)


async def get_call(db: Database, company_id: str, call_id: str) -> Call | None:
    row = await db.fetchone(
        f"SELECT {CALL_COLUMNS} FROM calls WHERE company_id = ? AND id = ?", (company_id, call_id)
    )
    return None if row is None else call_from_row(row)


async def list_calls(
    db: Database,
    company_id: str | None,
    *,
    limit: int,
    offset: int,
    status: CallStatus | None,
    agent_id: str | None,
) -> list[Call]:
    """Newest first. `company_id=None` lists every company's calls (admin use only)."""
    check_count("limit", limit)
    check_count("offset", offset)
    where, params = ["1"], []
    if company_id is not None:
        where.append("company_id = ?")
        params.append(company_id)
    if status is not None:
        check_choice("status", status, _STATUS_FILTERS)
        where.append(_STATUS_FILTERS[status])
    if agent_id is not None:
        where.append("agent_id = ?")
        params.append(agent_id)
    rows = await db.fetchall(
        f"SELECT {CALL_COLUMNS} FROM calls WHERE {' AND '.join(where)}"
        " ORDER BY started_at DESC, rowid DESC LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )
    return [call_from_row(row) for row in rows]


async def add_call_events(
    db: Database, company_id: str, call_id: str, events: Sequence[CallEvent]
) -> None:
    rows = []
    for index, event in enumerate(events):
        check_name(f"events[{index}].kind", event.kind)
        check_finite(f"events[{index}].at", event.at)
        rows.append((company_id, call_id, event.at, event.kind, data_to_json("data", event.data)))
    async with db.transaction() as tx:
        await _fetch_call(tx, company_id, call_id)
        await tx.executemany(
            "INSERT INTO call_events (company_id, call_id, at, kind, data) VALUES (?, ?, ?, ?, ?)",
            rows,
        )


async def add_turn(db: Database, company_id: str, call_id: str, turn: TurnRecord) -> None:
    _check_turn(turn)
    async with db.transaction() as tx:
        await _fetch_call(tx, company_id, call_id)
        # A repeated seq raises Conflict through the primary key.
        await tx.execute(
            f"INSERT INTO turns (company_id, call_id, {_TURN_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                company_id,
                call_id,
                turn.seq,
                turn.role,
                turn.text,
                turn.started_at,
                turn.ended_at,
                int(turn.interrupted),
                turn.stt_ms,
                turn.llm_first_token_ms,
                turn.tts_first_audio_ms,
                turn.voice_to_voice_ms,
            ),
        )


def _check_turn(turn: TurnRecord) -> None:
    check_count("seq", turn.seq)
    check_choice("role", turn.role, TURN_ROLES)
    if not isinstance(turn.text, str):
        raise InvalidValue("text", "must be a string")
    if not isinstance(turn.interrupted, bool):
        raise InvalidValue("interrupted", "must be a bool")
    check_finite("started_at", turn.started_at)
    check_finite("ended_at", turn.ended_at)
    for name in ("stt_ms", "llm_first_token_ms", "tts_first_audio_ms", "voice_to_voice_ms"):
        check_finite(name, getattr(turn, name), optional=True)


async def add_usage(db: Database, company_id: str, call_id: str, usage: Usage) -> None:
    check_name("provider", usage.provider)
    check_count("tokens_in", usage.tokens_in)
    check_count("tokens_out", usage.tokens_out)
    check_finite("audio_in_s", usage.audio_in_s)
    check_finite("audio_out_s", usage.audio_out_s)
    async with db.transaction() as tx:
        await _fetch_call(tx, company_id, call_id)
        await tx.execute(
            "INSERT INTO usage (company_id, call_id, provider, tokens_in, tokens_out,"
            " audio_in_s, audio_out_s, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                company_id,
                call_id,
                usage.provider,
                usage.tokens_in,
                usage.tokens_out,
                usage.audio_in_s,
                usage.audio_out_s,
                time.time(),
            ),
        )


async def _call_rows(db: Database, company_id: str, call_id: str, sql: str) -> list[sqlite3.Row]:
    """Rows of one call's child table; NotFound when the call is not this company's."""
    async with db.read() as session:
        await _fetch_call(session, company_id, call_id)
        return await session.fetchall(sql, (company_id, call_id))


async def list_events(db: Database, company_id: str, call_id: str) -> list[CallEvent]:
    rows = await _call_rows(
        db,
        company_id,
        call_id,
        "SELECT at, kind, data FROM call_events WHERE company_id = ? AND call_id = ? ORDER BY id",
    )
    return [CallEvent(kind=r["kind"], data=json.loads(r["data"]), at=r["at"]) for r in rows]


_TURNS_SQL = f"SELECT {_TURN_COLUMNS} FROM turns WHERE company_id = ? AND call_id = ? ORDER BY seq"
_USAGE_SQL = (
    "SELECT provider, tokens_in, tokens_out, audio_in_s, audio_out_s FROM usage"
    " WHERE company_id = ? AND call_id = ? ORDER BY id"
)


def _turn(row: sqlite3.Row) -> TurnRecord:
    return TurnRecord(**{**dict(row), "interrupted": bool(row["interrupted"])})


async def read_turns(session: Session, company_id: str, call_id: str) -> list[TurnRecord]:
    """A call's turns in `seq` order, inside the caller's transaction."""
    return [_turn(row) for row in await session.fetchall(_TURNS_SQL, (company_id, call_id))]


async def read_usage(session: Session, company_id: str, call_id: str) -> list[Usage]:
    """A call's usage rows in the order written, inside the caller's transaction."""
    rows = await session.fetchall(_USAGE_SQL, (company_id, call_id))
    return [Usage(**dict(row)) for row in rows]


async def list_turns(db: Database, company_id: str, call_id: str) -> list[TurnRecord]:
    return [_turn(row) for row in await _call_rows(db, company_id, call_id, _TURNS_SQL)]


async def list_usage(db: Database, company_id: str, call_id: str) -> list[Usage]:
    return [Usage(**dict(row)) for row in await _call_rows(db, company_id, call_id, _USAGE_SQL)]
