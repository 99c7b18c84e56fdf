"""Media both ways through the real server: greeting, echo agent, receive-only, listen-only."""

import asyncio
import re
import time
from typing import Any

import numpy as np
import pytest

from mediaserver.webrtc.peer import live_peers
from tests.mediaserver.webrtc.loopback import (
    RATE,
    Caller,
    Server,
    Signal,
    run,
    running_server,
    silence,
    tone,
    wait_for,
)
from tests.timing import MS


async def connect(server: Server, sig: Signal, caller: Caller) -> dict[str, Any]:
    """Session, offer, answer; returns the session message."""
    first = await sig.next("session")
    await sig.send({"type": "offer", "sdp": await caller.offer()})
    answer = await sig.next("answer")
    await caller.accept(answer["sdp"])
    return first | {"answer": answer["sdp"]}


def speechlike(seconds: float, seed: int = 7) -> np.ndarray:
    """Band-limited (150-3400 Hz) noise with a syllable-rate envelope: speech's shape."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(freqs < 150) | (freqs > 3400)] = 0
    noise = np.fft.irfft(spectrum, n)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * np.arange(n) / RATE)
    signal = noise * envelope
    peak = float(np.abs(signal).max())
    return np.asarray(signal / peak * 0.5 * 32767, dtype=np.int16)


def best_correlation(sent: np.ndarray, received: np.ndarray, pieces: int = 5) -> float:
    """Median Pearson correlation of `pieces` stretches of `sent`, each with the best-aligned
    stretch of `received` (both 48 kHz): a frame lost or late under load shifts only its piece.
    """
    b = received.astype(np.float64)
    scores = []
    for piece in np.array_split(sent.astype(np.float64), pieces):
        lag = int(np.argmax(np.correlate(b, piece, mode="valid")))
        scores.append(float(np.corrcoef(piece, b[lag : lag + len(piece)])[0, 1]))
    return float(np.median(scores))


def test_media_connects_and_the_greeting_is_heard(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            caller = Caller()
            started = time.monotonic()
            session = await connect(server, sig, caller)
            assert "a=sendrecv" in session["answer"]
            await caller.connected()
            connected_ms = (time.monotonic() - started) * 1000
            greeting = await sig.next("response")
            assert greeting["content"] == "Hello there."
            await wait_for(lambda: caller.first_audio_at is not None)
            assert caller.first_audio_at is not None
            first_audio_ms = (caller.first_audio_at - started) * 1000
            await wait_for(lambda: caller.loud_ms() >= 100)  # "Hello there.": 2 words, 120 ms
            print(
                f"offer -> connected {connected_ms:.0f} ms, first bot audio {first_audio_ms:.0f} ms"
            )
            assert connected_ms / 1000 < 2000 * MS and first_audio_ms / 1000 < 3000 * MS
            assert live_peers() == 1
            await caller.close()

    run(scenario)


def test_the_echo_agent_sends_the_callers_audio_back(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server:
            url = server.signal_url(query=f"?agent={server.echo_agent_id}")
            async with Signal.connect(url) as sig:
                caller = Caller()
                await connect(server, sig, caller)
                await caller.connected()
                sent = speechlike(1.0)
                caller.audio.play(silence(0.2))
                caller.audio.play(sent)
                caller.audio.play(silence(0.4))
                await wait_for(lambda: caller.first_audio_at is not None)
                start = next(i for i, f in enumerate(caller.received) if np.abs(f).max() > 1000)
                await wait_for(lambda: len(caller.received) >= start + 60)  # 1.2 s from there
                received = np.concatenate(caller.received)
                correlation = best_correlation(sent, received)
                print(f"echo correlation {correlation:.3f}")
                assert correlation >= 0.9
                assert not [m for m in sig.seen if m["type"] == "response"]  # no greeting
                await caller.close()

    run(scenario)


def test_a_sendonly_offer_is_receive_only_without_a_greeting_and_its_words_are_stored(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            caller = Caller(direction="sendonly")
            session = await connect(server, sig, caller)
            assert re.search(r"m=audio[\s\S]*a=recvonly", session["answer"])
            await caller.connected()
            caller.audio.play(tone(0.4))
            final = await sig.next("transcript", final=True)
            assert final["text"] == "hello world"
            assert not [m for m in sig.seen if m.get("content") == "Hello there."]
            await sig.send({"type": "bye"})
            await sig.closed()
            turns = []
            for _ in range(200):
                turns = await server.store.list_turns(server.company_id, session["call_id"])
                if turns:
                    break
                await asyncio.sleep(0.01)
            assert turns[0].role == "user" and turns[0].text == "hello world"
            await caller.close()

    run(scenario)


def test_a_listen_only_caller_hears_the_greeting(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            caller = Caller(direction="recvonly")
            session = await connect(server, sig, caller)
            assert re.search(r"m=audio[\s\S]*a=sendonly", session["answer"])
            await sig.next("response", content="Hello there.")
            await wait_for(lambda: caller.loud_ms() >= 100)
            await caller.close()

    run(scenario)


def test_video_is_answered_inactive(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            caller = Caller()
            caller.pc.addTransceiver("video", direction="sendrecv")
            session = await connect(server, sig, caller)
            video = session["answer"].split("m=video", 1)[1]
            assert "a=inactive" in video
            await caller.connected()
            await caller.close()

    run(scenario)


@pytest.mark.parametrize("second", ["offer", "candidate"])
def test_renegotiation_is_refused_and_late_candidates_are_taken(tmp_path, second):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            caller = Caller()
            await connect(server, sig, caller)
            await caller.connected()
            if second == "offer":
                await sig.send({"type": "offer", "sdp": await Caller().offer()})
                error = await sig.next("error")
                assert error["code"] == "bad_sdp" and "renegotiation" in error["message"]
            else:
                candidate = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"
                await sig.send({"type": "candidate", "candidate": candidate, "sdpMid": "0"})
                await sig.send({"type": "candidate", "candidate": "", "sdpMid": "0"})
                await sig.send({"type": "ping"})
                assert await sig.next("pong") == {"type": "pong"}
                assert not [m for m in sig.seen if m["type"] == "error"]
            await caller.close()

    run(scenario)
