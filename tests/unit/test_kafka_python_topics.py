"""The kafka-python producer is told, when it is made, every topic the pipeline writes to, so that
no send waits for a topic's metadata (each first send to a topic waited ~100 ms: the long tail of
the latency run's first seconds). No broker here: a stand-in for kafka-python's I/O thread."""

from __future__ import annotations

import dataclasses

from loginpipe.config import PipelineConfig
from loginpipe.kafka.kafka_python import announce_topics, produced_topics
from loginpipe.topics import InternalTopics


class FakeSender:
    def __init__(self, refuse: str = "") -> None:
        self.added: list[str] = []
        self.refuse = refuse

    def add_topic(self, topic: str) -> None:
        if topic == self.refuse:
            raise ValueError(f"invalid topic {topic}")
        self.added.append(topic)


@dataclasses.dataclass
class FakeProducer:
    _sender: FakeSender


def test_produced_topics_are_the_outputs_and_the_groups_internal_topics() -> None:
    config = PipelineConfig(output_topic="out", dlq_topic="dead", group_id="g")
    internal = InternalTopics.of("g")
    assert produced_topics(config) == ["out", "dead", internal.repartition, internal.changelog,
                                       internal.device_changelog]


def test_a_filtered_topic_is_produced_to_when_set() -> None:
    config = PipelineConfig(output_topic="out", dlq_topic="dead", group_id="g", filtered_topic="skipped")
    assert "skipped" in produced_topics(config)


def test_every_topic_is_announced_even_after_one_is_refused() -> None:
    sender = FakeSender(refuse="bad")
    announce_topics(FakeProducer(sender), ["a", "bad", "c"])
    assert sender.added == ["a", "c"]


def test_a_producer_without_the_private_sender_is_left_alone() -> None:
    announce_topics(object(), ["a"])  # kafka-python changed: nothing to do, nothing raised
