"""Parsing and validating raw login events: any bytes in, a LoginEvent or a Rejection out.

``parse_event`` never raises; every way an input can be wrong has a reason name, which is what
the dead-letter topic's ``dlq-reason`` header carries. It is ``parse_unguarded`` behind a
last-resort catch-all: the property tests call ``parse_unguarded``, so a bug raises there
instead of passing as a rejection.

The input schema (``contracts.INPUT_SCHEMA``) is the contract: the field list, the length
limits and the patterns below are read from it. The common, valid case runs through checks
built from those values; an event that fails them is handed to the schema compiled by
fastjsonschema, whose failed rule names the reason. A property test checks both always agree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import orjson

from loginpipe.core import contracts
from loginpipe.core.addresses import is_ip

MAX_EVENT_BYTES = 64 * 1024
MAX_FUTURE_SKEW_S = 24 * 3600

_SCHEMA = contracts.load(contracts.INPUT_SCHEMA)
_PROPERTIES = _SCHEMA["properties"]
REQUIRED_FIELDS = tuple(_SCHEMA["required"])
STRING_FIELDS = tuple(name for name in REQUIRED_FIELDS if _PROPERTIES[name].get("type") == "string")
_LIMITS = {(_PROPERTIES[name]["minLength"], _PROPERTIES[name]["maxLength"]) for name in STRING_FIELDS}
# parse_unguarded checks the fields inline, by name, with one pair of limits: it is the hottest code of
# the pipeline. A schema that changes either fails here, at import, rather than being ignored.
_ORDER = ("user_id", "app_version", "device_type", "ip", "locale", "device_id")
if STRING_FIELDS != _ORDER or len(_LIMITS) != 1:
    raise ImportError(f"{contracts.INPUT_SCHEMA}: update events.parse_unguarded for its string fields")
((_MIN_CHARS, _MAX_CHARS),) = _LIMITS
_VERSION = contracts.python_regex(_PROPERTIES["app_version"]["pattern"])
_TIMESTAMP_TEXT = next(option for option in _PROPERTIES["timestamp"]["anyOf"] if option["type"] == "string")
_NUMERIC = contracts.python_regex(_TIMESTAMP_TEXT["pattern"])
_NUMERIC_MAX_CHARS = _TIMESTAMP_TEXT["maxLength"]

# Reasons. The ones a schema rule names are in the schema ("x-invalid-reason"); the others are
# what the schema cannot say: size, encoding, syntax, and times relative to now.
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_OR_LONG = "empty_or_too_long"
INVALID_TIMESTAMP = _PROPERTIES["timestamp"]["x-invalid-reason"]
NEGATIVE_TIMESTAMP = "negative_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
INVALID_IP = _PROPERTIES["ip"]["x-invalid-reason"]
INVALID_APP_VERSION = _PROPERTIES["app_version"]["x-invalid-reason"]
# Registry-framed Avro input (core/avro.py): a schema id the registry does not know (or no
# registry to ask), and a frame or body that does not decode with the schema it names.
UNKNOWN_SCHEMA_ID = "unknown_schema_id"
INVALID_AVRO = "invalid_avro"
REASONS = (TOO_LARGE, NOT_UTF8, INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE, EMPTY_OR_LONG,
           INVALID_TIMESTAMP, NEGATIVE_TIMESTAMP, FUTURE_TIMESTAMP, INVALID_IP, INVALID_APP_VERSION,
           UNKNOWN_SCHEMA_ID, INVALID_AVRO)
AVRO_MAGIC = b"\x00"  # first byte of a framed value; JSON text never starts with it
AVRO_HEADER_BYTES = 5  # the magic byte and the 4-byte schema id
# Writer schemas by id, as the shell resolved them from the registry for a batch; None: no registry.
Schemas = Mapping[int, Any] | None
_RULE_REASONS = {"required": MISSING_FIELD, "type": WRONG_TYPE,
                 "minLength": EMPTY_OR_LONG, "maxLength": EMPTY_OR_LONG}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record as the pipeline sees it. Kafka clients' records have the same attribute
    names (kafka-python's ConsumerRecord does), so the shell passes them in unconverted."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)  # not frozen: frozen dataclasses are slower to build, and this is per event
class LoginEvent:
    """A valid login event. ``timestamp`` is the value as given; ``epoch_s`` is it in seconds."""

    user_id: str
    app_version: str
    device_type: str
    ip: str
    locale: str
    device_id: str
    timestamp: int | str | float
    epoch_s: float


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


def parse_event(raw: bytes | None, now_s: float, max_future_skew_s: float = MAX_FUTURE_SKEW_S,
                schemas: Schemas = None) -> LoginEvent | Rejection:
    """Validate one record's value, JSON or registry-framed Avro (``schemas``: the writer schemas
    of the batch's framed records, by id). Never raises."""
    try:
        return parse_unguarded(raw, now_s, max_future_skew_s, schemas)
    except Exception as exc:  # the contract is "never raises": a bug here must not stop the stream
        return Rejection(INVALID_JSON, f"unexpected {type(exc).__name__}")


def parse_unguarded(raw: bytes | None, now_s: float, max_future_skew_s: float = MAX_FUTURE_SKEW_S,
                    schemas: Schemas = None) -> LoginEvent | Rejection:
    """``parse_event`` without its catch-all: an exception here is a bug (tests call this one)."""
    # The common, valid case runs straight through with few calls: it is per event.
    if raw is None:
        return Rejection(INVALID_JSON, "empty record (null value)")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(TOO_LARGE, f"{len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # Framed Avro is looked for only here: JSON, the common case, pays nothing for it.
        if raw[:1] == AVRO_MAGIC:
            return parse_framed(raw, now_s, max_future_skew_s, schemas)
        if _is_utf8(raw):
            return Rejection(INVALID_JSON, str(exc)[:200])
        return Rejection(NOT_UTF8, "value is not valid UTF-8")
    return validate(data, now_s, max_future_skew_s)


def validate(data: Any, now_s: float, max_future_skew_s: float = MAX_FUTURE_SKEW_S) -> LoginEvent | Rejection:
    """A decoded value (from JSON or Avro) checked against the contract and the clock."""
    if type(data) is not dict:
        return Rejection(NOT_AN_OBJECT, f"JSON {type(data).__name__}, expected an object")
    try:
        user_id, version, device_type = data["user_id"], data["app_version"], data["device_type"]
        ip, locale, device_id, timestamp = data["ip"], data["locale"], data["device_id"], data["timestamp"]
    except KeyError:
        return explain(data)
    low, high = _MIN_CHARS, _MAX_CHARS
    if not (type(user_id) is str and type(version) is str and type(device_type) is str
            and type(ip) is str and type(locale) is str and type(device_id) is str
            and low <= len(user_id) <= high and low <= len(version) <= high
            and low <= len(device_type) <= high and low <= len(ip) <= high
            and low <= len(locale) <= high and low <= len(device_id) <= high):
        return explain(data)
    epoch_s = _epoch_seconds(timestamp)
    if epoch_s is None or not is_ip(ip) or not is_app_version(version):
        return explain(data)
    # Valid by the schema. What follows depends on the clock, which a schema cannot express.
    if not epoch_s >= 0:  # negative, or NaN: no time at all (the schema's "number" allows it)
        if epoch_s != epoch_s:
            return Rejection(INVALID_TIMESTAMP, "timestamp is NaN")
        return Rejection(NEGATIVE_TIMESTAMP, f"timestamp {epoch_s:.10g} is negative")
    if epoch_s > now_s + max_future_skew_s:
        return Rejection(FUTURE_TIMESTAMP,
                         f"timestamp {epoch_s:.10g} is after now + {max_future_skew_s:.0f}s")
    return LoginEvent(user_id, version, device_type, ip, locale, device_id, timestamp, epoch_s)


def parse_framed(raw: bytes, now_s: float, max_future_skew_s: float, schemas: Schemas
                 ) -> LoginEvent | Rejection:
    """A registry-framed Avro value: decoded with the writer schema its id names, then validated
    like JSON (an Avro record can still hold an empty user_id or an ip that is not one)."""
    if len(raw) < AVRO_HEADER_BYTES:
        return Rejection(INVALID_AVRO, f"truncated frame: {len(raw)} bytes, the magic byte and schema "
                                       f"id alone take {AVRO_HEADER_BYTES}")
    schema_id = int.from_bytes(raw[1:AVRO_HEADER_BYTES], "big")
    if schemas is None:
        return Rejection(UNKNOWN_SCHEMA_ID, f"framed Avro with schema id {schema_id}, but no schema "
                                            "registry is configured (--schema-registry-url)")
    schema = schemas.get(schema_id)
    if schema is None:
        return Rejection(UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not an Avro schema in the registry")
    from loginpipe.core import avro  # fastavro: only there when schemas are (the avro extra)

    try:
        data = avro.decode(schema, raw[AVRO_HEADER_BYTES:])
    except avro.DecodeError as exc:
        return Rejection(INVALID_AVRO, f"schema id {schema_id}: {exc}"[:200])
    return validate(data, now_s, max_future_skew_s)


@functools.lru_cache(maxsize=1024)  # a stream carries a few dozen versions: skip the regex for them
def is_app_version(text: str) -> bool:
    return _VERSION.search(text) is not None


def _epoch_seconds(value: object) -> float | None:
    """Seconds since the epoch from a number or a numeric string; None when it is neither."""
    kind = type(value)
    if kind is int:
        return float(value) if abs(value) < 1e15 else math.copysign(1e15, value)
    if kind is float:
        return value  # NaN (Avro's double has it, JSON not): validate; an infinity: too late or early
    if kind is str and len(value) <= _NUMERIC_MAX_CHARS and _NUMERIC.search(value):
        return float(value)
    return None


def explain(data: object) -> Rejection:
    """Why a decoded value is not a login event, from the schema rule it fails (the slow path)."""
    try:
        contracts.validator(contracts.INPUT_SCHEMA)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _rejection(data, exc)
    # Only reached if the fast checks above and the schema disagree; a property test says they don't.
    return Rejection(INVALID_JSON, "rejected by the parser but valid by the schema")


def _rejection(data: object, exc: fastjsonschema.JsonSchemaValueException) -> Rejection:
    if exc.rule == "required":
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        return Rejection(MISSING_FIELD, "missing " + ", ".join(missing))
    if len(exc.path) < 2:
        return Rejection(NOT_AN_OBJECT, exc.message)
    field, value = exc.path[1], exc.value
    reason = (_RULE_REASONS.get(exc.rule)
              or _PROPERTIES.get(field, {}).get("x-invalid-reason", WRONG_TYPE))
    if reason == WRONG_TYPE:
        return Rejection(reason, f"{field} is {type(value).__name__}, expected {exc.rule_definition}")
    if reason == EMPTY_OR_LONG:
        spec = _PROPERTIES[field]
        return Rejection(reason, f"{field} has {len(value)} characters, "
                                 f"limits {spec['minLength']}..{spec['maxLength']}")
    return Rejection(reason, f"{field} {str(value)[:60]!r} fails the schema's {exc.rule} rule")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
