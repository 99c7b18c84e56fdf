"""One company's ids never reach another company's rows, for reading or for writing."""

import pytest

from mediaserver.store import CallEvent, NotFound, Store, TurnRecord, Usage
from tests.mediaserver.store.support import db_path, run, seed


def test_another_companys_rows_look_like_unknown_ids(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await seed(store, "Acme")
            evil = await seed(store, "Evil")
            await store.add_number(acme.company_id, "+14155550100", acme.agent_id)
            await store.add_call_event(acme.company_id, acme.call_id, "secret", {"x": 1})
            key, _ = await store.create_api_key(acme.company_id)
            conversation = await store.create_conversation(acme.company_id, acme.agent_id, "p")

            # Reads: None, empty, or NotFound; never Acme's data.
            assert await store.get_agent(evil.company_id, acme.agent_id) is None
            assert await store.get_call(evil.company_id, acme.call_id) is None
            assert await store.get_conversation(evil.company_id, conversation.id) is None
            assert [a.id for a in await store.list_agents(evil.company_id)] == [evil.agent_id]
            assert [c.id for c in await store.list_calls(evil.company_id)] == [evil.call_id]
            assert await store.list_calls(evil.company_id, agent_id=acme.agent_id) == []
            assert await store.list_numbers(evil.company_id) == []
            assert await store.list_api_keys(evil.company_id) == []
            for read in (store.list_events, store.list_turns, store.list_usage):
                with pytest.raises(NotFound):
                    await read(evil.company_id, acme.call_id)

            # Writes through Acme's ids: NotFound, and Acme's rows stay as they were.
            turn = TurnRecord(seq=1, role="user", text="x", started_at=1.0, ended_at=2.0)
            attempts = [
                store.update_agent(evil.company_id, acme.agent_id, greeting="pwned"),
                store.set_default_agent(evil.company_id, acme.agent_id),
                store.delete_agent(evil.company_id, acme.agent_id),
                store.add_number(evil.company_id, "+14155550199", acme.agent_id),
                store.remove_number(evil.company_id, "+14155550100"),
                store.revoke_api_key(evil.company_id, key.id),
                store.create_conversation(evil.company_id, acme.agent_id, "p"),
                store.start_call(
                    evil.company_id, agent_id=acme.agent_id, transport="text", peer_id="p"
                ),
                store.start_call(
                    evil.company_id,
                    conversation_id=conversation.id,
                    agent_id=evil.agent_id,
                    transport="text",
                    peer_id="p",
                ),
                store.end_call(evil.company_id, acme.call_id, "pwned"),
                store.set_call_recording(evil.company_id, acme.call_id, "/tmp/x.wav"),
                store.add_call_events(evil.company_id, acme.call_id, [CallEvent(kind="x")]),
                store.add_turn(evil.company_id, acme.call_id, turn),
                store.add_usage(evil.company_id, acme.call_id, Usage(provider="openai")),
            ]
            for attempt in attempts:
                with pytest.raises(NotFound):
                    await attempt

            agent = await store.get_agent(acme.company_id, acme.agent_id)
            assert agent is not None
            assert (agent.spec.greeting, agent.is_default) == ("", True)
            call = await store.get_call(acme.company_id, acme.call_id)
            assert call is not None
            assert (call.active, call.recording_path) == (True, None)
            assert [e.kind for e in await store.list_events(acme.company_id, acme.call_id)] == [
                "secret"
            ]
            assert await store.list_turns(acme.company_id, acme.call_id) == []
            assert await store.list_usage(acme.company_id, acme.call_id) == []
            assert [n.number for n in await store.list_numbers(acme.company_id)] == ["+14155550100"]
            assert not (await store.list_api_keys(acme.company_id))[0].revoked

    run(main())
