"""The embedded offline LLM engine: a scripted agent that answers set questions, and says so.

There is no language model. The answer to the caller's last message is the answer of the first
of the agent's FAQ rules (`actors.agent.FaqRule`, in order) that matches it; when none does, an
honest fallback repeats what was heard and explains that the agent runs offline. The system
prompt is not interpreted. A rule matches when

* `regex` is true: its `pattern` is found anywhere in the message (`re.search`, ignoring case);
* otherwise: any of its comma-separated keywords (a word or a phrase) occurs in the message as
  whole words, ignoring case and punctuation ("opening hours" matches "Opening hours?").

The answer streams as word tokens, then `ReplyCompleted(tokens_in=0, tokens_out=<words>)`.

Threads: `send` answers right away on the Responder's thread (a few rules against one utterance
take microseconds), calling the sink from there. Rule patterns come from the store, which
checks that they compile.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from actors.engines import ReplyCompleted, ReplyRequest, Sink, TokenReceived

if TYPE_CHECKING:
    from actors.agent import FaqRule

OFFLINE_NOTE = (
    "I'm running offline without a language model, so I can only answer a few set questions."
)
_WORDS = re.compile(r"\w+")
_TOKENS = re.compile(r"\s*\S+")


class FaqRuleError(ValueError):
    """An FAQ rule that cannot be used (its regular expression does not compile)."""


def fallback(heard: str) -> str:
    """The honest answer when no rule matches."""
    if not heard.strip():
        return f"Sorry, I didn't catch that. {OFFLINE_NOTE}"
    return f"I heard: '{heard.strip()}'. {OFFLINE_NOTE}"


def tokens(text: str) -> list[str]:
    """`text` as word tokens, each after the first keeping its leading space."""
    return _TOKENS.findall(text)


def last_user_message(request: ReplyRequest) -> str:
    return next((m.content for m in reversed(request.messages) if m.role == "user"), "")


def _normalized(text: str) -> str:
    return " " + " ".join(_WORDS.findall(text.lower())) + " "


class FaqMatcher:
    """An agent's FAQ rules, compiled once.

    Raises:
        FaqRuleError: a regex rule does not compile.
    """

    def __init__(self, rules: Sequence[FaqRule]) -> None:
        self._rules = [(_matcher(index, rule), rule.answer) for index, rule in enumerate(rules)]

    def answer(self, text: str) -> str | None:
        """The answer of the first rule matching `text`, or None."""
        return next((answer for matches, answer in self._rules if matches(text)), None)


def _matcher(index: int, rule: FaqRule) -> Callable[[str], bool]:
    if rule.regex:
        try:
            pattern = re.compile(rule.pattern, re.IGNORECASE)
        except re.error as exc:
            raise FaqRuleError(f"faq rule {index}: {exc}") from None

        def found(text: str) -> bool:
            return pattern.search(text) is not None

        return found
    keywords = [_normalized(k) for k in rule.pattern.split(",") if k.strip()]

    def mentioned(text: str) -> bool:
        words = _normalized(text)
        return any(k in words for k in keywords)

    return mentioned


class ScriptedLlm:
    """LlmEngine for one agent: FAQ answers, else the honest fallback."""

    def __init__(self, faq: Sequence[FaqRule]) -> None:
        self._faq = FaqMatcher(faq)

    def reply(self, request: ReplyRequest) -> str:
        heard = last_user_message(request)
        return self._faq.answer(heard) or fallback(heard)

    def open(self, call_id: str, sink: Sink) -> InstantReply:
        return InstantReply(self.reply, sink)


class InstantReply:
    """An LLM stream whose whole answer is known at once; it streams it as word tokens."""

    def __init__(self, reply: Callable[[ReplyRequest], str], sink: Sink) -> None:
        self._reply = reply
        self._sink = sink
        self._done = False

    def send(self, request: ReplyRequest, /) -> None:
        if self._done:
            return
        self._done = True
        words = tokens(self._reply(request))
        for word in words:
            self._sink(TokenReceived(text=word))
        self._sink(ReplyCompleted(tokens_in=0, tokens_out=len(words)))

    def finalize(self) -> None:
        pass  # the request is the whole input

    def cancel(self) -> None:
        self._done = True

    def close(self) -> None:
        self._done = True
