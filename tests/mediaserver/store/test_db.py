import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mediaserver.store import Conflict, Store, StoreBusy, StoreError
from mediaserver.store.db import Database
from tests.mediaserver.store.support import db_path, raw_sqlite, run
from tests.timing import MS


def test_connection_has_wal_foreign_keys_and_busy_timeout(tmp_path):
    async def main():
        db = await Database.connect(db_path(tmp_path), busy_timeout_ms=1234)
        try:
            async with db.read() as session:
                pragmas = {}
                for name in ("journal_mode", "foreign_keys", "busy_timeout"):
                    row = await session.fetchone(f"PRAGMA {name}")
                    assert row is not None
                    pragmas[name] = row[0]
        finally:
            await db.close()
        return pragmas

    assert run(main()) == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 1234}


def test_a_failing_transaction_leaves_nothing_behind(tmp_path):
    async def main():
        db = await Database.connect(db_path(tmp_path), busy_timeout_ms=1000)
        try:
            async with db.transaction() as tx:
                await tx.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            with pytest.raises(Conflict):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t VALUES (1)")
                    await tx.execute("INSERT INTO t VALUES (1)")
            assert await db.fetchall("SELECT x FROM t") == []
            # The connection is usable again: no transaction was left open.
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (2)")
            return [row[0] for row in await db.fetchall("SELECT x FROM t")]
        finally:
            await db.close()

    assert run(main()) == [2]


def hold_write_lock(path, seconds, locked):
    """Another process's writer, as far as SQLite can tell."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        threading.Event().wait(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_write_waits_for_another_writer_within_the_busy_timeout(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as store:
            locked = threading.Event()
            holder = threading.Thread(target=hold_write_lock, args=(path, 200 * MS, locked))
            holder.start()
            try:
                assert locked.wait(5000 * MS)
                company = await store.create_company("Acme")
            finally:
                holder.join()
            assert await store.get_company(company.id) == company

    run(main())


def test_a_lock_held_past_the_busy_timeout_raises_store_busy(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path, busy_timeout_ms=0) as store:
            locked = threading.Event()
            holder = threading.Thread(target=hold_write_lock, args=(path, 300 * MS, locked))
            holder.start()
            try:
                assert locked.wait(5000 * MS)
                with pytest.raises(StoreBusy):
                    await store.create_company("Acme")
                # Readers are not blocked by a writer in WAL mode.
                assert await store.list_companies() == []
            finally:
                holder.join()
            # And the store recovers once the lock is gone.
            await store.create_company("Acme")

    run(main())


def connect_while_a_rollback_journal_file_is_written(path, *, hold_s, busy_timeout_ms):
    """Connect while another connection writes `path`, which is still in rollback-journal mode.

    Returns the seconds `Database.connect` took, or raises what it raised.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    locked = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(path, hold_s, locked))
    holder.start()

    async def main():
        db = await Database.connect(path, busy_timeout_ms=busy_timeout_ms)
        await db.close()

    try:
        assert locked.wait(5000 * MS)
        started = time.monotonic()
        run(main())
        return time.monotonic() - started
    finally:
        holder.join()


def test_switching_a_new_file_to_wal_waits_for_another_writer_within_the_busy_timeout(tmp_path):
    # SQLite answers this WAL switch with SQLITE_BUSY at once, without calling the busy handler:
    # before `_switch_to_wal` retried it, this failed in about 1 ms (decision 0080).
    path = db_path(tmp_path)

    waited = connect_while_a_rollback_journal_file_is_written(
        path, hold_s=200 * MS, busy_timeout_ms=5000
    )

    assert waited >= 100 * MS
    with raw_sqlite(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_switching_to_wal_still_gives_up_at_the_busy_timeout(tmp_path):
    with pytest.raises(StoreBusy):
        connect_while_a_rollback_journal_file_is_written(
            db_path(tmp_path), hold_s=300 * MS, busy_timeout_ms=50
        )


def test_a_closed_store_raises_store_error(tmp_path):
    async def main():
        store = await Store.open(db_path(tmp_path))
        await store.close()
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.list_companies()

    run(main())
