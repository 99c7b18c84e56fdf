"""Shared by the store tests: run a coroutine, name a database file, seed a tenant."""

import asyncio
import sqlite3
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mediaserver.store import AgentSpec, Store

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """pytest-asyncio is not installed: each test drives its own event loop."""
    return asyncio.run(coroutine)


def db_path(tmp_path: Path) -> str:
    # A folder that does not exist yet: `Store.open` must create it.
    return str(tmp_path / "data" / "mediaserver.db")


@contextmanager
def raw_sqlite(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, to inspect or tamper with the file; commits, then closes."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class Tenant:
    company_id: str
    agent_id: str
    call_id: str


async def seed(store: Store, name: str) -> Tenant:
    """A company with one agent and one started call."""
    company = await store.create_company(name)
    agent = await store.create_agent(company.id, AgentSpec(name=f"{name} desk"))
    call = await store.start_call(
        company.id, agent_id=agent.id, transport="webrtc", peer_id=f"{name}-peer"
    )
    return Tenant(company.id, agent.id, call.id)
