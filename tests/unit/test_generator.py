"""The event generator's determinism, shape and share of bad input (no broker needed)."""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections import Counter, defaultdict

import orjson
import pytest

from loginpipe.local.generator import (
    BAD_KINDS,
    GOOD,
    MOBILE_TYPES,
    NON_MOBILE_TYPES,
    US_STATES,
    EventGenerator,
)

FIELDS = {"user_id", "app_version", "device_type", "ip", "locale", "device_id", "timestamp"}
NOW = 1_700_000_000.0


def records(seed: int, n: int, **kwargs):
    return list(EventGenerator(seed=seed, users=2000, **kwargs).generate(n, clock=lambda: NOW))


def test_same_seed_same_events_and_other_seed_other_events() -> None:
    assert records(7, 3000) == records(7, 3000)
    assert [r.value for r in records(7, 300)] != [r.value for r in records(8, 300)]


def test_good_events_have_the_original_shape() -> None:
    goods = [r for r in records(1, 5000) if r.kind == GOOD]
    assert len(goods) > 4500
    for record in goods:
        event = orjson.loads(record.value)
        assert set(event) == FIELDS
        assert record.key == event["user_id"].encode()
        assert uuid.UUID(event["user_id"]).version == 4 and uuid.UUID(event["device_id"]).version == 4
        ipaddress.ip_address(event["ip"])
        assert event["device_type"] in MOBILE_TYPES + NON_MOBILE_TYPES
        assert int(event["timestamp"]) == int(NOW)
        assert len(event["app_version"].split(".")) == 3
    locales = Counter(orjson.loads(r.value)["locale"] for r in goods)
    assert sum(n for loc, n in locales.items() if loc in US_STATES) > 0.9 * len(goods)


def test_mix_has_non_mobile_inconsistent_case_and_string_timestamps() -> None:
    events = [orjson.loads(r.value) for r in records(2, 5000) if r.kind == GOOD]
    types = Counter(e["device_type"] for e in events)
    assert any(t in types for t in NON_MOBILE_TYPES)
    assert "iOS" in types and "android" in types and ({"IOS", "ios", "Android", "ANDROID"} & set(types))
    assert any(isinstance(e["timestamp"], str) for e in events)
    assert any(isinstance(e["timestamp"], int) for e in events)


def test_population_has_multi_ip_users_and_shared_devices() -> None:
    ips, users = defaultdict(set), defaultdict(set)
    for record in records(3, 20_000, bad_ratio=0.0):
        event = orjson.loads(record.value)
        ips[event["user_id"]].add(event["ip"])
        users[event["device_id"]].add(event["user_id"])
    multi_ip = sum(1 for s in ips.values() if len(s) > 1)
    shared = sum(1 for s in users.values() if len(s) > 1)
    assert multi_ip > 50 and shared > 10
    # Skewed: the busiest user logs in far more often than the average one.
    counts = Counter(orjson.loads(r.value)["user_id"] for r in records(3, 20_000, bad_ratio=0.0))
    assert max(counts.values()) > 10 * (20_000 / len(counts))


@pytest.mark.parametrize("bad_ratio", [0.0, 0.05, 0.3])
def test_bad_share_is_what_was_asked_within_sampling_error(bad_ratio: float) -> None:
    n = 20_000
    bad = sum(1 for r in records(4, n, bad_ratio=bad_ratio) if r.kind != GOOD)
    sd = math.sqrt(n * bad_ratio * (1 - bad_ratio))
    assert abs(bad - n * bad_ratio) <= 5 * sd + 1e-9


def test_every_bad_kind_occurs_and_is_really_bad() -> None:
    bad = [r for r in records(5, 20_000, bad_ratio=0.5) if r.kind != GOOD]
    assert set(r.kind for r in bad) == set(BAD_KINDS)
    for record in bad:
        if record.kind == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                record.value.decode("utf-8")
        elif record.kind == "invalid_json":
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(record.value)
        elif record.kind == "oversized":
            assert len(record.value) > 64 * 1024
        elif record.kind == "missing_field":
            assert len(FIELDS & set(orjson.loads(record.value))) == len(FIELDS) - 1
