"""A process of benchmark callers for `bench/capacity.py`, driven line by line over stdin/stdout.

    python bench/caller_host.py --workload webrtc_echo|webrtc_silent|twilio --url URL
                                --wav WAV --call-s S

    stdin, one command a line:
        call N      start caller N now (peer id `cap-N`)
        report      every caller is done: print the report (echo correlations are taken here,
                    after the calls, so their FFTs never hold up a caller's audio)
        EOF         quit: callers still up are closed (the orchestrator is gone, or done)
    stdout, one JSON object a line (`t`: `time.monotonic()`, one clock for every process here):
        {"event": "ready"}
        {"event": "admitted", "n": N, "t": T}     signal/1 `session`; Twilio: the first echo
        {"event": "up", "n": N, "t": T, "connect_ms": X}
        {"event": "refused", "n": N, "t": T, "code": 1013, "reason": "Server at capacity"}
        {"event": "failed", "n": N, "t": T, "error": "..."}      never up (admitted or not)
        {"event": "done", "n": N, "t": T, "early": null | "why"}  T: when the call went down
        {"event": "report", "calls": {"N": {"correlation": x, "frames": n, "late": n}}}

The callers, one per call:

- `webrtc_echo`, `webrtc_silent`: `bench/webrtc_load.py`'s `Caller` (aiortc, signal/1 over
  `/signal`, the speech loop as pre-encoded Opus packets). Admitted at `session`; up when the
  first echoed frame comes back (echo), or at ICE + DTLS connected (silent: that agent never
  sends audio, so nothing can come back). `call_s` after admission it sends `bye` and closes.
- `twilio`: a Media Streams websocket to `/twilio/stream`: `connected`, then `start` with the
  routing parameters the server trusts without `twilio.auth_token` (`agent_id`, `from`), then the
  speech loop as mu-law `media` on this process's shared 20 ms clock; marks are echoed once the
  audio before them has played. Admitted and up at the first echoed frame; `call_s` later it
  stops sending, sends `stop` and waits for the server's close.

A Twilio frame is **late** when it comes more than 20 ms after the audio before it finished
playing: the measure of `bench/telephony_load.py`, on a playback that starts at the first frame
and restarts from a frame that came too late (as a phone's playout buffer does after running dry).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection, connect

from bench.webrtc_load import (
    CONNECT_TIMEOUT_S,
    RATE,
    REF_RATE,
    Caller,
    echo_correlation,
    opus_packets,
    read_wav,
    resample,
)
from mediaserver.telephony import g711

FRAME_S = 0.02
LATE_S = 0.02  # as bench/telephony_load.py
GROUPS = 4  # a process's Twilio streams send in 4 groups spread over each 20 ms
ACCOUNT_SID = "AC" + "0" * 32
CLOSE_WAIT_S = 5.0  # after our own end: the server's close
POLL_S = 0.005  # how often a connecting caller looks for its first frame back
MIN_HEARD_FRAMES = 100  # 2 s: less than this heard back is no echo to correlate


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class WebRTCCall:
    """One signal/1 caller's life: admitted or refused, up, held `call_s`, `bye`."""

    def __init__(self, n: int, caller: Caller, *, echo: bool, call_s: float) -> None:
        self.n = n
        self.caller = caller
        self.echo = echo
        self.call_s = call_s

    def _down(self) -> str | None:
        """Why the call is down before its end, or None while it is up."""
        caller = self.caller
        if caller.ended is not None:
            return caller.ended
        if caller.down_at is not None or caller.pc.connectionState in ("failed", "closed"):
            return f"peer {caller.pc.connectionState}"
        return None

    async def run(self) -> None:
        caller = self.caller
        started = time.monotonic()
        connecting = asyncio.ensure_future(caller.connect())
        admitted = asyncio.ensure_future(caller.admitted.wait())
        up = False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.wait({connecting, admitted}, return_when=asyncio.FIRST_COMPLETED)
                admitted_at = time.monotonic()
                if caller.admitted.is_set():
                    emit("admitted", n=self.n, t=admitted_at)
                await connecting
                while self.echo and caller.frames == 0:
                    if (why := self._down()) is not None:
                        raise ConnectionError(why)
                    await asyncio.sleep(POLL_S)
            up = True
        except websockets.ConnectionClosed as closed:
            close = closed.rcvd
            code, reason = (close.code, close.reason) if close is not None else (1006, "")
            if caller.admitted.is_set():
                emit("failed", n=self.n, t=time.monotonic(), error=f"closed {code} {reason}")
            else:
                emit("refused", n=self.n, t=time.monotonic(), code=code, reason=reason)
            return
        except Exception as exc:  # a timeout, a failed peer: reported, never raised
            emit("failed", n=self.n, t=time.monotonic(), error=repr(exc))
            return
        finally:
            admitted.cancel()
            if not connecting.done():
                connecting.cancel()
            if not up:
                await caller.close()
        up_at = time.monotonic() if self.echo else (caller.up_at or time.monotonic())
        emit("up", n=self.n, t=up_at, connect_ms=(up_at - started) * 1000)
        end_at = admitted_at + self.call_s
        while (left := end_at - time.monotonic()) > 0 and self._down() is None:
            await asyncio.sleep(min(0.2, left))
        early = self._down()
        down_at = caller.down_at if early is not None and caller.down_at else time.monotonic()
        await caller.close()  # `bye`, then the socket and the peer
        emit("done", n=self.n, t=down_at, early=early)

    def report(self, sent_16k: np.ndarray) -> dict[str, Any]:
        correlation = None
        if self.echo and len(self.caller.heard) >= MIN_HEARD_FRAMES:
            correlation = echo_correlation(sent_16k, np.concatenate(self.caller.heard))
        return {"correlation": correlation, "frames": self.caller.frames, "late": 0}


class TwilioCall:
    """One Twilio Media Stream's life: `start`, the echo back, held `call_s`, `stop`."""

    def __init__(self, n: int, url: str, agent_id: str, *, call_s: float, position: int) -> None:
        self.n = n
        self.url = url
        self.agent_id = agent_id
        self.call_s = call_s
        self.position = position  # next frame of the speech loop
        self.sid = f"MZ{n:032x}"
        self.call_sid = f"CA{n:032x}"
        self.ws: ClientConnection | None = None
        self.sequence = 0
        self.chunk = 0
        self.frames = 0  # echoed frames after the first
        self.late = 0
        self.plays_until: float | None = None
        self.first_frame = asyncio.Event()
        self.stopping = False

    def next_sequence(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    async def send(self, text: str) -> None:
        if self.ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(text)

    def _send_later(self, text: str) -> None:
        spawn(self.send(text))

    def media(self, payload: str) -> str:
        self.chunk += 1
        return (
            f'{{"event": "media", "sequenceNumber": "{self.next_sequence()}", "streamSid": '
            f'"{self.sid}", "media": {{"track": "inbound", "chunk": "{self.chunk}", '
            f'"timestamp": "{self.chunk * 20}", "payload": "{payload}"}}}}'
        )

    def _heard(self, now: float) -> None:
        if self.stopping:
            return
        if self.plays_until is None:
            self.plays_until = now
            self.first_frame.set()
        else:
            self.frames += 1
            if now - self.plays_until > LATE_S:
                self.late += 1
        self.plays_until = max(self.plays_until, now) + FRAME_S

    async def _receive(self) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                assert isinstance(text, str)
                now = time.monotonic()
                if text.startswith('{"event": "media"'):
                    self._heard(now)
                elif text.startswith('{"event": "mark"'):
                    name = json.loads(text)["mark"]["name"]
                    echo = json.dumps(
                        {"event": "mark", "streamSid": self.sid, "mark": {"name": name}}
                    )
                    delay = max(0.0, (self.plays_until or now) - now)
                    loop.call_later(delay, self._send_later, echo)
                elif text.startswith('{"event": "clear"'):
                    self.plays_until = now

    async def run(self, streaming: set[TwilioCall]) -> None:
        started = time.monotonic()
        receiving: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                self.ws = await connect(self.url, max_size=None, compression=None)
                await self.send(
                    json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                )
                await self.send(json.dumps(self._start()))
                streaming.add(self)
                receiving = asyncio.ensure_future(self._receive())
                first = asyncio.ensure_future(self.first_frame.wait())
                await asyncio.wait({receiving, first}, return_when=asyncio.FIRST_COMPLETED)
                first.cancel()
        except Exception as exc:  # a timeout, a refused connection: reported, never raised
            streaming.discard(self)
            emit("failed", n=self.n, t=time.monotonic(), error=repr(exc))
            await self._close(receiving)
            return
        if not self.first_frame.is_set():  # closed before any echo: refused, or failed
            streaming.discard(self)
            code, reason = self._close_code()
            event = "refused" if code == 1013 else "failed"
            details = (
                {"code": code, "reason": reason}
                if code == 1013
                else {"error": f"closed {code} {reason}"}
            )
            emit(event, n=self.n, t=time.monotonic(), **details)
            await self._close(receiving)
            return
        assert receiving is not None
        up_at = time.monotonic()
        emit("admitted", n=self.n, t=up_at)
        emit("up", n=self.n, t=up_at, connect_ms=(up_at - started) * 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(receiving), up_at + self.call_s - time.monotonic()
            )
        if receiving.done():  # the server closed it first
            streaming.discard(self)
            code, reason = self._close_code()
            emit("done", n=self.n, t=time.monotonic(), early=f"closed {code} {reason}")
            return
        self.stopping = True
        streaming.discard(self)
        down_at = time.monotonic()
        stop = {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}
        await self.send(
            json.dumps(
                {
                    "event": "stop",
                    "sequenceNumber": self.next_sequence(),
                    "streamSid": self.sid,
                    "stop": stop,
                }
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiving), CLOSE_WAIT_S)
        await self._close(receiving)
        emit("done", n=self.n, t=down_at, early=None)

    def _start(self) -> dict[str, Any]:
        return {
            "event": "start",
            "sequenceNumber": self.next_sequence(),
            "streamSid": self.sid,
            "start": {
                "streamSid": self.sid,
                "accountSid": ACCOUNT_SID,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"agent_id": self.agent_id, "from": f"cap-{self.n}"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }

    def _close_code(self) -> tuple[int, str]:
        ws = self.ws
        if ws is None or ws.close_code is None:
            return 1006, ""
        return ws.close_code, ws.close_reason or ""

    async def _close(self, receiving: asyncio.Task[None] | None) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if receiving is not None:
            receiving.cancel()

    def report(self) -> dict[str, Any]:
        return {"correlation": None, "frames": self.frames, "late": self.late}


_tasks: set[asyncio.Task[Any]] = set()


def spawn(coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
    """A task kept alive until it is done."""
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def pace(streaming: set[TwilioCall], payloads: list[str]) -> None:
    """Every Twilio stream of this process sends one frame every 20 ms, in `GROUPS` groups."""
    start = time.monotonic()
    tick = 0
    while True:
        wait = start + tick * FRAME_S / GROUPS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        group = tick % GROUPS
        for call in list(streaming):
            if call.n % GROUPS == group:
                payload = payloads[call.position % len(payloads)]
                call.position += 1
                await call.send(call.media(payload))
        tick += 1


async def run_host(args: argparse.Namespace) -> None:
    """Start callers as stdin says; report what they saw."""
    samples, rate = read_wav(Path(args.wav))
    sent_16k = resample(samples, rate, REF_RATE)
    calls: dict[int, WebRTCCall | TwilioCall] = {}
    runs: list[asyncio.Task[Any]] = []
    start_call: Callable[[int], None]
    if args.workload == "twilio":
        audio = resample(samples, rate, 8000)
        audio = audio[: len(audio) // 160 * 160]
        payloads = [
            base64.b64encode(g711.ulaw_encode(audio[i : i + 160])).decode()
            for i in range(0, len(audio), 160)
        ]
        streaming: set[TwilioCall] = set()
        spawn(pace(streaming, payloads))

        def start_call(n: int) -> None:
            call = TwilioCall(n, args.url, args.agent, call_s=args.call_s, position=n * 151)
            calls[n] = call
            runs.append(spawn(call.run(streaming)))

    else:
        from config.settings import WebRTCSettings  # noqa: PLC0415
        from mediaserver.webrtc.ice import configure_ice  # noqa: PLC0415

        configure_ice(WebRTCSettings(host_addresses=["127.0.0.1"]))  # all media on loopback
        packets = opus_packets(resample(samples, rate, RATE))
        echo = args.workload == "webrtc_echo"

        def start_call(n: int) -> None:
            # Each caller from its own point of the loop, 3 s after the previous one's.
            caller = Caller(
                args.url.format(peer=f"cap-{n}"), packets, start=(n * 151) % len(packets)
            )
            call = WebRTCCall(n, caller, echo=echo, call_s=args.call_s)
            calls[n] = call
            runs.append(spawn(call.run()))

    emit("ready")
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, *rest = line.split()
            if command == "call":
                start_call(int(rest[0]))
            elif command == "report":
                await asyncio.gather(*runs, return_exceptions=True)
                emit(
                    "report",
                    calls={
                        str(n): call.report(sent_16k)
                        if isinstance(call, WebRTCCall)
                        else call.report()
                        for n, call in calls.items()
                    },
                )
    finally:
        for task in list(_tasks):
            task.cancel()
        await asyncio.gather(
            *(c.caller.close() for c in calls.values() if isinstance(c, WebRTCCall)),
            return_exceptions=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", choices=("webrtc_echo", "webrtc_silent", "twilio"), required=True
    )
    parser.add_argument("--url", required=True, help="signal/1: with {peer}; Twilio: the stream")
    parser.add_argument("--agent", default="", help="Twilio: the agent id to route to")
    parser.add_argument("--wav", required=True)
    parser.add_argument("--call-s", type=float, required=True)
    args = parser.parse_args()
    # The orchestrator owns this process: a terminal's Ctrl-C reaches it there, and it closes
    # our stdin, which ends us cleanly (our calls end `hangup` rather than mid-traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(run_host(args))


if __name__ == "__main__":
    main()
