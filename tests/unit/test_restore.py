"""Restoring state from the changelogs: the Restorer on its own, then the real runtime on the
in-memory Kafka (restart, rebalance, nothing processed before its partition's restore)."""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict

import orjson
import pytest

from loginpipe.kafka.base import TopicPartition
from loginpipe.kafka.memory import MemoryBackend, MemoryCluster, MemoryReader
from loginpipe.runtime.app import RunResult
from loginpipe.state import restore
from loginpipe.state.changelog import apply_all
from loginpipe.state.restore import Restorer
from loginpipe.state.stores import COUNTS, DeviceState, LoginState, ip_value, stable_key
from loginpipe.topics import InternalTopics
from loginpipe.waiting import wait_until
from tests.unit.test_worker import Running as WorkerRunning

INPUT, OUTPUT, DLQ = "user-login", "processed-user-login", "user-login-dlq"
GROUP = "restore-test-group"
INTERNAL = InternalTopics.of(GROUP)
PARTITIONS = 4
T0 = 1_700_000_000
WAIT_S = 10


def snapshot(state: LoginState | DeviceState) -> dict:
    """A store's figures, comparable with ==."""
    if isinstance(state, DeviceState):
        users = state.users_by_device
        return {"users": {d: set(v) for d, v in users.items()}, "multi": users.multi}
    ips = state.ips_by_user
    return {"counts": {name: dict(state.counts(name).counts) for name in COUNTS},
            "ips": {u: set(v) for u, v in ips.items()}, "multi": ips.multi}


# --- 5. the Restorer on a MemoryReader -------------------------------------------------------------


CHANGELOG = "some-changelog"


def user_record(cluster: MemoryCluster, partition: int, user: str, *ips: str, offset: int = 0) -> None:
    """A changelog record of ``user``'s IPs, as changelog.py writes it (named when multi-IP)."""
    value = [offset, user if len(ips) > 1 else "", *(ip_value(ip) for ip in ips)]
    key = b"u:" + format(stable_key(user), "x").encode()
    cluster.produce(CHANGELOG, orjson.dumps(value), key, partition=partition)


@pytest.fixture
def changelog() -> MemoryCluster:
    """A changelog with 10 records in partition 0, 6 in partition 1 and none in partition 2."""
    cluster = MemoryCluster()
    cluster.create_topic(CHANGELOG, 3)
    for i in range(10):
        user_record(cluster, 0, f"a{i}", "1.1.1.1", "2.2.2.2", offset=i)
    for i in range(6):
        user_record(cluster, 1, f"b{i}", "3.3.3.3", offset=i)
    return cluster


def owner(partition: int) -> TopicPartition:
    return TopicPartition(INPUT, partition)


def cl(partition: int) -> TopicPartition:
    return TopicPartition(CHANGELOG, partition)


def expected(cluster: MemoryCluster, partition: int) -> dict:
    state = LoginState(partition)
    apply_all(state, cluster.topics[CHANGELOG][partition])
    return snapshot(state)


def test_a_restore_reads_in_chunks_reports_progress_and_completes(changelog, monkeypatch) -> None:
    monkeypatch.setattr(restore, "CHUNK_RECORDS", 4)
    readers: list[MemoryReader] = []
    warnings: list[str] = []
    restorer = Restorer(lambda: readers.append(MemoryReader(changelog)) or readers[-1], warnings.append)
    states = {p: LoginState(p) for p in (0, 1)}
    for p, state in states.items():
        restorer.add(cl(p), owner(p), state)
    assert restorer.active and restorer.progress() == (0, 1), "ends unknown before the first step"
    progress, finished = [], []
    for _ in range(10):
        finished += restorer.step()
        progress.append(restorer.progress())
        if not restorer.active:
            break
    assert progress[0] == (4, 16), "one chunk per step"
    assert all(done <= total for done, total in progress)
    under_way = [done for done, total in progress if total == 16]
    assert under_way == sorted(under_way) and len(under_way) >= 2, "progress grows chunk by chunk"
    assert len(progress) == 4 and progress[-1] == (0, 0), "16 records in chunks of 4"
    assert sorted(finished) == [owner(0), owner(1)] and not restorer.active
    assert restorer.restored_records == 16 and warnings == [] and len(readers) == 1
    for p, state in states.items():
        assert snapshot(state) == expected(changelog, p)
    assert states[0].top_multi_ip_users.top(20) == sorted((f"a{i}", 2) for i in range(10)), \
        "the leaders are rebuilt when the restore finishes"
    assert restorer.step() == [], "nothing left to do"


def test_an_empty_changelog_finishes_at_once_without_reading(changelog) -> None:
    reader = MemoryReader(changelog)
    restorer = Restorer(lambda: reader, lambda message: None)
    state = LoginState(2)
    restorer.add(cl(2), owner(2), state)
    assert restorer.step() == [owner(2)]
    assert reader.polls == 0 and not restorer.active and restorer.progress() == (0, 0)
    assert len(state.ips_by_user) == 0


def test_a_cancelled_restore_stops_and_the_others_go_on(changelog, monkeypatch) -> None:
    monkeypatch.setattr(restore, "CHUNK_RECORDS", 4)
    restorer = Restorer(lambda: MemoryReader(changelog), lambda message: None)
    cancelled, kept = LoginState(0), LoginState(1)
    restorer.add(cl(0), owner(0), cancelled)
    restorer.add(cl(1), owner(1), kept)
    assert restorer.step() == []
    restorer.cancel({owner(0)})
    finished = []
    while restorer.active:
        assert restorer.progress()[1] == 6, "only the remaining restore is counted"
        finished += restorer.step()
    assert finished == [owner(1)]
    assert snapshot(kept) == expected(changelog, 1)
    assert len(cancelled.ips_by_user) < 10


def test_a_broker_error_warns_and_the_restore_goes_on(changelog) -> None:
    warnings: list[str] = []
    restorer = Restorer(lambda: MemoryReader(changelog), warnings.append)
    state = LoginState(0)
    restorer.add(cl(0), owner(0), state)
    changelog.set_available(False)
    assert restorer.step() == [] and restorer.active
    assert len(warnings) == 1 and "retrying" in warnings[0]
    changelog.set_available(True)
    assert restorer.step() == [owner(0)]
    assert snapshot(state) == expected(changelog, 0)


def test_a_stalled_restore_gives_up_waiting_and_says_so(changelog) -> None:
    now = [0.0]
    reader = HeldReader(changelog, threading.Event())
    warnings: list[str] = []
    restorer = Restorer(lambda: reader, warnings.append, clock=lambda: now[0])
    restorer.add(cl(0), owner(0), LoginState(0))
    assert restorer.step() == []
    now[0] += restore.STALL_S - 1
    assert restorer.step() == [] and warnings == []
    now[0] += 1
    assert restorer.step() == [owner(0)]
    assert "no progress" in warnings[0] and "at offset 0 of 10" in warnings[0]


def test_a_stalled_restore_is_seen_with_any_injected_clock(changelog) -> None:
    now = [0.0]
    restorer = Restorer(lambda: HeldReader(changelog, threading.Event()), lambda message: None,
                        clock=lambda: now[0])
    restorer.add(cl(0), owner(0), LoginState(0))
    assert restorer.step() == []
    now[0] += restore.STALL_S
    assert restorer.step() == [owner(0)]


@pytest.mark.parametrize("first_time", ["completed", "cancelled"])
def test_a_partition_restored_again_is_read_from_the_beginning(changelog, monkeypatch, first_time) -> None:
    monkeypatch.setattr(restore, "CHUNK_RECORDS", 4)
    restorer = Restorer(lambda: MemoryReader(changelog), lambda message: None)
    restorer.add(cl(0), owner(0), LoginState(0))
    if first_time == "completed":
        while restorer.active:
            restorer.step()
    else:
        restorer.step()
        restorer.cancel({owner(0)})
    again = LoginState(0)  # the partition was revoked, then assigned to this worker again
    restorer.add(cl(0), owner(0), again)
    for _ in range(10):
        if not restorer.active:
            break
        restorer.step()
    assert snapshot(again) == expected(changelog, 0)


# --- the runtime on the in-memory cluster ---------------------------------------------------------------


class HeldReader(MemoryReader):
    """A MemoryReader whose polls return nothing until ``gate`` is set: a slow changelog."""

    def __init__(self, cluster: MemoryCluster, gate: threading.Event) -> None:
        super().__init__(cluster)
        self.gate = gate

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if not self.gate.is_set():
            self.polls += 1
            return {}
        return super().poll(timeout_ms, max_records)


class HeldBackend(MemoryBackend):
    def __init__(self, cluster: MemoryCluster) -> None:
        super().__init__(cluster)
        self.gate = threading.Event()
        self.readers: list[HeldReader] = []

    def reader(self, config) -> HeldReader:
        self.readers.append(HeldReader(self.cluster, self.gate))
        return self.readers[-1]


@pytest.fixture
def cluster() -> MemoryCluster:
    cluster = MemoryCluster()
    for name in (INPUT, OUTPUT, DLQ):
        cluster.create_topic(name, PARTITIONS)
    return cluster


class Running(WorkerRunning):
    """The worker tests' running Application, in this file's group, committing often; a stop
    that finds the application failed fails the test."""

    def __init__(self, cluster: MemoryCluster, backend: MemoryBackend | None = None, **settings) -> None:
        super().__init__(cluster, backend=backend, group_id=GROUP, commit_interval_ms=50, **settings)

    def stop(self) -> RunResult:
        result = super().stop()
        assert not result.failed, self.err.getvalue()
        return result

    def owned(self) -> tuple[dict, dict]:
        """Copies of the serving states: {partition: LoginState}, {partition: DeviceState}."""
        state = self.app.state
        return ({tp.partition: s for tp, s in list(state.logins.items())},
                {tp.partition: s for tp, s in list(state.devices.items())})

    def serving(self) -> int:
        """How many partitions (input and repartition) this app serves, once no restore is under way."""
        logins, devices = self.owned()
        return 0 if self.app.state.restoring else len(logins) + len(devices)


def require(condition, message: str) -> None:
    """A precondition of an xfail test: failing it is a plain failure, not the expected one."""
    if not condition:
        pytest.fail(message)


def login(cluster: MemoryCluster, user: str, ip: str, device: str, partition: int,
          version: str = "9.9.9", device_type: str = "iOS", locale: str = "CA") -> int:
    """Produce one valid login to input ``partition``; return its offset."""
    event = {"user_id": user, "app_version": version, "device_type": device_type, "ip": ip,
             "locale": locale, "device_id": device, "timestamp": T0}
    return cluster.produce(INPUT, orjson.dumps(event), user.encode(), partition=partition).offset


def outputs(cluster: MemoryCluster) -> dict[tuple[int, int], list[dict]]:
    """The processed records by their input (partition, offset)."""
    found: dict = defaultdict(list)
    for record in cluster.records(OUTPUT):
        value = orjson.loads(record.value)
        found[(value["source_partition"], value["source_offset"])].append(value)
    return found


def drained(cluster: MemoryCluster) -> bool:
    """Every input and repartition record read, processed and committed."""
    return all(cluster.committed_offsets(GROUP, topic) == cluster.end_offsets(topic)
               for topic in (INPUT, INTERNAL.repartition))


def from_changelogs(cluster: MemoryCluster) -> tuple[dict, dict]:
    """Every partition's state rebuilt from the changelog topics."""
    logins, devices = {}, {}
    for p in range(PARTITIONS):
        logins[p] = LoginState(p)
        apply_all(logins[p], cluster.topics[INTERNAL.changelog][p])
        devices[p] = DeviceState(p)
        apply_all(devices[p], cluster.topics[INTERNAL.device_changelog][p])
    return logins, devices


def test_a_restart_continues_from_the_state_in_the_changelogs(cluster) -> None:
    first = Running(cluster)
    before = [login(cluster, "user1", "10.0.0.1", "shared-device", 0),
              login(cluster, "user1", "10.0.0.1", "phone-1", 0),
              login(cluster, "user3", "10.0.0.3", "phone-3", 0)]
    assert wait_until(lambda: drained(cluster) and len(outputs(cluster)) == 3, WAIT_S), first.err.getvalue()
    first.stop()
    old = outputs(cluster)
    assert [old[(0, o)][0]["total_logins_for_version"] for o in before] == [1, 2, 3]
    assert old[(0, before[0])][0]["distinct_ips_for_user"] == 1
    assert old[(0, before[0])][0]["users_on_device"] == 1
    assert cluster.records(INTERNAL.changelog) and cluster.records(INTERNAL.device_changelog)

    second = Running(cluster)
    new_ip = login(cluster, "user1", "10.0.0.2", "phone-1", 0)
    new_user = login(cluster, "user2", "10.0.0.9", "shared-device", 0)
    assert wait_until(lambda: drained(cluster) and len(outputs(cluster)) == 5, WAIT_S), second.err.getvalue()
    second.stop()
    found = outputs(cluster)
    assert all(len(values) == 1 for values in found.values()), "nothing committed was read again"
    ip_output, device_output = found[(0, new_ip)][0], found[(0, new_user)][0]
    assert ip_output["distinct_ips_for_user"] == 2 and ip_output["multi_ip_user"] is True
    assert ip_output["total_logins_for_version"] == 4, "the count goes on from 3"
    assert device_output["users_on_device"] == 2 and device_output["shared_device"] is True
    assert device_output["total_logins_for_version"] == 5


def random_logins(cluster: MemoryCluster, rng: random.Random, n: int, users: int = 24) -> list[dict]:
    """``n`` logins of a few users (each in its own partition, as keyed input is), a few IPs and
    devices, so that multi-IP users and shared devices occur."""
    events = []
    for _ in range(n):
        u = rng.randrange(users)
        event = {"user": f"user{u}", "ip": f"10.1.0.{rng.randrange(4)}", "device": f"dev{rng.randrange(12)}",
                 "version": rng.choice(["1.0.0", "2.3.0", "9.9.9"]), "locale": rng.choice(["CA", "RU"]),
                 "device_type": rng.choice(["iOS", "android"])}
        login(cluster, event["user"], event["ip"], event["device"], u % PARTITIONS, event["version"],
              event["device_type"], event["locale"])
        events.append(event)
    return events


def recomputed(events: list[dict]) -> dict:
    """The group's figures from the events, with plain dicts and sets."""
    ips, users = defaultdict(set), defaultdict(set)
    for e in events:  # ids and IPs in the stores' numbers
        ips[stable_key(e["user"])].add(ip_value(e["ip"]))
        users[stable_key(e["device"])].add(stable_key(e["user"]))
    return {"versions": Counter(e["version"] for e in events),
            "locales": Counter(e["locale"] for e in events),
            "types": Counter(e["device_type"].lower() for e in events),
            "ips": dict(ips), "users": dict(users)}


def combined(logins, devices) -> dict:
    """The group's figures from per-partition states."""
    versions, locales, types, ips, users = Counter(), Counter(), Counter(), {}, {}
    for state in logins:
        versions.update(state.by_app_version.counts)
        locales.update(state.by_locale.counts)
        types.update(state.by_device_type.counts)
        for user, values in state.ips_by_user.items():
            assert user not in ips, "a user is in one partition's state only"
            ips[user] = set(values)
    for state in devices:
        for device, values in state.users_by_device.items():
            assert device not in users, "a device is in one partition's state only"
            users[device] = set(values)
    return {"versions": versions, "locales": locales, "types": types, "ips": ips, "users": users}


def test_state_moves_with_its_partitions_on_a_rebalance(cluster) -> None:
    rng = random.Random(5)
    events = random_logins(cluster, rng, 300)
    first = Running(cluster, max_poll_records=25)
    assert wait_until(lambda: drained(cluster) and first.serving() == 2 * PARTITIONS, WAIT_S)
    logins, devices = first.owned()
    had = {("login", p): snapshot(s) for p, s in logins.items()}
    had |= {("device", p): snapshot(s) for p, s in devices.items()}
    assert combined(logins.values(), devices.values()) == recomputed(events)

    second = Running(cluster, max_poll_records=25)
    assert wait_until(lambda: first.serving() and second.serving()
                      and first.serving() + second.serving() == 2 * PARTITIONS, WAIT_S), second.err.getvalue()
    moved_logins, moved_devices = second.owned()
    assert moved_logins and moved_devices
    for p, state in moved_logins.items():
        assert snapshot(state) == had[("login", p)], f"input partition {p} restored as it was"
    for p, state in moved_devices.items():
        assert snapshot(state) == had[("device", p)], f"repartition partition {p} restored as it was"
    kept_logins, _ = first.owned()
    assert not kept_logins.keys() & moved_logins.keys(), "a partition has one owner"
    moved_totals = second.app.state.totals
    assert moved_totals.events == sum(sum(s.by_device_type.counts.values()) for s in moved_logins.values())

    events += random_logins(cluster, rng, 300)
    assert wait_until(lambda: drained(cluster), WAIT_S), first.err.getvalue() + second.err.getvalue()
    expected = recomputed(events)
    (logins1, devices1), (logins2, devices2) = first.owned(), second.owned()
    assert combined([*logins1.values(), *logins2.values()], [*devices1.values(), *devices2.values()]) \
        == expected, "the two members' states add up to the group's"
    rebuilt_logins, rebuilt_devices = from_changelogs(cluster)
    assert combined(rebuilt_logins.values(), rebuilt_devices.values()) == expected
    results = [first.stop(), second.stop()]
    assert sum(r.totals.processed for r in results) == len(events)
    assert len(cluster.records(OUTPUT)) == len(events)


def test_partitions_that_come_back_are_restored_whole(cluster) -> None:
    rng = random.Random(9)
    events = random_logins(cluster, rng, 200)
    first = Running(cluster)
    require(wait_until(lambda: drained(cluster), WAIT_S), "the first run drains")
    first.stop()  # the changelogs now hold every partition's state

    member = Running(cluster)  # restores all 8 partitions from non-empty changelogs
    require(wait_until(lambda: member.serving() == 2 * PARTITIONS, WAIT_S), member.err.getvalue())
    visitor = Running(cluster)  # takes half of them for a while
    require(wait_until(lambda: visitor.serving() == PARTITIONS and member.serving() == PARTITIONS, WAIT_S),
            "the visitor gets half of the partitions")
    events += random_logins(cluster, rng, 20)
    require(wait_until(lambda: drained(cluster), WAIT_S), "both members drain")
    visitor.stop()  # ...and gives them back
    require(wait_until(lambda: member.serving() == 2 * PARTITIONS, WAIT_S), member.err.getvalue())
    logins, devices = member.owned()
    rebuilt_logins, rebuilt_devices = from_changelogs(cluster)
    try:
        for p in range(PARTITIONS):
            assert snapshot(logins[p]) == snapshot(rebuilt_logins[p])
            assert snapshot(devices[p]) == snapshot(rebuilt_devices[p])
        assert combined(logins.values(), devices.values()) == recomputed(events)
    finally:
        member.stop()


def test_no_record_of_a_partition_is_processed_before_its_restore_finishes(cluster) -> None:
    first = Running(cluster)
    for _ in range(3):
        login(cluster, "user1", "10.0.0.1", "phone-1", 0)
    assert wait_until(lambda: drained(cluster) and len(outputs(cluster)) == 3, WAIT_S)
    first.stop()

    backend = HeldBackend(cluster)
    second = Running(cluster, backend=backend)
    offset = login(cluster, "user1", "10.0.0.2", "phone-1", 0)
    # The worker loops on (restore step, poll) while the changelog is held: many loops, no record.
    assert wait_until(lambda: backend.readers and backend.readers[0].polls >= 30, WAIT_S)
    assert second.app.state.restoring, "the restore is under way"
    assert TopicPartition(INPUT, 0) not in second.app.state.logins
    assert second.app.stats.read == 0 and len(outputs(cluster)) == 3
    assert cluster.committed_offsets(GROUP, INPUT)[TopicPartition(INPUT, 0)] == 3
    backend.gate.set()
    assert wait_until(lambda: (0, offset) in outputs(cluster), WAIT_S), second.err.getvalue()
    result = second.stop()
    output = outputs(cluster)[(0, offset)][0]
    assert output["total_logins_for_version"] == 4 and output["distinct_ips_for_user"] == 2
    assert result.totals.consumed == 1
