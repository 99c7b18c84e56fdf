"""`mediaserver inspect ...` in a subprocess against a live debug socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from mediaserver.inspect import render_calls, render_event, render_stats, skipped_workers
from tests.actors.fakes import wait_until
from tests.mediaserver.debug.conftest import short_dir
from tests.timing import MS

CHILDREN = ["session", "ingest", "transcriber", "responder"]


def inspect(live, *args, timeout=30_000 * MS):
    """Run `mediaserver inspect ARGS` with the same settings source as `serve` (the env)."""
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith("MEDIASERVER_")
    }
    environ["MEDIASERVER_DEBUG__SOCKET_PATH"] = live.path if live is not None else "/nonexistent"
    cwd = short_dir()  # no stray .env is read
    try:
        return subprocess.run(
            [sys.executable, "-m", "mediaserver", "inspect", *args],
            capture_output=True,
            text=True,
            env=environ,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    finally:
        os.rmdir(cwd)


def document(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one JSON document, or this raises


def test_calls_json_is_a_list_of_objects_with_id(live):
    call = live.greeted_call()
    rows = document(inspect(live, "calls", "--json"))
    assert [row["id"] for row in rows] == [call.call_id]
    assert rows[0]["state"] == "running"


def test_calls_as_a_table(live):
    call = live.call()
    result = inspect(live, "calls")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:3] == ["ID", "COMPANY", "AGENT"]
    assert row.startswith(call.call_id)


def test_tree_json_names_each_child_by_kind_and_the_table_shows_them(live):
    call = live.greeted_call()
    tree = document(inspect(live, "tree", call.call_id, "--json"))
    assert list(tree["children"]) == CHILDREN
    assert tree["children"]["ingest"]["address"] == f"{call.call_id}/ingest"
    table = inspect(live, "tree", call.call_id).stdout
    assert table.startswith(f"call {call.call_id}  running")
    for kind in ["supervisor", *CHILDREN]:
        assert f"\n{kind} " in table


def test_crash_then_tree_and_state_show_the_restart(live):
    call = live.greeted_call()
    crashed = document(inspect(live, "crash", f"{call.call_id}/responder", "--json"))
    assert crashed["restarted"] is True
    state = document(inspect(live, "state", f"{call.call_id}/responder", "--json"))
    assert state["restarts"] == 1
    human = inspect(live, "state", f"{call.call_id}/responder").stdout
    assert "InjectedFault: injected into" in human
    assert "Traceback" in human


def test_watch_json_prints_the_events_it_received_as_one_list(live):
    call = live.greeted_call()
    watcher = threading.Thread(
        target=lambda: results.append(
            inspect(live, "watch", call.call_id, "--json", "--count", "1")
        )
    )
    results: list[subprocess.CompletedProcess[str]] = []
    watcher.start()
    wait_until(lambda: live.server.events.watching, 20_000 * MS)
    with live.client() as client:
        client.request("crash", actor=f"{call.call_id}/transcriber")
    watcher.join(30_000 * MS)
    events = document(results[0])
    assert len(events) == 1
    assert events[0]["call"] == call.call_id


def test_stats_stop_and_loglevel(live):
    call = live.call()
    stats = document(inspect(live, "stats", "--json"))
    assert stats["calls"]["live"] == 1
    assert "calls.live" in inspect(live, "stats").stdout
    assert document(inspect(live, "loglevel", "tests.inspect", "info", "--json")) == {
        "logger": "tests.inspect",
        "level": "INFO",
        "previous": "NOTSET",
    }
    stopped = document(inspect(live, "stop", call.call_id, "--json"))
    assert stopped == {"call": call.call_id, "reason": "hangup", "ended": True}


def test_stack_lists_threads(live):
    threads = document(inspect(live, "stack", "--json"))["threads"]
    assert "debug-loop" in {thread["thread"] for thread in threads}
    assert "--- debug-loop" in inspect(live, "stack").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tree", "nope"], "no live call 'nope' (not_found)"),
        (["restart", "a/supervisor"], "cannot restart without ending the call; use `stop`"),
        (["crash", "nope/session"], "no live call 'nope' (not_found)"),
        (["state", "nope"], "an actor is CALL_ID/KIND"),
    ],
)
def test_errors_go_to_stderr_with_exit_code_1(live, args, message):
    result = inspect(live, *args, "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr


def test_no_server_is_exit_code_1_with_a_hint():
    result = inspect(None, "calls", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot connect to the debug socket /nonexistent" in result.stderr


def test_admission_off_then_auto_and_its_table(live):
    closed = document(inspect(live, "admission", "off", "--json"))
    assert closed["open"] is False and closed["why"] == "forced" and closed["mode"] == "off"
    assert not live.gate.is_open
    table = inspect(live, "admission")
    assert table.returncode == 0, table.stderr
    assert "mode" in table.stdout and "off" in table.stdout
    assert document(inspect(live, "admission", "auto", "--json"))["open"] is True
    assert inspect(live, "admission", "maybe").returncode == 2


def test_hog_starts_and_says_so(live):
    started = document(inspect(live, "hog", "--loop-ms", "20", "--for-s", "0.1", "--json"))
    assert started == {"loop_ms": 20.0, "every_ms": 40.0, "for_s": 0.1, "started": True}


# --- the node's forms (serve --workers N) --------------------------------------------------------


def test_calls_show_a_worker_column_when_rows_have_one():
    rows = [{"worker": 2, "id": "c-1", "state": "running"}]
    header = render_calls(rows).splitlines()[0]
    assert header.split()[:2] == ["WORKER", "ID"]
    assert render_calls([{"id": "c-1"}]).splitlines()[0].split()[0] == "ID"


def test_stats_of_a_node_show_the_host_and_a_row_per_worker():
    own = {
        "calls": {"live": 1, "admitted": 4, "refused": {"capacity": 2}},
        "threads": 12,
        "rss_bytes": 150_000_000,
        "cpu_pct": 3.5,
        "loop_lag_ms": {"last": 0.2, "max_10s": 1.5},
        "uptime_s": 60.0,
    }
    stats = {
        "calls": {"live": 1, "admitted": 4, "refused": {"capacity": 2}},
        "workers": {"1": own},
        "node": {"workers": 2, "workers_up": 1},
    }
    text = render_stats(stats)
    assert text.splitlines()[0] == ("host: 1 live calls, 4 admitted, 2 refused; workers up 1 of 2")
    assert text.splitlines()[3].split() == [
        "1",
        "1",
        "4",
        "2",
        "12",
        "150.0",
        "3.5",
        "0.2",
        "1.5",
        "60.0",
    ]


def test_a_nodes_notes_name_the_workers_left_out():
    response = {
        "workers_down": [1, 3],
        "worker_errors": {"2": {"code": "internal", "message": "calls failed"}},
    }
    assert skipped_workers(response) == [
        "workers 1, 3 down (restarting?): not included",
        "worker 2: calls failed (internal)",
    ]
    assert skipped_workers({"id": 1, "ok": True, "result": []}) == []


def test_relayed_events_name_their_worker():
    event = {"event": "turn", "call": "c-1", "at": 0.0, "data": {"role": "user"}, "worker": 2}
    assert render_event(event).split()[1:4] == ["w2", "c-1", "turn"]
    up = {"event": "worker", "call": None, "at": 0.0, "data": {"worker": 1, "state": "up"}}
    assert render_event(up).split()[1:] == ["worker", "1", "up"]


def test_worker_must_be_a_positive_number():
    result = inspect(None, "calls", "--worker", "0")
    assert result.returncode == 2
    assert "a worker number is 1 or more" in result.stderr
