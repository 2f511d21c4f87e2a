"""The confluent-kafka backend without a broker: settings, the missing extra, deliveries, records
adapted from librdkafka's messages, errors, and the rebalance and seek bridging (fake clients)."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from loginpipe import cli, commands
from loginpipe.config import PipelineConfig, pipeline_config
from loginpipe.core.records import OutputRecord
from loginpipe.kafka import confluent
from loginpipe.kafka.backends import MISSING_CONFLUENT, make_backend
from loginpipe.kafka.base import ClientError, CommitRejected, NotAuthorized, NotQueued, TopicPartition
from loginpipe.kafka.confluent import (
    ConfluentConsumer,
    ConfluentProducer,
    Delivery,
    Record,
    adapt,
    client_error,
    confluent_options,
    consumer_options,
    producer_options,
    transactional_options,
)
from loginpipe.kafka.settings import Connection

# ------------------------------------------------------------------ settings


def test_plaintext_is_just_the_servers() -> None:
    assert confluent_options("h:1") == {"bootstrap.servers": "h:1", "security.protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram_and_a_ca() -> None:
    options = confluent_options(Connection("h:1", "SASL_SSL", "SCRAM-SHA-512", "user", "secret",
                                           ssl_cafile="/ca.pem"))
    assert options == {"bootstrap.servers": "h:1", "security.protocol": "SASL_SSL",
                       "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "user", "sasl.password": "secret",
                       "ssl.ca.location": "/ca.pem", "ssl.endpoint.identification.algorithm": "https"}


def test_sasl_plaintext_has_no_tls_settings() -> None:
    options = confluent_options(Connection("h:1", "SASL_PLAINTEXT", "PLAIN", "user", "secret"))
    assert options == {"bootstrap.servers": "h:1", "security.protocol": "SASL_PLAINTEXT",
                       "sasl.mechanism": "PLAIN", "sasl.username": "user", "sasl.password": "secret"}


def test_mutual_tls_without_a_ca_file_probes_the_system_store_and_may_skip_the_hostname() -> None:
    options = confluent_options(Connection("h:1", "SSL", ssl_certfile="/c.pem", ssl_keyfile="/k.pem",
                                           ssl_key_password="kp", ssl_check_hostname=False))
    assert options == {"bootstrap.servers": "h:1", "security.protocol": "SSL", "ssl.ca.location": "probe",
                       "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem",
                       "ssl.key.password": "kp", "ssl.endpoint.identification.algorithm": "none"}


def test_the_consumer_commits_only_explicitly_and_joins_statically() -> None:
    config = PipelineConfig(connection="h:1", group_id="g", group_instance_id="node",
                            processing_guarantee="exactly-once")
    options = consumer_options(config, 2)
    assert {k: options[k] for k in ("group.id", "group.instance.id", "enable.auto.commit",
                                    "enable.auto.offset.store", "auto.offset.reset", "isolation.level",
                                    "session.timeout.ms", "heartbeat.interval.ms")} == {
        "group.id": "g", "group.instance.id": "node-2", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed", "session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000}
    assert "group.instance.id" not in consumer_options(PipelineConfig(), 0)
    assert consumer_options(PipelineConfig(), 0)["isolation.level"] == "read_uncommitted"


def test_the_producer_has_the_measured_settings_and_javas_partitioner() -> None:
    options = producer_options(PipelineConfig(linger_ms=7, batch_size=1000, delivery_timeout_ms=40_000), "p")
    assert {k: options[k] for k in ("acks", "enable.idempotence", "compression.type", "linger.ms",
                                    "batch.size", "message.timeout.ms", "partitioner")} == {
        "acks": "all", "enable.idempotence": True, "compression.type": "snappy", "linger.ms": 7,
        "batch.size": 1000, "message.timeout.ms": 40_000, "partitioner": "murmur2_random"}


def test_a_transactional_record_never_outlives_its_transaction() -> None:
    options = transactional_options(PipelineConfig(delivery_timeout_ms=30_000), "t-0")
    assert options["transactional.id"] == "t-0"
    assert options["message.timeout.ms"] <= options["transaction.timeout.ms"] == 15_000


def test_the_client_flag_and_its_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pipeline_config([]).client == "kafka-python"
    assert pipeline_config(["--client", "confluent"]).client == "confluent"
    monkeypatch.setenv("KAFKA_CLIENT", "confluent")
    assert pipeline_config([]).client == "confluent"


# ------------------------------------------------------------------ the missing extra


@pytest.fixture
def without_confluent(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if confluent-kafka were not installed: importing it fails."""
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    monkeypatch.delitem(sys.modules, "loginpipe.kafka.confluent")


@pytest.mark.usefixtures("without_confluent")
def test_the_missing_extra_is_named_with_its_install_command() -> None:
    with pytest.raises(Exception) as caught:
        make_backend("confluent")
    assert str(caught.value) == MISSING_CONFLUENT
    assert make_backend("kafka-python") is not None


@pytest.mark.usefixtures("without_confluent")
def test_the_consumer_command_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = commands.main(["consume", "--client", "confluent", "--bootstrap-servers", "127.0.0.1:1"])
    finally:
        cli.invoked_as(None)  # the dispatcher names every parser built afterwards
    err = capsys.readouterr().err
    assert code != 0
    assert err.strip().splitlines() == [f"error: {MISSING_CONFLUENT}"]


# ------------------------------------------------------------------ deliveries and errors


@pytest.mark.parametrize(("code", "expected"), [
    (KafkaError.ILLEGAL_GENERATION, CommitRejected), (KafkaError.UNKNOWN_MEMBER_ID, CommitRejected),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, NotAuthorized),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, NotAuthorized),
    (KafkaError._TRANSPORT, ClientError), (KafkaError._TIMED_OUT, ClientError)])
def test_errors_map_to_the_seams(code: int, expected: type) -> None:
    mapped = client_error(KafkaException(KafkaError(code)))
    assert type(mapped) is expected
    assert KafkaError(code).name() in str(mapped)


def test_an_exception_without_a_kafka_error_is_a_client_error() -> None:
    assert type(client_error(KafkaException("odd"))) is ClientError


def test_a_delivery_is_pending_until_its_report() -> None:
    ok, refused, denied = Delivery(), Delivery(), Delivery()
    assert not (ok.is_done or ok.succeeded() or ok.failed())
    ok.report(None, object())
    refused.report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), object())
    denied.report(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), object())
    assert ok.is_done and ok.succeeded() and not ok.failed() and ok.exception is None
    assert refused.failed() and isinstance(refused.exception, ClientError)
    assert isinstance(denied.exception, NotAuthorized)


# ------------------------------------------------------------------ records


@dataclass
class FakeMessage:
    """librdkafka's Message: values behind methods."""

    t: str
    p: int
    o: int
    ts: int = 1_700_000_000_000
    k: bytes | None = b"k"
    v: bytes | None = b"v"
    err: KafkaError | None = None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts)

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v

    def error(self) -> KafkaError | None:
        return self.err


def test_messages_become_records_by_partition_in_order_without_error_events() -> None:
    eof = KafkaError(KafkaError._PARTITION_EOF)
    messages = [FakeMessage("a", 0, 5), FakeMessage("a", 1, 9, v=None), FakeMessage("a", 0, 6, ts=7),
                FakeMessage("a", 0, 7, err=eof), FakeMessage("b", 0, 1, k=None)]
    polled, error = adapt(messages)
    assert polled == {
        TopicPartition("a", 0): [Record("a", 0, 5, 1_700_000_000_000, b"k", b"v"),
                                 Record("a", 0, 6, 7, b"k", b"v")],
        TopicPartition("a", 1): [Record("a", 1, 9, 1_700_000_000_000, b"k", None)],
        TopicPartition("b", 0): [Record("b", 0, 1, 1_700_000_000_000, None, b"v")]}
    assert error is eof
    record = polled[TopicPartition("a", 0)][1]
    assert (record.topic, record.partition, record.offset, record.timestamp) == ("a", 0, 6, 7)


# ------------------------------------------------------------------ the consumer's bridging


@dataclass
class FakeConsumer:
    """librdkafka's consumer as far as ConfluentConsumer drives it."""

    config: dict
    queue: list = field(default_factory=list)  # what poll/consume hand out
    committed_offsets: list = field(default_factory=list)
    seeks: list = field(default_factory=list)
    refuse_seeks: bool = False
    callbacks: dict = field(default_factory=dict)
    assigned: list = field(default_factory=list)

    def subscribe(self, topics: list, **callbacks: Any) -> None:
        self.callbacks = callbacks

    def assign(self, partitions: list) -> None:
        self.assigned = partitions

    def assignment(self) -> list:
        return self.assigned

    def pause(self, partitions: list) -> None:
        pass

    resume = pause

    def commit(self, offsets: list, asynchronous: bool) -> None:
        assert not asynchronous
        self.committed_offsets.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def seek(self, tp: Any) -> None:
        if self.refuse_seeks:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def poll(self, timeout: float) -> Any:
        return self.queue.pop(0) if self.queue else None

    def consume(self, num_messages: int, timeout: float) -> list:
        taken, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return taken


@dataclass
class Listener:
    calls: list = field(default_factory=list)
    to_commit: dict = field(default_factory=dict)

    def assigned(self, partitions: list) -> None:
        self.calls.append(("assigned", sorted(partitions)))

    def revoking(self, partitions: list) -> dict:
        self.calls.append(("revoking", sorted(partitions)))
        return self.to_commit

    def handed_over(self, offsets: dict, error: ClientError | None) -> None:
        self.calls.append(("handed_over", offsets, error))

    def lost(self, partitions: list) -> None:
        self.calls.append(("lost", sorted(partitions)))


def subscribed() -> tuple[ConfluentConsumer, FakeConsumer, Listener]:
    made: list[FakeConsumer] = []
    consumer = ConfluentConsumer({}, make=lambda config: made.append(FakeConsumer(config)) or made[0])
    listener = Listener()
    consumer.subscribe(["in"], listener)
    return consumer, made[0], listener


def tps(*partitions: int) -> list:
    return [confluent.ConfluentTopicPartition("in", p) for p in partitions]


def test_a_revocation_commits_what_the_listener_returns_then_hands_over() -> None:
    _consumer, fake, listener = subscribed()
    fake.callbacks["on_assign"](fake, tps(0, 1))
    listener.to_commit = {TopicPartition("in", 0): 42}
    fake.callbacks["on_revoke"](fake, tps(0, 1))
    assert listener.calls == [("assigned", [("in", 0), ("in", 1)]), ("revoking", [("in", 0), ("in", 1)]),
                              ("handed_over", {("in", 0): 42}, None)]
    assert fake.committed_offsets == [{("in", 0): 42}]


def test_lost_partitions_commit_nothing() -> None:
    _consumer, fake, listener = subscribed()
    listener.to_commit = {TopicPartition("in", 0): 42}
    fake.callbacks["on_lost"](fake, tps(0))
    assert listener.calls == [("lost", [("in", 0)])]
    assert fake.committed_offsets == []


def test_a_rejected_commit_in_a_revocation_is_handed_over_as_such() -> None:
    _consumer, fake, listener = subscribed()
    listener.to_commit = {TopicPartition("in", 0): 42}

    def reject(offsets: list, asynchronous: bool) -> None:
        raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))

    fake.commit = reject
    fake.callbacks["on_revoke"](fake, tps(0))
    assert isinstance(listener.calls[-1][2], CommitRejected)


def test_closing_leaves_the_listener_out() -> None:
    consumer, fake, listener = subscribed()
    fake.close = lambda: fake.callbacks["on_revoke"](fake, tps(0))
    consumer.close(1.0)
    assert listener.calls == []


def test_poll_takes_the_first_record_then_what_is_fetched() -> None:
    consumer, fake, _ = subscribed()
    fake.queue = [FakeMessage("in", 0, o) for o in range(5)]
    polled = consumer.poll(100, 3)
    assert [r.offset for r in polled[TopicPartition("in", 0)]] == [0, 1, 2]
    assert consumer.poll(100, 10)[TopicPartition("in", 0)][-1].offset == 4
    assert consumer.poll(100, 10) == {}


def test_a_seek_librdkafka_cannot_take_yet_waits_and_its_partition_is_not_passed_on() -> None:
    consumer, fake, _ = subscribed()
    fake.refuse_seeks = True
    consumer.seek(TopicPartition("in", 0), 7)
    fake.queue = [FakeMessage("in", 0, 3), FakeMessage("in", 1, 3)]
    assert list(consumer.poll(100, 10)) == [TopicPartition("in", 1)]  # in[0] read from before the seek
    fake.refuse_seeks = False
    consumer.poll(100, 10)
    assert fake.seeks == [("in", 0, 7)]
    fake.queue = [FakeMessage("in", 0, 7)]
    assert list(consumer.poll(100, 10)) == [TopicPartition("in", 0)]


def test_an_authorization_error_beside_records_is_raised_at_the_next_poll() -> None:
    consumer, fake, _ = subscribed()
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    fake.queue = [FakeMessage("in", 0, 1), FakeMessage("in", 0, 2, err=denied)]
    assert len(consumer.poll(100, 10)[TopicPartition("in", 0)]) == 1
    with pytest.raises(NotAuthorized):
        consumer.poll(100, 10)


# ------------------------------------------------------------------ the producer


class FakeProducer:
    """Refuses ``full`` produce calls with BufferError, then queues."""

    def __init__(self, full: int = 0) -> None:
        self.full, self.produced, self.polls = full, [], 0
        self._stopped = threading.Event()

    def produce(self, topic: str, value: Any, key: Any, **kwargs: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.produced.append((topic, key, value, kwargs["partition"], kwargs["timestamp"]))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        self._stopped.wait(min(timeout, 0.01))  # librdkafka waits for events
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0

    def purge(self, **kwargs: Any) -> None:
        pass


def records(n: int) -> list[OutputRecord]:
    return [OutputRecord("out", b"k%d" % i, b"v", None, None if i % 2 else 3, None) for i in range(n)]


def test_send_batch_queues_each_record_and_waits_for_room() -> None:
    fake = FakeProducer(full=2)
    producer = ConfluentProducer(fake)
    try:
        deliveries = producer.send_batch(records(3))
    finally:
        producer.close(0)
    assert [p[3] for p in fake.produced] == [3, -1, 3]  # None: librdkafka's partitioner
    assert len(deliveries) == 3 and not any(d.failed() for d in deliveries)


def test_a_queue_that_stays_full_fails_the_record_and_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confluent, "MAX_BLOCK_S", 0.05)
    fake = FakeProducer(full=10**9)
    producer = ConfluentProducer(fake)
    try:
        deliveries = producer.send_batch(records(3))
    finally:
        producer.close(0)
    assert len(deliveries) == 3
    assert all(d.failed() and isinstance(d.exception, NotQueued) for d in deliveries)


def test_flush_with_records_left_is_a_client_error() -> None:
    fake = FakeProducer()
    fake.flush = lambda timeout=-1: 2
    producer = ConfluentProducer(fake)
    try:
        with pytest.raises(ClientError, match="2 record"):
            producer.flush(0.1)
    finally:
        producer.close(0)


def test_build_info_names_the_client_that_runs() -> None:
    from loginpipe.kafka.backends import DISTRIBUTIONS
    from loginpipe.observe.prometheus import build_labels

    labels = build_labels(DISTRIBUTIONS["confluent"])
    assert labels["kafka_client"] == "confluent-kafka"
    assert labels["kafka_client_version"] == "2.16.1"
