import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediaserver.store import LATEST_VERSION, AgentSpec, SchemaTooNew, Store, StoreError
from mediaserver.store.db import Database
from mediaserver.store.migrations import MIGRATIONS, migrate
from tests.mediaserver.store.support import db_path, raw_sqlite, run
from tests.timing import MS

PROCESSES = 4


def schema(path):
    """Every table and index as SQLite keeps it, to compare two files' schemas."""
    with raw_sqlite(path) as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))


def versions(path):
    with raw_sqlite(path) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY 1")]


async def migrate_to(path, target):
    db = await Database.connect(path, busy_timeout_ms=1000)
    try:
        return await migrate(db, target=target)
    finally:
        await db.close()


def test_migrations_are_numbered_from_one_without_gaps():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == len(MIGRATIONS) == 4


def test_open_creates_the_folder_and_migrates_a_new_file(tmp_path):
    path = db_path(tmp_path)

    async def main():
        store = await Store.open(path)
        await store.close()

    run(main())
    assert versions(path) == list(range(1, LATEST_VERSION + 1))
    with raw_sqlite(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"companies", "api_keys", "agents", "phone_numbers"} <= tables
    assert {"conversations", "calls", "call_events", "turns", "usage"} <= tables
    assert {"webhooks", "webhook_outbox", "owners"} <= tables


def test_open_migrates_an_empty_file(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")

    async def main():
        async with await Store.open(str(path)) as store:
            await store.create_company("Acme")

    run(main())
    assert versions(path) == list(range(1, LATEST_VERSION + 1))


@pytest.mark.parametrize("old", range(LATEST_VERSION))
def test_open_migrates_every_older_version_to_the_latest(tmp_path, old):
    fresh, path = str(tmp_path / "fresh.db"), db_path(tmp_path)

    async def main():
        await migrate_to(fresh, LATEST_VERSION)
        assert await migrate_to(path, old) == old
        if old >= 1:
            with raw_sqlite(path) as conn:
                conn.execute("INSERT INTO companies VALUES ('c1', 'Old Co', 1.5)")
                conn.execute(
                    "INSERT INTO agents (id, company_id, name, system_prompt, greeting, language,"
                    " voice, stt_engine, llm_engine, tts_engine, created_at, updated_at) VALUES"
                    " ('a1', 'c1', 'Desk', '', '', 'en', '', 'offline', 'offline', 'offline',"
                    " 1.5, 1.5)"
                )
        if old >= 2:  # a call the old server left open
            with raw_sqlite(path) as conn:
                conn.execute(
                    "INSERT INTO calls (id, company_id, agent_id, transport, peer_id, started_at)"
                    " VALUES ('old-call', 'c1', 'a1', 'webrtc', 'peer', 2.5)"
                )
        async with await Store.open(path) as store:
            if old >= 1:
                company = await store.get_company("c1")
                assert company is not None
                assert company.name == "Old Co"
            if old >= 2:
                call = await store.get_call("c1", "old-call")
                assert call is not None
                assert call.active and call.owner_id is None
            # The upgraded file takes the newest rows: an owner and its call, a claim.
            tenant = await store.create_company("New Co")
            agent = await store.create_agent(tenant.id, AgentSpec(name="Desk"))
            owner = await store.register_owner("o1", node_id="n1", worker_id=1, host="h", pid=7)
            call = await store.start_call(
                tenant.id, agent_id=agent.id, transport="text", peer_id="p", owner_id=owner.id
            )
            assert call.owner_id == "o1"
            await store.set_webhook(tenant.id, "https://new.example/hook", "whsec_0123456789abcdef")
            await store.enqueue_webhook(
                tenant.id, event_id="e1", event="call.started", call_id=call.id, body="{}"
            )
            (claimed,) = await store.claim_webhooks("me", now=time.time(), limit=5, lease_s=60)
            assert claimed.claimed_by == "me"

    run(main())
    assert versions(path) == list(range(1, LATEST_VERSION + 1))
    assert schema(path) == schema(fresh)


def test_migration_runner_stops_at_its_target(tmp_path):
    path = db_path(tmp_path)
    assert run(migrate_to(path, 1)) == 1
    assert versions(path) == [1]
    with raw_sqlite(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "companies" in tables
    assert "calls" not in tables


def test_open_refuses_a_newer_schema_and_leaves_the_file_alone(tmp_path):
    path = db_path(tmp_path)
    run(migrate_to(path, LATEST_VERSION))
    with raw_sqlite(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (99,))
    before = schema(path)

    with pytest.raises(SchemaTooNew) as caught:
        run(Store.open(path))

    assert caught.value.found == 99
    assert caught.value.known == LATEST_VERSION
    assert "99" in str(caught.value)
    assert "upgrade mediaserver" in str(caught.value)
    assert schema(path) == before


def test_four_connections_opening_a_new_file_at_once_migrate_it_once(tmp_path):
    path = db_path(tmp_path)

    async def main():
        stores = await asyncio.gather(*(Store.open(path) for _ in range(4)))
        for store in stores:
            await store.close()

    run(main())
    assert versions(path) == list(range(1, LATEST_VERSION + 1))


def test_several_processes_opening_a_new_file_at_once_all_open_it_and_migrate_it_once(tmp_path):
    path = db_path(tmp_path)
    opener = Path(__file__).with_name("open_store.py")
    children = [
        subprocess.Popen(
            [sys.executable, str(opener), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:  # as close together as two writes can be
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        answers = [child.communicate(timeout=30_000 * MS)[0] for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()

    assert answers == ["opened\n"] * PROCESSES
    assert versions(path) == list(range(1, LATEST_VERSION + 1))


def test_open_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database, but somebody's notes\n" * 100)
    before = path.read_bytes()

    with pytest.raises(StoreError, match="not a database"):
        run(Store.open(str(path)))

    assert path.read_bytes() == before
