"""Read-only views over a company's calls: filtered call pages, usage per day, latency summaries.

Every query takes `company_id` and scopes its SQL by it, like the rest of the store. Percentiles
are computed in Python (SQLite has none) with linear interpolation between closest ranks, the
same as numpy's default.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mediaserver.store.calls import CALL_COLUMNS
from mediaserver.store.db import Database
from mediaserver.store.errors import InvalidValue, NotFound
from mediaserver.store.models import (
    TRANSPORTS,
    Call,
    CallStatus,
    Conversation,
    DayUsage,
    TurnRecord,
    Usage,
)
from mediaserver.store.validation import check_choice, check_count

_TURN_FIELDS = (
    "seq",
    "role",
    "text",
    "started_at",
    "ended_at",
    "stt_ms",
    "llm_first_token_ms",
    "tts_first_audio_ms",
    "voice_to_voice_ms",
)
_STATUS_FILTERS = {"active": "ended_at IS NULL", "ended": "ended_at IS NOT NULL"}
LATENCIES = ("stt_ms", "llm_first_token_ms", "tts_first_audio_ms", "voice_to_voice_ms")
MAX_USAGE_DAYS = 366


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFilter:
    """Which of a company's calls to list; None leaves a field unfiltered."""

    status: CallStatus | None = None
    agent_id: str | None = None
    conversation_id: str | None = None
    transport: str | None = None
    started_after: float | None = None  # unix seconds, inclusive
    started_before: float | None = None  # unix seconds, exclusive


@dataclass(frozen=True, slots=True, kw_only=True)
class CallPage:
    calls: list[Call]
    total: int  # calls matching the filter, across all pages


@dataclass(frozen=True, slots=True, kw_only=True)
class Percentiles:
    count: int
    p50: float | None
    p95: float | None
    max: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSummary:
    """What a call's turns and usage add up to (the API's call metrics, the webhook's summary)."""

    duration_s: float | None
    turns: int
    user_turns: int
    assistant_turns: int
    interruptions: int
    latency_ms: dict[str, Percentiles]  # by `LATENCIES` name
    tokens_in: int
    tokens_out: int
    audio_in_s: float
    audio_out_s: float


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0..100) of `values`, interpolated; None for no values."""
    assert 0 <= q <= 100, q
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Iterable[float | None]) -> Percentiles:
    present = [v for v in values if v is not None]
    return Percentiles(
        count=len(present),
        p50=percentile(present, 50),
        p95=percentile(present, 95),
        max=max(present, default=None),
    )


def summarize_call(call: Call, turns: Sequence[TurnRecord], usage: Sequence[Usage]) -> CallSummary:
    """Pure: a call's latency, turn and usage totals."""
    return CallSummary(
        duration_s=None if call.ended_at is None else max(0.0, call.ended_at - call.started_at),
        turns=len(turns),
        user_turns=sum(t.role == "user" for t in turns),
        assistant_turns=sum(t.role == "assistant" for t in turns),
        interruptions=sum(t.interrupted for t in turns),
        latency_ms={name: percentiles(getattr(t, name) for t in turns) for name in LATENCIES},
        tokens_in=sum(u.tokens_in for u in usage),
        tokens_out=sum(u.tokens_out for u in usage),
        audio_in_s=sum(u.audio_in_s for u in usage),
        audio_out_s=sum(u.audio_out_s for u in usage),
    )


def _check_filter(where: CallFilter) -> None:
    if where.status is not None:
        check_choice("status", where.status, _STATUS_FILTERS)
    if where.transport is not None:
        check_choice("transport", where.transport, TRANSPORTS)
    for name in ("started_after", "started_before"):
        value = getattr(where, name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidValue(name, "must be a finite number of unix seconds")


async def search_calls(
    db: Database, company_id: str, where: CallFilter, *, limit: int, offset: int
) -> CallPage:
    """The company's calls matching `where`, newest first, and how many match in all."""
    check_count("limit", limit)
    check_count("offset", offset)
    _check_filter(where)
    clauses: list[str] = ["company_id = ?"]
    params: list[object] = [company_id]
    if where.status is not None:
        clauses.append(_STATUS_FILTERS[where.status])
    for column in ("agent_id", "conversation_id", "transport"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.started_after is not None:
        clauses.append("started_at >= ?")
        params.append(where.started_after)
    if where.started_before is not None:
        clauses.append("started_at < ?")
        params.append(where.started_before)
    condition = " AND ".join(clauses)
    async with db.read() as session:
        total = await session.fetchone(f"SELECT COUNT(*) FROM calls WHERE {condition}", params)
        rows = await session.fetchall(
            f"SELECT {CALL_COLUMNS} FROM calls WHERE {condition}"
            " ORDER BY started_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
    assert total is not None
    return CallPage(calls=[Call(**dict(row)) for row in rows], total=int(total[0]))


def _day_bounds(first: dt.date, last: dt.date) -> tuple[float, float]:
    if last < first:
        raise InvalidValue("to", "must not be before from")
    if (last - first).days >= MAX_USAGE_DAYS:
        raise InvalidValue("to", f"a range spans at most {MAX_USAGE_DAYS} days")
    start = dt.datetime.combine(first, dt.time(), dt.UTC).timestamp()
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
    return start, end


async def usage_per_day(
    db: Database, company_id: str, first: dt.date, last: dt.date
) -> list[DayUsage]:
    """One entry per UTC day from `first` to `last` inclusive that had calls, oldest first."""
    start, end = _day_bounds(first, last)
    day = "date(c.started_at, 'unixepoch')"
    in_range = "c.company_id = ? AND c.started_at >= ? AND c.started_at < ?"
    params = (company_id, start, end)
    async with db.read() as session:
        calls = await session.fetchall(
            f"SELECT {day} AS day, COUNT(*) AS calls,"
            " COALESCE(SUM(c.ended_at - c.started_at), 0) / 60.0 AS minutes"
            f" FROM calls c WHERE {in_range} GROUP BY day",
            params,
        )
        turns = await session.fetchall(
            f"SELECT {day} AS day, t.voice_to_voice_ms, t.interrupted FROM turns t"
            " JOIN calls c ON c.company_id = t.company_id AND c.id = t.call_id"
            f" WHERE {in_range}",
            params,
        )
        tokens = await session.fetchall(
            f"SELECT {day} AS day, SUM(u.tokens_in) AS tokens_in, SUM(u.tokens_out) AS tokens_out"
            " FROM usage u JOIN calls c ON c.company_id = u.company_id AND c.id = u.call_id"
            f" WHERE {in_range} GROUP BY day",
            params,
        )
    latencies: defaultdict[str, list[float]] = defaultdict(list)
    interruptions: defaultdict[str, int] = defaultdict(int)
    for row in turns:
        if row["voice_to_voice_ms"] is not None:
            latencies[row["day"]].append(row["voice_to_voice_ms"])
        interruptions[row["day"]] += row["interrupted"]
    by_day_tokens = {row["day"]: row for row in tokens}
    result = []
    for row in sorted(calls, key=lambda r: str(r["day"])):
        spent: sqlite3.Row | None = by_day_tokens.get(row["day"])
        values = latencies[row["day"]]
        result.append(
            DayUsage(
                day=row["day"],
                calls=row["calls"],
                minutes=round(max(0.0, row["minutes"]), 3),
                voice_to_voice_p50_ms=percentile(values, 50),
                voice_to_voice_p95_ms=percentile(values, 95),
                interruptions=interruptions[row["day"]],
                tokens_in=int(spent["tokens_in"]) if spent is not None else 0,
                tokens_out=int(spent["tokens_out"]) if spent is not None else 0,
            )
        )
    return result


async def conversation_turns(
    db: Database, company_id: str, conversation_id: str
) -> tuple[Conversation, list[tuple[str, TurnRecord]]]:
    """A conversation and every turn of its calls as `(call_id, turn)`, in the order spoken.

    Raises:
        NotFound: no such conversation for this company.
    """
    async with db.read() as session:
        row = await session.fetchone(
            "SELECT * FROM conversations WHERE company_id = ? AND id = ?",
            (company_id, conversation_id),
        )
        if row is None:
            raise NotFound(f"conversation {conversation_id!r}")
        rows = await session.fetchall(
            f"SELECT t.call_id, t.interrupted, {', '.join('t.' + c for c in _TURN_FIELDS)}"
            " FROM turns t JOIN calls c ON c.company_id = t.company_id AND c.id = t.call_id"
            " WHERE c.company_id = ? AND c.conversation_id = ?"
            " ORDER BY c.started_at, c.rowid, t.seq",
            (company_id, conversation_id),
        )
    conversation = Conversation(**dict(row))
    turns = [
        (
            r["call_id"],
            TurnRecord(
                **{name: r[name] for name in _TURN_FIELDS}, interrupted=bool(r["interrupted"])
            ),
        )
        for r in rows
    ]
    return conversation, turns
