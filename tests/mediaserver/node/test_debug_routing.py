"""How the node's debug socket routes requests and merges its workers' answers (pure)."""

from __future__ import annotations

import pytest

from mediaserver.debug.protocol import CommandFailed, Request, parse_request
from mediaserver.node.debug_routing import (
    WorkerAnswer,
    call_of,
    describe_down,
    extra_fields,
    merge_calls,
    merge_every,
    merge_stats,
    merge_threads,
    owner_answer,
    relayed_event,
    route,
    tagged,
)


def request(line: str) -> Request:
    return parse_request(line.encode())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": 1, "cmd": "hello"}', "node"),
        ('{"id": 1, "cmd": "hello", "worker": 2}', "worker"),
        ('{"id": 1, "cmd": "calls"}', "calls"),
        ('{"id": 1, "cmd": "calls", "worker": 1}', "worker"),
        ('{"id": 1, "cmd": "stats"}', "stats"),
        ('{"id": 1, "cmd": "stack"}', "threads"),
        ('{"id": 1, "cmd": "stack", "actor": "c-1/session"}', "owner"),
        ('{"id": 1, "cmd": "tree", "call": "c-1"}', "owner"),
        ('{"id": 1, "cmd": "state", "actor": "c-1/ingest"}', "owner"),
        ('{"id": 1, "cmd": "restart", "actor": "c-1/transcriber"}', "owner"),
        ('{"id": 1, "cmd": "stop", "call": "c-1", "worker": 2}', "worker"),
        ('{"id": 1, "cmd": "crash", "actor": "c-1/responder"}', "owner"),
        ('{"id": 1, "cmd": "state", "actor": "no-slash"}', "owner"),
        ('{"id": 1, "cmd": "loglevel", "logger": "root", "level": "INFO"}', "every"),
        ('{"id": 1, "cmd": "reload"}', "every"),
        ('{"id": 1, "cmd": "watch"}', "watch"),
        ('{"id": 1, "cmd": "watch", "call": "c-1", "worker": 2}', "watch"),
        ('{"id": 1, "cmd": "unwatch", "watch": 3}', "watch"),
    ],
)
def test_requests_are_routed_by_their_arguments(line, expected):
    assert route(request(line)) == expected


def test_a_command_nobody_taught_the_node_is_routed_by_its_arguments_too():
    assert route(Request(id=1, cmd="admission", args={"state": "off"})) == "every"
    assert route(Request(id=1, cmd="admission", args={"state": "off"}, worker=1)) == "worker"
    assert route(Request(id=1, cmd="hog", args={"call": "c-9", "seconds": 2.0})) == "owner"


def test_the_call_of_a_request_is_its_call_or_the_call_of_its_actor():
    assert call_of(request('{"id": 1, "cmd": "tree", "call": "c-1"}')) == "c-1"
    assert call_of(request('{"id": 1, "cmd": "state", "actor": "a/b/session"}')) == "a/b"
    assert call_of(request('{"id": 1, "cmd": "state", "actor": "session"}')) is None
    assert call_of(request('{"id": 1, "cmd": "state", "actor": "/session"}')) is None
    assert call_of(request('{"id": 1, "cmd": "calls"}')) is None


def not_found(worker: int) -> WorkerAnswer:
    return WorkerAnswer(worker=worker, error=CommandFailed("not_found", "no live call 'c'"))


def test_the_owner_is_the_worker_that_did_not_say_not_found():
    owner = WorkerAnswer(worker=2, result={"ended": True})
    assert owner_answer([not_found(1), owner, not_found(3)]) == owner
    refused = WorkerAnswer(worker=2, error=CommandFailed("refused", "fault injection is off"))
    assert owner_answer([not_found(1), refused]) == refused
    assert owner_answer([not_found(1), not_found(2)]) is None
    assert owner_answer([]) is None


def test_calls_are_merged_oldest_first_each_tagged_with_its_worker():
    one = WorkerAnswer(worker=1, result=[{"id": "a", "age_s": 5.0}, {"id": "b", "age_s": 1.0}])
    two = WorkerAnswer(worker=2, result=[{"id": "c", "age_s": 3.0}])
    failed = WorkerAnswer(worker=3, error=CommandFailed("internal", "calls failed"))
    assert merge_calls([two, failed, one]) == [
        {"worker": 1, "id": "a", "age_s": 5.0},
        {"worker": 2, "id": "c", "age_s": 3.0},
        {"worker": 1, "id": "b", "age_s": 1.0},
    ]
    assert merge_calls([]) == []


def test_calls_are_compared_by_their_ages_as_of_the_last_answer():
    early = WorkerAnswer(worker=1, result=[{"id": "a", "age_s": 1.0}], received_at=100.0)
    late = WorkerAnswer(worker=2, result=[{"id": "b", "age_s": 1.2}], received_at=100.5)
    assert [row["id"] for row in merge_calls([late, early])] == ["a", "b"]  # a is 1.5 s old


def test_stats_sum_the_hosts_calls_and_keep_each_workers_own():
    one = {"calls": {"live": 2, "admitted": 5, "refused": {"capacity": 1}}, "threads": 9}
    two = {"calls": {"live": 1, "admitted": 3, "refused": {"capacity": 2, "company": 1}}}
    merged = merge_stats([WorkerAnswer(worker=2, result=two), WorkerAnswer(worker=1, result=one)])
    assert merged["calls"] == {
        "live": 3,
        "admitted": 8,
        "refused": {"capacity": 3, "company": 1},
    }
    assert merged["workers"] == {"1": one, "2": two}
    assert list(merged["workers"]) == ["1", "2"]


def test_threads_are_tagged_with_their_worker():
    one = {"threads": [{"thread": "MainThread", "ident": 1, "stack": []}]}
    two = {"threads": [{"thread": "calls-0", "ident": 7, "stack": []}]}
    merged = merge_threads([WorkerAnswer(worker=1, result=one), WorkerAnswer(worker=2, result=two)])
    assert [(t["worker"], t["thread"]) for t in merged["threads"]] == [
        (1, "MainThread"),
        (2, "calls-0"),
    ]


def test_any_other_command_answers_per_worker_with_results_and_errors():
    answers = [
        WorkerAnswer(worker=2, error=CommandFailed("refused", "no store")),
        WorkerAnswer(worker=1, result={"logger": "root"}),
    ]
    assert merge_every(answers) == {
        "workers": {
            "1": {"logger": "root"},
            "2": {"error": {"code": "refused", "message": "no store"}},
        }
    }


def test_one_workers_answer_is_tagged_only_where_rows_come_from_several():
    assert tagged("calls", [{"id": "a"}], 2) == [{"worker": 2, "id": "a"}]
    assert tagged("stack", {"threads": [{"ident": 1}]}, 2) == {
        "threads": [{"worker": 2, "ident": 1}]
    }
    assert tagged("stack", {"actor": "c/session", "stack": []}, 2) == {
        "actor": "c/session",
        "stack": [],
    }
    assert tagged("tree", {"id": "c"}, 2) == {"id": "c"}


def test_the_response_names_the_workers_left_out():
    failed = WorkerAnswer(worker=1, error=CommandFailed("internal", "boom"))
    assert extra_fields([3, 2], [failed, WorkerAnswer(worker=4, result=[])]) == {
        "workers_down": [2, 3],
        "worker_errors": {"1": {"code": "internal", "message": "boom"}},
    }
    assert extra_fields([], [WorkerAnswer(worker=1, result=[])]) == {}
    assert describe_down([2]) == "worker 2 is down"
    assert describe_down([3, 1]) == "workers 1, 3 are down"


def test_a_workers_event_becomes_the_nodes_tagged_with_the_worker():
    document = {
        "event": "restart",
        "call": "c-1",
        "at": 1767000000.5,
        "data": {"actor": "c-1/transcriber", "generation": 2},
        "watch": 4,
    }
    assert relayed_event(2, document).as_json() == {
        "event": "restart",
        "call": "c-1",
        "at": 1767000000.5,
        "data": {"actor": "c-1/transcriber", "generation": 2},
        "worker": 2,
    }
    odd = relayed_event(1, {"event": "x", "call": 5, "at": "now", "data": []})
    assert (odd.call_id, odd.at, dict(odd.data), odd.worker) == (None, 0.0, {}, 1)
