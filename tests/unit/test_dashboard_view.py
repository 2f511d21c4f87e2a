"""What the dashboard shows: which instances' snapshots and which partition records count, and
how they add up."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from loginpipe.core.regions import US_STATES
from loginpipe.dashboard import view as view_module
from loginpipe.dashboard.tiles import STATE_TILES
from loginpipe.dashboard.view import (
    DISCONNECTED,
    LIVE,
    UNKNOWN,
    WAITING,
    Board,
    chosen_instances,
    figure,
    headline,
    make_view,
)
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
)
from loginpipe.state.stores import DeviceState, LoginState, ProcessTotals
from loginpipe.state.view import detailed_counts
from loginpipe.topics import InternalTopics

NOW = 1_800_000_000.0
REP = InternalTopics.of("g").repartition


def snapshot(instance: str, updated: float, final: bool = False, group: str = "g", processed: int = 10,
             **extra) -> dict:
    return {"instance": instance, "group_id": group, "updated_epoch_s": updated, "final": final,
            "updated_at": f"t{updated}", "totals": {"consumed": processed + 2, "processed": processed,
                                                    "filtered": 1, "dead_lettered": 1},
            "by_device_type": {"ios": processed}, "by_hour_of_day": [processed] + [0] * 23,
            "multi_ip_users": 1, "top_multi_ip_users": [{"user_id": instance, "distinct_ips": processed}],
            **extra}


def test_running_instances_are_added_up() -> None:
    board = Board(connected=True)
    board.add_summary(snapshot("a", NOW - 1, processed=10))
    board.add_summary(snapshot("b", NOW - 2, processed=5))
    board.add_summary(snapshot("old", NOW - 3600, final=True, processed=99))
    view = make_view(board, "g", NOW)
    assert view.status == LIVE and view.instances == ["a", "b"]
    assert view.summary["totals"] == {"consumed": 19, "processed": 15, "filtered": 2, "dead_lettered": 2}
    assert view.summary["by_hour_of_day"][0] == 15 and view.summary["multi_ip_users"] == 2
    assert [e["user_id"] for e in view.summary["top_multi_ip_users"]] == ["a", "b"]


def test_when_nothing_runs_the_last_stopped_run_is_shown() -> None:
    summaries = {"a": snapshot("a", NOW - 100, final=True), "b": snapshot("b", NOW - 130, final=True),
                 "old": snapshot("old", NOW - 5000, final=True),
                 "killed": snapshot("killed", NOW - 4000)}  # never said final: stale, left out
    assert chosen_instances(summaries, "g", NOW) == ["a", "b"]
    assert chosen_instances(summaries, "other-group", NOW) == []
    assert chosen_instances(summaries, None, NOW) == ["a", "b"]


def test_an_older_snapshot_never_replaces_a_newer_one() -> None:
    board = Board()
    board.add_summary(snapshot("a", NOW, processed=7))
    board.add_summary(snapshot("a", NOW - 5, processed=3))
    assert board.summaries["a"]["totals"]["processed"] == 7


def test_status() -> None:
    assert make_view(Board(connected=False), None, NOW).status == DISCONNECTED
    assert make_view(Board(connected=True), None, NOW).status == WAITING
    board = Board(connected=False)
    board.add_summary(snapshot("a", NOW))
    view = make_view(board, None, NOW)
    assert view.status == DISCONNECTED and view.summary["totals"]["processed"] == 10  # last known figures


def test_metrics_of_the_chosen_instances_in_time_order() -> None:
    board = Board(connected=True)
    board.add_summary(snapshot("a", NOW))
    board.add_summary(snapshot("b", NOW))
    for instance, t in (("a", 1), ("a", 3), ("b", 2), ("b", 4)):
        board.add_metrics({"instance": instance, "epoch_s": NOW + t, "messages_per_second": t})
    board.add_metrics({"instance": "gone", "epoch_s": NOW, "messages_per_second": 99})
    assert [m["messages_per_second"] for m in make_view(board, None, NOW).metrics] == [1, 2, 3, 4]


def test_every_state_has_one_tile() -> None:
    assert set(STATE_TILES) == set(US_STATES)
    assert len(set(STATE_TILES.values())) == len(STATE_TILES)


def test_foreign_records_are_ignored_and_instances_are_bounded() -> None:
    from loginpipe.dashboard.view import INSTANCES_KEPT

    board = Board()
    board.add_summary({"instance": ["not", "hashable"], "updated_epoch_s": 1})
    board.add_summary({"instance": "x", "updated_epoch_s": "yesterday"})
    board.add_metrics({"instance": "x"})
    assert board.summaries == {} and board.metrics == {}
    for i in range(INSTANCES_KEPT + 20):
        board.add_summary(snapshot(f"run-{i}", NOW + i))
        board.add_metrics({"instance": f"run-{i}", "epoch_s": NOW + i})
    assert len(board.summaries) == INSTANCES_KEPT and "run-0" not in board.summaries
    assert len(board.metrics) == INSTANCES_KEPT and f"run-{INSTANCES_KEPT + 19}" in board.metrics


def test_metrics_read_again_after_a_reconnect_are_not_repeated() -> None:
    board = Board()
    for t in (1, 2, 3, 2, 3, 4):
        board.add_metrics({"instance": "a", "epoch_s": NOW + t})
    assert [m["epoch_s"] - NOW for m in board.metrics["a"]] == [1, 2, 3, 4]


# The state panels: the newest record of each partition, whichever instance published it.

def partition(topic: str, number: int, updated: float, group: str = "g", **figures) -> dict:
    kind = DEVICES if topic.endswith("-repartition") else LOGINS
    return {"schema": PARTITION_SCHEMA_ID, "kind": kind, "group_id": group, "topic": topic,
            "partition": number, "published_by": "someone", "updated_epoch_s": updated, **figures}


def current(instance: str, updated: float, group: str = "g", topic: str = "in", **extra) -> dict:
    """A snapshot of a pipeline that publishes partition records (it lists its partitions)."""
    return snapshot(instance, updated, group=group, input_topic=topic, partitions={topic: [0]}, **extra)


def login(user: str, ip: str, epoch_s: float, version: str = "2.3.0", device_type: str = "ios"):
    event = SimpleNamespace(app_version=version, locale="NY", user_id=user, ip=ip, epoch_s=epoch_s)
    return event, device_type


def published(state: LoginState | DeviceState, topic: str, number: int, updated: float) -> dict:
    """A store's record as the publisher writes it and the feed reads it."""
    value = partition_record(partition_figures(copy_state(state)), group_id="g", topic=topic,
                             partition=number, instance="any", now=updated)
    return orjson.loads(orjson.dumps(value))


def test_a_partition_that_moved_is_counted_once_from_its_newest_record() -> None:
    """Instance a owned input partition 0 and repartition partition 0, then b took them over from
    the changelogs and counted more; a's snapshot is still recent, so both instances run."""
    logins, devices, totals = LoginState(0), DeviceState(0), ProcessTotals()
    logins.count([(0, *login("u1", "1.1.1.1", NOW)), (1, *login("u2", "2.2.2.2", NOW, "2.4.1"))], totals)
    devices.count([(0, "kiosk", "u1"), (1, "kiosk", "u2")])
    stale = [published(logins, "in", 0, NOW - 20), published(devices, REP, 0, NOW - 20)]
    logins.count([(2, *login("u1", "3.3.3.3", NOW + 3600, device_type="android"))], totals)
    devices.count([(2, "kiosk", "u3"), (3, "phone", "u1")])
    other = LoginState(1)
    other.count([(0, *login("u9", "9.9.9.9", NOW))], totals)
    board = Board(connected=True)
    for record in [published(logins, "in", 0, NOW - 2), published(devices, REP, 0, NOW - 2),
                   published(other, "in", 1, NOW - 2), *stale]:  # the stale ones arrive last
        board.add_partition(record)
    board.add_summary(current("a", NOW - 20, processed=2, by_device_type={"ios": 2}))
    board.add_summary(current("b", NOW - 1, processed=2, by_device_type={"ios": 2, "android": 1}))
    view = make_view(board, "g", NOW)
    assert view.instances == ["a", "b"] and view.partitions == 3
    assert view.summary["totals"]["processed"] == 4  # the accounting still adds up instances
    s = view.summary
    assert s["by_device_type"] == {"ios": 3, "android": 1} and s["aggregated_events"] == 4
    assert s["by_app_version"] == {"2.3.0": 3, "2.4.1": 1} and s["by_date"] == {"2027-01-15": 4}
    assert (s["multi_ip_users"], s["tracked_users"]) == (1, 3)
    assert (s["shared_devices"], s["tracked_devices"]) == (1, 2)  # the kiosk, once
    assert s["top_shared_devices"] == [{"device_id": "kiosk", "users": 3}]
    assert s["top_multi_ip_users"] == [{"user_id": "u1", "distinct_ips": 2}]
    # Exactly what one process that had owned every partition all along would publish.
    whole = build_summary(detailed_counts(totals, [logins, other], [devices]), Totals(), instance="x",
                          group_id="g", input_topic="in", started_at=NOW, now=NOW)
    assert {k: s[k] for k in add_up([])} == {k: whole[k] for k in add_up([])}


def test_a_device_in_two_records_of_its_partition_counts_once() -> None:
    board = Board(connected=True)
    board.add_summary(current("b", NOW - 1))
    board.add_partition(partition(REP, 3, NOW - 2, shared_devices=1, tracked_devices=1,
                                  top_shared_devices=[{"device_id": "kiosk", "users": 3}]))
    board.add_partition(partition(REP, 3, NOW - 50, shared_devices=1, tracked_devices=1,
                                  top_shared_devices=[{"device_id": "kiosk", "users": 2}]))
    s = make_view(board, "g", NOW).summary
    assert (s["shared_devices"], s["tracked_devices"]) == (1, 1)
    assert s["top_shared_devices"] == [{"device_id": "kiosk", "users": 3}]


def test_only_the_shown_groups_input_and_repartition_topics_count() -> None:
    board = Board(connected=True)
    board.add_summary(current("g-1", NOW - 1, group="g", topic="in"))
    board.add_summary(current("h-1", NOW - 1, group="h", topic="in"))
    board.add_partition(partition("in", 0, NOW, group="g", events=1, by_device_type={"ios": 1}))
    board.add_partition(partition("old-in", 0, NOW, group="g", events=5, by_device_type={"ios": 5}))
    board.add_partition(partition(REP, 0, NOW, group="g", shared_devices=1))
    board.add_partition(partition("in", 0, NOW, group="h", events=2, by_device_type={"web": 2}))
    board.add_partition(partition(InternalTopics.of("h").repartition, 0, NOW, group="h", shared_devices=4))
    board.add_partition(partition(REP, 1, NOW, group="h", shared_devices=100))  # not h's topic
    g = make_view(board, "g", NOW)
    assert g.summary["by_device_type"] == {"ios": 1} and g.summary["shared_devices"] == 1
    every = make_view(board, None, NOW)  # every group: each group's partitions, added up
    assert every.partitions == 4
    assert every.summary["by_device_type"] == {"web": 2, "ios": 1} and every.summary["shared_devices"] == 5


def test_snapshots_of_pipelines_without_partition_records_add_up_as_before() -> None:
    board = Board(connected=True)
    board.add_summary(snapshot("old", NOW - 1, processed=4))  # lists no partitions
    board.add_summary(current("new", NOW - 1, processed=3))
    board.add_partition(partition("in", 0, NOW, events=1, by_device_type={"ios": 1}))
    view = make_view(board, "g", NOW)
    assert view.partitions == 0 and view.summary["by_device_type"] == {"ios": 7}


def test_a_stopped_run_shows_its_partitions_newest_records() -> None:
    board = Board(connected=True)
    board.add_summary(current("a", NOW - 100, final=True))
    board.add_partition(partition("in", 0, NOW - 101, events=7, by_device_type={"ios": 7}))
    view = make_view(board, "g", NOW)
    assert view.summary["final"] and view.summary["by_device_type"] == {"ios": 7}


def test_foreign_or_corrupt_partition_records_are_ignored_and_records_are_bounded(monkeypatch) -> None:
    board = Board()
    good = partition("in", 0, NOW, events=1, by_device_type={"ios": 1})
    for bad in ({**good, "partition": "0"}, {**good, "kind": "other"}, {**good, "group_id": None},
                {**good, "updated_epoch_s": "now"}, {**good, "by_locale": ["NY"]},
                {**good, "by_device_type": {"ios": "1"}}, {**good, "events": 1.5},
                {**good, "top_multi_ip_users": [{"user_id": 1, "distinct_ips": 2}]},
                {**good, "top_shared_devices": {"kiosk": 2}}, {**good, "schema": "pipeline-summary/v1"}):
        board.add_partition(bad)
    assert board.partitions == {}
    monkeypatch.setattr(view_module, "PARTITIONS_KEPT", 3)
    for number in range(5):
        board.add_partition(partition("in", number, NOW + number))
    assert sorted(p for _, _, p in board.partitions) == [2, 3, 4]


# The top row: "–" for what the page does not know, never a 0 it did not read.

def test_nothing_known_while_disconnected_is_a_dash_not_zero() -> None:
    row = dict(headline(make_view(Board(connected=False), None, NOW)))
    assert list(row) == ["consumed", "processed", "filtered", "dead-lettered", "messages/s", "e2e p99 ms",
                         "consumer lag"]
    assert set(row.values()) == {UNKNOWN}


def test_while_disconnected_the_last_counts_stay_and_the_rates_are_unknown() -> None:
    board = Board(connected=True)
    board.add_summary(snapshot("a", NOW, processed=1500))
    board.add_metrics({"instance": "a", "epoch_s": NOW, "messages_per_second": 998.6,
                       "end_to_end_ms_p99": 41.2, "consumer_lag": 0})
    live = dict(headline(make_view(board, None, NOW)))
    assert live == {"consumed": "1,502", "processed": "1,500", "filtered": "1", "dead-lettered": "1",
                    "messages/s": "999", "e2e p99 ms": "41", "consumer lag": "0"}  # a real 0 stays 0
    board.connected = False
    gone = dict(headline(make_view(board, None, NOW)))
    assert gone["processed"] == "1,500"
    assert (gone["messages/s"], gone["e2e p99 ms"], gone["consumer lag"]) == (UNKNOWN, UNKNOWN, UNKNOWN)


def test_a_figure_missing_from_a_record_is_unknown() -> None:
    board = Board(connected=True)
    board.add_summary({**snapshot("a", NOW), "totals": {"processed": 3, "filtered": "n/a"}})
    board.add_metrics({"instance": "a", "epoch_s": NOW, "messages_per_second": 5})
    row = dict(headline(make_view(board, None, NOW)))
    assert (row["processed"], row["consumed"], row["filtered"]) == ("3", UNKNOWN, UNKNOWN)
    assert (row["messages/s"], row["consumer lag"]) == ("5", UNKNOWN)
    assert figure(None) == UNKNOWN and figure(True) == UNKNOWN and figure(2.5, ".1f") == "2.5"
