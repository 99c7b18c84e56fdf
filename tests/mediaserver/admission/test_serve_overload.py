"""`mediaserver serve` past its loop-lag threshold: new calls are refused, admitted ones go on.

The server is a real subprocess with the offline demo agent; the callers are real aiortc peers
in this process (their own event loop, which the server's lag does not touch) on loopback. The
lag is real too: the debug socket's `hog` (fault injection) blocks the server's event loop on a
schedule, and the load gate sees it only through its normal measurements.
"""

import asyncio
import json
import signal
import subprocess
import sys
from xml.etree import ElementTree

import httpx

from mediaserver.inspect import DebugClient
from tests.mediaserver.serve_process import Server, environment
from tests.mediaserver.webrtc.loopback import Caller, Signal, run
from tests.timing import MS

SDP = "application/sdp"


def serve(tmp_path, **env):
    return Server(
        tmp_path,
        MEDIASERVER_DEBUG__FAULT_INJECTION="true",
        MEDIASERVER_WEBRTC__HOST_ADDRESSES='["127.0.0.1"]',
        # 100 ms, not the 50 ms default: the box running the tests is shared, and other
        # processes' CPU must not close the gate before the hog does.
        MEDIASERVER_LIMITS__MAX_LOOP_LAG_MS="100",
        # The dispatcher's lag is not what this test pushes (test_load_gate covers it).
        MEDIASERVER_LIMITS__MAX_DISPATCH_LAG_MS="0",
        **env,
    )


def demo_key(server: Server) -> str:
    return next(line.split()[-1] for line in server.lines if line.startswith("API key: "))


def debug(tmp_path, cmd: str, **args):
    with DebugClient.unix(str(tmp_path / "debug.sock"), timeout_s=10_000 * MS) as client:
        return client.request(cmd, **args)


def inspect(tmp_path, *args: str):
    """`mediaserver inspect ARGS --json` as an operator runs it, against the server's socket."""
    result = subprocess.run(
        [sys.executable, "-m", "mediaserver", "inspect", *args, "--json"],
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        cwd=tmp_path,
        timeout=30_000 * MS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def until(predicate, timeout: float = 15_000 * MS, every: float = 0.05):
    """Poll a blocking `predicate` off the loop until it holds; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every)


class SignalCall:
    """A signal/1 caller with media up."""

    def __init__(self, sig: Signal, caller: Caller, call_id: str) -> None:
        self.sig, self.caller, self.call_id = sig, caller, call_id

    @classmethod
    async def start(cls, sig: Signal) -> "SignalCall":
        session = await sig.recv(timeout=10_000 * MS)
        assert session["type"] == "session", session
        caller = Caller()
        await sig.send({"type": "offer", "sdp": await caller.offer()})
        await caller.accept((await sig.next("answer", timeout=10_000 * MS))["sdp"])
        await caller.connected(10_000 * MS)
        return cls(sig, caller, session["call_id"])

    async def bye(self) -> None:
        await self.sig.send({"type": "bye"})
        assert await self.sig.next("ended", timeout=10_000 * MS) == {
            "type": "ended",
            "reason": "bye",
        }
        assert await self.sig.closed() == (1000, "Call ended")
        await self.caller.close()


def test_an_overloaded_server_refuses_new_calls_and_keeps_every_admitted_one(tmp_path):
    server = serve(tmp_path)
    try:
        key = demo_key(server)
        ws = server.url.replace("http://", "ws://")
        auth = {"Authorization": f"Bearer {key}"}

        async def scenario():
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=10) as http,
                Signal.connect(f"{ws}/signal/early-1/{key}") as sig1,
                Signal.connect(f"{ws}/signal/early-2/{key}") as sig2,
            ):
                # Admitted before the pressure: two signal/1 calls and a WHIP call, media up.
                early = [await SignalCall.start(sig1), await SignalCall.start(sig2)]
                whip_caller = Caller()
                published = await http.post(
                    "/whip",
                    content=await whip_caller.offer(),
                    headers={**auth, "Content-Type": SDP},
                )
                assert published.status_code == 201, published.text
                await whip_caller.accept(published.text)
                await whip_caller.connected(10_000 * MS)
                assert (await http.get("/readyz")).json() == {"status": "ready"}

                # The pressure: the loop held 150 ms of every 200 ms, for 4 s.
                hog = await asyncio.to_thread(
                    debug, tmp_path, "hog", loop_ms=150, every_ms=200, for_s=4.0
                )
                assert hog["started"] is True
                await until(lambda: not debug(tmp_path, "admission")["open"])
                state = await asyncio.to_thread(debug, tmp_path, "admission")
                assert state["why"] == "loop_lag" and state["loop_lag_p99_ms"] > 100

                # New calls are refused: signal/1 with 1013, WHIP with 503 and Retry-After.
                async with Signal.connect(f"{ws}/signal/late-1/{key}") as late:
                    assert await late.closed(10_000 * MS) == (1013, "Server at capacity")
                refused_caller = Caller()
                refused = await http.post(
                    "/whip",
                    content=await refused_caller.offer(),
                    headers={**auth, "Content-Type": SDP},
                )
                await refused_caller.close()
                assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.json()) == (503, {"status": "full"})
                await early[0].sig.send({"type": "ping"})
                assert await early[0].sig.next("pong", timeout=10_000 * MS) == {"type": "pong"}

                # The pressure ends: the gate reopens by itself and a new call gets in.
                await until(lambda: debug(tmp_path, "admission")["open"], timeout=20_000 * MS)
                assert (await http.get("/readyz")).json() == {"status": "ready"}
                async with Signal.connect(f"{ws}/signal/after/{key}") as after_sig:
                    after = await SignalCall.start(after_sig)
                    await after.bye()

                # Every admitted call was still up, and ends with its caller's own reason.
                assert all(c.caller.pc.connectionState == "connected" for c in early)
                assert whip_caller.pc.connectionState == "connected"
                for call in early:
                    await call.bye()
                deleted = await http.delete(published.headers["location"], headers=auth)
                assert deleted.status_code == 200
                await whip_caller.close()

                whip_id = published.headers["location"].rsplit("/", 1)[1]
                expected = dict.fromkeys({c.call_id for c in (*early, after)} | {whip_id}, "bye")

                async def end_reasons() -> dict[str, str | None]:
                    listed = (await http.get("/api/calls", headers=auth)).json()
                    return {call["id"]: call["end_reason"] for call in listed["items"]}

                for _ in range(40):  # each row's end is written just after its socket closed
                    if await end_reasons() == expected:
                        break
                    await asyncio.sleep(0.1)
                assert await end_reasons() == expected  # and no row for a refusal
                metrics = (await http.get("/metrics")).text
                assert 'mediaserver_calls_refused_total{reason="load"} 2.0' in metrics
                stats = await asyncio.to_thread(debug, tmp_path, "stats")
                assert stats["calls"]["refused"] == {"load": 2}

        run(scenario, timeout=90_000 * MS)
        assert server.stop() == 0
        closed = [line for line in server.stderr.splitlines() if "admission closed" in line]
        reopened = [line for line in server.stderr.splitlines() if "admission open again" in line]
        assert len(closed) == 1 and "loop lag p99" in closed[0] and "over 100 ms" in closed[0]
        assert len(reopened) == 1 and "2 calls refused meanwhile" in reopened[0]
        assert "Traceback" not in server.stderr
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_admission_off_refuses_every_transport_and_auto_admits_again(tmp_path):
    server = serve(tmp_path)
    try:
        key = demo_key(server)
        ws = server.url.replace("http://", "ws://")

        async def scenario():
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                closed = await asyncio.to_thread(inspect, tmp_path, "admission", "off")
                assert closed["open"] is False and closed["why"] == "forced"
                async with Signal.connect(f"{ws}/signal/p1/{key}") as sig:
                    assert await sig.closed(10_000 * MS) == (1013, "Server at capacity")
                caller = Caller()
                offer = await caller.offer()
                headers = {"Authorization": f"Bearer {key}", "Content-Type": SDP}
                refused = await http.post("/whip", content=offer, headers=headers)
                assert refused.status_code == 503 and "retry-after" in refused.headers
                form = {"CallSid": "CA" + "5" * 32, "From": "+15550001111", "To": "+1555"}
                twiml = (await http.post("/twilio/voice", data=form)).text
                reject = ElementTree.fromstring(twiml).find("./Reject")
                assert reject is not None and reject.get("reason") == "busy", twiml
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.json()) == (503, {"status": "full"})

                opened = await asyncio.to_thread(inspect, tmp_path, "admission", "auto")
                assert opened["open"] is True and opened["mode"] == "auto"
                async with Signal.connect(f"{ws}/signal/p2/{key}") as sig:
                    call = await SignalCall.start(sig)
                    await call.bye()
                twiml = (await http.post("/twilio/voice", data=form)).text
                assert ElementTree.fromstring(twiml).find("./Connect/Stream") is not None
                await caller.close()

        run(scenario, timeout=60_000 * MS)
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
