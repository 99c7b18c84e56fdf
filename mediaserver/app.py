"""Composition root: builds the whole server from `Settings`, top to bottom, and runs it.

    settings -> engine check -> store (migrations, demo tenant) -> ICE policy, engine catalog
             -> actors: Dispatcher (shared threads) -> CallRegistry -> Switchboard
             -> admission: LocalLedger (call slots, per-minute windows), LoadGate (measured load)
             -> Metrics, webhooks (events + delivery worker), CallObservers (metrics, recordings,
                webhooks of each call), the loop and dispatcher lag probes feeding the gate
             -> CallEdge (calls for every transport)
             -> HTTP app (health, /signal, /whip, /twilio, /exotel, /api, /metrics, request log)
                -> uvicorn
             -> signal handlers (SIGTERM drains, SIGINT stops now)

Everything is built here with plain constructor calls; tests build the same pieces the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import uvicorn
from fastapi import FastAPI
from pykka import ActorDeadError, ActorRef

from actors.call_registry import CallRegistry
from actors.messages import Shutdown
from actors.runtime import Dispatcher
from actors.switchboard import Switchboard
from config.settings import Settings
from mediaserver.admission.ledger import LocalLedger
from mediaserver.admission.load_gate import LoadGate
from mediaserver.admission.probes import CpuProbe, DispatchLagProbe
from mediaserver.calls import CallEdge
from mediaserver.calls.observers import CallObservers
from mediaserver.debug import debug_server
from mediaserver.engines.catalog import EngineCatalog
from mediaserver.errors import StartupError
from mediaserver.http.access_log import RequestLog
from mediaserver.http.api import api_routes
from mediaserver.http.demo import demo_routes, static_files
from mediaserver.http.health import ReadinessCheck, health_routes, lifecycle_readiness
from mediaserver.http.whip import WhipEndpoint
from mediaserver.lifecycle import Lifecycle
from mediaserver.metrics import LoopLagProbe, MeteredEngines, Metrics, metrics_routes
from mediaserver.node.forward import ForwardToOwner, WorkerHeader
from mediaserver.owners import Ownership
from mediaserver.signaling.server import signaling_routes
from mediaserver.startup import announce, bind_socket, check_engines, prepare_store
from mediaserver.store import Store
from mediaserver.telephony.exotel_stream import exotel_routes
from mediaserver.telephony.twilio_rest import TwilioCalls
from mediaserver.telephony.twilio_stream import twilio_routes
from mediaserver.webhooks import WebhookEvents, WebhookWorker
from mediaserver.webrtc.ice import configure_ice

if TYPE_CHECKING:
    from mediaserver.node.worker import WorkerLink

logger = logging.getLogger(__name__)

LOOP_LAG_INTERVAL_S = 0.02  # 100 samples in the load gate's 2 s window (decision 0090)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run_server` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_http_app(
    lifecycle: Lifecycle,
    *,
    edge: CallEdge | None = None,
    settings: Settings | None = None,
    store: Store | None = None,
    metrics: Metrics | None = None,
    readiness: ReadinessCheck | None = None,
    worker: WorkerLink | None = None,
) -> FastAPI:
    """Health; with a call edge also `WS /signal`, WHIP and the demo page (`GET /`), and with the
    store the telephony endpoints (`/twilio/voice`, `WS /twilio/stream`, `WS /exotel/stream`).
    Request lines are logged redacted. With settings and the store, the tenant API (`/api`,
    described at `/openapi.json`); with metrics, `GET /metrics` (the whole host's, in a node's
    `worker`). `/readyz` asks `readiness`, by default the call edge's (or the lifecycle's,
    without one)."""
    app = FastAPI(title="mediaserver", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    if worker is not None and edge is not None:
        app.add_middleware(
            ForwardToOwner,
            siblings=worker.siblings,
            local=lambda call_id: edge.get(call_id) is not None,
            owner_of=worker.owner_of,
        )
    if worker is not None:
        app.add_middleware(WorkerHeader, index=worker.identity.index)
    app.add_middleware(RequestLog)  # added last: it sees every request, forwarded or not
    if readiness is None:
        readiness = edge.readiness if edge is not None else lifecycle_readiness(lifecycle)
    app.include_router(health_routes(readiness))
    if store is not None and settings is not None:
        ledger = edge.ledger if edge is not None else LocalLedger(settings.limits)
        app.include_router(api_routes(store, settings.limits, ledger, calls=edge))
    if metrics is not None:
        whole_host = worker.whole_host_metrics if worker is not None else None
        app.include_router(metrics_routes(metrics, whole_host=whole_host))
    if edge is not None:
        assert settings is not None
        webrtc, limits = settings.webrtc, settings.limits
        app.include_router(signaling_routes(edge, webrtc=webrtc, limits=limits))
        app.include_router(WhipEndpoint(edge, webrtc=webrtc, limits=limits).routes())
        app.include_router(demo_routes())
        app.mount("/static", static_files(), name="static")
        if store is not None:
            twilio = settings.twilio
            calls = TwilioCalls(twilio)
            app.include_router(
                twilio_routes(edge, store, server=settings.server, settings=twilio, calls=calls)
            )
            app.include_router(exotel_routes(edge, store, settings=settings.exotel))
    return app


def http_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    """uvicorn for `app`, websockets by the websockets library, frames capped (1009 beyond)."""
    return _Server(
        uvicorn.Config(
            app,
            ws="websockets-sansio",
            ws_max_size=settings.limits.signal_message_max_bytes,
            # The client address (`http.client_address`) is the X-Forwarded-For one only when
            # the peer is a trusted proxy.
            proxy_headers=True,
            forwarded_allow_ips=list(settings.server.forwarded_allow_ips),
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )


async def run_server(
    settings: Settings, *, out: TextIO | None = None, worker: WorkerLink | None = None
) -> int:
    """Run until SIGTERM (drain) or SIGINT (no drain); return the exit code.

    Alone (`worker` None) this is the whole server: it prepares the store (the calls of a
    crashed run, the demo tenant), sweeps for dead owners, binds `server.host:port` and prints
    the listening line. Either way it owns its calls under an owner row it beats. As one
    of a node's workers (`mediaserver.node`) it serves the connections the node hands it, on its
    private socket too, and tells the node when it is ready; the node did the rest.

    Raises:
        StartupError: the configuration cannot run (the CLI exits 2 with its message).
    """
    out = out or sys.stdout
    if worker is None:
        check_engines(settings)
    store = await Store.open(settings.store.path, busy_timeout_ms=settings.store.busy_timeout_ms)
    try:
        ownership, key = await _own_calls(store, worker)
        owner_id = ownership.owner_id
        lifecycle = Lifecycle()
        configure_ice(settings.webrtc)
        catalog = EngineCatalog.from_settings(settings, asyncio.get_running_loop())
        await asyncio.to_thread(catalog.warm_up)
        calls = start_actors(settings)
        gate = LoadGate(settings.limits)
        ledger = LocalLedger(settings.limits) if worker is None else worker.ledger
        debug = debug_server(settings.debug, calls.registry, calls.dispatcher, store, gate=gate)
        ops = build_operations(settings, store, calls, gate, claimer=owner_id)
        edge = CallEdge(
            store=store,
            owner_id=owner_id,
            switchboard=calls.switchboard,
            registry=calls.registry,
            lifecycle=lifecycle,
            limits=settings.limits,
            engines=MeteredEngines(catalog, ops.metrics),
            ledger=ledger,
            gate=gate,
            host=worker,
            outbound_audio_ms=settings.webrtc.outbound_queue_ms,
            tap_outbox=debug.events.tap,
            observers=ops.observers,
        )
        try:
            sock = (
                bind_socket(settings.server.host, settings.server.port)
                if worker is None
                else worker.bind_private_socket()
            )
            await debug.start()
            ops.start()
            app = build_http_app(
                lifecycle,
                edge=edge,
                settings=settings,
                store=store,
                metrics=ops.metrics,
                worker=worker,
            )
            server = http_server(app, settings)
            # Before the listening line: a signal from then on always takes the orderly path.
            with _signals_handled(server, lifecycle, calls, settings.limits.drain_s):
                serving = await _started(server, sock)
                lifecycle.mark_ready()
                if worker is None:
                    announce(out, key, sock, settings)
                else:
                    worker.serve(server, gate=gate, wake_webhooks=ops.webhooks.wake)
                await serving
        finally:
            if worker is not None:
                await worker.stop_serving()
            await edge.close()
            await ops.close()
            await calls.close()
            await debug.close()
            await catalog.aclose()
            await ownership.close()
        lifecycle.mark_stopped()
        return 0
    finally:
        await store.close()


async def _own_calls(store: Store, worker: WorkerLink | None) -> tuple[Ownership, str | None]:
    """This process's owner row, registered; alone, the store prepared first (and the demo
    tenant's new key, if the store was empty)."""
    if worker is None:
        node_id = uuid.uuid4().hex  # a single process is a node of its own
        key = await prepare_store(store, node_id=node_id)
        ownership = Ownership(store, owner_id=uuid.uuid4().hex, node_id=node_id, sweep=True)
    else:
        me, key = worker.identity, None
        ownership = Ownership(
            store, owner_id=me.owner_id, node_id=me.node_id, worker_id=me.index, sweep=False
        )
    await ownership.start()
    return ownership, key


async def _started(server: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    """Start serving `sock`; once uvicorn accepts connections, the task that serves it.

    Raises:
        StartupError: the server stopped while starting.
    """
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
            raise StartupError("the HTTP server stopped while starting")
        await asyncio.sleep(0.01)
    return serving


def start_actors(settings: Settings) -> Calls:
    """The shared dispatcher threads, the registry of live calls, and the Switchboard."""
    dispatcher = Dispatcher(threads=settings.supervision.dispatcher_threads, name="calls")
    registry = CallRegistry()
    switchboard = Switchboard.start(
        dispatcher,
        supervision=settings.supervision,
        vad=settings.vad,
        registry=registry,
    )
    return Calls(switchboard=switchboard, registry=registry, dispatcher=dispatcher)


class Operations:
    """Metrics, the lag probes, webhooks, and the call observers made of them."""

    def __init__(self, *, metrics: Metrics, events: WebhookEvents, webhooks: WebhookWorker,
                 observers: CallObservers, loop_lag: LoopLagProbe,
                 dispatch_lag: DispatchLagProbe, cpu: CpuProbe) -> None:  # fmt: skip
        self.metrics = metrics
        self.events = events
        self.webhooks = webhooks
        self.observers = observers
        self.loop_lag = loop_lag
        self.dispatch_lag = dispatch_lag
        self.cpu = cpu

    def start(self) -> None:
        """Start the lag probes and webhook delivery on the running loop."""
        self.loop_lag.start()
        self.dispatch_lag.start()
        self.cpu.start()
        self.webhooks.start()

    async def close(self) -> None:
        """After the calls: the last `call.ended` events reach the outbox, then delivery stops
        (whatever is still pending goes out after the next start)."""
        await self.events.close()
        await self.webhooks.close()
        await self.loop_lag.close()
        await self.dispatch_lag.close()
        await self.cpu.close()


def build_operations(
    settings: Settings, store: Store, calls: Calls, gate: LoadGate, *, claimer: str | None = None
) -> Operations:
    """Metrics watching the calls' registry, webhooks from `store` (deliveries claimed as
    `claimer`, this process's owner id), recordings under `recording.dir`, and the loop's and
    the dispatcher's lag measured for `gate`."""
    metrics = Metrics()
    metrics.watch(calls.registry)
    webhooks = WebhookWorker(store, settings.webhooks, metrics=metrics, claimer=claimer)
    events = WebhookEvents(store, on_queued=webhooks.wake)
    observers = CallObservers(
        metrics=metrics, store=store, recording=settings.recording, webhooks=events
    )
    return Operations(
        metrics=metrics,
        events=events,
        webhooks=webhooks,
        observers=observers,
        loop_lag=LoopLagProbe(metrics, LOOP_LAG_INTERVAL_S, on_lag=gate.observe_loop_lag),
        dispatch_lag=DispatchLagProbe(calls.dispatcher, gate.observe_dispatch_lag),
        cpu=CpuProbe(gate.observe_cpu),
    )


@contextlib.contextmanager
def _signals_handled(
    server: uvicorn.Server, lifecycle: Lifecycle, calls: Calls, drain_s: float
) -> Iterator[None]:
    """SIGTERM drains for `drain_s`, SIGINT stops without a drain, a second signal stops now."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        if not lifecycle.begin_drain():
            logger.warning("< %s again: stopping now", sig.name)
            server.force_exit = True
            server.should_exit = True
            return
        logger.info("< %s: %s", sig.name, "draining" if sig is signal.SIGTERM else "stopping")
        deadline = drain_s if sig is signal.SIGTERM else 0.0
        tasks.append(loop.create_task(_drain_and_stop(server, calls, deadline)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class Calls:
    """The actor side as the edge sees it: the Switchboard, its registry, the dispatcher."""

    def __init__(
        self, *, switchboard: ActorRef[Switchboard], registry: CallRegistry, dispatcher: Dispatcher
    ) -> None:
        self.switchboard = switchboard
        self.registry = registry
        self.dispatcher = dispatcher

    async def drain(self, drain_s: float) -> bool:
        """Refuse new calls, let live ones run up to `drain_s`, then end them (`shutdown`).

        Returns True when every call ended. Waits off the event loop.
        """
        self.switchboard.tell(Shutdown(drain_s=drain_s))
        # The Switchboard hangs up what is left at the deadline; give the trees a moment to stop.
        grace_s = 5.0
        return await asyncio.to_thread(self.registry.drained.wait, drain_s + grace_s)

    async def close(self) -> None:
        """Stop the Switchboard and the dispatcher's threads (idempotent)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with contextlib.suppress(ActorDeadError):
            self.switchboard.stop(block=True, timeout=5.0)
        self.dispatcher.shutdown(timeout=5.0)


async def _drain_and_stop(server: uvicorn.Server, calls: Calls, drain_s: float) -> None:
    """Let live calls run until `drain_s`, end the rest with reason `shutdown`, stop serving."""
    started = time.monotonic()
    live = calls.registry.count()
    logger.info("= draining %d calls for up to %.1f s", live, drain_s)
    if not await calls.drain(drain_s):
        logger.error("= %d calls did not end after the drain", calls.registry.count())
    logger.info("= drained after %.2f s", time.monotonic() - started)
    server.should_exit = True
