"""Parsing and validating raw login events: any bytes in, a LoginEvent or a Rejection out.

``parse_event`` never raises; every way an input can be wrong has a reason name, which is what
the dead-letter topic's ``dlq-reason`` header carries.
"""

from __future__ import annotations

import functools
import math
import re
import socket
from dataclasses import dataclass

import orjson

MAX_EVENT_BYTES = 64 * 1024
MAX_FIELD_CHARS = 256
MAX_FUTURE_SKEW_S = 24 * 3600
STRING_FIELDS = ("user_id", "app_version", "device_type", "ip", "locale", "device_id")
REQUIRED_FIELDS = (*STRING_FIELDS, "timestamp")
_VERSION = re.compile(r"\d{1,9}\.\d{1,9}\.\d{1,9}")
_NUMERIC = re.compile(r"\s*\d+(\.\d+)?\s*")

# Reasons, in the order the checks run.
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_OR_LONG = "empty_or_too_long"
INVALID_TIMESTAMP = "invalid_timestamp"
NEGATIVE_TIMESTAMP = "negative_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
INVALID_IP = "invalid_ip"
INVALID_APP_VERSION = "invalid_app_version"
REASONS = (TOO_LARGE, NOT_UTF8, INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE, EMPTY_OR_LONG,
           INVALID_TIMESTAMP, NEGATIVE_TIMESTAMP, FUTURE_TIMESTAMP, INVALID_IP, INVALID_APP_VERSION)


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


def parse_event(raw: bytes | None, now_s: float, max_future_skew_s: float = MAX_FUTURE_SKEW_S
                ) -> LoginEvent | Rejection:
    """Validate one record's value. Never raises."""
    try:
        return _parse(raw, now_s, max_future_skew_s)
    except Exception as exc:  # the contract is "never raises": a bug here must not stop the stream
        return Rejection(INVALID_JSON, f"unexpected {type(exc).__name__}")


def _parse(raw: bytes | None, now_s: float, max_future_skew_s: float) -> LoginEvent | Rejection:
    # The common, valid case runs straight through with few calls: it is per event. Each failed
    # check hands over to _describe_fields, which says exactly what is wrong.
    if raw is None:
        return Rejection(INVALID_JSON, "empty record (null value)")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(TOO_LARGE, f"{len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _is_utf8(raw):
            return Rejection(INVALID_JSON, str(exc)[:200])
        return Rejection(NOT_UTF8, "value is not valid UTF-8")
    if type(data) is not dict:
        return Rejection(NOT_AN_OBJECT, f"JSON {type(data).__name__}, expected an object")
    try:
        user_id, version, device_type = data["user_id"], data["app_version"], data["device_type"]
        ip, locale, device_id, timestamp = data["ip"], data["locale"], data["device_id"], data["timestamp"]
    except KeyError:
        return _describe_fields(data)
    if not (type(user_id) is str and type(version) is str and type(device_type) is str
            and type(ip) is str and type(locale) is str and type(device_id) is str
            and 0 < len(user_id) <= MAX_FIELD_CHARS and 0 < len(version) <= MAX_FIELD_CHARS
            and 0 < len(device_type) <= MAX_FIELD_CHARS and 0 < len(ip) <= MAX_FIELD_CHARS
            and 0 < len(locale) <= MAX_FIELD_CHARS and 0 < len(device_id) <= MAX_FIELD_CHARS):
        return _describe_fields(data)
    epoch_s = _epoch_seconds(timestamp)
    if epoch_s is None:
        return Rejection(INVALID_TIMESTAMP, f"timestamp {str(timestamp)[:40]!r} is not a number")
    if epoch_s < 0:
        return Rejection(NEGATIVE_TIMESTAMP, f"timestamp {epoch_s:.0f} is negative")
    if epoch_s > now_s + max_future_skew_s:
        return Rejection(FUTURE_TIMESTAMP, f"timestamp {epoch_s:.0f} is after now + {max_future_skew_s:.0f}s")
    if not _is_ip(ip):
        return Rejection(INVALID_IP, f"ip {ip[:60]!r} is not an IPv4 or IPv6 address")
    if not _is_version(version):
        return Rejection(INVALID_APP_VERSION, f"app_version {version[:40]!r} is not x.y.z")
    return LoginEvent(user_id, version, device_type, ip, locale, device_id, timestamp, epoch_s)


@functools.lru_cache(maxsize=1024)  # a stream carries a few dozen versions: skip the regex for them
def _is_version(text: str) -> bool:
    return _VERSION.fullmatch(text) is not None


def _describe_fields(data: dict) -> Rejection:
    """Why the fields of a decoded object are not a login event (the slow, precise path)."""
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        return Rejection(MISSING_FIELD, "missing " + ", ".join(missing))
    for name in STRING_FIELDS:
        value = data[name]
        if type(value) is not str:
            return Rejection(WRONG_TYPE, f"{name} is {type(value).__name__}, expected string")
        if not 0 < len(value) <= MAX_FIELD_CHARS:
            return Rejection(EMPTY_OR_LONG, f"{name} has {len(value)} characters")
    return Rejection(WRONG_TYPE, "fields do not form a login event")  # not reached: a safety net


def _epoch_seconds(value: object) -> float | None:
    """Seconds since the epoch from an int, a float or a numeric string; None when it is none."""
    if type(value) is int:
        return float(value) if abs(value) < 1e15 else math.copysign(1e15, value)
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is str and len(value) <= 40:
        sign = -1.0 if value.startswith("-") else 1.0
        digits = value[1:] if sign < 0 else value
        if _NUMERIC.fullmatch(digits):
            return sign * float(digits)
    return None


def _is_ip(text: str) -> bool:
    """Strict IPv4 dotted quad or IPv6, via the C library (several times faster than ipaddress)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):  # ValueError: non-ASCII text or an embedded NUL
        return False
    return True


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
