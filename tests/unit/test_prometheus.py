"""The Prometheus exporter: names, labels, counts, the weighted end-to-end histogram, build info,
the process collectors and no ``_created`` series; one scrape over HTTP (no broker)."""

from __future__ import annotations

import platform
import urllib.request
from collections import Counter
from collections.abc import Iterator
from importlib import metadata

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import enable_created_metrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import loginpipe
from loginpipe.core.batch import BatchResult
from loginpipe.observe.prometheus import Exporter, instance_id

LABELS = {"group": "logins", "instance_id": "worker-a"}
E2E = "loginpipe_end_to_end_latency_seconds"


def exporter(**gauges) -> Exporter:
    defaults = {"lag": lambda: 0, "tracked_users": lambda: 0, "tracked_devices": lambda: 0}
    return Exporter(**{**defaults, **gauges}, group=LABELS["group"], instance=LABELS["instance_id"])


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def values(exp: Exporter) -> dict[tuple[str, tuple], float]:
    """{(name, labels other than group and instance_id): value} of the loginpipe_* series."""
    found = {}
    for s in samples(generate_latest(exp.registry).decode()):
        if s.name.startswith("loginpipe_"):
            assert {k: s.labels[k] for k in LABELS} == LABELS, s
            rest = tuple(sorted((k, v) for k, v in s.labels.items() if k not in LABELS))
            found[(s.name, rest)] = s.value
    return found


def test_counts_follow_the_batches() -> None:
    exp = exporter(lag=lambda: 42, tracked_users=lambda: 7, tracked_devices=lambda: 8,
                   in_flight=lambda: 5, not_writing=lambda: 12.5, replacements=lambda: 1)
    first = BatchResult(consumed=10, processed=6, filtered=3, dead_lettered=1,
                        reasons=Counter({"not_mobile": 3, "invalid_json": 1}))
    second = BatchResult(consumed=5, processed=5)
    exp.record(first, 0.004)
    exp.record(second, 0.002)
    exp.acknowledge(first)  # the second batch is still in flight
    got = values(exp)
    assert got[("loginpipe_records_consumed_total", ())] == 10
    assert got[("loginpipe_records_processed_total", ())] == 6
    assert got[("loginpipe_in_flight_records", ())] == 5
    assert got[("loginpipe_not_writing_seconds", ())] == 12.5
    assert got[("loginpipe_producer_replacements", ())] == 1
    assert got[("loginpipe_records_filtered_total", (("reason", "not_mobile"),))] == 3
    assert got[("loginpipe_records_filtered_total", (("reason", "stale"),))] == 0
    assert got[("loginpipe_records_dead_lettered_total", (("reason", "invalid_json"),))] == 1
    assert got[("loginpipe_batch_size_records_bucket", (("le", "10.0"),))] == 2
    assert got[("loginpipe_batch_processing_seconds_count", ())] == 2
    assert got[("loginpipe_consumer_lag_records", ())] == 42
    assert got[("loginpipe_state_tracked_users", ())] == 7
    assert got[("loginpipe_state_tracked_devices", ())] == 8


def test_two_exporters_do_not_share_metrics() -> None:
    one, two = exporter(), exporter()
    one.acknowledge(BatchResult(consumed=3))
    one.record(BatchResult(consumed=3), 0.001, [5.0], 3)
    assert values(two)[("loginpipe_records_consumed_total", ())] == 0
    assert values(two)[(f"{E2E}_count", ())] == 0


def test_transactions_by_outcome_with_their_size_and_commit_time() -> None:
    exp = exporter()
    exp.transaction(True, 400, 0.03)
    exp.transaction(True, 600, 0.05)
    exp.transaction(False, 999, 0.0)
    got = values(exp)
    assert got[("loginpipe_transactions_total", (("outcome", "committed"),))] == 2
    assert got[("loginpipe_transactions_total", (("outcome", "aborted"),))] == 1
    assert got[("loginpipe_transaction_records_total", ())] == 1000  # committed ones only
    assert got[("loginpipe_transaction_commit_seconds_count", ())] == 2


def bucket(got: dict, le: str) -> float:
    return got[(f"{E2E}_bucket", (("le", le),))]


def test_each_end_to_end_sample_counts_as_the_records_it_stands_for() -> None:
    exp = exporter()
    exp.record(BatchResult(consumed=600), 0.01, [3.0, 12.0, 40.0], 200)  # 3 samples of 600 records
    exp.record(BatchResult(consumed=2), 0.01, [5.0, 70_000.0], 1)
    got = values(exp)
    assert got[(f"{E2E}_count", ())] == 602
    assert got[(f"{E2E}_sum", ())] == pytest.approx((3 + 12 + 40) * 200 / 1000 + (5 + 70_000) / 1000)
    assert bucket(got, "0.005") == 201  # 3 ms x 200, and 5 ms: a bucket holds what is <= its bound
    assert bucket(got, "0.015") == 401
    assert bucket(got, "0.05") == 601
    assert bucket(got, "60.0") == 601 and bucket(got, "+Inf") == 602


def test_a_latency_below_zero_counts_as_zero() -> None:
    """The producer's clock ahead of ours: the record counts in the first bucket, adds nothing to the sum."""
    exp = exporter()
    exp.record(BatchResult(consumed=4), 0.01, [-8.0, 10.0], 2)
    got = values(exp)
    assert bucket(got, "0.005") == 2 and got[(f"{E2E}_count", ())] == 4
    assert got[(f"{E2E}_sum", ())] == pytest.approx(0.02)


def test_build_info_names_the_version_python_and_kafka_client() -> None:
    info = {dict(labels)["version"]: (labels, v) for (name, labels), v in values(exporter()).items()
            if name == "loginpipe_build_info"}
    assert list(info) == [loginpipe.__version__]
    labels, value = info[loginpipe.__version__]
    assert value == 1
    assert dict(labels) == {"version": loginpipe.__version__, "python": platform.python_version(),
                            "kafka_client": "kafka-python",
                            "kafka_client_version": metadata.version("kafka-python")}


def test_no_created_series_even_when_the_client_library_would_add_them() -> None:
    enable_created_metrics()  # the library's process-wide default (PROMETHEUS_DISABLE_CREATED_SERIES unset)
    exp = exporter()
    exp.acknowledge(BatchResult(consumed=1))
    names = {s.name for s in samples(generate_latest(exp.registry).decode())}
    assert "loginpipe_records_consumed_total" in names
    assert not [n for n in names if n.endswith("_created")]


def test_the_instance_id_is_the_static_id_else_host_and_child_index_else_host_and_pid() -> None:
    assert instance_id("worker-a-p1", "1", host="h", pid=7) == "worker-a-p1"
    assert instance_id(None, "2", host="h", pid=7) == "h-p2"
    assert instance_id(None, None, host="h", pid=7) == "h-7"
    assert instance_id("", None, host="h", pid=7) == "h-7"


def scrape(port: int, accept: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


FORMATS = {"text/plain": text_string_to_metric_families,
           "application/openmetrics-text; version=1.0.0": openmetrics_families}


@pytest.mark.parametrize("accept", list(FORMATS))
def test_a_scrape_over_http_has_what_an_sre_expects(accept: str) -> None:
    """Both formats: Prometheus 3 asks for OpenMetrics first, where ``_created`` would also appear."""
    exp = exporter()
    exp.record(BatchResult(consumed=300, processed=200), 0.01, [20.0, 30.0], 100)
    exp.acknowledge(BatchResult(consumed=300, processed=200))
    exp.serve(0)
    try:
        text = scrape(exp.port, accept)
    finally:
        exp.close()
    found = [s for family in FORMATS[accept](text) for s in family.samples]
    by_name = {s.name: s for s in found}
    assert (by_name[f"{E2E}_count"].labels, by_name[f"{E2E}_count"].value) == (LABELS, 200)
    assert by_name["loginpipe_build_info"].labels["kafka_client"] == "kafka-python"
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
            "python_info", "python_gc_collections_total"} <= by_name.keys()
    assert all(s.labels.items() >= LABELS.items() for s in found if s.name.startswith("loginpipe_"))
    assert "_created" not in text
