import time
from typing import Any

import pytest

from mediaserver.store import (
    AgentSpec,
    CallEvent,
    Conflict,
    InvalidValue,
    NotFound,
    Store,
    TurnRecord,
    Usage,
)
from tests.mediaserver.store.support import db_path, run, seed


def turn(seq=1, **changes):
    fields = {"seq": seq, "role": "user", "text": "hello", "started_at": 10.0, "ended_at": 11.5}
    return TurnRecord(**{**fields, **changes})


def test_a_call_is_started_in_a_conversation_and_ended_once(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            agent = await store.create_agent(acme.id, AgentSpec(name="Desk"))
            conversation = await store.create_conversation(acme.id, agent.id, "peer-1")
            assert await store.get_conversation(acme.id, conversation.id) == conversation
            before = time.time()
            call = await store.start_call(
                acme.id,
                call_id="call-1",
                conversation_id=conversation.id,
                agent_id=agent.id,
                transport="twilio",
                peer_id="+14155550100",
            )
            assert (call.id, call.conversation_id, call.transport) == (
                "call-1",
                conversation.id,
                "twilio",
            )
            assert call.active
            assert before <= call.started_at <= time.time()

            ended = await store.end_call(acme.id, call.id, "caller_hung_up")
            again = await store.end_call(acme.id, call.id, "timeout")
            assert (ended.end_reason, ended.active) == ("caller_hung_up", False)
            assert again == ended
            assert await store.get_call(acme.id, call.id) == ended

            recorded = await store.set_call_recording(acme.id, call.id, "recordings/call-1.wav")
            assert recorded.recording_path == "recordings/call-1.wav"

    run(main())


def test_start_call_refuses_bad_input(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            t = await seed(store, "Acme")
            start = {"agent_id": t.agent_id, "transport": "webrtc", "peer_id": "p"}
            with pytest.raises(InvalidValue) as caught:
                await store.start_call(t.company_id, **{**start, "transport": "carrier-pigeon"})
            assert caught.value.field == "transport"
            with pytest.raises(InvalidValue):
                unhashable: Any = ["webrtc"]
                await store.start_call(t.company_id, **{**start, "transport": unhashable})
            with pytest.raises(NotFound):
                await store.start_call(t.company_id, **{**start, "agent_id": "nope"})
            with pytest.raises(NotFound):
                await store.start_call(t.company_id, conversation_id="nope", **start)
            with pytest.raises(Conflict):
                await store.start_call(t.company_id, call_id=t.call_id, **start)
            with pytest.raises(NotFound):
                await store.end_call(t.company_id, "nope", "done")

    run(main())


def test_events_turns_and_usage_are_recorded_in_order(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            t = await seed(store, "Acme")
            await store.add_call_event(t.company_id, t.call_id, "ice_connected", {"ms": 120})
            batch = [CallEvent(kind="barge_in", data={"n": n}, at=100.0 + n) for n in range(3)]
            await store.add_call_events(t.company_id, t.call_id, batch)
            events = await store.list_events(t.company_id, t.call_id)
            assert [(e.kind, e.data) for e in events] == [
                ("ice_connected", {"ms": 120}),
                ("barge_in", {"n": 0}),
                ("barge_in", {"n": 1}),
                ("barge_in", {"n": 2}),
            ]
            assert events[1:] == batch

            second = turn(2, role="assistant", interrupted=True, llm_first_token_ms=310.5)
            first = turn(1, stt_ms=80.0, voice_to_voice_ms=950.0)
            await store.add_turn(t.company_id, t.call_id, second)
            await store.add_turn(t.company_id, t.call_id, first)
            assert await store.list_turns(t.company_id, t.call_id) == [first, second]
            with pytest.raises(Conflict):
                await store.add_turn(t.company_id, t.call_id, turn(1))

            usage = [
                Usage(provider="openai", tokens_in=120, tokens_out=40),
                Usage(provider="deepgram", audio_in_s=12.5),
            ]
            for item in usage:
                await store.add_usage(t.company_id, t.call_id, item)
            assert await store.list_usage(t.company_id, t.call_id) == usage

    run(main())


def test_a_bad_event_in_a_batch_writes_none_of_it(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            t = await seed(store, "Acme")
            batch = [CallEvent(kind="ok"), CallEvent(kind="bad", data={"x": object()})]
            with pytest.raises(InvalidValue) as caught:
                await store.add_call_events(t.company_id, t.call_id, batch)
            assert caught.value.field == "data"
            with pytest.raises(InvalidValue):
                await store.add_call_event(t.company_id, t.call_id, "nan", {"x": float("nan")})
            assert await store.list_events(t.company_id, t.call_id) == []

    run(main())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seq": -1}, "seq"),
        ({"role": "system"}, "role"),
        ({"role": ["user"]}, "role"),
        ({"text": None}, "text"),
        ({"stt_ms": float("inf")}, "stt_ms"),
        ({"voice_to_voice_ms": -5.0}, "voice_to_voice_ms"),
        ({"interrupted": "yes"}, "interrupted"),
    ],
)
def test_bad_turns_are_refused(tmp_path, changes, field):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            t = await seed(store, "Acme")
            with pytest.raises(InvalidValue) as caught:
                await store.add_turn(t.company_id, t.call_id, turn(**changes))
            assert caught.value.field == field

    run(main())


def test_bad_usage_is_refused(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            t = await seed(store, "Acme")
            for usage, field in [
                (Usage(provider=""), "provider"),
                (Usage(provider="openai", tokens_in=-1), "tokens_in"),
                (Usage(provider="openai", audio_out_s=float("nan")), "audio_out_s"),
            ]:
                with pytest.raises(InvalidValue) as caught:
                    await store.add_usage(t.company_id, t.call_id, usage)
                assert caught.value.field == field

    run(main())


def test_list_calls_pages_newest_first_and_filters(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            t = await seed(store, "Acme")
            other_agent = await store.create_agent(t.company_id, AgentSpec(name="Other"))
            start = {"transport": "text", "peer_id": "p"}
            second = await store.start_call(t.company_id, agent_id=t.agent_id, **start)
            third = await store.start_call(t.company_id, agent_id=other_agent.id, **start)
            await store.end_call(t.company_id, second.id, "done")

            ids = [c.id for c in await store.list_calls(t.company_id)]
            assert ids == [third.id, second.id, t.call_id]
            page = await store.list_calls(t.company_id, limit=1, offset=1)
            assert [c.id for c in page] == [second.id]
            active = await store.list_calls(t.company_id, status="active")
            assert [c.id for c in active] == [third.id, t.call_id]
            ended = await store.list_calls(t.company_id, status="ended")
            assert [c.id for c in ended] == [second.id]
            by_agent = await store.list_calls(t.company_id, agent_id=other_agent.id)
            assert [c.id for c in by_agent] == [third.id]
            with pytest.raises(InvalidValue):
                await store.list_calls(t.company_id, limit=-1)
            with pytest.raises(InvalidValue):
                await store.list_calls(t.company_id, status="paused")  # type: ignore[arg-type]

    run(main())


def test_admin_list_calls_sees_every_company_or_one(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await seed(store, "Acme")
            globex = await seed(store, "Globex")
            assert {c.id for c in await store.admin_list_calls()} == {acme.call_id, globex.call_id}
            only = await store.admin_list_calls(company_id=globex.company_id)
            assert [c.id for c in only] == [globex.call_id]

    run(main())
