"""The Prometheus exporter: names, labels and counts (without an HTTP server)."""

from __future__ import annotations

from collections import Counter

from prometheus_client import generate_latest

from loginpipe.pipeline import BatchResult
from loginpipe.prometheus import Exporter


def test_counts_follow_the_batches() -> None:
    exporter = Exporter(lag=lambda: 42, tracked_users=lambda: 7, tracked_devices=lambda: 8)
    exporter.record(BatchResult(consumed=10, processed=6, filtered=3, dead_lettered=1,
                                reasons=Counter({"not_mobile": 3, "invalid_json": 1})), 0.004)
    exporter.record(BatchResult(consumed=5, processed=5), 0.002)
    text = generate_latest(exporter.registry).decode()
    assert "loginpipe_records_consumed_total 15.0" in text
    assert "loginpipe_records_processed_total 11.0" in text
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
    one.record(BatchResult(consumed=3), 0.001)
    assert "loginpipe_records_consumed_total 0.0" in generate_latest(two.registry).decode()
