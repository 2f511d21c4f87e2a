"""What the dashboard shows, from the records it has read: pure, so it is tested without a
browser or a broker. ``Feed`` (feed.py) fills a ``Board``; the page (app.py) draws a ``View``.

Which records count: the summary topic holds the latest snapshot of every pipeline instance (a
process) that ever ran, and the latest record of every partition's state (``observe/summary.py``).

* The accounting (totals, filter and dead-letter reasons, risk levels, metrics) is per process:
  while some instance of the group runs, the page adds up the running ones; once none runs, the
  ones that stopped last (within ``SAME_RUN_S`` of the last).
* The state (logins by device type, version, locale and time, multi-IP users, shared devices,
  the tracked keys, the top lists) is per partition, and partitions move between processes: the
  page adds up the newest record of each partition of the group's input topic (the one its
  chosen instances read) and of its repartition topic, whichever process published it. Every
  user lives in one input partition and every device in one repartition partition, so each is
  counted once, and a partition's counts never twice. With every group shown, the same per group.
  Snapshots of a pipeline that publishes no partition records (older versions) are added up as
  before instead.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from loginpipe.core.enrich import DAYS
from loginpipe.core.regions import REGIONS
from loginpipe.observe.summary import COUNTS, DEVICES, FIGURES, LOGINS, PARTITION_SCHEMA_ID, add_up
from loginpipe.topics import InternalTopics

METRICS_KEPT = 720  # per instance: an hour at the pipeline's default 5 s
INSTANCES_KEPT = 100  # pipeline processes remembered (a restart is a new one)
PARTITIONS_KEPT = 10_000  # partition records remembered, over every group
RECENT_KEPT = 20
SAME_RUN_S = 60.0
STALE_AFTER_S = 30.0  # a running instance silent this long is left out (killed, not stopped)
WAITING, LIVE, DISCONNECTED = "waiting for the pipeline", "live", "disconnected"
UNKNOWN = "–"  # a figure the page does not know: never shown as 0, which would be a claim

_SUMMED_DICTS = ("totals", "filtered_by", "dead_lettered_by", "risk_levels", "by_device_type",
                 "by_app_version", "by_locale", "by_region", "by_day_of_week", "by_date", "by_hour")
_SUMMED_NUMBERS = ("multi_ip_users", "shared_devices", "tracked_users", "tracked_devices")
_TOP_ENTRIES = {"top_multi_ip_users": ("user_id", "distinct_ips"),
                "top_shared_devices": ("device_id", "users")}


@dataclass
class Board:
    """Everything read so far, as the feed's thread keeps it (one writer; readers copy)."""

    summaries: dict[str, dict] = field(default_factory=dict)  # instance -> latest snapshot
    # (group, topic, partition) -> its newest state record
    partitions: dict[tuple[str, str, int], dict] = field(default_factory=dict)
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

    def add_partition(self, record: dict) -> None:
        if not well_formed(record):
            return
        key = (record["group_id"], record["topic"], record["partition"])
        known = self.partitions.get(key)
        if known is None or record["updated_epoch_s"] >= known["updated_epoch_s"]:
            self.partitions[key] = record
        if len(self.partitions) > PARTITIONS_KEPT:
            by_time = sorted(self.partitions, key=lambda k: self.partitions[k]["updated_epoch_s"])
            for old in by_time[:-PARTITIONS_KEPT]:
                del self.partitions[old]

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


def well_formed(record: dict) -> bool:
    """A partition record of ours, with the types ``add_up`` relies on: a foreign or corrupt
    record must not break the page."""
    return (record.get("schema") == PARTITION_SCHEMA_ID and record.get("kind") in (LOGINS, DEVICES)
            and type(record.get("group_id")) is str and type(record.get("topic")) is str
            and type(record.get("partition")) is int
            and type(record.get("updated_epoch_s")) in (int, float)
            and all(type(record.get(name, 0)) is int for name in FIGURES)
            and all(_counts(record.get(name, {})) for name in COUNTS)
            and all(_entries(record.get(name, []), *fields) for name, fields in _TOP_ENTRIES.items()))


def _counts(counts) -> bool:
    return type(counts) is dict and all(type(n) is int for n in counts.values())


def _entries(entries, name: str, count: str) -> bool:
    return type(entries) is list and all(
        type(e) is dict and type(e.get(name)) is str and type(e.get(count)) is int for e in entries)


@dataclass
class View:
    status: str
    summary: dict | None  # the chosen snapshots added up; None before any
    instances: list[str]
    partitions: int  # partition records whose state the summary adds up (0: the instances')
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


def chosen_partitions(partitions: dict[tuple[str, str, int], dict], snapshots: list[dict]) -> list[dict]:
    """The newest record of each partition of the chosen snapshots' groups: of the input topics
    those snapshots read and of the group's repartition topic."""
    topics: dict[str, set[str]] = {}
    for snapshot in snapshots:
        group = snapshot.get("group_id")
        if type(group) is str:
            topics.setdefault(group, {InternalTopics.of(group).repartition}).add(snapshot.get("input_topic"))
    return [record for (group, topic, _), record in sorted(partitions.items())
            if topic in topics.get(group, ())]


def with_partition_state(summary: dict, snapshots: list[dict],
                         partitions: dict[tuple[str, str, int], dict]) -> tuple[dict, int]:
    """``summary`` with its state figures from the partition records, when every snapshot comes
    from a pipeline that publishes them (it lists ``partitions``); and how many records counted."""
    if not all("partitions" in s for s in snapshots):
        return summary, 0
    records = chosen_partitions(partitions, snapshots)
    return {**summary, **add_up(records)}, len(records)


def make_view(board: Board, group_id: str | None, now: float | None = None) -> View:
    now = time.time() if now is None else now
    instances = chosen_instances(board.summaries, group_id, now)
    snapshots = [board.summaries[i] for i in instances]
    summary, partitions = combine(snapshots) if snapshots else None, 0
    if summary is not None:
        summary, partitions = with_partition_state(summary, snapshots, board.partitions)
    metrics = sorted((m for i in instances for m in board.metrics.get(i, ())),
                     key=lambda m: m.get("epoch_s", 0))
    if not board.connected:
        status = DISCONNECTED
    elif summary is None:
        status = WAITING
    else:
        status = LIVE
    return View(status, summary, instances, partitions, metrics, list(board.recent), board.error)


# The figures across the top of the page: (label, where in the summary's totals or the newest
# metrics record, format).
COUNT_TILES = (("consumed", "consumed"), ("processed", "processed"), ("filtered", "filtered"),
               ("dead-lettered", "dead_lettered"))
RATE_TILES = (("messages/s", "messages_per_second", ",.0f"), ("e2e p99 ms", "end_to_end_ms_p99", ",.0f"),
              ("consumer lag", "consumer_lag", ","))


def figure(value: object, spec: str = ",") -> str:
    """A number as the page shows it; ``UNKNOWN`` for anything else (missing, or not a number)."""
    if type(value) not in (int, float):
        return UNKNOWN
    return format(value, spec)


def headline(view: View) -> list[tuple[str, str]]:
    """The top row, (label, text): the counts from the summary (the last ones read, while
    disconnected too: the header says so), ``UNKNOWN`` before any; the rates only while live,
    from the newest metrics record (what was read before a disconnection is not the rate now)."""
    totals = (view.summary or {}).get("totals") or {}
    row = [(label, figure(totals.get(key))) for label, key in COUNT_TILES]
    last = view.metrics[-1] if view.metrics and view.status == LIVE else {}
    row += [(label, figure(last.get(key), spec)) for label, key, spec in RATE_TILES]
    return row
