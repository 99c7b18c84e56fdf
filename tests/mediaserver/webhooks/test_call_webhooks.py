"""Webhooks of real calls: set through the API, POSTed to a receiver on 127.0.0.1, signed."""

import asyncio
import json
import time

import httpx

from mediaserver.webhooks import SIGNATURE_HEADER, verify
from tests.mediaserver.ops.harness import eventually, ops_server
from tests.mediaserver.webhooks.receiver import running_receiver
from tests.mediaserver.webrtc.loopback import Signal, run
from tests.timing import MS

SECRET = "whsec_from-the-test-0123456789"


async def set_webhook(server, url):
    async with httpx.AsyncClient() as client:
        response = await client.put(
            f"{server.url}/api/webhook",
            json={"url": url, "secret": SECRET},
            headers={"Authorization": f"Bearer {server.key}"},
        )
    assert response.status_code == 200


def test_a_call_posts_call_started_and_call_ended_with_its_transcript(tmp_path):
    async def scenario():
        with running_receiver([503]) as receiver:  # the first attempt fails: retried
            async with ops_server(tmp_path) as server:
                await set_webhook(server, receiver.url)
                async with Signal.connect(server.signal_url()) as sig:
                    call_id = (await sig.recv())["call_id"]
                    await sig.send({"type": "message", "message": "what time is it"})
                    await sig.next("response")
                    await sig.send({"type": "bye"})
                    await sig.closed()
                got = await asyncio.to_thread(receiver.wait_count, 3)
                delivered = [r for r in got if r.status == 200]
                by_type = {json.loads(r.body)["type"]: r for r in delivered}
                assert set(by_type) == {"call.started", "call.ended"}
                for request in delivered:
                    assert verify(
                        SECRET, request.body, request.headers[SIGNATURE_HEADER], now=time.time()
                    )

                started = json.loads(by_type["call.started"].body)["data"]
                assert started["call_id"] == call_id and started["transport"] == "webrtc"
                ended = json.loads(by_type["call.ended"].body)["data"]
                assert ended["call_id"] == call_id
                assert ended["end_reason"] == "bye"
                assert ended["duration_s"] > 0
                assert ended["turn_count"] == 2
                assert [(t["role"], t["text"]) for t in ended["transcript"]] == [
                    ("user", "what time is it"),
                    ("assistant", "You said what time is it. Okay."),
                ]
                assert set(ended["latency_ms"]) == {
                    "stt_ms",
                    "llm_first_token_ms",
                    "tts_first_audio_ms",
                    "voice_to_voice_ms",
                }
                assert ended["latency_ms"]["llm_first_token_ms"]["count"] == 1

                async def all_delivered():
                    deliveries = await server.store.list_webhook_deliveries(server.company_id)
                    return all(d.state == "delivered" for d in deliveries) and deliveries

                deliveries = await eventually(all_delivered)
                assert len(deliveries) == 2
                assert sorted(d.attempts for d in deliveries) == [1, 2]

    run(scenario)


def test_a_receiver_that_never_answers_does_not_hold_up_the_call(tmp_path):
    async def scenario():
        hang = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{hang.sockets[0].getsockname()[1]}/hook"
        try:
            async with ops_server(tmp_path) as server:
                await set_webhook(server, url)
                started = time.monotonic()
                async with Signal.connect(server.signal_url()) as sig:
                    await sig.recv()
                    await sig.send({"type": "message", "message": "hello"})
                    await sig.next("response", timeout=2000 * MS)
                    await sig.send({"type": "bye"})
                    assert await sig.closed(timeout=2000 * MS) == (1000, "Call ended")
                assert time.monotonic() - started < 3.0
        finally:
            hang.close()

    run(scenario)
