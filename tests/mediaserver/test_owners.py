"""Who is dead: real pids, real heartbeats and a real SQLite file; only the clock is moved."""

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

from mediaserver.owners import (
    STALE_AFTER_S,
    OwnerHeartbeat,
    end_dead_owners,
    pid_alive,
)
from mediaserver.store import AgentSpec, Store
from tests.timing import MS

HOST = "host-1"
SECRET = "whsec_0123456789abcdef"


def run(main):
    return asyncio.run(asyncio.wait_for(main(), 20_000 * MS))


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def tenant(store):
    company = await store.create_company("acme")
    agent = await store.create_agent(company.id, AgentSpec(name="desk"))
    await store.set_webhook(company.id, "https://acme.example/hook", SECRET)
    return company.id, agent.id


async def owner_with_call(store, ids, owner_id, *, node_id, pid, host=HOST, worker_id=1):
    company_id, agent_id = ids
    await store.register_owner(owner_id, node_id=node_id, worker_id=worker_id, host=host, pid=pid)
    call = await store.start_call(
        company_id, agent_id=agent_id, transport="webrtc", peer_id=owner_id, owner_id=owner_id
    )
    await asyncio.sleep(0.002)
    assert await store.heartbeat(owner_id)  # its last beat comes after the call started
    return call


async def active(store, company_id, call_id):
    call = await store.get_call(company_id, call_id)
    assert call is not None
    return call.active


def test_pid_alive_sees_this_process_and_not_a_reaped_one():
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0) and not pid_alive(-1)


def test_a_worker_gone_from_this_host_ends_worker_crash_and_live_siblings_are_left_alone(
    tmp_path,
):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            ids = await tenant(store)
            crashed = await owner_with_call(
                store, ids, "node-a.1", node_id="node-a", pid=dead_pid()
            )
            sibling = await owner_with_call(
                store, ids, "node-a.2", node_id="node-a", pid=os.getpid(), worker_id=2
            )
            (last_seen,) = [o.last_seen for o in await store.list_owners() if o.id == "node-a.1"]

            ended = await end_dead_owners(store, node_id="node-a", host=HOST, at_start=True)

            (only,) = ended
            assert only.owner is not None and only.owner.id == "node-a.1"
            assert only.reason == "worker_crash"
            assert [(c.id, c.end_reason, c.ended_at) for c in only.calls] == [
                (crashed.id, "worker_crash", last_seen)
            ]
            assert "node-a.1" in str(only) and "1 calls ended worker_crash" in str(only)
            assert await active(store, ids[0], sibling.id)
            assert [o.id for o in await store.list_owners()] == ["node-a.2"]
            (hook,) = await store.list_webhook_deliveries(ids[0])
            assert hook.call_id == crashed.id
            assert json.loads(hook.body)["data"]["end_reason"] == "worker_crash"
            # Nothing more to find.
            assert await end_dead_owners(store, node_id="node-a", host=HOST) == []

    run(main)


def test_a_previous_runs_owners_end_server_crash(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            ids = await tenant(store)
            old = await owner_with_call(
                store, ids, "old-node.0", node_id="old-node", pid=dead_pid()
            )

            (only,) = await end_dead_owners(store, node_id="new-node", host=HOST)

            assert only.reason == "server_crash"
            assert [c.id for c in only.calls] == [old.id]

    run(main)


def test_an_owner_on_another_host_is_dead_only_once_it_is_silent_past_the_bound(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            ids = await tenant(store)
            # Its pid means nothing here: another host. Only its heartbeat can tell.
            far = await owner_with_call(
                store, ids, "far.1", node_id="far", pid=dead_pid(), host="host-2"
            )
            (owner,) = await store.list_owners()

            almost = lambda: owner.last_seen + STALE_AFTER_S - 1  # noqa: E731
            assert await end_dead_owners(store, node_id="near", host=HOST, clock=almost) == []
            assert await active(store, ids[0], far.id)

            later = lambda: owner.last_seen + STALE_AFTER_S + 1  # noqa: E731
            (only,) = await end_dead_owners(store, node_id="near", host=HOST, clock=later)
            assert only.reason == "server_crash"
            assert only.calls[0].ended_at == owner.last_seen  # the silence is not billed

    run(main)


def test_a_live_pid_that_went_silent_is_dead_unless_the_caller_knows_it_alive(tmp_path):
    # A pid can be reused by an unrelated process: the heartbeat decides.
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            ids = await tenant(store)
            mine = await owner_with_call(store, ids, "me", node_id="n", pid=os.getpid())
            (owner,) = await store.list_owners()
            later = lambda: owner.last_seen + STALE_AFTER_S + 1  # noqa: E731

            assert (
                await end_dead_owners(store, node_id="n", host=HOST, alive={"me"}, clock=later)
                == []
            )
            assert await active(store, ids[0], mine.id)
            (only,) = await end_dead_owners(store, node_id="n", host=HOST, clock=later)
            assert only.calls[0].id == mine.id

    run(main)


def test_calls_without_an_owner_end_server_crash_at_start_only(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company_id, agent_id = await tenant(store)
            legacy = await store.start_call(
                company_id, agent_id=agent_id, transport="whip", peer_id="legacy"
            )

            assert await end_dead_owners(store, node_id="n", host=HOST) == []
            assert await active(store, company_id, legacy.id)

            (only,) = await end_dead_owners(store, node_id="n", host=HOST, at_start=True)
            assert only.owner is None and only.reason == "server_crash"
            assert [c.id for c in only.calls] == [legacy.id]
            assert "without an owner" in str(only)
            (hook,) = await store.list_webhook_deliveries(company_id)
            assert json.loads(hook.body)["data"]["end_reason"] == "server_crash"

    run(main)


def test_two_sweepers_end_a_dead_owner_once(tmp_path):
    path = str(tmp_path / "s.db")

    async def main():
        async with await Store.open(path) as one, await Store.open(path) as two:
            ids = await tenant(one)
            for n in range(5):
                await owner_with_call(one, ids, f"dead.{n}", node_id="old", pid=dead_pid())

            results = await asyncio.gather(
                end_dead_owners(one, node_id="n1", host=HOST),
                end_dead_owners(two, node_id="n2", host=HOST),
            )

            owners = [e.owner.id for result in results for e in result if e.owner is not None]
            assert sorted(owners) == [f"dead.{n}" for n in range(5)]  # each once
            assert len(await one.list_webhook_deliveries(ids[0])) == 5

    run(main)


# -- the heartbeat --------------------------------------------------------------------------------


async def last_seen(store, owner_id):
    return [o.last_seen for o in await store.list_owners() if o.id == owner_id]


def test_the_heartbeat_registers_beats_and_retires(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company_id, agent_id = await tenant(store)
            beat = OwnerHeartbeat(store, "n.1", node_id="n", worker_id=1, interval_s=20 * MS)
            owner = await beat.start()
            assert (owner.pid, owner.worker_id) == (os.getpid(), 1)
            call = await store.start_call(
                company_id, agent_id=agent_id, transport="text", peer_id="p", owner_id="n.1"
            )
            for _ in range(200):
                seen = await last_seen(store, "n.1")
                if seen and seen[0] > owner.last_seen:
                    break
                await asyncio.sleep(10 * MS)
            assert seen[0] > owner.last_seen

            (left_open,) = await beat.close()

            assert left_open.id == call.id and left_open.end_reason == "shutdown"
            assert await store.list_owners() == []

    run(main)


def test_an_owner_found_dead_while_alive_registers_again_and_says_so(tmp_path):
    path = str(tmp_path / "s.db")

    async def main():
        async with await Store.open(path) as store, await Store.open(path) as node:
            company_id, agent_id = await tenant(store)
            lost = threading.Event()
            beat = OwnerHeartbeat(store, "n.1", node_id="n", interval_s=20 * MS, on_lost=lost.set)
            await beat.start()
            try:
                call = await store.start_call(
                    company_id, agent_id=agent_id, transport="text", peer_id="p", owner_id="n.1"
                )
                # Another process judged it dead (a long stall, say) and ended its calls.
                later = lambda: time.time() + STALE_AFTER_S + 1  # noqa: E731
                (ended,) = await end_dead_owners(node, node_id="n", host="elsewhere", clock=later)
                assert [c.id for c in ended.calls] == [call.id]
                for _ in range(200):
                    if lost.is_set() and await last_seen(store, "n.1"):
                        break
                    await asyncio.sleep(10 * MS)
                assert lost.is_set()
                # Registered again: the calls it starts from now on are accounted for.
                again = await store.start_call(
                    company_id, agent_id=agent_id, transport="text", peer_id="q", owner_id="n.1"
                )
                assert again.owner_id == "n.1"
            finally:
                await beat.close()

    run(main)


def test_the_heartbeat_survives_a_store_locked_past_its_busy_timeout(tmp_path, caplog):
    path = str(tmp_path / "s.db")

    async def main():
        async with await Store.open(path, busy_timeout_ms=10) as store:
            beat = OwnerHeartbeat(store, "n.1", node_id="n", interval_s=20 * MS)
            await beat.start()
            try:
                locked, release = threading.Event(), threading.Event()
                holder = threading.Thread(target=hold_write_lock, args=(path, locked, release))
                holder.start()
                try:
                    assert locked.wait(5000 * MS)
                    await asyncio.sleep(200 * MS)  # about ten beats fail
                    (before,) = await last_seen(store, "n.1")  # reads are not blocked
                finally:
                    release.set()
                    holder.join()
                for _ in range(200):
                    (seen,) = await last_seen(store, "n.1")
                    if seen > before:
                        break
                    await asyncio.sleep(10 * MS)
                assert seen > before
            finally:
                await beat.close()
            assert await store.list_owners() == []

    with caplog.at_level(logging.INFO, logger="mediaserver.owners"):
        run(main)
    messages = [r.getMessage() for r in caplog.records if r.name == "mediaserver.owners"]
    assert sum("heartbeat not written" in m for m in messages) == 1  # once, not every beat
    assert sum("heartbeat written again" in m for m in messages) == 1


def hold_write_lock(path, locked, release):
    """Another process's writer, as far as SQLite can tell, until `release` is set."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait()
        conn.execute("COMMIT")
    finally:
        conn.close()
