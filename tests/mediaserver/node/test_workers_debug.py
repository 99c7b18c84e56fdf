"""`serve --workers 2`: one debug socket for both workers, with live calls on each, for real.

One node runs for the whole module, with text-only calls over signaling (the cheapest calls)
spread over both workers by the node. The tests run in file order: the later ones stop calls and
kill a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
import pytest
import websockets

from mediaserver.inspect import DebugClient
from tests.mediaserver.debug.conftest import LoopThread
from tests.mediaserver.debug.test_serve_debug import cli, document
from tests.mediaserver.debug.test_server import Raw
from tests.mediaserver.node.test_workers import wait_for, workers_of
from tests.mediaserver.serve_process import Server
from tests.timing import MS

CALLS = 4


class TextCalls:
    """Text-only calls over signaling, held open on a loop of their own while tests inspect."""

    def __init__(self, url: str, key: str, agent_id: str) -> None:
        self._base = (
            url.replace("http://", "ws://") + "/signal/{peer}/" + key + f"?agent={agent_id}"
        )
        self._loop = LoopThread()
        self._sockets: dict[str, websockets.ClientConnection] = {}
        self._peers = 0

    def open(self) -> str:
        """A new call that has answered once; its id."""
        self._peers += 1
        return str(self._loop.run(self._open(f"peer-{self._peers}"), 10_000 * MS))

    def say(self, call_id: str, text: str) -> None:
        """Send `text` on the call and wait for the agent's answer."""
        self._loop.run(self._say(self._sockets[call_id], text), 10_000 * MS)

    def close(self) -> None:
        self._loop.run(self._close(), 10_000 * MS)
        self._loop.close()

    async def _open(self, peer: str) -> str:
        ws = await websockets.connect(self._base.format(peer=peer))
        session = json.loads(await asyncio.wait_for(ws.recv(), 5000 * MS))
        assert session["type"] == "session", session
        await self._say(ws, "hello node")
        self._sockets[session["call_id"]] = ws
        return str(session["call_id"])

    @staticmethod
    async def _say(ws: websockets.ClientConnection, text: str) -> None:
        await ws.send(json.dumps({"type": "message", "message": text}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5000 * MS))["type"] != "response":
            pass

    async def _close(self) -> None:
        for ws in self._sockets.values():
            with contextlib.suppress(websockets.ConnectionClosed, OSError):
                await ws.send(json.dumps({"type": "bye"}))
            await ws.close()


@dataclass
class Cluster:
    server: Server
    tmp_path: Path
    calls: TextCalls
    worker_of: dict[str, int]  # call id -> the worker the node says has it

    def inspect(self, *args):
        return cli(self.tmp_path, "inspect", *args)

    def client(self) -> DebugClient:
        return DebugClient.unix(str(self.tmp_path / "debug.sock"), timeout_s=15_000 * MS)

    def on(self, worker: int) -> list[str]:
        return [call for call, w in self.worker_of.items() if w == worker]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("node")
    server = Server(tmp_path, "--workers", "2")
    calls = None
    try:
        key = next(line for line in server.lines if line.startswith("API key: ")).split()[-1]
        echo = ["--stt", "echo", "--llm", "echo", "--tts", "echo"]
        agent = document(cli(tmp_path, "agent", "create", "--name", "Echo", *echo, "--json"))
        calls = TextCalls(server.url, key, agent["id"])
        opened = [calls.open() for _ in range(CALLS)]
        with DebugClient.unix(str(tmp_path / "debug.sock"), timeout_s=15_000 * MS) as client:
            worker_of = {row["id"]: row["worker"] for row in client.request("calls")}
        assert sorted(worker_of) == sorted(opened)
        assert set(worker_of.values()) == {1, 2}, worker_of  # the node spread them
        yield Cluster(server, tmp_path, calls, worker_of)
    finally:
        if calls is not None:
            calls.close()
        workers = workers_of(server)
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
        for worker in workers.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def test_calls_lists_every_call_once_with_the_worker_that_has_it(cluster):
    rows = document(cluster.inspect("calls", "--json"))
    assert sorted(row["id"] for row in rows) == sorted(cluster.worker_of)  # each call once
    ages = [row["age_s"] for row in rows]
    assert ages == sorted(ages, reverse=True)  # the oldest first, as one server lists them
    for worker in (1, 2):
        own = document(cluster.inspect("calls", "--worker", str(worker), "--json"))
        assert sorted(row["id"] for row in own) == sorted(cluster.on(worker))
        assert {row["worker"] for row in own} == {worker}
    table = cluster.inspect("calls")
    assert table.stdout.split()[:2] == ["WORKER", "ID"]
    assert table.stderr == ""  # no worker was left out


def test_tree_and_state_reach_calls_on_either_worker(cluster):
    for worker in (1, 2):
        call = cluster.on(worker)[0]
        tree = document(cluster.inspect("tree", call, "--json"))
        assert tree["id"] == call
        assert list(tree["children"]) == ["session", "ingest", "transcriber", "responder"]
        state = document(cluster.inspect("state", f"{call}/session", "--json"))
        assert state["address"] == f"{call}/session"
    missing = cluster.inspect("tree", "nope", "--json")
    assert missing.returncode == 1
    assert "no live call 'nope' (not_found)" in missing.stderr


def test_stats_adds_up_the_host_and_worker_flag_reaches_that_worker_only(cluster):
    stats = document(cluster.inspect("stats", "--json"))
    assert stats["calls"]["live"] == CALLS
    assert {worker: own["calls"]["live"] for worker, own in stats["workers"].items()} == {
        "1": len(cluster.on(1)),
        "2": len(cluster.on(2)),
    }
    assert cluster.inspect("stats").stdout.startswith(f"host: {CALLS} live calls")
    alone = document(cluster.inspect("stats", "--worker", "2", "--json"))
    assert alone["calls"]["live"] == len(cluster.on(2))

    logger = "tests.node.e2e"
    only_two = document(cluster.inspect("loglevel", logger, "debug", "--worker", "2", "--json"))
    assert only_two == {"logger": logger, "level": "DEBUG", "previous": "NOTSET"}
    both = document(cluster.inspect("loglevel", logger, "info", "--json"))
    assert both["workers"]["1"]["previous"] == "NOTSET"  # worker 1 never heard of it
    assert both["workers"]["2"]["previous"] == "DEBUG"
    hello = {}
    with cluster.client() as client:
        for worker in (1, 2):
            hello[worker] = client.request("hello", worker=worker)["pid"]
        node = client.request("hello")
    assert (node["node"], node["workers"], node["pid"]) == (True, 2, cluster.server.process.pid)
    assert set(hello.values()) == set(workers_of(cluster.server))


def collect(client, until, seconds=10_000 * MS):
    events = []
    for event in client.events(seconds=seconds):
        events.append(event)
        if until(events):
            return events
    raise AssertionError(f"not seen in time: {[(e['event'], e.get('worker')) for e in events]}")


def test_watch_relays_both_workers_and_a_calls_watch_only_that_call(cluster):
    one, two = cluster.on(1)[0], cluster.on(2)[0]
    with cluster.client() as everything, cluster.client() as single:
        assert everything.request("watch")["workers"] == [1, 2]
        assert single.request("watch", call=two)["workers"] == [2]
        cluster.calls.say(one, "on worker one")
        cluster.calls.say(two, "on worker two")

        def turns_from_both(events):
            return {e.get("worker") for e in events if e["event"] == "turn"} == {1, 2}

        events = collect(everything, turns_from_both)
        assert {(e["worker"], e["call"]) for e in events if e["event"] == "turn"} == {
            (1, one),
            (2, two),
        }
        own = collect(single, lambda events: any(e["event"] == "turn" for e in events))
        assert {(e["worker"], e["call"]) for e in own} == {(2, two)}


def test_bad_input_gets_the_usual_errors_and_the_node_stays_up(cluster):
    raw = Raw(str(cluster.tmp_path / "debug.sock"))
    raw.send(b"{not json\n")
    assert raw.line()["error"]["code"] == "bad_json"
    raw.send(b'{"id": 1, "cmd": "calls", "worker": 3}\n')
    assert raw.line()["error"] == {
        "code": "bad_argument",
        "message": "no worker 3: this node runs workers 1 to 2",
    }
    raw.send(b'{"id": 2, "cmd": "stop", "call": "nope"}\n')
    assert raw.line()["error"]["code"] == "not_found"
    raw.send(b'{"id": 3, "cmd": "hello"}\n')
    assert raw.line()["result"]["node"] is True
    raw.sock.close()
    unknown = cluster.inspect("calls", "--worker", "3")
    assert unknown.returncode == 1
    assert "no worker 3" in unknown.stderr
    assert cluster.server.process.poll() is None
    assert cluster.server.get("/healthz") == (200, {"status": "ok"})


def test_a_second_node_on_the_same_debug_socket_refuses_before_touching_the_store(cluster):
    second = cli(cluster.tmp_path, "serve", "--workers", "2", "--port", "0")
    assert second.returncode == 2
    assert "another server is listening on the debug socket" in second.stderr
    assert "Traceback" not in second.stderr
    assert "previous run left open" not in second.stderr  # the live calls' rows were not ended
    rows = document(cluster.inspect("calls", "--json"))
    assert sorted(row["id"] for row in rows) == sorted(cluster.worker_of)


def test_stop_ends_a_call_on_either_worker(cluster):
    for worker in (1, 2):
        call = cluster.on(worker)[-1]
        stopped = document(cluster.inspect("stop", call, "--json"))
        assert stopped == {"call": call, "reason": "hangup", "ended": True}
        del cluster.worker_of[call]
    rows = document(cluster.inspect("calls", "--json"))
    assert sorted(row["id"] for row in rows) == sorted(cluster.worker_of)


def test_a_killed_worker_is_named_down_and_listed_again_once_restarted(cluster):
    with cluster.client() as client:
        victim = client.request("hello", worker=1)["pid"]
    os.kill(victim, signal.SIGKILL)
    survivors = sorted(cluster.on(2))

    def calls_without_worker_1():
        result = cluster.inspect("calls", "--json")
        rows = document(result)
        return (rows, result.stderr) if "worker 1 down" in result.stderr else None

    rows, stderr = wait_for(calls_without_worker_1, 10_000 * MS, "worker 1 reported down")
    assert sorted(row["id"] for row in rows) == survivors
    assert {row["worker"] for row in rows} == {2}
    assert "mediaserver: worker 1 down (restarting?): not included" in stderr
    with cluster.client() as client:
        assert client.request("stats")["calls"]["live"] == len(survivors)
        assert client.last_response["workers_down"] == [1]

    def restarted():
        with cluster.client() as client:
            client.request("calls")
            return "workers_down" not in client.last_response

    wait_for(restarted, 20_000 * MS, "worker 1 back")
    with cluster.client() as client:
        assert client.request("hello", worker=1)["pid"] != victim
    fresh = cluster.calls.open()  # the node places it on the emptiest worker: the new worker 1
    deadline = time.monotonic() + 5000 * MS
    while True:
        rows = document(cluster.inspect("calls", "--json"))
        by_worker = defaultdict(list)
        for row in rows:
            by_worker[row["worker"]].append(row["id"])
        if by_worker[1] == [fresh] or time.monotonic() > deadline:
            break
    assert by_worker[1] == [fresh]
    assert sorted(by_worker[2]) == survivors
    tree = document(cluster.inspect("tree", fresh, "--json"))
    assert tree["id"] == fresh
