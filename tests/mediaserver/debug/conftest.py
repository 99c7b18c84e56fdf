"""A running server for debug-socket tests: real call trees, the real socket, a background loop.

The actor side is built as `mediaserver/app.py` builds it (Dispatcher, CallRegistry,
Switchboard) with the zero-cost fake engines of `tests/actors/fakes.py`; each call's outbox is
tapped by the debug server's `DebugEvents`, as the call edge does. The debug server runs on its
own asyncio loop in a thread, listening on a Unix socket in a short temporary directory (socket
paths are limited to about 100 bytes).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from actors.messages import AdmitCall, CallAdmitted, CallRefused, MediaConnected, ResponseCompleted
from config.settings import DebugSettings, LimitsSettings, SupervisionSettings
from mediaserver.admission.load_gate import LoadGate
from mediaserver.debug import DebugServer, debug_server
from mediaserver.inspect import DebugClient
from mediaserver.store import Store
from tests.actors.conftest import AGENT, SUPERVISION, Call, Harness, make_harness
from tests.actors.fakes import Caller, RecordingOutbox, Script, fake_engines
from tests.timing import MS

_ids = itertools.count(1)


class LoopThread:
    """An asyncio loop running in a thread; `run` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="debug-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 5000 * MS):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Live:
    """Live calls plus a debug server listening on `path`."""

    def __init__(
        self,
        harness: Harness,
        server: DebugServer,
        loop: LoopThread,
        path: str,
        store,
        gate: LoadGate,
    ):
        self.harness, self.server, self.loop, self.path = harness, server, loop, path
        self.store = store
        self.registry = harness.registry
        self.gate = gate

    def call(self, *, script: Script | None = None, company_id: str = "acme") -> Call:
        call_id = f"dbg-{next(_ids)}"
        outbox = RecordingOutbox()
        script = script or Script(timer=self.harness.timer)
        script.timer = self.harness.timer
        self.harness.switchboard.tell(
            AdmitCall(
                call_id=call_id,
                company_id=company_id,
                agent=AGENT,
                transport="test",
                outbox=self.server.events.tap(outbox),
                engines=fake_engines(script),
            )
        )
        outbox.wait_for(lambda box: box.of(CallAdmitted) or box.of(CallRefused))
        assert not outbox.of(CallRefused), outbox.of(CallRefused)
        handle = outbox.of(CallAdmitted)[0].handle
        return Call(call_id, outbox, handle, script, Caller(call_id, handle.send_audio), None)

    def greeted_call(self) -> Call:
        call = self.call()
        call.handle.tell(MediaConnected(call_id=call.call_id))
        call.outbox.wait_for(lambda box: box.of(ResponseCompleted))
        return call

    def client(self) -> DebugClient:
        return DebugClient.unix(self.path, timeout_s=5000 * MS)


def short_dir() -> str:
    return tempfile.mkdtemp(prefix="msdbg-", dir="/tmp")


@contextmanager
def live_server(
    *,
    fault_injection: bool = True,
    supervision: SupervisionSettings = SUPERVISION,
    with_store: bool = False,
    **debug: object,
) -> Iterator[Live]:
    directory = short_dir()
    path = str(Path(directory) / "debug.sock")
    settings = DebugSettings(socket_path=path, fault_injection=fault_injection, **debug)
    loop = LoopThread()
    store = loop.run(Store.open(str(Path(directory) / "store.db"))) if with_store else None
    try:
        with make_harness(supervision) as harness:
            gate = LoadGate(LimitsSettings())
            server = debug_server(settings, harness.registry, harness.dispatcher, store, gate=gate)
            loop.run(server.start())
            try:
                yield Live(harness, server, loop, path, store, gate)
            finally:
                loop.run(server.close())
    finally:
        if store is not None:
            loop.run(store.close())
        loop.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def live() -> Iterator[Live]:
    with live_server() as live:
        yield live
