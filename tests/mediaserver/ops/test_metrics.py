"""Each metric moves on real calls: aiortc callers and signal/1 sockets against the real server,
read back through `GET /metrics`."""

import asyncio
import threading
import time

from actors.faults import Fault, FaultPlan
from config.settings import LimitsSettings, SupervisionSettings
from mediaserver.metrics import LoopLagProbe, Metrics, error_kind
from tests.mediaserver.ops.harness import eventually, ops_server, value
from tests.mediaserver.webrtc.loopback import Caller, Signal, run, tone, wait_for
from tests.timing import MS

STAGES = ("stt_final", "llm_first_token", "tts_first_audio", "voice_to_voice", "barge_in")
ACTORS = ("supervisor", "session", "ingest", "transcriber", "responder")


async def session(sig):
    message = await sig.recv()
    assert message["type"] == "session", message
    return message["call_id"]


async def connect_media(sig):
    caller = Caller()
    await sig.send({"type": "offer", "sdp": await caller.offer()})
    await caller.accept((await sig.next("answer"))["sdp"])
    return caller


def latency_count(samples, stage):
    return value(samples, "mediaserver_stage_latency_seconds_count", stage=stage)


def test_call_counts_mailboxes_and_every_stage_latency_move_on_a_spoken_call(tmp_path):
    async def scenario():
        async with ops_server(tmp_path) as server:
            before = await server.scrape()
            assert value(before, "mediaserver_calls_admitted_total") == 0
            assert value(before, "mediaserver_calls_active") == 0
            for stage in STAGES:
                assert latency_count(before, stage) == 0
            for actor in ACTORS:
                assert ("mediaserver_mailbox_depth", (("actor", actor),)) in before

            async with Signal.connect(server.signal_url()) as sig:
                await session(sig)
                caller = await connect_media(sig)
                await sig.next("response", content="Hello there.")
                during = await server.scrape()
                assert value(during, "mediaserver_calls_active") == 1
                assert value(during, "mediaserver_calls_admitted_total") == 1

                caller.audio.play(tone(0.4))  # a spoken turn: STT, LLM, TTS, voice to voice
                await sig.next("transcript", final=True)
                await sig.next("response")

                heard = caller.loud_ms()
                words = " ".join(f"word{i}" for i in range(60))  # about 4 s of bot speech
                await sig.send({"type": "message", "message": words})
                await wait_for(lambda: caller.loud_ms() >= heard + 300)
                caller.audio.play(tone(0.3))  # talking over the bot: a barge-in
                await sig.next("interrupted")
                await sig.send({"type": "bye"})
                await sig.closed()
                await caller.close()

            async def ended():
                samples = await server.scrape()
                return value(samples, "mediaserver_calls_ended_total", reason="bye") and samples

            after = await eventually(ended)
            assert value(after, "mediaserver_calls_active") == 0
            assert value(after, "mediaserver_calls_admitted_total") == 1
            for stage in STAGES:
                assert latency_count(after, stage) >= 1, stage
            barge_in_s = value(after, "mediaserver_stage_latency_seconds_sum", stage="barge_in")
            assert 0 < barge_in_s < 2.0
            v2v = value(after, "mediaserver_stage_latency_seconds_sum", stage="voice_to_voice")
            assert v2v > 0
            assert value(after, "mediaserver_process_resident_memory_bytes") > 0

    run(scenario)


def test_refused_calls_are_counted_by_reason(tmp_path):
    async def scenario():
        async with ops_server(tmp_path, limits=LimitsSettings(max_calls=1)) as server:
            async with Signal.connect(server.signal_url("bad", key="nope")) as sig:
                assert (await sig.closed())[0] == 1008
            async with Signal.connect(server.signal_url("lost", query="?agent=nope")) as sig:
                assert (await sig.closed())[0] == 1008
            async with Signal.connect(server.signal_url("first")) as first:
                await session(first)
                async with Signal.connect(server.signal_url("second")) as second:
                    assert await second.closed() == (1013, "Server at capacity")
            server.gate.set_mode("off")
            async with Signal.connect(server.signal_url("third")) as third:
                assert await third.closed() == (1013, "Server at capacity")
            samples = await server.scrape()
            refused = "mediaserver_calls_refused_total"
            assert value(samples, refused, reason="unauthorized") == 1
            assert value(samples, refused, reason="unknown_agent") == 1
            assert value(samples, refused, reason="capacity") == 1
            assert value(samples, refused, reason="load") == 1
            assert value(samples, "mediaserver_calls_admitted_total") == 1

    run(scenario)


def test_a_stuck_ingest_shows_in_its_mailbox_then_in_dropped_audio(tmp_path):
    release = threading.Event()
    plan = FaultPlan(
        Fault(child="ingest", message="AudioReceived", nth=1, kind="hang"), hang=release
    )
    supervision = SupervisionSettings(dispatcher_threads=2, audio_backlog_ms=100)

    async def scenario():
        async with (
            ops_server(tmp_path, supervision=supervision, faults=lambda: plan) as server,
            Signal.connect(server.signal_url()) as sig,
        ):
            await session(sig)
            caller = await connect_media(sig)  # its silence frames now pile up

            async def piled_up():
                samples = await server.scrape()
                depth = value(samples, "mediaserver_mailbox_depth", actor="ingest")
                return depth >= 3 and samples

            samples = await eventually(piled_up)
            assert value(samples, "mediaserver_mailbox_depth_max", actor="ingest") >= 3

            async def dropping():  # the runtime has dropped 200 ms, not yet reported
                (entry,) = server.registry.calls()
                snapshot = server.registry.lookup(f"{entry.call_id}/ingest")
                return snapshot is not None and snapshot.dropped_ms >= 200

            await eventually(dropping)
            release.set()  # the ingest runs again and reports what it lost

            async def dropped():
                samples = await server.scrape()
                seconds = "mediaserver_audio_dropped_seconds_total"
                return value(samples, seconds, actor="ingest") >= 0.2

            await eventually(dropped)
            await caller.close()

    try:
        run(scenario)
    finally:
        release.set()


def test_a_stalled_responder_counts_as_a_stall_and_a_restart(tmp_path):
    release = threading.Event()
    plan = FaultPlan(Fault(child="responder", message="Reply", nth=1, kind="hang"), hang=release)
    supervision = SupervisionSettings(dispatcher_threads=2, stall_timeout_s=0.3)

    async def scenario():
        async with ops_server(tmp_path, supervision=supervision, faults=lambda: plan) as server:
            async with Signal.connect(server.signal_url()) as sig:
                await session(sig)
                await sig.send({"type": "message", "message": "are you there"})
                await sig.next("response", timeout=5000 * MS)  # answered by the new responder
                release.set()  # the abandoned one may finish now; nobody listens to it
            samples = await server.scrape()
            assert value(samples, "mediaserver_actor_stalls_total", actor="responder") == 1
            assert value(samples, "mediaserver_actor_restarts_total", actor="responder") >= 1
            assert value(samples, "mediaserver_actor_stalls_total", actor="session") == 0

    try:
        run(scenario)
    finally:
        release.set()


def test_provider_errors_are_counted_by_engine_and_kind(tmp_path):
    async def scenario():
        async with ops_server(tmp_path) as server:
            server.engines.llm_failures = 1  # the first LLM request fails like a 429
            url = server.signal_url(query=f"?agent={server.openai_agent_id}")
            async with Signal.connect(url) as sig:
                await session(sig)
                await sig.send({"type": "message", "message": "hello"})
                await sig.next("response")  # the retry answered
            samples = await server.scrape()
            errors = "mediaserver_provider_errors_total"
            assert value(samples, errors, provider="openai", kind="rate_limited") == 1

    run(scenario)


def test_error_kinds_follow_the_provider_error_messages():
    assert error_kind("deepgram: authentication failed (HTTP 401)") == "auth"
    assert error_kind("openai: rate limited (HTTP 429, insufficient_quota)") == "rate_limited"
    assert error_kind("openai: server error (HTTP 503)") == "unavailable"
    assert error_kind("deepgram: server closed the stream (close 1011)") == "unavailable"
    assert error_kind("openai: request timed out") == "timeout"
    assert error_kind("deepgram: connection dropped (close 1006); reconnecting (1/5)") == (
        "disconnected"
    )
    assert error_kind("deepgram: stream rejected (close 1008)") == "rejected"
    assert error_kind("deepgram: internal error") == "internal"
    assert error_kind("whisper ran out of memory") == "other"


def test_event_loop_lag_is_measured_by_a_periodic_task():
    async def scenario():
        metrics = Metrics()
        probe = LoopLagProbe(metrics, interval_s=0.01)
        probe.start()
        try:

            async def ticked(n):
                return metrics.value("mediaserver_event_loop_lag_seconds_count") >= n

            await eventually(lambda: ticked(3))
            time.sleep(0.06)  # hold the loop on purpose: this is the lag being measured
            count = metrics.value("mediaserver_event_loop_lag_seconds_count")
            await eventually(lambda: ticked(count + 1))
            fast = metrics.value("mediaserver_event_loop_lag_seconds_bucket", {"le": "0.025"})
            total = metrics.value("mediaserver_event_loop_lag_seconds_count")
            assert total - fast >= 1  # the held tick was late by more than 25 ms
            assert metrics.value("mediaserver_event_loop_lag_seconds_sum") >= 0.04
        finally:
            await probe.close()

    asyncio.run(scenario())


def test_every_name_is_prefixed_and_the_scrape_is_prometheus_text():
    metrics = Metrics()
    text = metrics.render().decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith(("# HELP", "# TYPE"))}
    assert names and all(name.startswith("mediaserver_") for name in names)
    assert "mediaserver_stage_latency_seconds" in names
    assert "mediaserver_provider_errors" in names or "mediaserver_provider_errors_total" in names
