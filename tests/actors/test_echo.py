"""The echo agent: AudioIngest sends every ingested frame back out as bot audio."""

from actors.agent import AgentConfig
from actors.audio_ingest import ECHO_TURN_ID
from actors.messages import BotAudio, SpeechStarted, SpeechStopped, TranscriptUpdated
from tests.actors.fakes import SILENCE, word_frame

ECHO_AGENT = AgentConfig(
    id="echo", name="Echo", stt_engine="echo", llm_engine="echo", tts_engine="echo"
)


def test_echo_agent_sends_each_ingested_frame_back_in_order(harness):
    call = harness.call(agent=ECHO_AGENT)
    frames = [word_frame(1), SILENCE, word_frame(2), word_frame(3)]
    for pcm in frames:
        call.caller.frame(pcm)

    echoed = call.outbox.wait_count(BotAudio, len(frames))
    assert [m.pcm for m in echoed] == frames
    assert {(m.turn_id, m.sample_rate) for m in echoed} == {(ECHO_TURN_ID, 16_000)}


def test_echo_agent_still_runs_turn_detection(harness):
    call = harness.call(agent=ECHO_AGENT)
    call.caller.say(2)

    call.outbox.wait_count(SpeechStarted, 1)
    call.outbox.wait_count(SpeechStopped, 1)


def test_other_agents_do_not_echo(harness):
    call = harness.call()  # fake speech engines, no echo
    call.caller.say(1)

    call.outbox.wait_count(TranscriptUpdated, 1)
    assert all(m.turn_id != ECHO_TURN_ID for m in call.outbox.of(BotAudio))
