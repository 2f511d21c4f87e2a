"""A kafka-python 3.0.12 hang the runtime works around (``unpark_resumed``): records of a
partition paused while they were next in line are parked, and once the fetcher's in-line slot has
been emptied they never come back, however long the partition has been resumed. The exactly-once
broker-restart tests met it about one run in three (a repartition partition stuck with lag)."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from loginpipe.kafka.admin import ensure_topics
from loginpipe.kafka.kafka_python import unpark_resumed
from loginpipe.topics import TopicSpec
from loginpipe.waiting import wait_until

PER_PARTITION = 100


def test_a_partition_paused_with_records_in_line_gets_them_back_after_resume(bootstrap: str,
                                                                            topic_name) -> None:
    topic = topic_name("parked")
    ensure_topics(bootstrap, [TopicSpec(topic, "test")], 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            producer.send(topic, f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(partitions)
        seen: dict[int, int] = {0: 0, 1: 0}
        first: dict = {}
        # a few records, so the rest of that partition's fetched records stay next in line
        assert wait_until(lambda: first.update(consumer.poll(timeout_ms=200, max_records=5)) or first, 30)
        [(in_line, records)] = first.items()
        seen[in_line.partition] += len(records)
        other = 1 - in_line.partition
        consumer.pause(in_line)  # its in-line records get parked at the next poll
        parked_seen = []

        def other_drained() -> bool:
            for tp, batch in consumer.poll(timeout_ms=200, max_records=5).items():
                seen[tp.partition] += len(batch)
            parked_seen.append(bool(consumer._fetcher._paused_partition_records))
            return seen[other] == PER_PARTITION

        assert wait_until(other_drained, 30), seen
        assert any(parked_seen), "the paused partition's records were never parked: the test missed the case"
        consumer.resume(in_line)

        def all_back() -> bool:
            unpark_resumed(consumer)  # what KafkaPythonConsumer.poll does before every poll
            for tp, batch in consumer.poll(timeout_ms=200, max_records=50).items():
                seen[tp.partition] += len(batch)
            return seen[in_line.partition] == PER_PARTITION

        assert wait_until(all_back, 30), f"the resumed partition stayed stuck: {seen}"
    finally:
        consumer.close()
