"""Benchmark how a new connection reaches a worker: the node's hand-off against the alternatives.

Three servers, each answering `GET /healthz` on a fresh TCP connection (`Connection: close`),
measured one after another by the same client loop in this process:

- `single`: `mediaserver serve --workers 1` (no node: the process accepts by itself);
- `handoff`: `mediaserver serve --workers 2` (the node accepts and passes each connection to a
  worker over its control channel, SCM_RIGHTS; decision 0081);
- `shared`: a prototype of the other design, two processes accepting on one inherited listening
  socket (each runs a minimal asyncio HTTP responder naming itself, so the split is visible).

Columns: the median, p95 and p99 of connect -> full answer, per request; `node cpu us/conn` the
node's CPU time (user + system) per connection handed; `split` how many connections each process
took (the hand-off's from the workers' `/metrics`... not needed: it places by load, so it is shown
for `shared` only, where the kernel decides). A first pass of `--warmup` requests per server is
not measured. Run it alone (check `uptime`); numbers move 30-50 % under other load.

Run: `.venv/bin/python bench/handoff.py` (about a minute). `--requests 500` for a quick look.
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def fetch(port: int) -> tuple[float, bytes]:
    """One request on a new connection; the seconds it took and the answer."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(REQUEST)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return time.perf_counter() - started, b"".join(chunks)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_mediaserver(workers: int, folder: Path) -> tuple[subprocess.Popen[str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
    env.update(
        MEDIASERVER_STORE__PATH=str(folder / "store.db"),
        MEDIASERVER_DEBUG__SOCKET_PATH=str(folder / "debug.sock"),
        MEDIASERVER_LOG__LEVEL="WARNING",  # the request log would cost more than the hand-off
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mediaserver", "serve", "--port", "0", "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=(folder / "server.log").open("w"),
        text=True,
        env=env,
        cwd=folder,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"serve did not start: {(folder / 'server.log').read_text()[-2000:]}")


def shared_responder(fd: int, name: str) -> None:
    """A child of `shared`: accept on the inherited socket, answer naming ourselves."""
    body = f'{{"status":"ok","process":"{name}"}}'.encode()
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main() -> None:
        sock = socket.socket(fileno=fd)
        server = await asyncio.start_server(serve, sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def run_shared(processes: int) -> tuple[list[subprocess.Popen[bytes]], int]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    listener.set_inheritable(True)
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--shared-child", str(listener.fileno()), f"p{i}"],
            pass_fds=(listener.fileno(),),
        )
        for i in range(1, processes + 1)
    ]
    port = listener.getsockname()[1]
    listener.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            fetch(port)
            return children, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the shared-socket prototype did not start")


def measure(port: int, requests: int, warmup: int) -> tuple[list[float], Counter[str]]:
    for _ in range(warmup):
        fetch(port)
    times, split = [], Counter[str]()
    for _ in range(requests):
        seconds, answer = fetch(port)
        assert b" 200 " in answer.split(b"\r\n", 1)[0], answer[:200]
        times.append(seconds)
        if b'"process":"' in answer:
            split[answer.rsplit(b'"process":"', 1)[1].split(b'"', 1)[0].decode()] += 1
    return times, split


def row(name: str, times: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": name,
        "p50_ms": round(statistics.median(times) * 1000, 3),
        "p95_ms": round(percentile(times, 0.95) * 1000, 3),
        "p99_ms": round(percentile(times, 0.99) * 1000, 3),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--shared-child", nargs=2, metavar=("FD", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shared_child:
        shared_responder(int(args.shared_child[0]), args.shared_child[1])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as work:
        for name, workers in (("single", 1), ("handoff", 2)):
            folder = Path(work) / name
            folder.mkdir()
            process, port = run_mediaserver(workers, folder)
            try:
                node = psutil.Process(process.pid)
                time.sleep(1.0)
                before = node.cpu_times()
                times, _ = measure(port, args.requests, args.warmup)
                after = node.cpu_times()
                node_us = (
                    (after.user + after.system - before.user - before.system)
                    / (args.requests + args.warmup)
                    * 1e6
                )
                extra = {"node_cpu_us_per_conn": round(node_us, 1) if workers > 1 else None}
                rows.append(row(name, times, extra))
            finally:
                process.terminate()
                process.wait(timeout=30)
        children, port = run_shared(2)
        try:
            times, split = measure(port, args.requests, args.warmup)
            rows.append(row("shared", times, {"split": dict(sorted(split.items()))}))
        finally:
            for child in children:
                child.terminate()
                child.wait(timeout=10)
    print(
        f"{'server':<9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'node cpu us/conn':>17}  split"
    )
    for r in rows:
        node_cpu = "" if r.get("node_cpu_us_per_conn") is None else r["node_cpu_us_per_conn"]
        print(
            f"{r['server']:<9} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['p99_ms']:>8}"
            f" {node_cpu!s:>17}  {r.get('split', '')}"
        )
    single, handoff = rows[0], rows[1]
    print(
        json.dumps(
            {
                "bench": "handoff",
                "requests": args.requests,
                "rows": rows,
                "handoff_added_p50_ms": round(handoff["p50_ms"] - single["p50_ms"], 3),
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
