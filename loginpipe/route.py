"""Where each record goes: the output topic for processed events, the dead-letter topic for
rejected input. Builds the records; sending them is the shell's job."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from loginpipe.enrich import login_time_iso
from loginpipe.events import LoginEvent, RawRecord, Rejection
from loginpipe.state import Snapshot
from loginpipe.topics import DLQ_TOPIC, OUTPUT_TOPIC

# Headers on every dead letter.
REASON_HEADER = "dlq-reason"
DETAIL_HEADER = "dlq-detail"
SOURCE_TOPIC_HEADER = "source-topic"
SOURCE_PARTITION_HEADER = "source-partition"
SOURCE_OFFSET_HEADER = "source-offset"


@dataclass(frozen=True)
class Routes:
    output_topic: str = OUTPUT_TOPIC
    dlq_topic: str = DLQ_TOPIC
    # True when the output topic has as many partitions as the input: a record keyed by user_id
    # then goes to its input partition's number, which is where the key's hash would put it
    # anyway, without hashing it again (murmur2 in pure Python is ~10% of the pipeline's time).
    keep_partition: bool = False


@dataclass(slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the producer's partitioner hashes the key


def processed_record(routes: Routes, source: RawRecord, event: LoginEvent, device_type: str,
                     snapshot: Snapshot) -> OutputRecord:
    """The enriched record for the output topic, keyed by user_id (fields: see the README)."""
    key = event.user_id.encode()
    value = orjson.dumps({
        "user_id": event.user_id,
        "app_version": event.app_version,
        "device_type": device_type,
        "ip": event.ip,
        "locale": event.locale,
        "device_id": event.device_id,
        "timestamp": event.timestamp,
        "login_time": login_time_iso(event.epoch_s),
        "total_logins_for_version": snapshot.total_logins_for_version,
        "total_logins_from_locale": snapshot.total_logins_from_locale,
        "total_logins_for_device_type": snapshot.total_logins_for_device_type,
        "distinct_ips_for_user": snapshot.distinct_ips_for_user,
        "multi_ip_user": snapshot.distinct_ips_for_user > 1,
        "users_on_device": snapshot.users_on_device,
        "shared_device": snapshot.users_on_device > 1,
        "most_common_device_type": snapshot.most_common_device_type,
        "source_partition": source.partition,
        "source_offset": source.offset,
    })
    # Only when the input was keyed by this same user_id is its partition the key's partition.
    partition = source.partition if routes.keep_partition and source.key == key else None
    return OutputRecord(routes.output_topic, key, value, None, partition)


def dead_letter(routes: Routes, source: RawRecord, rejection: Rejection) -> OutputRecord:
    """The original bytes, untouched, with the reason and the source position in headers."""
    headers = [
        (REASON_HEADER, rejection.reason.encode()),
        (DETAIL_HEADER, rejection.detail.encode("utf-8", "replace")),
        (SOURCE_TOPIC_HEADER, source.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(source.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(source.offset).encode()),
    ]
    value = source.value
    if value is None and source.key is None:
        value = b""  # Kafka needs a key or a value; dlq-detail says the input was null
    return OutputRecord(routes.dlq_topic, source.key, value, headers)
