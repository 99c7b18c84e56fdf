"""`mediaserver serve` opens the debug socket; `mediaserver inspect` sees a real call through it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys

import websockets

from tests.mediaserver.serve_process import Server, environment
from tests.timing import MS


def cli(tmp_path, *args):
    result = subprocess.run(
        [sys.executable, "-m", "mediaserver", *args],
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        cwd=tmp_path,
        timeout=30_000 * MS,
        check=False,
    )
    return result


def document(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def typed_call(url, key, agent_id, inspect):
    """A text-only call on signaling; `inspect()` runs while it is live, after one answer."""
    ws_url = url.replace("http://", "ws://") + f"/signal/peer-1/{key}?agent={agent_id}"
    async with websockets.connect(ws_url) as ws:
        session = json.loads(await asyncio.wait_for(ws.recv(), 5000 * MS))
        assert session["type"] == "session"
        await ws.send(json.dumps({"type": "message", "message": "hello debug"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5000 * MS))["type"] != "response":
            pass
        result = await asyncio.to_thread(inspect, session["call_id"])
        await ws.send(json.dumps({"type": "bye"}))
    return result


def test_serve_opens_the_debug_socket_and_inspect_sees_a_live_call(tmp_path):
    server = Server(tmp_path)
    try:
        path = tmp_path / "debug.sock"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        key = next(line for line in server.lines if line.startswith("API key: ")).split()[-1]
        echo = ["--stt", "echo", "--llm", "echo", "--tts", "echo"]
        agent = document(cli(tmp_path, "agent", "create", "--name", "Echo", *echo, "--json"))

        def inspect(call_id):
            rows = document(cli(tmp_path, "inspect", "calls", "--json"))
            tree = document(cli(tmp_path, "inspect", "tree", call_id, "--json"))
            return rows, tree

        rows, tree = asyncio.run(typed_call(server.url, key, agent["id"], inspect))
        assert len(rows) == 1
        assert rows[0]["agent"] == agent["id"]
        assert rows[0]["turns"] == 2  # through the call edge's outbox tap
        assert list(tree["children"]) == ["session", "ingest", "transcriber", "responder"]

        second = cli(tmp_path, "serve", "--port", "0")
        assert second.returncode == 2
        assert "another server is listening on the debug socket" in second.stderr
        assert "Traceback" not in second.stderr
        assert os.path.exists(path)  # the live server's socket is left alone
        stats = document(cli(tmp_path, "inspect", "stats", "--json"))
        assert stats["calls"]["admitted"] == 1
    finally:
        assert server.stop() == 0
    assert not os.path.exists(path)
