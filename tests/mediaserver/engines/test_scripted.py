"""The scripted offline LLM: keyword and regex FAQ rules, the honest fallback, token streaming."""

from __future__ import annotations

import threading

import pytest

from actors.agent import FaqRule
from actors.engines import ChatMessage, ReplyCompleted, ReplyRequest, TokenReceived
from mediaserver.engines.scripted import OFFLINE_NOTE, FaqRuleError, ScriptedLlm, tokens
from tests.mediaserver.engines.conftest import Collected

HOURS = "We're open from nine to six, Monday to Saturday."
PRICES = "A loaf of sourdough is five dollars."
FAQ = (
    FaqRule(pattern="opening hours, open, close", answer=HOURS),
    FaqRule(pattern=r"\bhow much\b|\bprice", answer=PRICES, regex=True),
)


def request(*said: str) -> ReplyRequest:
    messages = []
    for i, text in enumerate(said):
        messages.append(ChatMessage(role="user", content=text))
        if i < len(said) - 1:
            messages.append(ChatMessage(role="assistant", content="Mm."))
    return ReplyRequest(call_id="c", turn_id=3, system_prompt="ignored", messages=tuple(messages))


def answer(faq, *said: str) -> tuple[str, Collected]:
    sink = Collected()
    stream = ScriptedLlm(faq).open("c", sink)
    stream.send(request(*said))
    return "".join(t.text for t in sink.of(TokenReceived)), sink


@pytest.mark.parametrize(
    "said", ["What are your opening hours?", "when do you OPEN", "Are you closed... no, close?"]
)
def test_a_keyword_rule_answers_when_any_keyword_is_said(said):
    assert answer(FAQ, said)[0] == HOURS


@pytest.mark.parametrize("said", ["How much is the bread?", "what PRICES do you have"])
def test_a_regex_rule_answers_when_its_pattern_is_found(said):
    assert answer(FAQ, said)[0] == PRICES


def test_keywords_match_whole_words_only():
    # "open" is a keyword; "opener" and "reopening" are other words.
    text, _ = answer(FAQ, "I need a bottle opener for the reopening party")
    assert text.startswith("I heard:")


def test_the_first_matching_rule_wins_and_only_the_last_user_message_counts():
    assert answer(FAQ, "how much is it", "and when do you open?")[0] == HOURS
    assert answer(FAQ, "when do you open", "how much is it")[0] == PRICES


def test_without_a_match_it_says_what_it_heard_and_that_it_is_offline():
    text, _ = answer(FAQ, "Can you book me a table for two?")
    assert text == f"I heard: 'Can you book me a table for two?'. {OFFLINE_NOTE}"
    assert answer((), "hello")[0] == f"I heard: 'hello'. {OFFLINE_NOTE}"
    assert answer((), "")[0].startswith("Sorry, I didn't catch that.")


def test_the_answer_streams_word_by_word_then_completes_with_token_counts():
    text, sink = answer(FAQ, "opening hours?")
    assert text == HOURS
    pieces = [t.text for t in sink.of(TokenReceived)]
    assert pieces[:3] == ["We're", " open", " from"]
    assert len(pieces) == len(HOURS.split())
    assert sink.results[-1] == ReplyCompleted(tokens_in=0, tokens_out=len(pieces))
    assert sink.threads == {threading.current_thread().name}


def test_a_cancelled_stream_answers_nothing():
    sink = Collected()
    stream = ScriptedLlm(FAQ).open("c", sink)
    stream.cancel()
    stream.send(request("open?"))
    assert sink.results == []


def test_a_regex_that_does_not_compile_is_refused():
    with pytest.raises(FaqRuleError, match="faq rule 1"):
        ScriptedLlm((FAQ[0], FaqRule(pattern="(unclosed", answer="x", regex=True)))


def test_tokens_keep_the_spacing_of_the_text():
    assert "".join(tokens("Hi  there,\nfriend.")) == "Hi  there,\nfriend."
