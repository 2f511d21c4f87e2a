"""Enrichment fields computed from one event: times, region, version parts."""

from __future__ import annotations

import calendar
import time

import pytest

from loginpipe.core import enrich


def utc(text: str) -> int:
    """Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS" in UTC."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def test_midnight_utc_starts_a_new_day() -> None:
    assert enrich.time_fields(utc("2026-01-01T00:00:00")) == ("2026-01-01T00:00:00Z", "Thursday", 0)
    assert enrich.time_fields(int(utc("2025-12-31T23:59:59") + 0.999)) == \
        ("2025-12-31T23:59:59Z", "Wednesday", 23)


@pytest.mark.parametrize(("when", "zone", "hour"), [
    # New York: DST starts 2026-03-08 at 02:00 local (07:00 UTC), ends 2026-11-01 at 02:00 (06:00 UTC).
    ("2026-03-08T06:59:59", "America/New_York", 1),
    ("2026-03-08T07:00:00", "America/New_York", 3),
    ("2026-11-01T05:30:00", "America/New_York", 1),  # 01:30 EDT
    ("2026-11-01T06:30:00", "America/New_York", 1),  # 01:30 EST, the hour that repeats
    ("2026-07-01T12:00:00", "America/Phoenix", 5),  # Arizona keeps UTC-7 all year
    ("2026-07-01T12:00:00", "America/Denver", 6),
    ("2026-01-15T09:00:00", "Pacific/Honolulu", 23),  # the day before, locally
])
def test_local_hour_follows_daylight_saving_time(when: str, zone: str, hour: int) -> None:
    assert enrich.local_hour(zone, utc(when) // 3600) == hour


def test_local_hour_is_unknown_without_a_zone() -> None:
    assert enrich.local_hour(None, utc("2026-01-01T00:00:00") // 3600) is None


def test_version_parts_take_numbers_of_any_width() -> None:
    assert enrich.version_parts("10.0.1") == (10, 0, 1)
    assert enrich.version_parts("2.3.0") == (2, 3, 0)
    assert enrich.version_parts("007.10.123") == (7, 10, 123)


@pytest.mark.parametrize(("locale", "region", "zone"), [
    ("NY", "Northeast", "America/New_York"), ("PA", "Northeast", "America/New_York"),
    ("IL", "Midwest", "America/Chicago"), ("TX", "South", "America/Chicago"),
    ("DC", "South", "America/New_York"), ("CA", "West", "America/Los_Angeles"),
    ("AZ", "West", "America/Phoenix"), ("tx", "South", "America/Chicago"),
    ("RU", "Other", None), ("GB", "Other", None), ("", "Other", None),
])
def test_region_of_a_locale(locale: str, region: str, zone: str | None) -> None:
    assert enrich.locale_region(locale) == (region, zone)


def test_every_us_state_and_dc_has_a_region_and_a_valid_zone() -> None:
    from loginpipe.core.regions import US_STATES

    assert len(US_STATES) == 51
    for code, (_, zone) in US_STATES.items():
        assert enrich.local_hour(zone, 0) is not None, code


def test_processed_timestamp_and_delay() -> None:
    now = utc("2026-11-22T10:00:00") + 0.25
    assert enrich.processed_timestamp(now) == "2026-11-22T10:00:00.250Z"
    assert enrich.processing_delay_seconds(now, utc("2026-11-22T09:59:58")) == 2.25
    assert enrich.processing_delay_seconds(now, now + 3) == -3.0
    assert enrich.processing_delay_seconds(now, now - 1.23456) == 1.234  # cut, not rounded
