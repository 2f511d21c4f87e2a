"""Parsing and validation: known inputs, and property-based: any bytes in, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loginpipe.core import events
from loginpipe.core.events import LoginEvent, Rejection, parse_event
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


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_give_an_event_or_a_rejection(raw: bytes) -> None:
    assert isinstance(parse_event(raw, NOW), LoginEvent | Rejection)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={name: JSON_VALUES | st.text(max_size=30)
                                           for name in events.REQUIRED_FIELDS}))
def test_any_json_object_gives_an_event_or_a_rejection(obj: dict) -> None:
    result = parse_event(json.dumps(obj).encode(), NOW)
    if isinstance(result, LoginEvent):
        assert set(events.REQUIRED_FIELDS) <= set(obj)
    else:
        assert result.reason in events.REASONS


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD_EVENT)), JSON_VALUES)
def test_a_good_event_with_one_field_replaced_never_raises(field: str, value) -> None:
    result = parse(with_(**{field: value}))
    assert isinstance(result, LoginEvent | Rejection)
