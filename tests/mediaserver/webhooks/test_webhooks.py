"""Webhooks against a real receiver on 127.0.0.1: signing, payloads, retries, restarts."""

import asyncio
import hashlib
import hmac
import json
import time

import pytest

from config.settings import WebhookSettings
from mediaserver.metrics import Metrics
from mediaserver.store import AgentSpec, NotFound, Store, TurnRecord, Usage
from mediaserver.webhook_bodies import call_ended_body, event_body
from mediaserver.webhooks import (
    SIGNATURE_HEADER,
    WebhookEvents,
    WebhookWorker,
    backoff_s,
    new_secret,
    signature,
    verify,
)
from tests.mediaserver.webhooks.receiver import free_url, running_receiver
from tests.timing import MS

SECRET = "whsec_test-secret-0123456789"
FAST = WebhookSettings(timeout_s=2.0, max_attempts=4, backoff_initial_s=0.05, backoff_max_s=0.2)


def run(main):
    return asyncio.run(asyncio.wait_for(main(), 20_000 * MS))


async def eventually(check, timeout=5000 * MS):
    """Await `check()` every 5 ms until it returns something true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
    return result


async def tenant_with_call(store, name="acme", *, url=None):
    company = await store.create_company(name)
    agent = await store.create_agent(company.id, AgentSpec(name="desk"))
    call = await store.start_call(
        company.id, agent_id=agent.id, transport="webrtc", peer_id="peer-1"
    )
    if url is not None:
        await store.set_webhook(company.id, url, SECRET)
    return company, agent, call


# -- pure -----------------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_t_dot_body_in_hex():
    body = b'{"id":"e1","type":"call.started"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body, 1700000000) == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_fresh_signature_and_refuses_tampering_and_replays():
    body = b'{"a":1}'
    header = signature(SECRET, body, 1000)
    assert verify(SECRET, body, header, now=1000)
    assert verify(SECRET, body, header, now=1299)
    assert not verify(SECRET, body, header, now=1301)  # too old: a replay
    assert not verify(SECRET, b'{"a":2}', header, now=1000)
    assert not verify("whsec_other-secret-000000", body, header, now=1000)
    assert not verify(SECRET, body, "v1=abc", now=1000)
    assert not verify(SECRET, body, "t=soon,v1=abc", now=1000)


def test_backoff_doubles_up_to_its_cap():
    settings = WebhookSettings(backoff_initial_s=1.0, backoff_max_s=5.0)
    assert [backoff_s(n, settings) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_bodies_are_compact_json_and_secrets_are_fresh():
    body = event_body(event_id="e1", event="call.ended", data={"x": 1}, created_at=1.5)
    assert body == '{"id":"e1","type":"call.ended","created_at":1.5,"data":{"x":1}}'
    assert new_secret() != new_secret()
    assert new_secret().startswith("whsec_") and len(new_secret()) > 40


# -- the store's outbox ---------------------------------------------------------------------------


def test_nothing_is_queued_for_a_company_without_a_webhook(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company, _, call = await tenant_with_call(store)
            events = WebhookEvents(store)
            assert await events.queue_call_started(company.id, call.id) is None
            assert await store.list_webhook_deliveries(company.id) == []
            assert await store.next_webhook_due_at() is None

    run(main)


def test_webhook_settings_are_per_company_and_checked(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            acme, _, _ = await tenant_with_call(store, "acme", url="https://acme.example/hook")
            evil, _, _ = await tenant_with_call(store, "evil")
            hook = await store.get_webhook(acme.id)
            assert hook is not None and hook.url == "https://acme.example/hook"
            assert await store.get_webhook(evil.id) is None
            with pytest.raises(NotFound):
                await store.delete_webhook(evil.id)
            for url in ("ftp://x.example/", "/relative", "https://", "x" * 3000):
                with pytest.raises(Exception, match="url"):
                    await store.set_webhook(acme.id, url, SECRET)
            with pytest.raises(Exception, match="secret"):
                await store.set_webhook(acme.id, "https://acme.example/hook", "short")
            updated = await store.set_webhook(acme.id, "https://acme.example/v2", SECRET)
            assert updated.url.endswith("/v2") and updated.updated_at >= updated.created_at

    run(main)


# -- delivery -------------------------------------------------------------------------------------


def test_call_started_is_posted_signed_with_the_companys_secret(tmp_path):
    async def main():
        with running_receiver() as receiver:
            async with await Store.open(str(tmp_path / "s.db")) as store:
                company, agent, call = await tenant_with_call(store, url=receiver.url)
                metrics = Metrics()
                worker = WebhookWorker(store, FAST, metrics=metrics)
                events = WebhookEvents(store, on_queued=worker.wake)
                worker.start()
                try:
                    events.call_started(company.id, call.id)
                    (got,) = await asyncio.to_thread(receiver.wait_count, 1)
                    await eventually(lambda: _state(store, company.id, "delivered"), 2000 * MS)
                finally:
                    await events.close()
                    await worker.close()
                assert got.path == "/hooks/mediaserver"
                assert got.headers["Content-Type"] == "application/json"
                assert got.headers["X-Mediaserver-Event"] == "call.started"
                assert verify(SECRET, got.body, got.headers[SIGNATURE_HEADER], now=time.time())
                body = json.loads(got.body)
                assert body["type"] == "call.started"
                assert body["id"] == got.headers["X-Mediaserver-Delivery"]
                assert body["data"] == {
                    "call_id": call.id,
                    "agent_id": agent.id,
                    "conversation_id": None,
                    "transport": "webrtc",
                    "peer_id": "peer-1",
                    "started_at": call.started_at,
                }
                assert (
                    metrics.value("mediaserver_webhook_deliveries_total", {"outcome": "delivered"})
                    == 1
                )

    run(main)


async def _state(store, company_id, state):
    deliveries = await store.list_webhook_deliveries(company_id)
    return deliveries and all(d.state == state for d in deliveries) and deliveries


def test_call_ended_carries_reason_duration_turns_latencies_and_transcript(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company, _, call = await tenant_with_call(store, url="https://acme.example/hook")
            now = time.time()
            turns = [
                TurnRecord(seq=1, role="user", text="hi there", started_at=now, ended_at=now + 1,
                           stt_ms=120.0),
                TurnRecord(seq=2, role="assistant", text="Hello!", started_at=now + 1,
                           ended_at=now + 2, llm_first_token_ms=300.0, tts_first_audio_ms=80.0,
                           voice_to_voice_ms=500.0),
                TurnRecord(seq=3, role="user", text="bye", started_at=now + 2, ended_at=now + 3,
                           stt_ms=100.0),
                TurnRecord(seq=4, role="assistant", text="Good", started_at=now + 3,
                           ended_at=now + 4, interrupted=True, voice_to_voice_ms=700.0),
            ]  # fmt: skip
            for turn in turns:
                await store.add_turn(company.id, call.id, turn)
            await store.add_usage(company.id, call.id, Usage(provider="openai", tokens_in=50,
                                                             tokens_out=9))  # fmt: skip
            ended = await store.end_call(company.id, call.id, "bye")
            delivery = await WebhookEvents(store).queue_call_ended(company.id, call.id)
            assert delivery is not None and ended.ended_at is not None

            body = json.loads(delivery.body)
            assert delivery.event == "call.ended" and body["type"] == "call.ended"
            data = body["data"]
            assert data["end_reason"] == "bye"
            assert data["duration_s"] == pytest.approx(ended.ended_at - ended.started_at)
            assert data["turn_count"] == 4 and data["interruptions"] == 1
            assert data["latency_ms"]["voice_to_voice_ms"] == {
                "count": 2, "p50": 600.0, "p95": 690.0, "max": 700.0
            }  # fmt: skip
            assert data["latency_ms"]["stt_ms"]["p50"] == 110.0
            assert data["usage"]["tokens_in"] == 50 and data["usage"]["tokens_out"] == 9
            assert [(t["role"], t["text"]) for t in data["transcript"]] == [
                ("user", "hi there"),
                ("assistant", "Hello!"),
                ("user", "bye"),
                ("assistant", "Good"),
            ]
            assert data["transcript"][3]["interrupted"] is True

    run(main)


def test_failed_attempts_are_retried_with_backoff_until_delivered(tmp_path):
    async def main():
        with running_receiver([500, 503]) as receiver:
            async with await Store.open(str(tmp_path / "s.db")) as store:
                company, _, call = await tenant_with_call(store, url=receiver.url)
                worker = WebhookWorker(store, FAST)
                events = WebhookEvents(store, on_queued=worker.wake)
                worker.start()
                try:
                    await events.queue_call_started(company.id, call.id)
                    got = await asyncio.to_thread(receiver.wait_count, 3)
                    (delivery,) = await eventually(lambda: _state(store, company.id, "delivered"))
                finally:
                    await worker.close()
        assert [r.status for r in got] == [500, 503, 200]
        assert delivery.attempts == 3 and delivery.last_error is None
        assert len({r.body for r in got}) == 1  # the same event every time
        for r in got:
            assert verify(SECRET, r.body, r.headers[SIGNATURE_HEADER], now=time.time())

    run(main)


def test_a_pending_delivery_survives_a_restart_and_is_delivered_after_it(tmp_path):
    path = str(tmp_path / "s.db")

    async def main():
        with running_receiver([500]) as receiver:
            # First run: one failed attempt, then the server goes away before the retry.
            slow = FAST.model_copy(update={"backoff_initial_s": 0.5})
            store = await Store.open(path)
            company, _, call = await tenant_with_call(store, url=receiver.url)
            worker = WebhookWorker(store, slow)
            events = WebhookEvents(store, on_queued=worker.wake)
            worker.start()
            events.call_ended(company.id, call.id)
            await events.close()
            await asyncio.to_thread(receiver.wait_count, 1)
            (pending,) = await eventually(lambda: _attempted(store, company.id))
            await worker.close()
            await store.close()
            assert pending.state == "pending" and pending.last_error == "HTTP 500"

            # Second run: a new store connection and a new worker find it and deliver it.
            store = await Store.open(path)
            worker = WebhookWorker(store, slow)
            worker.start()
            try:
                got = await asyncio.to_thread(receiver.wait_count, 2)
                (delivered,) = await eventually(lambda: _state(store, company.id, "delivered"))
            finally:
                await worker.close()
                await store.close()
        assert [r.status for r in got] == [500, 200]
        assert got[0].body == got[1].body
        assert delivered.event_id == pending.event_id and delivered.attempts == 2
        assert json.loads(got[1].body)["type"] == "call.ended"

    run(main)


async def _attempted(store, company_id):
    deliveries = await store.list_webhook_deliveries(company_id)
    return deliveries and deliveries[0].attempts >= 1 and deliveries


def test_a_delivery_queued_before_a_restart_is_sent_after_it(tmp_path):
    path = str(tmp_path / "s.db")

    async def main():
        with running_receiver() as receiver:
            async with await Store.open(path) as store:  # no worker at all in this run
                company, _, call = await tenant_with_call(store, url=receiver.url)
                await WebhookEvents(store).queue_call_started(company.id, call.id)
            async with await Store.open(path) as store:
                worker = WebhookWorker(store, FAST)
                worker.start()
                try:
                    (got,) = await asyncio.to_thread(receiver.wait_count, 1)
                    await eventually(lambda: _state(store, company.id, "delivered"))
                finally:
                    await worker.close()
        assert json.loads(got.body)["data"]["call_id"] == call.id

    run(main)


def test_an_endpoint_that_never_answers_2xx_fails_after_max_attempts(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company, _, call = await tenant_with_call(store, url=free_url())
            metrics = Metrics()
            worker = WebhookWorker(store, FAST, metrics=metrics)
            worker.start()
            try:
                await WebhookEvents(store, on_queued=worker.wake).queue_call_started(
                    company.id, call.id
                )
                (failed,) = await eventually(lambda: _state(store, company.id, "failed"))
            finally:
                await worker.close()
            assert failed.attempts == FAST.max_attempts
            assert failed.last_error.startswith("request failed")
            retries = metrics.value("mediaserver_webhook_deliveries_total", {"outcome": "retry"})
            assert retries == FAST.max_attempts - 1
            assert metrics.value("mediaserver_webhook_deliveries_total", {"outcome": "failed"}) == 1

    run(main)


def test_removing_the_webhook_fails_its_pending_deliveries_without_sending(tmp_path):
    async def main():
        with running_receiver() as receiver:
            async with await Store.open(str(tmp_path / "s.db")) as store:
                company, _, call = await tenant_with_call(store, url=receiver.url)
                await WebhookEvents(store).queue_call_started(company.id, call.id)
                await store.delete_webhook(company.id)
                worker = WebhookWorker(store, FAST)
                worker.start()
                try:
                    (failed,) = await eventually(lambda: _state(store, company.id, "failed"))
                finally:
                    await worker.close()
        assert failed.last_error == "the webhook was removed"
        assert receiver.received == []

    run(main)


def test_one_slow_receiver_does_not_hold_up_another_companys_delivery(tmp_path):
    async def main():
        with running_receiver() as fast:
            async with await Store.open(str(tmp_path / "s.db")) as store:
                # A receiver that accepts the connection and never answers, until the timeout.
                hang = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
                slow_url = f"http://127.0.0.1:{hang.sockets[0].getsockname()[1]}/"
                slow_co, _, slow_call = await tenant_with_call(store, "slow", url=slow_url)
                fast_co, _, fast_call = await tenant_with_call(store, "fast", url=fast.url)
                settings = FAST.model_copy(update={"timeout_s": 5.0})
                worker = WebhookWorker(store, settings)
                events = WebhookEvents(store, on_queued=worker.wake)
                worker.start()
                try:
                    await events.queue_call_started(slow_co.id, slow_call.id)
                    await events.queue_call_started(fast_co.id, fast_call.id)
                    started = time.monotonic()
                    await asyncio.to_thread(fast.wait_count, 1)
                    assert time.monotonic() - started < 2.0
                finally:
                    await worker.close()
                    hang.close()

    run(main)


def test_a_crashed_calls_call_ended_is_built_like_a_live_ones(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            company, agent, _ = await tenant_with_call(store, url="https://acme.example/hook")
            await store.register_owner("w.1", node_id="n", worker_id=1, host="h", pid=1)
            call = await store.start_call(
                company.id, agent_id=agent.id, transport="twilio", peer_id="+1555", owner_id="w.1"
            )
            now = time.time()
            await store.add_turn(company.id, call.id, TurnRecord(
                seq=1, role="user", text="hello", started_at=now, ended_at=now + 1, stt_ms=90.0
            ))  # fmt: skip
            await store.add_usage(company.id, call.id, Usage(provider="openai", tokens_in=7))

            (ended,) = await store.end_owner_calls(
                "w.1", "worker_crash", call_ended_body=call_ended_body
            )

            (queued,) = [
                d for d in await store.list_webhook_deliveries(company.id) if d.call_id == call.id
            ]
            body = json.loads(queued.body)
            assert body["type"] == "call.ended" and body["id"] == queued.event_id
            assert body["data"]["end_reason"] == "worker_crash"
            assert body["data"]["ended_at"] == ended.ended_at
            assert [t["text"] for t in body["data"]["transcript"]] == ["hello"]
            # The same bytes the edge's path would build from the same facts.
            live = await WebhookEvents(store).queue_call_ended(company.id, call.id)
            assert live is not None
            assert json.loads(live.body)["data"] == body["data"]
            turns = await store.list_turns(company.id, call.id)
            usage = await store.list_usage(company.id, call.id)
            rebuilt = call_ended_body(
                ended, turns, usage, event_id=body["id"], created_at=body["created_at"]
            )
            assert rebuilt == queued.body

    run(main)
