"""What the dashboard shows: which instances' snapshots count, and how they add up."""

from __future__ import annotations

from loginpipe.core.regions import US_STATES
from loginpipe.dashboard.tiles import STATE_TILES
from loginpipe.dashboard.view import DISCONNECTED, LIVE, WAITING, Board, chosen_instances, make_view

NOW = 1_800_000_000.0


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
