"""The aggregation stores: counts, distinct values, and their memory bounds."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from loginpipe.core.state import OTHER, Aggregates, CountStore, DistinctStore
from loginpipe.runtime.shared import LockedAggregates


def obs(user="u1", ip="1.1.1.1", device="d1", version="2.3.0", locale="CA", device_type="ios",
        epoch_s=1_700_000_000.0):
    """One (event, normalized device type) pair as Aggregates.apply takes them."""
    event = SimpleNamespace(app_version=version, locale=locale, user_id=user, ip=ip, device_id=device,
                            epoch_s=epoch_s)
    return event, device_type


def test_count_store_counts_and_caps_labels() -> None:
    store = CountStore(max_labels=2)
    assert [store.add(x) for x in ["a", "b", "a", "c", "d"]] == [1, 1, 2, 1, 2]
    assert store.counts == {"a": 2, "b": 1, OTHER: 2}
    assert store.top(3) == [(OTHER, 2), ("a", 2), ("b", 1)]


def test_distinct_store_counts_distinct_values_and_multi_keys() -> None:
    store = DistinctStore()
    assert [store.add("u1", ip) for ip in ["a", "a", "b", "b", "c"]] == [1, 1, 2, 2, 3]
    assert store.add("u2", "a") == 1
    assert store.multi == 1
    assert store.count("u1") == 3 and store.count("u2") == 1 and store.count("nobody") == 0


def test_distinct_values_saturate_at_the_cap() -> None:
    store = DistinctStore(max_values=4)
    counts = [store.add("u", str(i)) for i in range(10)]
    assert counts[-1] == 4 and max(counts) == 4


def test_keys_are_bounded_and_active_keys_survive_rotation() -> None:
    store = DistinctStore(max_keys=100)
    store.add("active", "ip1")
    store.add("active", "ip2")
    for i in range(1000):
        store.add(f"user{i}", "x")
        if i % 10 == 0:
            store.add("active", "ip1")  # keeps it in the current generation
    assert len(store) <= 100
    assert store.count("active") == 2
    assert store.forgotten > 800
    assert store.multi == 1  # the forgotten keys had one value each


def test_forgotten_multi_keys_leave_the_multi_count() -> None:
    store = DistinctStore(max_keys=4)
    store.add("a", 1)
    store.add("a", 2)
    for key in ["b", "c", "d", "e", "f"]:
        store.add(key, 1)
    assert store.count("a") == 0 and store.multi == 0


def test_snapshots_follow_the_events_in_order() -> None:
    agg = Aggregates()
    snaps = agg.apply([obs(), obs(ip="2.2.2.2"), obs(user="u2", device_type="android"),
                       obs(user="u3", device_type="android")])
    assert [s.distinct_ips_for_user for s in snaps] == [1, 2, 1, 1]
    assert [s.users_on_device for s in snaps] == [1, 1, 2, 3]
    assert [s.total_logins_for_version for s in snaps] == [1, 2, 3, 4]
    assert [s.total_logins_for_device_type for s in snaps] == [1, 2, 1, 2]
    assert [s.most_common_device_type for s in snaps] == ["ios", "ios", "ios", "ios"]
    last = agg.apply([obs(user="u4", device_type="android")])[0]
    assert last.most_common_device_type == "android"
    summary = agg.summary()
    assert summary["multi_ip_users"] == 1 and summary["shared_devices"] == 1 and summary["events"] == 5


def test_concurrent_batches_lose_no_counts() -> None:
    agg = LockedAggregates()  # the runtime's shared wrapper: Aggregates itself has no lock

    def work(t: int) -> None:
        for b in range(50):
            agg.apply([obs(user=f"u{t}-{b}-{i}", device=f"d{i}") for i in range(100)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert agg.aggregates.by_version.counts["2.3.0"] == 4 * 50 * 100
    assert agg.users_by_device.count("d7") == 32  # saturated at the per-key cap
    assert agg.counts()["events"] == agg.summary()["events"] == 4 * 50 * 100
    assert agg.tracked_users() == len(agg.ips_by_user) == 4 * 50 * 100


def test_newest_major_follows_the_versions_seen_so_far() -> None:
    state = Aggregates()
    snapshots = state.apply([obs(version="2.3.0"), obs(version="10.0.1"), obs(version="3.1.0")])
    assert [s.newest_major for s in snapshots] == [2, 10, 10]


def test_newest_major_ignores_versions_counted_as_other() -> None:
    state = Aggregates()
    state.by_version.max_labels = 1
    snapshots = state.apply([obs(version="2.3.0"), obs(version="9.0.0")])
    assert [s.newest_major for s in snapshots] == [2, 2]


def test_logins_are_counted_per_hour_since_the_epoch() -> None:
    state = Aggregates()
    state.apply([obs(epoch_s=3600 * 10 + 5), obs(epoch_s=3600 * 10 + 3599), obs(epoch_s=3600 * 11)])
    assert state.counts()["by_epoch_hour"] == {10: 2, 11: 1}


def test_leaders_keep_the_largest_counts_by_name() -> None:
    from loginpipe.core.state import Leaders

    leaders = Leaders(size=3)
    for key, count in [("a", 2), ("b", 3), ("c", 2), ("d", 1), ("e", 5), ("a", 4), ("f", 2)]:
        leaders.offer(key, count)
    assert leaders.top(3) == [("e", 5), ("a", 4), ("b", 3)]
    assert len(leaders.counts) == 3


def test_top_multi_ip_users_and_shared_devices_are_named() -> None:
    state = Aggregates()
    state.apply([obs(user="u1", ip="1.1.1.1"), obs(user="u1", ip="2.2.2.2", device="d2"),
                 obs(user="u2", device="d2")])
    counts = state.counts()
    assert counts["top_multi_ip_users"] == [("u1", 2)]
    assert counts["top_shared_devices"] == [("d2", 2)]
