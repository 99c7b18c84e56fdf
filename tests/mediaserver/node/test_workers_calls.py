"""`serve --workers 2` with calls: where new calls land, requests that must reach a call's worker,
and limits that hold for the whole host. Real processes, real sockets, real aiortc peers."""

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections import defaultdict

import httpx
import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
import pytest
import websockets

from tests.mediaserver.debug.test_serve_debug import cli, document
from tests.mediaserver.node.test_workers import wait_for, workers_of
from tests.mediaserver.node.test_workers_debug import TextCalls
from tests.mediaserver.serve_process import Server
from tests.mediaserver.webhooks.receiver import running_receiver
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
        if self.server.process.poll() is not None:
            return  # it exited, and its workers with it
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


def readyz(node):
    answer = httpx.get(f"{node.url}/readyz", timeout=10)
    return answer.status_code, answer.json()["status"]


def test_a_full_worker_takes_no_new_calls_while_another_has_room(node):
    node.admission(1, "off")
    assert readyz(node) == (200, "ready")  # the host still admits: worker 2 does
    calls = TextCalls(node.url, node.key, node.agent["id"])
    try:
        first = [calls.open() for _ in range(20)]
        placed = node.worker_of_calls()
        assert [placed[call] for call in first] == [2] * 20
        node.admission(2, "off")
        assert [readyz(node) for _ in range(4)] == [(503, "full")] * 4  # whoever answers
        node.admission(2, "auto")
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


def stored_calls(node):
    """Every call row, read straight from the store file (WAL: readers never block the server)."""
    with contextlib.closing(sqlite3.connect(node.tmp_path / "store.db")) as db:
        db.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM calls")}


def queued_webhooks(node):
    with contextlib.closing(sqlite3.connect(node.tmp_path / "store.db")) as db:
        return [
            (call_id, event)
            for call_id, event in db.execute("SELECT call_id, event FROM webhook_outbox")
        ]


def delivered_rows(node):
    """Outbox rows delivered, each after exactly one attempt (else None)."""
    with contextlib.closing(sqlite3.connect(node.tmp_path / "store.db")) as db:
        rows = list(db.execute("SELECT attempts, delivered_at FROM webhook_outbox"))
    if any(attempts != 1 for attempts, delivered in rows if delivered is not None):
        return None
    return sum(delivered is not None for _, delivered in rows)


def set_webhook(node, url):
    answer = httpx.put(
        f"{node.url}/api/webhook",
        json={"url": url, "secret": "s" * 32},
        headers=node.auth,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def events_by_call(received):
    seen = defaultdict(list)
    for request in received:
        body = json.loads(request.body)
        seen[(body["data"]["call_id"], body["type"])].append(body["id"])
    return seen


def test_a_killed_workers_calls_end_worker_crash_at_its_last_heartbeat(node):
    with running_receiver() as receiver:
        set_webhook(node, receiver.url)
        calls = TextCalls(node.url, node.key, node.agent["id"])
        try:
            opened = [calls.open() for _ in range(6)]
            placed = node.worker_of_calls()
            victims = [c for c in opened if placed[c] == 1]
            survivors = [c for c in opened if placed[c] == 2]
            assert victims and survivors, placed
            victim_pid = node.inspect("stats")["workers"]["1"]["pid"]
            killed_at = time.time()
            os.kill(victim_pid, signal.SIGKILL)
            # Within a second of the kill (the node reaps the worker and ends its calls at once).
            wait_for(
                lambda: all(stored_calls(node)[c]["ended_at"] is not None for c in victims),
                1000 * MS,
                "the killed worker's calls ended in the store",
            )
            rows = stored_calls(node)
            for call in victims:
                assert rows[call]["end_reason"] == "worker_crash", rows[call]
                # Its last heartbeat: at most a beat (1 s, and some scheduling) before the kill.
                assert killed_at - 2.5 <= rows[call]["ended_at"] <= killed_at
            assert {(c, "call.ended") for c in victims} <= set(queued_webhooks(node))
            for call in survivors:
                assert rows[call]["ended_at"] is None
                calls.say(call, "still here?")  # the other worker's calls go on
            delivered = receiver.wait_count(2 * len(opened) - len(survivors), 15_000 * MS)
            ended = events_by_call(delivered)
            for call in victims:
                assert len(ended[(call, "call.ended")]) == 1
        finally:
            calls.close()
        wait_for(lambda: len(workers_of(node.server)) == 2, 10_000 * MS, "the restart")


def test_with_two_workers_every_webhook_is_delivered_once(node):
    with running_receiver() as receiver:
        set_webhook(node, receiver.url)
        calls = TextCalls(node.url, node.key, node.agent["id"])
        try:
            opened = [calls.open() for _ in range(8)]
            assert set(node.worker_of_calls().values()) == {1, 2}
        finally:
            calls.close()  # bye on each: 8 call.started and 8 call.ended
        receiver.wait_count(16, 15_000 * MS)
        wait_for(lambda: delivered_rows(node) == 16, 10_000 * MS, "every delivery recorded")
        # Every row is delivered, so nothing is left to send: a row sent twice would show here.
        assert len(receiver.received) == 16
        seen = events_by_call(receiver.received)
        assert set(seen) == {(c, e) for c in opened for e in ("call.started", "call.ended")}
        assert all(len(ids) == 1 for ids in seen.values()), seen


def test_sigterm_drains_every_worker_then_the_node_exits_0(tmp_path):
    node = Node(tmp_path, MEDIASERVER_LIMITS__DRAIN_S="1.5")
    try:
        base = node.url.replace("http://", "ws://") + "/signal/peer-{n}/" + node.key

        async def scenario():
            sockets = []
            for n in range(6):
                ws = await websockets.connect(base.format(n=n) + f"?agent={node.agent['id']}")
                session = json.loads(await asyncio.wait_for(ws.recv(), 10_000 * MS))
                sockets.append((session["call_id"], ws))
            workers = set(node.worker_of_calls().values())
            node.server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)  # well inside the drain
            async with httpx.AsyncClient(base_url=node.url) as client:
                ready = await client.get("/readyz")
                assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
            late = await websockets.connect(base.format(n=99))
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait_for(late.recv(), 10_000 * MS)
            assert (late.close_code, late.close_reason) == (1001, "Server shutting down")
            for _, ws in sockets:
                while (event := json.loads(await asyncio.wait_for(ws.recv(), 10_000 * MS)))[
                    "type"
                ] != "ended":
                    pass
                assert event["reason"] == "shutdown"
            return [call for call, _ in sockets], workers

        opened, workers = asyncio.run(scenario())
        assert workers == {1, 2}
        assert node.server.process.wait(timeout=30_000 * MS) == 0
        rows = stored_calls(node)
        assert {rows[c]["end_reason"] for c in opened} == {"shutdown"}
    finally:
        node.stop()


def test_the_api_rate_of_a_key_holds_for_the_whole_host(tmp_path):
    node = Node(tmp_path, MEDIASERVER_LIMITS__REQUESTS_PER_MIN="5")
    try:
        answers = []
        for _ in range(10):  # a new connection each: the node spreads them over both workers
            answer = httpx.get(f"{node.url}/api/agents", headers=node.auth, timeout=10)
            answers.append((answer.status_code, answer.headers["x-mediaserver-worker"]))
        assert [status for status, _ in answers] == [200] * 5 + [429] * 5
        assert {worker for _, worker in answers} == {"1", "2"}
    finally:
        node.stop()


def test_an_overloaded_worker_is_skipped_and_its_calls_finish_normally(tmp_path):
    node = Node(
        tmp_path,
        MEDIASERVER_DEBUG__FAULT_INJECTION="true",
        MEDIASERVER_LIMITS__MAX_LOOP_LAG_MS="100",
        MEDIASERVER_LIMITS__MAX_DISPATCH_LAG_MS="0",
    )
    calls = TextCalls(node.url, node.key, node.agent["id"])
    try:
        before = [calls.open() for _ in range(4)]
        placed = node.worker_of_calls()
        on_one = [call for call in before if placed[call] == 1]
        assert on_one and len(on_one) < 4
        node.inspect(
            "hog", "--loop-ms", "150", "--every-ms", "200", "--for-s", "4", "--worker", "1"
        )
        wait_for(
            lambda: node.inspect("admission", "--worker", "1")["open"] is False,
            3000 * MS,
            "worker 1's gate closing under the hog",
        )
        during = [calls.open() for _ in range(4)]  # none refused: worker 2 has room
        placed = node.worker_of_calls()
        assert [placed[call] for call in during] == [2] * 4
        for call in on_one:
            calls.say(call, "still there?")  # worker 1's admitted calls go on, only slower
        calls.close()  # bye on every call
        ended = before + during
        wait_for(
            lambda: all(stored_calls(node)[c]["ended_at"] is not None for c in ended),
            10_000 * MS,
            "every call's end stored",
        )
        assert {stored_calls(node)[call]["end_reason"] for call in ended} == {"bye"}
    finally:
        node.stop()
