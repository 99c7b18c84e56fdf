"""Prometheus metrics: one `Metrics` object, its own registry, and `GET /metrics`.

    call edge ──call_admitted / call_refused / call_ended / turn_recorded / child_restarted /
                actor_stalled / audio_dropped / barge_in──> Metrics (counters, histograms)
    engines ──EngineFailed, seen by MeteredEngines──> provider_error
    LoopLagProbe (a task on the loop) ──> loop_lag
    CallRegistry ──read at scrape time by CallTreeCollector──> calls active, mailbox depth

Every name starts with `mediaserver_`. Labels take values from small fixed sets (refusal and
end reasons, actor names, engine names, error kinds), never a call or company id, so the number
of series stays bounded. Every method is O(1) and never blocks: prometheus-client guards each
series with a lock held for an addition, so they are safe from actor threads and the loop alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.agent import AgentConfig
from actors.call_registry import CallRegistry
from actors.engines import CallEngines, EngineFailed, EngineResult, EngineStream, Sink
from actors.messages import TurnRecorded

logger = logging.getLogger(__name__)

PREFIX = "mediaserver"
# Latency buckets (seconds): a voice turn lives between ~50 ms (STT final) and a few seconds.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("stt_final", "llm_first_token", "tts_first_audio", "voice_to_voice", "barge_in")
ACTORS = ("supervisor", "session", "ingest", "transcriber", "responder")

# Provider errors reach the edge as `EngineFailed(error=str)`; the message of every
# `mediaserver.engines.provider_errors` class says what happened in one of these phrases.
_ERROR_KINDS = (
    ("authentication failed", "auth"),
    ("rate limited", "rate_limited"),
    ("timed out", "timeout"),
    ("connection failed", "disconnected"),
    ("connection dropped", "disconnected"),
    ("server error", "unavailable"),
    ("server closed", "unavailable"),
    ("error in stream", "unavailable"),
    ("handshake failed", "unavailable"),
    ("error message", "unavailable"),
    ("internal error", "internal"),
    ("rejected", "rejected"),
    ("bad url", "rejected"),
    ("client error", "rejected"),
    ("stream closed", "rejected"),
    ("unexpected failure", "rejected"),
)


def error_kind(error: str) -> str:
    """The kind of a provider failure from its message; "other" when no phrase matches."""
    text = error.lower()
    return next((kind for phrase, kind in _ERROR_KINDS if phrase in text), "other")


class Metrics:
    """The server's metrics. Built once in the composition root; tests build their own.

    Args:
        registry: where the series live; a fresh one by default (never the global default
            registry, so two servers in one test process do not collide).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._admitted = Counter(f"{PREFIX}_calls_admitted", "Calls admitted", registry=r)
        self._refused = Counter(
            f"{PREFIX}_calls_refused", "Calls refused, by reason", ["reason"], registry=r
        )
        self._ended = Counter(
            f"{PREFIX}_calls_ended", "Calls ended, by end reason", ["reason"], registry=r
        )
        self._restarts = Counter(
            f"{PREFIX}_actor_restarts", "Call actors restarted, by actor", ["actor"], registry=r
        )
        self._stalls = Counter(
            f"{PREFIX}_actor_stalls",
            "Call actors abandoned by the watchdog (stalled handler or silent engine), by actor",
            ["actor"],
            registry=r,
        )
        self._latency = Histogram(
            f"{PREFIX}_stage_latency_seconds",
            "Per-stage latency of a turn: stt_final (end of speech to final transcript),"
            " llm_first_token, tts_first_audio, voice_to_voice (end of speech to first bot"
            " audio), barge_in (caller speech start to bot audio flushed)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._provider_errors = Counter(
            f"{PREFIX}_provider_errors",
            "Engine failures reported to a call, by engine and kind",
            ["provider", "kind"],
            registry=r,
        )
        self._dropped = Counter(
            f"{PREFIX}_audio_dropped_seconds",
            "Audio dropped because an actor (or the edge's outbox) fell behind, by where",
            ["actor"],
            registry=r,
        )
        self._loop_lag = Histogram(
            f"{PREFIX}_event_loop_lag_seconds",
            "How late the event loop ran a periodic timer",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._webhooks = Counter(
            f"{PREFIX}_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=r,
        )
        ProcessCollector(namespace=PREFIX, registry=r)
        # Pre-create the series with known labels, so they show 0 before the first event.
        for stage in STAGES:
            self._latency.labels(stage)
        for actor in ACTORS:
            self._restarts.labels(actor)
            self._stalls.labels(actor)

    # -- the call edge ---------------------------------------------------------------------------

    def call_admitted(self) -> None:
        self._admitted.inc()

    def call_refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def call_ended(self, reason: str) -> None:
        self._ended.labels(reason).inc()

    def turn_recorded(self, turn: TurnRecorded) -> None:
        """Observe the latencies a settled turn carries (each is None when not measured)."""
        for stage, ms in (
            ("stt_final", turn.stt_ms),
            ("llm_first_token", turn.llm_first_token_ms),
            ("tts_first_audio", turn.tts_first_audio_ms),
            ("voice_to_voice", turn.voice_to_voice_ms),
        ):
            if ms is not None:
                self._latency.labels(stage).observe(ms / 1000)

    def barge_in(self, seconds: float) -> None:
        """Caller speech began over the bot -> the bot's queued audio was flushed."""
        self._latency.labels("barge_in").observe(seconds)

    def child_restarted(self, kind: str) -> None:
        self._restarts.labels(kind).inc()

    def actor_stalled(self, kind: str) -> None:
        self._stalls.labels(kind).inc()

    def audio_dropped(self, actor: str, ms: float) -> None:
        if ms > 0:
            self._dropped.labels(actor).inc(ms / 1000)

    # -- engines, the loop, webhooks -------------------------------------------------------------

    def provider_error(self, provider: str, kind: str) -> None:
        self._provider_errors.labels(provider, kind).inc()

    def loop_lag(self, seconds: float) -> None:
        self._loop_lag.observe(seconds)

    def webhook_delivery(self, outcome: str) -> None:
        self._webhooks.labels(outcome).inc()

    # -- reading ---------------------------------------------------------------------------------

    def watch(self, calls: CallRegistry) -> None:
        """Report live calls and mailbox depths from `calls` at each scrape."""
        self.registry.register(CallTreeCollector(calls))

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value, 0.0 when absent (for tests and the debug socket)."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


class CallTreeCollector(Collector):
    """Live calls and actor mailbox depths, read from the `CallRegistry` when scraped.

    Reading a snapshot never messages an actor: a scrape costs one pass over the live calls'
    probes (a few microseconds per actor) and nothing at all between scrapes.
    """

    def __init__(self, calls: CallRegistry) -> None:
        self._calls = calls

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(f"{PREFIX}_calls_active", "Calls live now")
        depth = GaugeMetricFamily(
            f"{PREFIX}_mailbox_depth",
            "Messages waiting in call actors' mailboxes, summed over live calls, by actor",
            labels=["actor"],
        )
        deepest = GaugeMetricFamily(
            f"{PREFIX}_mailbox_depth_max",
            "The deepest single mailbox among live calls, by actor",
            labels=["actor"],
        )
        entries = self._calls.calls()
        total: defaultdict[str, int] = defaultdict(int)
        most: defaultdict[str, int] = defaultdict(int)
        for entry in entries:
            try:
                tree = entry.handle.tree()
            except Exception:  # a call ending under our feet; a scrape must never fail
                logger.debug("= no tree for call %s", entry.call_id, exc_info=True)
                continue
            if tree is None:
                continue
            for snapshot in (tree.supervisor, *tree.children):
                actor = snapshot.address.rpartition("/")[2]
                total[actor] += snapshot.mailbox_depth
                most[actor] = max(most[actor], snapshot.mailbox_depth)
        active.add_metric([], len(entries))
        for actor in sorted({*ACTORS, *total}):
            depth.add_metric([actor], total[actor])
            deepest.add_metric([actor], most[actor])
        yield from (active, depth, deepest)


WholeHost = Callable[[bytes, Mapping[str, str]], Awaitable[bytes]]


def metrics_routes(metrics: Metrics, *, whole_host: WholeHost | None = None) -> APIRouter:
    """`GET /metrics` in the Prometheus text format (operator-facing, not in the API schema).

    Args:
        whole_host: in a node's worker, turns this process's exposition (and the request's
            headers) into the whole host's (`mediaserver.node.host_metrics`).
    """
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        # Rendering reads every live call's snapshot: off the loop.
        body = await asyncio.to_thread(metrics.render)
        if whole_host is not None:
            body = await whole_host(body, request.headers)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


class LoopLagProbe:
    """A task that sleeps `interval_s` at a time and reports how late each wake-up is.

    Anything that holds the loop (a slow callback, a blocking call) shows up as lag. Each sample
    goes to the `event_loop_lag` histogram (when `metrics` is given) and to `on_lag` (the load
    gate), on the loop.
    """

    def __init__(
        self,
        metrics: Metrics | None,
        interval_s: float = 0.25,
        *,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._on_lag = on_lag
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self._interval_s)
            lag_s = max(0.0, time.monotonic() - before - self._interval_s)
            if self._metrics is not None:
                self._metrics.loop_lag(lag_s)
            if self._on_lag is not None:
                self._on_lag(lag_s)


# -- provider errors: the engines as the call tree sees them, with their failures counted ---------

T_contra = TypeVar("T_contra", contravariant=True)


class EngineSource(Protocol):
    """Chooses a call's engines (the engine catalog, or a test's engines)."""

    def engines_for(self, agent: AgentConfig, /) -> CallEngines: ...


class _Engine(Protocol[T_contra]):
    def open(self, call_id: str, sink: Sink) -> EngineStream[T_contra]: ...


class MeteredEngines:
    """Wraps an engine source so every `EngineFailed` a call receives is counted.

    Only the sinks are wrapped: the streams, their threads and their results are untouched.
    The provider label is the agent's engine name (`deepgram`, `openai`, `offline`...).
    """

    def __init__(self, inner: EngineSource, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def engines_for(self, agent: AgentConfig, /) -> CallEngines:
        engines = self._inner.engines_for(agent)
        return CallEngines(
            stt=_Metered(engines.stt, agent.stt_engine, self._metrics),
            llm=_Metered(engines.llm, agent.llm_engine, self._metrics),
            tts=_Metered(engines.tts, agent.tts_engine, self._metrics),
            vad=engines.vad,
        )


class _Metered(Generic[T_contra]):
    """An STT, LLM or TTS engine whose sinks count failures under `provider`."""

    def __init__(self, engine: _Engine[T_contra], provider: str, metrics: Metrics) -> None:
        self._engine = engine
        self._provider = provider
        self._metrics = metrics

    def open(self, call_id: str, sink: Sink) -> EngineStream[T_contra]:
        provider, metrics = self._provider, self._metrics

        def counting(result: EngineResult) -> None:
            if isinstance(result, EngineFailed):
                metrics.provider_error(provider, error_kind(result.error))
            sink(result)

        return self._engine.open(call_id, counting)
