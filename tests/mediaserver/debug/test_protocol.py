"""The debug socket's wire format: request parsing, encoding and line framing (pure)."""

from __future__ import annotations

import json

import pytest

from mediaserver.debug.protocol import (
    COMMANDS,
    BadRequest,
    CommandFailed,
    LineBuffer,
    LineTooLong,
    Reply,
    Request,
    dropped_line,
    error_line,
    event_line,
    parse_address,
    parse_request,
    result_line,
)
from mediaserver.errors import ProtocolViolation


def test_a_request_with_arguments_as_fields():
    assert parse_request(b'{"id": 7, "cmd": "tree", "call": "c-1"}') == Request(
        id=7, cmd="tree", args={"call": "c-1"}
    )


def test_optional_arguments_may_be_left_out_and_numbers_widen_to_float():
    assert parse_request(b'{"id": "a", "cmd": "crash", "actor": "c/session", "hang_s": 2}') == (
        Request(id="a", cmd="crash", args={"actor": "c/session", "hang_s": 2.0})
    )
    assert parse_request(b'{"id": 1, "cmd": "watch"}').args == {}


def test_unwatch_names_a_watch_by_its_integer_or_string_id():
    assert parse_request(b'{"id": 2, "cmd": "unwatch", "watch": 1}').args == {"watch": "1"}


@pytest.mark.parametrize(
    ("line", "code", "request_id"),
    [
        (b"not json", "bad_json", None),
        (b"\xc3\x28", "bad_json", None),
        (b'"a string"', "bad_json", None),
        (b"[" * 100_000, "bad_json", None),
        (b'{"cmd": "calls"}', "bad_request", None),
        (b'{"id": 1.5, "cmd": "calls"}', "bad_request", None),
        (b'{"id": false, "cmd": "calls"}', "bad_request", None),
        (b'{"id": "' + b"x" * 200 + b'", "cmd": "calls"}', "bad_request", None),
        (b'{"id": 1, "cmd": 5}', "bad_request", 1),
        (b'{"id": 1, "cmd": "rm -rf"}', "unknown_command", 1),
        (b'{"id": 1, "cmd": "state"}', "missing_argument", 1),
        (b'{"id": 1, "cmd": "state", "actor": null}', "missing_argument", 1),
        (b'{"id": 1, "cmd": "state", "actor": ""}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "state", "actor": ["x"]}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "watch", "rate": true}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "watch", "rate": 0}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "watch", "rate": 1.5}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "crash", "actor": "c/x", "hang_s": Infinity}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "crash", "actor": "c/x", "kind": "meteor"}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "stop", "call": "c", "reason": "tired"}', "bad_argument", 1),
        # Crash reasons belong to calls a dead process owned, never to a live hang-up.
        (b'{"id": 1, "cmd": "stop", "call": "c", "reason": "worker_crash"}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "calls", "extra": 1}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "calls", "worker": 0}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "calls", "worker": 257}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "calls", "worker": "1"}', "bad_argument", 1),
        (b'{"id": 1, "cmd": "calls", "worker": true}', "bad_argument", 1),
    ],
)
def test_bad_requests_raise_with_a_code_and_the_id_when_known(line, code, request_id):
    with pytest.raises(BadRequest) as caught:
        parse_request(line)
    assert caught.value.code == code
    assert caught.value.request_id == request_id
    assert isinstance(caught.value, ProtocolViolation)


def test_any_command_may_name_a_worker_which_is_kept_apart_from_its_arguments():
    assert parse_request(
        b'{"id": 3, "cmd": "loglevel", "logger": "root", "level": "INFO", "worker": 2}'
    ) == Request(id=3, cmd="loglevel", args={"logger": "root", "level": "INFO"}, worker=2)
    assert parse_request(b'{"id": 4, "cmd": "calls", "worker": null}').worker is None


def test_a_reply_puts_its_extra_fields_beside_the_result():
    reply = Reply([{"id": "c"}], {"workers_down": [2]})
    line = result_line(5, reply.result, reply.extra)
    assert json.loads(line) == {"id": 5, "ok": True, "result": [{"id": "c"}], "workers_down": [2]}


def test_every_command_has_a_summary():
    assert all(spec.summary for spec in COMMANDS.values())
    assert {"calls", "tree", "state", "watch", "stats", "stack", "restart", "stop"} <= set(COMMANDS)
    assert {"crash", "loglevel", "reload", "hello", "unwatch"} <= set(COMMANDS)


def test_actor_addresses():
    assert parse_address("c-1/session") == ("c-1", "session")
    assert parse_address("a/b/supervisor") == ("a/b", "supervisor")
    for bad in ("c-1", "/session", "c-1/", "c-1/boss"):
        with pytest.raises(BadRequest):
            parse_address(bad)


def test_responses_and_events_are_single_json_lines():
    assert result_line(3, {"a": [1, "é"]}) == '{"id":3,"ok":true,"result":{"a":[1,"é"]}}\n'.encode()
    failed = CommandFailed("not_found", "no live call 'x'")
    assert json.loads(error_line(failed, "r")) == {
        "id": "r",
        "ok": False,
        "error": {"code": "not_found", "message": "no live call 'x'"},
    }
    event = {"event": "restart", "call": "c", "at": 1.5, "data": {"actor": "c/ingest"}}
    assert json.loads(event_line(4, event)) == {**event, "watch": 4}
    assert json.loads(dropped_line("w", 12)) == {"event": "dropped", "watch": "w", "count": 12}
    with pytest.raises(ValueError):
        result_line(1, float("nan"))  # never an invalid JSON document on the wire


def test_line_buffer_splits_lines_across_chunks():
    lines = LineBuffer()
    lines.receive_data(b'{"a"')
    assert lines.lines() == []
    lines.receive_data(b':1}\r\n\n  \n{"b":2}\n{"c"')
    assert lines.lines() == [b'{"a":1}', b'{"b":2}']
    lines.receive_data(b":3}\n")
    assert lines.lines() == [b'{"c":3}']


def test_an_overlong_line_is_reported_at_once_and_skipped_to_its_newline():
    lines = LineBuffer(max_line=10, max_discard=100)
    lines.receive_data(b"x" * 8)
    lines.receive_data(b"x" * 8)
    assert lines.lines() == [LineTooLong(16)]
    lines.receive_data(b"y" * 50 + b"\nok\n")
    assert lines.lines() == [b"ok"]
    assert not lines.fatal


def test_an_overlong_line_within_one_chunk():
    lines = LineBuffer(max_line=10, max_discard=100)
    lines.receive_data(b"z" * 20 + b"\nfine\n")
    assert lines.lines() == [LineTooLong(20), b"fine"]


def test_a_line_that_never_ends_is_fatal():
    lines = LineBuffer(max_line=10, max_discard=100)
    for _ in range(20):
        lines.receive_data(b"q" * 10)
    assert lines.fatal
    assert lines.lines() == [LineTooLong(20)]
    lines.receive_data(b"\nlate\n")
    assert lines.lines() == []
