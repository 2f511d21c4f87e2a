"""Publishing the summary and metrics topics, from the main thread on their own schedule, never
from a worker's poll loop. A summary is one instance snapshot, keyed by the pipeline instance,
and one record per partition this process serves whose state changed since it last published
it (all of them in the final summary), keyed by the partition (``summary.py`` says why both):
a reader of the compacted topic keeps the latest of each.

Snapshots are not part of the checkpoint (they describe the stream; they are not its output),
but none is lost to a failed delivery: each waits in ``_pending`` until acknowledged and is sent
again, through the replacement producer when the old one failed. A newer summary or partition
record supersedes an unacknowledged older one of the same key (the compacted topic would keep
only the newest anyway), and a partition record is not sent again once the partition has left
this process: its new owner publishes it, restored from the changelog, so at least as new.
Metrics queue up to ``MAX_PENDING_SNAPSHOTS``, and while that many wait no new one is taken (a
gap, said in a warning, rather than a growing queue).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from loginpipe.config import PipelineConfig
from loginpipe.core.records import OutputRecord
from loginpipe.kafka.base import TopicPartition
from loginpipe.observe.stats import Stats
from loginpipe.observe.summary import (
    build_summary,
    copy_state,
    iso,
    partition_figures,
    partition_key,
    partition_record,
)
from loginpipe.runtime.delivery import NotQueued, Sender
from loginpipe.runtime.shared import SharedState

MAX_PENDING_SNAPSHOTS = 720  # an hour of metrics every 5 s
# An unchanged partition's record is published again this often: the summary topic also deletes
# by age (7 days), which would otherwise take an idle partition's only record.
REPUBLISH_S = 3600.0
LATEST_ONLY = ("summary", "partition")  # kinds whose newest record supersedes a waiting one


@dataclass
class _Snapshot:
    kind: str
    topic: str
    key: bytes
    value: bytes
    tp: TopicPartition | None = None  # a partition record's partition
    future: object = None
    generation: int = -1


def instance_id(group_id: str) -> str:
    """This process in its group: "user-login-group/host/1234"."""
    return f"{group_id}/{socket.gethostname()}/{os.getpid()}"


class Publisher:
    def __init__(self, config: PipelineConfig, state: SharedState, stats: Stats, sender: Sender,
                 warn: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state = state
        self.stats = stats
        self.sender = sender
        self._pending: list[_Snapshot] = []
        self.warn = warn
        self.clock = clock
        self.wall_clock = wall_clock
        self.instance = instance_id(config.group_id)
        self._key = self.instance.encode()
        self.started_at = wall_clock()
        now = clock()
        self._summary_at, self._metrics_at = now, now
        self._summary_processed = 0
        # Per partition served: (hash of the figures last published, clock time then).
        self._partitions_sent: dict[TopicPartition, tuple[int, float]] = {}
        self.published = {"summary": 0, "partition": 0, "metrics": 0}

    def tick(self) -> None:
        """Settle earlier snapshots, then publish whatever is due."""
        self.settle()
        config, now = self.config, self.clock()
        if config.summary_topic:
            processed = self.stats.totals.processed  # an int read: no lock needed to decide
            if (now - self._summary_at >= config.summary_interval_s
                    or processed - self._summary_processed >= config.summary_every):
                self.publish_summary()
        if config.metrics_topic and now - self._metrics_at >= config.metrics_interval_s:
            self.publish_metrics()

    def publish_summary(self, final: bool = False) -> None:
        config = self.config
        if not config.summary_topic:
            return
        totals = self.stats.totals_copy()  # before the counts: counts are never behind the totals
        # The partitions first: the instance snapshot, final or not, stays a run's last record.
        served = self._publish_partitions(final)
        counts = self.state.counts()
        value = build_summary(counts, totals, instance=self.instance, group_id=config.group_id,
                              input_topic=config.input_topic, started_at=self.started_at,
                              now=self.wall_clock(), final=final, privacy=config.privacy,
                              partitions=served)
        self._send(config.summary_topic, self._key, value, "summary")
        self._put_waiting()
        self._summary_at, self._summary_processed = self.clock(), totals.processed

    def _publish_partitions(self, final: bool) -> dict[str, list[int]]:
        """A record for each partition served whose figures changed since this process last
        published them, or that it has not published for ``REPUBLISH_S`` (every one when
        ``final``). Returns the partitions served, by topic."""
        copies = self.state.read_partitions(copy_state)
        # A partition that left and comes back is published anew: another owner had it meanwhile.
        self._partitions_sent = {tp: v for tp, v in self._partitions_sent.items() if tp in copies}
        now, wall = self.clock(), self.wall_clock()
        for tp, copied in sorted(copies.items()):
            figures = partition_figures(copied, self.config.privacy)
            digest = hash(orjson.dumps(figures))
            sent = self._partitions_sent.get(tp)
            if not final and sent and sent[0] == digest and now - sent[1] < REPUBLISH_S:
                continue
            self._send_partition(tp, figures, wall)
            self._partitions_sent[tp] = (digest, now)
        served: dict[str, list[int]] = {}
        for tp in sorted(copies):
            served.setdefault(tp.topic, []).append(tp.partition)
        return served

    def _send_partition(self, tp: TopicPartition, figures: dict, wall: float) -> None:
        group = self.config.group_id
        value = partition_record(figures, group_id=group, topic=tp.topic, partition=tp.partition,
                                 instance=self.instance, now=wall)
        key = partition_key(group, tp.topic, tp.partition).encode()
        self._send(self.config.summary_topic, key, value, "partition", tp)

    def publish_metrics(self) -> None:
        config = self.config
        if not config.metrics_topic:
            return
        now = self.wall_clock()
        value = {"schema": "pipeline-metrics/v1", "instance": self.instance, "group_id": config.group_id,
                 "time": iso(now), "epoch_s": round(now, 3), **self.stats.metrics()}
        self._send(config.metrics_topic, self._key, value, "metrics")
        self._put_waiting()
        self._metrics_at = self.clock()

    @property
    def pending(self) -> int:
        """Snapshots sent and not yet acknowledged."""
        return len(self._pending)

    def settle(self) -> None:
        """Drop acknowledged snapshots; send again those that failed or a replaced producer holds,
        but for a partition that left this process (its new owner publishes a newer record, which
        a late stale one would hide once compacted)."""
        keep = []
        for snap in self._pending:
            future = snap.future
            if future is None:  # not handed over yet
                keep.append(snap)
                continue
            if future.succeeded():
                continue
            failed = future.failed()
            if failed and not isinstance(future.exception, NotQueued):
                self.sender.replace(snap.generation, f"{snap.kind} snapshot: {future.exception!r}")
            if failed or snap.generation != self.sender.generation:
                if not self._serves(snap):
                    continue
                snap.future = None  # sent again below
            keep.append(snap)
        self._pending = keep
        self._put_waiting()

    def _serves(self, snap: _Snapshot) -> bool:
        state = self.state  # dict membership: no lock needed
        return snap.tp is None or snap.tp in state.logins or snap.tp in state.devices

    def flush(self, deadline: float) -> None:
        """Wait until ``deadline`` (clock time) for every snapshot to be acknowledged."""
        self.settle()
        while self._pending and self.clock() < deadline:
            self.sender.flush(timeout_s=max(0.05, min(1.0, deadline - self.clock())))
            self.settle()

    def _send(self, topic: str, key: bytes, value: dict, kind: str,
              tp: TopicPartition | None = None) -> None:
        if kind in LATEST_ONLY:  # the newest of a key supersedes one still waiting
            self._pending = [s for s in self._pending if s.key != key or s.kind != kind]
        elif sum(s.kind == kind for s in self._pending) >= MAX_PENDING_SNAPSHOTS:
            self.warn(f"{kind} snapshot not taken: {MAX_PENDING_SNAPSHOTS} earlier ones wait for the broker")
            return
        self._pending.append(_Snapshot(kind, topic, key, orjson.dumps(value), tp))
        self.published[kind] += 1

    def _put_waiting(self) -> None:
        """Hand every snapshot not yet handed over to the current producer, in one call: while the
        broker is away the first one waits for metadata (up to 5 s) and the rest fail at once, so
        this main-thread step never blocks longer than that (a refusal to queue is retried)."""
        waiting = [snap for snap in self._pending if snap.future is None]
        if not waiting:
            return
        generation = self.sender.generation
        futures = self.sender.send_all([OutputRecord(s.topic, s.key, s.value) for s in waiting])
        for snap, future in zip(waiting, futures, strict=True):
            snap.generation, snap.future = generation, future
