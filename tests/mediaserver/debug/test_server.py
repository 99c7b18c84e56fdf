"""The debug socket against a running server with live calls: every command, the real socket."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from actors.messages import AdmitCall, CallEnded, CallRefused, ResponseCompleted
from config.settings import DebugSettings
from mediaserver.debug import debug_server
from mediaserver.debug.socket_file import bind_unix_socket
from mediaserver.errors import StartupError
from mediaserver.inspect import DebugClient, InspectError
from tests.actors.conftest import AGENT, SUPERVISION
from tests.actors.fakes import RecordingOutbox, Script, fake_engines, wait_until
from tests.mediaserver.debug.conftest import LoopThread, live_server, short_dir
from tests.timing import MS

CHILDREN = ["session", "ingest", "transcriber", "responder"]


def replied(call, words):
    expected = f"You said {' '.join(words)}. Okay."
    return any(r.content == expected for r in call.outbox.of(ResponseCompleted))


def converse(call):
    """The caller says two words and the agent answers: the call goes on."""
    words = call.caller.say(2)
    call.outbox.wait_for(lambda box: replied(call, words))


def error_code(client, cmd, **args):
    with pytest.raises(InspectError) as caught:
        client.request(cmd, **args)
    return caught.value.code


# --- the socket file -----------------------------------------------------------------------------


def test_socket_file_is_a_socket_only_its_owner_may_use(live):
    mode = os.stat(live.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_hello_names_the_protocol_version_and_commands(live):
    with live.client() as client:
        hello = client.request("hello")
    assert hello["protocol"] == 1
    assert hello["fault_injection"] is True
    assert {"calls", "tree", "state", "watch", "stats", "stack", "crash"} <= set(hello["commands"])


def test_a_single_process_is_worker_1_and_has_no_other(live):
    call = live.call()
    with live.client() as client:
        assert [row["id"] for row in client.request("calls", worker=1)] == [call.call_id]
        assert error_code(client, "calls", worker=2) == "bad_argument"
        with pytest.raises(InspectError, match="one process"):
            client.request("stats", worker=2)


def test_a_stale_socket_file_is_replaced():
    directory = short_dir()
    path = str(Path(directory) / "debug.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a crashed run: the file stays, nobody listens
    os.chmod(path, 0o666)
    sock, _ = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_a_second_server_on_a_live_socket_refuses_to_start(live):
    second = debug_server(DebugSettings(socket_path=live.path), live.registry)
    with pytest.raises(StartupError, match="another server is listening"):
        live.loop.run(second.start())
    live.loop.run(second.close())
    with live.client() as client:  # the first one is untouched
        assert client.request("calls") == []


def test_a_path_that_is_not_a_socket_refuses_to_start():
    directory = short_dir()
    path = Path(directory) / "debug.sock"
    path.write_text("not a socket")
    try:
        with pytest.raises(StartupError, match="not a socket"):
            bind_unix_socket(str(path))
        assert path.read_text() == "not a socket"
    finally:
        path.unlink()
        os.rmdir(directory)


def test_close_removes_the_socket_file():
    with live_server() as live:
        path = live.path
        assert os.path.exists(path)
    assert not os.path.exists(path)


# --- reading -------------------------------------------------------------------------------------


def test_calls_lists_every_live_call_with_turns_and_latency(live):
    first, second = live.greeted_call(), live.call()
    converse(first)
    with live.client() as client:
        wait_until(
            lambda: (
                next(r for r in client.request("calls") if r["id"] == first.call_id)["last_v2v_ms"]
                is not None
            )
        )
        rows = {row["id"]: row for row in client.request("calls")}
    assert set(rows) == {first.call_id, second.call_id}
    row = rows[first.call_id]
    assert row["company"] == "acme"
    assert row["agent"] == AGENT.id
    assert row["transport"] == "test"
    assert row["state"] == "running"
    assert row["age_s"] >= 0
    assert row["turns"] >= 3  # greeting, the caller's turn, the answer
    assert row["last_v2v_ms"] > 0
    assert rows[second.call_id]["turns"] is None  # nothing settled yet


def test_tree_shows_the_supervisor_and_each_child_by_kind(live):
    call = live.greeted_call()
    with live.client() as client:
        tree = client.request("tree", call=call.call_id)
    assert tree["id"] == call.call_id
    assert tree["state"] == "running"
    assert tree["supervisor"]["address"] == f"{call.call_id}/supervisor"
    assert list(tree["children"]) == CHILDREN
    for kind, child in tree["children"].items():
        assert child["kind"] == kind
        assert child["address"] == f"{call.call_id}/{kind}"
        for field in ("state", "mailbox_depth", "oldest_message_age_s", "handled", "restarts"):
            assert field in child
        assert child["generation"] == 1
        assert child["last_error"] == ""
    assert tree["children"]["ingest"]["handled"] > 0


def test_state_returns_one_actors_full_snapshot(live):
    call = live.greeted_call()
    with live.client() as client:
        state = client.request("state", actor=f"{call.call_id}/session")
    assert state["address"] == f"{call.call_id}/session"
    assert state["kind"] == "session"
    assert state["checkpoint_size"] > 0
    expected = {"state", "generation", "restarts", "mailbox_depth", "oldest_message_age_s"}
    expected |= {"handled", "dropped", "dropped_ms", "handler_running_s", "last_error"}
    expected |= {"last_traceback", "thread"}
    assert expected <= set(state)


def test_unknown_calls_and_actors_are_answered_with_errors(live):
    call = live.call()
    with live.client() as client:
        assert error_code(client, "tree", call="nope") == "not_found"
        assert error_code(client, "state", actor="nope/session") == "not_found"
        assert error_code(client, "state", actor=f"{call.call_id}/nobody") == "bad_argument"
        assert error_code(client, "state", actor="no-slash") == "bad_argument"
        assert error_code(client, "restart", actor="nope/session") == "not_found"
        assert error_code(client, "stop", call="nope") == "not_found"
        assert error_code(client, "stack", actor="nope/ingest") == "not_found"
        assert error_code(client, "watch", call="nope") == "not_found"
        assert [row["id"] for row in client.request("calls")] == [call.call_id]


def test_stats_counts_admissions_refusals_actors_threads_memory_and_lag(live):
    call = live.call()
    refused = RecordingOutbox()
    live.harness.switchboard.tell(
        AdmitCall(
            call_id=call.call_id,  # a live call has this id already
            company_id="acme",
            agent=AGENT,
            transport="test",
            outbox=refused,
            engines=fake_engines(Script()),
        )
    )
    refused.wait_for(lambda box: box.of(CallRefused))
    with live.client() as client:
        wait_until(lambda: client.request("stats")["loop_lag_ms"]["max_10s"] is not None)
        stats = client.request("stats")
    assert stats["calls"] == {"live": 1, "admitted": 1, "refused": {"duplicate": 1}}
    assert stats["actors"] == dict.fromkeys(["supervisor", *CHILDREN], 1)
    assert stats["threads"] >= 4
    assert stats["dispatcher"]["target_threads"] == 2
    assert stats["rss_bytes"] > 10_000_000
    assert stats["cpu_pct"] >= 0
    assert stats["loop_lag_ms"]["last"] >= 0
    assert stats["debug"]["connections"] == 1


def test_stack_without_an_actor_dumps_every_thread(live):
    live.call()
    with live.client() as client:
        threads = client.request("stack")["threads"]
    names = {thread["thread"] for thread in threads}
    assert {"debug-loop", "test-calls-0", "MainThread"} <= names
    main = next(thread for thread in threads if thread["thread"] == "MainThread")
    assert any("test_stack_without_an_actor" in line for line in main["stack"])


def test_stack_of_a_stuck_actor_shows_where_it_is_stuck():
    patient = SUPERVISION.model_copy(update={"stall_timeout_s": 10.0})
    with live_server(supervision=patient) as live:
        call = live.call()
        actor = f"{call.call_id}/responder"
        wait_until(lambda: getattr(live.registry.lookup(actor), "state", None) == "idle")
        with live.client() as client:
            idle = client.request("stack", actor=actor)
            assert idle == {
                "actor": actor,
                "state": "idle",
                "handler_running_s": 0.0,
                "running": False,
                "thread": None,
                "stack": [],
            }
            client.request("crash", actor=actor, kind="hang", hang_s=1.0)
            wait_until(lambda: client.request("stack", actor=actor)["running"])
            stuck = client.request("stack", actor=actor)
    assert stuck["state"] == "handling InjectFault"
    assert stuck["thread"].startswith("test-calls-")
    text = "\n".join(stuck["stack"])
    assert "actors/faults.py" in text
    assert "in inject" in text


# --- acting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("child", CHILDREN)
def test_crash_of_each_child_shows_as_a_restart_in_tree_while_the_call_goes_on(live, child):
    call = live.greeted_call()
    with live.client() as client:
        crashed = client.request("crash", actor=f"{call.call_id}/{child}")
        tree = client.request("tree", call=call.call_id)
    assert crashed["restarted"] is True
    assert crashed["generation"] == 2
    assert crashed["call_ended"] is False
    restarted = tree["children"][child]
    assert restarted["restarts"] == 1
    assert restarted["generation"] == 2
    assert restarted["last_error"].startswith("InjectedFault: injected into")
    assert "InjectedFault" in restarted["last_traceback"]
    assert tree["state"] == "running"
    converse(call)
    assert not call.handle.ended


def test_crash_with_system_exit_fails_that_child_only(live):
    call = live.greeted_call()
    with live.client() as client:
        crashed = client.request("crash", actor=f"{call.call_id}/ingest", kind="system_exit")
    assert crashed["restarted"] is True
    converse(call)


def test_crash_of_the_supervisor_ends_that_call_only(live):
    doomed, other = live.call(), live.greeted_call()
    with live.client() as client:
        result = client.request("crash", actor=f"{doomed.call_id}/supervisor")
        assert result["call_ended"] is True
        assert doomed.outbox.wait_count(CallEnded, 1)[0].reason == "escalated"
        converse(other)
        wait_until(lambda: [row["id"] for row in client.request("calls")] == [other.call_id])


def test_crash_is_refused_when_fault_injection_is_off():
    with live_server(fault_injection=False) as live:
        call = live.greeted_call()
        with live.client() as client:
            for child in ("supervisor", *CHILDREN):
                assert error_code(client, "crash", actor=f"{call.call_id}/{child}") == "refused"
            tree = client.request("tree", call=call.call_id)
        assert all(child["restarts"] == 0 for child in tree["children"].values())
        converse(call)


def test_restart_replaces_a_child_and_the_call_goes_on(live):
    call = live.greeted_call()
    actor = f"{call.call_id}/transcriber"
    with live.client() as client:
        result = client.request("restart", actor=actor)
        assert result["restarted"] is True
        assert result["generation"] == 2
        state = client.request("state", actor=actor)
        assert state["restarts"] == 1
        assert state["last_error"] == ""
        # rest_for_one: the responder, started after the transcriber, was replaced too.
        assert client.request("state", actor=f"{call.call_id}/responder")["generation"] == 2
        assert client.request("state", actor=f"{call.call_id}/session")["generation"] == 1
        assert error_code(client, "restart", actor=f"{call.call_id}/supervisor") == "refused"
    converse(call)


def test_stop_hangs_the_call_up(live):
    call, other = live.call(), live.call()
    with live.client() as client:
        result = client.request("stop", call=call.call_id, reason="bye")
        assert result == {"call": call.call_id, "reason": "bye", "ended": True}
        assert call.outbox.wait_count(CallEnded, 1)[0].reason == "bye"
        wait_until(lambda: [row["id"] for row in client.request("calls")] == [other.call_id])
        assert error_code(client, "stop", call=call.call_id, reason="whenever") == "bad_argument"


def test_loglevel_sets_a_loggers_level(live):
    target = logging.getLogger("actors.session")
    before = target.level
    try:
        with live.client() as client:
            result = client.request("loglevel", logger="actors.session", level="DEBUG")
            assert result["level"] == "DEBUG"
            assert target.level == logging.DEBUG
            assert error_code(client, "loglevel", logger="x", level="LOUD") == "bad_argument"
    finally:
        target.setLevel(before)


def test_reload_rereads_the_agents_and_keeps_live_calls():
    with live_server(with_store=True) as live:
        company = live.loop.run(live.store.create_company("acme"))
        from mediaserver.store import AgentSpec  # noqa: PLC0415

        live.loop.run(live.store.create_agent(company.id, AgentSpec(name="One")))
        live.loop.run(live.store.create_agent(company.id, AgentSpec(name="Two")))
        call = live.greeted_call()
        with live.client() as client:
            result = client.request("reload")
        assert result["companies"] == 1
        assert result["agents"] == 2
        assert result["live_calls_unchanged"] == 1
        converse(call)


def test_reload_without_a_store_is_refused(live):
    with live.client() as client:
        assert error_code(client, "reload") == "refused"


# --- watch ---------------------------------------------------------------------------------------


def collect(client, until, seconds=5000 * MS):
    events = []
    for event in client.events(seconds=seconds):
        events.append(event)
        if until(events):
            return events
    raise AssertionError(f"not seen in time; got {[(e['event'], e.get('data')) for e in events]}")


def test_watch_streams_restarts_errors_states_and_turns(live):
    call = live.greeted_call()
    with live.client() as watcher, live.client() as actor:
        started = watcher.request("watch")
        assert started["call"] is None
        wait_until(lambda: live.server.events.watching)
        actor.request("crash", actor=f"{call.call_id}/transcriber")
        converse(call)

        def seen(events):
            kinds = {(e["event"], (e.get("data") or {}).get("actor")) for e in events}
            answered = any(
                e["event"] == "turn" and e["data"]["role"] == "assistant" for e in events
            )
            return (
                answered
                and {
                    ("restart", f"{call.call_id}/transcriber"),
                    ("error", f"{call.call_id}/transcriber"),
                }
                <= kinds
            )

        events = collect(watcher, seen)
    assert all(event["watch"] == started["watch"] for event in events)
    assert all(event["call"] == call.call_id for event in events)
    error = next(e for e in events if e["event"] == "error")
    assert "InjectedFault" in error["data"]["traceback"]
    turn = next(e for e in events if e["event"] == "turn" and e["data"]["role"] == "assistant")
    assert turn["data"]["voice_to_voice_ms"] is not None


def test_watch_shows_calls_starting_and_ending(live):
    with live.client() as watcher, live.client() as actor:
        watcher.request("watch")
        wait_until(lambda: live.server.events.watching)
        call = live.call()
        started = collect(watcher, lambda events: any(e["event"] == "call" for e in events))
        actor.request("stop", call=call.call_id)
        ended = collect(
            watcher,
            lambda events: (
                any(e["event"] == "ended" for e in events)
                and any(e["data"].get("state") == "gone" for e in events)
            ),
        )
    assert started[-1]["data"] == {"state": "running"}
    assert next(e for e in ended if e["event"] == "ended")["data"]["reason"] == "hangup"


def test_watch_of_one_call_sees_only_that_call(live):
    quiet, loud = live.greeted_call(), live.greeted_call()
    with live.client() as watcher, live.client() as actor:
        watcher.request("watch", call=quiet.call_id)
        wait_until(lambda: live.server.events.watching)
        actor.request("crash", actor=f"{loud.call_id}/session")
        actor.request("crash", actor=f"{quiet.call_id}/responder")
        events = collect(watcher, lambda events: any(e["event"] == "restart" for e in events))
    assert {event["call"] for event in events} == {quiet.call_id}


def test_unwatch_ends_the_stream(live):
    call = live.greeted_call()
    with live.client() as client:
        watch = client.request("watch", call=call.call_id)["watch"]
        wait_until(lambda: live.server.events.watching)
        ended = client.request("unwatch", watch=watch)
        assert ended["watch"] == watch
        assert not live.server.events.watching
        assert error_code(client, "unwatch", watch=watch) == "not_found"


def test_a_slow_watcher_loses_events_and_is_told_how_many(live):
    call = live.call()
    with live.client() as client:
        client.request("watch", rate=5)
        wait_until(lambda: live.server.events.watching)
        for n in range(500):
            live.server.events.publish(call.call_id, "test", {"n": n})
        events = collect(client, lambda events: any(e["event"] == "dropped" for e in events))
    delivered = [e for e in events if e["event"] == "test"]
    dropped = next(e for e in events if e["event"] == "dropped")["count"]
    assert 1 <= len(delivered) <= 10
    assert len(delivered) + dropped == 500 or dropped >= 490


def test_publish_without_watchers_does_nothing(live):
    call = live.call()
    live.server.events.publish(call.call_id, "test", {"n": 1})
    assert live.server.events.published == 0


# --- several inspectors --------------------------------------------------------------------------


def test_several_inspectors_at_once(live):
    calls = [live.greeted_call() for _ in range(3)]
    failures = []

    def inspect(n):
        try:
            with live.client() as client:
                for i in range(20):
                    call = calls[(n + i) % len(calls)]
                    assert {row["id"] for row in client.request("calls")} >= {call.call_id}
                    tree = client.request("tree", call=call.call_id)
                    assert tree["id"] == call.call_id
                    state = client.request("state", actor=f"{call.call_id}/ingest")
                    assert state["address"] == f"{call.call_id}/ingest"
                    assert client.request("stats")["calls"]["live"] == 3
        except Exception as exc:
            failures.append(exc)

    with live.client() as watcher:
        watcher.request("watch")
        threads = [threading.Thread(target=inspect, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for call in calls:
            converse(call)
        for thread in threads:
            thread.join(30_000 * MS)
        collect(watcher, lambda events: any(e["event"] == "turn" for e in events))
    assert failures == []


# --- malformed and hostile requests --------------------------------------------------------------


class Raw:
    """A raw socket client, for sending what `DebugClient` never would."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5000 * MS)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def closed_by_server(self) -> bool:
        """Read until EOF (or a reset); True if that happened within the timeout."""
        received = 0
        try:
            while chunk := self.sock.recv(1 << 20):
                received += len(chunk)
                assert received < 64 << 20
        except ConnectionResetError:
            pass
        return True

    def close(self):
        self.sock.close()


def test_malformed_requests_get_error_responses_on_a_connection_that_stays(live):
    raw = Raw(live.path)
    cases = [
        (b"{nope", None, "bad_json"),
        (b"\xff\xfe\x00", None, "bad_json"),
        (b"[1, 2]", None, "bad_json"),
        (b"[" * 50_000, None, "bad_json"),  # nesting deep enough to blow the recursion limit
        (b'{"cmd": "calls"}', None, "bad_request"),
        (b'{"id": true, "cmd": "calls"}', None, "bad_request"),
        (b'{"id": 1}', 1, "bad_request"),
        (b'{"id": 2, "cmd": "frobnicate"}', 2, "unknown_command"),
        (b'{"id": 3, "cmd": "tree"}', 3, "missing_argument"),
        (b'{"id": 4, "cmd": "tree", "call": 5}', 4, "bad_argument"),
        (b'{"id": 5, "cmd": "calls", "verbose": true}', 5, "bad_argument"),
        (b'{"id": "x", "cmd": "crash", "actor": "a/session", "hang_s": NaN}', "x", "bad_argument"),
        (b'{"id": 6, "cmd": "watch", "rate": 100000}', 6, "bad_argument"),
    ]
    for line, request_id, code in cases:
        raw.send(line + b"\n")
        answer = raw.line()
        assert answer["ok"] is False, line
        assert answer["id"] == request_id, line
        assert answer["error"]["code"] == code, line
    raw.send(b'{"id": 99, "cmd": "calls"}\n')
    assert raw.line() == {"id": 99, "ok": True, "result": []}
    raw.close()


def test_a_huge_line_is_answered_and_discarded(live):
    raw = Raw(live.path)
    raw.send(b'{"id": 1, "cmd": "calls", "pad": "' + b"x" * 300_000 + b'"}\n')
    raw.send(b'{"id": 2, "cmd": "calls"}\n')
    answer = raw.line()
    assert answer["error"]["code"] == "line_too_long"
    assert raw.line() == {"id": 2, "ok": True, "result": []}
    raw.close()


def test_an_endless_line_closes_that_connection_only(live):
    call = live.greeted_call()
    raw = Raw(live.path)
    # The server may close it while we are still sending: also fine.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        raw.send(b"x" * (3 << 20))
    assert raw.closed_by_server()
    raw.close()
    with live.client() as client:
        assert [row["id"] for row in client.request("calls")] == [call.call_id]
    converse(call)


def test_a_client_that_never_reads_is_dropped_and_harms_nobody(live):
    call = live.greeted_call()
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.connect(live.path)
    request = json.dumps({"id": 1, "cmd": "tree", "call": call.call_id}).encode() + b"\n"
    sent = threading.Event()

    def flood():
        with contextlib.suppress(OSError):  # closed by the server: that is the point
            hostile.sendall(request * 5000)  # ~15 MB of answers it will never read
        sent.set()

    threading.Thread(target=flood, daemon=True).start()
    with live.client() as client:
        # Meanwhile the server answers everyone else and the call goes on.
        assert client.request("tree", call=call.call_id)["id"] == call.call_id
        converse(call)
        wait_until(lambda: client.request("stats")["debug"]["connections"] == 1, 10_000 * MS)
    assert sent.wait(10_000 * MS)
    hostile.close()


def test_a_watcher_that_never_reads_loses_events_and_harms_nobody(live):
    call = live.greeted_call()
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.connect(live.path)
    hostile.sendall(b'{"id": "w", "cmd": "watch", "rate": 1000}\n')
    wait_until(lambda: live.server.events.watching)
    watcher = live.server.events.watchers[0]
    payload = {"blob": "y" * 1000}
    while watcher.dropped_total == 0:
        for _ in range(1000):
            live.server.events.publish(call.call_id, "test", payload)
        threading.Event().wait(0.01)  # let the flusher run between bursts
    with live.client() as client:
        stats = client.request("stats")
        assert stats["debug"]["events_dropped"] > 0
        assert stats["debug"]["connections"] == 2  # bounded: it is kept, only loses events
    converse(call)
    hostile.close()


def test_too_many_connections_get_busy(live):
    clients = [live.client() for _ in range(32)]
    try:
        for client in clients[:1]:
            client.request("calls")
        wait_until(lambda: live.server.connection_count == 32)
        extra = Raw(live.path)
        assert extra.line()["error"]["code"] == "busy"
        assert extra.closed_by_server()
        extra.close()
    finally:
        for client in clients:
            client.close()
    with live.client() as client:
        assert client.request("calls") == []


# --- TCP -----------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tcp_listens_on_loopback_and_wants_the_token():
    port = free_port()
    with live_server(tcp_port=port, token="s3cret") as live:
        assert live.server.tcp_address == ("127.0.0.1", port)
        call = live.call()
        with DebugClient(socket.create_connection(("127.0.0.1", port))) as anonymous:
            assert error_code(anonymous, "calls") == "unauthorized"
            assert error_code(anonymous, "hello", token="guess") == "unauthorized"
            with pytest.raises(InspectError, match=r"closed|reset"):
                anonymous.request("calls")
        with DebugClient.tcp(port, "s3cret") as client:
            assert [row["id"] for row in client.request("calls")] == [call.call_id]


def test_tcp_without_a_token_refuses_to_start():
    loop = LoopThread()
    directory = short_dir()
    try:
        settings = DebugSettings(socket_path=f"{directory}/debug.sock", tcp_port=free_port())
        server = debug_server(settings, live_registry())
        with pytest.raises(StartupError, match=r"debug\.token"):
            loop.run(server.start())
        assert not os.path.exists(settings.socket_path)
    finally:
        loop.close()
        os.rmdir(directory)


def live_registry():
    from actors.call_registry import CallRegistry  # noqa: PLC0415

    return CallRegistry()


# -- admission and the loop hog --------------------------------------------------------------------


def test_admission_reads_the_gate_and_forces_it_off_on_and_back_to_auto(live):
    with live.client() as client:
        state = client.request("admission")
        assert state["open"] is True and state["mode"] == "auto" and state["why"] == ""
        assert state["max_loop_lag_ms"] == 20.0 and state["max_dispatch_lag_ms"] == 100.0
        assert state["max_cpu_pct"] == 85.0
        closed = client.request("admission", mode="off")
        assert closed["open"] is False and closed["why"] == "forced"
        assert client.request("stats")["admission"]["open"] is False
        assert client.request("admission", mode="on")["open"] is True
        assert client.request("admission", mode="auto")["mode"] == "auto"
        assert error_code(client, "admission", mode="sometimes") == "bad_argument"
    assert live.gate.is_open


def test_admission_without_a_gate_is_refused(live):
    second_path = live.path + ".2"
    server = debug_server(DebugSettings(socket_path=second_path), live.registry)
    live.loop.run(server.start())
    try:
        with DebugClient.unix(second_path, timeout_s=5000 * MS) as client:
            assert error_code(client, "admission") == "refused"
            assert client.request("stats")["admission"] is None
    finally:
        live.loop.run(server.close())


def test_hog_blocks_the_event_loop_on_its_schedule(live):
    with live.client() as client:
        started = client.request("hog", loop_ms=150, every_ms=200, for_s=0.6)
        assert started == {"loop_ms": 150.0, "every_ms": 200.0, "for_s": 0.6, "started": True}
        wait_until(lambda: client.request("stats")["loop_lag_ms"]["max_10s"] >= 100)
        assert error_code(client, "hog", loop_ms=100, every_ms=50) == "refused"


def test_hog_is_refused_when_fault_injection_is_off():
    with live_server(fault_injection=False) as live, live.client() as client:
        assert error_code(client, "hog", loop_ms=100) == "refused"
