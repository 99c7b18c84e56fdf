"""`mediaserver serve` as deployed: a caller on /signal, then SIGTERM drains it as `shutdown`."""

import signal

from tests.mediaserver.serve_process import Server
from tests.mediaserver.webrtc.loopback import Signal, run
from tests.timing import MS


def test_sigterm_ends_a_live_call_as_shutdown_and_the_server_exits_0(tmp_path):
    server = Server(tmp_path, MEDIASERVER_LIMITS__DRAIN_S="0.2")
    try:
        key = next(line.split()[-1] for line in server.lines if line.startswith("API key: "))
        ws_url = server.url.replace("http://", "ws://")

        async def scenario():
            async with Signal.connect(f"{ws_url}/signal/web-1/{key}") as sig:
                first = await sig.recv(timeout=10_000 * MS)
                assert first["type"] == "session" and first["agent"]["name"] == "Demo agent"
                await sig.send({"type": "ping"})
                assert await sig.recv() == {"type": "pong"}
                server.process.send_signal(signal.SIGTERM)
                assert await sig.next("ended", timeout=10_000 * MS) == {
                    "type": "ended",
                    "reason": "shutdown",
                }
                assert await sig.closed() == (1001, "Server shutting down")

        run(scenario)
        assert server.process.wait(timeout=30_000 * MS) == 0
        stderr = server.process.stderr
        assert stderr is not None and "Traceback" not in stderr.read()
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
