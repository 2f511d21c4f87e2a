"""The dashboard's sample of processed records when they are written as Avro: decoded through the
registry given by --schema-registry-url (or its environment twin); what cannot be read (bad JSON,
Avro without a registry, an unknown id) is skipped and counted. No broker: the sampling consumer is
a stand-in holding the records."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from loginpipe import serde
from loginpipe.cli import run_cli
from loginpipe.core import avro
from loginpipe.dashboard import cli
from loginpipe.dashboard.feed import DashboardSettings, Feed
from tests.fake_registry import FakeRegistry

OUTPUT = "processed-user-login"
PROCESSED = {
    "user_id": "u1", "app_version": "2.3.0", "device_type": "ios", "ip": "1.2.3.4", "locale": "NY",
    "device_id": "d1", "timestamp": 1_700_000_000, "login_time": "2023-11-14T22:13:20Z",
    "day_of_week": "Tuesday", "hour_of_day": 22, "local_hour_of_day": 17,
    "processed_timestamp": "2023-11-14T22:13:21.500Z", "processing_delay_seconds": 1.5, "region": "Northeast",
    "app_version_major": 2, "app_version_minor": 3, "app_version_patch": 0, "total_logins_for_version": 1,
    "total_logins_from_locale": 1, "total_logins_for_device_type": 1, "distinct_ips_for_user": 1,
    "multi_ip_user": False, "users_on_device": 1, "shared_device": False, "most_common_device_type": "ios",
    "risk_score": 0, "risk_level": "low", "risk_factors": [], "privacy": False, "source_partition": 0,
    "source_offset": 1, "schema": "processed-login/v1"}


class Sampler:
    """What ``Feed._read_recent`` asks of its consumer, answered from a list of values."""

    def __init__(self, values: list[bytes | None]) -> None:
        self.records = [SimpleNamespace(topic=OUTPUT, partition=0, offset=i, timestamp=1000 + i, key=None,
                                        value=v) for i, v in enumerate(values)]

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, partitions: list) -> None:
        pass

    def end_offsets(self, partitions: list) -> dict:
        return {tp: len(self.records) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    def poll(self, timeout_ms: int) -> dict:
        return {TopicPartition(OUTPUT, 0): self.records}


def processed_avro(schema_id: int, **changes: object) -> bytes:
    schema = avro.contract(avro.OUTPUT_SCHEMA)
    return avro.frame(schema_id, avro.encode(schema, {**PROCESSED, **changes}))


def sample(url: str | None, values: list[bytes | None]) -> Feed:
    feed = Feed(DashboardSettings("127.0.0.1:1", "summary", "metrics", OUTPUT, schema_registry_url=url))
    feed._tail = Sampler(values)
    feed._read_recent()
    return feed


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as fake:
        yield fake


def test_avro_and_json_records_are_sampled_and_the_unreadable_counted(registry: FakeRegistry) -> None:
    schema_id = registry.register(f"{OUTPUT}-value", avro.contract_text(avro.OUTPUT_SCHEMA))
    feed = sample(registry.url, [
        processed_avro(schema_id),
        b'{"user_id": "json"}',
        processed_avro(2**31 - 1),  # an id the registry does not have
        processed_avro(schema_id)[:-3],  # bytes cut short
        b"not json",
        b"[1, 2]",  # JSON, but not a record
        None,  # a tombstone: not counted, not shown
        processed_avro(schema_id, user_id="u2"),
    ])
    recent = feed.board.recent
    assert sorted(r["user_id"] for r in recent) == ["json", "u1", "u2"]
    assert next(r for r in recent if r["user_id"] == "u1") == avro.decode(
        avro.contract(avro.OUTPUT_SCHEMA), processed_avro(schema_id)[5:])
    assert feed.unreadable == 4


def test_without_a_registry_avro_records_are_skipped(registry: FakeRegistry) -> None:
    schema_id = registry.register(f"{OUTPUT}-value", avro.contract_text(avro.OUTPUT_SCHEMA))
    feed = sample(None, [processed_avro(schema_id), b'{"user_id": "json"}'])
    assert feed.board.recent == [{"user_id": "json"}] and feed.unreadable == 1
    assert registry.lookups == []


def test_a_registry_that_does_not_answer_thins_the_sample_out(registry: FakeRegistry) -> None:
    schema_id = registry.register(f"{OUTPUT}-value", avro.contract_text(avro.OUTPUT_SCHEMA))
    registry.down = True
    feed = sample(registry.url, [processed_avro(schema_id), b'{"user_id": "json"}'])
    assert feed.board.recent == [{"user_id": "json"}] and feed.unreadable == 1


def test_the_flag_and_its_environment_twin_reach_the_feeds_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    assert cli.dashboard_settings([]).schema_registry_url is None
    assert cli.dashboard_settings(["--schema-registry-url", "http://a:1"]).schema_registry_url == "http://a:1"
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://b:2")
    assert cli.dashboard_settings([]).schema_registry_url == "http://b:2"


def test_a_registry_url_without_fastavro_is_one_line(capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastavro", None)  # import fastavro fails, as when not installed
    assert run_cli(lambda: cli.main(["--schema-registry-url", "http://a:1"])) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: reading Avro records (--schema-registry-url) needs fastavro: {serde.AVRO_EXTRA}"]
