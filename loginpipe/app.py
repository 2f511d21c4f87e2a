"""The shell around the pure core: Kafka clients, worker threads, checkpoints, signals, shutdown.

    Kafka poll -> process_batch (pure) -> Sender (shared producer) -> Checkpointer (commit)
                                       \\-> Stats -> Publisher (summary and metrics topics)

One ``Application`` owns the shared producer, the shared aggregations, the stats and the
publisher; each ``Worker`` thread owns one KafkaConsumer in the group and its Checkpointer. Threads overlap
network waits but share one interpreter lock: to use more cores, run more processes with the
same group id and Kafka spreads the partitions over them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TextIO

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from loginpipe.checkpoint import Checkpointer
from loginpipe.config import PipelineConfig
from loginpipe.delivery import Sender
from loginpipe.errors import UserError
from loginpipe.filters import FilterRules
from loginpipe.pipeline import Topology, process_batch
from loginpipe.prometheus import Exporter
from loginpipe.publish import Publisher
from loginpipe.route import Routes
from loginpipe.state import Aggregates
from loginpipe.stats import Stats, Totals, format_summary
from loginpipe.topics import admin_client
from loginpipe.waiting import any_reachable

POLL_TIMEOUT_MS = 200
LAG_EVERY_S = 1.0
HEALTH_EVERY_S = 5.0
# Stays well inside the session timeout: heartbeats wait while a revoked partition drains.
REVOKE_DRAIN_S = 5.0
GC_GEN0_THRESHOLD = 50_000
E2E_SAMPLES_PER_BATCH = 200  # end-to-end latency is sampled: a p99 needs no more


class Warner:
    """Prints warnings to stderr, each distinct message at most once every ``every_s`` seconds."""

    def __init__(self, out: TextIO | None = None, every_s: float = 5.0) -> None:
        self.out = out or sys.stderr
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def __call__(self, message: str) -> None:
        key = message[:40]
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.every_s:
            self._last[key] = now
            print(f"warning: {message}", file=self.out, flush=True)


@dataclass
class RunResult:
    totals: Totals
    aggregates: dict
    elapsed_s: float
    busy_s: float  # first record to last processed
    failed: bool


class Application:
    def __init__(self, config: PipelineConfig, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.warn = Warner(err)
        self.stop = threading.Event()
        self.state = Aggregates(max_tracked_keys=config.max_tracked_keys)
        routes = Routes(config.output_topic, config.dlq_topic, config.filtered_topic,
                        privacy=config.privacy)  # keep_partition: _check_topics
        filters = FilterRules(app_versions=config.app_versions, max_age_s=config.max_age_s)
        self.topology = Topology(routes, filters, config.max_future_skew_s)
        self.stats = Stats(config.stats_every, config.stats_interval_s, out=self.out,
                           enabled=not config.quiet, metrics=config.metrics_topic is not None)
        self.failure: str | None = None
        self.producer = None
        self.sender: Sender | None = None
        self.publisher: Publisher | None = None
        self.exporter: Exporter | None = None
        self._interrupts = 0

    def run(self, install_signals: bool = True) -> RunResult:
        """Run until stopped (signal, idle timeout or a worker failure); return the totals."""
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # broker trouble is reported by us
        self._check_topics()
        if self.config.metrics_port:
            self.exporter = self._make_exporter()  # first: a taken port fails before any client exists
        self.producer = self._make_producer()
        self.sender = Sender(self.producer, self.warn)
        self.publisher = Publisher(self.config, self.state, self.stats, self.producer, self.warn)
        if install_signals:
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        workers = [Worker(i, self) for i in range(self.config.threads)]
        for worker in workers:
            worker.start()
        if not self.config.quiet:
            print(f"consuming {self.config.input_topic} at {self.config.bootstrap_servers} with "
                  f"{len(workers)} thread(s) in group {self.config.group_id}; Ctrl+C stops",
                  file=self.out, flush=True)
        try:
            self._supervise(workers)
        finally:
            self.stop.set()
            for worker in workers:
                worker.join()
            self.publisher.publish_summary(final=True)
            self.publisher.publish_metrics()
            self.sender.flush(timeout_s=30.0)
            self.producer.close(timeout=10)
            if self.exporter:
                self.exporter.close()
        result = RunResult(self.stats.totals, self.state.summary(), self.stats.elapsed(),
                           self.stats.busy(), self.failure is not None)
        print(format_summary(result.totals, result.elapsed_s, result.aggregates, result.busy_s),
              file=self.out, flush=True)
        return result

    def fail(self, description: str) -> None:
        """A worker hit a bug: report it and stop everything (outputs so far are still committed)."""
        self.failure = description
        print(f"error: a worker thread failed:\n{description}", file=sys.stderr, flush=True)
        self.stop.set()

    def _on_signal(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            print("\nsecond interrupt: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        print(f"\n{signal.Signals(signum).name}: finishing the batch in flight, flushing, committing "
              "(Ctrl+C again to exit at once)", file=sys.stderr, flush=True)
        self.stop.set()

    def _supervise(self, workers: list[Worker]) -> None:
        idle_s = self.config.stop_when_idle_s
        next_health = time.monotonic() + HEALTH_EVERY_S
        down_since: float | None = None
        while not self.stop.is_set():
            self.stop.wait(0.2)
            self.stats.tick()
            self.publisher.tick()
            now = time.monotonic()
            if not any(w.is_alive() for w in workers):
                return
            if idle_s > 0 and self._drained(workers):
                # Idle counts from the last record or the last rebalance, whichever is later: a
                # consumer waiting for its partitions is not idle.
                last = max(self.stats.last_record_at or 0.0, *(w.assigned_at for w in workers))
                if now - last >= idle_s:
                    if not self.config.quiet:
                        print(f"no records for {idle_s:g}s: stopping", file=self.out, flush=True)
                    return
            if now >= next_health:
                next_health = now + HEALTH_EVERY_S
                down_since = self._check_health(now, down_since)

    @staticmethod
    def _drained(workers: list[Worker]) -> bool:
        """Every worker caught up to its partitions' ends, everything delivered, some partition ours."""
        return (all(w.assigned_at is not None and w.caught_up and w.pending_records == 0 for w in workers)
                and any(w.partitions for w in workers))

    def _check_health(self, now: float, down_since: float | None) -> float | None:
        """Warn while no bootstrap server accepts connections; say when one does again."""
        if any_reachable(self.config.bootstrap_servers):
            if down_since is not None:
                self.warn(f"broker at {self.config.bootstrap_servers} is reachable again after "
                          f"{now - down_since:.0f}s; resuming")
            return None
        down_since = down_since or now
        self.warn(f"broker at {self.config.bootstrap_servers} unreachable for {now - down_since:.0f}s; "
                  "waiting for it (nothing is lost: offsets are committed only after delivery)")
        return down_since

    def _check_topics(self) -> None:
        """Fail fast, with one line, when the broker or a topic is missing."""
        admin = admin_client(self.config.bootstrap_servers)
        try:
            config = self.config
            names = [config.input_topic, config.output_topic, config.dlq_topic,
                     *filter(None, [config.filtered_topic, config.summary_topic, config.metrics_topic])]
            found = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)
                     if t.get("error_code", 0) == 0}
        finally:
            admin.close()
        missing = [name for name in names if name not in found]
        if missing:
            raise UserError(f"topic(s) {', '.join(missing)} do not exist at {self.config.bootstrap_servers}; "
                            "create them with: python create_kafka_topic.py")
        same = found[self.config.input_topic] == found[self.config.output_topic]
        routes = dataclasses.replace(self.topology.routes, keep_partition=same)
        self.topology = dataclasses.replace(self.topology, routes=routes)

    def _make_exporter(self) -> Exporter:
        state = self.state
        exporter = Exporter(lag=self.stats.lag, tracked_users=lambda: len(state.ips_by_user),
                            tracked_devices=lambda: len(state.users_by_device))
        exporter.serve(self.config.metrics_port)
        if not self.config.quiet:
            print(f"Prometheus metrics at http://localhost:{self.config.metrics_port}/metrics",
                  file=self.out, flush=True)
        return exporter

    def _make_producer(self):
        return KafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id="loginpipe-pipeline",
            acks="all",
            enable_idempotence=True,
            compression_type="snappy",
            linger_ms=self.config.linger_ms,
            batch_size=self.config.batch_size,
            delivery_timeout_ms=30_000,
            request_timeout_ms=10_000,
            max_block_ms=10_000,
            reconnect_backoff_max_ms=2_000,
            bootstrap_timeout_ms=10_000,
        )

    def make_consumer(self, index: int):
        return KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            client_id=f"loginpipe-worker-{index}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.config.max_poll_records,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=2 * 1024 * 1024,
            # Short, so a killed member's partitions move to the survivors within seconds.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,  # a rebalance is noticed at the next heartbeat
            reconnect_backoff_max_ms=2_000,
            bootstrap_timeout_ms=10_000,
        )


class Worker(threading.Thread):
    """One consumer in the group: poll, process the batch, send, checkpoint."""

    def __init__(self, index: int, app: Application) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.index = index
        self.app = app
        self.checkpointer: Checkpointer | None = None
        self._next_offsets: dict = {}
        self._lag_at = 0.0
        self.assigned_at: float | None = None  # monotonic time of the last partition assignment
        self.partitions = 0  # how many partitions this worker owns
        self.caught_up = False  # every owned partition read up to its high-water mark

    @property
    def pending_records(self) -> int:
        return self.checkpointer.pending_records if self.checkpointer else 0

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            self.app.fail(traceback.format_exc())

    def _run(self) -> None:

        app, config = self.app, self.app.config
        consumer = app.make_consumer(self.index)
        self.checkpointer = Checkpointer(consumer, app.sender, config.commit_every_records,
                                         config.commit_interval_ms / 1000, app.warn,
                                         on_resend=app.stats.count_resend)
        worker = self

        class Rebalance(AsyncConsumerRebalanceListener):
            # kafka-python 3 runs these on the consumer's IO thread, where a blocking commit is
            # refused: hence the async listener and an awaited commit_async. Waiting for the
            # producer's acknowledgements is fine here: they arrive on the producer's own thread.
            async def on_partitions_revoked(self, revoked):
                await worker.hand_over(consumer, revoked)

            async def on_partitions_assigned(self, assigned):
                worker.assigned_at = time.monotonic()
                worker.partitions = len(assigned)
                worker.caught_up = False
                worker._lag_at = 0.0  # measure soon

        # Knowing the topic's partitions before joining spares a first, empty assignment and
        # the rebalance that follows it (about 2 s at every start).
        consumer.partitions_for_topic(config.input_topic)
        consumer.subscribe([config.input_topic], listener=Rebalance())
        try:
            while not app.stop.is_set():
                try:
                    polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=config.max_poll_records)
                except KafkaError as exc:  # e.g. the broker went away mid-request: wait, then go on
                    app.warn(f"poll failed ({exc}); retrying")
                    app.stop.wait(0.5)
                    continue
                if polled:
                    self._handle(polled)
                self.checkpointer.maybe_commit()
                self._update_lag(consumer)
            self.checkpointer.commit_all()
        finally:
            consumer.close(autocommit=False)

    async def hand_over(self, consumer, revoked) -> None:
        """Before partitions go to another member: deliver what is in flight, then commit it."""

        checkpointer = self.checkpointer
        checkpointer.drain(timeout_s=REVOKE_DRAIN_S)
        offsets = checkpointer.committable()
        if offsets:
            try:
                await consumer.commit_async(offsets)
                checkpointer.mark_committed(offsets)
            except KafkaError as exc:
                self.app.warn(f"commit before rebalance failed ({exc!r}); "
                              "the next owner re-reads those records")
        checkpointer.forget(revoked)
        for tp in revoked:
            self._next_offsets.pop(tp, None)

    def _handle(self, polled: dict) -> None:
        app = self.app
        started = time.perf_counter()
        records = [record for batch in polled.values() for record in batch]
        offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items()}
        result = process_batch(records, app.state, app.topology, time.time())
        futures = app.sender.send_all(result.outputs)
        self.checkpointer.track(offsets, result.outputs, futures, result.consumed)
        self._next_offsets.update(offsets)
        if app.config.show_messages:
            self._show(result.outputs)
        done_ms = time.time() * 1000
        step = max(1, len(records) // E2E_SAMPLES_PER_BATCH)
        elapsed = time.perf_counter() - started
        app.stats.record(result, elapsed, [done_ms - r.timestamp for r in records[::step]], step)
        if app.exporter:
            app.exporter.record(result, elapsed)

    def _show(self, outputs) -> None:
        topic = self.app.topology.routes.output_topic
        text = "\n".join(o.value.decode() for o in outputs if o.topic == topic)
        if text:
            print(text, file=self.app.out, flush=True)

    def _update_lag(self, consumer) -> None:
        """Lag of this worker's partitions, from the last fetched high-water marks."""

        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        lag, known = 0, True
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self._next_offsets.get(tp)
            if position is None and highwater is not None:
                try:
                    position = consumer.position(tp, timeout_ms=100)
                except KafkaError:  # it may need the broker, which may be away: unknown for now
                    position = None
            if highwater is None or position is None:
                known = False  # nothing fetched from it yet
                continue
            lag += max(0, highwater - position)
        self.caught_up = known and lag == 0
        self.app.stats.set_lag(self.name, lag)


def tune_gc() -> None:
    """Collect cycles less often, for the whole process (so the entry points call it, not
    Application): the default, every 700 container allocations, cost ~30% of the pipeline's CPU
    in the benchmark, and the pipeline makes few cycles (README, Performance)."""
    gc.freeze()  # what exists at start-up (modules, clients) is never garbage: skip it from now on
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


def main(argv: list[str] | None = None) -> int:
    from loginpipe.config import pipeline_config

    config = pipeline_config(argv)
    tune_gc()
    result = Application(config).run()
    return 1 if result.failed else 0

