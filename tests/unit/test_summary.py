"""The summary snapshot built from the aggregations and the totals."""

from __future__ import annotations

import calendar
from collections import Counter
from types import SimpleNamespace

from loginpipe.core.state import OTHER, Aggregates
from loginpipe.observe.stats import Totals
from loginpipe.observe.summary import build_summary

T0 = calendar.timegm((2026, 11, 22, 23, 30, 0))  # a Sunday


def login(locale: str, epoch_s: float, device_type: str = "ios"):
    event = SimpleNamespace(app_version="2.3.0", locale=locale, user_id=f"u-{epoch_s}", ip="1.1.1.1",
                            device_id="d", epoch_s=epoch_s)
    return event, device_type


def test_summary_views_all_add_up_to_the_processed_events() -> None:
    state = Aggregates()
    state.apply([login("NY", T0), login("TX", T0 + 3600), login("RU", T0 + 3600),
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
    state = Aggregates()
    state.by_epoch_hour.max_labels = 1
    state.apply([login("NY", T0), login("NY", T0 + 7200)])
    counts = state.counts()
    assert counts["by_epoch_hour"][OTHER] == 1
    summary = build_summary(counts, Totals(processed=2), instance="i", group_id="g", input_topic="in",
                            started_at=T0, now=T0)
    assert sum(summary["by_hour_of_day"]) == 1  # OTHER has no hour: counted only in the totals
