"""AgentConfig: what one agent says and which engines it uses, as the call tree sees it.

The edge builds it from the store's agent row when it admits a call; the actors never read
the store. Every field is a scalar or a tuple of frozen values, so one instance is shared by
all the actors of a call without copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TurnEnd = Literal["vad", "provider"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FaqRule:
    """A canned answer: the offline LLM engine answers `answer` when `pattern` matches.

    `pattern` is a regular expression when `regex` is true, otherwise a comma-separated list
    of keywords. The actors only carry the rules; the engine interprets them.
    """

    pattern: str
    answer: str
    regex: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOverrides:
    """Per-agent turn-taking overrides; None keeps the server default from `VadSettings`."""

    threshold: float | None = None
    min_speech_ms: int | None = None
    end_of_turn_silence_ms: int | None = None
    turn_end: TurnEnd | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """One agent of a company: prompt, greeting, voice and engine names."""

    id: str
    name: str
    system_prompt: str = ""
    greeting: str = ""
    language: str = "en"
    voice: str = ""
    stt_engine: str = "offline"
    llm_engine: str = "offline"
    tts_engine: str = "offline"
    faq: tuple[FaqRule, ...] = ()
    vad: VadOverrides = VadOverrides()
    recording: bool = False
