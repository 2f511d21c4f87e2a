"""When the summary and metrics snapshots and the partition records are published (a recording
producer, no broker)."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from loginpipe.config import PipelineConfig
from loginpipe.core.batch import BatchResult
from loginpipe.kafka.base import ClientError, Failed, NotQueued, TopicPartition
from loginpipe.kafka.memory import Delivery
from loginpipe.observe.publish import REPUBLISH_S, Publisher
from loginpipe.observe.stats import Stats
from loginpipe.observe.summary import PARTITION_SCHEMA_ID, SCHEMA_ID
from loginpipe.runtime.delivery import Sender
from loginpipe.runtime.shared import SharedState
from loginpipe.state.stores import DeviceState, LoginState
from loginpipe.topics import InternalTopics

REP = InternalTopics.of("g").repartition
EVERY_PARTITION = [f"g/{REP}/0", "g/in/0", "g/in/1"]  # in the publisher's order (by topic name)


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
         more: list[Recorder] | None = None,
         state: SharedState | None = None) -> tuple[Publisher, Stats, list]:
    """A Publisher over ``producer``; a replacement producer comes from ``more``."""
    warnings: list[str] = []
    stats = Stats(enabled=False, metrics=True, clock=lambda: now[0])
    producers = iter([producer, *(more or [])])
    sender = Sender(lambda: next(producers), warnings.append, clock=lambda: now[0])
    publisher = Publisher(config, state or SharedState(), stats, sender, warnings.append,
                          clock=lambda: now[0], wall_clock=lambda: 1_800_000_000 + now[0])
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


# Partition records.

PARTITIONED = PipelineConfig(summary_topic="s", metrics_topic=None, group_id="g", input_topic="in")


def served() -> tuple[SharedState, LoginState, DeviceState]:
    """A process serving input partitions 0 and 1 and repartition partition 0."""
    state, logins, devices = SharedState(), LoginState(0), DeviceState(0)
    state.adopt(TopicPartition("in", 0), logins)
    state.adopt(TopicPartition("in", 1), LoginState(1))
    state.adopt(TopicPartition(REP, 0), devices)
    return state, logins, devices


def count(state: SharedState, logins: LoginState, offset: int, user: str = "u1") -> None:
    event = SimpleNamespace(app_version="2.3.0", locale="NY", user_id=user, ip=f"10.0.0.{offset}",
                            epoch_s=1_800_000_000)
    state.count(logins, [(offset, event, "ios")])


def keys(producer: Recorder) -> list[str]:
    """What was sent since the last call, by key."""
    sent = [key.decode() for _, key, _ in producer.sent]
    producer.sent.clear()
    return sent


def test_partition_records_go_with_the_summary_when_their_state_changed() -> None:
    now, producer = [0.0], Recorder()
    state, logins, devices = served()
    publisher, _, _ = make(PARTITIONED, producer, now, state=state)
    count(state, logins, 0)
    publisher.publish_summary()
    instance = publisher.instance
    assert keys(producer) == [*EVERY_PARTITION, instance]  # the instance snapshot last
    count(state, logins, 1)
    publisher.publish_summary()
    assert keys(producer) == ["g/in/0", instance]
    devices.count([(0, "kiosk", "u1"), (1, "kiosk", "u2")])
    publisher.publish_summary()
    assert keys(producer) == [f"g/{REP}/0", instance]
    publisher.publish_summary()
    assert keys(producer) == [instance]
    now[0] = REPUBLISH_S  # unchanged for an hour: published again, ahead of the topic's retention
    publisher.publish_summary()
    assert keys(producer) == [*EVERY_PARTITION, instance]
    publisher.publish_summary(final=True)
    assert keys(producer) == [*EVERY_PARTITION, instance]


def test_partition_record_fields() -> None:
    now, producer = [0.0], Recorder()
    state, logins, devices = served()
    publisher, _, _ = make(PARTITIONED, producer, now, state=state)
    count(state, logins, 0)
    count(state, logins, 1)
    devices.count([(0, "kiosk", "u1"), (1, "kiosk", "u2")])
    publisher.publish_summary()
    device, login, _, summary = (value for _, _, value in producer.sent)
    assert login == {
        "schema": PARTITION_SCHEMA_ID, "group_id": "g", "topic": "in", "partition": 0,
        "published_by": publisher.instance, "updated_at": "2027-01-15T08:00:00Z",
        "updated_epoch_s": 1_800_000_000, "kind": "logins", "events": 2,
        "by_app_version": {"2.3.0": 2}, "by_locale": {"NY": 2}, "by_device_type": {"ios": 2},
        "by_epoch_hour": {"500000": 2}, "multi_ip_users": 1, "tracked_users": 1,
        "forgotten_users": 0, "capped_users": 0,
        "top_multi_ip_users": [{"user_id": "u1", "distinct_ips": 2}]}
    assert device["kind"] == "devices" and device["topic"] == REP
    assert (device["shared_devices"], device["tracked_devices"]) == (1, 1)
    assert device["top_shared_devices"] == [{"device_id": "kiosk", "users": 2}]
    assert summary["schema"] == SCHEMA_ID and summary["partitions"] == {REP: [0], "in": [0, 1]}


def test_a_newer_partition_record_supersedes_a_waiting_one_and_none_is_resent_once_it_left() -> None:
    now, producer = [0.0], Recorder(fail=True)
    state, logins, _ = served()
    publisher, _, _ = make(PARTITIONED, producer, now, state=state)
    count(state, logins, 0)
    publisher.publish_summary()
    count(state, logins, 1)
    publisher.publish_summary()
    assert publisher.pending == 4  # one per key
    state.drop(TopicPartition("in", 1))  # a rebalance gave it to another process, which publishes it
    producer.fail = False
    publisher.settle()
    assert keys(producer) == [f"g/{REP}/0", "g/in/0", publisher.instance] and publisher.pending == 3
    assert publisher.published["partition"] == 4  # 3, then the one that changed
