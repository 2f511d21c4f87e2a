"""On the real broker: a kafka-python producer made for the pipeline fetches the partitions of the
topics it will write to by itself, before its first send (which would otherwise wait ~100 ms per
topic for them, holding up the first records of a run)."""

from __future__ import annotations

from collections.abc import Callable

from loginpipe.config import PipelineConfig
from loginpipe.kafka.admin import delete_topics, ensure_topics
from loginpipe.kafka.kafka_python import KafkaPythonBackend, produced_topics
from loginpipe.topics import InternalTopics, TopicSpec
from loginpipe.waiting import wait_until


def test_the_producer_knows_its_topics_partitions_before_any_send(
        bootstrap: str, topic_name: Callable[[str], str]) -> None:
    group = topic_name("metadata-group")
    config = PipelineConfig(connection=bootstrap, output_topic=topic_name("out"),
                            dlq_topic=topic_name("dlq"), group_id=group)
    topics = produced_topics(config)
    assert InternalTopics.of(group).repartition in topics
    ensure_topics(bootstrap, [TopicSpec(t, "test") for t in topics], partitions=2)
    producer = KafkaPythonBackend().producer(config)
    try:
        metadata = producer._producer._metadata  # what send() consults before it waits
        assert wait_until(lambda: all(metadata.partitions_for_topic(t) == {0, 1} for t in topics), 10.0)
    finally:
        producer.close(5.0)
        delete_topics(bootstrap, topics)
