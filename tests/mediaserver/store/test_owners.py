"""Owners on a real SQLite file: register, beat, retire, and the end of a dead owner's calls."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mediaserver.store import (
    AgentSpec,
    Call,
    Conflict,
    InvalidValue,
    NotFound,
    Store,
    TurnRecord,
)
from tests.mediaserver.store.support import db_path, raw_sqlite, run, seed
from tests.timing import MS

SECRET = "whsec_0123456789abcdef"


class RecordingBody:
    """A `CallEndedBody` that records what it was given; it fails on the calls in `fail_on`."""

    def __init__(self, fail_on=()):
        self.seen = []
        self.fail_on = set(fail_on)

    def __call__(self, call, turns, usage, *, event_id, created_at):
        if call.id in self.fail_on:
            raise RuntimeError(f"no body for {call.id}")
        self.seen.append((call, list(turns), list(usage)))
        return json.dumps({"id": event_id, "call": call.id, "reason": call.end_reason})


async def register(store, owner_id, *, node_id="node-a", worker_id=1, pid=None):
    return await store.register_owner(
        owner_id, node_id=node_id, worker_id=worker_id, host="host-1", pid=pid or os.getpid()
    )


async def owned_call(store, tenant, owner_id, peer="p"):
    return await store.start_call(
        tenant.company_id, agent_id=tenant.agent_id, transport="text", peer_id=peer,
        owner_id=owner_id,
    )  # fmt: skip


async def call_of(store: Store, company_id: str, call_id: str) -> Call:
    call = await store.get_call(company_id, call_id)
    assert call is not None
    return call


async def owners_left(path):
    async with await Store.open(path) as store:
        return [o.id for o in await store.list_owners()]


def outbox(path):
    with raw_sqlite(path) as conn:
        return conn.execute(
            "SELECT call_id, event, body FROM webhook_outbox ORDER BY id"
        ).fetchall()


def test_an_owner_registers_beats_and_is_listed(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            owner = await register(store, "a.1")
            assert owner.started_at == owner.last_seen
            assert await store.list_owners() == [owner]
            time.sleep(0.01)
            assert await store.heartbeat("a.1") is True
            (beaten,) = await store.list_owners()
            assert beaten.last_seen > owner.last_seen and beaten.started_at == owner.started_at
            assert await store.heartbeat("nobody") is False
            with pytest.raises(Conflict):
                await register(store, "a.1")
            for node_id, worker_id, pid in ((" ", 1, 9), ("n", -1, 9), ("n", 1, 0)):
                with pytest.raises(InvalidValue):
                    await store.register_owner(
                        "a.2", node_id=node_id, worker_id=worker_id, host="h", pid=pid
                    )

    run(main())


def test_a_call_cannot_start_for_an_owner_without_a_row(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            tenant = await seed(store, "Acme")
            with pytest.raises(NotFound, match="owner"):
                await owned_call(store, tenant, "ghost")
            await register(store, "a.1")
            call = await owned_call(store, tenant, "a.1")
            assert call.owner_id == "a.1"

    run(main())


def test_a_dead_owners_calls_end_at_its_last_seen_with_their_webhooks(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as store:
            hooked = await seed(store, "Hooked")
            await store.set_webhook(hooked.company_id, "https://hooked.example/in", SECRET)
            silent = await seed(store, "Silent")  # no webhook
            await register(store, "dead")
            await register(store, "sibling", worker_id=2)
            early = await owned_call(store, hooked, "dead", "early")
            await store.add_turn(
                hooked.company_id,
                early.id,
                TurnRecord(seq=1, role="user", text="hello", started_at=1.0, ended_at=2.0),
            )
            quiet = await owned_call(store, silent, "dead", "quiet")
            time.sleep(0.01)
            assert await store.heartbeat("dead")
            (last_seen,) = [o.last_seen for o in await store.list_owners() if o.id == "dead"]
            time.sleep(0.01)
            late = await owned_call(store, hooked, "dead", "late")  # after its last heartbeat
            done = await owned_call(store, hooked, "dead", "done")
            await store.end_call(hooked.company_id, done.id, "bye")
            sibling = await owned_call(store, hooked, "sibling")

            body = RecordingBody()
            ended = await store.end_owner_calls("dead", "worker_crash", call_ended_body=body)

            assert [c.id for c in ended] == [early.id, quiet.id, late.id]
            assert {c.end_reason for c in ended} == {"worker_crash"}
            by_id = {c.id: c for c in ended}
            assert by_id[early.id].ended_at == last_seen  # not the time it was found dead
            assert by_id[quiet.id].ended_at == last_seen
            assert by_id[late.id].ended_at == late.started_at  # never before it started
            # The webhooks: only the company that has one, each with the call's facts.
            assert [(c.id, [t.text for t in turns]) for c, turns, _ in body.seen] == [
                (early.id, ["hello"]),
                (late.id, []),
            ]
            rows = outbox(path)
            assert [(r[0], r[1]) for r in rows] == [
                (early.id, "call.ended"),
                (late.id, "call.ended"),
            ]
            assert json.loads(rows[0][2])["reason"] == "worker_crash"
            # The owner is gone; the sibling and the call that had ended are untouched.
            assert [o.id for o in await store.list_owners()] == ["sibling"]
            assert await store.heartbeat("dead") is False
            assert (await call_of(store, hooked.company_id, sibling.id)).active
            assert (await call_of(store, hooked.company_id, done.id)).end_reason == "bye"
            # Ending it again finds nobody.
            with pytest.raises(NotFound):
                await store.end_owner_calls("dead", "worker_crash", call_ended_body=body)

    run(main())


def test_ending_an_owner_is_all_or_nothing(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as store:
            tenant = await seed(store, "Acme")
            await store.set_webhook(tenant.company_id, "https://acme.example/in", SECRET)
            await register(store, "dead")
            first = await owned_call(store, tenant, "dead", "first")
            second = await owned_call(store, tenant, "dead", "second")

            # The second body fails after the first call's row is already written: it all goes.
            with pytest.raises(RuntimeError):
                await store.end_owner_calls(
                    "dead", "server_crash", call_ended_body=RecordingBody(fail_on={second.id})
                )
            assert outbox(path) == []
            assert [o.id for o in await store.list_owners()] == ["dead"]
            for call in (first, second):
                assert (await call_of(store, tenant.company_id, call.id)).active

            ended = await store.end_owner_calls(
                "dead", "server_crash", call_ended_body=RecordingBody()
            )
            assert len(ended) == 2 and len(outbox(path)) == 2
            assert await store.list_owners() == []

    run(main())


def test_a_process_killed_while_ending_an_owner_leaves_all_of_it_to_the_next(tmp_path):
    path = db_path(tmp_path)

    async def setup():
        async with await Store.open(path) as store:
            tenant = await seed(store, "Acme")
            await store.set_webhook(tenant.company_id, "https://acme.example/in", SECRET)
            await register(store, "dead", pid=1)
            return [(await owned_call(store, tenant, "dead", f"p{n}")).id for n in range(3)]

    call_ids = run(setup())
    ender = Path(__file__).with_name("owner_ender.py")
    with subprocess.Popen(
        [sys.executable, str(ender), path, "dead"], stdout=subprocess.PIPE, text=True
    ) as child:
        timer = threading.Timer(10_000 * MS, child.kill)  # a stuck child must not hang the suite
        timer.start()
        try:
            assert child.stdout is not None
            # Two bodies built: the first call's outbox row is written, the transaction open.
            lines = [child.stdout.readline() for _ in range(2)]
            child.send_signal(signal.SIGKILL)
        finally:
            timer.cancel()
            child.kill()
    assert lines == [f"building {call_ids[0]}\n", f"building {call_ids[1]}\n"]

    assert outbox(path) == []
    assert run(owners_left(path)) == ["dead"]
    with raw_sqlite(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        open_calls = conn.execute(
            "SELECT id FROM calls WHERE owner_id = 'dead' AND ended_at IS NULL ORDER BY started_at"
        ).fetchall()
    assert [row[0] for row in open_calls] == call_ids

    async def after():
        async with await Store.open(path) as store:
            ended = await store.end_owner_calls(
                "dead", "server_crash", call_ended_body=RecordingBody()
            )
            return [c.id for c in ended]

    assert run(after()) == call_ids
    assert [row[0] for row in outbox(path)] == call_ids


def test_an_owner_that_beat_since_it_was_judged_is_left_alone(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            tenant = await seed(store, "Acme")
            judged = await register(store, "slow")
            call = await owned_call(store, tenant, "slow")
            time.sleep(0.01)
            assert await store.heartbeat("slow")  # it was only slow

            with pytest.raises(NotFound, match="beat since"):
                await store.end_owner_calls(
                    "slow", "server_crash", call_ended_body=RecordingBody(),
                    if_last_seen=judged.last_seen,
                )  # fmt: skip
            assert (await call_of(store, tenant.company_id, call.id)).active
            assert [o.id for o in await store.list_owners()] == ["slow"]

    run(main())


def test_only_crash_reasons_end_an_owners_calls(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            await register(store, "a.1")
            for reason in ("bye", "shutdown", "server_restart"):
                with pytest.raises(InvalidValue):
                    await store.end_owner_calls(
                        "a.1",
                        reason,  # type: ignore[arg-type]  # a wrong reason, on purpose
                        call_ended_body=RecordingBody(),
                    )

    run(main())


def test_a_retired_owners_calls_left_open_end_shutdown_now_and_its_row_goes(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as store:
            tenant = await seed(store, "Acme")
            await store.set_webhook(tenant.company_id, "https://acme.example/in", SECRET)
            await register(store, "leaving")
            await register(store, "staying", worker_id=2)
            ended_well = await owned_call(store, tenant, "leaving", "a")
            await store.end_call(tenant.company_id, ended_well.id, "bye")
            left_open = await owned_call(store, tenant, "leaving", "b")
            other = await owned_call(store, tenant, "staying", "c")
            before = time.time()

            ended = await store.retire_owner("leaving", call_ended_body=RecordingBody())

            assert [c.id for c in ended] == [left_open.id]
            assert ended[0].end_reason == "shutdown"
            assert ended[0].ended_at is not None and ended[0].ended_at >= before
            assert [row[0] for row in outbox(path)] == [left_open.id]
            assert [o.id for o in await store.list_owners()] == ["staying"]
            assert (await call_of(store, tenant.company_id, other.id)).active
            assert await store.retire_owner("leaving", call_ended_body=RecordingBody()) == []

    run(main())


def test_calls_from_before_owners_end_server_crash_now_with_their_webhooks(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as store:
            legacy = await seed(store, "Legacy")  # started without an owner, as before v4
            await store.set_webhook(legacy.company_id, "https://legacy.example/in", SECRET)
            await register(store, "live")
            owned = await owned_call(store, legacy, "live")
            before = time.time()

            ended = await store.end_unowned_calls(call_ended_body=RecordingBody())

            assert [c.id for c in ended] == [legacy.call_id]
            assert ended[0].end_reason == "server_crash"
            assert ended[0].ended_at is not None and ended[0].ended_at >= before
            assert [row[0] for row in outbox(path)] == [legacy.call_id]
            assert (await call_of(store, legacy.company_id, owned.id)).active
            assert await store.end_unowned_calls(call_ended_body=RecordingBody()) == []

    run(main())


def test_owners_are_shared_by_every_connection_to_the_file(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as worker, await Store.open(path) as node:
            await register(worker, "w.1")
            company = await worker.create_company("Acme")
            agent = await worker.create_agent(company.id, AgentSpec(name="Desk"))
            call = await worker.start_call(
                company.id, agent_id=agent.id, transport="text", peer_id="p", owner_id="w.1"
            )
            ended = await node.end_owner_calls(
                "w.1", "worker_crash", call_ended_body=RecordingBody()
            )
            assert [c.id for c in ended] == [call.id]
            assert await worker.heartbeat("w.1") is False

    run(main())
