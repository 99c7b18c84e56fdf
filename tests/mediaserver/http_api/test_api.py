"""The tenant HTTP API through the real app: every route, tenant isolation, bad input."""

import datetime as dt
import time

import pytest

from mediaserver.store import Usage
from tests.mediaserver.http_api.conftest import Api

# -- authentication and rate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer msk_aaaaaaaa_" + "x" * 43},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ],
)
def test_requests_without_a_live_key_are_401_with_a_bearer_challenge(api, headers):
    async def scenario(api: Api):
        for path in ("/api/calls", "/api/agents", "/api/usage", "/api/webhook"):
            response = await api.client.get(path, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["WWW-Authenticate"] == "Bearer"

    api(scenario)


def test_a_revoked_key_stops_working_at_once(api):
    async def scenario(api: Api):
        assert (await api.get("/api/agents")).status_code == 200
        (key,) = await api.store.list_api_keys(api.acme.company_id)
        await api.store.revoke_api_key(api.acme.company_id, key.id)
        assert (await api.get("/api/agents")).status_code == 401

    api(scenario)


def test_each_key_gets_requests_per_min_then_429_with_retry_after(api):
    async def scenario(api: Api):
        for _ in range(3):
            assert (await api.get("/api/agents")).status_code == 200
        over = await api.get("/api/agents")
        assert over.status_code == 429
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert "3 requests per minute" in over.json()["detail"]
        # Another company's key has its own window.
        assert (await api.get("/api/agents", api.evil)).status_code == 200

    api(scenario, requests_per_min=3)


def test_the_openapi_schema_describes_the_api_routes_and_bearer_auth(api):
    async def scenario(api: Api):
        response = await api.client.get("/openapi.json")
        assert response.status_code == 200
        schema = response.json()
        paths = schema["paths"]
        assert {
            "/api/calls",
            "/api/calls/{call_id}",
            "/api/calls/{call_id}/recording",
            "/api/conversations/{conversation_id}/context",
            "/api/agents",
            "/api/agents/{agent_id}",
            "/api/numbers",
            "/api/numbers/{number}",
            "/api/usage",
            "/api/webhook",
        } <= set(paths)
        assert set(paths["/api/agents/{agent_id}"]) == {"get", "patch", "delete"}
        assert set(paths["/api/webhook"]) == {"get", "put", "delete"}
        assert schema["components"]["securitySchemes"]["ApiKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of your company: `Authorization: Bearer msk_...`",
        }
        assert paths["/api/calls"]["get"]["security"] == [{"ApiKey": []}]
        assert "429" in paths["/api/calls"]["get"]["responses"]
        params = {p["name"] for p in paths["/api/calls"]["get"]["parameters"]}
        assert {"status", "agent_id", "transport", "limit", "offset"} <= params
        assert "/metrics" not in paths

    api(scenario)


# -- calls ---------------------------------------------------------------------------------------


def test_calls_are_listed_newest_first_with_a_total(api):
    async def scenario(api: Api):
        body = (await api.get("/api/calls")).json()
        assert [c["id"] for c in body["items"]] == api.acme.call_ids[::-1]
        assert body["total"] == 3 and body["limit"] == 50 and body["offset"] == 0
        newest = body["items"][0]
        assert newest["status"] == "active" and newest["ended_at"] is None
        assert newest["duration_s"] is None and newest["recorded"] is False
        oldest = body["items"][-1]
        assert oldest["status"] == "ended" and oldest["end_reason"] == "bye"
        assert oldest["duration_s"] >= 0

    api(scenario)


def test_calls_are_paged_and_filtered(api):
    async def scenario(api: Api):
        acme = api.acme
        page = (await api.get("/api/calls", params={"limit": 2, "offset": 1})).json()
        assert [c["id"] for c in page["items"]] == acme.call_ids[1::-1]
        assert page["total"] == 3

        async def ids(**params):
            return [c["id"] for c in (await api.get("/api/calls", params=params)).json()["items"]]

        assert await ids(status="active") == [acme.call_ids[2]]
        assert await ids(status="ended") == acme.call_ids[1::-1]
        assert await ids(transport="twilio") == [acme.call_ids[1]]
        assert await ids(conversation_id=acme.conversation_id) == acme.call_ids[1::-1]
        assert await ids(agent_id=acme.agent_id) == acme.call_ids[::-1]
        assert await ids(agent_id=api.evil.agent_id) == []
        assert await ids(started_after=time.time() + 60) == []
        assert len(await ids(started_before=dt.datetime.now(dt.UTC).isoformat())) == 3

    api(scenario)


def test_one_call_has_its_transcript_events_and_metrics(api):
    async def scenario(api: Api):
        call_id = api.acme.call_ids[0]
        body = (await api.get(f"/api/calls/{call_id}")).json()
        assert body["id"] == call_id and body["status"] == "ended"
        assert [(t["role"], t["text"]) for t in body["transcript"]] == [
            ("user", "acme question 0"),
            ("assistant", "acme answer 0"),
        ]
        assert body["transcript"][1]["voice_to_voice_ms"] == 400.0
        assert [e["kind"] for e in body["events"]] == ["started"]
        metrics = body["metrics"]
        assert metrics["turn_count"] == 2 and metrics["interruptions"] == 1
        assert metrics["latency_ms"]["voice_to_voice_ms"] == {
            "count": 1,
            "p50": 400.0,
            "p95": 400.0,
            "max": 400.0,
        }
        assert metrics["latency_ms"]["stt_ms"]["p50"] == 100.0
        assert metrics["tokens_in"] == 10 and metrics["tokens_out"] == 5

    api(scenario)


def test_a_recorded_calls_wav_is_served_and_others_are_404(api, tmp_path):
    async def scenario(api: Api):
        call_id = api.acme.call_ids[0]
        assert (await api.get(f"/api/calls/{call_id}/recording")).status_code == 404
        wav = tmp_path / "rec.wav"
        wav.write_bytes(b"RIFF....WAVE")
        await api.store.set_call_recording(api.acme.company_id, call_id, str(wav))
        response = await api.get(f"/api/calls/{call_id}/recording")
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert response.content == b"RIFF....WAVE"
        assert (await api.get(f"/api/calls/{call_id}/recording", api.evil)).status_code == 404
        assert (await api.get(f"/api/calls/{call_id}")).json()["recorded"] is True

    api(scenario)


def test_a_conversations_context_is_every_turn_of_its_calls_in_order(api):
    async def scenario(api: Api):
        acme = api.acme
        body = (await api.get(f"/api/conversations/{acme.conversation_id}/context")).json()
        assert body["id"] == acme.conversation_id and body["agent_id"] == acme.agent_id
        assert body["peer_id"] == "acme-peer"
        assert body["call_ids"] == acme.call_ids[:2]
        assert [(m["role"], m["content"]) for m in body["messages"]] == [
            ("user", "acme question 0"),
            ("assistant", "acme answer 0"),
            ("user", "acme question 1"),
            ("assistant", "acme answer 1"),
        ]
        assert body["messages"][1]["interrupted"] is True

    api(scenario)


# -- agents --------------------------------------------------------------------------------------


def test_agents_are_created_read_updated_and_deleted(api):
    async def scenario(api: Api):
        created = await api.send(
            "POST",
            "/api/agents",
            json={
                "name": "Sales",
                "greeting": "Hello from sales",
                "llm_engine": "echo",
                "faq": [{"match": ["price", "cost"], "answer": "It is free."}],
                "vad": {"threshold": 0.6, "turn_end": "provider"},
                "recording": True,
            },
        )
        assert created.status_code == 201
        agent = created.json()
        assert agent["name"] == "Sales" and agent["llm_engine"] == "echo"
        assert agent["faq"] == [{"match": ["price", "cost"], "answer": "It is free."}]
        assert agent["vad"] == {"threshold": 0.6, "turn_end": "provider"}
        assert agent["recording"] is True and agent["is_default"] is False

        path = f"/api/agents/{agent['id']}"
        assert (await api.get(path)).json() == agent
        listed = (await api.get("/api/agents")).json()
        assert [a["name"] for a in listed] == ["acme desk", "Sales"]

        patched = await api.send("PATCH", path, json={"greeting": "Hi!", "is_default": True})
        assert patched.status_code == 200
        assert patched.json()["greeting"] == "Hi!" and patched.json()["is_default"] is True
        assert patched.json()["name"] == "Sales"  # fields left out keep their value
        old_default = (await api.get(f"/api/agents/{api.acme.agent_id}")).json()
        assert old_default["is_default"] is False

        fallback = await api.send("PATCH", path, json={"llm_fallback": "openai"})
        assert fallback.json()["llm_fallback"] == "openai"
        cleared = await api.send("PATCH", path, json={"llm_fallback": None})
        assert cleared.json()["llm_fallback"] is None

        assert (await api.send("DELETE", path)).status_code == 204
        assert (await api.get(path)).status_code == 404
        assert (await api.send("DELETE", path)).status_code == 404

    api(scenario)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "stt_engine": "nope"}, "stt_engine"),
        ({"name": "x", "llm_engine": "echo", "llm_fallback": "echo"}, "llm_fallback"),
        ({"name": "x", "vad": {"threshold": 2}}, "threshold"),
        ({"name": "x", "vad": {"nope": 1}}, "nope"),
        ({"name": "x", "faq": [{"match": "(", "answer": "a"}]}, "match"),
        ({"name": "x", "recording": "sometimes"}, "recording"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_agents_are_422_naming_the_field(api, body, field):
    async def scenario(api: Api):
        response = await api.send("POST", "/api/agents", json=body)
        assert response.status_code == 422
        locations = [error["loc"] for error in response.json()["detail"]]
        assert any(field in loc for loc in locations), locations
        assert len((await api.get("/api/agents")).json()) == 1  # nothing was created

    api(scenario)


def test_agent_conflicts_are_409(api):
    async def scenario(api: Api):
        duplicate = await api.send("POST", "/api/agents", json={"name": "acme desk"})
        assert duplicate.status_code == 409
        await api.send("POST", "/api/numbers", json={"number": "+14155550100"})
        busy = await api.send("DELETE", f"/api/agents/{api.acme.agent_id}")
        assert busy.status_code == 409 and "+14155550100" in busy.json()["detail"]

    api(scenario)


def test_a_bad_json_body_is_422(api):
    async def scenario(api: Api):
        response = await api.client.post(
            "/api/agents",
            content=b"{not json",
            headers={**api.acme.auth, "Content-Type": "application/json"},
        )
        assert response.status_code == 422

    api(scenario)


# -- numbers -------------------------------------------------------------------------------------


def test_numbers_are_routed_listed_and_removed(api):
    async def scenario(api: Api):
        added = await api.send("POST", "/api/numbers", json={"number": "+14155550100"})
        assert added.status_code == 201
        assert added.json()["agent_id"] == api.acme.agent_id  # the default agent
        listed = (await api.get("/api/numbers")).json()
        assert [n["number"] for n in listed] == ["+14155550100"]
        taken = await api.send("POST", "/api/numbers", api.evil, json={"number": "+14155550100"})
        assert taken.status_code == 409 and "acme" not in taken.text
        assert (await api.send("DELETE", "/api/numbers/+14155550100", api.evil)).status_code == 404
        assert (await api.send("DELETE", "/api/numbers/+14155550100")).status_code == 204
        assert (await api.get("/api/numbers")).json() == []

    api(scenario)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"number": "555-0100"}, 422, "number"),
        ({"number": "+14155550100", "agent_id": "nope"}, 404, None),
        ({}, 422, "number"),
    ],
)
def test_bad_numbers_are_refused(api, body, status, field):
    async def scenario(api: Api):
        response = await api.send("POST", "/api/numbers", json=body)
        assert response.status_code == status
        if field:
            assert any(field in e["loc"] for e in response.json()["detail"])

    api(scenario)


# -- usage ---------------------------------------------------------------------------------------


def test_usage_is_per_day_with_calls_minutes_latency_interruptions_and_tokens(api):
    async def scenario(api: Api):
        today = dt.datetime.now(dt.UTC).date().isoformat()
        body = (await api.get("/api/usage")).json()
        assert body["to"] == today
        (day,) = body["days"]
        assert day["day"] == today
        assert day["calls"] == 3
        assert 0 <= day["minutes"] < 1  # two short ended calls; the live one counts 0
        assert day["voice_to_voice_p50_ms"] == 500.0  # of 400, 500, 600
        assert day["voice_to_voice_p95_ms"] == pytest.approx(590.0)
        assert day["interruptions"] == 1
        assert day["tokens_in"] == 30 and day["tokens_out"] == 15
        other = (await api.get("/api/usage", api.evil)).json()["days"]
        assert other[0]["calls"] == 1 and other[0]["tokens_in"] == 10

    api(scenario)


def test_usage_counts_a_call_on_the_utc_day_it_started(api):
    async def scenario(api: Api):
        store, acme = api.store, api.acme
        call = await store.start_call(
            acme.company_id, agent_id=acme.agent_id, transport="text", peer_id="p"
        )
        await store.add_usage(acme.company_id, call.id, Usage(provider="openai", tokens_in=7))
        await store.end_call(acme.company_id, call.id, "bye")
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        async with store._db.transaction() as tx:  # back-date it: the API never writes times
            await tx.execute(
                "UPDATE calls SET started_at = ?, ended_at = ? WHERE id = ?",
                (yesterday.timestamp(), yesterday.timestamp() + 90, call.id),
            )
        body = (await api.get("/api/usage", params={"from": yesterday.date().isoformat()})).json()
        first = body["days"][0]
        assert first["day"] == yesterday.date().isoformat()
        assert first == {
            "day": first["day"],
            "calls": 1,
            "minutes": 1.5,
            "voice_to_voice_p50_ms": None,
            "voice_to_voice_p95_ms": None,
            "interruptions": 0,
            "tokens_in": 7,
            "tokens_out": 0,
        }
        only_yesterday = await api.get(
            "/api/usage",
            params={"from": yesterday.date().isoformat(), "to": yesterday.date().isoformat()},
        )
        assert len(only_yesterday.json()["days"]) == 1

    api(scenario)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01"}, "to"),
        ({"from": "2024-02-01", "to": "2024-01-01"}, "to"),
        ({"from": "2020-01-01", "to": "2024-01-01"}, "to"),
    ],
)
def test_bad_usage_ranges_are_422_naming_the_field(api, params, field):
    async def scenario(api: Api):
        response = await api.get("/api/usage", params=params)
        assert response.status_code == 422
        assert any(field in e["loc"] for e in response.json()["detail"])

    api(scenario)


# -- webhook -------------------------------------------------------------------------------------


def test_the_webhook_is_set_read_and_removed(api):
    async def scenario(api: Api):
        assert (await api.get("/api/webhook")).status_code == 404
        put = await api.send("PUT", "/api/webhook", json={"url": "https://acme.example/hook"})
        assert put.status_code == 200
        secret = put.json()["secret"]
        assert secret.startswith("whsec_")
        got = (await api.get("/api/webhook")).json()
        assert got["url"] == "https://acme.example/hook"
        assert got["secret"] is None  # shown once, by the PUT that set it
        assert got["recent_deliveries"] == []
        own = await api.send(
            "PUT", "/api/webhook", json={"url": "https://acme.example/v2", "secret": "s" * 32}
        )
        assert own.json()["secret"] == "s" * 32
        assert (await api.get("/api/webhook", api.evil)).status_code == 404
        assert (await api.send("DELETE", "/api/webhook")).status_code == 204
        assert (await api.get("/api/webhook")).status_code == 404

    api(scenario)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://acme.example/"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://acme.example/", "secret": "short"}, "secret"),
        ({}, "url"),
    ],
)
def test_bad_webhooks_are_422_naming_the_field(api, body, field):
    async def scenario(api: Api):
        response = await api.send("PUT", "/api/webhook", json=body)
        assert response.status_code == 422
        assert any(field in e["loc"] for e in response.json()["detail"])

    api(scenario)


# -- isolation and unknown ids ---------------------------------------------------------------------


def test_one_companys_key_never_reads_or_changes_another_companys_data(api):
    async def scenario(api: Api):
        acme, evil = api.acme, api.evil
        await api.send("POST", "/api/numbers", json={"number": "+14155550100"})
        await api.send("PUT", "/api/webhook", json={"url": "https://acme.example/hook"})

        listed = (await api.get("/api/calls", evil)).json()
        assert [c["id"] for c in listed["items"]] == evil.call_ids and listed["total"] == 1
        assert (await api.get("/api/calls", evil, params={"agent_id": acme.agent_id})).json()[
            "items"
        ] == []
        assert [a["id"] for a in (await api.get("/api/agents", evil)).json()] == [evil.agent_id]
        assert (await api.get("/api/numbers", evil)).json() == []
        assert (await api.get("/api/usage", evil)).json()["days"][0]["calls"] == 1

        for path in (
            f"/api/calls/{acme.call_ids[0]}",
            f"/api/calls/{acme.call_ids[0]}/recording",
            f"/api/conversations/{acme.conversation_id}/context",
            f"/api/agents/{acme.agent_id}",
        ):
            response = await api.get(path, evil)
            assert response.status_code == 404, path
            assert "acme" not in response.text
        for method, path, body in (
            ("PATCH", f"/api/agents/{acme.agent_id}", {"greeting": "pwned"}),
            ("DELETE", f"/api/agents/{acme.agent_id}", None),
            ("DELETE", "/api/numbers/+14155550100", None),
            ("POST", "/api/numbers", {"number": "+14155550199", "agent_id": acme.agent_id}),
        ):
            response = await api.send(method, path, evil, json=body)
            assert response.status_code == 404, (method, path)
        # Acme's rows are as they were.
        agent = (await api.get(f"/api/agents/{acme.agent_id}")).json()
        assert agent["greeting"] == "Hi"
        assert [n["number"] for n in (await api.get("/api/numbers")).json()] == ["+14155550100"]
        assert (await api.get("/api/webhook")).json()["url"] == "https://acme.example/hook"

    api(scenario)


@pytest.mark.parametrize(
    "path",
    [
        "/api/calls/nope",
        "/api/calls/nope/recording",
        "/api/conversations/nope/context",
        "/api/agents/nope",
    ],
)
def test_unknown_ids_are_404(api, path):
    async def scenario(api: Api):
        response = await api.get(path)
        assert response.status_code == 404
        assert response.json()["detail"].endswith("not found")

    api(scenario)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1000}, "limit"),
        ({"offset": -1}, "offset"),
        ({"status": "ringing"}, "status"),
        ({"transport": "pigeon"}, "transport"),
        ({"started_after": "last tuesday"}, "started_after"),
    ],
)
def test_bad_call_filters_are_422_naming_the_field(api, params, field):
    async def scenario(api: Api):
        response = await api.get("/api/calls", params=params)
        assert response.status_code == 422
        assert any(field in e["loc"] for e in response.json()["detail"])

    api(scenario)
