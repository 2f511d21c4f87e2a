"""The summary snapshot built from the aggregations and the totals, and the partition records that
add up to the group's figures."""

from __future__ import annotations

import calendar
import itertools
import zlib
from collections import Counter
from types import SimpleNamespace

import orjson

from loginpipe.core.batch import LocalState, Topology, process_batch
from loginpipe.core.events import RawRecord
from loginpipe.core.privacy import Privacy
from loginpipe.core.records import Routes
from loginpipe.local.generator import EventGenerator
from loginpipe.observe.stats import Totals
from loginpipe.observe.summary import (
    DEVICES,
    LOGINS,
    PARTITION_SCHEMA_ID,
    add_up,
    build_summary,
    copy_state,
    partition_figures,
    partition_record,
    state_figures,
)
from loginpipe.state.stores import OTHER

T0 = calendar.timegm((2026, 11, 22, 23, 30, 0))  # a Sunday


def login(locale: str, epoch_s: float, device_type: str = "ios"):
    event = SimpleNamespace(app_version="2.3.0", locale=locale, user_id=f"u-{epoch_s}", ip="1.1.1.1",
                            device_id="d", epoch_s=epoch_s)
    return event, device_type


def count(state: LocalState, logins: list) -> None:
    """Count ``logins`` into input partition 0, at consecutive offsets."""
    partition = state.login(0)
    start = partition.replayed_until + 1
    state.count(partition, [(start + i, event, device_type) for i, (event, device_type) in enumerate(logins)])


def test_summary_views_all_add_up_to_the_processed_events() -> None:
    state = LocalState()
    count(state, [login("NY", T0), login("TX", T0 + 3600), login("RU", T0 + 3600),
                  login("tx", T0 - 86400, "android")])
    totals = Totals(consumed=7, processed=4, filtered=2, dead_lettered=1,
                    reasons=Counter({"not_mobile": 2, "invalid_json": 1}),
                    risk_levels=Counter({"low": 3, "medium": 1}))
    summary = build_summary(state.counts(), totals, instance="g/h/1", group_id="g", input_topic="in",
                            started_at=T0, now=T0 + 5)
    assert summary["totals"] == {"consumed": 7, "processed": 4, "filtered": 2, "dead_lettered": 1,
                                 "resent": 0}
    assert summary["filtered_by"] == {"not_mobile": 2} and summary["dead_lettered_by"] == {"invalid_json": 1}
    assert summary["by_region"] == {"Northeast": 1, "Midwest": 0, "South": 2, "West": 0, "Other": 1}
    assert summary["by_hour_of_day"][23] == 2 and summary["by_hour_of_day"][0] == 2
    assert summary["by_day_of_week"]["Sunday"] == 1 and summary["by_day_of_week"]["Monday"] == 2
    assert summary["by_day_of_week"]["Saturday"] == 1
    assert summary["by_date"] == {"2026-11-21": 1, "2026-11-22": 1, "2026-11-23": 2}
    assert summary["by_hour"] == {"2026-11-21T23:00Z": 1, "2026-11-22T23:00Z": 1, "2026-11-23T00:00Z": 2}
    assert summary["risk_levels"] == {"low": 3, "medium": 1, "high": 0}
    assert list(summary["by_device_type"]) == ["ios", "android"]  # largest first
    assert summary["updated_at"] == "2026-11-22T23:30:05Z" and summary["final"] is False


def test_capped_labels_count_as_other_everywhere() -> None:
    state = LocalState()
    state.login(0).by_epoch_hour.max_labels = 1
    count(state, [login("NY", T0), login("NY", T0 + 7200)])
    counts = state.counts()
    assert counts["by_epoch_hour"][OTHER] == 1
    summary = build_summary(counts, Totals(processed=2), instance="i", group_id="g", input_topic="in",
                            started_at=T0, now=T0)
    assert sum(summary["by_hour_of_day"]) == 1  # OTHER has no hour: counted only in the totals


# Partition records: the group's figures, exactly, from the newest record of each partition.

PARTITIONS = 4
SECRET = Privacy(b"0123456789abcdef0123456789abcdef")


def generated_records(n: int, seed: int, start: int = 0) -> list[RawRecord]:
    """Generated logins over about a week, each user's in the input partition its key picks."""
    seconds = itertools.count(start)
    events = EventGenerator(seed=seed, users=300, bad_ratio=0.05).generate(
        n, clock=lambda: T0 - 97 * next(seconds))
    offsets = Counter()
    records = []
    for g in events:
        partition = zlib.crc32(g.key) % PARTITIONS
        records.append(RawRecord("in", partition, start + offsets[partition], T0 * 1000, g.key, g.value))
        offsets[partition] += 1
    return records


def processed(records: list[RawRecord], state: LocalState | None = None) -> LocalState:
    state = state or LocalState()
    topology = Topology(Routes("out", "dlq", partitions=PARTITIONS))
    process_batch(records, state, topology, T0 + 60)
    return state


def partition_records(state: LocalState, now: float, privacy: Privacy | None = None) -> list[dict]:
    """Every partition's record, as the publisher writes them and a reader loads them."""
    stores = [*(("in", p, s) for p, s in state.logins.items()),
              *(("rep", p, s) for p, s in state.devices.items())]
    return [orjson.loads(orjson.dumps(partition_record(
        partition_figures(copy_state(store), privacy), group_id="g", topic=topic, partition=p,
        instance="g/h/1", now=now))) for topic, p, store in stores]


def state_part(summary: dict) -> dict:
    """A summary's state figures, top lists as their counts (ties may list other names)."""
    figures = {key: summary[key] for key in state_figures(LocalState().counts())}
    for key, count in (("top_multi_ip_users", "distinct_ips"), ("top_shared_devices", "users")):
        figures[key] = [entry[count] for entry in figures[key]]
    return figures


def test_partition_records_add_up_to_the_process_summary_that_owns_them_all() -> None:
    state = processed(generated_records(6000, seed=5))
    assert len(state.logins) == len(state.devices) == PARTITIONS
    records = partition_records(state, now=T0 + 5, privacy=SECRET)
    assert all(r["schema"] == PARTITION_SCHEMA_ID and r["updated_epoch_s"] == T0 + 5 for r in records)
    assert {r["kind"] for r in records if r["topic"] == "in"} == {LOGINS}
    assert {r["kind"] for r in records if r["topic"] == "rep"} == {DEVICES}
    summary = build_summary(state.counts(), Totals(), instance="g/h/1", group_id="g", input_topic="in",
                            started_at=T0, now=T0 + 5, privacy=SECRET)
    group = add_up(records)
    assert state_part(group) == state_part(summary)
    assert group["aggregated_events"] == sum(group["by_device_type"].values()) > 5000
    assert group["shared_devices"] > 0 and group["multi_ip_users"] > 0 and len(group["by_date"]) > 3
    listed = {e["device_id"]: e["users"] for e in group["top_shared_devices"]}
    known = {SECRET.device_token(d): n for s in state.devices.values()
             for d, n in s.top_shared_devices.counts.items()}
    assert listed and all(known[token] == n for token, n in listed.items())  # tokens, not device ids


def test_a_device_seen_from_several_input_partitions_lives_in_one_repartition_partition() -> None:
    users = [f"user-{i}" for i in range(40)]  # spread over every input partition
    logins = [orjson.dumps({"user_id": u, "app_version": "2.3.0", "device_type": "ios", "ip": "1.1.1.1",
                            "locale": "NY", "device_id": "kiosk", "timestamp": str(T0)}) for u in users]
    records = [RawRecord("in", zlib.crc32(u.encode()) % PARTITIONS, i, T0 * 1000, u.encode(), v)
               for i, (u, v) in enumerate(zip(users, logins, strict=True))]
    state = processed(records)
    assert len({r.partition for r in records}) == PARTITIONS
    group = add_up(partition_records(state, now=T0))
    assert group["shared_devices"] == group["tracked_devices"] == 1
    assert group["top_shared_devices"] == [{"device_id": "kiosk", "users": 40}]
    assert group["tracked_users"] == 40 and group["multi_ip_users"] == 0


def test_hours_since_the_epoch_travel_as_text_and_other_stays_other() -> None:
    state = LocalState()
    state.login(0).by_epoch_hour.max_labels = 1
    count(state, [login("NY", T0), login("NY", T0 + 7200), login("NY", T0 + 7200)])
    [record] = partition_records(state, now=T0)
    assert record["by_epoch_hour"] == {str(int(T0) // 3600): 1, OTHER: 2}
    group = add_up([record])
    assert sum(group["by_hour_of_day"]) == 1 and group["aggregated_events"] == 3
