"""A tiny Chrome DevTools Protocol client over `websockets`, and headless Chromium to drive.

Enough for the browser tests: start Debian's `/usr/bin/chromium` headless with the flags it needs
as root on a machine without a screen or the internet (see `chromium_flags` below), attach to
its page over the DevTools websocket and evaluate JavaScript there (`Runtime.evaluate`). No
browser download, no driver: https://chromedevtools.github.io/devtools-protocol/
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.timing import MS

INSTALL = "apt-get install -y chromium (Debian's package; .ci/run installs it)"


class PageError(AssertionError):
    """JavaScript evaluated in the page threw, or the protocol answered with an error."""


def chromium_path() -> str:
    """The Chromium binary; fails the test (never skips it) when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(f"chromium is not installed: {INSTALL}")
    return path


def chromium_flags(profile: Path, microphone_wav: Path) -> list[str]:
    """Headless, nothing leaving loopback, `microphone_wav` played once as the microphone."""
    return [
        "--headless",
        "--no-sandbox",  # we run as root in CI
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
        "--allow-loopback-in-peer-connection",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
    ]


class Browser:
    """Headless Chromium in a subprocess, its DevTools port read from the profile folder."""

    def __init__(self, profile: Path, microphone_wav: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / "chromium.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [chromium_path(), *chromium_flags(profile, microphone_wav), "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        active_port = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20_000 * MS
        while not active_port.exists() or not active_port.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"chromium did not start: {self.log()}")
            time.sleep(0.05)
        self.port = int(active_port.read_text().split()[0])

    @contextmanager
    def page(self) -> Iterator[Page]:
        """A DevTools session on the first page target (the `about:blank` tab Chromium opened)."""
        url = f"http://127.0.0.1:{self.port}/json/list"
        with urllib.request.urlopen(url, timeout=5) as response:
            targets = json.loads(response.read())
        target = next(t for t in targets if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Page(ws)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Page:
    """One page's DevTools session: commands by id; console lines and exceptions are kept."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._next_id = 0
        self.console: list[str] = []
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result, keeping the events that arrive meanwhile."""
        self._next_id += 1
        command_id = self._next_id
        self._ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30_000 * MS))
            if message.get("id") == command_id:
                if "error" in message:
                    raise PageError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        params = message.get("params", {})
        match message.get("method"):
            case "Runtime.consoleAPICalled":
                args = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                self.console.append(f"console.{params['type']}: {args}")
            case "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.console.append(f"exception: {text}")

    def navigate(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited).

        Raises:
            PageError: the expression threw.
        """
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise PageError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10_000 * MS) -> Any:
        """Poll `expression` every 100 ms until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"page never reached {expression!r}")
            time.sleep(0.1)
        return value
