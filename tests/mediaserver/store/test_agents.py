import pytest

from mediaserver.store import (
    AgentSpec,
    Conflict,
    FaqRule,
    InvalidValue,
    NotFound,
    Store,
    VadOverrides,
)
from tests.mediaserver.store.support import db_path, run

FULL_SPEC = AgentSpec(
    name="Front desk",
    system_prompt="You answer the phone for Acme.",
    greeting="Hello, Acme here.",
    language="de",
    voice="thalia",
    stt_engine="deepgram",
    llm_engine="openai",
    tts_engine="deepgram",
    stt_fallback="offline",
    llm_fallback="echo",
    tts_fallback="offline",
    faq=(
        FaqRule(match=r"\bhours?\b", answer="Nine to five."),
        FaqRule(match=("price",), answer="Ten."),
    ),
    vad=VadOverrides(
        threshold=0.6, min_speech_ms=150, end_of_turn_silence_ms=700, turn_end="provider"
    ),
    recording=True,
)


async def default_id(store, company_id):
    agent = await store.get_default_agent(company_id)
    return None if agent is None else agent.id


def test_an_agent_keeps_every_field(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            agent = await store.create_agent(acme.id, FULL_SPEC)
            assert agent.spec == FULL_SPEC
            assert agent.company_id == acme.id
            assert await store.get_agent(acme.id, agent.id) == agent
            assert await store.list_agents(acme.id) == [agent]

    run(main())


def test_the_first_agent_is_the_default_and_only_one_default_exists(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            assert await store.get_default_agent(acme.id) is None
            first = await store.create_agent(acme.id, AgentSpec(name="First"))
            second = await store.create_agent(acme.id, AgentSpec(name="Second"))
            assert first.is_default
            assert not second.is_default

            await store.set_default_agent(acme.id, second.id)
            assert await default_id(store, acme.id) == second.id
            assert [a.is_default for a in await store.list_agents(acme.id)] == [False, True]

            third = await store.create_agent(acme.id, AgentSpec(name="Third"), default=True)
            assert third.is_default
            assert [a.is_default for a in await store.list_agents(acme.id)] == [False, False, True]

    run(main())


def test_deleting_the_default_promotes_the_oldest_remaining_agent(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            a = await store.create_agent(acme.id, AgentSpec(name="A"))
            b = await store.create_agent(acme.id, AgentSpec(name="B"))
            c = await store.create_agent(acme.id, AgentSpec(name="C"))
            await store.set_default_agent(acme.id, b.id)

            await store.delete_agent(acme.id, c.id)  # not the default: nothing moves
            assert await default_id(store, acme.id) == b.id
            await store.delete_agent(acme.id, b.id)
            assert await default_id(store, acme.id) == a.id
            await store.delete_agent(acme.id, a.id)
            assert await default_id(store, acme.id) is None
            with pytest.raises(NotFound):
                await store.delete_agent(acme.id, a.id)

    run(main())


def test_update_changes_only_the_given_fields(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            agent = await store.create_agent(acme.id, FULL_SPEC)
            updated = await store.update_agent(
                acme.id, agent.id, greeting="Hi!", vad=VadOverrides(), stt_fallback=None
            )
            assert updated.spec.greeting == "Hi!"
            assert updated.spec.vad == VadOverrides()
            assert updated.spec.stt_fallback is None
            assert updated.spec.system_prompt == FULL_SPEC.system_prompt
            assert updated.updated_at >= agent.updated_at
            assert updated.created_at == agent.created_at
            assert await store.get_agent(acme.id, agent.id) == updated

    run(main())


def test_bad_agent_input_raises_invalid_value_and_changes_nothing(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            agent = await store.create_agent(acme.id, AgentSpec(name="Desk"))
            with pytest.raises(InvalidValue) as caught:
                await store.create_agent(acme.id, AgentSpec(name="X", tts_engine="espeak"))
            assert caught.value.field == "tts_engine"
            with pytest.raises(InvalidValue) as caught:
                await store.update_agent(acme.id, agent.id, name=" ")
            assert caught.value.field == "name"
            with pytest.raises(InvalidValue) as caught:
                await store.update_agent(acme.id, agent.id, colour="red")  # type: ignore[call-arg]
            assert caught.value.field == "colour"
            with pytest.raises(InvalidValue) as caught:
                faq = (FaqRule(match="(unclosed", answer="x"),)
                await store.update_agent(acme.id, agent.id, faq=faq)
            assert caught.value.field == "faq[0].match"
            assert await store.list_agents(acme.id) == [agent]

    run(main())


def test_agent_names_are_unique_within_a_company_only(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            other = await store.create_company("Other")
            desk = await store.create_agent(acme.id, AgentSpec(name="Desk"))
            sales = await store.create_agent(acme.id, AgentSpec(name="Sales"))
            await store.create_agent(other.id, AgentSpec(name="Desk"))
            with pytest.raises(Conflict):
                await store.create_agent(acme.id, AgentSpec(name="Desk"))
            with pytest.raises(Conflict):
                await store.update_agent(acme.id, sales.id, name="Desk")
            await store.update_agent(acme.id, desk.id, name="Desk")  # its own name is fine

    run(main())


def test_an_agent_for_an_unknown_company_is_refused(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            with pytest.raises(NotFound):
                await store.create_agent("nope", AgentSpec(name="Desk"))

    run(main())


def test_numbers_route_globally_to_their_company_and_agent(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            desk = await store.create_agent(acme.id, AgentSpec(name="Desk"))
            sales = await store.create_agent(acme.id, AgentSpec(name="Sales"))
            await store.add_number(acme.id, "+14155550100", desk.id)
            await store.add_number(acme.id, "+4930123456", sales.id)

            assert await store.route_number("+14155550100") == (acme, desk)
            assert await store.route_number("+4930123456") == (acme, sales)
            assert await store.route_number("+4930000000") is None
            assert await store.route_number("not a number") is None
            assert [n.number for n in await store.list_numbers(acme.id)] == [
                "+14155550100",
                "+4930123456",
            ]

            await store.remove_number(acme.id, "+14155550100")
            assert await store.route_number("+14155550100") is None
            with pytest.raises(NotFound):
                await store.remove_number(acme.id, "+14155550100")

    run(main())


def test_a_number_has_one_owner_and_a_valid_format(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            other = await store.create_company("Other")
            desk = await store.create_agent(acme.id, AgentSpec(name="Desk"))
            theirs = await store.create_agent(other.id, AgentSpec(name="Desk"))
            await store.add_number(acme.id, "+14155550100", desk.id)
            with pytest.raises(Conflict):
                await store.add_number(other.id, "+14155550100", theirs.id)
            with pytest.raises(Conflict):
                await store.add_number(acme.id, "+14155550100", desk.id)
            with pytest.raises(InvalidValue) as caught:
                await store.add_number(acme.id, "4155550100", desk.id)
            assert caught.value.field == "number"
            with pytest.raises(NotFound):
                await store.add_number(acme.id, "+14155550199", "no-such-agent")

    run(main())


def test_an_agent_that_answers_a_number_cannot_be_deleted(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            desk = await store.create_agent(acme.id, AgentSpec(name="Desk"))
            await store.add_number(acme.id, "+14155550100", desk.id)
            with pytest.raises(Conflict, match=r"\+14155550100"):
                await store.delete_agent(acme.id, desk.id)
            await store.remove_number(acme.id, "+14155550100")
            await store.delete_agent(acme.id, desk.id)
            assert await store.list_agents(acme.id) == []

    run(main())
