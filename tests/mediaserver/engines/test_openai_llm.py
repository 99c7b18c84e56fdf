"""OpenAILlm through the real openai SDK against the loopback fake OpenAI."""

from __future__ import annotations

import logging
import time
from typing import Literal

import pytest
from pydantic import SecretStr

from actors.engines import (
    ChatMessage,
    EngineFailed,
    ReplyCompleted,
    ReplyRequest,
    TokenReceived,
)
from config.settings import OpenAISettings
from mediaserver.engines.openai_llm import OpenAILlm, estimate_tokens, trim_history
from mediaserver.engines.provider_errors import (
    ProviderAuthFailed,
    ProviderRateLimited,
    from_status,
    scrub,
)
from tests.mediaserver.engines.fake_openai import ChatScript, FakeOpenAI, tokens_of
from tests.mediaserver.engines.harness import LoopThread, Recorder, wait_until
from tests.timing import MS

KEY = "sk-secret-key-1234-do-not-log"
REPLY = "Hello there. How can I help you today?"


@pytest.fixture
def loop_thread():
    with LoopThread() as loop_thread:
        yield loop_thread


@pytest.fixture
def rig(loop_thread):
    opened = []

    def make(chat=None, *, server_key=KEY, api_key=KEY, **fields):
        fake = FakeOpenAI(api_key=server_key, chat=chat)
        loop_thread.run(fake.__aenter__())
        values = {
            "api_key": SecretStr(api_key) if api_key else None,
            "base_url": fake.base_url,
            "timeout_s": 5.0,
            "max_retries": 0,
        }
        values.update(fields)
        engine = OpenAILlm(OpenAISettings(**values), loop_thread.loop)
        opened.append((fake, engine))
        return fake, engine

    yield make
    for fake, engine in opened:
        loop_thread.run(engine.aclose())
        loop_thread.run(fake.__aexit__(None, None, None))


Role = Literal["user", "assistant", "system"]


def request(*history: tuple[Role, str], system: str = "You are a helpful agent.") -> ReplyRequest:
    messages = tuple(ChatMessage(role=role, content=content) for role, content in history)
    return ReplyRequest(call_id="call-1", turn_id=1, system_prompt=system, messages=messages)


def text(sink: Recorder) -> str:
    return "".join(t.text for t in sink.of(TokenReceived))


def done(sink: Recorder) -> bool:
    return bool(sink.of(ReplyCompleted) or sink.failures())


def test_tokens_stream_on_the_loop_thread_then_the_reply_completes_with_usage(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(request(("assistant", "Hi, how can I help?"), ("user", "What are your hours?")))

    sink.wait_for(done)
    assert [t.text for t in sink.of(TokenReceived)] == tokens_of(REPLY)
    (completed,) = sink.of(ReplyCompleted)
    assert completed.tokens_out == len(tokens_of(REPLY))
    assert completed.tokens_in > 0
    assert isinstance(sink.results[-1], ReplyCompleted)
    assert sink.threads == {"engine-loop"}
    (sent,) = fake.of("/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are a helpful agent."},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "What are your hours?"},
    ]
    stream.close()


def test_the_history_sent_is_trimmed_to_the_budget_keeping_the_newest(rig):
    fake, engine = rig(context_budget_tokens=100)
    old: list[tuple[Role, str]] = [("user", "x" * 200), ("assistant", "y" * 200)]
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(request(*old, ("user", "z" * 100), ("assistant", "ok"), ("user", "and now?")))

    sink.wait_for(done)
    (sent,) = fake.of("/v1/chat/completions")
    assert [m["content"] for m in sent.body["messages"]] == [
        "You are a helpful agent.",
        "z" * 100,
        "ok",
        "and now?",
    ]


def test_trim_history_keeps_the_newest_message_even_over_budget():
    huge = ChatMessage(role="user", content="q" * 10_000)
    older = ChatMessage(role="assistant", content="a")
    assert trim_history([older, huge], 100) == [huge]
    fits = [ChatMessage(role="user", content="abcd")] * 3
    assert trim_history(fits, 3 * estimate_tokens("abcd")) == fits
    assert trim_history(fits, 3 * estimate_tokens("abcd") - 1) == fits[1:]
    assert estimate_tokens("") == 4 and estimate_tokens("abcde") == 6


def test_a_429_and_a_500_are_retried_by_the_sdk_as_configured(rig):
    fake, engine = rig(ChatScript(statuses=[429, 500]), max_retries=2)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert text(sink) == REPLY
    assert sink.failures() == []
    assert len(fake.of("/v1/chat/completions")) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, "openai: server error (HTTP 500, server_error)"),
        (429, "openai: rate limited (HTTP 429, rate_limit_exceeded)"),
    ],
)
def test_failures_beyond_the_retries_give_up_with_a_translated_error(rig, status, error):
    fake, engine = rig(ChatScript(statuses=[status] * 5), max_retries=1)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert sink.results == [EngineFailed(error=error, gave_up=True)]
    assert len(fake.of("/v1/chat/completions")) == 2


def test_a_wrong_key_fails_at_once_and_appears_in_no_log_or_error(rig, caplog):
    caplog.set_level(logging.DEBUG)
    fake, engine = rig(server_key="sk-the-right-one", max_retries=2)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert sink.results == [
        EngineFailed(
            error="openai: authentication failed (HTTP 401, invalid_api_key)", gave_up=True
        )
    ]
    assert len(fake.of("/v1/chat/completions")) == 1  # 401 is not retried
    assert KEY not in caplog.text
    assert "call-1" in {getattr(r, "call_id", None) for r in caplog.records}


def test_a_slow_first_token_is_waited_for(rig):
    _, engine = rig(ChatScript(first_token_ms=300, token_interval_ms=10), timeout_s=2.0)
    sink = Recorder()
    started = time.monotonic()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(lambda s: s.of(TokenReceived))
    assert time.monotonic() - started >= 0.3
    sink.wait_for(done)
    assert text(sink) == REPLY


def test_a_request_timeout_gives_up(rig):
    _, engine = rig(ChatScript(hang=True), timeout_s=0.2, max_retries=0)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert sink.results == [EngineFailed(error="openai: request timed out", gave_up=True)]


def test_a_stall_mid_stream_times_out_too(rig):
    _, engine = rig(ChatScript(stall_after_tokens=2), timeout_s=0.2)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert text(sink) == "".join(tokens_of(REPLY)[:2])
    assert sink.failures() == [EngineFailed(error="openai: request timed out", gave_up=True)]


def test_a_hung_server_gets_nothing_invented_and_cancel_closes_the_request(rig):
    fake, engine = rig(ChatScript(hang=True), timeout_s=30.0)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(request(("user", "hi")))
    wait_until(lambda: fake.of("/v1/chat/completions"))
    sink.assert_quiet(200 * MS)

    stream.cancel()
    wait_until(lambda: fake.disconnects == 1)
    assert sink.results == []


def test_cancel_mid_reply_stops_the_tokens(rig):
    fake, engine = rig(ChatScript(token_interval_ms=30))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(request(("user", "hi")))
    sink.wait_for(lambda s: len(s.of(TokenReceived)) >= 2)

    stream.cancel()
    delivered = sink.count()
    wait_until(lambda: fake.disconnects == 1)
    sink.assert_quiet(60 * MS)
    assert sink.count() == delivered
    assert not sink.of(ReplyCompleted)


def test_a_dropped_connection_mid_reply_is_a_translated_failure(rig):
    _, engine = rig(ChatScript(drop_after_tokens=3))
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert text(sink) == "".join(tokens_of(REPLY)[:3])
    (failure,) = sink.failures()
    assert failure.gave_up
    assert failure.error.startswith("openai: connection failed")


def test_an_error_event_inside_the_stream_is_a_translated_failure(rig):
    _, engine = rig(ChatScript(error_after_tokens=1))
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert sink.failures() == [EngineFailed(error="openai: error in stream (server_error)")]


def test_a_server_that_reports_no_usage_completes_with_zero_tokens(rig):
    _, engine = rig(ChatScript(honour_include_usage=False))
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert sink.of(ReplyCompleted) == [ReplyCompleted(tokens_in=0, tokens_out=0)]


def test_a_local_server_needs_no_key_and_the_environment_is_not_read(rig, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    fake, engine = rig(server_key="not-needed", api_key=None)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert text(sink) == REPLY
    assert fake.requests[0].headers["authorization"] == "Bearer not-needed"


def test_openai_itself_without_a_key_fails_the_stream(loop_thread, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    engine = OpenAILlm(OpenAISettings(), loop_thread.loop)
    sink = Recorder()
    engine.open("call-1", sink).send(request(("user", "hi")))

    sink.wait_for(done)
    assert sink.results == [
        EngineFailed(error="openai: no API key configured (openai.api_key)", gave_up=True)
    ]


def test_statuses_translate_to_our_errors_and_an_exhausted_quota_is_not_transient():
    assert from_status("openai", 429, "rate_limit_exceeded").transient
    quota = from_status("openai", 429, "insufficient_quota")
    assert isinstance(quota, ProviderRateLimited) and not quota.transient
    assert isinstance(from_status("openai", 403), ProviderAuthFailed)
    assert not from_status("openai", 400).transient
    assert from_status("openai", 503).transient
    assert scrub(f"echoed {KEY} back", [KEY, None]) == "echoed *** back"
