"""The per-partition stores, their changelog, and reading many partitions as one: pure, no runtime.

The central property is "exact state under replays": a LoginState restored from whatever part of
its changelog landed before a crash, then fed every record after the committed offset again,
holds exactly the counts and distinct values of the events, each counted once."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import NamedTuple

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loginpipe.core.batch import Topology, process_devices, process_logins
from loginpipe.core.events import RawRecord
from loginpipe.core.records import OutputRecord, Routes
from loginpipe.state.changelog import (
    FORGOTTEN_KEY,
    apply_all,
    login_changes,
)
from loginpipe.state.stores import (
    COUNTS,
    OTHER,
    Counts,
    DeviceState,
    DistinctValues,
    Leaders,
    LoginState,
    ProcessTotals,
    ip_value,
    stable_key,
)
from loginpipe.state.view import detailed_counts, summarize, totals_of
from loginpipe.topics import InternalTopics

CHANGELOG = "test-aggregates-changelog"
T0 = 1_700_000_000  # an epoch second; hour label T0 // 3600


class Ev(NamedTuple):
    """What ``LoginState.count`` reads from an event (the ``Observed`` protocol)."""

    user_id: str
    ip: str
    app_version: str = "2.3.0"
    locale: str = "CA"
    epoch_s: float = float(T0)


def count_all(state: LoginState, events, totals: ProcessTotals | None = None, first_offset: int = 0,
              device_type: str = "ios"):
    """Count ``events`` as one batch at consecutive offsets."""
    batch = [(first_offset + i, event, device_type) for i, event in enumerate(events)]
    return state.count(batch, totals or ProcessTotals())


def snapshot(state: LoginState) -> dict:
    """Everything a LoginState's figures consist of, comparable with ==."""
    ips = state.ips_by_user
    return {
        "counts": {name: dict(state.counts(name).counts) for name in COUNTS},
        "ips": {user: set(values) for user, values in ips.items()},
        "tracked": len(ips),
        "multi": ips.multi,
        "capped": ips.capped,
        "forgotten": ips.forgotten,
    }


def device_snapshot(state: DeviceState) -> dict:
    users = state.users_by_device
    return {"users": {d: set(v) for d, v in users.items()}, "tracked": len(users),
            "multi": users.multi, "capped": users.capped, "forgotten": users.forgotten}


# --- 1. the stores' basics ---------------------------------------------------------------------


def test_distinct_values_count_distinct_values_and_multi_keys() -> None:
    store = DistinctValues()
    assert [store.add("u1", ip, i) for i, ip in enumerate("aabbc")] == [1, 1, 2, 2, 3]
    assert store.add("u2", "a", 5) == 1
    assert store.multi == 1 and store.capped == 0 and len(store) == 2
    assert store.values("u1") == ("a", "b", "c") and store.values("u2") == ("a",)
    assert store.count("u1") == 3 and store.count("nobody") == 0
    # Changes by key, with the offset of the key's last change (a repeat is no change).
    assert store.changed == {"u1": 4, "u2": 5}


def test_distinct_values_saturate_at_the_cap_and_count_capped_keys_once() -> None:
    store = DistinctValues(max_values=4)
    counts = [store.add("u", str(i), i) for i in range(10)]
    assert counts == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    assert store.values("u") == ("0", "1", "2", "3"), "the first max_values values are kept"
    assert store.capped == 1 and store.multi == 1
    assert store.changed == {"u": 3}, "a value beyond the cap is no change"
    store.add("v", "x", 11)
    store.add("v", "y", 12)
    assert store.capped == 1 and store.multi == 2


def test_labels_beyond_the_cap_count_under_other() -> None:
    state = LoginState(0)
    state.by_app_version = Counts(max_labels=2)
    count_all(state, [Ev("u", "ip", app_version=v) for v in ["1.0.0", "2.0.0", "1.0.0", "3.0.0", "4.0.0"]])
    assert state.by_app_version.counts == {"1.0.0": 2, "2.0.0": 1, OTHER: 2}
    assert state.by_app_version.top(2) == [(OTHER, 2), ("1.0.0", 2)]
    assert state.by_app_version.label("2.0.0") == "2.0.0" and state.by_app_version.label("9.0.0") == OTHER


def test_counts_merge_keeps_the_larger_count_and_offset() -> None:
    counts = Counts()
    counts.merge("a", 5, 40)
    counts.merge("a", 3, 20)  # an older record read after a newer one
    assert counts.counts == {"a": 5} and counts.offsets == {"a": 40}
    counts.merge("a", 7, 50)
    assert counts.counts == {"a": 7} and counts.offsets == {"a": 50}


def test_rotation_forgets_the_older_generation_with_tombstones() -> None:
    store = DistinctValues(max_keys=4)  # two generations of 2 keys
    store.add("a", "1", 0)
    store.add("a", "2", 1)  # a multi key
    store.add("b", "1", 2)
    store.add("c", "1", 3)  # rotation: {a, b} become the older generation
    assert store.forgotten == 0 and len(store) == 3 and store.dropped == []
    store.add("d", "1", 4)
    store.add("e", "1", 5)  # rotation: {a, b} are forgotten
    assert store.forgotten == 2 and store.dropped == ["a", "b"]
    assert store.count("a") == 0 and store.count("b") == 0 and len(store) == 3
    assert store.multi == 0, "a forgotten multi key leaves the multi count"
    assert "a" not in store.changed and "b" not in store.changed, "no value record after a tombstone"
    assert store.add("a", "3", 6) == 1, "a forgotten key starts again"


def test_forgetting_a_capped_key_leaves_the_capped_count() -> None:
    store = DistinctValues(max_keys=4, max_values=3)
    for i, ip in enumerate("123"):
        store.add("a", ip, i)
    assert store.capped == 1
    for i, key in enumerate("bcde"):
        store.add(key, "1", 3 + i)
    assert store.count("a") == 0 and store.capped == 0 and store.multi == 0


def test_a_cap_of_two_values_is_kept_and_counted() -> None:
    store = DistinctValues(max_values=2)
    counts = [store.add("a", ip, i) for i, ip in enumerate("123")]
    assert counts[-1] == 2 and store.capped == 1


def test_a_cap_below_two_values_is_raised_to_two() -> None:
    assert DistinctValues(max_values=1).max_values == 2  # one value would make "multi" meaningless


def test_an_active_key_survives_rotation() -> None:
    store = DistinctValues(max_keys=100)
    store.add("active", "ip1", 0)
    store.add("active", "ip2", 1)
    for i in range(1000):
        store.add(f"user{i}", "x", 2 + i)
        if i % 10 == 0:
            store.add("active", "ip1", 2 + i)  # seen again: moves to the current generation
    assert len(store) <= 100
    assert store.values("active") == ("ip1", "ip2")
    assert store.forgotten == 1000 + 1 - len(store)
    assert store.multi == 1
    assert "active" not in store.dropped


def test_leaders_keep_the_highest_counts() -> None:
    leaders = Leaders(size=3)
    for key, count in [("a", 2), ("b", 5), ("c", 3), ("d", 4), ("e", 1), ("f", 6)]:
        leaders.offer(key, count)
    assert leaders.top(10) == [("f", 6), ("b", 5), ("d", 4)]
    leaders.offer("d", 7)  # a kept key's count is updated in place
    assert leaders.top(2) == [("d", 7), ("f", 6)]


def test_a_full_leader_list_offered_a_smaller_count_evicts_nothing() -> None:
    """Regression: a full list once replaced its smallest count with any offered one."""
    leaders = Leaders(size=2)
    leaders.offer("a", 5)
    leaders.offer("b", 7)
    leaders.offer("c", 3)
    leaders.offer("d", 5)  # equal to the smallest: does not beat it
    assert leaders.counts == {"a": 5, "b": 7}
    leaders.offer("e", 6)
    assert leaders.counts == {"b": 7, "e": 6}
    leaders.offer("f", 5)
    assert leaders.counts == {"b": 7, "e": 6}


def test_a_leader_whose_count_dropped_can_be_replaced() -> None:
    leaders = Leaders(size=2)
    leaders.offer("a", 3)
    leaders.offer("b", 3)
    leaders.offer("c", 4)  # replaces a; the floor is now 3
    leaders.offer("c", 2)  # c was forgotten and came back with 2 IPs
    leaders.offer("d", 3)  # beats c's 2
    assert leaders.counts == {"b": 3, "d": 3}


def test_login_state_counts_and_returns_each_events_values() -> None:
    state, totals = LoginState(0), ProcessTotals()
    counted = count_all(state, [Ev("u1", "a"), Ev("u1", "b"), Ev("u2", "a", locale="RU")], totals)
    assert [c.total_logins_for_version for c in counted] == [1, 2, 3]
    assert [c.total_logins_from_locale for c in counted] == [1, 2, 1]
    assert [c.distinct_ips_for_user for c in counted] == [1, 2, 1]
    assert counted[-1].newest_major == 2 and counted[-1].most_common_device_type == "ios"
    assert state.by_epoch_hour.counts == {T0 // 3600: 3}
    assert state.top_multi_ip_users.top(5) == [("u1", 2)]
    assert state.replayed_until == 2 and state.by_locale.offsets == {"CA": 2, "RU": 2}


# --- 2. the changelog round trip -------------------------------------------------------------


USERS = [f"u{i}" for i in range(30)]
DEVICES = [f"d{i}" for i in range(10)]


def raw_event(rng: random.Random, partition: int, partitions: int, offset: int) -> RawRecord:
    """An input record: mostly valid mobile logins, some filtered, some rejected. The input is
    keyed by user: a user's logins are all in one partition."""
    roll = rng.random()
    event = {"user_id": rng.choice(USERS[partition::partitions]),
             "app_version": rng.choice(["1.0.0", "2.3.0", "3.1.4"]),
             "device_type": rng.choice(["iOS", "android", "ANDROID"]),
             "ip": f"10.0.0.{rng.randrange(8)}", "locale": rng.choice(["CA", "RU", "US"]),
             "device_id": rng.choice(DEVICES), "timestamp": T0 + rng.randrange(4) * 3600}
    if roll < 0.05:
        event["device_type"] = "web"  # filtered
    value = b"{not json" if roll > 0.95 else orjson.dumps(event)
    return RawRecord("user-login", partition, offset, T0 * 1000, event["user_id"].encode(), value)


class Pipeline:
    """Both steps over partitions, with every changelog record kept per partition, in order."""

    def __init__(self, partitions: int, max_keys: int, max_values: int) -> None:
        self.internal = InternalTopics.of("test")
        self.topology = Topology(Routes(internal=self.internal, partitions=partitions))
        self.totals = ProcessTotals()
        self.logins = {p: LoginState(p, max_keys, max_values) for p in range(partitions)}
        self.devices = {p: DeviceState(p, max_keys, max_values) for p in range(partitions)}
        self.login_log: dict[int, list[OutputRecord]] = defaultdict(list)
        self.device_log: dict[int, list[OutputRecord]] = defaultdict(list)
        self.offsets = Counter()  # next offset per input partition
        self.repartition_offsets = Counter()

    def run(self, rng: random.Random, batches: int, batch_size: int) -> None:
        for _ in range(batches):
            partition = rng.randrange(len(self.logins))
            first = self.offsets[partition]
            size = rng.randint(1, batch_size)
            records = [raw_event(rng, partition, len(self.logins), first + i) for i in range(size)]
            self.offsets[partition] += len(records)
            step = process_logins(records, self.logins[partition],
                                  lambda s, b: s.count(b, self.totals), self.topology, T0 + 3600.0)
            repartitioned = defaultdict(list)
            for out in step.outputs:
                if out.topic == self.internal.changelog:
                    assert out.partition == partition
                    self.login_log[partition].append(out)
                elif out.topic == self.internal.repartition:
                    offset = self.repartition_offsets[out.partition]
                    self.repartition_offsets[out.partition] += 1
                    repartitioned[out.partition].append(
                        RawRecord(out.topic, out.partition, offset, T0 * 1000, out.key, out.value))
            for q, batch in repartitioned.items():
                for out in process_devices(batch, self.devices[q], self.topology, T0 + 3600.0).outputs:
                    if out.topic == self.internal.device_changelog:
                        assert out.partition == q
                        self.device_log[q].append(out)


@pytest.mark.parametrize("max_keys, max_values", [(1_000_000, 64), (6, 3), (4, 3)])
@pytest.mark.parametrize("seed", range(4))
def test_a_state_rebuilt_from_its_changelog_equals_the_live_one(seed, max_keys, max_values) -> None:
    rng = random.Random(seed)
    pipeline = Pipeline(partitions=3, max_keys=max_keys, max_values=max_values)
    pipeline.run(rng, batches=30, batch_size=15)
    bounded = max_keys < len(USERS) // 3
    assert any(s.ips_by_user.forgotten for s in pipeline.logins.values()) == bounded
    assert any(s.ips_by_user.multi for s in pipeline.logins.values())
    for p, live in pipeline.logins.items():
        rebuilt = LoginState(p, max_keys, max_values)
        apply_all(rebuilt, pipeline.login_log[p])
        assert snapshot(rebuilt) == snapshot(live)
        for name in COUNTS:
            assert rebuilt.counts(name).offsets == live.counts(name).offsets
        assert rebuilt.replayed_until == live.replayed_until
        if not bounded:  # live leaders may still list forgotten users; rebuilt ones cannot
            assert rebuilt.top_multi_ip_users.top(100) == live.top_multi_ip_users.top(100)
    for q, live_devices in pipeline.devices.items():
        rebuilt_devices = DeviceState(q, max_keys, max_values)
        apply_all(rebuilt_devices, pipeline.device_log[q])
        assert device_snapshot(rebuilt_devices) == device_snapshot(live_devices)


@pytest.mark.parametrize("seed", range(5))
def test_without_tombstones_the_order_of_changelog_records_does_not_matter(seed) -> None:
    rng = random.Random(seed)
    pipeline = Pipeline(partitions=2, max_keys=1_000_000, max_values=3)
    pipeline.run(rng, batches=25, batch_size=15)
    for p, live in pipeline.logins.items():
        records = list(pipeline.login_log[p])
        assert all(r.value is not None for r in records)
        rng.shuffle(records)
        rebuilt = LoginState(p, 1_000_000, 3)
        apply_all(rebuilt, records)
        assert snapshot(rebuilt) == snapshot(live)
        assert rebuilt.ips_by_user.capped == live.ips_by_user.capped > 0
    for q, live_devices in pipeline.devices.items():
        records = list(pipeline.device_log[q])
        rng.shuffle(records)
        rebuilt_devices = DeviceState(q, 1_000_000, 3)
        apply_all(rebuilt_devices, records)
        assert device_snapshot(rebuilt_devices) == device_snapshot(live_devices)


def test_a_key_forgotten_and_seen_again_in_one_batch_gets_its_tombstone_first() -> None:
    state = LoginState(0, max_keys=4)
    count_all(state, [Ev("a", "old1"), Ev("a", "old2")])
    login_changes(state, CHANGELOG)  # a's old values are in the changelog
    # One batch: a's generation is forgotten (two rotations), then a comes back from a new IP.
    count_all(state, [Ev(u, "x") for u in "bcde"] + [Ev("a", "new")], first_offset=2)
    a, new = stable_key("a"), ip_value("new")
    assert state.ips_by_user.values(a) == (new,) and state.ips_by_user.forgotten == 2
    records = login_changes(state, CHANGELOG)
    a_records = [r.value for r in records if r.key == b"u:" + format(a, "x").encode()]
    assert a_records[0] is None and orjson.loads(a_records[1]) == [6, "", new] and len(a_records) == 2
    forgotten = [orjson.loads(r.value) for r in records if r.key == FORGOTTEN_KEY]
    assert forgotten == [[2]]
    # Restoring the whole changelog: the old IPs do not come back.
    rebuilt = LoginState(0, max_keys=4)
    old = LoginState(0, max_keys=4)
    count_all(old, [Ev("a", "old1"), Ev("a", "old2")])
    apply_all(rebuilt, login_changes(old, CHANGELOG) + records)
    assert rebuilt.ips_by_user.values(a) == (new,)
    assert snapshot(rebuilt) == snapshot(state)


def test_restoring_takes_no_changes_to_write_back() -> None:
    state = LoginState(0)
    count_all(state, [Ev("a", "1"), Ev("a", "2")])
    rebuilt = LoginState(0)
    apply_all(rebuilt, login_changes(state, CHANGELOG))
    assert login_changes(rebuilt, CHANGELOG) == []


# --- 3. exact state under replays (property) ------------------------------------------------------


VERSIONS = ["1.0.0", "2.3.0", "10.1.0"]
LOCALES = ["CA", "RU"]
TYPES = ["ios", "android"]
IPS = ["1.1.1.1", "2.2.2.2", "3.3.3.3"]


events_strategy = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(IPS), st.sampled_from(VERSIONS),
              st.sampled_from(LOCALES), st.sampled_from(TYPES), st.integers(0, 2)),
    min_size=1, max_size=40)


def expected_figures(events) -> dict:
    """The figures recomputed from the events with plain dicts and sets."""
    by = {name: Counter() for name in COUNTS}
    ips: dict[str, set] = defaultdict(set)
    for user, ip, version, locale, device_type, hour in events:
        by["by_app_version"][version] += 1
        by["by_locale"][locale] += 1
        by["by_device_type"][device_type] += 1
        by["by_epoch_hour"][T0 // 3600 + hour] += 1
        ips[stable_key(user)].add(ip_value(ip))  # in the stores' numbers for ids and IPs
    return {"counts": {name: dict(c) for name, c in by.items()}, "ips": dict(ips),
            "multi": sum(len(v) > 1 for v in ips.values())}


def figures(state: LoginState) -> dict:
    return {"counts": {name: dict(state.counts(name).counts) for name in COUNTS},
            "ips": {user: set(values) for user, values in state.ips_by_user.items()},
            "multi": state.ips_by_user.multi}


def cut(data, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut into random batches, as (first, past-last) offsets."""
    batches = []
    while start < end:
        size = data.draw(st.integers(1, max(1, min(8, end - start))), label="batch size")
        batches.append((start, min(end, start + size)))
        start += size
    return batches


def run_with_crashes(events, data, restore=apply_all) -> LoginState:
    """Process ``events`` (one input partition) with up to three crashes. A crash after batch k
    keeps the changelog records of the batches up to j and the commit of batch c (c <= j <= k:
    a batch is committed only once its outputs landed, and some beyond the commit may have
    landed too); the next run restores a fresh state and reads again from the committed offset."""
    n = len(events)
    landed: list[OutputRecord] = []
    committed = 0
    crashes = data.draw(st.integers(0, 3), label="crashes")
    for attempt in range(crashes + 1):
        state = LoginState(0)
        restore(state, landed)
        batches = cut(data, committed, n)
        last_run = attempt == crashes
        crash_after = len(batches) - 1 if last_run else data.draw(
            st.integers(0, len(batches) - 1), label="crash after batch")
        changes: list[list[OutputRecord]] = []
        for first, end in batches[:crash_after + 1]:
            batch = [(o, Ev(*events[o][:4], epoch_s=float(T0 + events[o][5] * 3600)), events[o][4])
                     for o in range(first, end)]
            state.count(batch, ProcessTotals())
            changes.append(login_changes(state, CHANGELOG))
        if last_run:
            return state
        commit = data.draw(st.integers(-1, crash_after), label="last committed batch")  # -1: none
        written = data.draw(st.integers(commit, crash_after), label="last batch whose changelog landed")
        for records in changes[:written + 1]:
            landed.extend(records)
        if commit >= 0:
            committed = batches[commit][1]
        if committed == n:  # everything was committed: nothing is read again
            state = LoginState(0)
            restore(state, landed)
            return state
    raise AssertionError("unreachable")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, data=st.data())
def test_counts_are_exact_through_crashes_and_replays(events, data) -> None:
    state = run_with_crashes(events, data)
    assert figures(state) == expected_figures(events)


def _restore_without_offsets(state: LoginState, records) -> None:
    """The restore with the replay skip disabled: what the property must catch."""
    apply_all(state, records)
    state.replayed_until = -1
    for name in COUNTS:
        state.counts(name).offsets.clear()


def test_the_replay_property_fails_without_the_replay_skip() -> None:
    """The property above can fail: with the restored offsets dropped, a replay counts twice."""
    failures = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(events=events_strategy, data=st.data())
    def without_skip(events, data) -> None:
        if figures(run_with_crashes(events, data, _restore_without_offsets)) != expected_figures(events):
            failures.append(events)
            raise AssertionError("double counted")

    with pytest.raises(AssertionError):
        without_skip()
    assert failures


# --- 4. process totals and views over partitions -------------------------------------------------


def test_process_totals_add_and_subtract_partitions() -> None:
    totals = ProcessTotals()  # what one process owning three partitions counts into
    states = [LoginState(p) for p in range(3)]
    count_all(states[0], [Ev("u1", "a", app_version="1.0.0"), Ev("u1", "b")], totals)
    count_all(states[1], [Ev("u2", "a", locale="RU")], totals, device_type="android")
    count_all(states[2], [Ev("u3", "a", app_version="3.1.0", locale="RU"), Ev("u3", "a")], totals,
              device_type="android")
    assert totals.by_app_version == {"1.0.0": 1, "2.3.0": 3, "3.1.0": 1}
    assert totals.by_locale == {"CA": 3, "RU": 2}
    assert totals.by_device_type == {"ios": 2, "android": 3}
    assert totals.most_common == "android" and totals.newest_major == 3 and totals.events == 5

    rebuilt = totals_of(states)
    for name in COUNTS:
        assert getattr(rebuilt, name) == getattr(totals, name)
    assert (rebuilt.most_common, rebuilt.newest_major) == ("android", 3)

    totals.add(states[2], sign=-1)  # partition 2 went to another process
    assert totals.by_app_version == {"1.0.0": 1, "2.3.0": 2}, "a label at 0 leaves"
    assert totals.by_device_type == {"ios": 2, "android": 1}
    assert totals.most_common == "ios" and totals.newest_major == 2 and totals.events == 3
    totals.add(states[2])
    assert totals.by_app_version == rebuilt.by_app_version and totals.newest_major == 3


def test_summaries_over_partitions_are_the_sums_of_their_parts() -> None:
    rng = random.Random(7)
    pipeline = Pipeline(partitions=3, max_keys=4, max_values=3)
    pipeline.run(rng, batches=40, batch_size=12)
    logins, devices = list(pipeline.logins.values()), list(pipeline.devices.values())
    totals = totals_of(logins)
    summary = summarize(totals, logins, devices, top=3)
    detail = detailed_counts(totals, logins, devices)

    versions = Counter()
    for state in logins:
        versions.update(state.by_app_version.counts)
    assert detail["by_app_version"] == dict(versions) == pipeline.totals.by_app_version
    events = sum(sum(s.by_device_type.counts.values()) for s in logins)
    assert summary["events"] == detail["events"] == events == pipeline.totals.events
    assert summary["top_app_versions"] == sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert summary["multi_ip_users"] == detail["multi_ip_users"] == sum(s.ips_by_user.multi for s in logins)
    assert summary["shared_devices"] == sum(s.users_by_device.multi for s in devices) > 0
    assert summary["tracked_users"] == sum(len(s.ips_by_user) for s in logins)
    assert summary["tracked_devices"] == sum(len(s.users_by_device) for s in devices)
    assert detail["forgotten_users"] == sum(s.ips_by_user.forgotten for s in logins) > 0
    assert detail["capped_users"] == sum(s.ips_by_user.capped for s in logins)
    assert detail["capped_devices"] == sum(s.users_by_device.capped for s in devices) > 0
    leaders = {kv for s in logins for kv in s.top_multi_ip_users.counts.items()}
    listed = detail["top_multi_ip_users"]
    assert set(listed) <= leaders and len(listed) == min(10, len(leaders)) > 0
    assert [n for _, n in listed] == sorted((n for _, n in leaders), reverse=True)[:10]
