"""Risk assessment: a score, a level and the factors behind them, for each processed login.

Every factor is a plain yes/no that a reader can check against the record itself; the score
is the sum of the weights of the factors that fired (at most 100), and the level follows from
the score. All thresholds are here, and the README's "Risk" section explains them.
"""

from __future__ import annotations

from itertools import compress

from loginpipe.core.addresses import is_private_ip

MULTI_IP_USER = "multi_ip_user"  # the user logged in from more than one IP (state, this process)
SHARED_DEVICE = "shared_device"  # the device was used by more than one user
LEGACY_APP_VERSION = "legacy_app_version"  # an older major version than the newest seen so far
ODD_HOUR = "odd_hour"  # between 00:00 and 04:59 in the locale's time zone (US states only)
PRIVATE_IP = "private_ip"  # private, loopback, link-local, shared, reserved, multicast address

WEIGHTS = {MULTI_IP_USER: 30, SHARED_DEVICE: 30, PRIVATE_IP: 20, LEGACY_APP_VERSION: 15, ODD_HOUR: 15}
ODD_HOURS = frozenset(range(0, 5))
MEDIUM_FROM = 25  # score >= 25: medium
HIGH_FROM = 50  # score >= 50: high (two strong factors, or a strong one with private_ip, ...: README)
LOW, MEDIUM, HIGH = "low", "medium", "high"
LEVELS = (LOW, MEDIUM, HIGH)

_FACTORS = tuple(WEIGHTS)


def level_of(score: int) -> str:
    return HIGH if score >= HIGH_FROM else MEDIUM if score >= MEDIUM_FROM else LOW


def _entry(fired: tuple[str, ...]) -> tuple[int, str, tuple[str, ...]]:
    score = min(100, sum(WEIGHTS[name] for name in fired))
    return score, level_of(score), fired


# Every combination of factors, indexed by a bit mask in _FACTORS order: one lookup per event.
_TABLE = tuple(_entry(tuple(compress(_FACTORS, ((mask >> i) & 1 for i in range(len(_FACTORS))))))
               for mask in range(1 << len(_FACTORS)))


def assess(distinct_ips_for_user: int, users_on_device: int, app_major: int, newest_major: int,
           local_hour: int | None, ip: str) -> tuple[int, str, tuple[str, ...]]:
    """(score 0..100, level, names of the factors that fired, in WEIGHTS order)."""
    mask = ((distinct_ips_for_user > 1)
            | (users_on_device > 1) << 1
            | is_private_ip(ip) << 2
            | (app_major < newest_major) << 3
            | (local_hour in ODD_HOURS) << 4)
    return _TABLE[mask]
