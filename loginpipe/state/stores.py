"""The aggregations, as stores owned by one partition each: plain data, no locks, no clock.

The input is keyed by user_id, so input partition ``p`` sees every login of its users: its
``LoginState`` holds the counts of its events (per app version, locale, device type and hour) and
the distinct IPs of its users. Devices are not keyed that way, so the device step reads a
repartition topic keyed by device_id, and repartition partition ``q``'s ``DeviceState`` holds the
distinct users of its devices. Each store belongs to the one worker that owns its partition, so
it needs no lock; a process adds up the counts of the partitions it owns in ``ProcessTotals``.

Keys and values are numbers that stand for the ids and IPs (``stable_key``, ``ip_value``): the same
in every process, so a store can be written to a changelog topic (``changelog.py``) and rebuilt
anywhere from it, and small (a distinct user with its own device costs about 210 bytes in both
stores, where the ids' strings took 480: README, State).

Replays. Under at-least-once, a restart re-reads the records after the last committed offset,
some of which were already counted (their changelog records landed, their offsets were not
committed). Distinct values are idempotent (adding an IP twice changes nothing); counts are not,
so every count keeps the input offset up to which it has counted, restored from the changelog,
and a record at or below that offset is not counted again. Counts therefore stay exact through
crashes; outputs may repeat.

Bounds (memory is planned in the README, "State"):
- distinct values per key: at most ``max_values``; a key at the cap is *capped* (its count means
  "at least"), counted in ``capped`` and said in the query and summary;
- keys per store: two generations; when the current one holds ``max_keys // 2`` keys the older
  one is forgotten (``forgotten``; the changelog gets a tombstone for each) and a key seen again
  moves to the current one, so active users and devices stay;
- labels per count: at most ``max_labels``; the rest count under ``OTHER``.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Hashable, Iterable, Iterator, Sequence
from hashlib import blake2b
from typing import NamedTuple, Protocol

from loginpipe.core.enrich import version_parts

OTHER = "(other)"
DEFAULT_MAX_TRACKED_KEYS = 1_000_000  # users (and devices) per process, split over the partitions
DEFAULT_MAX_VALUES_PER_KEY = 64
DEFAULT_MAX_LABELS = 10_000
DEFAULT_LEADERS = 100
TOP_LISTED = 10  # leaders in a summary snapshot
NO_OFFSET = -1

# The counts a LoginState keeps, by the name its changelog keys and summaries use.
COUNTS = ("by_app_version", "by_locale", "by_device_type", "by_epoch_hour")


# Ids repeat (a few users log in very often): the digests of the most recent ones are kept, which
# spares ~0.5 µs of BLAKE2b per hit, 2.7 times an event. Bounded: ~230 bytes an entry with the
# id's string, ~7.5 MiB when full.
STABLE_KEY_CACHE = 1 << 15


@functools.lru_cache(maxsize=STABLE_KEY_CACHE)
def stable_key(text: str) -> int:
    """An id as the stores keep it: 60 bits of its BLAKE2b digest, the same in every process
    (``hash()`` is salted per process), and a 32-byte int where the id's string takes 85. Two ids
    share a key with odds of about n² / 2⁶¹ (4e-7 for a million users): then they are counted as
    one."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big") >> 4


def ip_value(ip: str) -> int:
    """An IP as the stores keep it: IPv4 as its own 32-bit number (exact), anything else (IPv6;
    the parser lets no other text through) as its digest."""
    if ":" not in ip:
        try:
            return int.from_bytes(socket.inet_aton(ip), "big")
        except OSError:
            pass
    return stable_key(ip)


class Observed(Protocol):
    """What the login step reads from an event (``events.LoginEvent`` has these)."""

    app_version: str
    locale: str
    user_id: str
    ip: str
    epoch_s: float


class Counted(NamedTuple):
    """A login's aggregate values right after it was counted: they travel with it to the device
    step and end up in its output record."""

    total_logins_for_version: int
    total_logins_from_locale: int
    total_logins_for_device_type: int
    distinct_ips_for_user: int
    most_common_device_type: str
    newest_major: int  # the newest major app version seen so far


_new_counted = tuple.__new__  # builds a Counted without NamedTuple's Python-level __new__


class Counts:
    """Counts per label, each with the input offset up to which it has counted."""

    __slots__ = ("counts", "max_labels", "offsets")

    def __init__(self, max_labels: int = DEFAULT_MAX_LABELS) -> None:
        self.counts: dict = {}
        self.offsets: dict = {}  # label -> last input offset counted (from the changelog too)
        self.max_labels = max_labels

    def label(self, label):
        """``label``, or OTHER once ``max_labels`` others are counted."""
        if label in self.counts or len(self.counts) < self.max_labels:
            return label
        return OTHER

    def merge(self, label, count: int, offset: int) -> None:
        """Take a restored value: counts only grow, so the larger one is the newer."""
        if count >= self.counts.get(label, 0):
            self.counts[label] = count
        self.offsets[label] = max(offset, self.offsets.get(label, NO_OFFSET))

    def top(self, n: int) -> list[tuple]:
        return sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0])))[:n]


class DistinctValues:
    """Distinct values per key (IPs per user, users per device), bounded as the module says.

    A key with one value maps to that value (most keys have one); with more, to a set. Changes
    since the changelog last took them (``changelog.py``) are kept by key, with the input offset
    of the last one.
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_TRACKED_KEYS,
                 max_values: int = DEFAULT_MAX_VALUES_PER_KEY) -> None:
        self.max_keys = max(2, max_keys)
        self.max_values = max(2, max_values)
        self._current: dict[int, object] = {}  # key -> value, or a set of values
        self._older: dict[int, object] = {}
        self.multi = 0  # keys with more than one value
        self.capped = 0  # keys at max_values (their count means "at least")
        self.forgotten = 0  # keys dropped with an old generation
        self.changed: dict[int, int] = {}  # key -> input offset of its last change
        self.dropped: list[int] = []  # keys forgotten since the changelog last took them
        # The ids of keys changed with more than one value since the changelog last took them: it
        # writes them, so that a restore can name the top multi-IP users and shared devices.
        self.names: dict[int, str] = {}

    def add(self, key: Hashable, value: Hashable, offset: int) -> int:
        """Record ``value`` for ``key``; return how many distinct values the key has."""
        current = self._current
        seen = current.get(key)
        if seen is None:
            seen = self._older.pop(key, None)
            if seen is None:
                if len(current) >= self.max_keys // 2:
                    self._rotate()
                    current = self._current
                current[key] = value
                self.changed[key] = offset
                return 1
            current[key] = seen
        if type(seen) is set:
            if value not in seen and len(seen) < self.max_values:
                seen.add(value)
                self.changed[key] = offset
                if len(seen) == self.max_values:
                    self.capped += 1
            return len(seen)
        if seen == value:
            return 1
        current[key] = {seen, value}
        self.changed[key] = offset
        self.multi += 1
        self.capped += self.max_values == 2
        return 2

    def values(self, key: Hashable) -> tuple:
        seen = self._current.get(key)
        if seen is None:
            seen = self._older.get(key)
        if seen is None:
            return ()
        return tuple(sorted(seen)) if type(seen) is set else (seen,)

    def count(self, key: Hashable) -> int:
        return len(self.values(key))

    def items(self) -> Iterator[tuple[Hashable, tuple]]:
        for key in [*self._older, *self._current]:
            yield key, self.values(key)

    def merge(self, key: Hashable, values: Iterable) -> None:
        """Take a restored value: a key's values only grow until it is forgotten, so the union of
        what the changelog holds is its newest value, whatever order the records came in."""
        merged = set(self.values(key))
        merged.update(values)
        self.forget(key)
        if not merged:
            return
        if len(merged) > self.max_values:
            merged = set(sorted(merged)[:self.max_values])
        self._current[key] = merged.pop() if len(merged) == 1 else merged
        if len(merged) > 1:
            self.multi += 1
            self.capped += len(merged) == self.max_values

    def forget(self, key: Hashable) -> None:
        """Drop a key (a tombstone read back from the changelog)."""
        seen = self._current.pop(key, None)
        if seen is None:
            seen = self._older.pop(key, None)
        if type(seen) is set:
            self.multi -= 1
            self.capped -= len(seen) == self.max_values

    def __len__(self) -> int:
        return len(self._current) + len(self._older)

    def _rotate(self) -> None:
        dropped = self._older
        self.forgotten += len(dropped)
        for key, seen in dropped.items():
            if type(seen) is set:
                self.multi -= 1
                self.capped -= len(seen) == self.max_values
            self.changed.pop(key, None)
        self.dropped.extend(dropped)  # each gets a tombstone, written before any newer value
        self._older = self._current
        self._current = {}


class Leaders:
    """The ``size`` keys with the highest counts, by name: the top multi-IP users and shared
    devices a dashboard lists. Bounded: a key enters only when the list has room or its count
    beats the smallest one, which it then replaces."""

    def __init__(self, size: int = DEFAULT_LEADERS) -> None:
        self.size = size
        self.counts: dict[str, int] = {}
        self._floor = 0  # when full: no kept count is below it

    def offer(self, key: str, count: int) -> None:
        counts = self.counts
        if key in counts or len(counts) < self.size:
            counts[key] = count
            self._floor = min(self._floor, count)  # a count can drop (a key forgotten, seen again)
        elif count > self._floor:  # a cheap test first: the floor only ever rises
            lowest = min(counts, key=counts.__getitem__)
            self._floor = counts[lowest]
            if count > self._floor:
                del counts[lowest]
                counts[key] = count
                self._floor = min(counts.values())

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]


class ProcessTotals:
    """The counts of every partition this process owns, added up: what a processed record's
    ``total_logins_for_version`` and its siblings report. With one process that is every
    partition, so the group's totals; with several, each process's share (the group's exact
    totals are read with ``python -m loginpipe.query totals``)."""

    def __init__(self) -> None:
        self.by_app_version: dict = {}
        self.by_locale: dict = {}
        self.by_device_type: dict = {}
        self.by_epoch_hour: dict = {}
        self.most_common = ""
        self.newest_major = 0

    def add(self, state: LoginState, sign: int = 1) -> None:
        """Add (or with ``sign`` -1, take away) a partition's counts: on assignment and revocation."""
        for name in COUNTS:
            mine = getattr(self, name)
            for label, n in getattr(state, name).counts.items():
                total = mine.get(label, 0) + sign * n
                if total:
                    mine[label] = total
                else:
                    mine.pop(label, None)
        self._derive()

    def _derive(self) -> None:
        types = self.by_device_type
        self.most_common = min(types, key=lambda t: (-types[t], t)) if types else ""
        majors = [version_parts(v)[0] for v in self.by_app_version if v != OTHER]
        self.newest_major = max(majors, default=0)

    @property
    def events(self) -> int:
        return sum(self.by_device_type.values())


class LoginState:
    """What input partition ``partition`` has counted: see the module docstring."""

    def __init__(self, partition: int, max_keys: int = DEFAULT_MAX_TRACKED_KEYS,
                 max_values: int = DEFAULT_MAX_VALUES_PER_KEY) -> None:
        self.partition = partition
        self.by_app_version = Counts()
        self.by_locale = Counts()
        self.by_device_type = Counts()
        # Logins per hour since the epoch: hourly and daily activity are derived from it. Its cap
        # (10,000 labels) is 14 months of hours; older or stranger times count under OTHER.
        self.by_epoch_hour = Counts()
        self.ips_by_user = DistinctValues(max_keys, max_values)
        self.top_multi_ip_users = Leaders()
        self.replayed_until = NO_OFFSET  # records at or below it may have been counted already
        self.changed_counts: list[tuple[str, object]] = []  # (count name, label) not yet in the changelog

    @property
    def events(self) -> int:
        return sum(self.by_device_type.counts.values())

    def count(self, batch: Sequence[tuple[int, Observed, str]], totals: ProcessTotals) -> list[Counted]:
        """Count a batch of (input offset, event, normalized device type) of this partition, in
        offset order; return each one's values. One function over the batch, with the stores'
        dicts in locals: it runs once per event (README, Performance)."""
        counted: list[Counted] = []
        append = counted.append
        stores = (self.by_app_version, self.by_locale, self.by_device_type, self.by_epoch_hour)
        before = [dict(store.counts) for store in stores]
        versions, locales, types, hours = (store.counts for store in stores)
        all_versions, all_locales = totals.by_app_version, totals.by_locale
        all_types, all_hours = totals.by_device_type, totals.by_epoch_hour
        cap = DEFAULT_MAX_LABELS if all(s.max_labels == DEFAULT_MAX_LABELS for s in stores) else None
        add_ip, offer = self.ips_by_user.add, self.top_multi_ip_users.offer
        names = self.ips_by_user.names
        most_common, newest_major = totals.most_common, totals.newest_major
        replayed_until = self.replayed_until
        for offset, event, device_type in batch:
            version, locale, hour = event.app_version, event.locale, int(event.epoch_s) // 3600
            if cap is None or (len(versions) >= cap or len(locales) >= cap or len(types) >= cap
                               or len(hours) >= cap):  # rare: some store is full
                version, locale, device_type, hour = (
                    store.label(label) for store, label in zip(stores, (version, locale, device_type, hour),
                                                               strict=True))
            if offset > replayed_until:  # nearly always: a record never counted before
                versions[version] = versions.get(version, 0) + 1
                version_total = all_versions[version] = all_versions.get(version, 0) + 1
                locales[locale] = locales.get(locale, 0) + 1
                locale_total = all_locales[locale] = all_locales.get(locale, 0) + 1
                types[device_type] = types.get(device_type, 0) + 1
                type_total = all_types[device_type] = all_types.get(device_type, 0) + 1
                hours[hour] = hours.get(hour, 0) + 1
                all_hours[hour] = all_hours.get(hour, 0) + 1
            else:
                version_total, locale_total, type_total = self._count_replayed(
                    offset, (version, locale, device_type, hour), totals)
            if version_total == 1 and version != OTHER:  # a version new to this process
                newest_major = max(newest_major, version_parts(version)[0])
            if type_total > all_types.get(most_common, 0):
                most_common = device_type
            user = event.user_id
            key = stable_key(user)
            ips = add_ip(key, ip_value(event.ip), offset)
            if ips > 1:
                offer(user, ips)
                names[key] = user
            append(_new_counted(Counted, (version_total, locale_total, type_total, ips, most_common,
                                          newest_major)))
        totals.most_common, totals.newest_major = most_common, newest_major
        if batch:
            last = batch[-1][0]
            self._mark_changed(stores, before, last)
            # A record at or below it is a replay (a partition read again from an older commit).
            self.replayed_until = max(self.replayed_until, last)
        return counted

    def _count_replayed(self, offset: int, labels: tuple, totals: ProcessTotals) -> tuple[int, int, int]:
        """A record at or below ``replayed_until`` (read again after a restart): count it in each
        store whose count has not counted up to its offset yet. Returns the version, locale and
        device type totals."""
        result = []
        for name, label in zip(COUNTS, labels, strict=True):
            store, mine = getattr(self, name), getattr(totals, name)
            if offset > store.offsets.get(label, NO_OFFSET):
                store.counts[label] = store.counts.get(label, 0) + 1
                mine[label] = mine.get(label, 0) + 1
            result.append(mine.get(label, 0))
        return result[0], result[1], result[2]

    def _mark_changed(self, stores, before, last_offset: int) -> None:
        """Every label counted in this batch has counted up to the batch's last offset (a record
        of the partition at or below it was either counted, or is not of that label)."""
        for name, store, old in zip(COUNTS, stores, before, strict=True):
            for label, n in store.counts.items():
                if old.get(label) != n:
                    store.offsets[label] = last_offset
                    self.changed_counts.append((name, label))

    def counts(self, name: str) -> Counts:
        return getattr(self, name)


class DeviceState:
    """What repartition partition ``partition`` knows: the distinct users of its devices."""

    def __init__(self, partition: int, max_keys: int = DEFAULT_MAX_TRACKED_KEYS,
                 max_values: int = DEFAULT_MAX_VALUES_PER_KEY) -> None:
        self.partition = partition
        self.users_by_device = DistinctValues(max_keys, max_values)
        self.top_shared_devices = Leaders()

    def count(self, batch: Sequence[tuple[int, str, str]]) -> list[int]:
        """Record a batch of (offset, device_id, user_id); return each device's user count."""
        add, offer = self.users_by_device.add, self.top_shared_devices.offer
        names = self.users_by_device.names
        counted = []
        for offset, device_id, user_id in batch:
            key = stable_key(device_id)
            users = add(key, stable_key(user_id), offset)
            if users > 1:
                offer(device_id, users)
                names[key] = device_id
            counted.append(users)
        return counted
