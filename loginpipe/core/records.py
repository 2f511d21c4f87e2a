"""Where each record goes, and what it carries: the enriched record to the output topic,
filtered events to the filtered topic (when set), rejected input to the dead-letter topic.
Builds the records; sending them is the shell's job. In privacy mode every record built here
goes through ``Privacy`` first."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from loginpipe.core import enrich, events, risk
from loginpipe.core.contracts import OUTPUT_SCHEMA_ID
from loginpipe.core.events import LoginEvent, RawRecord, Rejection
from loginpipe.core.privacy import ENVELOPE_SCHEME, Privacy, SourcePosition
from loginpipe.state.stores import Counted
from loginpipe.topics import DEFAULT_GROUP, DLQ_TOPIC, OUTPUT_TOPIC, InternalTopics

# Headers on every dead letter.
REASON_HEADER = "dlq-reason"
DETAIL_HEADER = "dlq-detail"
ENCRYPTED_HEADER = "dlq-encrypted"  # privacy mode: the value is an envelope (privacy.py) of this scheme
SOURCE_TOPIC_HEADER = "source-topic"
SOURCE_PARTITION_HEADER = "source-partition"
SOURCE_OFFSET_HEADER = "source-offset"
DEFAULT_INTERNAL = InternalTopics.of(DEFAULT_GROUP)
# Header on every filtered event.
FILTER_REASON_HEADER = "filter-reason"


@dataclass(frozen=True)
class Routes:
    output_topic: str = OUTPUT_TOPIC
    dlq_topic: str = DLQ_TOPIC
    filtered_topic: str | None = None  # None: filtered events are only counted
    # True when the output topic has as many partitions as the input: a record keyed by user_id
    # then goes to its input partition's number, which is where the key's hash would put it
    # anyway, without hashing it again (murmur2 in pure Python is ~10% of the pipeline's time).
    keep_partition: bool = False
    privacy: Privacy | None = None  # None: privacy mode off
    internal: InternalTopics = DEFAULT_INTERNAL  # the group's own topics
    partitions: int = 1  # of the input topic, and so of every internal topic
    # None: processed records are JSON. Else what writes one as a value: framed Avro, with the id
    # the registry gave the output contract (serde.AvroOutput.encode, registered by the shell).
    encode_output: Callable[[dict[str, Any]], bytes] | None = None


@dataclass(slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the producer's partitioner hashes the key
    timestamp_ms: int | None = None  # None: the producer's clock


def repartition_record(routes: Routes, source: RawRecord, event: LoginEvent, device_type: str,
                       counted: Counted) -> OutputRecord:
    """A counted login on its way to the device step, keyed by device_id. Its partition is chosen
    here (crc32: the topic is ours alone, and Kafka's murmur2 in pure Python costs ~10 % of the
    pipeline); its timestamp is the input record's, so end-to-end latency spans both steps. The
    value is a flat array, in ``Repartitioned``'s order."""
    device_key = event.device_id.encode()
    keyed_by_user = source.key is not None and source.key == event.user_id.encode()
    value = orjson.dumps([event.user_id, event.app_version, device_type, event.ip, event.locale,
                          event.device_id, event.timestamp, event.epoch_s, source.partition,
                          source.offset, keyed_by_user, *counted])
    partition = zlib.crc32(device_key) % routes.partitions
    return OutputRecord(routes.internal.repartition, device_key, value, None, partition, source.timestamp)


# What ``read_repartitioned`` returns: the list ``repartition_record`` wrote, used as it is (no
# object per record: this runs per event). Its items, by position:
#   0 user_id, 1 app_version, 2 device_type (normalized), 3 ip, 4 locale, 5 device_id,
#   6 timestamp (as given), 7 epoch_s, 8 source partition, 9 source offset, 10 keyed by user_id,
#   11.. the Counted fields in their order.
Repartitioned = list
USER_ID, DEVICE_ID = 0, 5


def read_repartitioned(value: bytes) -> Repartitioned:
    """The fields ``repartition_record`` wrote, in its order."""
    return orjson.loads(value)


class BatchTime:
    """The processing time of one batch, and its rendering, computed once for all its records."""

    __slots__ = ("iso", "now_s")

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s
        self.iso = enrich.processed_timestamp(now_s)


def processed_record(routes: Routes, login: Repartitioned, users_on_device: int, batch_time: BatchTime
                     ) -> tuple[OutputRecord, str]:
    """The enriched record for the output topic, keyed by user_id, and its risk level. Its fields
    are described by ``schemas/processed-login.v1.json`` (the README's table is rendered from it)."""
    (user_id, app_version, device_type, ip, locale, device_id, timestamp, epoch_s, source_partition,
     source_offset, keyed_by_user, total_for_version, total_from_locale, total_for_device_type,
     distinct_ips, most_common_device_type, newest_major) = login
    second = int(epoch_s)  # parse_event rejects negative times
    login_time, day_of_week, hour_of_day = enrich.time_fields(second)
    major, minor, patch = enrich.version_parts(app_version)
    region, zone = enrich.locale_region(locale)
    local_hour = enrich.local_hour(zone, second // 3600)
    score, level, factors = risk.assess(distinct_ips, users_on_device, major, newest_major, local_hour, ip)
    privacy = routes.privacy
    record = {
        "user_id": user_id,
        "app_version": app_version,
        "device_type": device_type,
        "ip": privacy.masked_ip(ip) if privacy else ip,
        "locale": locale,
        "device_id": privacy.device_token(device_id) if privacy else device_id,
        "timestamp": timestamp,
        "login_time": login_time,
        "day_of_week": day_of_week,
        "hour_of_day": hour_of_day,
        "local_hour_of_day": local_hour,
        "processed_timestamp": batch_time.iso,
        "processing_delay_seconds": enrich.processing_delay_seconds(batch_time.now_s, epoch_s),
        "region": region,
        "app_version_major": major,
        "app_version_minor": minor,
        "app_version_patch": patch,
        "total_logins_for_version": total_for_version,
        "total_logins_from_locale": total_from_locale,
        "total_logins_for_device_type": total_for_device_type,
        "distinct_ips_for_user": distinct_ips,
        "multi_ip_user": distinct_ips > 1,
        "users_on_device": users_on_device,
        "shared_device": users_on_device > 1,
        "most_common_device_type": most_common_device_type,
        "risk_score": score,
        "risk_level": level,
        "risk_factors": factors,
        "privacy": privacy is not None,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "schema": OUTPUT_SCHEMA_ID,
    }
    encode = routes.encode_output
    value = encode(record) if encode else orjson.dumps(record)
    # Only when the input was keyed by this same user_id is its partition the key's partition.
    partition = source_partition if routes.keep_partition and keyed_by_user else None
    return OutputRecord(routes.output_topic, user_id.encode(), value, None, partition), level


def _source_headers(source: RawRecord) -> list[tuple[str, bytes]]:
    return [
        (SOURCE_TOPIC_HEADER, source.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(source.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(source.offset).encode()),
    ]


def filtered_record(routes: Routes, source: RawRecord, event: LoginEvent, reason: str) -> OutputRecord:
    """A filtered event for the filtered topic: the original bytes and key, or in privacy mode the
    event's fields with its ip and device_id masked, keyed by user_id as processed records are
    (the input's key could be anything, an IP too); the reason in a header."""
    key, value = source.key, source.value
    privacy = routes.privacy
    if privacy:
        key = event.user_id.encode()
        value = orjson.dumps({
            "user_id": event.user_id, "app_version": event.app_version, "device_type": event.device_type,
            "ip": privacy.masked_ip(event.ip), "locale": event.locale,
            "device_id": privacy.device_token(event.device_id), "timestamp": event.timestamp,
        })
    headers = [(FILTER_REASON_HEADER, reason.encode()), *_source_headers(source)]
    return OutputRecord(routes.filtered_topic or "", key, value, headers)


def dead_letter(routes: Routes, source: RawRecord, rejection: Rejection) -> OutputRecord:
    """The original bytes, untouched, with the reason and the source position in headers. In
    privacy mode, sealed instead: see ``_sealed_dead_letter``."""
    if routes.privacy:
        return _sealed_dead_letter(routes.dlq_topic, routes.privacy, source, rejection)
    headers = [(REASON_HEADER, rejection.reason.encode()),
               (DETAIL_HEADER, rejection.detail.encode("utf-8", "replace")), *_source_headers(source)]
    value = source.value
    if value is None and source.key is None:
        value = b""  # Kafka needs a key or a value; dlq-detail says the input was null
    return OutputRecord(routes.dlq_topic, source.key, value, headers)


# Privacy mode's dlq-detail: a fixed text per reason. The parser's own detail may quote the
# input (an invalid ip, say), so it travels inside the envelope only.
GENERIC_DETAILS = {
    events.TOO_LARGE: f"more than {events.MAX_EVENT_BYTES} bytes",
    events.NOT_UTF8: "value is not valid UTF-8",
    events.INVALID_JSON: "value is not JSON, or null",
    events.NOT_AN_OBJECT: "JSON value is not an object",
    events.MISSING_FIELD: "a required field is missing",
    events.WRONG_TYPE: "a field has the wrong type",
    events.EMPTY_OR_LONG: "a field is empty or too long",
    events.INVALID_TIMESTAMP: "timestamp is not a number or numeric string",
    events.NEGATIVE_TIMESTAMP: "timestamp is negative",
    events.FUTURE_TIMESTAMP: "timestamp is too far in the future",
    events.INVALID_IP: "ip is not an IPv4 or IPv6 address",
    events.INVALID_APP_VERSION: "app_version is not x.y.z",
    events.UNKNOWN_SCHEMA_ID: "framed Avro whose schema id the registry does not know",
    events.INVALID_AVRO: "framed Avro that does not decode with its schema",
}
SEALED_DETAIL_SUFFIX = " (details in the encrypted value)"


def _sealed_dead_letter(topic: str, privacy: Privacy, source: RawRecord, rejection: Rejection
                        ) -> OutputRecord:
    """Privacy mode: no shape of bad input can be searched for IPs safely, so the key, value and
    full detail are sealed whole (``Privacy.seal``) and recoverable with the secret. The key
    becomes its keyed token: records with the same key still share a partition."""
    position = SourcePosition(source.topic, source.partition, source.offset)
    envelope = privacy.seal(position, source.key, source.value, rejection.detail)
    key = None if source.key is None else privacy.token(source.key)
    detail = GENERIC_DETAILS.get(rejection.reason, "rejected") + SEALED_DETAIL_SUFFIX
    headers = [(REASON_HEADER, rejection.reason.encode()), (DETAIL_HEADER, detail.encode()),
               (ENCRYPTED_HEADER, ENVELOPE_SCHEME.encode()), *_source_headers(source)]
    return OutputRecord(topic, key, envelope, headers)
