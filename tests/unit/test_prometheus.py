"""The Prometheus exporter: names, labels and counts (without an HTTP server)."""

from __future__ import annotations

from collections import Counter

from prometheus_client import generate_latest

from loginpipe.core.batch import BatchResult
from loginpipe.observe.prometheus import Exporter


def test_counts_follow_the_batches() -> None:
    exporter = Exporter(lag=lambda: 42, tracked_users=lambda: 7, tracked_devices=lambda: 8,
                        in_flight=lambda: 5, not_writing=lambda: 12.5, replacements=lambda: 1)
    first = BatchResult(consumed=10, processed=6, filtered=3, dead_lettered=1,
                        reasons=Counter({"not_mobile": 3, "invalid_json": 1}))
    second = BatchResult(consumed=5, processed=5)
    exporter.record(first, 0.004)
    exporter.record(second, 0.002)
    exporter.acknowledge(first)  # the second batch is still in flight
    text = generate_latest(exporter.registry).decode()
    assert "loginpipe_records_consumed_total 10.0" in text
    assert "loginpipe_records_processed_total 6.0" in text
    assert "loginpipe_in_flight_records 5.0" in text and "loginpipe_not_writing_seconds 12.5" in text
    assert "loginpipe_producer_replacements 1.0" in text
    assert 'loginpipe_records_filtered_total{reason="not_mobile"} 3.0' in text
    assert 'loginpipe_records_filtered_total{reason="stale"} 0.0' in text
    assert 'loginpipe_records_dead_lettered_total{reason="invalid_json"} 1.0' in text
    assert 'loginpipe_batch_size_records_bucket{le="10.0"} 2.0' in text
    assert "loginpipe_batch_processing_seconds_count 2.0" in text
    assert "loginpipe_consumer_lag_records 42.0" in text
    assert "loginpipe_state_tracked_users 7.0" in text and "loginpipe_state_tracked_devices 8.0" in text


def test_two_exporters_do_not_share_metrics() -> None:
    one = Exporter(lag=lambda: 0, tracked_users=lambda: 0, tracked_devices=lambda: 0)
    two = Exporter(lag=lambda: 0, tracked_users=lambda: 0, tracked_devices=lambda: 0)
    one.acknowledge(BatchResult(consumed=3))
    assert "loginpipe_records_consumed_total 0.0" in generate_latest(two.registry).decode()


def test_transactions_by_outcome_with_their_size_and_commit_time() -> None:
    exporter = Exporter(lag=lambda: 0, tracked_users=lambda: 0, tracked_devices=lambda: 0)
    exporter.transaction(True, 400, 0.03)
    exporter.transaction(True, 600, 0.05)
    exporter.transaction(False, 999, 0.0)
    text = generate_latest(exporter.registry).decode()
    assert 'loginpipe_transactions_total{outcome="committed"} 2.0' in text
    assert 'loginpipe_transactions_total{outcome="aborted"} 1.0' in text
    assert "loginpipe_transaction_records_total 1000.0" in text  # committed ones only
    assert "loginpipe_transaction_commit_seconds_count 2.0" in text
