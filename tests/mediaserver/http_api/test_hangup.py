"""`POST /api/calls/{id}/hangup` on a one-process server: a live call ends `api_hangup`."""

import asyncio
import json

import httpx
import websockets

from tests.mediaserver.debug.test_serve_debug import cli, document
from tests.mediaserver.serve_process import Server
from tests.timing import MS


def test_the_tenant_api_ends_a_live_call_and_the_caller_is_told(tmp_path):
    server = Server(tmp_path)
    try:
        key = next(line.split()[-1] for line in server.lines if line.startswith("API key: "))
        other = document(cli(tmp_path, "company", "create", "Other", "--json"))
        auth = {"Authorization": f"Bearer {key}"}
        url = server.url.replace("http://", "ws://") + f"/signal/peer-1/{key}"

        async def scenario():
            async with (
                websockets.connect(url) as ws,
                httpx.AsyncClient(base_url=server.url) as client,
            ):
                session = json.loads(await asyncio.wait_for(ws.recv(), 10_000 * MS))
                call_id = session["call_id"]
                strangers = {"Authorization": f"Bearer {other['api_key']}"}
                hidden = await client.post(f"/api/calls/{call_id}/hangup", headers=strangers)
                assert hidden.status_code == 404  # another company's call looks unknown
                answer = await client.post(f"/api/calls/{call_id}/hangup", headers=auth)
                assert answer.status_code == 200, answer.text
                assert answer.json()["end_reason"] == "api_hangup"
                assert answer.json()["status"] == "ended"
                while (event := json.loads(await ws.recv()))["type"] != "ended":
                    pass
                assert event == {"type": "ended", "reason": "api_hangup"}
                again = await client.post(f"/api/calls/{call_id}/hangup", headers=auth)
                assert again.status_code == 409
                assert "ended: api_hangup" in again.json()["detail"]
                assert (await client.post(f"/api/calls/{call_id}/hangup")).status_code == 401

        asyncio.run(scenario())
    finally:
        assert server.stop() == 0
