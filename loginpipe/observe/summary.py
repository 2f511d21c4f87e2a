"""The summary snapshot: the aggregations and the accounting of one pipeline instance, as the
summary topic carries them. Built from copies taken under the locks, so it is pure.

Hourly and daily activity are derived here from the logins per hour since the epoch that
``state`` keeps, and regions from the logins per locale: one count per event feeds all of them.
"""

from __future__ import annotations

import time
from collections import Counter

from loginpipe.core.enrich import DAYS, locale_region
from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS
from loginpipe.core.privacy import Privacy
from loginpipe.core.regions import REGIONS
from loginpipe.core.risk import LEVELS
from loginpipe.core.state import OTHER
from loginpipe.observe.stats import Totals

SCHEMA_ID = "pipeline-summary/v1"
RECENT_HOURS = 48  # hours listed one by one in "by_hour"; every hour counts in the other views


def iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _by_count(counts: dict) -> dict:
    """Largest first, so a reader's top-N is a slice."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))


def activity(by_epoch_hour: dict) -> dict:
    """Logins by hour of day (UTC, a list of 24), by day of week, by date, and per recent hour."""
    hour_of_day, by_day, by_date = [0] * 24, Counter(), Counter()
    for hour, n in by_epoch_hour.items():
        if hour == OTHER:
            continue
        t = time.gmtime(hour * 3600)
        hour_of_day[t.tm_hour] += n
        by_day[DAYS[t.tm_wday]] += n
        by_date[time.strftime("%Y-%m-%d", t)] += n
    recent = sorted(h for h in by_epoch_hour if h != OTHER)[-RECENT_HOURS:]
    return {
        "by_hour_of_day": hour_of_day,
        "by_day_of_week": {day: by_day[day] for day in DAYS},
        "by_date": dict(sorted(by_date.items())),
        "by_hour": {time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(h * 3600)): by_epoch_hour[h]
                    for h in recent},
    }


def regions(by_locale: dict) -> dict:
    counts = dict.fromkeys(REGIONS, 0)
    for locale, n in by_locale.items():
        counts[locale_region(locale)[0] if locale != OTHER else "Other"] += n
    return counts


def build_summary(counts: dict, totals: Totals, *, instance: str, group_id: str, input_topic: str,
                  started_at: float, now: float, final: bool = False,
                  privacy: Privacy | None = None) -> dict:
    """The summary record's value. ``counts`` is ``Aggregates.counts()``; ``totals`` a copy. In
    privacy mode the listed devices are named by their tokens, as in the output records."""
    devices = counts["top_shared_devices"]
    if privacy:
        devices = [(privacy.device_token(device), n) for device, n in devices]
    dead = {r: n for r, n in totals.reasons.items() if r in DEAD_LETTER_REASONS}
    filtered = {r: n for r, n in totals.reasons.items() if r not in DEAD_LETTER_REASONS}
    return {
        "schema": SCHEMA_ID,
        "instance": instance,
        "group_id": group_id,
        "input_topic": input_topic,
        "started_at": iso(started_at),
        "updated_at": iso(now),
        "updated_epoch_s": round(now, 3),
        "final": final,
        "totals": {"consumed": totals.consumed, "processed": totals.processed,
                   "filtered": totals.filtered, "dead_lettered": totals.dead_lettered,
                   "resent": totals.resent},
        "filtered_by": _by_count(filtered),
        "dead_lettered_by": _by_count(dead),
        "risk_levels": {level: totals.risk_levels.get(level, 0) for level in LEVELS},
        "by_device_type": _by_count(counts["by_device_type"]),
        "by_app_version": _by_count(counts["by_app_version"]),
        "by_locale": _by_count(counts["by_locale"]),
        "by_region": regions(counts["by_locale"]),
        **activity(counts["by_epoch_hour"]),
        "most_common_device_type": counts["most_common_device_type"],
        "newest_app_major": counts["newest_major"],
        "multi_ip_users": counts["multi_ip_users"],
        "shared_devices": counts["shared_devices"],
        "top_multi_ip_users": [{"user_id": user, "distinct_ips": n}
                               for user, n in counts["top_multi_ip_users"]],
        "top_shared_devices": [{"device_id": device, "users": n} for device, n in devices],
        "tracked_users": counts["tracked_users"],
        "tracked_devices": counts["tracked_devices"],
        "aggregated_events": counts["events"],
    }
