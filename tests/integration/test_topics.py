"""create_kafka_topic.py and the topic admin (loginpipe.kafka.admin) against a real broker."""

from __future__ import annotations

import pytest

from loginpipe.kafka.admin import delete_topics, ensure_topics
from loginpipe.local.broker import free_port
from loginpipe.topics import DEFAULT_GROUP, TOPICS, InternalTopics, TopicSpec
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def test_creation_is_idempotent(bootstrap: str, topic_name) -> None:
    specs = [TopicSpec(topic_name("a"), "test"), TopicSpec(topic_name("b"), "test", partitions=2,
                                                           configs={"compression.type": "producer"})]
    try:
        first = ensure_topics(bootstrap, specs, partitions=3)
        assert [(r.status, r.partitions) for r in first] == [("created", 3), ("created", 2)]
        second = ensure_topics(bootstrap, specs, partitions=3)
        assert [(r.status, r.partitions) for r in second] == [("exists", 3), ("exists", 2)]
        assert all(r.ok for r in second)
    finally:
        delete_topics(bootstrap, [s.name for s in specs])


def test_fewer_partitions_than_asked_is_reported(bootstrap: str, topic_name) -> None:
    spec = TopicSpec(topic_name("few"), "test")
    try:
        ensure_topics(bootstrap, [spec], partitions=2)
        [result] = ensure_topics(bootstrap, [spec], partitions=6)
        assert result.status == "too-few-partitions" and not result.ok
        assert "2 partitions, fewer than the 6 asked" in result.describe()
    finally:
        delete_topics(bootstrap, [spec.name])


def test_cli_creates_every_pipeline_topic_twice(bootstrap: str) -> None:
    first = run_cli("create_kafka_topic.py", "--bootstrap-servers", bootstrap)
    assert first.returncode == 0, first.stderr
    second = run_cli("create_kafka_topic.py", env={"BOOTSTRAP_SERVERS": bootstrap})
    assert second.returncode == 0, second.stderr
    lines = second.stdout.strip().splitlines()
    internal = InternalTopics.of(DEFAULT_GROUP).specs()  # the default group's own, created too
    assert [line.split(":")[0] for line in lines] == [spec.name for spec in TOPICS + internal]
    assert all(": exists (" in line for line in lines), lines


def test_cli_with_broker_down_gives_one_line_and_nonzero_exit() -> None:
    result = run_cli("create_kafka_topic.py", "--bootstrap-servers", f"127.0.0.1:{free_port()}",
                     timeout_s=30)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: cannot reach a Kafka broker at 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
