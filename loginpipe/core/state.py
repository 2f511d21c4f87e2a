"""In-memory aggregations over the stream: plain data structures, no locks, no clock.

Each aggregation is a small store with one job (counting, or distinct values per key), so that
a later step can split the stores by key (the input is keyed by user_id) and checkpoint them
to a changelog topic. ``Aggregates`` is not thread-safe: the runtime shares one between its
worker threads through ``runtime/shared.py``'s ``LockedAggregates``, which takes a lock once per
``apply`` (a batch), never per message.

Memory is bounded. The per-key stores (IPs per user, users per device) keep two generations
of keys: when the current generation holds ``max_keys / 2`` keys, the older one is dropped and
the current one becomes the older one. A key seen again is moved into the current generation,
so active users and devices stay; one idle for two generations is forgotten and starts over.
A key keeps at most ``max_values`` distinct values: past that its count saturates. Counters
keep at most ``max_keys`` distinct labels and count the rest under ``OTHER``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import NamedTuple, Protocol

from loginpipe.core.enrich import version_parts

OTHER = "(other)"
DEFAULT_MAX_TRACKED_KEYS = 1_000_000
DEFAULT_MAX_VALUES_PER_KEY = 32
DEFAULT_MAX_LABELS = 10_000
DEFAULT_LEADERS = 100
TOP_LISTED = 10  # leaders in a summary snapshot
_HASH_BITS = (1 << 60) - 1  # two 30-bit digits: the largest int CPython stores in 32 bytes


class CountStore:
    """Counts per label, with at most ``max_labels`` labels."""

    def __init__(self, max_labels: int = DEFAULT_MAX_LABELS) -> None:
        self.counts: dict[str, int] = {}
        self.max_labels = max_labels

    def add(self, label: str) -> int:
        """Count one more ``label``; return its new total."""
        counts = self.counts
        if label not in counts and len(counts) >= self.max_labels:
            label = OTHER
        total = counts.get(label, 0) + 1
        counts[label] = total
        return total

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0])))[:n]


class DistinctStore:
    """Distinct values per key, e.g. the IPs a user logged in from; bounded as the module says.

    Keys and values are kept as their ``hash()`` cut to 60 bits: such an int takes 32 bytes where
    a user id string takes 85 and a full 64-bit hash 48, which brings a tracked key (dict slot,
    key, one value) to about 105 bytes. Two different values of one key would have to collide
    in 60 bits to be miscounted. ``hash`` of a str is salted per process, so the stored numbers
    mean nothing outside it (a changelog of this state would store the strings).
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_TRACKED_KEYS,
                 max_values: int = DEFAULT_MAX_VALUES_PER_KEY) -> None:
        self.max_keys = max_keys
        self.max_values = max_values
        # A key with one value maps to that value; with more, to a set (most keys have one).
        self._current: dict[int, int | set[int]] = {}
        self._older: dict[int, int | set[int]] = {}
        self.multi = 0  # keys with more than one value
        self.forgotten = 0  # keys dropped with an old generation

    def add(self, key: Hashable, value: Hashable) -> int:
        """Record ``value`` for ``key``; return how many distinct values the key has."""
        key, value = hash(key) & _HASH_BITS, hash(value) & _HASH_BITS
        current = self._current
        seen = current.get(key)
        if seen is None:
            seen = self._older.pop(key, None)
            if seen is None:
                if len(current) >= self.max_keys // 2:
                    self._rotate()
                    current = self._current
                current[key] = value
                return 1
            current[key] = seen
        if type(seen) is set:
            if value not in seen and len(seen) < self.max_values:
                seen.add(value)
            return len(seen)
        if seen == value:
            return 1
        current[key] = {seen, value}
        self.multi += 1
        return 2

    def count(self, key: Hashable) -> int:
        key = hash(key) & _HASH_BITS
        seen = self._current.get(key)
        if seen is None:
            seen = self._older.get(key)
        if seen is None:
            return 0
        return len(seen) if type(seen) is set else 1

    def __len__(self) -> int:
        return len(self._current) + len(self._older)

    def _rotate(self) -> None:
        dropped = self._older
        self.forgotten += len(dropped)
        self.multi -= sum(1 for v in dropped.values() if type(v) is set)
        self._older = self._current
        self._current = {}


class Leaders:
    """The ``size`` keys with the highest counts, by name: the top multi-IP users and shared
    devices a dashboard lists (DistinctStore keeps only hashes). Bounded: a key enters only
    when the list has room or its count beats the smallest one, which it then replaces."""

    def __init__(self, size: int = DEFAULT_LEADERS) -> None:
        self.size = size
        self.counts: dict[str, int] = {}
        self._floor = 0  # when full: no kept count is below it

    def offer(self, key: str, count: int) -> None:
        counts = self.counts
        if key in counts or len(counts) < self.size:
            counts[key] = count
        elif count > self._floor:
            del counts[min(counts, key=counts.__getitem__)]
            counts[key] = count
            self._floor = min(counts.values())

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]


class Observed(Protocol):
    """What the aggregations read from an event (``events.LoginEvent`` has these)."""

    app_version: str
    locale: str
    user_id: str
    ip: str
    device_id: str
    epoch_s: float


class Snapshot(NamedTuple):
    """The aggregate values right after one event was counted: they go into its output record."""

    total_logins_for_version: int
    total_logins_from_locale: int
    total_logins_for_device_type: int
    distinct_ips_for_user: int
    users_on_device: int
    most_common_device_type: str
    newest_major: int  # the newest major app version seen so far


_new_snapshot = tuple.__new__  # builds a Snapshot without NamedTuple's Python-level __new__


class Aggregating(Protocol):
    """What ``batch.process_batch`` needs of the aggregations: ``Aggregates``, or the runtime's
    ``LockedAggregates`` around one."""

    def apply(self, batch: Sequence[tuple[Observed, str]]) -> list[Snapshot]: ...


class Aggregates:
    """Every aggregation the pipeline keeps. Not thread-safe (see the module docstring)."""

    def __init__(self, max_tracked_keys: int = DEFAULT_MAX_TRACKED_KEYS,
                 max_values_per_key: int = DEFAULT_MAX_VALUES_PER_KEY) -> None:
        self.by_version = CountStore()
        self.by_locale = CountStore()
        self.by_device_type = CountStore()
        self.ips_by_user = DistinctStore(max_tracked_keys, max_values_per_key)
        self.users_by_device = DistinctStore(max_tracked_keys, max_values_per_key)
        # Logins per hour since the epoch: hourly and daily activity are derived from it. Its cap
        # (10,000 labels) is 14 months of hours; older or stranger times count under OTHER.
        self.by_epoch_hour = CountStore()
        self.top_multi_ip_users = Leaders()
        self.top_shared_devices = Leaders()
        self._most_common = ""
        self.newest_major = 0
        self.events = 0

    def apply(self, batch: Sequence[tuple[Observed, str]]) -> list[Snapshot]:
        """Count a batch of (event, normalized device type); return each one's snapshot, in order."""
        snapshots = []
        append = snapshots.append
        add_version, add_locale = self.by_version.add, self.by_locale.add
        add_ip, add_user = self.ips_by_user.add, self.users_by_device.add
        offer_user, offer_device = self.top_multi_ip_users.offer, self.top_shared_devices.offer
        add_hour, hours = self.by_epoch_hour.add, self.by_epoch_hour.counts
        by_device_type = self.by_device_type
        device_counts, version_counts = by_device_type.counts, self.by_version.counts
        most_common, newest_major = self._most_common, self.newest_major
        for event, device_type in batch:
            device_total = by_device_type.add(device_type)
            if device_total > device_counts.get(most_common, 0):
                most_common = device_type
            version = event.app_version
            version_total = add_version(version)
            if version_total == 1 and version in version_counts:  # a new version (not OTHER)
                newest_major = max(newest_major, version_parts(version)[0])
            hour = int(event.epoch_s) // 3600
            if hour in hours:  # nearly always: skip the call (and its cap check)
                hours[hour] += 1
            else:
                add_hour(hour)
            ips = add_ip(event.user_id, event.ip)
            if ips > 1:
                offer_user(event.user_id, ips)
            users = add_user(event.device_id, event.user_id)
            if users > 1:
                offer_device(event.device_id, users)
            append(_new_snapshot(Snapshot, (
                version_total,
                add_locale(event.locale),
                device_total,
                ips,
                users,
                most_common,
                newest_major,
            )))
        self._most_common, self.newest_major = most_common, newest_major
        self.events += len(snapshots)
        return snapshots

    def summary(self, top: int = 5) -> dict:
        """A copy of the headline figures (consistent while no ``apply`` runs meanwhile)."""
        return {
            "events": self.events,
            "top_app_versions": self.by_version.top(top),
            "top_locales": self.by_locale.top(top),
            "device_types": self.by_device_type.top(top),
            "most_common_device_type": self._most_common,
            "multi_ip_users": self.ips_by_user.multi,
            "shared_devices": self.users_by_device.multi,
            "tracked_users": len(self.ips_by_user),
            "tracked_devices": len(self.users_by_device),
        }

    def counts(self) -> dict:
        """A copy of every count, for the summary topic (consistent as ``summary`` is)."""
        return {
            "events": self.events,
            "by_device_type": dict(self.by_device_type.counts),
            "by_app_version": dict(self.by_version.counts),
            "by_locale": dict(self.by_locale.counts),
            "by_epoch_hour": dict(self.by_epoch_hour.counts),
            "most_common_device_type": self._most_common,
            "newest_major": self.newest_major,
            "multi_ip_users": self.ips_by_user.multi,
            "shared_devices": self.users_by_device.multi,
            "tracked_users": len(self.ips_by_user),
            "tracked_devices": len(self.users_by_device),
            "forgotten_users": self.ips_by_user.forgotten,
            "forgotten_devices": self.users_by_device.forgotten,
            "top_multi_ip_users": self.top_multi_ip_users.top(TOP_LISTED),
            "top_shared_devices": self.top_shared_devices.top(TOP_LISTED),
        }
