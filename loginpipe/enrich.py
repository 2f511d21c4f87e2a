"""Normalization: the output fields computed from the event alone (device type, login time)."""

from __future__ import annotations

import functools
import math
import time


@functools.lru_cache(maxsize=4096)  # a live stream's timestamps fall in a few recent seconds
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def login_time_iso(epoch_s: float) -> str:
    """ISO-8601 UTC rendering of an event time, to the second: ``2023-09-12T00:45:51Z``."""
    return _iso_second(int(epoch_s) if epoch_s >= 0 else math.floor(epoch_s))


def normalize_device_type(device_type: str) -> str:
    """Device types arrive as "iOS", "ANDROID", ...: the output says "ios", "android"."""
    return device_type.lower()
