"""`serve --workers 2`: a node and its workers, started, supervised and stopped for real."""

import contextlib
import os
import signal
import time
import urllib.request

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mediaserver.serve_process import Server
from tests.timing import MS

# Loaded by a worker (media, actors' engines); the node must never map them.
MEDIA_LIBRARIES = ("/av/", "/aiortc/", "onnxruntime", "faster_whisper", "ctranslate2")


def workers_of(server):
    """The node's worker processes, by pid."""
    found = {}
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):  # a dead worker not yet reaped
            if any("mediaserver.node.worker" in part for part in child.cmdline()):
                found[child.pid] = child
    return found


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def node(tmp_path):
    running = Server(tmp_path, "--workers", "2")
    yield running
    if running.process.poll() is None:
        workers = workers_of(running)
        running.stop(signal.SIGKILL)
        for worker in workers.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def test_the_node_starts_two_workers_and_prints_one_listening_line(node):
    listening = [line for line in node.lines if line.startswith("listening on ")]
    assert listening == [f"listening on {node.url}"]
    assert sum(line.startswith("API key: ") for line in node.lines) == 1
    port = int(node.url.rsplit(":", 1)[1])
    assert port > 0  # port 0 was resolved by the node, once
    workers = workers_of(node)
    assert len(workers) == 2
    node_process = psutil.Process(node.process.pid)
    assert node_process.children() == list(node_process.children(recursive=True))  # no others
    for worker in workers.values():  # a session of their own: a terminal's Ctrl-C is the node's
        assert os.getsid(worker.pid) == worker.pid
    for _ in range(10):
        assert node.get("/healthz") == (200, {"status": "ok"})


def test_the_node_maps_no_media_or_engine_library(node):
    mapped = {region.path for region in psutil.Process(node.process.pid).memory_maps()}
    assert not [path for path in mapped if any(lib in path for lib in MEDIA_LIBRARIES)]
    worker = next(iter(workers_of(node).values()))
    worker_mapped = {region.path for region in worker.memory_maps()}
    assert [path for path in worker_mapped if "/av/" in path or "onnxruntime" in path]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_node_stops_every_worker_and_exits_0(node, sig):
    workers = workers_of(node)
    assert node.stop(sig) == 0
    for worker in workers.values():
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert "Traceback" not in node.stderr
    assert node.stderr.count(f"< {sig.name}: passing it to 2 workers") == 1


def test_a_killed_worker_is_restarted_and_the_other_goes_on(node):
    before = workers_of(node)
    victim, survivor = sorted(before)
    os.kill(victim, signal.SIGKILL)

    def restarted():
        now = workers_of(node)
        return now if len(now) == 2 and victim not in now else None

    after = wait_for(restarted, 10_000 * MS, "the restarted worker")
    assert survivor in after
    wait_for(lambda: node.get("/healthz")[0] == 200, 5000 * MS, "health")
    for _ in range(10):
        assert node.get("/healthz") == (200, {"status": "ok"})
    assert node.stop() == 0
    assert "killed by SIGKILL" in node.stderr


def test_workers_dying_faster_than_the_intensity_allows_stop_the_node(tmp_path):
    node = Server(
        tmp_path,
        "--workers",
        "2",
        MEDIASERVER_SERVER__WORKER_MAX_RESTARTS="1",
        MEDIASERVER_SERVER__WORKER_RESTART_WINDOW_S="60",
    )
    try:
        first = min(workers_of(node))
        os.kill(first, signal.SIGKILL)
        replacement = wait_for(
            lambda: next((p for p in workers_of(node) if p > first), None) or None,
            10_000 * MS,
            "the first restart",
        )
        others = [p for p in workers_of(node) if p != replacement]
        os.kill(replacement, signal.SIGKILL)
        code = node.process.wait(timeout=20_000 * MS)
        _, node.stderr = node.process.communicate()
    finally:
        if node.process.poll() is None:
            node.process.kill()
    assert code == 1
    why = [line for line in node.stderr.splitlines() if line.startswith("mediaserver: ")]
    assert len(why) == 1
    assert "killed by SIGKILL" in why[0]
    assert "more than 1 worker restarts within 60 s" in why[0]
    assert not [pid for pid in others if psutil.pid_exists(pid)]  # stopped, not left behind


def scrape(node):
    try:
        with urllib.request.urlopen(node.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except ConnectionError:  # handed to a worker that was dying: a client retries
        return {}
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_from_any_connection_show_the_whole_host(node):
    for _ in range(4):  # whichever worker answers, the host is the same
        metrics = scrape(node)
        assert metrics[("mediaserver_workers_up", ())] == 2
        started = {labels for name, labels in metrics if name.endswith("_start_time_seconds")}
        assert started == {(("worker", "1"),), (("worker", "2"),)}
        assert ("mediaserver_calls_active", ()) in metrics  # summed: no worker label
    victim = min(workers_of(node))
    os.kill(victim, signal.SIGKILL)

    def restarted():
        metrics = scrape(node)
        return (
            metrics.get(("mediaserver_worker_restarts_total", ())) == 1
            and metrics.get(("mediaserver_workers_up", ())) == 2
        )

    wait_for(restarted, 15_000 * MS, "the restart in the metrics")
