"""Publishing the summary and metrics topics, from the main thread on their own schedule, never
from a worker's poll loop. Each record is keyed by the pipeline instance, so a reader of the
compacted summary topic keeps the latest snapshot of each instance.

Snapshots are best effort: a failed send is reported and the next snapshot replaces it. They
are not part of the checkpoint (they describe the stream; they are not its output).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import orjson

from loginpipe.config import PipelineConfig
from loginpipe.state import Aggregates
from loginpipe.stats import Stats
from loginpipe.summary import build_summary, iso


def instance_id(group_id: str) -> str:
    """This process in its group: "user-login-group/host/1234"."""
    return f"{group_id}/{socket.gethostname()}/{os.getpid()}"


class Publisher:
    def __init__(self, config: PipelineConfig, state: Aggregates, stats: Stats, producer,
                 warn: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state = state
        self.stats = stats
        self.producer = producer
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
        """Publish whatever is due."""
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

    def _send(self, topic: str, value: dict, kind: str) -> None:
        try:
            future = self.producer.send(topic, key=self._key, value=orjson.dumps(value))
        except Exception as exc:  # the producer's buffer is full or the broker is away
            self.warn(f"{kind} snapshot not published ({exc!r}); the next one replaces it")
            return
        future.add_errback(lambda exc: self.warn(f"{kind} snapshot not delivered ({exc!r})"))
        self.published[kind] += 1
