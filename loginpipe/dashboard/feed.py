"""The dashboard's reader: one thread that follows the summary topic (instance snapshots and
partition records) and the metrics topic and, every few seconds, samples the newest records of
the output topic. It never joins the pipeline's consumer group and reads a few records a second,
so it does not slow the pipeline down.

The broker may be away, at start or later: the thread says so (``Board.connected``) and keeps
trying; kafka-python reconnects by itself when the broker is back.

Processed records may be JSON or framed Avro (``--output-format avro``): with a schema registry
URL the Avro ones are decoded with their writer's schema; a value it cannot read (no registry,
an unknown id, bad bytes, the registry away) is skipped and counted, like bad JSON.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from dataclasses import dataclass

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from loginpipe import serde
from loginpipe.dashboard.view import METRICS_KEPT, RECENT_KEPT, Board, View, make_view
from loginpipe.kafka.settings import Connection, kafka_options
from loginpipe.observe.summary import PARTITION_SCHEMA_ID
from loginpipe.registry_client import RegistryUnavailable, SchemaRegistryClient
from loginpipe.waiting import any_reachable

POLL_MS = 500
RECENT_EVERY_S = 3.0
RETRY_S = 1.0
REGISTRY_TIMEOUT_S = 2.0  # the feed's thread waits on it between polls: keep the wait short


class TopicMissing(Exception):
    pass


@dataclass(frozen=True)
class DashboardSettings:
    bootstrap_servers: str | Connection  # a string: a PLAINTEXT cluster
    summary_topic: str
    metrics_topic: str
    output_topic: str
    group_id: str | None = None  # None: every pipeline group
    refresh_s: float = 2.0
    schema_registry_url: str | None = None  # to decode processed records written as Avro


class Feed:
    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.board = Board()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
        self._snapshots: KafkaConsumer | None = None
        self._tail: KafkaConsumer | None = None
        self._recent_at = 0.0
        self._schemas = _schema_cache(settings.schema_registry_url)
        self.unreadable = 0  # sampled processed records skipped: not JSON, or Avro not decoded

    def start(self) -> Feed:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the page shows the state instead
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def view(self) -> View:
        with self._lock:
            board = copy.deepcopy(self.board)
        return make_view(board, self.settings.group_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except TopicMissing as exc:  # the broker answers; the pipeline has not set up yet
                self._set(connected=True, error=str(exc))
                self._stop.wait(RETRY_S)
            except (KafkaError, OSError) as exc:
                self._set(connected=False, error=f"{type(exc).__name__}: {exc}"[:200])
                self._stop.wait(RETRY_S)
            except Exception as exc:  # a bug or a surprise from the client: say so, start over
                self._set(connected=False,
                          error=f"reader failed ({type(exc).__name__}: {exc}); retrying"[:200])
                self._reset()
                self._stop.wait(RETRY_S)

    def _reset(self) -> None:
        for consumer in (self._snapshots, self._tail):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
        self._snapshots = self._tail = None

    def _step(self) -> None:
        where = Connection.of(self.settings.bootstrap_servers).bootstrap_servers
        if not any_reachable(where, timeout_s=1.0):
            self._set(connected=False, error=f"no broker answers at {where}")
            self._stop.wait(RETRY_S)
            return
        if self._snapshots is None:
            self._snapshots = self._open_snapshots()
        polled = self._snapshots.poll(timeout_ms=POLL_MS)
        self._set(connected=True, error="")  # until _read_recent finds otherwise
        records = [r for batch in polled.values() for r in batch]
        if records:
            self._apply(records)
        if time.monotonic() - self._recent_at >= RECENT_EVERY_S:
            self._recent_at = time.monotonic()
            self._read_recent()

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(**kafka_options(self.settings.bootstrap_servers), group_id=None,
                             enable_auto_commit=False, client_id="loginpipe-dashboard",
                             isolation_level="read_committed",  # outputs may be transactional
                             reconnect_backoff_max_ms=2_000, request_timeout_ms=10_000,
                             bootstrap_timeout_ms=5_000)

    def _open_snapshots(self) -> KafkaConsumer:
        """Summaries from the beginning (compacted: the latest per instance and per partition),
        metrics' last hour."""
        consumer = self._consumer()
        try:
            summary = self._partitions(consumer, self.settings.summary_topic)
            metrics = self._partitions(consumer, self.settings.metrics_topic)
            consumer.assign(summary + metrics)
            consumer.seek_to_beginning(*summary)
            for tp, end in consumer.end_offsets(metrics).items():
                consumer.seek(tp, max(0, end - METRICS_KEPT))
        except BaseException:
            consumer.close()
            raise
        return consumer

    @staticmethod
    def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise TopicMissing(f"topic {topic} does not exist yet (python create_kafka_topic.py creates it)")
        return [TopicPartition(topic, p) for p in sorted(found)]

    def _apply(self, records: list) -> None:
        summary_topic = self.settings.summary_topic
        with self._lock:
            for record in records:
                try:
                    value = orjson.loads(record.value)
                except (orjson.JSONDecodeError, TypeError):
                    continue  # not ours (or a tombstone): skip it
                if not isinstance(value, dict):
                    continue
                if record.topic != summary_topic:
                    self.board.add_metrics(value)
                elif value.get("schema") == PARTITION_SCHEMA_ID:
                    self.board.add_partition(value)
                else:
                    self.board.add_summary(value)

    def _read_recent(self) -> None:
        """The newest few records of each output partition (a sample, not a follow)."""
        if self._tail is None:
            self._tail = self._consumer()
        partitions = self._partitions(self._tail, self.settings.output_topic)
        self._tail.assign(partitions)
        per_partition = max(1, RECENT_KEPT // len(partitions))
        for tp, end in self._tail.end_offsets(partitions).items():
            self._tail.seek(tp, max(0, end - per_partition))
        records = [r for batch in self._tail.poll(timeout_ms=POLL_MS).values() for r in batch]
        records.sort(key=lambda r: r.timestamp, reverse=True)
        recent = [value for value in map(self._processed, records[:RECENT_KEPT]) if value is not None]
        with self._lock:
            self.board.recent = recent

    def _processed(self, record) -> dict | None:
        """One processed record's value, JSON or framed Avro; None (counted) when unreadable."""
        if record.value is None:
            return None  # a tombstone: not a record
        try:
            value = serde.read_value(record.value, self._schemas)
        except (serde.UnreadableValue, RegistryUnavailable):
            self.unreadable += 1
            return None
        if not isinstance(value, dict):
            self.unreadable += 1
            return None
        return value

    def _set(self, *, connected: bool, error: str) -> None:
        with self._lock:
            self.board.connected = connected
            self.board.error = error
            self.board.checked_at = time.time()


def _schema_cache(url: str | None) -> serde.SchemaCache | None:
    """The registry's schemas (None without a URL). Its outages are logged, not shown: the page's
    sample of records just thins out meanwhile."""
    if not url:
        return None
    return serde.SchemaCache(SchemaRegistryClient(url, timeout_s=REGISTRY_TIMEOUT_S),
                             logging.getLogger("loginpipe.dashboard").warning)
