"""The whole host's `/metrics` with workers: every worker's series merged into one exposition.

    GET /metrics (any worker) --> its own series + each sibling's (`GET /metrics` on the
        sibling's private socket, marked internal so the sibling answers with its own only)
        --> merge_expositions --> one exposition for the host

Counters, histograms and summaries add up across workers: calls admitted, refused by reason,
latency buckets and sums are the host's. A gauge is labelled `worker` (a sum of start times,
maximum mailbox depths or file-descriptor limits would lie), except the few whose sum is the
host's value (`SUMMED_GAUGES`: calls live, mailbox depths). The node's own facts ride along as
`mediaserver_workers_up` and `mediaserver_worker_restarts_total`. Pure: text in, bytes out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

PREFIX = "mediaserver"
SUMMED_KINDS = frozenset({"counter", "histogram", "summary"})
SUMMED_GAUGES = frozenset({f"{PREFIX}_calls_active", f"{PREFIX}_mailbox_depth"})


def merge_expositions(
    expositions: Mapping[int, str], *, node: Mapping[str, Any] | None = None
) -> bytes:
    """One exposition from each worker's (keyed by worker number), as the text format.

    Args:
        node: what the node says of its workers (`workers_up`, `restarts`), as two series.
    """
    families: dict[str, Metric] = {}
    summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for worker, text in sorted(expositions.items()):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:  # a sibling's bad answer costs its series, not the scrape
            logger.error("= worker %d's metrics are unreadable: %s", worker, exc)
            continue
        for family in parsed:
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            if _summed(family):
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    summed[key] = summed.get(key, 0.0) + sample.value
            else:
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": str(worker)},
                                      sample.value)  # fmt: skip
    for (name, labels), value in summed.items():
        family = families[_family_of(name, families)]
        family.add_sample(name, dict(labels), value)
    extra = list(_node_series(node)) if node is not None else []
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families.values(), *extra]))
    return generate_latest(registry)


def _summed(family: Metric) -> bool:
    return family.type in SUMMED_KINDS or family.name in SUMMED_GAUGES


def _family_of(sample: str, families: Mapping[str, Metric]) -> str:
    """The family a sample name belongs to (`x_total`, `x_bucket`, `x_sum`... belong to `x`)."""
    if sample in families:
        return sample
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created", "_gsum", "_gcount"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in families:
            return sample.removesuffix(suffix)
    raise AssertionError(f"no family for sample {sample!r}")


def _node_series(node: Mapping[str, Any]) -> Iterator[Metric]:
    up = GaugeMetricFamily(f"{PREFIX}_workers_up", "Worker processes accepting connections")
    up.add_metric([], float(node.get("workers_up", 0)))
    yield up
    restarts = CounterMetricFamily(
        f"{PREFIX}_worker_restarts", "Worker processes the node restarted after they died"
    )
    restarts.add_metric([], float(node.get("restarts", 0)))
    yield restarts


class _Fixed:
    """A collector that yields what it was given (the merged families)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
