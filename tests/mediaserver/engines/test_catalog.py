"""EngineCatalog: engine names to engines, provider hooks, refusals, warm-up and close."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from actors.agent import AgentConfig, FaqRule
from config.settings import DeepgramSettings, OfflineSettings, OpenAISettings, Settings
from mediaserver.engines.catalog import (
    EngineCatalog,
    ProviderEngines,
    provider_engines,
)
from mediaserver.engines.deepgram_stt import DeepgramStt
from mediaserver.engines.deepgram_tts import DeepgramTts
from mediaserver.engines.echo import EchoLlm, EchoStt, EchoTts
from mediaserver.engines.openai_llm import OpenAILlm
from mediaserver.engines.openai_tts import OpenAITts
from mediaserver.engines.scripted import ScriptedLlm
from mediaserver.engines.silero import SharedSileroVad
from mediaserver.engines.synthesis import SentenceTts
from mediaserver.engines.whisper import WhisperStt
from mediaserver.errors import EdgeError, EngineUnavailable, StartupError

OFFLINE = AgentConfig(id="a1", name="Offline")
ECHO = AgentConfig(id="a2", name="Echo", stt_engine="echo", llm_engine="echo", tts_engine="echo")


def test_offline_names_give_the_embedded_engines_sharing_one_vad(catalog):
    engines = catalog.engines_for(OFFLINE)
    assert isinstance(engines.stt, WhisperStt)
    assert isinstance(engines.llm, ScriptedLlm)
    assert isinstance(engines.tts, SentenceTts) and engines.tts.name == "piper"
    assert engines.vad is catalog.engines_for(ECHO).vad is catalog.vad


def test_warm_up_loaded_the_models_and_the_shared_vad(catalog):
    assert catalog.whisper is not None and catalog.whisper.loaded
    assert catalog.piper.loaded
    # onnxruntime comes with the offline extra: one Silero session for every call.
    assert isinstance(catalog.vad, SharedSileroVad) and catalog.vad.loaded


def test_echo_names_give_the_echo_engines(catalog):
    engines = catalog.engines_for(ECHO)
    assert isinstance(engines.stt, EchoStt)
    assert isinstance(engines.llm, EchoLlm)
    assert isinstance(engines.tts, EchoTts)


@pytest.mark.parametrize(("voice", "name"), [("espeak", "espeak-ng"), ("espeak:de", "espeak-ng")])
def test_the_espeak_voice_selects_espeak_ng(catalog, voice, name):
    engines = catalog.engines_for(AgentConfig(id="a3", name="Robot", voice=voice))
    assert isinstance(engines.tts, SentenceTts) and engines.tts.name == name


def test_an_unknown_offline_voice_falls_back_to_piper(catalog, caplog):
    engines = catalog.engines_for(AgentConfig(id="a4", name="Alloy", voice="alloy"))
    assert isinstance(engines.tts, SentenceTts) and engines.tts.name == "piper"
    assert "no voice 'alloy'" in caplog.text


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        (AgentConfig(id="x", name="x", stt_engine="vosk"), "unknown stt engine 'vosk'"),
        (AgentConfig(id="x", name="x", llm_engine="gpt"), "unknown llm engine 'gpt'"),
        (AgentConfig(id="x", name="x", tts_engine="polly"), "unknown tts engine 'polly'"),
        (
            AgentConfig(id="x", name="x", stt_engine="deepgram"),
            "stt engine 'deepgram' is not configured on this server",
        ),
        (
            AgentConfig(id="x", name="x", llm_engine="openai"),
            "llm engine 'openai' is not configured on this server",
        ),
        (
            AgentConfig(id="x", name="x", faq=(FaqRule(pattern="(", answer="a", regex=True),)),
            "agent x: faq rule 0",
        ),
    ],
)
def test_an_engine_the_server_cannot_provide_is_refused_with_a_reason(catalog, agent, message):
    with pytest.raises(EngineUnavailable, match=message.replace("(", r"\(")) as refused:
        catalog.engines_for(agent)
    assert isinstance(refused.value, EdgeError)


def test_provider_hooks_make_the_network_engines_per_agent():
    asked: list[tuple[str, str]] = []

    def factory(kind: str):
        def make(agent: AgentConfig) -> object:
            asked.append((kind, agent.id))
            return EchoStt() if kind == "stt" else EchoLlm() if kind == "llm" else EchoTts()

        return make

    catalog = EngineCatalog(
        OfflineSettings(),
        providers=ProviderEngines(
            deepgram_stt=factory("stt"),
            deepgram_tts=factory("tts"),
            openai_llm=factory("llm"),
            openai_tts=factory("tts"),
        ),
    )
    try:
        agent = AgentConfig(
            id="p1", name="Cloud", stt_engine="deepgram", llm_engine="openai", tts_engine="openai"
        )
        catalog.engines_for(agent)
        catalog.engines_for(AgentConfig(id="p2", name="Cloud", tts_engine="deepgram"))
        assert asked == [("stt", "p1"), ("llm", "p1"), ("tts", "p1"), ("tts", "p2")]
    finally:
        catalog.close()


def test_close_stops_the_pools_and_refuses_further_calls():
    catalog = EngineCatalog(OfflineSettings())
    catalog.close()
    with pytest.raises(EngineUnavailable, match="shutting down"):
        catalog.engines_for(OFFLINE)
    with pytest.raises(RuntimeError):
        catalog.executors.transcriptions.submit(lambda: None)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (OfflineSettings(piper_voice="/nowhere/voice.onnx"), "offline.piper_voice"),
        (OfflineSettings(whisper_model="./no-such-model"), "offline.whisper_model"),
    ],
)
def test_a_missing_model_file_stops_the_server_at_start(settings, message):
    with pytest.raises(StartupError, match=message):
        EngineCatalog(settings)


def test_a_piper_voice_without_its_config_stops_the_server_at_start(tmp_path):
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"onnx")
    with pytest.raises(StartupError, match="no voice config"):
        EngineCatalog(OfflineSettings(piper_voice=str(voice)))


def test_a_model_size_is_left_for_faster_whisper_to_fetch():
    catalog = EngineCatalog(OfflineSettings(whisper_model="base.en"))
    try:
        assert catalog.whisper is not None and catalog.whisper.model == "base.en"
        assert not catalog.whisper.loaded  # nothing is fetched before a call needs it
    finally:
        catalog.close()


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_without_credentials_no_provider_is_offered(loop):
    engines = provider_engines(Settings(), loop)
    assert engines == ProviderEngines()


def test_configured_providers_get_engines_per_agent_sharing_a_client(loop):
    settings = Settings(
        deepgram=DeepgramSettings(api_key=SecretStr("dg-test-key")),
        openai=OpenAISettings(api_key=SecretStr("sk-test-key")),
    )
    catalog = EngineCatalog.from_settings(settings, loop)
    try:
        agent = AgentConfig(
            id="p1",
            name="Cloud",
            language="de",
            voice="aura-2-thalia-en",
            stt_engine="deepgram",
            llm_engine="openai",
            tts_engine="deepgram",
        )
        engines = catalog.engines_for(agent)
        assert isinstance(engines.stt, DeepgramStt)
        assert isinstance(engines.llm, OpenAILlm)
        assert isinstance(engines.tts, DeepgramTts) and engines.tts.model == "aura-2-thalia-en"
        spoken = catalog.engines_for(AgentConfig(id="p2", name="Cloud", tts_engine="openai"))
        assert isinstance(spoken.tts, OpenAITts) and spoken.tts.voice == "alloy"
        assert len(catalog.providers.clients) == 1  # the OpenAI client, closed by aclose()
    finally:
        loop.run_until_complete(catalog.aclose())
    with pytest.raises(EngineUnavailable, match="shutting down"):
        catalog.engines_for(agent)


def test_an_openai_compatible_server_needs_only_its_url(loop):
    engines = provider_engines(
        Settings(openai=OpenAISettings(base_url="http://127.0.0.1:11434/v1")), loop
    )
    assert engines.openai_llm is not None and engines.deepgram_stt is None


def test_a_provider_setting_that_cannot_work_stops_the_server_at_start(loop):
    settings = Settings(
        deepgram=DeepgramSettings(api_key=SecretStr("dg-test-key"), base_url="ftp://nowhere")
    )
    with pytest.raises(StartupError, match="deepgram") as stopped:
        provider_engines(settings, loop)
    assert "dg-test-key" not in str(stopped.value)
