"""Stats lines: percentiles, when a line is printed, and what it says."""

from __future__ import annotations

import io
from collections import Counter

from loginpipe.core.batch import BatchResult
from loginpipe.observe.stats import Stats, Totals, format_summary, weighted_percentile


class FixedSampler:
    def read(self):
        return (12.0, 50 * 2**20, 30.0)


def batch(n: int) -> BatchResult:
    return BatchResult(consumed=n, processed=n - 2, filtered=1, dead_lettered=1)


def test_percentiles() -> None:
    assert weighted_percentile([], 0.99) == 0.0
    assert weighted_percentile([(float(v), 1) for v in range(1, 101)], 0.99) == 99
    assert weighted_percentile([(1.0, 99), (50.0, 1)], 0.5) == 1.0
    assert weighted_percentile([(1.0, 98), (50.0, 2)], 0.99) == 50.0


def test_a_line_every_n_messages_not_more_than_one_per_batch() -> None:
    out = io.StringIO()
    stats = Stats(stats_every=100, out=out, sampler=FixedSampler())
    for _ in range(5):
        stats.record(batch(40), 0.001, [5.0] * 40)  # 200 messages: lines at 120 and 200
        stats.acknowledge(batch(40))
    stats.record(batch(1000), 0.002, [7.0] * 1000)  # crosses ten multiples: one line
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("[stats] 1,200 msgs")
    assert "cpu 12% rss 50 MiB mem 30%" in lines[-1]
    # Only acknowledged batches count as processed; the last one is still in flight.
    assert "processed 190 filtered 5 dlq 5 in flight 1,000" in lines[-1]


def test_not_writing_is_said_on_the_line() -> None:
    out = io.StringIO()
    stats = Stats(stats_every=10, out=out, sampler=FixedSampler())
    stats.not_writing_s = 42.0
    stats.record(batch(10), 0.001, [])
    assert out.getvalue().rstrip().endswith("| not writing for 42s")


def test_time_based_mode_prints_on_tick_only() -> None:
    now = [0.0]
    out = io.StringIO()
    stats = Stats(interval_s=5, out=out, sampler=FixedSampler(), clock=lambda: now[0])
    stats.record(batch(500), 0.001, [1.0] * 500)
    stats.tick()
    assert out.getvalue() == ""
    now[0] = 5.0
    stats.tick()
    assert "100 msg/s now" in out.getvalue()


def test_summary_mentions_every_count() -> None:
    totals = Totals(consumed=10, processed=7, filtered=2, dead_lettered=1,
                    reasons=Counter({"not_mobile": 2, "invalid_ip": 1}))
    aggregates = {"top_app_versions": [("2.3.0", 7)], "top_locales": [], "device_types": [("ios", 7)],
                  "multi_ip_users": 3, "shared_devices": 1, "tracked_users": 5, "tracked_devices": 4}
    text = format_summary(totals, 2.0, aggregates)
    assert "consumed 10 in 2.0s (5 msg/s): processed 7, filtered 2, dead-lettered 1\n" in text
    assert "more read but not acknowledged" in format_summary(totals, 2.0, aggregates, in_flight=3)
    assert "multi-IP users: 3   shared devices: 1" in text
    assert "filtered by:      not_mobile 2" in text and "dead-lettered by: invalid_ip 1" in text


def test_end_to_end_samples_of_big_batches_weigh_more() -> None:
    stats = Stats(enabled=False, metrics=True, sampler=FixedSampler())
    stats.record(batch(10), 0.001, [5.0] * 10, e2e_weight=1)  # a small, fast batch
    stats.record(batch(2000), 0.05, [900.0] * 10, e2e_weight=200)  # a big, slow one, sampled
    metrics = stats.metrics()
    assert metrics["end_to_end_ms_p50"] == 900.0 and metrics["end_to_end_ms_max"] == 900.0


def test_transactions_show_on_the_line_the_summary_and_the_metrics() -> None:
    out = io.StringIO()
    stats = Stats(stats_every=100, out=out, sampler=FixedSampler(), metrics=True)
    stats.transaction(True, 300, 0.02)
    stats.transaction(True, 100, 0.04)
    stats.transaction(False, 50, 0.0)
    stats.record(batch(150), 0.001, [1.0])
    stats.unread(50)  # read in the aborted transaction: read again later
    assert stats.in_flight == 100
    assert out.getvalue().splitlines()[-1].endswith("| txn 2 ok 1 aborted")
    metrics = stats.metrics()
    assert metrics["transactions_committed_total"] == 2 and metrics["transactions_aborted_total"] == 1
    assert metrics["transaction_records_avg"] == 200 and metrics["transaction_ms_avg"] == 30
    text = format_summary(stats.totals_copy(), 1.0, {
        "top_app_versions": [], "top_locales": [], "device_types": [], "multi_ip_users": 0,
        "shared_devices": 0, "tracked_users": 0, "tracked_devices": 0})
    assert "transactions: 2 committed (200 outputs, 30 ms on average), 1 aborted" in text


def test_no_transaction_line_at_least_once() -> None:
    out = io.StringIO()
    stats = Stats(stats_every=100, out=out, sampler=FixedSampler())
    stats.record(batch(150), 0.001, [1.0])
    assert "txn" not in out.getvalue()
    assert "transactions" not in format_summary(stats.totals_copy(), 1.0, {
        "top_app_versions": [], "top_locales": [], "device_types": [], "multi_ip_users": 0,
        "shared_devices": 0, "tracked_users": 0, "tracked_devices": 0})
