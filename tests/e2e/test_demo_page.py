"""The demo page in headless Chromium against `mediaserver serve`: speak, read, hear, hang up.

The server runs as a user runs it (a subprocess, fresh store, the offline engines, media on
127.0.0.1). Chromium's fake microphone plays a WAV of Piper asking a question once; the page is
driven over the DevTools protocol (`tests/e2e/cdp.py`). The demo agent has no FAQ, so its
scripted reply repeats what it heard. Run with `pytest -m e2e` (CI installs Debian's chromium
first; without it the test fails, it does not skip).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediaserver.engines.piper import PiperSpeaker
from tests.e2e.cdp import Browser, Page, chromium_path
from tests.timing import MS

pytestmark = pytest.mark.e2e

QUESTION = "What are your opening hours?"
LEAD_S = 1.5  # microphone silence before the question: the page connects meanwhile
TAIL_S = 3.0  # and after it: the end of the turn, then the file ends (%noloop)


def write_question_wav(path: Path) -> None:
    """`QUESTION` spoken by Piper (without its random variation), 16-bit mono at 22.05 kHz."""
    from piper.config import SynthesisConfig  # noqa: PLC0415  # the offline extra

    voice = PiperSpeaker().load()
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(QUESTION, steady))
    rate = int(voice.config.sample_rate)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(int(LEAD_S * rate) * 2) + pcm + bytes(int(TAIL_S * rate) * 2))


class Server:
    """`mediaserver serve --port 0` on a fresh store; its URL and first-run API key."""

    def __init__(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
        env.update(
            MEDIASERVER_STORE__PATH=str(tmp_path / "store.db"),
            MEDIASERVER_DEBUG__SOCKET_PATH=str(tmp_path / "debug.sock"),
            MEDIASERVER_WEBRTC__HOST_ADDRESSES='["127.0.0.1"]',
            MEDIASERVER_LIMITS__DRAIN_S="1",
            MEDIASERVER_SERVER__WORKERS="1",
            # The box running the tests is shared: other processes' CPU must not close the load
            # gate of a server whose test is not about admission (test_serve_overload sets its
            # own).
            MEDIASERVER_LIMITS__MAX_LOOP_LAG_MS="1000",
            MEDIASERVER_LIMITS__MAX_DISPATCH_LAG_MS="2000",
            MEDIASERVER_LIMITS__MAX_CPU_PCT="0",
        )
        self.log_path = tmp_path / "server.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mediaserver", "serve", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self.key = ""
        deadline = time.monotonic() + 30_000 * MS
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("API key: "):
                self.key = line.removeprefix("API key: ")
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                assert self.key, "a fresh store prints the demo key before listening"
                return
        self.stop()
        raise AssertionError(f"mediaserver serve did not start: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20_000 * MS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    chromium_path()  # fail first, and loudly, when the browser is missing
    wav = tmp_path / "question.wav"
    write_question_wav(wav)
    browser = Browser(tmp_path / "chromium-profile", wav)
    try:
        with browser.page() as tab:
            yield tab
    finally:
        browser.close()


TURNS = """[...document.querySelectorAll('#log .turn')].map(e => ({
    role: e.classList.contains('user') ? 'user' : e.classList.contains('assistant') ?
          'assistant' : 'system',
    interim: e.classList.contains('interim'), text: e.textContent}))"""

BOT_AUDIO = """(async () => {
    let audio = null;
    (await peer.getStats()).forEach(r => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') audio = r;
    });
    return audio && {bytes: audio.bytesReceived, energy: audio.totalAudioEnergy || 0};
})()"""


def words(text: str) -> set[str]:
    return {w.strip(".,?!'\"").lower() for w in text.split()}


def test_the_demo_page_hears_the_caller_answers_and_plays_the_reply(page, server):
    started = time.monotonic()
    page.navigate(f"{server.url}/?key={server.key}&raw=1")
    assert page.evaluate("document.getElementById('key').value") == server.key
    page.evaluate("document.getElementById('call').click()")

    def state() -> str:
        return json.dumps(
            {
                "status": page.evaluate("document.getElementById('status').textContent"),
                "turns": page.evaluate(TURNS),
                "console": page.console,
                "server": server.log()[-1500:],
            },
            indent=1,
        )

    try:
        page.wait_for("document.getElementById('hangup').disabled === false")
        final = page.wait_for(
            f"{TURNS}.filter(t => t.role === 'user' && !t.interim).map(t => t.text)[0]",
            30_000 * MS,
        )
        reply = page.wait_for(
            f"{TURNS}.filter(t => t.role === 'assistant' && t.text.includes('heard'))"
            ".map(t => t.text)[0]",
            20_000 * MS,
        )
        # The bot sends nothing while it is silent: audio arriving after the reply's text is
        # the reply being spoken (a second of 32 kb/s Opus is about 4000 bytes).
        before = page.evaluate(BOT_AUDIO) or {"bytes": 0, "energy": 0}
        audio = page.wait_for(
            f"{BOT_AUDIO}.then(a => a && a.bytes >= {before['bytes'] + 4000}"
            f" && a.energy > {before['energy']} && a)",
            15_000 * MS,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{state()}") from None
    assert {"opening", "hours"} <= words(final), state()
    assert "hours" in words(reply), state()

    page.evaluate("document.getElementById('hangup').click()")
    status = page.wait_for(
        "(s => s.startsWith('Disconnected') && s)(document.getElementById('status').textContent)"
    )
    assert status.startswith("Disconnected (1000"), state()
    assert not [line for line in page.console if line.startswith("exception")], state()
    print(
        f"heard {final!r}; replied {reply!r}; bot audio {before} then {audio}; "
        f"{time.monotonic() - started:.1f} s from page load"
    )
