"""The generator's command line writes what it says to a real broker."""

from __future__ import annotations

import orjson
import pytest

from loginpipe.kafka.admin import delete_topics, ensure_topics
from loginpipe.kafka.settings import DEFAULT_BOOTSTRAP
from loginpipe.local.generator import GOOD, EventGenerator
from loginpipe.topics import TopicSpec
from tests.helpers import read_topic, run_cli

pytestmark = pytest.mark.integration


def test_cli_sends_count_events_keyed_by_user(bootstrap: str, topic_name) -> None:
    topic = topic_name("gen")
    ensure_topics(bootstrap, [TopicSpec(topic, "test")], partitions=2)
    try:
        result = run_cli("-m", "loginpipe.local.generator", "--bootstrap-servers", bootstrap,
                         "--topic", topic,
                         "--count", "1500", "--rate", "0", "--seed", "11", "--bad-ratio", "0")
        assert result.returncode == 0, result.stderr
        assert "sent 1,500/1,500 events" in result.stderr
        records = read_topic(bootstrap, topic, 1500)
        assert len(records) == 1500
        for record in records:
            assert record.key == orjson.loads(record.value)["user_id"].encode()
        # Seeded: the same users and devices as the library makes for that seed.
        expected = {orjson.loads(r.value)["device_id"]
                    for r in EventGenerator(seed=11, bad_ratio=0).generate(1500) if r.kind == GOOD}
        assert {orjson.loads(r.value)["device_id"] for r in records} == expected
    finally:
        delete_topics(bootstrap, [topic])


def test_cli_to_missing_topic_is_one_line_naming_it_and_the_command_that_creates_it(
        bootstrap: str, topic_name) -> None:
    """Found from the topic's metadata before the first send, not after the producer's 10 s wait."""
    topic = topic_name("absent")
    result = run_cli("-m", "loginpipe.local.generator", "--bootstrap-servers", bootstrap,
                     "--topic", topic, "--count", "10", "--rate", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: topic {topic} does not exist at {bootstrap}; create it with: python create_kafka_topic.py"
        + ("" if bootstrap == DEFAULT_BOOTSTRAP else f" --bootstrap-servers {bootstrap}")
        + f" --input-topic {topic}"]
    assert "timed out" not in result.stderr and "generator:" not in result.stderr
    via_dispatcher = run_cli("-m", "loginpipe", "generate", "--bootstrap-servers", bootstrap,
                             "--topic", topic)
    assert "create it with: loginpipe topics" in via_dispatcher.stderr
