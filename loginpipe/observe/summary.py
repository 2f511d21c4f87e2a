"""What the summary topic carries, two kinds of record, and how a reader adds them up. Built from
copies taken under the state's lock (``SharedState.counts``, ``copy_state``), so the rest is pure.

* The instance snapshot (``build_summary``, keyed by instance): one process's accounting (totals,
  filter and dead-letter reasons, risk levels), which adds up across instances since each record
  is counted by the one process that read it. Its state figures cover *this process's
  partitions* only, kept for compatibility: partitions move between processes on rebalances,
  so a stopped or stale instance's snapshot still holds counts another process now has.
* The partition record (``partition_record``, keyed ``<group>/<topic>/<partition>``): one
  partition's state, for an input partition its counts and its users' distinct IPs, for a
  repartition partition its devices' distinct users. Compaction keeps the newest per partition
  and every user (device) lives in one input (repartition) partition, so ``add_up`` of the
  newest record of each partition of a group gives the group's exact figures.

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
from loginpipe.observe.stats import Totals
from loginpipe.state.stores import COUNTS, OTHER, TOP_LISTED, DeviceState, Leaders, LoginState

SCHEMA_ID = "pipeline-summary/v1"
PARTITION_SCHEMA_ID = "pipeline-partition-state/v1"
LOGINS, DEVICES = "logins", "devices"  # a partition record's kind: an input or a repartition partition
# The figures a partition record carries that add up across partitions (a kind lacks the other's).
FIGURES = ("events", "multi_ip_users", "tracked_users", "forgotten_users", "capped_users",
           "shared_devices", "tracked_devices", "forgotten_devices", "capped_devices")
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


def state_figures(counts: dict) -> dict:
    """The state part of a summary from ``detailed_counts``-shaped figures, device ids as shown."""
    return {
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
        "top_shared_devices": [{"device_id": device, "users": n}
                               for device, n in counts["top_shared_devices"]],
        "tracked_users": counts["tracked_users"],
        "tracked_devices": counts["tracked_devices"],
        "forgotten_users": counts["forgotten_users"],
        "forgotten_devices": counts["forgotten_devices"],
        "capped_users": counts["capped_users"],
        "capped_devices": counts["capped_devices"],
        "aggregated_events": counts["events"],
    }


def build_summary(counts: dict, totals: Totals, *, instance: str, group_id: str, input_topic: str,
                  started_at: float, now: float, final: bool = False, privacy: Privacy | None = None,
                  partitions: dict[str, list[int]] | None = None) -> dict:
    """The instance snapshot's value. ``counts`` is ``SharedState.counts()`` (this process's
    partitions), ``totals`` a copy; ``partitions`` the partitions it serves by topic, each
    published in its own record. In privacy mode the listed devices are named by their tokens, as
    in the output records."""
    devices = _shown_devices(counts["top_shared_devices"], privacy)
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
        # Its presence says this process also publishes partition records (readers prefer them).
        "partitions": partitions or {},
        **state_figures({**counts, "top_shared_devices": devices}),
    }


def _shown_devices(devices: list[tuple[str, int]], privacy: Privacy | None) -> list[tuple[str, int]]:
    if privacy:
        return [(privacy.device_token(device), n) for device, n in devices]
    return devices


# Partition records.

def partition_key(group_id: str, topic: str, partition: int) -> str:
    return f"{group_id}/{topic}/{partition}"


def copy_state(state: LoginState | DeviceState) -> dict:
    """One partition's figures, copied: ``SharedState.read_partitions`` calls it under the lock a
    login batch counts under, so the copies agree with one another."""
    if isinstance(state, LoginState):
        users = state.ips_by_user
        return {"kind": LOGINS, "events": state.events,
                **{name: dict(state.counts(name).counts) for name in COUNTS},
                "multi_ip_users": users.multi, "tracked_users": len(users),
                "forgotten_users": users.forgotten, "capped_users": users.capped,
                "top_multi_ip_users": _leaders(state.top_multi_ip_users)}
    devices = state.users_by_device
    return {"kind": DEVICES, "shared_devices": devices.multi, "tracked_devices": len(devices),
            "forgotten_devices": devices.forgotten, "capped_devices": devices.capped,
            "top_shared_devices": _leaders(state.top_shared_devices)}


def _leaders(leaders: Leaders) -> list[tuple[str, int]]:
    # A device step changes its state without the lock: dict() copies in one step, sorting does not.
    counts = dict(leaders.counts)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_LISTED]


def partition_figures(copied: dict, privacy: Privacy | None = None) -> dict:
    """A partition's figures as its record carries them (what tells whether they changed): counts
    largest first, hours since the epoch as text (JSON keys are), device tokens in privacy mode."""
    figures = dict(copied)
    if copied["kind"] == DEVICES:
        figures["top_shared_devices"] = [
            {"device_id": device, "users": n}
            for device, n in _shown_devices(copied["top_shared_devices"], privacy)]
        return figures
    for name in ("by_device_type", "by_app_version", "by_locale"):
        figures[name] = _by_count(copied[name])
    hours = copied["by_epoch_hour"]
    figures["by_epoch_hour"] = {str(h): hours[h] for h in sorted(h for h in hours if h != OTHER)}
    if OTHER in hours:
        figures["by_epoch_hour"][OTHER] = hours[OTHER]
    figures["top_multi_ip_users"] = [{"user_id": user, "distinct_ips": n}
                                     for user, n in copied["top_multi_ip_users"]]
    return figures


def partition_record(figures: dict, *, group_id: str, topic: str, partition: int, instance: str,
                     now: float) -> dict:
    """A partition record's value. ``published_by`` (not ``instance``) names the process, so a
    reader that knows instance snapshots only takes none of these for one."""
    return {"schema": PARTITION_SCHEMA_ID, "group_id": group_id, "topic": topic,
            "partition": partition, "published_by": instance, "updated_at": iso(now),
            "updated_epoch_s": round(now, 3), **figures}


def add_up(records: list[dict]) -> dict:
    """The state figures of a summary (``state_figures``) from the newest record of each partition
    of a group: counts add up, and so do distinct users and devices, each held by one partition;
    the top lists merge (each partition lists its own top ten, so the group's are among them)."""
    counts: dict[str, Counter] = {name: Counter() for name in COUNTS}
    figures: Counter = Counter()
    users, devices = [], []
    for record in records:
        for name in COUNTS:
            counts[name].update(record.get(name, {}))
        figures.update({name: record.get(name, 0) for name in FIGURES})
        users += [(e["user_id"], e["distinct_ips"]) for e in record.get("top_multi_ip_users", [])]
        devices += [(e["device_id"], e["users"]) for e in record.get("top_shared_devices", [])]
    types, versions = counts["by_device_type"], counts["by_app_version"]
    return state_figures({
        **{name: dict(counts[name]) for name in COUNTS},
        "by_epoch_hour": _hours(counts["by_epoch_hour"]),
        **{name: figures[name] for name in FIGURES},
        "most_common_device_type": min(types, key=lambda t: (-types[t], t)) if types else "",
        "newest_major": max((_major(v) for v in versions if v != OTHER), default=0),
        "top_multi_ip_users": _top(users), "top_shared_devices": _top(devices),
    })


def _hours(by_text: dict) -> dict:
    """Hours since the epoch back from their JSON keys."""
    return {label if label == OTHER else int(label): n for label, n in by_text.items()
            if label == OTHER or label.isdigit()}


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _top(entries: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return sorted(entries, key=lambda item: (-item[1], item[0]))[:TOP_LISTED]
