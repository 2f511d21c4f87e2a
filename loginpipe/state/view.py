"""Reading many partitions' state as one: a process's (the partitions it owns) or the group's (every
partition, read back from the changelogs by the query command). Counts add up; distinct-value
stores are partitioned by their key (users by input partition, devices by repartition
partition), so adding up their figures counts no user or device twice."""

from __future__ import annotations

from collections.abc import Iterable

from loginpipe.state.stores import TOP_LISTED, DeviceState, Leaders, LoginState, ProcessTotals


def totals_of(logins: Iterable[LoginState]) -> ProcessTotals:
    totals = ProcessTotals()
    for state in logins:
        totals.add(state)
    return totals


def summarize(totals: ProcessTotals, logins: Iterable[LoginState], devices: Iterable[DeviceState],
              top: int = 5) -> dict:
    """The headline figures (the final summary's)."""
    logins, devices = list(logins), list(devices)
    return {
        "events": totals.events,
        "top_app_versions": _top(totals.by_app_version, top),
        "top_locales": _top(totals.by_locale, top),
        "device_types": _top(totals.by_device_type, top),
        "most_common_device_type": totals.most_common,
        "multi_ip_users": sum(s.ips_by_user.multi for s in logins),
        "shared_devices": sum(s.users_by_device.multi for s in devices),
        "tracked_users": sum(len(s.ips_by_user) for s in logins),
        "tracked_devices": sum(len(s.users_by_device) for s in devices),
    }


def detailed_counts(totals: ProcessTotals, logins: Iterable[LoginState],
                    devices: Iterable[DeviceState]) -> dict:
    """Every count, for the summary topic."""
    logins, devices = list(logins), list(devices)
    users, devices_kept = (s.ips_by_user for s in logins), (s.users_by_device for s in devices)
    users, devices_kept = list(users), list(devices_kept)
    return {
        "events": totals.events,
        "by_device_type": dict(totals.by_device_type),
        "by_app_version": dict(totals.by_app_version),
        "by_locale": dict(totals.by_locale),
        "by_epoch_hour": dict(totals.by_epoch_hour),
        "most_common_device_type": totals.most_common,
        "newest_major": totals.newest_major,
        "multi_ip_users": sum(s.multi for s in users),
        "shared_devices": sum(s.multi for s in devices_kept),
        "tracked_users": sum(len(s) for s in users),
        "tracked_devices": sum(len(s) for s in devices_kept),
        "forgotten_users": sum(s.forgotten for s in users),
        "forgotten_devices": sum(s.forgotten for s in devices_kept),
        "capped_users": sum(s.capped for s in users),
        "capped_devices": sum(s.capped for s in devices_kept),
        "top_multi_ip_users": _leaders(s.top_multi_ip_users for s in logins),
        "top_shared_devices": _leaders(s.top_shared_devices for s in devices),
    }


def _leaders(lists: Iterable[Leaders]) -> list[tuple[str, int]]:
    merged = Leaders(size=TOP_LISTED)
    for leaders in lists:
        for key, count in leaders.counts.items():
            merged.offer(key, count)
    return merged.top(TOP_LISTED)


def _top(counts: dict, n: int) -> list[tuple]:
    return sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))[:n]
