"""Parsing and validation: known inputs, and property-based: any bytes in, never an exception, and
every rejection names a known reason, the right one for what is wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loginpipe.core import events
from loginpipe.core.events import LoginEvent, Rejection, parse_event, parse_unguarded
from loginpipe.local.generator import GOOD, EventGenerator

NOW = 1_700_000_000.0
GOOD_EVENT = {"user_id": "u1", "app_version": "2.3.0", "device_type": "iOS", "ip": "199.172.111.135",
              "locale": "RU", "device_id": "593-47-5928", "timestamp": 1694479551}


def parse(obj) -> LoginEvent | Rejection:
    return parse_event(json.dumps(obj).encode(), NOW)


def with_(**changes) -> dict:
    event = dict(GOOD_EVENT)
    event.update(changes)
    return event


def test_valid_event_keeps_fields_and_timestamp_as_given() -> None:
    event = parse(GOOD_EVENT)
    assert isinstance(event, LoginEvent)
    assert (event.user_id, event.device_type, event.ip, event.timestamp) == \
        ("u1", "iOS", "199.172.111.135", 1694479551)
    assert event.epoch_s == 1694479551.0


@pytest.mark.parametrize("timestamp, epoch", [("1694479551", 1694479551.0), (1694479551.5, 1694479551.5),
                                              ("1694479551.25", 1694479551.25), (0, 0.0)])
def test_numeric_timestamps_are_accepted(timestamp, epoch) -> None:
    event = parse(with_(timestamp=timestamp))
    assert isinstance(event, LoginEvent) and event.epoch_s == epoch and event.timestamp == timestamp


def test_ipv6_is_accepted() -> None:
    assert isinstance(parse(with_(ip="2001:db8::1")), LoginEvent)


@pytest.mark.parametrize("raw, reason", [
    (b"x" * (events.MAX_EVENT_BYTES + 1), events.TOO_LARGE),
    (b'{"user_id": "\xff\xfe"}', events.NOT_UTF8),
    (b'{"user_id": "u1",', events.INVALID_JSON),
    (b"", events.INVALID_JSON),
    (None, events.INVALID_JSON),
    (b"[1, 2]", events.NOT_AN_OBJECT),
    (b"42", events.NOT_AN_OBJECT),
])
def test_undecodable_input_is_rejected_with_its_reason(raw, reason) -> None:
    result = parse_event(raw, NOW)
    assert isinstance(result, Rejection) and result.reason == reason


@pytest.mark.parametrize("event, reason", [
    ({k: v for k, v in GOOD_EVENT.items() if k != "device_type"}, events.MISSING_FIELD),
    (with_(user_id=12345), events.WRONG_TYPE),
    (with_(locale=None), events.WRONG_TYPE),
    (with_(ip=["1.2.3.4"]), events.WRONG_TYPE),
    (with_(user_id=""), events.EMPTY_OR_LONG),
    (with_(device_id="d" * 1000), events.EMPTY_OR_LONG),
    (with_(timestamp="yesterday"), events.INVALID_TIMESTAMP),
    (with_(timestamp=True), events.INVALID_TIMESTAMP),
    (with_(timestamp=None), events.INVALID_TIMESTAMP),
    (with_(timestamp="nan"), events.INVALID_TIMESTAMP),
    (with_(timestamp="inf"), events.INVALID_TIMESTAMP),
    (with_(timestamp=-5), events.NEGATIVE_TIMESTAMP),
    (with_(timestamp="-1694479551"), events.NEGATIVE_TIMESTAMP),
    (with_(timestamp=int(NOW) + 2 * 86400), events.FUTURE_TIMESTAMP),
    (with_(timestamp=10**30), events.FUTURE_TIMESTAMP),
    (with_(ip="999.1.2.3"), events.INVALID_IP),
    (with_(ip="not-an-ip"), events.INVALID_IP),
    (with_(app_version="v2"), events.INVALID_APP_VERSION),
    (with_(app_version="2.3"), events.INVALID_APP_VERSION),
    (with_(app_version="2.3.0-beta"), events.INVALID_APP_VERSION),
])
def test_invalid_fields_are_rejected_with_their_reason(event, reason) -> None:
    result = parse(event)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail


def test_every_good_generated_event_parses_and_every_bad_one_is_rejected() -> None:
    for record in EventGenerator(seed=9, users=500, bad_ratio=0.3).generate(5000, clock=lambda: NOW):
        result = parse_event(record.value, NOW)
        assert isinstance(result, LoginEvent) == (record.kind == GOOD), (record.kind, result)


# The property tests call parse_unguarded: parse_event's last-resort catch-all would turn any
# bug that raises into a rejection ("unexpected <Exception>") and the tests could never fail.


def assert_a_known_rejection(result) -> None:
    assert isinstance(result, Rejection), result
    assert result.reason in events.REASONS, result
    assert result.detail, result


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_give_an_event_or_a_rejection_with_a_known_reason(raw: bytes) -> None:
    result = parse_unguarded(raw, NOW)
    if not isinstance(result, LoginEvent):
        assert_a_known_rejection(result)


# Finite floats only: json.dumps writes an infinity as "Infinity", which is not JSON at all.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={name: JSON_VALUES | st.text(max_size=30)
                                           for name in events.REQUIRED_FIELDS}))
def test_any_json_object_gives_its_own_fields_or_a_known_rejection(obj: dict) -> None:
    result = parse_unguarded(json.dumps(obj).encode(), NOW)
    if isinstance(result, LoginEvent):
        assert {name: getattr(result, name) for name in events.REQUIRED_FIELDS} == obj
    else:
        assert_a_known_rejection(result)
        if not set(events.REQUIRED_FIELDS) <= set(obj):
            assert result.reason == events.MISSING_FIELD, result


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=256)


@st.composite
def valid_events(draw) -> dict:
    version = ".".join(str(draw(st.integers(0, 999_999_999))) for _ in range(3))
    timestamp = draw(st.integers(0, int(NOW)) | st.floats(0, NOW)
                     | st.integers(0, int(NOW)).map(str) | st.decimals(0, NOW, places=3).map(str))
    return {"user_id": draw(_TEXT), "app_version": version, "device_type": draw(_TEXT),
            "ip": str(draw(st.ip_addresses())), "locale": draw(_TEXT), "device_id": draw(_TEXT),
            "timestamp": timestamp}


@settings(max_examples=300, deadline=None)
@given(valid_events())
def test_a_valid_event_parses_to_its_own_fields(event: dict) -> None:
    result = parse_unguarded(json.dumps(event).encode(), NOW)
    assert isinstance(result, LoginEvent), result
    assert {name: getattr(result, name) for name in events.REQUIRED_FIELDS} == event
    assert result.epoch_s == float(event["timestamp"])


_STRING_REASONS = {events.WRONG_TYPE, events.EMPTY_OR_LONG}
# The reasons a wrong value of each field can get: any other one names the wrong problem.
FIELD_REASONS = {
    "user_id": _STRING_REASONS, "device_type": _STRING_REASONS, "locale": _STRING_REASONS,
    "device_id": _STRING_REASONS,
    "ip": _STRING_REASONS | {events.INVALID_IP},
    "app_version": _STRING_REASONS | {events.INVALID_APP_VERSION},
    "timestamp": {events.INVALID_TIMESTAMP, events.NEGATIVE_TIMESTAMP, events.FUTURE_TIMESTAMP},
}


@st.composite
def near_misses(draw, good: object) -> str:
    """The good value as text with one character inserted, replaced or removed: "2.3.0\n", "1.2.3.4\x00"."""
    text = str(good)
    at = draw(st.integers(0, len(text)))
    # Characters parsers trip on (NUL, line ends, separators, non-ASCII), and any other.
    char = draw(st.sampled_from("\x00\n\t .:-0éa") | st.characters(exclude_categories=("Cs",)))
    edit = draw(st.sampled_from(["insert", "replace", "remove"]))
    if edit == "insert":
        return text[:at] + char + text[at:]
    return text[:at] + (char if edit == "replace" else "") + text[at + 1:]


@st.composite
def one_field_replaced(draw) -> tuple[str, object]:
    field = draw(st.sampled_from(sorted(GOOD_EVENT)))
    return field, draw(JSON_VALUES | near_misses(GOOD_EVENT[field]))


@settings(max_examples=1000, deadline=None)
@given(one_field_replaced())
def test_a_good_event_with_one_field_replaced_is_kept_or_rejected_for_that_field(case) -> None:
    field, value = case
    result = parse_unguarded(json.dumps(with_(**{field: value})).encode(), NOW)
    if isinstance(result, LoginEvent):
        assert getattr(result, field) == value
    else:
        assert_a_known_rejection(result)
        assert result.reason in FIELD_REASONS[field], (field, value, result)
        if field != "timestamp" and result.reason != events.MISSING_FIELD:
            assert field in result.detail, result
