"""When the summary and metrics snapshots are published (a recording producer, no broker)."""

from __future__ import annotations

import orjson

from loginpipe.config import PipelineConfig
from loginpipe.core.batch import BatchResult
from loginpipe.core.state import Aggregates
from loginpipe.kafka.base import ClientError, Failed, NotQueued
from loginpipe.kafka.memory import Delivery
from loginpipe.observe.publish import Publisher
from loginpipe.observe.stats import Stats
from loginpipe.runtime.delivery import Sender


class Recorder:
    """Stands in for KafkaProducer.send: keeps what was sent, with futures resolved by hand."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, dict]] = []
        self.futures: list[Delivery] = []
        self.fail = fail

    def send_batch(self, records) -> list:
        if self.fail:
            return [Failed(NotQueued("buffer full"))] * len(records)
        for r in records:
            self.sent.append((r.topic, r.key, orjson.loads(r.value)))
            self.futures.append(Delivery(r, self))
        return self.futures[-len(records):]

    def close(self, timeout_s) -> None:
        pass


def make(config: PipelineConfig, producer: Recorder, now: list[float],
         more: list[Recorder] | None = None) -> tuple[Publisher, Stats, list]:
    """A Publisher over ``producer``; a replacement producer comes from ``more``."""
    warnings: list[str] = []
    stats = Stats(enabled=False, metrics=True, clock=lambda: now[0])
    producers = iter([producer, *(more or [])])
    sender = Sender(lambda: next(producers), warnings.append, clock=lambda: now[0])
    publisher = Publisher(config, Aggregates(), stats, sender, warnings.append, clock=lambda: now[0],
                          wall_clock=lambda: 1_800_000_000 + now[0])
    return publisher, stats, warnings


def test_summary_every_n_processed_or_t_seconds_whichever_first() -> None:
    now, producer = [0.0], Recorder()
    config = PipelineConfig(summary_topic="s", metrics_topic=None, summary_every=100, summary_interval_s=5)
    publisher, stats, _ = make(config, producer, now)
    publisher.tick()
    assert producer.sent == []
    stats.record(BatchResult(consumed=120, processed=120), 0.01, [])
    stats.acknowledge(BatchResult(consumed=120, processed=120))
    publisher.tick()  # 120 processed >= 100
    now[0] = 4.0
    publisher.tick()  # nothing new, 4 s < 5 s
    now[0] = 9.5
    publisher.tick()  # 5.5 s since the last one
    assert [t for t, _, _ in producer.sent] == ["s", "s"]
    _, key, value = producer.sent[0]
    assert key == publisher.instance.encode() and value["totals"]["processed"] == 120
    publisher.publish_summary(final=True)
    assert producer.sent[-1][2]["final"] is True


def test_metrics_every_interval() -> None:
    now, producer = [0.0], Recorder()
    config = PipelineConfig(summary_topic=None, metrics_topic="m", metrics_interval_s=5)
    publisher, stats, _ = make(config, producer, now)
    stats.record(BatchResult(consumed=50, processed=50), 0.01, [3.0] * 50)
    stats.acknowledge(BatchResult(consumed=50, processed=50))
    for t in (1.0, 4.9, 5.0, 7.0, 10.0):
        now[0] = t
        publisher.tick()
    assert [t for t, _, _ in producer.sent] == ["m", "m"]
    assert producer.sent[0][2]["consumed_total"] == 50 and producer.sent[0][2]["end_to_end_ms_p99"] == 3.0
    assert producer.sent[1][2]["batches"] == 0  # a new window after each snapshot


def test_a_send_that_cannot_queue_is_reported_not_raised_and_retried() -> None:
    now, producer = [10.0], Recorder(fail=True)
    config = PipelineConfig(summary_topic="s", metrics_topic="m", summary_interval_s=1, metrics_interval_s=1)
    publisher, _, warnings = make(config, producer, now)
    now[0] = 20.0
    publisher.tick()
    assert warnings and "cannot queue" in warnings[0] and publisher.pending == 2
    producer.fail = False
    publisher.tick()
    assert [t for t, _, _ in producer.sent] == ["s", "m"]


def test_a_failed_snapshot_delivery_replaces_the_producer_and_is_sent_again() -> None:
    now, first, second = [0.0], Recorder(), Recorder()
    config = PipelineConfig(summary_topic="s", metrics_topic="m", summary_interval_s=100,
                            metrics_interval_s=5)
    publisher, _, warnings = make(config, first, now, more=[second])
    now[0] = 5.0
    publisher.tick()
    first.futures[0].exception, first.futures[0].is_done = ClientError("Expiring 1 record(s)"), True
    publisher.settle()
    assert [t for t, _, _ in second.sent] == ["m"] and publisher.pending == 1
    assert any("replacing it" in w for w in warnings)
    second.futures[0].is_done = True
    publisher.settle()
    assert publisher.pending == 0


def test_a_newer_summary_supersedes_an_unacknowledged_one() -> None:
    now, producer = [0.0], Recorder()
    config = PipelineConfig(summary_topic="s", metrics_topic=None)
    publisher, _, _ = make(config, producer, now)
    publisher.publish_summary()
    publisher.publish_summary(final=True)
    assert publisher.pending == 1 and len(producer.sent) == 2
