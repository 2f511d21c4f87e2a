"""Kafka administration with kafka-python: create, describe and delete topics, read one record.

Plain arguments in (topic names, partition counts, config dicts; a topic spec is anything with
``name``, ``partitions`` and ``configs`` attributes, as ``topics.TopicSpec`` has), plain values
out; a broker that does not answer is a one-line UserError. kafka-python is imported inside the
functions: it takes a while to import, and callers such as ``dlq decrypt --file`` need none of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from loginpipe.errors import UserError
from loginpipe.waiting import wait_until

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.consumer.fetcher import ConsumerRecord

ADMIN_TIMEOUT_S = 8.0
READ_TIMEOUT_S = 15.0


class TopicLike(Protocol):
    """What ``ensure_topics`` reads of a topic spec (``topics.TopicSpec`` has these)."""

    name: str
    partitions: int | None  # None: the ``partitions`` argument
    configs: Mapping[str, str]


@dataclass(frozen=True)
class TopicResult:
    name: str
    status: str  # "created", "exists" or "too-few-partitions"
    partitions: int
    wanted: int

    @property
    def ok(self) -> bool:
        return self.status != "too-few-partitions"

    def describe(self) -> str:
        if self.status == "too-few-partitions":
            return (f"{self.name}: exists with {self.partitions} partitions, fewer than the "
                    f"{self.wanted} asked (delete it, or add partitions with kafka-topics --alter)")
        return f"{self.name}: {self.status} ({self.partitions} partitions)"


@dataclass(frozen=True)
class FetchedRecord:
    """One record read back by ``read_record``."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def _unreachable(bootstrap_servers: str, exc: BaseException) -> UserError:
    return UserError(f"cannot reach a Kafka broker at {bootstrap_servers} "
                     f"({type(exc).__name__}); is it running? (make kafka-start)")


def admin_client(bootstrap_servers: str, timeout_s: float = ADMIN_TIMEOUT_S) -> KafkaAdminClient:
    """A KafkaAdminClient, or a UserError naming the broker when none answers in ``timeout_s``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=1000,
            client_id="loginpipe-admin",
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap_servers, exc) from None


def describe_partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    """The partition count of each of ``names`` that exists (missing ones are left out);
    a one-line UserError when no broker answers."""
    admin = admin_client(bootstrap)
    try:
        return _partition_counts(admin, names)
    finally:
        admin.close()


def ensure_topics(bootstrap_servers: str, specs: Sequence[TopicLike], partitions: int,
                  replication_factor: int = 1) -> list[TopicResult]:
    """Create the topics that are missing; report the ones that exist."""
    from kafka.errors import KafkaError

    admin = admin_client(bootstrap_servers)
    try:
        existing = _partition_counts(admin, [s.name for s in specs])
        missing = {
            s.name: {"num_partitions": s.partitions or partitions,
                     "replication_factor": replication_factor, "configs": dict(s.configs)}
            for s in specs if s.name not in existing
        }
        if missing:
            admin.create_topics(missing, timeout_ms=10_000, wait_for_metadata=True)
    except KafkaError as exc:
        raise UserError(f"topic creation failed: {exc}") from None
    finally:
        admin.close()
    results = []
    for spec in specs:
        wanted = spec.partitions or partitions
        if spec.name in missing:
            results.append(TopicResult(spec.name, "created", wanted, wanted))
        else:
            have = existing[spec.name]
            status = "exists" if have >= wanted else "too-few-partitions"
            results.append(TopicResult(spec.name, status, have, wanted))
    return results


def _partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    counts = {}
    for topic in admin.describe_topics(names):
        if topic.get("error_code", 0) == 0:
            counts[topic["name"]] = len(topic["partitions"])
    return counts


def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    """Delete topics (used by tests and the benchmark to clean up after themselves)."""
    admin = admin_client(bootstrap_servers)
    try:
        admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)
    finally:
        admin.close()


def read_record(bootstrap: str, topic: str, partition: int, offset: int,
                timeout_s: float = READ_TIMEOUT_S) -> FetchedRecord:
    """The key, value and headers of the one record at ``topic``/``partition``/``offset``; a
    one-line UserError when the broker does not answer or no such record exists."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id="loginpipe-dlq", bootstrap_timeout_ms=5_000,
                                 request_timeout_ms=10_000, max_poll_records=1)
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap, exc) from None
    try:
        tp = TopicPartition(topic, partition)
        _check_offset(consumer, tp, offset)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = _poll_one(consumer, tp, timeout_s)
    except KafkaError as exc:
        raise UserError(f"reading {topic} partition {partition} offset {offset} failed: {exc}") from None
    finally:
        consumer.close()
    if record is None or record.offset != offset:
        raise UserError(f"no record at {topic} partition {partition} offset {offset}")
    return FetchedRecord(record.key, record.value, dict(record.headers or []))


def _check_offset(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
    partitions = consumer.partitions_for_topic(tp.topic)
    if not partitions:
        raise UserError(f"topic {tp.topic} does not exist")
    if tp.partition not in partitions:
        raise UserError(f"topic {tp.topic} has no partition {tp.partition} (it has {len(partitions)})")
    first, end = consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]
    if not first <= offset < end:
        held = f"offsets {first} to {end - 1}" if end > first else "no records"
        raise UserError(f"{tp.topic} partition {tp.partition} has no offset {offset} (it holds {held})")


def _poll_one(consumer: KafkaConsumer, tp: TopicPartition, timeout_s: float) -> ConsumerRecord | None:
    """The first record fetched from the seek position, or None when none came in time."""

    def first() -> ConsumerRecord | None:
        records = consumer.poll(timeout_ms=500).get(tp)
        return records[0] if records else None

    return wait_until(first, timeout_s, interval_s=0)
