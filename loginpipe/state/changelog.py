"""The changelog records of the stores, and reading them back (restore, the query command).

One compacted changelog topic per step, partitioned like the partitions its stores belong to:
``<group>-aggregates-changelog`` (a ``LoginState`` per input partition) and
``<group>-devices-changelog`` (a ``DeviceState`` per repartition partition). A record per
changed key per batch (a batch's changes to one key collapse into one record), keyed by a type
and the key itself, so compaction keeps the newest value of each:

    key                     value (JSON)                          meaning
    c<n>:<label>            [count, offset]                       a count of store <n>: v app version,
                                                                  l locale, t device type, h epoch hour
    u:<user key>            [offset, name, ip, ...]               the user's distinct IPs
    d:<device key>          [offset, name, user key, ...]         the device's distinct users
    u:... or d:...          null (a tombstone)                    forgotten by the memory bound
    n:forgotten             [keys forgotten so far]               in this partition's store

``offset`` is the input (or repartition) offset the value reflects: every record of the
partition at or below it is in it. Keys are the stores' numbers (``stores.stable_key``) in hex,
IPs and user keys numbers (``stores.ip_value``, ``stable_key``): no id or IP in clear, except
``name``, the user or device id of a key with more than one value (the top lists show it; else
""). Values only grow until a tombstone, so reading them back merges (the larger count, the
union of values) and the order records arrive in does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from loginpipe.core.records import OutputRecord
from loginpipe.state.stores import DeviceState, DistinctValues, LoginState

COUNT_CODES = {"by_app_version": b"v", "by_locale": b"l", "by_device_type": b"t", "by_epoch_hour": b"h"}
COUNT_NAMES = {code[0]: name for name, code in COUNT_CODES.items()}
USER_PREFIX = b"u:"
DEVICE_PREFIX = b"d:"
FORGOTTEN_KEY = b"n:forgotten"  # how many keys the memory bound forgot in this partition


def login_changes(state: LoginState, topic: str) -> list[OutputRecord]:
    """The changelog records of everything ``state`` changed since the last call."""
    records = []
    partition = state.partition
    for name, label in state.changed_counts:
        store = state.counts(name)
        key = b"c" + COUNT_CODES[name] + b":" + str(label).encode()
        value = orjson.dumps([store.counts[label], store.offsets[label]])
        records.append(OutputRecord(topic, key, value, None, partition))
    state.changed_counts = []
    records.extend(_distinct_changes(state.ips_by_user, USER_PREFIX, topic, partition))
    return records


def device_changes(state: DeviceState, topic: str) -> list[OutputRecord]:
    return _distinct_changes(state.users_by_device, DEVICE_PREFIX, topic, state.partition)


def _distinct_changes(store: DistinctValues, prefix: bytes, topic: str, partition: int
                      ) -> list[OutputRecord]:
    """Tombstones of the keys forgotten first (a key forgotten and seen again in one batch gets
    its tombstone, then its new value: a restore then does not bring the old values back), then
    the new values, then the count of keys forgotten so far."""
    records = [OutputRecord(topic, _key(prefix, key), None, None, partition) for key in store.dropped]
    values, names = store.values, store.names
    for key, offset in store.changed.items():
        value = orjson.dumps([offset, names.get(key, ""), *values(key)])
        records.append(OutputRecord(topic, _key(prefix, key), value, None, partition))
    if store.dropped:
        records.append(OutputRecord(topic, FORGOTTEN_KEY, orjson.dumps([store.forgotten]), None, partition))
    store.changed, store.dropped, store.names = {}, [], {}
    return records


def _key(prefix: bytes, key: int) -> bytes:
    return prefix + format(key, "x").encode()


def restore_login(state: LoginState, key: bytes, value: bytes | None) -> None:
    """Apply one record of the aggregates changelog to ``state`` (restore, query); a record that
    is not ours (malformed, or a newer version's) is skipped rather than fail a restore."""
    try:
        _restore_login(state, key, value)
    except (ValueError, TypeError):
        return


def _restore_login(state: LoginState, key: bytes, value: bytes | None) -> None:
    if key == FORGOTTEN_KEY:
        _restore_forgotten(state.ips_by_user, value)
        return
    if key.startswith(USER_PREFIX):
        user = int(key[2:], 16)
        if value is None:
            state.ips_by_user.forget(user)
            return
        offset, name, *ips = _decode(value)
        _merge(state.ips_by_user, user, name, ips)
        state.replayed_until = max(state.replayed_until, offset)
        return
    name = COUNT_NAMES.get(key[1]) if key[:1] == b"c" and key[2:3] == b":" else None
    if name is None or value is None:
        return  # not ours (a newer version's record): skip rather than fail a restore
    count, offset = _decode(value)
    label: Any = key[3:].decode()
    if name == "by_epoch_hour" and label.lstrip("-").isdigit():
        label = int(label)
    state.counts(name).merge(label, count, offset)
    state.replayed_until = max(state.replayed_until, offset)


def restore_device(state: DeviceState, key: bytes, value: bytes | None) -> None:
    """Apply one record of the devices changelog to ``state``; one not ours is skipped."""
    try:
        _restore_device(state, key, value)
    except (ValueError, TypeError):
        return


def _restore_device(state: DeviceState, key: bytes, value: bytes | None) -> None:
    if key == FORGOTTEN_KEY:
        _restore_forgotten(state.users_by_device, value)
        return
    if not key.startswith(DEVICE_PREFIX):
        return
    device = int(key[2:], 16)
    if value is None:
        state.users_by_device.forget(device)
        return
    _offset, name, *users = _decode(value)
    _merge(state.users_by_device, device, name, users)


def _merge(store: DistinctValues, key: int, name: str, values: list) -> None:
    store.merge(key, values)
    if name:
        store.names[key] = name  # kept until finish_restore names the leaders


def finish_restore(state: LoginState | DeviceState) -> None:
    """After the last record: rebuild what is derived (the leaders, by the names the changelog
    gave), and start counting changes afresh (restoring changed nothing that needs writing back)."""
    if isinstance(state, LoginState):
        store, leaders = state.ips_by_user, state.top_multi_ip_users
    else:
        store, leaders = state.users_by_device, state.top_shared_devices
    for key, name in store.names.items():
        count = store.count(key)
        if count > 1:
            leaders.offer(name, count)
    store.changed, store.dropped, store.names = {}, [], {}


def _restore_forgotten(store: DistinctValues, value: bytes | None) -> None:
    if value is not None:
        store.forgotten = max(store.forgotten, _decode(value)[0])


def _decode(value: bytes) -> list:
    return orjson.loads(value)


def apply_all(state: LoginState | DeviceState, records: Iterable) -> None:
    """Apply records (anything with ``key`` and ``value``) in order, then finish (tests, query)."""
    apply = restore_login if isinstance(state, LoginState) else restore_device
    for record in records:
        if record.key is not None:
            apply(state, record.key, record.value)
    finish_restore(state)
