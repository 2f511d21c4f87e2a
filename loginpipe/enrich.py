"""Normalization: the fields of an output record that come from the event alone."""

from __future__ import annotations

import functools
import math
import time

from loginpipe.events import LoginEvent


@functools.lru_cache(maxsize=4096)  # a live stream's timestamps fall in a few recent seconds
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def login_time_iso(epoch_s: float) -> str:
    """ISO-8601 UTC rendering of an event time, to the second: ``2023-09-12T00:45:51Z``."""
    return _iso_second(int(epoch_s) if epoch_s >= 0 else math.floor(epoch_s))


def normalized_fields(event: LoginEvent, device_type: str) -> dict:
    """The validated fields, ``device_type`` lower-cased, ``timestamp`` as given plus its ISO form."""
    return {
        "user_id": event.user_id,
        "app_version": event.app_version,
        "device_type": device_type,
        "ip": event.ip,
        "locale": event.locale,
        "device_id": event.device_id,
        "timestamp": event.timestamp,
        "login_time": login_time_iso(event.epoch_s),
    }
