"""Publishing the summary and metrics topics, from the main thread on their own schedule, never
from a worker's poll loop. Each record is keyed by the pipeline instance, so a reader of the
compacted summary topic keeps the latest snapshot of each instance.

Snapshots are not part of the checkpoint (they describe the stream; they are not its output),
but none is lost to a failed delivery: each waits in ``_pending`` until acknowledged and is sent
again, through the replacement producer when the old one failed. A newer summary supersedes an
unacknowledged older one (the compacted topic would keep only the newest anyway); metrics queue
up to ``MAX_PENDING_SNAPSHOTS``, and while that many wait no new one is taken (a gap, said in a
warning, rather than a growing queue).
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
from loginpipe.core.state import Aggregates
from loginpipe.observe.stats import Stats
from loginpipe.observe.summary import build_summary, iso
from loginpipe.runtime.delivery import NotQueued, Sender

MAX_PENDING_SNAPSHOTS = 720  # an hour of metrics every 5 s


@dataclass
class _Snapshot:
    kind: str
    topic: str
    value: bytes
    future: object = None
    generation: int = -1


def instance_id(group_id: str) -> str:
    """This process in its group: "user-login-group/host/1234"."""
    return f"{group_id}/{socket.gethostname()}/{os.getpid()}"


class Publisher:
    def __init__(self, config: PipelineConfig, state: Aggregates, stats: Stats, sender: Sender,
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
        self.published = {"summary": 0, "metrics": 0}

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
        counts = self.state.counts()
        value = build_summary(counts, totals, instance=self.instance, group_id=config.group_id,
                              input_topic=config.input_topic, started_at=self.started_at,
                              now=self.wall_clock(), final=final, privacy=config.privacy)
        self._send(config.summary_topic, value, "summary")
        self._summary_at, self._summary_processed = self.clock(), totals.processed

    def publish_metrics(self) -> None:
        config = self.config
        if not config.metrics_topic:
            return
        now = self.wall_clock()
        value = {"schema": "pipeline-metrics/v1", "instance": self.instance, "group_id": config.group_id,
                 "time": iso(now), "epoch_s": round(now, 3), **self.stats.metrics()}
        self._send(config.metrics_topic, value, "metrics")
        self._metrics_at = self.clock()

    @property
    def pending(self) -> int:
        """Snapshots sent and not yet acknowledged."""
        return len(self._pending)

    def settle(self) -> None:
        """Drop acknowledged snapshots; send again those that failed or a replaced producer holds."""
        keep = []
        for snap in self._pending:
            future = snap.future
            if future.succeeded():
                continue
            if future.failed():
                if not isinstance(future.exception, NotQueued):
                    self.sender.replace(snap.generation, f"{snap.kind} snapshot: {future.exception!r}")
                self._put(snap)
            elif snap.generation != self.sender.generation:
                self._put(snap)
            keep.append(snap)
        self._pending = keep

    def flush(self, deadline: float) -> None:
        """Wait until ``deadline`` (clock time) for every snapshot to be acknowledged."""
        self.settle()
        while self._pending and self.clock() < deadline:
            self.sender.flush(timeout_s=max(0.05, min(1.0, deadline - self.clock())))
            self.settle()

    def _send(self, topic: str, value: dict, kind: str) -> None:
        if kind == "summary":  # the newest summary supersedes one still waiting
            self._pending = [s for s in self._pending if s.kind != "summary"]
        elif sum(s.kind == kind for s in self._pending) >= MAX_PENDING_SNAPSHOTS:
            self.warn(f"{kind} snapshot not taken: {MAX_PENDING_SNAPSHOTS} earlier ones wait for the broker")
            return
        snap = _Snapshot(kind, topic, orjson.dumps(value))
        self._put(snap)
        self._pending.append(snap)
        self.published[kind] += 1

    def _put(self, snap: _Snapshot) -> None:
        """Hand a snapshot to the current producer (a refusal to queue fails its future: retried)."""
        snap.generation = self.sender.generation
        record = OutputRecord(snap.topic, self._key, snap.value)
        snap.future = self.sender.send_all([record])[0]
