"""Checkpointing and delivery: only acknowledged prefixes are committed; a failed delivery
replaces the producer and every unacknowledged output is sent again, in order; backpressure.

The consumer and producers here are small stand-ins recording calls; the real clients are
exercised against a broker in tests/integration."""

from __future__ import annotations

from loginpipe.core.records import OutputRecord
from loginpipe.kafka.base import ClientError, Failed, NotQueued, TopicPartition
from loginpipe.kafka.memory import Delivery
from loginpipe.runtime.checkpoint import Checkpointer
from loginpipe.runtime.delivery import MIN_REPLACE_INTERVAL_S, Sender

TP = TopicPartition("in", 0)


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets, timeout_s=None) -> None:
        self.commits.append(dict(offsets))


class Handle(Delivery):
    """A delivery the test settles by hand."""

    def success(self) -> None:
        self.is_done = True

    def failure(self, exc: BaseException) -> None:
        self.exception, self.is_done = exc, True


class ManualProducer:
    """Every send returns a delivery the test resolves by hand; ``refuse`` refuses to queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[bytes] = []
        self.futures: list[Handle] = []
        self.closed = False
        self.refuse = False

    def send_batch(self, records) -> list:
        if self.refuse:
            return [Failed(NotQueued("no metadata"))] * len(records)
        for r in records:
            self.sent.append(r.value)
            self.futures.append(Handle(r, self))
        return self.futures[-len(records):] if records else []

    def flush(self, timeout_s) -> None:
        pass

    def close(self, timeout_s) -> None:
        self.closed = True
        for future in self.futures:
            if not future.is_done:
                future.failure(ClientError("producer closed"))

    def ack_all(self) -> None:
        for future in self.futures:
            if not future.is_done:
                future.success()


class Setup:
    def __init__(self, every: int = 1, max_records: int = 1000) -> None:
        self.now = [0.0]
        self.producers: list[ManualProducer] = []
        self.consumer = RecordingConsumer()
        self.acked: list = []
        self.warnings: list[str] = []
        self.sender = Sender(self._make, self.warnings.append, clock=lambda: self.now[0])
        self.checkpointer = Checkpointer(self.consumer, self.sender, every, 3600, self.warnings.append,
                                         on_acked=self.acked.append, clock=lambda: self.now[0],
                                         max_records=max_records, max_bytes=10**9)

    def _make(self) -> ManualProducer:
        self.producers.append(ManualProducer(f"p{len(self.producers)}"))
        return self.producers[-1]

    @property
    def producer(self) -> ManualProducer:
        return self.producers[-1]

    def send(self, next_offset: int, values: list[bytes], counts: str = "batch") -> None:
        records = [OutputRecord("out", b"k", v) for v in values]
        self.checkpointer.send({TP: next_offset}, records, counts, len(values))


def test_nothing_is_committed_or_counted_until_every_output_is_acknowledged() -> None:
    s = Setup()
    s.send(10, [b"a", b"b"])
    s.producer.futures[0].success()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [] and s.acked == []
    s.producer.futures[1].success()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [{TP: 10}] and s.acked == ["batch"]


def test_only_the_acknowledged_prefix_is_committed() -> None:
    s = Setup()
    s.send(10, [b"a", b"b"], "first")
    s.send(20, [b"c", b"d"], "second")
    for future in s.producer.futures[2:]:
        future.success()  # the later batch is done, the earlier one is not
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [] and s.acked == []
    for future in s.producer.futures[:2]:
        future.success()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [{TP: 20}] and s.acked == ["first", "second"]


def test_a_failed_delivery_replaces_the_producer_and_resends_everything_unacknowledged_in_order() -> None:
    s = Setup()
    s.send(10, [b"a", b"b"])
    s.send(20, [b"c", b"d"])
    old = s.producer
    old.futures[0].success()  # "a" made it
    old.futures[3].success()  # so did "d", but it is from a batch not yet complete
    old.futures[1].failure(ClientError("Expiring 1 record(s)"))
    s.checkpointer.collect()
    assert len(s.producers) == 2 and old.closed, "the failed producer was replaced"
    assert s.producer.sent == [b"b", b"c"], "everything not acknowledged, in order"
    s.send(30, [b"e"])
    assert s.producer.sent[-1] == b"e", "new outputs only after the old ones"
    s.producer.ack_all()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [{TP: 30}] and len(s.acked) == 3


def test_a_replacement_by_another_worker_makes_this_one_resend_before_anything_new() -> None:
    s = Setup()
    s.send(10, [b"a", b"b"])
    s.sender.replace(s.sender.generation, "stalled")  # as the supervisor or another worker would
    s.send(20, [b"c"])
    assert s.producer.sent == [b"a", b"b", b"c"]
    s.producer.ack_all()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [{TP: 20}]


def test_replacements_are_rate_limited_and_a_failure_in_between_is_resent_in_place() -> None:
    s = Setup()
    s.send(10, [b"a"])
    s.producer.futures[0].failure(ClientError("boom"))
    s.checkpointer.collect()
    assert len(s.producers) == 2
    s.producer.futures[0].failure(ClientError("boom again"))
    s.checkpointer.collect()
    assert len(s.producers) == 2 and s.producer.sent == [b"a", b"a"]  # same producer, sent again
    s.now[0] += MIN_REPLACE_INTERVAL_S
    s.producer.futures[1].failure(ClientError("still"))
    s.checkpointer.collect()
    assert len(s.producers) == 3 and s.producer.sent == [b"a"]


def test_a_record_that_cannot_be_queued_is_retried_without_replacing_the_producer() -> None:
    s = Setup()
    s.producer.refuse = True
    s.send(10, [b"a", b"b"])
    s.producer.refuse = False
    s.checkpointer.collect()
    assert len(s.producers) == 1 and s.producer.sent == [b"a", b"b"]
    assert any("cannot queue" in w for w in s.warnings)
    s.producer.ack_all()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [{TP: 10}]


def test_over_limit_until_half_is_acknowledged() -> None:
    s = Setup(max_records=4)
    s.send(1, [b"a", b"b", b"c"])
    assert not s.checkpointer.over_limit
    s.send(2, [b"d", b"e"])
    assert s.checkpointer.over_limit and not s.checkpointer.below_resume
    for future in s.producer.futures[:3]:
        future.success()
    s.checkpointer.collect()
    assert not s.checkpointer.over_limit and s.checkpointer.below_resume


def test_stalled_for_counts_from_the_last_acknowledgement_while_outputs_wait() -> None:
    s = Setup()
    assert s.checkpointer.stalled_for() == 0.0
    s.now[0] = 100.0
    s.send(1, [b"a", b"b"])
    s.now[0] = 105.0
    assert s.checkpointer.stalled_for() == 5.0
    s.producer.ack_all()
    s.checkpointer.collect()
    assert s.checkpointer.stalled_for() == 0.0


def test_commit_all_waits_until_the_deadline_and_says_whether_everything_was_acknowledged() -> None:
    s = Setup(every=100)
    s.send(3, [b"a", b"b"])
    s.producer.ack_all()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == []  # not due yet
    assert s.checkpointer.commit_all(deadline=s.now[0] + 1)
    assert s.consumer.commits == [{TP: 3}]
    s.send(5, [b"c"])
    s.now[0] = 10.0
    assert not s.checkpointer.commit_all(deadline=5.0)  # past the deadline, "c" never acknowledged
    assert s.consumer.commits == [{TP: 3}]


def test_revoked_partitions_are_not_committed_by_the_old_owner() -> None:
    s = Setup()
    other = TopicPartition("in", 1)
    s.checkpointer.send({TP: 10, other: 7}, [OutputRecord("out", b"k", b"a")], "batch", 1)
    s.checkpointer.forget([other])
    s.producer.ack_all()
    s.checkpointer.maybe_commit()
    assert s.consumer.commits == [{TP: 10}] and s.acked == ["batch"]
