"""The node's debug socket in one process: a `DebugProxy` in front of two real debug servers.

Each "worker" is the debug server of `tests/mediaserver/debug/conftest.py` with live call trees
on its own loop; the proxy runs on a third loop and reaches them through their Unix sockets, as
the node reaches its workers. `serve --workers 2` itself is in `test_workers_debug.py`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from config.settings import DebugSettings
from mediaserver.inspect import DebugClient, InspectError
from mediaserver.node.debug_proxy import DebugProxy
from tests.actors.fakes import wait_until
from tests.mediaserver.debug.conftest import Live, LoopThread, live_server, short_dir
from tests.mediaserver.debug.test_server import Raw, collect, error_code
from tests.timing import MS


class FakeWorkers:
    """`WorkerSockets` over live debug servers; a test marks a worker down or up."""

    def __init__(self, lives: list[Live]) -> None:
        self.lives = lives
        self.up = dict.fromkeys(range(1, len(lives) + 1), True)

    @property
    def worker_numbers(self):
        return list(self.up)

    def worker_debug_path(self, worker):
        return self.lives[worker - 1].path

    def worker_up(self, worker):
        return self.up[worker]


class Node:
    def __init__(self, proxy: DebugProxy, workers: FakeWorkers, path: str) -> None:
        self.proxy, self.workers, self.path = proxy, workers, path
        self.one, self.two = workers.lives

    def client(self) -> DebugClient:
        return DebugClient.unix(self.path, timeout_s=15_000 * MS)


@contextmanager
def proxied(**debug: object) -> Iterator[Node]:
    with live_server() as one, live_server() as two:
        directory = short_dir()
        path = str(Path(directory) / "node.sock")
        workers = FakeWorkers([one, two])
        loop = LoopThread()
        proxy = DebugProxy(DebugSettings(socket_path=path, **debug), workers)
        loop.run(proxy.start())
        try:
            yield Node(proxy, workers, path)
        finally:
            loop.run(proxy.close())
            loop.close()
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def node() -> Iterator[Node]:
    with proxied() as node:
        yield node


def test_hello_is_the_nodes_and_counts_its_workers(node):
    with node.client() as client:
        hello = client.request("hello")
        assert (hello["node"], hello["workers"], hello["protocol"]) == (True, 2, 1)
        assert "calls" in hello["commands"]


def aged(call):
    """`call`, once it is 20 ms old: the next call is clearly younger, whichever worker has it."""
    admitted = time.monotonic()
    wait_until(lambda: time.monotonic() - admitted > 0.02)
    return call


def test_calls_lists_every_workers_calls_once_each_with_its_worker(node):
    first = aged(node.one.call())
    second = aged(node.two.call())
    third = node.one.call()
    with node.client() as client:
        rows = client.request("calls")
        assert "workers_down" not in client.last_response
        only_two = client.request("calls", worker=2)
    assert [(row["id"], row["worker"]) for row in rows] == [
        (first.call_id, 1),
        (second.call_id, 2),
        (third.call_id, 1),
    ]  # the oldest first, as one server lists them
    assert [(row["id"], row["worker"]) for row in only_two] == [(second.call_id, 2)]


def test_tree_state_and_stop_find_the_call_on_either_worker(node):
    calls = {1: node.one.greeted_call(), 2: node.two.greeted_call()}
    with node.client() as client:
        for worker, call in calls.items():
            tree = client.request("tree", call=call.call_id)
            assert tree["id"] == call.call_id
            assert client.last_response["worker"] == worker
            state = client.request("state", actor=f"{call.call_id}/session")
            assert state["address"] == f"{call.call_id}/session"
            stack = client.request("stack", actor=f"{call.call_id}/ingest")
            assert stack["actor"] == f"{call.call_id}/ingest"
        restarted = client.request("restart", actor=f"{calls[2].call_id}/transcriber")
        assert restarted["restarted"] is True
        stopped = client.request("stop", call=calls[1].call_id)
        assert stopped == {"call": calls[1].call_id, "reason": "hangup", "ended": True}
        assert [row["id"] for row in client.request("calls")] == [calls[2].call_id]
        assert error_code(client, "tree", call="nope") == "not_found"
        assert error_code(client, "state", actor="nope/session") == "not_found"
        assert error_code(client, "restart", actor=f"{calls[2].call_id}/supervisor") == "refused"
        assert error_code(client, "state", actor="nope") == "bad_argument"


def test_stats_counts_the_hosts_calls_and_keeps_each_workers_stats(node):
    node.one.call()
    node.two.call()
    node.two.call()
    with node.client() as client:
        stats = client.request("stats")
        alone = client.request("stats", worker=2)
    assert stats["calls"]["live"] == 3
    assert stats["calls"]["admitted"] == 3
    assert stats["workers"]["1"]["calls"]["live"] == 1
    assert stats["workers"]["2"]["calls"]["live"] == 2
    assert stats["node"]["workers"] == stats["node"]["workers_up"] == 2
    assert stats["node"]["debug"]["connections"] == 1
    assert alone["calls"]["live"] == 2  # worker 2's own stats, as a single server's


def test_stack_without_an_actor_shows_every_workers_threads(node):
    with node.client() as client:
        threads = client.request("stack")["threads"]
    assert {thread["worker"] for thread in threads} == {1, 2}
    assert {"debug-loop"} <= {thread["thread"] for thread in threads}


def test_other_commands_go_to_every_worker_and_answer_for_each(node):
    with node.client() as client:
        levels = client.request("loglevel", logger="tests.node.proxy", level="INFO")
        reload = client.request("reload")
        one = client.request("loglevel", logger="tests.node.proxy", level="DEBUG", worker=1)
    assert set(levels["workers"]) == {"1", "2"}
    assert levels["workers"]["2"]["level"] == "INFO"
    refused = {"code": "refused", "message": "this server has no store to reload agents from"}
    assert reload == {"workers": {"1": {"error": refused}, "2": {"error": refused}}}
    assert one == {"logger": "tests.node.proxy", "level": "DEBUG", "previous": "INFO"}


def test_a_down_worker_is_skipped_and_named(node):
    on_one, on_two = node.one.call(), node.two.call()
    node.workers.up[1] = False  # restarting, as the node sees it
    with node.client() as client:
        assert [row["id"] for row in client.request("calls")] == [on_two.call_id]
        assert client.last_response["workers_down"] == [1]
        assert client.request("stats")["calls"]["live"] == 1
        assert error_code(client, "calls", worker=1) == "unavailable"
        with pytest.raises(InspectError, match="worker 1 is down"):
            client.request("tree", call=on_one.call_id)
        assert client.request("tree", call=on_two.call_id)["id"] == on_two.call_id
        node.workers.up[1] = True
        assert len(client.request("calls")) == 2
        assert "workers_down" not in client.last_response


def test_a_worker_whose_socket_is_gone_counts_as_down(node):
    node.two.call()
    with node.client() as client:
        assert len(client.request("calls")) == 1  # connected to both
        node.one.loop.run(node.one.server.close())  # it died: its socket went with it
        assert len(client.request("calls")) == 1
        assert client.last_response["workers_down"] == [1]
        assert error_code(client, "stats", worker=1) == "unavailable"


def test_watch_relays_both_workers_events_each_tagged_with_its_worker(node):
    on_one, on_two = node.one.call(), node.two.call()
    with node.client() as client:
        started = client.request("watch")
        assert started["workers"] == [1, 2]
        wait_until(lambda: node.one.server.events.watching and node.two.server.events.watching)
        node.one.server.events.publish(on_one.call_id, "test", {"n": 1})
        node.two.server.events.publish(on_two.call_id, "test", {"n": 2})
        events = collect(client, lambda events: len(events) >= 2)
        assert {(e["worker"], e["call"], e["data"]["n"]) for e in events} == {
            (1, on_one.call_id, 1),
            (2, on_two.call_id, 2),
        }
        assert all(event["watch"] == started["watch"] for event in events)
        ended = client.request("unwatch", watch=started["watch"])
        assert ended["delivered"] == 2
        # The workers' watches ended too.
        wait_until(lambda: not node.one.server.events.watching)
        wait_until(lambda: not node.two.server.events.watching)


def test_watch_of_a_call_watches_only_on_its_worker(node):
    quiet, loud = node.two.call(), node.one.call()
    with node.client() as client:
        started = client.request("watch", call=quiet.call_id)
        assert started["workers"] == [2]
        wait_until(lambda: node.two.server.events.watching)
        assert not node.one.server.events.watching
        node.one.server.events.publish(loud.call_id, "test", {"n": 1})
        node.two.server.events.publish(loud.call_id, "test", {"n": 2})  # filtered on the worker
        node.two.server.events.publish(quiet.call_id, "test", {"n": 3})
        events = collect(client, lambda events: any(e["data"].get("n") == 3 for e in events))
        assert [(e["call"], e["worker"]) for e in events] == [(quiet.call_id, 2)]
        assert error_code(client, "watch", call="nope") == "not_found"


def test_a_slow_watch_loses_events_upstream_and_is_told_how_many(node):
    call = node.one.call()
    with node.client() as client:
        client.request("watch", rate=5)
        wait_until(lambda: node.one.server.events.watching)
        for n in range(500):
            node.one.server.events.publish(call.call_id, "test", {"n": n})
        events = collect(
            client,
            lambda events: (
                sum(e.get("count", 0) for e in events if e["event"] == "dropped")
                + len([e for e in events if e["event"] == "test"])
                >= 500
            ),
        )
    delivered = [e for e in events if e["event"] == "test"]
    dropped = sum(e["count"] for e in events if e["event"] == "dropped")
    assert 1 <= len(delivered) <= 10
    assert len(delivered) + dropped == 500


def test_a_watch_of_every_call_follows_a_worker_that_comes_back(node):
    call = node.two.call()
    with node.client() as client:
        client.request("watch")
        wait_until(lambda: node.one.server.events.watching)
        node.one.loop.run(node.one.server.close())
        down = collect(client, lambda events: any(e["event"] == "worker" for e in events))
        assert down[-1]["data"] == {"worker": 1, "state": "down"}
        node.two.server.events.publish(call.call_id, "test", {"n": 1})
        collect(client, lambda events: any(e["event"] == "test" for e in events))
        node.one.loop.run(node.one.server.start())  # restarted, on the same path
        up = collect(client, lambda events: any(e["event"] == "worker" for e in events))
        assert up[-1]["data"] == {"worker": 1, "state": "up"}
        wait_until(lambda: node.one.server.events.watching)
        node.one.server.events.publish("c-new", "test", {"n": 2})
        again = collect(client, lambda events: any(e["event"] == "test" for e in events))
        assert [(e["worker"], e["data"]["n"]) for e in again if e["event"] == "test"] == [(1, 2)]


def test_bad_input_is_answered_and_the_node_socket_stays_up(node):
    raw = Raw(node.path)
    raw.send(b"not json\n")
    assert raw.line()["error"]["code"] == "bad_json"
    raw.send(b'{"id": 1, "cmd": "calls", "worker": 3}\n')
    assert raw.line()["error"] == {
        "code": "bad_argument",
        "message": "no worker 3: this node runs workers 1 to 2",
    }
    raw.send(b'{"id": 2, "cmd": "calls", "worker": "one"}\n')
    assert raw.line()["error"]["code"] == "bad_argument"
    raw.send(b'{"id": 3, "cmd": "rm"}\n')
    assert raw.line()["error"]["code"] == "unknown_command"
    raw.send(b'{"id": 4, "cmd": "watch", "worker": 9}\n')
    assert raw.line()["error"]["code"] == "bad_argument"
    raw.send(b'{"id": 5, "cmd": "calls"}\n')
    assert raw.line() == {"id": 5, "ok": True, "result": []}
    raw.sock.close()


def test_the_node_socket_on_tcp_wants_the_token():
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with proxied(tcp_port=port, token="s3cret") as node:
        assert node.proxy.tcp_address == ("127.0.0.1", port)
        call = node.two.call()
        with DebugClient(socket.create_connection(("127.0.0.1", port))) as anonymous:
            assert error_code(anonymous, "calls") == "unauthorized"
        with DebugClient.tcp(port, "s3cret") as client:
            assert [row["id"] for row in client.request("calls")] == [call.call_id]
