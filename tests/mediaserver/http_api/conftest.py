"""Two tenants with calls, turns, events and usage, and an HTTP client for the tenant API."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from config.settings import LimitsSettings, Settings
from mediaserver.app import build_http_app
from mediaserver.lifecycle import Lifecycle
from mediaserver.store import AgentSpec, Store, TurnRecord, Usage
from tests.timing import MS


@dataclass
class Tenant:
    company_id: str
    key: str
    agent_id: str
    call_ids: list[str]  # oldest first
    conversation_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def seed(store: Store, name: str, *, calls: int = 3) -> Tenant:
    company = await store.create_company(name)
    agent = await store.create_agent(company.id, AgentSpec(name=f"{name} desk", greeting="Hi"))
    _, key = await store.create_api_key(company.id, label="test")
    conversation = await store.create_conversation(company.id, agent.id, f"{name}-peer")
    call_ids = []
    for index in range(calls):
        call = await store.start_call(
            company.id,
            conversation_id=conversation.id if index < 2 else None,
            agent_id=agent.id,
            transport="webrtc" if index % 2 == 0 else "twilio",
            peer_id=f"{name}-peer",
        )
        now = time.time()
        await store.add_turn(
            company.id,
            call.id,
            TurnRecord(
                seq=1, role="user", text=f"{name} question {index}", started_at=now,
                ended_at=now + 1, stt_ms=100.0 + index,
            ),
        )  # fmt: skip
        await store.add_turn(
            company.id,
            call.id,
            TurnRecord(
                seq=2, role="assistant", text=f"{name} answer {index}", started_at=now + 1,
                ended_at=now + 2, interrupted=index == 0, llm_first_token_ms=200.0,
                tts_first_audio_ms=50.0, voice_to_voice_ms=400.0 + 100 * index,
            ),
        )  # fmt: skip
        await store.add_call_event(company.id, call.id, "started", {"agent": agent.id})
        await store.add_usage(
            company.id, call.id, Usage(provider="openai", tokens_in=10, tokens_out=5)
        )
        if index < calls - 1:  # the newest call is still live
            await store.end_call(company.id, call.id, "bye")
        call_ids.append(call.id)
    return Tenant(company.id, key, agent.id, call_ids, conversation.id)


@dataclass
class Api:
    client: httpx.AsyncClient
    store: Store
    acme: Tenant
    evil: Tenant

    async def get(self, path: str, tenant: Tenant | None = None, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, headers=(tenant or self.acme).auth, **kwargs)

    async def send(
        self, method: str, path: str, tenant: Tenant | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = (tenant or self.acme).auth
        return await self.client.request(method, path, headers=headers, **kwargs)


def api_test(
    tmp_path: Any, scenario: Callable[[Api], Awaitable[None]], *, requests_per_min: int = 1000
) -> None:
    """Run `scenario` against the real HTTP app (as `run_server` builds it) on a fresh store."""

    async def main() -> None:
        async with await Store.open(str(tmp_path / "api.db")) as store:
            acme = await seed(store, "acme")
            evil = await seed(store, "evil", calls=1)
            settings = Settings(limits=LimitsSettings(requests_per_min=requests_per_min))
            app = build_http_app(Lifecycle(), settings=settings, store=store)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                await scenario(Api(client, store, acme, evil))

    asyncio.run(asyncio.wait_for(main(), 30_000 * MS))


@pytest.fixture
def api(tmp_path: Any) -> Callable[..., None]:
    return lambda scenario, **kwargs: api_test(tmp_path, scenario, **kwargs)
