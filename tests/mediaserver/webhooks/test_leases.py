"""Webhook leases: several workers on one outbox, each delivery sent once; dead claimers' rows."""

import asyncio
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

from config.settings import WebhookSettings
from mediaserver.store import AgentSpec, Store
from mediaserver.webhook_bodies import event_body
from mediaserver.webhooks import WebhookWorker
from tests.mediaserver.webhooks.receiver import running_receiver
from tests.timing import MS

SECRET = "whsec_test-secret-0123456789"
FAST = WebhookSettings(timeout_s=2.0, max_attempts=4, backoff_initial_s=0.05, backoff_max_s=0.2)
EVENTS = 50


def run(main):
    return asyncio.run(asyncio.wait_for(main(), 30_000 * MS))


async def eventually(check, timeout=10_000 * MS):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return result


async def company_with_webhook(store, url):
    company = await store.create_company("acme")
    await store.create_agent(company.id, AgentSpec(name="desk"))
    await store.set_webhook(company.id, url, SECRET)
    return company


async def queue(store, company_id, count):
    """`count` events straight into the outbox; their event ids, in order."""
    ids = [f"event-{n:02d}" for n in range(count)]
    for event_id in ids:
        body = event_body(event_id=event_id, event="call.started", data={}, created_at=1.0)
        await store.enqueue_webhook(
            company_id, event_id=event_id, event="call.started", call_id=None, body=body
        )
    return ids


async def all_delivered(store, company_id, count):
    deliveries = await store.list_webhook_deliveries(company_id, limit=count + 10)
    done = len(deliveries) == count and all(d.state == "delivered" for d in deliveries)
    return done and deliveries


def event_ids(received):
    return [json.loads(r.body)["id"] for r in received]


# -- the store's claims ---------------------------------------------------------------------------


def test_a_claim_takes_due_rows_nobody_holds_and_next_due_counts_from_the_lease(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company = await company_with_webhook(store, "https://acme.example/hook")
            first, second = await queue(store, company.id, 2)
            now = time.time() + 1

            (a,) = await store.claim_webhooks("a", now=now, limit=1, lease_s=30)
            (b,) = await store.claim_webhooks("b", now=now, limit=5, lease_s=20)
            assert (a.event_id, a.claimed_by, a.claim_expires_at) == (first, "a", now + 30)
            assert (b.event_id, b.claimed_by) == (second, "b")
            assert await store.claim_webhooks("c", now=now, limit=5, lease_s=30) == []
            assert await store.next_webhook_due_at() == now + 20  # b's lease ends first

            # A lease that ran out is free to take; the claimer that let it run out lost it.
            (taken,) = await store.claim_webhooks("c", now=now + 20, limit=5, lease_s=30)
            assert taken.event_id == second
            assert not await store.record_webhook_attempt(b.id, claimer="b", delivered=True)
            assert await store.record_webhook_attempt(taken.id, claimer="c", delivered=True)
            assert not await store.record_webhook_attempt(taken.id, claimer="c", delivered=True)
            (row_a, row_b) = sorted(
                await store.list_webhook_deliveries(company.id), key=lambda d: d.id
            )
            assert (row_b.state, row_b.attempts, row_b.claimed_by) == ("delivered", 1, "c")
            assert row_b.claim_expires_at is None

            # Releasing gives a row back at once, counting no attempt.
            assert await store.release_webhooks("a") == 1
            assert await store.next_webhook_due_at() == row_a.next_attempt_at
            (again,) = await store.claim_webhooks("d", now=now, limit=5, lease_s=30)
            assert (again.event_id, again.attempts) == (first, 0)

    run(main)


def test_a_retry_is_claimable_only_once_it_is_due(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company = await company_with_webhook(store, "https://acme.example/hook")
            await queue(store, company.id, 1)
            now = time.time() + 1
            (row,) = await store.claim_webhooks("a", now=now, limit=1, lease_s=30)
            assert await store.record_webhook_attempt(
                row.id, claimer="a", delivered=False, error="HTTP 500", retry_at=now + 5
            )
            assert await store.next_webhook_due_at() == now + 5
            assert await store.claim_webhooks("b", now=now + 4, limit=1, lease_s=30) == []
            (retry,) = await store.claim_webhooks("b", now=now + 5, limit=1, lease_s=30)
            assert (retry.attempts, retry.last_error) == (1, "HTTP 500")

    run(main)


# -- workers --------------------------------------------------------------------------------------


def test_two_workers_on_two_connections_deliver_every_event_exactly_once(tmp_path):
    path = str(tmp_path / "s.db")

    async def main():
        with running_receiver(delay_s=10 * MS) as receiver:
            async with await Store.open(path) as one, await Store.open(path) as two:
                company = await company_with_webhook(one, receiver.url)
                ids = await queue(one, company.id, EVENTS)
                workers = [WebhookWorker(store, FAST, max_in_flight=4) for store in (one, two)]
                assert workers[0].claimer != workers[1].claimer
                for worker in workers:
                    worker.start()
                try:
                    await asyncio.to_thread(receiver.wait_count, EVENTS, 20_000 * MS)
                    delivered = await eventually(lambda: all_delivered(two, company.id, EVENTS))
                    await asyncio.sleep(200 * MS)  # room for a second send, if there were one
                finally:
                    for worker in workers:
                        await worker.close()
            assert sorted(event_ids(receiver.received)) == ids  # each once, none twice
            assert all(d.attempts == 1 for d in delivered)
            by = collections.Counter(d.claimed_by for d in delivered)
            assert set(by) == {w.claimer for w in workers}, by  # both took part

    run(main)


def test_the_rows_of_a_claimer_that_died_go_to_another_when_its_lease_runs_out(tmp_path):
    path = str(tmp_path / "s.db")
    lease_s = 400 * MS

    async def main():
        with running_receiver() as receiver:
            async with await Store.open(path) as store:
                company = await company_with_webhook(store, receiver.url)
                ids = await queue(store, company.id, 3)
                # A process claims them and dies: it never records an attempt.
                claimed_at = time.time()
                dead = await store.claim_webhooks("dead", now=claimed_at, limit=10, lease_s=lease_s)
                assert len(dead) == 3
                worker = WebhookWorker(store, FAST, claimer="heir")
                worker.start()
                try:
                    await asyncio.to_thread(receiver.wait_count, 3)
                    waited = time.time() - claimed_at
                    delivered = await eventually(lambda: all_delivered(store, company.id, 3))
                    await asyncio.sleep(100 * MS)
                finally:
                    await worker.close()
        assert waited >= lease_s
        assert sorted(event_ids(receiver.received)) == ids
        assert {(d.claimed_by, d.attempts) for d in delivered} == {("heir", 1)}

    run(main)


def test_a_worker_process_killed_mid_attempt_has_its_rows_sent_by_another_after_its_lease(
    tmp_path,
):
    path = str(tmp_path / "s.db")
    script = Path(__file__).with_name("delivery_worker.py")
    lease_s = 1.0

    async def setup(url):
        async with await Store.open(path) as store:
            company = await company_with_webhook(store, url)
            return company.id, await queue(store, company.id, 3)

    async def heir(company_id):
        async with await Store.open(path) as store:
            worker = WebhookWorker(store, FAST, claimer="heir")
            worker.start()
            try:
                return await eventually(lambda: all_delivered(store, company_id, 3))
            finally:
                await worker.close()

    # Every answer takes 0.5 s: the victim is killed while its three POSTs wait for theirs.
    with running_receiver(delay_s=500 * MS) as receiver:
        company_id, ids = run(lambda: setup(receiver.url))
        victim = subprocess.Popen(
            [sys.executable, str(script), path, "victim", str(lease_s), "0.8"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert victim.stdout is not None and victim.stdin is not None
            assert victim.stdout.readline() == "ready\n"
            victim.stdin.write("go\n")
            victim.stdin.flush()
            receiver.wait_count(3)
            victim.kill()  # mid-attempt: nothing recorded, the claims held
        finally:
            victim.kill()
            victim.wait()
        killed_at = time.monotonic()
        rows = run(lambda: heir(company_id))
        waited = time.monotonic() - killed_at

    assert waited >= lease_s - 0.5  # the heir waited for the victim's lease to run out
    assert sorted(event_ids(receiver.received)) == sorted(ids * 2)  # at least once: twice here
    assert {(d.claimed_by, d.attempts) for d in rows} == {("heir", 1)}


def test_a_worker_closed_mid_attempt_hands_its_rows_back_at_once(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            # A receiver that accepts the connection and never answers.
            hang = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{hang.sockets[0].getsockname()[1]}/"
            company = await company_with_webhook(store, url)
            await queue(store, company.id, 2)
            worker = WebhookWorker(store, FAST.model_copy(update={"timeout_s": 5.0}))
            worker.start()
            try:
                held = await eventually(lambda: _all_claimed_by(store, company.id, worker.claimer))
            finally:
                await worker.close()
                hang.close()
            assert len(held) == 2
            # Not after the lease (60 s): now, and with no attempt counted.
            taken = await store.claim_webhooks("next", now=time.time(), limit=5, lease_s=60)
            assert [(d.claimed_by, d.attempts) for d in taken] == [("next", 0), ("next", 0)]

    run(main)


async def _all_claimed_by(store, company_id, claimer):
    deliveries = await store.list_webhook_deliveries(company_id)
    held = [d for d in deliveries if d.claimed_by == claimer and d.claim_expires_at is not None]
    return len(held) == len(deliveries) and held


def test_two_worker_processes_deliver_every_event_exactly_once(tmp_path):
    path = str(tmp_path / "s.db")
    script = Path(__file__).with_name("delivery_worker.py")

    async def setup(url):
        async with await Store.open(path) as store:
            company = await company_with_webhook(store, url)
            return company.id, await queue(store, company.id, EVENTS)

    async def delivered(company_id):
        async with await Store.open(path) as store:
            return await eventually(lambda: all_delivered(store, company_id, EVENTS))

    with running_receiver(delay_s=20 * MS) as receiver:
        company_id, ids = run(lambda: setup(receiver.url))
        claimers = ["process-1", "process-2"]
        children = [
            subprocess.Popen(
                [sys.executable, str(script), path, claimer],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for claimer in claimers
        ]
        try:
            for child in children:
                assert child.stdout is not None
                assert child.stdout.readline() == "ready\n"
            for child in children:  # both start together
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            receiver.wait_count(EVENTS, 20_000 * MS)
            rows = run(lambda: delivered(company_id))
            time.sleep(200 * MS)  # room for a second send, if there were one
            answers = [child.communicate("stop\n", timeout=10_000 * MS)[0] for child in children]
        finally:
            for child in children:
                child.kill()
                child.wait()

    assert answers == ["stopped\n", "stopped\n"]
    assert sorted(event_ids(receiver.received)) == ids  # each once, none twice
    assert all(d.attempts == 1 for d in rows)
    by = collections.Counter(d.claimed_by for d in rows)
    assert set(by) == set(claimers), by  # both processes took part
