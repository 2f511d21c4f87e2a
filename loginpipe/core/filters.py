"""Which valid events the pipeline keeps: mobile logins, and optionally only recent ones of
chosen app versions. A filtered event is counted under its reason and, when a filtered topic
is configured, forwarded there."""

from __future__ import annotations

from dataclasses import dataclass

MOBILE_DEVICE_TYPES = frozenset({"android", "ios"})
NOT_MOBILE = "not_mobile"
APP_VERSION = "app_version"
STALE = "stale"
REASONS = (NOT_MOBILE, APP_VERSION, STALE)


@dataclass(frozen=True)
class FilterRules:
    device_types: frozenset[str] = MOBILE_DEVICE_TYPES  # lower-case
    app_versions: frozenset[str] | None = None  # None: every version
    max_age_s: float | None = None  # None: any age


def filter_reason(rules: FilterRules, device_type: str, app_version: str, epoch_s: float,
                  now_s: float) -> str | None:
    """None when the event is kept, else why it is filtered (checked in REASONS order)."""
    if device_type not in rules.device_types:
        return NOT_MOBILE
    if rules.app_versions is not None and app_version not in rules.app_versions:
        return APP_VERSION
    if rules.max_age_s is not None and now_s - epoch_s > rules.max_age_s:
        return STALE
    return None
