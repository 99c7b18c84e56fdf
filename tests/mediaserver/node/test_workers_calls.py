"""`serve --workers 2` with calls: where new calls land, requests that must reach a call's worker,
and limits that hold for the whole host. Real processes, real sockets, real aiortc peers."""

import asyncio
import contextlib
import json
import signal

import httpx
import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
import pytest
import websockets

from tests.mediaserver.debug.test_serve_debug import cli, document
from tests.mediaserver.node.test_workers import workers_of
from tests.mediaserver.node.test_workers_debug import TextCalls
from tests.mediaserver.serve_process import Server
from tests.mediaserver.webrtc.loopback import Caller
from tests.timing import MS

SDP = "application/sdp"
FRAGMENT = "application/trickle-ice-sdpfrag"


class Node:
    """A node with two workers, its demo key and an echo agent."""

    def __init__(self, tmp_path, **env):
        self.tmp_path = tmp_path
        self.server = Server(
            tmp_path,
            "--workers",
            "2",
            MEDIASERVER_WEBRTC__HOST_ADDRESSES='["127.0.0.1"]',
            **env,
        )
        self.url = self.server.url
        self.key = next(
            line.split()[-1] for line in self.server.lines if line.startswith("API key: ")
        )
        echo = ["--stt", "echo", "--llm", "echo", "--tts", "echo"]
        self.agent = document(cli(tmp_path, "agent", "create", "--name", "Echo", *echo, "--json"))

    @property
    def auth(self):
        return {"Authorization": f"Bearer {self.key}"}

    def inspect(self, *args):
        return document(cli(self.tmp_path, "inspect", *args, "--json"))

    def admission(self, worker, mode):
        state = self.inspect("admission", mode, "--worker", str(worker))
        assert state["open"] is (mode != "off"), state

    def worker_of_calls(self):
        return {row["id"]: row["worker"] for row in self.inspect("calls")}

    def stop(self):
        workers = workers_of(self.server)
        if self.server.process.poll() is None:
            self.server.stop(signal.SIGKILL)
        for worker in workers.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


@pytest.fixture
def node(tmp_path):
    running = Node(tmp_path)
    yield running
    running.stop()


def test_a_full_worker_takes_no_new_calls_while_another_has_room(node):
    node.admission(1, "off")
    calls = TextCalls(node.url, node.key, node.agent["id"])
    try:
        first = [calls.open() for _ in range(20)]
        placed = node.worker_of_calls()
        assert [placed[call] for call in first] == [2] * 20
        node.admission(1, "auto")
        later = [calls.open() for _ in range(3)]  # worker 1 has room and the fewest calls
        placed = node.worker_of_calls()
        assert [placed[call] for call in later] == [1] * 3
    finally:
        calls.close()


async def connection_to(node, worker):
    """An HTTP client whose one kept-alive connection the node handed to `worker`."""
    for _ in range(20):
        client = httpx.AsyncClient(
            base_url=node.url, limits=httpx.Limits(max_connections=1), timeout=10
        )
        answer = await client.get("/healthz")
        if answer.headers["x-mediaserver-worker"] == str(worker):
            return client
        await client.aclose()
    raise AssertionError(f"no connection reached worker {worker}")


async def publish_on(node, worker, caller):
    """POST /whip until a fresh connection lands on `worker` (the others refuse: 503)."""
    offer = await caller.offer()
    for _ in range(50):
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
            answer = await client.post(
                "/whip", content=offer, headers={**node.auth, "Content-Type": SDP}
            )
        if answer.status_code == 201:
            assert answer.headers["x-mediaserver-worker"] == str(worker)
            return answer
        assert answer.status_code == 503, answer.text  # the other worker: closed for now
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {worker} admitted no WHIP call")


def test_whip_patch_and_delete_and_the_api_hangup_reach_the_calls_worker(node):
    async def scenario():
        node.admission(2, "off")
        elsewhere = await connection_to(node, 1)  # kept alive: it stays on worker 1
        node.admission(2, "auto")
        node.admission(1, "off")
        caller = Caller()
        created = await publish_on(node, 2, caller)
        await caller.accept(created.text)
        await caller.connected()
        location, etag = created.headers["location"], created.headers["etag"]
        fragment = "a=mid:0\r\na=end-of-candidates\r\n"
        patch = await elsewhere.patch(
            location,
            content=fragment,
            headers={**node.auth, "Content-Type": FRAGMENT, "If-Match": etag},
        )
        assert (patch.status_code, patch.headers["x-mediaserver-worker"]) == (204, "2")
        stale = await elsewhere.patch(
            location,
            content=fragment,
            headers={**node.auth, "Content-Type": FRAGMENT, "If-Match": '"stale"'},
        )
        assert stale.status_code == 412  # the owner's own answer, relayed as it is
        deleted = await elsewhere.delete(location, headers=node.auth)
        assert (deleted.status_code, deleted.headers["x-mediaserver-worker"]) == (200, "2")
        call_id = location.rsplit("/", 1)[1]
        stored = await elsewhere.get(f"/api/calls/{call_id}", headers=node.auth)
        assert stored.json()["end_reason"] == "bye"
        assert (await elsewhere.delete(location, headers=node.auth)).status_code == 404
        await caller.close()

        # A text call on worker 2, hung up through the tenant API from worker 1.
        calls = TextCalls(node.url, node.key, node.agent["id"])
        try:
            call_id = calls.open()
            assert node.worker_of_calls()[call_id] == 2
            hung_up = await elsewhere.post(f"/api/calls/{call_id}/hangup", headers=node.auth)
            assert hung_up.status_code == 200, hung_up.text
            assert hung_up.headers["x-mediaserver-worker"] == "2"
            assert (hung_up.json()["status"], hung_up.json()["end_reason"]) == (
                "ended",
                "api_hangup",
            )
            again = await elsewhere.post(f"/api/calls/{call_id}/hangup", headers=node.auth)
            assert again.status_code == 409
            unknown = await elsewhere.post("/api/calls/nope/hangup", headers=node.auth)
            assert unknown.status_code == 404
        finally:
            calls.close()
        await elsewhere.aclose()

    asyncio.run(scenario())


def test_company_max_calls_holds_for_the_whole_host(tmp_path):
    node = Node(tmp_path, MEDIASERVER_LIMITS__COMPANY_MAX_CALLS="3")
    try:
        base = node.url.replace("http://", "ws://") + "/signal/peer-{n}/" + node.key

        async def attempt(n):
            ws = await websockets.connect(base.format(n=n) + f"?agent={node.agent['id']}")
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), 10_000 * MS))
            except websockets.ConnectionClosed:
                return (ws.close_code, ws.close_reason)
            assert first["type"] == "session", first
            await asyncio.sleep(2.0)  # hold the slot while the others try
            await ws.send(json.dumps({"type": "bye"}))
            await ws.close()
            return "admitted"

        async def scenario():
            return await asyncio.gather(*(attempt(n) for n in range(10)))

        outcomes = asyncio.run(scenario())
        assert outcomes.count("admitted") == 3, outcomes
        refused = [o for o in outcomes if o != "admitted"]
        assert set(refused) == {(1013, "Company at capacity")}
        rows = node.inspect("calls")  # none left open
        assert rows == []
    finally:
        node.stop()
