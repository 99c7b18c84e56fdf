"""Benchmark capacity: the calls 1 and 2 workers admit as callers ramp up, and what overload costs.

For each workload and each `--workers` count, a fresh `mediaserver serve --workers N` (fresh store,
offline engines, media on 127.0.0.1; `MEDIASERVER_*` settings from the environment are passed on,
e.g. `MEDIASERVER_LIMITS__MAX_CALLS=5` to provoke `capacity` refusals) meets callers that arrive
one every `--ramp-s` (0.25 s). The ramp goes on until it has started twice as many callers as were
admitted when the first refusal came (so overload is really tested), at most `--max-callers`
(200). Every caller ends its own call `--call-s` (60) after it was admitted. Callers live in
processes of their own (`bench/caller_host.py`, which says exactly what each one does), at most
`--callers-per-process` each, started as the ramp needs them: 20 WebRTC callers (an echo caller
took about 2.3 % of a core in smoke runs, decoding what comes back; a silent one 0.8 %), 50
Twilio streams (0.4 % each), so a full process stays under half a core.

Workloads:

- `webrtc_echo`: aiortc callers (`bench/webrtc_load.py`'s `Caller`: signal/1 over `/signal`,
  a Piper speech loop sent as Opus packets) to the echo agent, which sends every frame back. A
  caller ends with signal/1 `bye`.
- `webrtc_silent`: the same callers to an agent that never speaks (speech `echo`, which hears no
  words; reply `offline`; voice `echo`; the VAD still runs on every frame). Ends with `bye`.
- `twilio`: Twilio Media Streams to the echo agent, the same speech loop as mu-law on a shared
  20 ms clock per process; `start` routes by the `agent_id` parameter (trusted without
  `twilio.auth_token`, so no voice webhook). Ends with `stop`.

Columns:

- `callers` the callers started; `procs` caller processes x at most callers each;
- `admitted` the calls the server admitted (rows in its store: a refused call leaves none);
  `1st refusal` how many callers had been admitted when the first refusal reached a caller;
- `refused load/capacity/other`: `mediaserver_calls_refused_total` by reason, the difference of
  `/metrics` (the whole host, with workers) before and after the run; callers see them as
  signal/1 close 1013 "Server at capacity" and Twilio close 1013;
- `lost`: admitted calls that did not end as their caller ended them (store `end_reason` other
  than `bye` for signal/1, `hangup` for a Twilio `stop`; or the caller saw its call go down
  first; or it never got up), or whose media failed: `webrtc_echo` an echo correlation under 0.9
  (the median Pearson correlation of the voiced half-second pieces of the last 10 s heard with
  the best-aligned stretch of what was sent; nothing voiced back counts as 0), `twilio` more
  than 1 % of the frames it got back late (more than 20 ms after the audio before them had
  played; `bench/caller_host.py`); the reasons are listed under the table;
- `connect p50/p95 ms`: from opening the socket to media flowing both ways: `webrtc_echo` the
  first echoed audio frame back (polled every 5 ms), `webrtc_silent` ICE + DTLS connected (that
  agent sends no audio, so nothing can come back: connected is when both ways are open),
  `twilio` the first echoed `media` frame (the server never says "admitted" to a stream);
- the **window**: from the last admitted call getting up to the first admitted caller's own
  end, when every admitted call was up (lost calls may go down inside it); `window s` its
  length, and every CPU figure is over it: `server %` the server's whole process tree (node +
  workers, psutil, user + system) as % of one core; `cpu s/call-min` the server's CPU seconds
  per call-minute (the minutes each call was up within the window): the cost of one call, to
  hold 2 workers against 1 (the goal: within 10 %); `callers %` every caller process together
  (with the refused callers of the ramp's tail and the processes started for them), `busiest %`
  the busiest one (near 100 % the callers, not the server, are the bottleneck);
  `others %` every other process on the machine (a busy machine skews every column: look here
  first); CPU times are sampled every 0.25 s and interpolated at the window's edges;
- `quality`: `webrtc_echo` the median echo correlation, `twilio` the late frames in %.

Run: `.venv/bin/python bench/capacity.py`: six ramps (three workloads, 1 and 2 workers). Each
takes 60 s after the last call admitted (the ramp: 0.25 s a caller, at most 200, so up to 50 s),
10 to 20 s of start-up and teardown, and for `webrtc_echo` the correlations (about 0.7 CPU-s per
call, spread over the caller processes): 8 to 15 minutes in all, after making the Piper speech
loop. `--quick` for a smoke run (10 s calls, at most 12 callers: about 2 minutes). Run it alone
on the machine (`others %`). The last stdout line is JSON: per row `admitted`, `refused`, `lost`,
`connect_p95_ms`, `server_cpu_pct`, `callers_cpu_pct`, `server_cpu_s_per_call_min`, `window_s`;
`scaling` is admitted with 2 workers / with 1, `cpu_per_call_ratio` the CPU per call-minute with
2 workers / with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed

from bench.webrtc_load import (
    CONNECT_TIMEOUT_S,
    VOICED_DBFS,
    busy_cpu_s,
    create_agents,
    make_speech_wav,
    percentile,
    read_wav,
    start_listening,
    tree_cpu_s,
    voiced_fraction,
)

HOST_SCRIPT = str(Path(__file__).resolve().parent / "caller_host.py")
WORKLOADS = {  # name -> (agent, callers per process, how a caller ends, the store's end_reason)
    "webrtc_echo": ("echo", 20, "bye"),
    "webrtc_silent": ("silent", 20, "bye"),
    "twilio": ("echo", 50, "hangup"),
}
QUICK = {"call_s": 10.0, "max_callers": 12}
MIN_CORRELATION = 0.9
MAX_LATE = 0.01
SAMPLE_S = 0.25  # CPU times
READY_TIMEOUT_S = 60.0  # a caller process loading the speech loop
REPORT_TIMEOUT_S = 300.0  # caller processes taking their echo correlations
STOP_TIMEOUT_S = 20.0
BUSY_PERCENT = 20.0  # other processes' CPU (% of a core) that makes a row unreliable
BUSIEST_CALLERS_PERCENT = 80.0  # a caller process this busy may be the bottleneck
REFUSED = re.compile(r"^mediaserver_calls_refused_total\{([^}]*)\}\s+(\S+)", re.MULTILINE)
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


# -- the server -------------------------------------------------------------------------------


class Server:
    """`mediaserver serve --workers N` on a fresh store, with the silent and the echo agents."""

    def __init__(self, workers: int, folder: Path) -> None:
        self.store = folder / "store.db"
        self.key, self.agents = asyncio.run(create_agents(self.store))
        env = dict(os.environ)
        # One company makes every call: its own limit (100) is not what is measured.
        env.setdefault("MEDIASERVER_LIMITS__COMPANY_MAX_CALLS", "100000")
        env.update(
            MEDIASERVER_STORE__PATH=str(self.store),
            MEDIASERVER_WEBRTC__HOST_ADDRESSES='["127.0.0.1"]',
            MEDIASERVER_DEBUG__SOCKET_PATH=str(folder / "debug.sock"),
            MEDIASERVER_LIMITS__DRAIN_S="1",
        )
        command = [sys.executable, "-m", "mediaserver", "serve", "--host", "127.0.0.1"]
        command += ["--port", "0", "--workers", str(workers)]
        self.log = folder / "server.log"
        self.process, self.url = start_listening(command, env, self.log)
        self.tree = psutil.Process(self.process.pid)

    def refusals(self) -> Counter[str]:
        """`mediaserver_calls_refused_total` by reason, for the whole host."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        counts: Counter[str] = Counter()
        for labels, value in REFUSED.findall(text):
            reason = re.search(r'reason="([^"]*)"', labels)
            counts[reason.group(1) if reason else "?"] += round(float(value))
        return counts

    def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL for whatever of its tree is left."""
        members: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            members = self.tree.children(recursive=True)
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()


async def stored_calls(store_path: Path) -> list[Any]:
    """Every call the store holds (a fresh store: this run's)."""
    from mediaserver.store import Store  # noqa: PLC0415

    store = await Store.open(str(store_path))
    try:
        return await store.admin_list_calls(limit=1_000_000)
    finally:
        await store.close()


# -- the caller processes ---------------------------------------------------------------------


class CallerHosts:
    """The caller processes of one run: started as the ramp needs them, read by one thread each,
    always stopped (`close`)."""

    def __init__(self, command: list[str], per_process: int, most: int, folder: Path) -> None:
        self.command = command
        self.per_process = per_process
        self.last = (most - 1) // per_process  # the last process the ramp can need
        self.folder = folder
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.processes: list[subprocess.Popen[str]] = []
        self.ps: list[psutil.Process] = []
        self.closing = False

    def _start(self) -> None:
        index = len(self.processes)
        with (self.folder / f"callers-{index}.log").open("w") as log:
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                start_new_session=True,  # a terminal's Ctrl-C is ours to handle
            )
        self.processes.append(process)
        self.ps.append(psutil.Process(process.pid))
        threading.Thread(target=self._read, args=(index, process), daemon=True).start()

    def _read(self, index: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put((index, json.loads(line)))
        self.events.put((index, {"event": "exited"}))

    def log_tail(self, index: int) -> str:
        return (self.folder / f"callers-{index}.log").read_text()[-2000:]

    def start_first(self) -> None:
        """The first process (and the next, if the ramp may need it), the first one ready."""
        self._start()
        if self.last > 0:
            self._start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                index, event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no caller process ready in {READY_TIMEOUT_S:.0f} s") from None
            if event["event"] == "exited":
                raise RuntimeError(f"caller process {index} exited: {self.log_tail(index)}")
            if index == 0 and event["event"] == "ready":
                return

    def call(self, n: int) -> None:
        """Start caller `n` in its process, starting the process after it, so it is ready."""
        index = n // self.per_process
        while len(self.processes) <= min(index + 1, self.last):
            self._start()
        self._send(index, f"call {n}")

    def _send(self, index: int, line: str) -> None:
        stdin = self.processes[index].stdin
        assert stdin is not None
        try:
            stdin.write(line + "\n")
            stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"caller process {index} is gone: {self.log_tail(index)}") from None

    def cpu_s(self) -> list[float]:
        """Each process's CPU seconds (they start no children: no walk over the process table)."""
        times = [p.cpu_times() for p in self.ps]
        return [t.user + t.system for t in times]

    def request_reports(self) -> None:
        for index in range(len(self.processes)):
            self._send(index, "report")

    def close(self) -> None:
        """EOF on every stdin (each process closes its callers and exits), then SIGKILL."""
        self.closing = True
        for process in self.processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- one ramp ---------------------------------------------------------------------------------


@dataclass
class CallerRecord:
    """What the orchestrator learns of caller `n` (times: `time.monotonic()`)."""

    n: int
    started: float
    admitted: float | None = None
    up: float | None = None
    connect_ms: float | None = None
    refused: str | None = None
    failed: str | None = None
    done: float | None = None
    early: str | None = None
    correlation: float | None = None
    frames: int = 0
    late: int = 0

    @property
    def finished(self) -> bool:
        return self.refused is not None or self.failed is not None or self.done is not None


@dataclass
class Timeline:
    """CPU seconds of the server's tree, the caller processes and the machine, sampled."""

    server: psutil.Process
    hosts: CallerHosts
    samples: list[tuple[float, float, list[float], float]] = field(default_factory=list)

    def sample(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or not self.samples or now - self.samples[-1][0] >= SAMPLE_S:
            self.samples.append((now, tree_cpu_s(self.server), self.hosts.cpu_s(), busy_cpu_s()))

    def at(self, t: float) -> tuple[float, list[float], float]:
        """The CPU seconds at `t`, interpolated between the samples around it."""
        samples = self.samples
        after = next((i for i, s in enumerate(samples) if s[0] >= t), len(samples) - 1)
        before = max(0, after - 1)
        (t0, s0, h0, b0), (t1, s1, h1, b1) = samples[before], samples[after]
        w = 0.0 if t1 <= t0 else min(1.0, max(0.0, (t - t0) / (t1 - t0)))
        h0 = h0 + [0.0] * (len(h1) - len(h0))
        hosts = [a + w * (b - a) for a, b in zip(h0, h1, strict=True)]
        return s0 + w * (s1 - s0), hosts, b0 + w * (b1 - b0)


def apply(
    records: dict[int, CallerRecord], reports: dict[int, Any], index: int, event: Any
) -> None:
    kind = event["event"]
    if kind == "report":
        reports[index] = event["calls"]
        return
    if kind not in ("admitted", "up", "refused", "failed", "done"):
        return
    record = records[event["n"]]
    if kind == "admitted":
        record.admitted = event["t"]
    elif kind == "up":
        record.up, record.connect_ms = event["t"], event["connect_ms"]
    elif kind == "refused":
        record.refused = f"{event['code']} {event['reason']}"
    elif kind == "failed":
        record.failed = event["error"]
    else:
        record.done, record.early = event["t"], event["early"]


@dataclass
class Ramp:
    records: dict[int, CallerRecord]
    at_first_refusal: int | None
    reports: dict[int, Any]


def ramp(hosts: CallerHosts, timeline: Timeline, args: argparse.Namespace) -> Ramp:
    """Start callers every `ramp_s` until twice the admitted count at the first refusal (at
    most `max_callers`), then wait until every caller is done and every process reported."""
    records: dict[int, CallerRecord] = {}
    reports: dict[int, Any] = {}
    target = args.max_callers
    at_first_refusal: int | None = None

    def handle(index: int, event: Any) -> None:
        nonlocal target, at_first_refusal
        if event["event"] == "exited" and not hosts.closing:
            raise RuntimeError(f"caller process {index} exited: {hosts.log_tail(index)}")
        apply(records, reports, index, event)
        if event["event"] == "refused" and at_first_refusal is None:
            at_first_refusal = sum(1 for r in records.values() if r.admitted is not None)
            target = min(args.max_callers, max(len(records), 2 * at_first_refusal))

    def wait(until: float) -> None:
        """Handle events until `until`, sampling CPU on the way."""
        while (left := until - time.monotonic()) > 0:
            timeline.sample()
            with contextlib.suppress(queue.Empty):
                handle(*hosts.events.get(timeout=min(left, SAMPLE_S)))

    t0 = time.monotonic()
    timeline.sample(force=True)
    while len(records) < target:
        n = len(records)
        wait(t0 + n * args.ramp_s)
        if n >= target:  # a refusal came in while waiting
            break
        records[n] = CallerRecord(n=n, started=time.monotonic())
        hosts.call(n)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S + args.call_s + 30
    while not all(r.finished for r in records.values()):
        if time.monotonic() > deadline:
            stuck = [n for n, r in records.items() if not r.finished]
            raise RuntimeError(f"callers {stuck[:10]} still running after {args.call_s} s calls")
        wait(time.monotonic() + SAMPLE_S)
    timeline.sample(force=True)
    hosts.request_reports()
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while len(reports) < len(hosts.processes):
        if time.monotonic() > deadline:
            raise RuntimeError("caller processes did not report")
        with contextlib.suppress(queue.Empty):
            handle(*hosts.events.get(timeout=1.0))
    for calls in reports.values():
        for n, seen in calls.items():
            record = records[int(n)]
            record.correlation, record.frames, record.late = (
                seen["correlation"],
                seen["frames"],
                seen["late"],
            )
    return Ramp(records=records, at_first_refusal=at_first_refusal, reports=reports)


# -- a row ------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    workers: int
    callers: int
    per_process: int
    processes: int
    admitted: int
    admitted_by_callers: int
    at_first_refusal: int | None
    refused: Counter[str]
    refused_by_callers: int
    lost: int
    lost_why: Counter[str]
    failed: list[str]
    connect_ms: list[float]
    window_s: float | None
    server_cpu_pct: float | None
    cpu_s_per_call_min: float | None
    callers_cpu_pct: float | None
    busiest_caller_pct: float | None
    others_pct: float | None
    quality: float | None


def lost_reason(workload: str, call: Any, record: CallerRecord | None) -> str | None:
    """Why an admitted call counts as lost; None when it was not."""
    expected = WORKLOADS[workload][2]
    if call.end_reason != expected:
        return f"ended {call.end_reason}"
    if record is None:
        return "not one of our callers"
    if record.failed is not None:
        return "never up"
    if record.early is not None:
        return f"went down first ({record.early})"
    if workload == "webrtc_echo" and (record.correlation or 0.0) < MIN_CORRELATION:
        return f"echo correlation under {MIN_CORRELATION}"
    if workload == "twilio" and (record.frames == 0 or record.late > MAX_LATE * record.frames):
        return f"over {MAX_LATE:.0%} of frames late"
    return None


def summarize(
    workload: str,
    workers: int,
    args: argparse.Namespace,
    run: Ramp,
    refused: Counter[str],
    calls: list[Any],
    timeline: Timeline,
    hosts: CallerHosts,
) -> Row:
    records = run.records
    up = [r for r in records.values() if r.up is not None and r.admitted is not None]
    lost_why: Counter[str] = Counter()
    for call in calls:
        number = call.peer_id.removeprefix("cap-")
        record = records.get(int(number)) if number.isdigit() else None
        if (why := lost_reason(workload, call, record)) is not None:
            lost_why[why] += 1
    window_s = server_pct = per_call_min = callers_pct = busiest_pct = others_pct = None
    if up:
        start = max(r.up for r in up if r.up is not None)
        end = min(r.admitted for r in up if r.admitted is not None) + args.call_s
        if end > start:
            window_s = end - start
            (s0, h0, b0), (s1, h1, b1) = timeline.at(start), timeline.at(end)
            server_cpu = s1 - s0
            # A caller process started inside the window (the ramp's tail) had used nothing.
            hosts_cpu = [b - (h0[i] if i < len(h0) else 0.0) for i, b in enumerate(h1)]
            call_min = (
                sum(
                    max(0.0, min(end, r.done or end) - max(start, r.up or start))
                    for r in records.values()
                    if r.up is not None
                )
                / 60
            )
            server_pct = 100 * server_cpu / window_s
            per_call_min = server_cpu / call_min if call_min else None
            callers_pct = 100 * sum(hosts_cpu) / window_s
            busiest_pct = 100 * max(hosts_cpu) / window_s
            others_pct = max(0.0, 100 * (b1 - b0 - server_cpu - sum(hosts_cpu)) / window_s)
    quality: float | None = None
    if workload == "webrtc_echo":
        correlations = [r.correlation for r in up if r.correlation is not None]
        quality = statistics.median(correlations) if correlations else None
    elif workload == "twilio":
        frames = sum(r.frames for r in up)
        quality = 100 * sum(r.late for r in up) / frames if frames else None
    return Row(
        workload=workload,
        workers=workers,
        callers=len(records),
        per_process=hosts.per_process,
        processes=len(hosts.processes),
        admitted=len(calls),
        admitted_by_callers=sum(1 for r in records.values() if r.admitted is not None),
        at_first_refusal=run.at_first_refusal,
        refused=refused,
        refused_by_callers=sum(1 for r in records.values() if r.refused is not None),
        lost=sum(lost_why.values()),
        lost_why=lost_why,
        failed=[f"{r.n}: {r.failed}" for r in records.values() if r.failed is not None],
        connect_ms=[r.connect_ms for r in up if r.connect_ms is not None],
        window_s=window_s,
        server_cpu_pct=server_pct,
        cpu_s_per_call_min=per_call_min,
        callers_cpu_pct=callers_pct,
        busiest_caller_pct=busiest_pct,
        others_pct=others_pct,
        quality=quality,
    )


def measure(workload: str, workers: int, args: argparse.Namespace, work: Path, wav: Path) -> Row:
    """One ramp against a fresh server; everything it started is stopped before it returns."""
    folder = work / f"{workload}-{workers}"
    folder.mkdir()
    agent_name, per_process, _ = WORKLOADS[workload]
    per_process = args.callers_per_process or per_process
    server: Server | None = None
    hosts: CallerHosts | None = None
    try:
        server = Server(workers, folder)
        agent = server.agents[agent_name]
        base = server.url.replace("http://", "ws://")
        url = (
            f"{base}/twilio/stream"
            if workload == "twilio"
            else f"{base}/signal/{{peer}}/{server.key}?agent={agent}"
        )
        command = [sys.executable, HOST_SCRIPT, "--workload", workload, "--url", url]
        command += ["--agent", agent, "--wav", str(wav), f"--call-s={args.call_s}"]
        hosts = CallerHosts(command, per_process, args.max_callers, folder)
        hosts.start_first()  # a second or so: the server's start-up work settles meanwhile
        before = server.refusals()
        timeline = Timeline(server.tree, hosts)
        run = ramp(hosts, timeline, args)
        if (code := server.process.poll()) is not None:
            raise RuntimeError(f"the server exited during the ramp (code {code})")
        refused = server.refusals()
        refused.subtract(before)
    except Exception:
        if server is not None:
            print(f"{workload} x{workers}: server log: {server.log.read_text()[-2000:]}")
        raise
    finally:
        if hosts is not None:
            hosts.close()
        if server is not None:
            server.stop()
    calls = asyncio.run(stored_calls(server.store))
    return summarize(workload, workers, args, run, +refused, calls, timeline, hosts)


# -- the report -------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    print(
        f"{'workload':<14}{'workers':>8}{'callers':>8}{'procs':>8}{'admitted':>9}"
        f"{'1st refusal':>12}{'refused load/cap/other':>23}{'lost':>6}{'connect p50/p95 ms':>20}"
        f"{'window s':>9}{'server %':>9}{'cpu s/call-min':>15}{'callers %':>10}{'busiest %':>10}"
        f"{'others %':>9}{'quality':>9}"
    )
    for row in rows:
        other = sum(v for k, v in row.refused.items() if k not in ("load", "capacity"))
        refused = f"{row.refused['load']}/{row.refused['capacity']}/{other}"
        connect = (
            f"{percentile(row.connect_ms, 50):.0f}/{percentile(row.connect_ms, 95):.0f}"
            if row.connect_ms
            else "-"
        )
        quality = fmt(row.quality, ".3f" if row.workload == "webrtc_echo" else ".2f")
        print(
            f"{row.workload:<14}{row.workers:>8}{row.callers:>8}"
            f"{f'{row.processes}x{row.per_process}':>8}{row.admitted:>9}"
            f"{fmt(row.at_first_refusal, 'd'):>12}{refused:>23}{row.lost:>6}{connect:>20}"
            f"{fmt(row.window_s, '.1f'):>9}{fmt(row.server_cpu_pct, '.0f'):>9}"
            f"{fmt(row.cpu_s_per_call_min, '.2f'):>15}{fmt(row.callers_cpu_pct, '.0f'):>10}"
            f"{fmt(row.busiest_caller_pct, '.0f'):>10}{fmt(row.others_pct, '.0f'):>9}"
            f"{quality:>9}"
        )
    for row in rows:
        name = f"{row.workload} x{row.workers}"
        if row.lost_why:
            print(f"{name}: lost {dict(row.lost_why)}")
        if row.failed:
            print(f"{name}: {len(row.failed)} never up: {row.failed[:3]}")
        if row.admitted != row.admitted_by_callers:
            print(
                f"{name}: the store has {row.admitted} calls, callers saw {row.admitted_by_callers}"
            )
        if sum(row.refused.values()) != row.refused_by_callers:
            print(
                f"{name}: /metrics counted {sum(row.refused.values())} refusals, "
                f"callers saw {row.refused_by_callers}"
            )
        if row.window_s is None:
            print(f"{name}: no window with every admitted call up: raise --call-s")
        if (row.others_pct or 0.0) > BUSY_PERCENT:
            print(f"{name}: other processes took {row.others_pct:.0f} % of a core: unreliable")
        if (row.busiest_caller_pct or 0.0) > BUSIEST_CALLERS_PERCENT:
            print(
                f"{name}: a caller process took {row.busiest_caller_pct:.0f} % of a core: "
                "lower --callers-per-process"
            )


def ratios(rows: list[Row], value: str) -> dict[str, float | None]:
    """Per workload: `value` with 2 workers / with 1 (None when a side is missing or 0)."""
    out: dict[str, float | None] = {}
    for workload in WORKLOADS:
        one = next((r for r in rows if r.workload == workload and r.workers == 1), None)
        two = next((r for r in rows if r.workload == workload and r.workers == 2), None)
        if one is None or two is None:
            continue
        a, b = getattr(one, value), getattr(two, value)
        out[workload] = round(b / a, 3) if a and b is not None else None
    return out


def as_json(row: Row) -> dict[str, Any]:
    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "workload": row.workload,
        "workers": row.workers,
        "admitted": row.admitted,
        "refused": {"load": row.refused["load"], "capacity": row.refused["capacity"]},
        "lost": row.lost,
        "connect_p95_ms": rounded(percentile(row.connect_ms, 95), 1) if row.connect_ms else None,
        "server_cpu_pct": rounded(row.server_cpu_pct, 1),
        "callers_cpu_pct": rounded(row.callers_cpu_pct, 1),
        "server_cpu_s_per_call_min": rounded(row.cpu_s_per_call_min, 3),
        "window_s": rounded(row.window_s, 1),
    }


def server_environment() -> str:
    """The `MEDIASERVER_*` settings passed on to the servers (secrets masked)."""
    names = sorted(k for k in os.environ if k.startswith("MEDIASERVER_"))
    return " ".join(f"{k}={'***' if SECRET.search(k) else os.environ[k]}" for k in names)


def stop_on_signal(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)  # runs every `finally`: processes are stopped on the way out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--workers", default="1,2", help="server worker counts, comma-separated")
    parser.add_argument("--call-s", type=float, help="each caller ends its call after (60)")
    parser.add_argument("--ramp-s", type=float, default=0.25, help="between two callers' starts")
    parser.add_argument("--max-callers", type=int, help="callers per ramp at most (200)")
    parser.add_argument(
        "--callers-per-process", type=int, help="at most (default 20 WebRTC, 50 Twilio)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 s calls, 12 callers")
    parser.add_argument("--wav", help="the speech loop (16-bit WAV); default: Piper, made here")
    parser.add_argument("--keep", action="store_true", help="keep the logs and stores")
    args = parser.parse_args()
    preset = QUICK if args.quick else {"call_s": 60.0, "max_callers": 200}
    args.call_s = args.call_s or preset["call_s"]
    args.max_callers = args.max_callers or int(preset["max_callers"])
    workloads = args.workloads.split(",")
    if unknown := set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="capacity-bench-"))
    rows: list[Row] = []
    try:
        wav = Path(args.wav) if args.wav else work / "speech.wav"
        if not args.wav:
            make_speech_wav(wav)
        samples, rate = read_wav(wav)
        voiced = voiced_fraction(samples, rate)
        print(
            f"speech loop {len(samples) / rate:.1f} s, {voiced:.0%} voiced (above "
            f"{VOICED_DBFS:.0f} dBFS); callers every {args.ramp_s} s, at most "
            f"{args.max_callers}, calls of {args.call_s:.0f} s; {psutil.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.1f}; server env: {server_environment() or '(none)'}",
            flush=True,
        )
        if voiced < 0.5:
            raise SystemExit("the speech loop must be at least 50 % voiced")
        for workload in workloads:
            for workers in (int(w) for w in args.workers.split(",")):
                rows.append(measure(workload, workers, args, work, wav))
                row = rows[-1]
                print(
                    f"  {workload} x{workers}: {row.admitted} admitted of {row.callers}, "
                    f"{row.lost} lost, {fmt(row.cpu_s_per_call_min, '.2f')} CPU-s per call-minute",
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"logs and stores kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    cost = ratios(rows, "cpu_s_per_call_min")
    print(
        "CPU per call-minute, 2 workers / 1 (goal: within 10 %): "
        + (", ".join(f"{k} {fmt(v, '.2f')}" for k, v in cost.items()) or "-")
        + f"; run took {time.monotonic() - started:.0f} s"
    )
    print(
        json.dumps(
            {
                "bench": "capacity",
                "rows": [as_json(row) for row in rows],
                "scaling": ratios(rows, "admitted"),
                "cpu_per_call_ratio": cost,
            }
        )
    )


if __name__ == "__main__":
    main()
