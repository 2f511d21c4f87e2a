"""What the dashboard shows, from the records it has read: pure, so it is tested without a
browser or a broker. ``Feed`` (feed.py) fills a ``Board``; the page (app.py) draws a ``View``.

Which snapshots count: the summary topic holds the latest snapshot of every pipeline instance
(a process) that ever ran. While some instance of the group runs, the page adds up the running
ones; once none runs, it shows the ones that stopped last (within ``SAME_RUN_S`` of the last).
The aggregations are per process and the input is keyed by user, so users are counted exactly
across processes; a device used by users on different processes is counted by each.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from loginpipe.core.enrich import DAYS
from loginpipe.core.regions import REGIONS

METRICS_KEPT = 720  # per instance: an hour at the pipeline's default 5 s
INSTANCES_KEPT = 100  # pipeline processes remembered (a restart is a new one)
RECENT_KEPT = 20
SAME_RUN_S = 60.0
STALE_AFTER_S = 30.0  # a running instance silent this long is left out (killed, not stopped)
WAITING, LIVE, DISCONNECTED = "waiting for the pipeline", "live", "disconnected"

_SUMMED_DICTS = ("totals", "filtered_by", "dead_lettered_by", "risk_levels", "by_device_type",
                 "by_app_version", "by_locale", "by_region", "by_day_of_week", "by_date", "by_hour")
_SUMMED_NUMBERS = ("multi_ip_users", "shared_devices", "tracked_users", "tracked_devices")


@dataclass
class Board:
    """Everything read so far, as the feed's thread keeps it (one writer; readers copy)."""

    summaries: dict[str, dict] = field(default_factory=dict)  # instance -> latest snapshot
    metrics: dict[str, deque] = field(default_factory=dict)  # instance -> recent metrics
    recent: list[dict] = field(default_factory=list)  # the newest processed records
    connected: bool = False
    error: str = ""
    checked_at: float = 0.0  # wall time of the last reachability check

    def add_summary(self, snapshot: dict) -> None:
        instance, updated = snapshot.get("instance"), snapshot.get("updated_epoch_s")
        if type(instance) is not str or type(updated) not in (int, float):
            return  # not a snapshot of ours
        known = self.summaries.get(instance)
        if known is None or updated >= known["updated_epoch_s"]:
            self.summaries[instance] = snapshot
        if len(self.summaries) > INSTANCES_KEPT:
            self._forget_oldest()

    def add_metrics(self, record: dict) -> None:
        instance = record.get("instance")
        if type(instance) is not str or type(record.get("epoch_s")) not in (int, float):
            return
        history = self.metrics.setdefault(instance, deque(maxlen=METRICS_KEPT))
        if history and record["epoch_s"] <= history[-1]["epoch_s"]:
            return  # read again after a reconnect
        history.append(record)
        if len(self.metrics) > INSTANCES_KEPT:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Every restart of a pipeline is a new instance: keep the newest INSTANCES_KEPT."""
        newest = sorted(self.summaries, key=lambda i: self.summaries[i]["updated_epoch_s"])
        for instance in newest[:-INSTANCES_KEPT]:
            del self.summaries[instance]
        by_time = sorted(self.metrics, key=lambda i: self.metrics[i][-1]["epoch_s"])
        for instance in by_time[:-INSTANCES_KEPT]:
            del self.metrics[instance]


@dataclass
class View:
    status: str
    summary: dict | None  # the chosen snapshots added up; None before any
    instances: list[str]
    metrics: list[dict]  # time-ordered, every chosen instance's
    recent: list[dict]
    error: str = ""


def chosen_instances(summaries: dict[str, dict], group_id: str | None, now: float) -> list[str]:
    """The instances whose snapshots the page adds up (see the module's docstring)."""
    mine = {i: s for i, s in summaries.items() if group_id is None or s.get("group_id") == group_id}
    running = [i for i, s in mine.items()
               if not s.get("final") and now - s.get("updated_epoch_s", 0) <= STALE_AFTER_S]
    if running:
        return sorted(running)
    if not mine:
        return []
    last = max(s.get("updated_epoch_s", 0) for s in mine.values())
    return sorted(i for i, s in mine.items() if last - s.get("updated_epoch_s", 0) <= SAME_RUN_S)


def combine(snapshots: list[dict]) -> dict:
    """Several instances' snapshots as one: counts added up, top lists merged."""
    if len(snapshots) == 1:
        return snapshots[0]
    total: dict = {key: Counter() for key in _SUMMED_DICTS}
    for snapshot in snapshots:
        for key in _SUMMED_DICTS:
            total[key].update(snapshot.get(key, {}))
    combined = {key: dict(counter.most_common()) for key, counter in total.items()}
    combined["by_region"] = {region: total["by_region"][region] for region in REGIONS}
    combined["by_day_of_week"] = {day: total["by_day_of_week"][day] for day in DAYS}
    combined["by_date"] = dict(sorted(total["by_date"].items()))
    combined["by_hour"] = dict(sorted(total["by_hour"].items()))
    combined["by_hour_of_day"] = [sum(s.get("by_hour_of_day", [0] * 24)[h] for s in snapshots)
                                  for h in range(24)]
    for key in _SUMMED_NUMBERS:
        combined[key] = sum(s.get(key, 0) for s in snapshots)
    for key, count in (("top_multi_ip_users", "distinct_ips"), ("top_shared_devices", "users")):
        merged = [entry for s in snapshots for entry in s.get(key, [])]
        combined[key] = sorted(merged, key=lambda e: -e[count])[:10]
    combined["updated_at"] = max(s.get("updated_at", "") for s in snapshots)
    combined["final"] = all(s.get("final") for s in snapshots)
    return combined


def make_view(board: Board, group_id: str | None, now: float | None = None) -> View:
    now = time.time() if now is None else now
    instances = chosen_instances(board.summaries, group_id, now)
    summary = combine([board.summaries[i] for i in instances]) if instances else None
    metrics = sorted((m for i in instances for m in board.metrics.get(i, ())),
                     key=lambda m: m.get("epoch_s", 0))
    if not board.connected:
        status = DISCONNECTED
    elif summary is None:
        status = WAITING
    else:
        status = LIVE
    return View(status, summary, instances, metrics, list(board.recent), board.error)
