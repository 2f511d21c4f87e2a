"""create_kafka_topic.py (under the default names or the user's own) and the topic admin
(loginpipe.kafka.admin) against a real broker."""

from __future__ import annotations

import shlex

import pytest

from loginpipe.kafka.admin import delete_topics, ensure_topics
from loginpipe.local.broker import free_port
from loginpipe.topics import DEFAULT_GROUP, TOPICS, InternalTopics, TopicSpec
from tests.helpers import PipelineTopics, run_cli

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


def test_cli_creates_the_topics_under_custom_names(bootstrap: str, topic_name) -> None:
    names = {flag: topic_name(flag) for flag in ("in", "out", "dlq", "summary", "metrics", "group")}
    group_topics = [spec.name for spec in InternalTopics.of(names["group"]).specs()]
    try:
        result = run_cli("create_kafka_topic.py", "--bootstrap-servers", bootstrap, "--partitions", "2",
                         "--input-topic", names["in"], "--output-topic", names["out"],
                         "--filtered-topic", "none", "--summary-topic", names["summary"],
                         "--group-id", names["group"],
                         env={"DLQ_TOPIC": names["dlq"], "METRICS_TOPIC": names["metrics"]})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines() == [
            f"{names['in']}: created (2 partitions)", f"{names['out']}: created (2 partitions)",
            f"{names['dlq']}: created (2 partitions)", f"{names['summary']}: created (1 partition)",
            f"{names['metrics']}: created (1 partition)", *(f"{name}: created (2 partitions)"
                                                           for name in group_topics)]
    finally:
        delete_topics(bootstrap, [*names.values(), *group_topics])


def test_fewer_partitions_than_asked_is_one_stderr_line_and_exit_code_3(bootstrap: str, topic_name) -> None:
    few = topic_name("few")
    ensure_topics(bootstrap, [TopicSpec(few, "test")], partitions=1)
    try:
        result = run_cli("create_kafka_topic.py", "--bootstrap-servers", bootstrap, "--input-topic", few,
                         "--partitions", "3", "--group-id", "none")
        assert result.returncode == 3
        assert result.stderr.strip().splitlines() == [
            f"error: {few}: exists with 1 partition, fewer than the 3 asked (delete it, or add partitions "
            "with kafka-topics --alter)"]
        assert few not in result.stdout and "processed-user-login: exists" in result.stdout
    finally:
        delete_topics(bootstrap, [few])


def test_the_consumers_missing_topic_hint_is_a_command_that_creates_them(bootstrap: str, topic_name) -> None:
    """The hint names the user's own topics; run as printed, it creates them and the consumer starts."""
    topics = PipelineTopics(*(topic_name(base) for base in ("in", "out", "dlq", "filtered", "summary",
                                                            "metrics")))
    consumer = ("create_kafka_consumer.py", "--bootstrap-servers", bootstrap, *topics.flags(filtered=True),
                "--group-id", topic_name("group"), "--stop-when-idle", "1", "--quiet")
    group_topics = [spec.name for spec in InternalTopics.of(topic_name("group")).specs()]
    try:
        missing = run_cli(*consumer)
        assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
        assert missing.stderr.startswith(f"error: topics {', '.join(topics.names)} do not exist")
        command = shlex.split(missing.stderr.split("create them with: ")[1])
        assert command[:2] == ["python", "create_kafka_topic.py"]
        created = run_cli(*command[1:])
        assert created.returncode == 0, created.stderr
        ran = run_cli(*consumer)
        assert ran.returncode == 0, ran.stderr
    finally:
        delete_topics(bootstrap, [*topics.names, *group_topics])
