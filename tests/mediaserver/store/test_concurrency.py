"""Two writers on one file (the server and the CLI), and a writer killed mid-transaction."""

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mediaserver.store import AgentSpec, Store
from tests.mediaserver.store.support import db_path, raw_sqlite, run, seed
from tests.timing import MS

BATCH_SIZE = 1000


def test_two_stores_on_one_file_write_concurrently_without_losing_rows(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as server, await Store.open(path) as cli:
            tenant = await seed(server, "Acme")

            async def events(store, name):
                for n in range(100):
                    await store.add_call_event(tenant.company_id, tenant.call_id, name, {"n": n})

            async def agents(store, name):
                for n in range(25):
                    await store.create_agent(tenant.company_id, AgentSpec(name=f"{name}-{n}"))

            await asyncio.gather(
                events(server, "server"), events(cli, "cli"), agents(server, "s"), agents(cli, "c")
            )

            kinds = [e.kind for e in await cli.list_events(tenant.company_id, tenant.call_id)]
            assert kinds.count("server") == kinds.count("cli") == 100
            agents_seen = await server.list_agents(tenant.company_id)
            assert len(agents_seen) == 51
            assert sum(a.is_default for a in agents_seen) == 1

    run(main())


def test_a_writer_killed_mid_transaction_leaves_whole_batches_only(tmp_path):
    path = db_path(tmp_path)
    writer = Path(__file__).with_name("crash_writer.py")
    committed = []
    with subprocess.Popen(
        [sys.executable, str(writer), path, str(BATCH_SIZE)], stdout=subprocess.PIPE, text=True
    ) as child:
        timer = threading.Timer(10_000 * MS, child.kill)  # a stuck writer must not hang the suite
        timer.start()
        try:
            assert child.stdout is not None
            for line in child.stdout:
                committed.append(int(line))
                if len(committed) == 10:
                    break
            # Let it start the next transaction, then kill it without warning.
            threading.Event().wait(15 * MS)
            child.send_signal(signal.SIGKILL)
        finally:
            timer.cancel()
            child.kill()
    assert len(committed) == 10, "the writer died before it committed 10 batches"

    with raw_sqlite(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        batches: dict[int, int] = {}
        for (data,) in conn.execute("SELECT data FROM call_events"):
            batch = json.loads(data)["batch"]
            batches[batch] = batches.get(batch, 0) + 1

    assert set(batches.values()) == {BATCH_SIZE}, "a batch survived in part"
    assert sorted(batches) == list(range(len(batches)))
    assert len(batches) >= len(committed)

    # The store opens the file again and keeps working.
    async def main():
        async with await Store.open(path) as store:
            (company,) = await store.list_companies()
            await store.create_agent(company.id, AgentSpec(name="After the crash"))

    run(main())
