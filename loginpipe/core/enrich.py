"""Enrichment: the output fields computed from one event alone (device type, times, region,
version parts). Each runs per event, so each caches what repeats: a live stream's timestamps
fall in a few recent seconds and hours, and it carries a few dozen versions and locales."""

from __future__ import annotations

import datetime as dt
import functools
import time
import zoneinfo

from loginpipe.core.regions import region_and_zone

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def normalize_device_type(device_type: str) -> str:
    """Device types arrive as "iOS", "ANDROID", ...: the output says "ios", "android"."""
    return device_type.lower()


@functools.lru_cache(maxsize=4096)
def time_fields(second: int) -> tuple[str, str, int]:
    """(login_time, day_of_week, hour_of_day) in UTC of a whole second since the epoch:
    ("2023-09-12T00:45:51Z", "Tuesday", 0). Callers pass ``int(epoch_s)`` (times are >= 0)."""
    t = time.gmtime(second)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t), DAYS[t.tm_wday], t.tm_hour


def processed_timestamp(now_s: float) -> str:
    """When the pipeline processed the event (once per batch), ISO-8601 UTC to the millisecond."""
    millis = int(now_s * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_s)) + f".{millis:03d}Z"


def processing_delay_seconds(now_s: float, epoch_s: float) -> float:
    """Processing time minus event time, cut to the millisecond (negative for a clock ahead of
    ours). Not round(): it costs four times as much, per event."""
    return int((now_s - epoch_s) * 1000.0) / 1000.0


@functools.lru_cache(maxsize=1024)
def version_parts(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a validated ``x.y.z`` version: "10.0.1" -> (10, 0, 1)."""
    major, minor, patch = version.split(".")
    return int(major), int(minor), int(patch)


@functools.lru_cache(maxsize=1024)
def locale_region(locale: str) -> tuple[str, str | None]:
    """(US Census region, time zone) of a locale, case-insensitive; ("Other", None) if not a US state."""
    return region_and_zone(locale.upper())


@functools.lru_cache(maxsize=8192)
def local_hour(zone: str | None, utc_hour: int) -> int | None:
    """Hour of day in ``zone``, daylight saving time included, of the hour ``utc_hour`` hours
    after the epoch (``int(epoch_s) // 3600``); None without a zone. Keyed by whole UTC hours:
    the zones we use (``regions``) change their offset on whole hours."""
    if zone is None:
        return None
    return dt.datetime.fromtimestamp(utc_hour * 3600, zoneinfo.ZoneInfo(zone)).hour
