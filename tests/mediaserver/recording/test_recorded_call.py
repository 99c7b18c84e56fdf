"""A real WebRTC call of an agent that records: the WAV on disk, its path in the store, the API."""

import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.mediaserver.ops.harness import eventually, ops_server
from tests.mediaserver.webrtc.loopback import Caller, Signal, run, tone

WINDOW = 320  # 20 ms at 16 kHz


def loud_ms(samples: np.ndarray) -> float:
    """Milliseconds of 20 ms windows whose peak is above the noise (Opus leaves a little)."""
    windows = samples[: len(samples) // WINDOW * WINDOW].reshape(-1, WINDOW)
    return 20.0 * int((np.abs(windows.astype(np.int32)).max(axis=1) > 2000).sum())


async def spoken_call(server, agent_id):
    """Greeting, one spoken question and its answer, then bye; returns the call id."""
    url = server.signal_url(query=f"?agent={agent_id}")
    async with Signal.connect(url) as sig:
        call_id = (await sig.recv())["call_id"]
        caller = Caller()
        await sig.send({"type": "offer", "sdp": await caller.offer()})
        await caller.accept((await sig.next("answer"))["sdp"])
        await sig.next("response", content="Hello there.")
        caller.audio.play(tone(0.6))
        await sig.next("response", content="You said hello world. Okay.")
        await sig.send({"type": "bye"})
        await sig.closed()
        await caller.close()
    return call_id


def test_a_recorded_call_is_a_stereo_wav_with_the_caller_left_and_the_agent_right(tmp_path):
    async def scenario():
        async with ops_server(tmp_path) as server:
            call_id = await spoken_call(server, server.recorded_agent_id)

            async def finished():
                call = await server.store.get_call(server.company_id, call_id)
                assert call is not None
                return call.end_reason is not None and not server.edge.live_calls() and call

            call = await eventually(finished)
            expected = tmp_path / "recordings" / server.company_id / f"{call_id}.wav"
            assert call.recording_path == str(expected.resolve())

            with wave.open(str(expected), "rb") as wav:
                assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16000)
                duration_s = wav.getnframes() / wav.getframerate()
                frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
            # The file spans the call: from its row's start to its end, give or take the writes.
            assert duration_s == pytest.approx(call.ended_at - call.started_at, abs=0.3)
            left, right = frames[0::2], frames[1::2]
            assert 400 <= loud_ms(left) <= 900  # the caller's 0.6 s tone, after Opus
            # The agent: greeting (2 words) and answer (6 words) at 60 ms a word.
            assert 300 <= loud_ms(right) <= 700
            # The answer comes after the question: the loudest right audio follows the left.
            first_left = np.argmax(np.abs(left) > 2000)
            last_right = len(right) - np.argmax(np.abs(right[::-1]) > 2000)
            assert last_right > first_left

            async with httpx.AsyncClient() as client:
                response = await client.get(
                    f"{server.url}/api/calls/{call_id}/recording",
                    headers={"Authorization": f"Bearer {server.key}"},
                )
            assert response.status_code == 200
            assert response.content == Path(expected).read_bytes()

    run(scenario)


def test_an_agent_that_does_not_record_leaves_no_file(tmp_path):
    async def scenario():
        async with ops_server(tmp_path) as server:
            call_id = await spoken_call(server, server.agent_id)

            async def finished():
                call = await server.store.get_call(server.company_id, call_id)
                assert call is not None
                return call.end_reason is not None and not server.edge.live_calls() and call

            call = await eventually(finished)
            assert call.recording_path is None
            assert not (tmp_path / "recordings").exists()

    run(scenario)
