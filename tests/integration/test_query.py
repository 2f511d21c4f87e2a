"""python -m loginpipe.query and kafka.admin.read_topic against a real broker: changelog records
the pure core wrote are produced to a unique group's changelog topics, then read back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from loginpipe.core.records import OutputRecord
from loginpipe.errors import UserError
from loginpipe.kafka.admin import delete_topics, ensure_topics, read_topic
from loginpipe.local.broker import free_port
from loginpipe.topics import InternalTopics
from tests.unit.test_query import PARTITIONS, expected_totals, make_events, run_core

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_query(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loginpipe.query", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s, env={**os.environ})


def produce(bootstrap: str, records: Sequence, transactional_id: str | None = None,
            abort: bool = False) -> None:
    """Send records (topic, partition, key, value) and wait for them; in a transaction when
    ``transactional_id`` is given, aborted when ``abort``."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id, linger_ms=5)
    try:
        if transactional_id:
            producer.init_transactions()
            producer.begin_transaction()
        for r in records:
            producer.send(r.topic, key=r.key, value=r.value, partition=r.partition)
        producer.flush(timeout=30)  # on the broker before an abort: else they are never sent
        if transactional_id:
            (producer.abort_transaction if abort else producer.commit_transaction)()
    finally:
        producer.close(timeout=10)


@pytest.fixture
def group(bootstrap: str, topic_name) -> Iterator[str]:
    """A group of the test's own whose two changelog topics exist (deleted afterwards)."""
    group_id = topic_name("query")
    specs = InternalTopics.of(group_id).specs()[:2]
    ensure_topics(bootstrap, specs, partitions=PARTITIONS)
    yield group_id
    delete_topics(bootstrap, [spec.name for spec in specs])


def test_totals_and_keys_of_a_group(bootstrap: str, group: str) -> None:
    events = make_events()
    run = run_core(events, group=group)
    # Committed in transactions and not: read_committed must see both, and get past the markers.
    half = len(run.changelog) // 2
    produce(bootstrap, run.changelog[:half] + run.device_changelog)
    produce(bootstrap, run.changelog[half:], transactional_id=f"{group}-tx")
    common = ("--bootstrap-servers", bootstrap, "--group-id", group)
    totals = run_query(*common, "totals", "--json")
    assert totals.returncode == 0, totals.stderr
    assert orjson.loads(totals.stdout) == expected_totals(events)
    assert totals.stderr == ""  # a short read prints no progress
    user = events[0]["user_id"]
    kept_ips = {e["ip"] for e in events if e["user_id"] == user and e["device_type"].lower() != "web"}
    answer = run_query(*common, "user", user, "--json")
    assert orjson.loads(answer.stdout) == {"user_id": user, "distinct_ips": len(kept_ips)}


def test_aborted_records_are_not_state(bootstrap: str, group: str) -> None:
    events = make_events(60)
    run = run_core(events, group=group)
    produce(bootstrap, run.changelog + run.device_changelog)
    changelog = InternalTopics.of(group).changelog
    bogus = [OutputRecord(changelog, key, orjson.dumps([10**6, 0]), None, p)
             for p in range(PARTITIONS) for key in (b"cv:9.9.9", b"ct:ios", b"u:1ce1ce")]
    produce(bootstrap, bogus, transactional_id=f"{group}-tx", abort=True)
    result = run_query("--bootstrap-servers", bootstrap, "--group-id", group, "totals", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == expected_totals(events)


def test_read_topic_stops_at_the_end_offsets_of_its_start(bootstrap: str, group: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    run = run_core(make_events(), group=group)
    produce(bootstrap, run.changelog)
    seen: list = []

    def on_record(record) -> None:
        if not seen:  # written during the read: after its end offsets
            produce(bootstrap, run.changelog[:5])
        seen.append((record.partition, record.key, record.value))

    count = read_topic(bootstrap, InternalTopics.of(group).changelog, on_record, progress_every=100)
    assert count == len(seen) == len(run.changelog)
    assert sorted(seen) == sorted((r.partition, r.key, r.value) for r in run.changelog)
    progress = capsys.readouterr().err.splitlines()
    assert 1 <= len(progress) <= len(run.changelog) // 100
    assert all(line.startswith(f"{InternalTopics.of(group).changelog}: ") for line in progress)


def test_read_topic_of_a_missing_topic(bootstrap: str, topic_name) -> None:
    name = topic_name("absent")
    with pytest.raises(UserError, match=f"topic {name} does not exist"):
        read_topic(bootstrap, name, lambda record: None)
    with pytest.raises(UserError):  # and asking did not create it
        read_topic(bootstrap, name, lambda record: None)


def test_empty_changelogs_answer_zeros(bootstrap: str, group: str) -> None:
    result = run_query("--bootstrap-servers", bootstrap, "--group-id", group, "device", "d1", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"device_id": "d1", "users": 0}


def test_a_group_that_never_ran_is_one_line(bootstrap: str, topic_name) -> None:
    group = topic_name("never-ran")
    result = run_query("--bootstrap-servers", bootstrap, "--group-id", group, "totals")
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    topics = InternalTopics.of(group)
    assert line.startswith(f"error: group '{group}' has no state")
    assert topics.changelog in line and topics.device_changelog in line
    ensure_missing = run_query("--bootstrap-servers", bootstrap, "--group-id", group, "totals")
    assert ensure_missing.returncode == 1  # the first query did not create the topics


def test_broker_down_is_one_line() -> None:
    result = run_query("--bootstrap-servers", f"127.0.0.1:{free_port()}", "totals", timeout_s=60)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach a Kafka broker at 127.0.0.1:")

