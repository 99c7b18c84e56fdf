"""`mediaserver serve` as a subprocess, the way a user runs it: its lines, its exit."""

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
        MEDIASERVER_SERVER__WORKERS="1",  # one process unless a test is about workers
        # The box running the tests is shared: other processes' CPU must not close the load gate
        # of a server whose test is not about admission (test_serve_overload sets its own).
        MEDIASERVER_LIMITS__MAX_LOOP_LAG_MS="1000",
        MEDIASERVER_LIMITS__MAX_DISPATCH_LAG_MS="2000",
        MEDIASERVER_LIMITS__MAX_CPU_PCT="0",
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
