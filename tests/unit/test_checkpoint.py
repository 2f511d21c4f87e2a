"""Checkpointing logic: only acknowledged prefixes are committed; failures are re-sent.

The consumer and producer here are small stand-ins recording calls; the real clients are
exercised against a broker in tests/integration."""

from __future__ import annotations

from kafka import TopicPartition
from kafka.future import Future

from loginpipe.checkpoint import Checkpointer
from loginpipe.delivery import Sender
from loginpipe.route import OutputRecord

TP = TopicPartition("in", 0)


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


class ManualProducer:
    """Every send returns a future the test resolves by hand."""

    def __init__(self) -> None:
        self.futures: list[Future] = []

    def send(self, topic, value=None, key=None, headers=None, partition=None) -> Future:
        future = Future()
        self.futures.append(future)
        return future

    def flush(self, timeout=None) -> None:
        pass


def setup(every: int = 1):
    consumer, producer = RecordingConsumer(), ManualProducer()
    sender = Sender(producer, warn=lambda m: None)
    return Checkpointer(consumer, sender, every, 3600, warn=lambda m: None), consumer, producer, sender


def track(checkpointer, sender, next_offset: int, n: int = 2) -> list[OutputRecord]:
    records = [OutputRecord("out", b"k", b"v") for _ in range(n)]
    checkpointer.track({TP: next_offset}, records, sender.send_all(records), n)
    return records


def test_nothing_is_committed_until_every_output_is_acknowledged() -> None:
    checkpointer, consumer, producer, sender = setup()
    track(checkpointer, sender, 10)
    producer.futures[0].success("ok")
    checkpointer.maybe_commit()
    assert consumer.commits == []
    producer.futures[1].success("ok")
    checkpointer.maybe_commit()
    assert consumer.commits == [{TP: 10}]


def test_only_the_acknowledged_prefix_is_committed() -> None:
    checkpointer, consumer, producer, sender = setup()
    track(checkpointer, sender, 10)
    track(checkpointer, sender, 20)
    for future in producer.futures[2:]:
        future.success("ok")  # the later batch is done, the earlier one is not
    checkpointer.maybe_commit()
    assert consumer.commits == []
    for future in producer.futures[:2]:
        future.success("ok")
    checkpointer.maybe_commit()
    assert consumer.commits == [{TP: 20}]


def test_a_failed_delivery_is_sent_again_and_only_then_committed() -> None:
    checkpointer, consumer, producer, sender = setup()
    track(checkpointer, sender, 5, n=1)
    producer.futures[0].failure(Exception("broker gone"))
    checkpointer.maybe_commit()
    assert consumer.commits == [] and len(producer.futures) == 2  # re-sent
    producer.futures[1].success("ok")
    checkpointer.maybe_commit()
    assert consumer.commits == [{TP: 5}]
    assert checkpointer.committed == {TP: 5}


def test_checkpoints_wait_for_enough_records() -> None:
    checkpointer, consumer, producer, sender = setup(every=100)
    track(checkpointer, sender, 3)
    for future in producer.futures:
        future.success("ok")
    checkpointer.maybe_commit()
    assert consumer.commits == []
    assert checkpointer.commit_all(timeout_s=1)
    assert consumer.commits == [{TP: 3}]
