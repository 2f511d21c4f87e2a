"""The query command's answers, from changelog records the pure core wrote (no broker).

The expected figures are counted here from the events themselves, not from the stores: the
query must give the group's exact totals whatever order, batching or compaction the changelog
records went through."""

from __future__ import annotations

import random
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass

import orjson
import pytest

from loginpipe import query
from loginpipe.core.batch import Topology, process_devices, process_logins
from loginpipe.core.events import RawRecord
from loginpipe.core.records import OutputRecord, Routes
from loginpipe.errors import UserError
from loginpipe.state.stores import (
    DEFAULT_MAX_TRACKED_KEYS,
    DEFAULT_MAX_VALUES_PER_KEY,
    DeviceState,
    LoginState,
    ProcessTotals,
)
from loginpipe.state.view import detailed_counts, summarize, totals_of
from loginpipe.topics import InternalTopics

NOW = 1_700_000_000.0
PARTITIONS = 3


@dataclass
class CoreRun:
    """What running the core over some events left: its changelog records and its live stores."""

    changelog: list[OutputRecord]
    device_changelog: list[OutputRecord]
    logins: list[LoginState]
    devices: list[DeviceState]


def make_events(count: int = 400, seed: int = 7) -> list[dict]:
    """Logins of a few users over a few IPs and shared devices, some not mobile (filtered)."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        user = f"user-{rng.randrange(40)}"
        events.append({
            "user_id": user, "app_version": rng.choice(["1.0.0", "2.3.0", "2.4.1", "10.0.0"]),
            "device_type": rng.choice(["iOS", "android", "ANDROID", "web"]),
            "ip": f"10.0.{rng.randrange(3)}.{int(user.split('-')[1]) % 7}",
            "locale": rng.choice(["CA", "TX", "NY", "RU"]),
            "device_id": rng.choice([f"dev-{user}", f"family-{rng.randrange(5)}"]),
            "timestamp": int(NOW) - i * 97,
        })
    return events


def expected_totals(events: list[dict], max_values: int = DEFAULT_MAX_VALUES_PER_KEY) -> dict:
    """The totals answer, counted straight from the events the core keeps (mobile ones)."""
    kept = [e for e in events if e["device_type"].lower() in ("ios", "android")]
    ips, users = defaultdict(set), defaultdict(set)
    for e in kept:
        ips[e["user_id"]].add(e["ip"])
        users[e["device_id"]].add(e["user_id"])
    return {
        "events": len(kept),
        "by_app_version": Counter(e["app_version"] for e in kept),
        "by_locale": Counter(e["locale"] for e in kept),
        "by_device_type": Counter(e["device_type"].lower() for e in kept),
        "multi_ip_users": sum(len(v) > 1 for v in ips.values()),
        "shared_devices": sum(len(v) > 1 for v in users.values()),
        "tracked_users": len(ips),
        "tracked_devices": len(users),
        "forgotten_users": 0, "forgotten_devices": 0,
        "capped_users": sum(len(v) >= max_values for v in ips.values()),
        "capped_devices": sum(len(v) >= max_values for v in users.values()),
    }


def run_core(events: list[dict], group: str = "user-login-group", batch_size: int = 9,
             max_keys: int = DEFAULT_MAX_TRACKED_KEYS) -> CoreRun:
    """Both steps of the core over ``events`` in batches, as the pipeline's workers run them;
    keyed by user as the input is, and repartitioned by device as the login step routes."""
    topology = Topology(Routes(partitions=PARTITIONS, internal=InternalTopics.of(group)))
    internal, totals = topology.routes.internal, ProcessTotals()
    logins = [LoginState(p, max_keys) for p in range(PARTITIONS)]
    devices = [DeviceState(p) for p in range(PARTITIONS)]
    run = CoreRun([], [], logins, devices)
    repartitioned: list[list[RawRecord]] = [[] for _ in range(PARTITIONS)]
    for p, records in enumerate(_input_partitions(events)):
        for batch in _batches(records, batch_size):
            step = process_logins(batch, logins[p], lambda state, b: state.count(b, totals), topology, NOW)
            for out in step.outputs:
                if out.topic == internal.changelog:
                    run.changelog.append(out)
                elif out.topic == internal.repartition:
                    into = repartitioned[out.partition]
                    into.append(RawRecord(out.topic, out.partition, len(into), 0, out.key, out.value))
    for q, records in enumerate(repartitioned):
        for batch in _batches(records, batch_size):
            step = process_devices(batch, devices[q], topology, NOW)
            run.device_changelog += [o for o in step.outputs if o.topic == internal.device_changelog]
    return run


def _input_partitions(events: list[dict]) -> list[list[RawRecord]]:
    partitions: list[list[RawRecord]] = [[] for _ in range(PARTITIONS)]
    for e in events:
        key = e["user_id"].encode()
        partition = zlib.crc32(key) % PARTITIONS
        into = partitions[partition]
        into.append(RawRecord("user-login", partition, len(into), 0, key, orjson.dumps(e)))
    return partitions


def _batches(records: list, size: int) -> list[list]:
    return [records[i:i + size] for i in range(0, len(records), size)]


def restored(run: CoreRun, login_records: list | None = None, device_records: list | None = None
             ) -> tuple[list[LoginState], list[DeviceState]]:
    """The stores the query rebuilds from the run's changelog records (or the ones given)."""
    group = query.GroupState(PARTITIONS, PARTITIONS)
    for record in run.changelog if login_records is None else login_records:
        group.login_record(record)
    for record in run.device_changelog if device_records is None else device_records:
        group.device_record(record)
    return group.finish()


def compacted(records: list[OutputRecord]) -> list[OutputRecord]:
    """What log compaction keeps: the last record of each key per partition, tombstones gone."""
    last = {(r.partition, r.key): r for r in records}
    return [r for r in last.values() if r.value is not None]


def test_totals_are_the_events_counts() -> None:
    events = make_events()
    run = run_core(events)
    assert query.totals_answer(*restored(run)) == expected_totals(events)


@pytest.mark.parametrize("arrange", ["shuffled", "compacted"])
def test_totals_do_not_depend_on_record_order_or_compaction(arrange: str) -> None:
    events = make_events(seed=11)
    run = run_core(events, batch_size=4)
    rng = random.Random(3)
    logins, devices = list(run.changelog), list(run.device_changelog)
    if arrange == "shuffled":  # the order of records within a partition is what could change
        rng.shuffle(logins)
        rng.shuffle(devices)
    else:
        logins, devices = compacted(logins), compacted(devices)
    assert query.totals_answer(*restored(run, logins, devices)) == expected_totals(events)


def test_restored_stores_summarize_like_the_live_ones() -> None:
    run = run_core(make_events(seed=5))
    logins, devices = restored(run)
    live = summarize(totals_of(run.logins), run.logins, run.devices)
    assert summarize(totals_of(logins), logins, devices) == live


def _kept_users(logins: list[LoginState]) -> dict[str, tuple[str, ...]]:
    return {user: ips for state in logins for user, ips in state.ips_by_user.items()}


def test_forgotten_users_stay_forgotten_once_compacted() -> None:
    """Under the memory bound users are forgotten (tombstones); what the query holds is what the
    live stores hold. (How many were forgotten the changelog does not say: the query answers 0.)"""
    run = run_core(make_events(600), max_keys=8)
    live = detailed_counts(totals_of(run.logins), run.logins, run.devices)
    assert live["forgotten_users"] > 0
    logins, devices = restored(run, compacted(run.changelog), compacted(run.device_changelog))
    answer = query.totals_answer(logins, devices)
    assert _kept_users(logins) == _kept_users(run.logins)
    for name in ("events", "tracked_users", "multi_ip_users"):
        assert answer[name] == live[name], name


def test_forgotten_users_stay_forgotten_before_compaction() -> None:
    run = run_core(make_events(600), max_keys=8)
    logins, _ = restored(run)
    assert _kept_users(logins) == _kept_users(run.logins)


def test_user_and_device_answers() -> None:
    events = make_events()
    logins, devices = restored(run_core(events))
    kept = [e for e in events if e["device_type"] != "web"]
    for user in {e["user_id"] for e in kept}:
        ips = {e["ip"] for e in kept if e["user_id"] == user}
        assert query.user_answer(logins, user) == {"user_id": user, "distinct_ips": len(ips)}
    for device in {e["device_id"] for e in kept}:
        users = {e["user_id"] for e in kept if e["device_id"] == device}
        assert query.device_answer(devices, device) == {"device_id": device, "users": len(users)}


def test_unknown_ids_answer_zero() -> None:
    logins, devices = restored(run_core(make_events()))
    assert query.user_answer(logins, "nobody") == {"user_id": "nobody", "distinct_ips": 0}
    assert query.device_answer(devices, "nothing") == {"device_id": "nothing", "users": 0}
    assert query.user_answer([], "nobody")["distinct_ips"] == 0


def test_a_user_at_the_cap_is_said_to_be_capped() -> None:
    roaming = [{"user_id": "roamer", "app_version": "2.3.0", "device_type": "iOS", "ip": f"10.1.0.{i}",
                "locale": "CA", "device_id": "phone", "timestamp": int(NOW)} for i in range(70)]
    events = make_events(100) + roaming
    logins, devices = restored(run_core(events))
    assert query.user_answer(logins, "roamer") == {
        "user_id": "roamer", "distinct_ips": DEFAULT_MAX_VALUES_PER_KEY, "capped": True}
    assert query.totals_answer(logins, devices) == expected_totals(events)
    assert "or more" in query.key_table(query.user_answer(logins, "roamer"))


def test_no_records_answer_zeros() -> None:
    answer = query.totals_answer(*query.GroupState(2, 2).finish())
    assert answer["events"] == 0 and answer["by_locale"] == {} and answer["tracked_users"] == 0


def test_totals_table_is_aligned_and_complete() -> None:
    events = make_events()
    answer = query.totals_answer(*restored(run_core(events)))
    lines = query.totals_table(answer).splitlines()
    assert lines[0].split() == ["events", f"{answer['events']:,}"]
    figures = lines[:1 + len(query.FIGURES)]
    assert len({len(line) for line in figures}) == 1  # numbers right-aligned on one column
    assert [line.rsplit(None, 1)[0] for line in figures[1:]] == [n.replace("_", " ") for n in query.FIGURES]
    for name in query.LABELLED:
        start = lines.index(name.replace("_", " ") + ":")
        rows = lines[start + 1:start + 1 + len(answer[name])]
        assert [row.split()[0] for row in rows] == list(answer[name])
        assert all(row.startswith("  ") for row in rows)
        assert len({len(row) for row in rows}) == 1
    share = next(line for line in lines if line.strip().startswith("ios "))
    ios = answer["by_device_type"]["ios"]
    assert share.split()[1:] == [f"{ios:,}", f"{100 * ios / answer['events']:.1f}", "%"]


def test_key_table() -> None:
    assert query.key_table({"user_id": "u1", "distinct_ips": 1234}).splitlines() == [
        "user id       u1", "distinct ips  1,234"]


def test_missing_changelogs_name_the_group_and_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    topics = InternalTopics.of("ghost")
    monkeypatch.setattr(query, "describe_partitions", lambda bootstrap, names: {topics.changelog: 3})
    with pytest.raises(UserError) as raised:
        query.read_group_state("b:9092", "ghost")
    message = str(raised.value)
    assert "'ghost'" in message and topics.device_changelog in message
    assert topics.changelog not in message and "\n" not in message


def test_main_prints_json_and_tables(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    events = make_events()
    state = restored(run_core(events))
    asked = []
    monkeypatch.setattr(query, "read_group_state", lambda b, g, t: asked.append((b, g)) or state)
    assert query.main(["--bootstrap-servers", "b:1", "--group-id", "g", "totals", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == expected_totals(events)
    assert [(str(b), g) for b, g in asked] == [("b:1", "g")]
    assert query.main(["user", "nobody", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"user_id": "nobody", "distinct_ips": 0}
    assert query.main(["device", "family-1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["device", "id", "family-1"]
    assert query.main(["totals"]) == 0
    assert capsys.readouterr().out.startswith("events ")


def test_group_summary_has_the_final_summary_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_core(make_events())
    monkeypatch.setattr(query, "read_group_state", lambda b, g: restored(run))
    assert query.group_summary("b:1", "g") == summarize(totals_of(run.logins), run.logins, run.devices)
