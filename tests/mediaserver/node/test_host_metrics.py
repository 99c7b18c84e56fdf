"""Merging every worker's exposition into the host's: counters add up, gauges say whose."""

from prometheus_client.parser import text_string_to_metric_families

from mediaserver.metrics import Metrics
from mediaserver.node.host_metrics import merge_expositions


def samples(body):
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def worker_metrics(admitted, refused, lag_s):
    metrics = Metrics()
    for _ in range(admitted):
        metrics.call_admitted()
    for reason in refused:
        metrics.call_refused(reason)
    metrics.loop_lag(lag_s)
    return metrics.render().decode()


def test_counters_and_histograms_add_up_across_workers():
    merged = samples(
        merge_expositions(
            {
                1: worker_metrics(3, ["capacity"], 0.002),
                2: worker_metrics(4, ["capacity", "load"], 0.2),
            }
        )
    )
    assert merged[("mediaserver_calls_admitted_total", ())] == 7
    assert merged[("mediaserver_calls_refused_total", (("reason", "capacity"),))] == 2
    assert merged[("mediaserver_calls_refused_total", (("reason", "load"),))] == 1
    assert merged[("mediaserver_event_loop_lag_seconds_count", ())] == 2
    assert merged[("mediaserver_event_loop_lag_seconds_bucket", (("le", "0.005"),))] == 1
    assert merged[("mediaserver_event_loop_lag_seconds_bucket", (("le", "0.25"),))] == 2
    assert abs(merged[("mediaserver_event_loop_lag_seconds_sum", ())] - 0.202) < 1e-9


def test_gauges_are_labelled_by_worker_except_those_whose_sum_is_the_hosts():
    calls = (
        "# HELP mediaserver_calls_active Calls live now\n"
        "# TYPE mediaserver_calls_active gauge\n"
        "mediaserver_calls_active {n}\n"
        "# HELP mediaserver_mailbox_depth_max deepest\n"
        "# TYPE mediaserver_mailbox_depth_max gauge\n"
        'mediaserver_mailbox_depth_max{{actor="ingest"}} {n}\n'
    )
    merged = samples(merge_expositions({1: calls.format(n=2), 2: calls.format(n=5)}))
    assert merged[("mediaserver_calls_active", ())] == 7
    assert merged[("mediaserver_mailbox_depth_max", (("actor", "ingest"), ("worker", "1")))] == 2
    assert merged[("mediaserver_mailbox_depth_max", (("actor", "ingest"), ("worker", "2")))] == 5
    assert ("mediaserver_mailbox_depth_max", (("actor", "ingest"),)) not in merged


def test_the_nodes_facts_are_series_of_their_own():
    merged = samples(merge_expositions({1: ""}, node={"workers_up": 2, "restarts": 3}))
    assert merged[("mediaserver_workers_up", ())] == 2
    assert merged[("mediaserver_worker_restarts_total", ())] == 3


def test_an_unreadable_exposition_costs_its_series_not_the_scrape():
    merged = samples(merge_expositions({1: worker_metrics(1, [], 0.001), 2: "this is { not"}))
    assert merged[("mediaserver_calls_admitted_total", ())] == 1
