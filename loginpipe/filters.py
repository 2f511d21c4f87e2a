"""Which valid events the pipeline keeps: mobile logins only."""

from __future__ import annotations

MOBILE_DEVICE_TYPES = frozenset({"android", "ios"})
NOT_MOBILE = "not_mobile"


def filter_reason(device_type: str) -> str | None:
    """None when an event with this (lower-case) device type is kept, else why it is filtered."""
    return None if device_type in MOBILE_DEVICE_TYPES else NOT_MOBILE
