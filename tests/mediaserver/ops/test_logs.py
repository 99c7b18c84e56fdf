"""Logging: JSON lines and the human format, call ids on call records, no secrets, no audio."""

import io
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import websockets.sync.client

from config.settings import LogSettings
from mediaserver.logs import CallLogger, configure_logging, redact
from tests.timing import MS

KEY = "msk_abcdefgh_" + "S" * 43


@pytest.fixture
def captured():
    """The root logger set up by `configure_logging` into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffers = {}

    def configure(fmt):
        buffers[fmt] = io.StringIO()
        configure_logging(LogSettings(format=fmt, level="DEBUG"), stream=buffers[fmt])
        return buffers[fmt]

    yield configure
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_time_level_logger_message_and_the_call_id(captured):
    out = captured("json")
    log = CallLogger(logging.getLogger("mediaserver.test"), {"call_id": "c1"})
    log.info("= %s started", "thing", extra={"turn_id": 3})
    logging.getLogger("other").warning("plain")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "mediaserver.test"
    assert first["message"] == "= thing started"
    assert first["call_id"] == "c1" and first["turn_id"] == 3
    assert first["time"].endswith("Z") and isinstance(first["ts"], float)
    assert second["level"] == "WARNING" and "call_id" not in second


def test_the_human_format_shows_the_call_id(captured):
    out = captured("human")
    CallLogger(logging.getLogger("mediaserver.test"), {"call_id": "c1"}).info("= hello")
    line = out.getvalue().strip()
    assert " INFO    mediaserver.test: = hello [call c1]" in line


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_secrets_are_masked_in_messages_arguments_and_tracebacks(captured, fmt):
    out = captured(fmt)
    log = logging.getLogger("mediaserver.test")
    log.info("key %s in the message", KEY)
    log.info("Authorization: Bearer %s", "tok-123.abc")
    log.info("secret whsec_%s", "verysecretvalue0123")
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        log.exception("= failed")
    text = out.getvalue()
    assert "S" * 43 not in text and "tok-123" not in text and "verysecretvalue" not in text
    assert "msk_abcdefgh_***" in text  # the public prefix still names the key
    assert "Bearer ***" in text and "whsec_***" in text


def test_audio_in_an_extra_field_is_logged_as_its_size(captured):
    out = captured("json")
    logging.getLogger("mediaserver.test").debug("> audio", extra={"pcm": b"\x01\x02" * 320})
    assert json.loads(out.getvalue())["pcm"] == "<640 bytes>"


def test_redact_leaves_ordinary_text_alone():
    assert redact("call abc ended: bye (12 turns)") == "call abc ended: bye (12 turns)"


# -- `mediaserver serve --log-format json`, as a user runs it --------------------------------------


def environment(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
    environ.update(
        MEDIASERVER_STORE__PATH=str(tmp_path / "store.db"),
        MEDIASERVER_SERVER__PORT="0",
        MEDIASERVER_DEBUG__SOCKET_PATH=str(tmp_path / "debug.sock"),
        MEDIASERVER_RECORDING__DIR=str(tmp_path / "recordings"),
        MEDIASERVER_LIMITS__DRAIN_S="1",
        MEDIASERVER_SERVER__WORKERS="1",
        # The box running the tests is shared: other processes' CPU must not close the load gate
        # of a server whose test is not about admission (test_serve_overload sets its own).
        MEDIASERVER_LIMITS__MAX_LOOP_LAG_MS="1000",
        MEDIASERVER_LIMITS__MAX_DISPATCH_LAG_MS="2000",
        MEDIASERVER_LIMITS__MAX_CPU_PCT="0",
    )
    return environ


def test_serve_with_log_format_json_writes_one_json_object_per_line(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "mediaserver", "serve", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(tmp_path),
        cwd=tmp_path,
    )
    try:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump():
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        printed: list[str] = []
        deadline = time.monotonic() + 60_000 * MS
        while not any(line.startswith("listening on ") for line in printed):
            line = lines.get(timeout=max(0.001, deadline - time.monotonic()))
            assert line is not None, printed
            printed.append(line)
        key = next(line for line in printed if line.startswith("API key: ")).split()[-1]
        url = printed[-1].split()[-1]

        # A call: session, a typed message, the reply starting, bye.
        with websockets.sync.client.connect(
            url.replace("http://", "ws://") + f"/signal/peer-1/{key}"
        ) as ws:
            call_id = json.loads(ws.recv(timeout=10))["call_id"]
            ws.send(json.dumps({"type": "message", "message": "hello there"}))
            while json.loads(ws.recv(timeout=30))["type"] != "response.delta":
                pass
            ws.send(json.dumps({"type": "bye"}))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    ws.recv(timeout=10)
        request = urllib.request.Request(
            url + "/api/agents", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30_000 * MS)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0

    records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert len(records) > 10
    for record in records:
        assert {"ts", "time", "level", "logger", "message"} <= set(record), record
    # Every record that names the call carries its id as a field, the Switchboard's too.
    naming = [r for r in records if call_id in r["message"]]
    assert any(r["logger"] == "actors.switchboard" for r in naming), records
    for record in naming:
        assert record.get("call_id") == call_id, record
    of_call = [r for r in records if r.get("call_id") == call_id]
    assert {"mediaserver.calls.live_call", "mediaserver.signaling.server"} <= {
        r["logger"] for r in of_call
    }
    assert any(r["message"] == "= call ended: bye" for r in of_call)
    assert any('"GET /api/agents" 200' in r["message"] for r in records)
    # The key is never logged: not in the request line, not anywhere.
    secret = key.split("_", 2)[2]
    assert secret not in stderr
