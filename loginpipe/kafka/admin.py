"""Kafka administration with kafka-python: create, describe and delete topics, read one record,
read a whole topic as it stands (the query command).

Plain arguments in (topic names, partition counts, config dicts; a topic spec is anything with
``name``, ``partitions`` and ``configs`` attributes, as ``topics.TopicSpec`` has), plain values
out; a broker that does not answer is a one-line UserError. kafka-python is imported inside the
functions: it takes a while to import, and callers such as ``dlq decrypt --file`` need none of it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from loginpipe.errors import UserError
from loginpipe.kafka.base import is_authorization_failure
from loginpipe.kafka.failures import explain, forget, watch
from loginpipe.kafka.settings import Connection, kafka_options
from loginpipe.topics import plural
from loginpipe.waiting import any_reachable, wait_until

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.consumer.fetcher import ConsumerRecord

ADMIN_TIMEOUT_S = 8.0
READ_TIMEOUT_S = 15.0
# read_topic gives up after this long without progress: a big changelog may take minutes to read,
# and that is fine as long as it moves; a partition whose leader is gone never would.
STALL_TIMEOUT_S = 30.0
PROGRESS_EVERY = 200_000  # records between progress lines of read_topic
UNKNOWN_TOPIC_OR_PARTITION = 3  # Kafka's error codes
TOPIC_AUTHORIZATION_FAILED = 29


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
            return (f"{self.name}: exists with {plural(self.partitions, 'partition')}, fewer than the "
                    f"{self.wanted} asked (delete it, or add partitions with kafka-topics --alter)")
        return f"{self.name}: {self.status} ({plural(self.partitions, 'partition')})"


@dataclass(frozen=True)
class FetchedRecord:
    """One record read back by ``read_record``."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def unreachable(where: str | Connection, exc: BaseException) -> UserError:
    """One line for a client that could not start: what failed, and what to check."""
    return UserError(explain(where, exc))


_unreachable = unreachable


def admin_client(bootstrap_servers: str | Connection, timeout_s: float = ADMIN_TIMEOUT_S) -> KafkaAdminClient:
    """A KafkaAdminClient, or a UserError naming the broker when none answers in ``timeout_s``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    watch()
    forget()
    try:
        return KafkaAdminClient(
            **kafka_options(bootstrap_servers),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=1000,
            client_id="loginpipe-admin",
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap_servers, exc) from None


def describe_partitions(bootstrap: str | Connection, names: list[str]) -> dict[str, int]:
    """The partition count of each of ``names`` that exists (missing ones are left out);
    a one-line UserError when no broker answers."""
    admin = admin_client(bootstrap)
    try:
        return _partition_counts(admin, names)
    finally:
        admin.close()


def require_topic(where: str | Connection, topic: str, create_hint: str,
                  timeout_s: float = ADMIN_TIMEOUT_S) -> int:
    """The partition count of ``topic``, asked of the broker at once: a producer would instead wait
    its max.block.ms for metadata that never comes. A one-line UserError when the topic does not
    exist (naming it and ``create_hint``, the command that creates it), when this client may not
    describe it, or when no broker answers."""
    from kafka.errors import KafkaError

    at = Connection.of(where).bootstrap_servers
    admin = admin_client(where, timeout_s)
    try:
        [described] = admin.describe_topics([topic])
    except KafkaError as exc:
        raise UserError(f"cannot describe topic {topic} at {at}: {exc}") from None
    finally:
        admin.close()
    code = described.get("error_code", 0)
    if code == UNKNOWN_TOPIC_OR_PARTITION:
        raise UserError(f"topic {topic} does not exist at {at}; create it with: {create_hint}")
    if code == TOPIC_AUTHORIZATION_FAILED:
        raise UserError(f"not authorized to describe topic {topic} at {at} (an ACL is missing)")
    return len(described.get("partitions") or ())


def ensure_topics(bootstrap_servers: str | Connection, specs: Sequence[TopicLike], partitions: int,
                  replication_factor: int = 1) -> list[TopicResult]:
    """Create the topics that are missing; report the ones that exist."""
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = admin_client(bootstrap_servers)
    try:
        existing = _partition_counts(admin, [s.name for s in specs])
        missing = {
            s.name: {"num_partitions": s.partitions or partitions,
                     "replication_factor": replication_factor, "configs": dict(s.configs)}
            for s in specs if s.name not in existing
        }
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=10_000, wait_for_metadata=True)
            except TopicAlreadyExistsError:  # another process created them meanwhile: fine
                existing.update(_partition_counts(admin, list(missing)))
                missing = {name: spec for name, spec in missing.items() if name not in existing}
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


def missing_permissions(where: str | Connection, wanted: Mapping[str, Sequence[str]]) -> list[str]:
    """"<OPERATION> topic <name>" for each operation of ``wanted`` ({topic: operations}) the
    connected user may not perform, from the operations the broker says it authorizes (all of
    them without an authorizer). Checked before the first record: a missing ACL is one clear
    line at start, not a retry loop later."""
    from kafka.errors import KafkaError

    admin = admin_client(where)
    try:
        described = admin.describe_topics(list(wanted))
    except KafkaError as exc:
        raise UserError(f"cannot describe topics at {Connection.of(where).describe()}: {exc}") from None
    finally:
        admin.close()
    missing = []
    for topic in described:
        name, allowed = topic["name"], topic.get("authorized_operations")
        if topic.get("error_code") == TOPIC_AUTHORIZATION_FAILED:
            missing.append(f"DESCRIBE topic {name}")
        elif allowed is not None:  # None: the broker did not say; the clients will find out
            missing.extend(f"{operation} topic {name}" for operation in wanted.get(name, ())
                           if operation not in allowed)
    return missing


def start_group_at_end(where: str | Connection, group_id: str, topic: str) -> int:
    """``--offset-reset latest``: commit the end offsets of ``topic`` for ``group_id`` where the
    group has none yet; returns how many partitions were set. The group's consumers themselves
    always reset to earliest, so its own repartition topic is read from its start (a worker
    resetting that to its end could skip what another worker had just written to it)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    watch()
    forget()
    try:
        consumer = KafkaConsumer(**kafka_options(where), group_id=group_id, enable_auto_commit=False,
                                 bootstrap_timeout_ms=int(ADMIN_TIMEOUT_S * 1000))
    except (KafkaError, OSError) as exc:
        raise unreachable(where, exc) from None
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        unset = [tp for tp in partitions if consumer.committed(tp) is None]
        if not unset:
            return 0
        ends = consumer.end_offsets(unset)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in unset})
        return len(unset)
    except KafkaError as exc:  # e.g. another process of the group joined first: it set them
        if is_authorization_failure(exc):
            raise UserError(f"not authorized: {exc}") from None
        return 0
    finally:
        consumer.close()


class AdminOperations:
    """The backends' administration (``base.Backend``: topics, the ACL check, start offsets),
    on kafka-python for either client: kafka-python is always installed, and these run once, at
    start, where librdkafka would gain nothing."""

    def topic_partitions(self, connection: Connection, names: Sequence[str]) -> dict[str, int]:
        return describe_partitions(connection, list(names))

    def create_topics(self, connection: Connection, specs: Sequence[TopicLike], partitions: int) -> None:
        failed = [r.describe() for r in ensure_topics(connection, specs, partitions) if not r.ok]
        if failed:
            raise UserError("; ".join(failed))

    def missing_permissions(self, connection: Connection, wanted: dict[str, list[str]]) -> list[str]:
        return missing_permissions(connection, wanted)

    def start_group_at_end(self, connection: Connection, group_id: str, topic: str) -> int:
        return start_group_at_end(connection, group_id, topic)

    def reachable(self, connection: Connection) -> bool:
        return any_reachable(Connection.of(connection).bootstrap_servers)


def delete_topics(bootstrap_servers: str | Connection, names: list[str]) -> None:
    """Delete topics (used by tests and the benchmark to clean up after themselves)."""
    admin = admin_client(bootstrap_servers)
    try:
        admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)
    finally:
        admin.close()


def read_record(bootstrap: str | Connection, topic: str, partition: int, offset: int,
                timeout_s: float = READ_TIMEOUT_S) -> FetchedRecord:
    """The key, value and headers of the one record at ``topic``/``partition``/``offset``; a
    one-line UserError when the broker does not answer or no such record exists."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    watch()
    forget()
    try:
        consumer = KafkaConsumer(**kafka_options(bootstrap), group_id=None, enable_auto_commit=False,
                                 isolation_level="read_committed", client_id="loginpipe-dlq",
                                 bootstrap_timeout_ms=5_000, request_timeout_ms=10_000, max_poll_records=1)
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


def read_topic(bootstrap_servers: str | Connection, topic: str, on_record: Callable[[ConsumerRecord], None],
               timeout_s: float = STALL_TIMEOUT_S, progress_every: int = PROGRESS_EVERY) -> int:
    """Call ``on_record`` with every record of ``topic`` (anything with ``partition``, ``key``,
    ``value``), from the beginning of each partition up to its end offset as of this call, in
    offset order per partition; return how many. Committed records only, no consumer group (no
    offsets are committed, nothing joins a group). A one-line UserError when the broker does not
    answer, the topic does not exist, or no progress is made for ``timeout_s`` seconds. A progress
    line goes to stderr every ``progress_every`` records, so short reads print nothing."""
    from kafka.errors import KafkaError

    consumer = _reading_consumer(bootstrap_servers)
    try:
        starts, ends = _assign_from_beginning(consumer, topic)
        return _read_until(consumer, topic, starts, ends, on_record, timeout_s, progress_every)
    except KafkaError as exc:
        raise UserError(f"reading {topic} failed: {exc}") from None
    finally:
        consumer.close()


def _reading_consumer(bootstrap_servers: str | Connection, client_id: str = "loginpipe-query"
                      ) -> KafkaConsumer:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    watch()
    forget()
    try:
        # read_committed: what a transactional writer aborted is not state. No auto-creation: a
        # mistyped group must not leave an empty, uncompacted topic behind. Earliest: should the
        # log start move while we read, carry on from the new one (what was before it is gone).
        return KafkaConsumer(**kafka_options(bootstrap_servers), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", allow_auto_create_topics=False,
                             auto_offset_reset="earliest", client_id=client_id,
                             bootstrap_timeout_ms=5_000, request_timeout_ms=15_000, max_poll_records=10_000)
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap_servers, exc) from None


def follow_topic(where: str | Connection, topic: str, from_beginning: bool = False,
                 on_ready: Callable[[int], None] | None = None) -> Iterator[ConsumerRecord]:
    """Every committed record of ``topic`` (read_committed, no consumer group: nothing is committed
    or joined) from the start of each partition, or only those written after the call, as they
    arrive, without end: the caller stops by closing the iterator (a ``for`` loop's break, islice).
    ``on_ready`` gets the partition count once every partition's position is known, so a record
    written after it is never missed. A one-line UserError when the broker does not answer or the
    topic does not exist. Partitions added to the topic later are not followed."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    consumer = _reading_consumer(where, client_id="loginpipe-tail")
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise UserError(f"topic {topic} does not exist at {Connection.of(where).bootstrap_servers}")
        every = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(every)
        if from_beginning:
            consumer.seek_to_beginning(*every)
        else:
            consumer.seek_to_end(*every)
        for tp in every:
            consumer.position(tp)  # looked up now: a seek alone is resolved lazily, at the first fetch
        if on_ready is not None:
            on_ready(len(every))
        while True:
            for records in consumer.poll(timeout_ms=500).values():
                yield from records
    except KafkaError as exc:
        raise UserError(f"reading {topic} failed: {exc}") from None
    finally:
        consumer.close()


def _assign_from_beginning(consumer: KafkaConsumer, topic: str
                           ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Assign the partitions of ``topic`` that hold records, each at its first offset; return the
    first and the end offsets of those."""
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise UserError(f"topic {topic} does not exist")
    every = [TopicPartition(topic, p) for p in sorted(partitions)]
    # read_committed: the end offsets are the last stable ones, so an open transaction is not
    # waited for.
    firsts, ends = consumer.beginning_offsets(every), consumer.end_offsets(every)
    starts = {tp: firsts[tp] for tp in every if ends[tp] > firsts[tp]}
    consumer.assign(list(starts))
    for tp, first in starts.items():
        consumer.seek(tp, first)
    return starts, {tp: ends[tp] for tp in starts}


def _read_until(consumer: KafkaConsumer, topic: str, starts: dict[TopicPartition, int],
                ends: dict[TopicPartition, int], on_record: Callable[[ConsumerRecord], None],
                timeout_s: float, progress_every: int) -> int:
    """Poll until every partition's position reaches its end. Positions, not record offsets,
    decide: compaction leaves gaps and transaction markers are never returned as records."""
    remaining = dict(ends)
    read, next_report, at_most = 0, progress_every, sum(ends[tp] - starts[tp] for tp in ends)
    moved_at, positions = time.monotonic(), dict(starts)
    while remaining:
        for tp, records in consumer.poll(timeout_ms=500).items():
            end = remaining.get(tp, -1)
            for record in records:
                if record.offset < end:  # later records are newer than the call: not ours
                    on_record(record)
                    read += 1
        if _advance(consumer, remaining, positions):
            moved_at = time.monotonic()
        elif time.monotonic() - moved_at > timeout_s:
            raise UserError(_stalled(topic, remaining, positions, timeout_s))
        if read >= next_report:
            print(f"{topic}: {read:,} of at most {at_most:,} records read", file=sys.stderr)
            next_report = (read // progress_every + 1) * progress_every
    return read


def _advance(consumer: KafkaConsumer, remaining: dict[TopicPartition, int],
             positions: dict[TopicPartition, int]) -> bool:
    """Note each unfinished partition's position; pause (and forget) those that reached their
    end, so their newer records are not fetched. True when any moved."""
    moved = False
    for tp in list(remaining):
        position = consumer.position(tp)
        moved = moved or position != positions[tp]
        positions[tp] = position
        if position >= remaining[tp]:
            del remaining[tp]
            consumer.pause(tp)
    return moved


def _stalled(topic: str, remaining: dict[TopicPartition, int], positions: dict[TopicPartition, int],
             timeout_s: float) -> str:
    behind = ", ".join(f"partition {tp.partition} at {positions[tp]} of {end}"
                       for tp, end in sorted(remaining.items(), key=lambda item: item[0].partition))
    return f"reading {topic} made no progress for {timeout_s:g}s ({behind}); is the broker healthy?"
