"""The echo agent's engines: the LLM repeats, the speech engines stay silent but keep contracts."""

from __future__ import annotations

from actors.engines import (
    ChatMessage,
    ReplyCompleted,
    ReplyRequest,
    SpeechFinished,
    TokenReceived,
    TranscriptReceived,
)
from mediaserver.engines.echo import EchoLlm, EchoStt, EchoTts
from tests.mediaserver.engines.conftest import Collected


def test_echo_llm_repeats_the_callers_last_message_word_by_word():
    sink = Collected()
    history = (
        ChatMessage(role="user", content="first"),
        ChatMessage(role="assistant", content="first"),
        ChatMessage(role="user", content="say this back"),
    )
    EchoLlm().open("c", sink).send(
        ReplyRequest(call_id="c", turn_id=4, system_prompt="", messages=history)
    )
    assert [t.text for t in sink.of(TokenReceived)] == ["say", " this", " back"]
    assert sink.results[-1] == ReplyCompleted(tokens_in=0, tokens_out=3)


def test_echo_stt_answers_each_finalize_with_one_empty_final():
    sink = Collected()
    stream = EchoStt().open("c", sink)
    stream.send(bytes(640))
    stream.finalize()
    stream.finalize()
    assert sink.results == [TranscriptReceived(text="", final=True, finalized=True)] * 2
    stream.cancel()
    stream.finalize()
    assert len(sink.results) == 2


def test_echo_tts_voices_nothing_and_finishes():
    sink = Collected()
    stream = EchoTts().open("c", sink)
    stream.send("Hello.")
    stream.finalize()
    assert sink.results == [SpeechFinished()]
