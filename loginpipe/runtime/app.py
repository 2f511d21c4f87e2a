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

from loginpipe.config import PipelineConfig
from loginpipe.core.batch import Topology, process_batch
from loginpipe.core.filters import FilterRules
from loginpipe.core.records import Routes
from loginpipe.core.state import Aggregates
from loginpipe.errors import UserError
from loginpipe.observe.prometheus import Exporter
from loginpipe.observe.publish import Publisher
from loginpipe.observe.stats import Stats, Totals, format_summary
from loginpipe.runtime.checkpoint import Checkpointer
from loginpipe.runtime.delivery import Sender
from loginpipe.topics import admin_client
from loginpipe.waiting import any_reachable

POLL_TIMEOUT_MS = 200
PAUSED_POLL_MS = 50  # while paused for backpressure: notice acknowledgements soon
LAG_EVERY_S = 1.0
HEALTH_EVERY_S = 5.0
# Stays well inside the session timeout: heartbeats wait while a revoked partition drains.
REVOKE_DRAIN_S = 5.0
NOT_WRITING_AFTER_S = 10.0  # no acknowledgement for this long while outputs wait: say so
NO_ASSIGNMENT_AFTER_S = 15.0  # a worker without partitions this long after its start: say so
CLOSE_GRACE_S = 5.0  # past the shutdown deadline: closing clients, joining threads
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
    unacknowledged: int = 0  # records read whose outputs were never acknowledged (not committed)


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
        self.deadline: float | None = None  # monotonic time by which a stop must be done
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
        self.sender = Sender(self._make_producer, self.warn)
        self.publisher = Publisher(self.config, self.state, self.stats, self.sender, self.warn)
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
            unacknowledged = self._shut_down(workers)
        result = RunResult(self.stats.totals, self.state.summary(), self.stats.elapsed(),
                           self.stats.busy(), self.failure is not None, unacknowledged)
        print(format_summary(result.totals, result.elapsed_s, result.aggregates, result.busy_s,
                             self.stats.in_flight), file=self.out, flush=True)
        if unacknowledged:
            print(f"error: stopped after {self.config.shutdown_timeout_s:g}s with the outputs of "
                  f"{unacknowledged:,} records unacknowledged (is the broker reachable?); their input "
                  "offsets stay uncommitted and are read again on the next start",
                  file=sys.stderr, flush=True)
        return result

    def begin_stop(self) -> None:
        """Stop polling; everything still to do must be done by ``self.deadline``."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.config.shutdown_timeout_s
            if self.sender is not None:
                self.sender.sending_until = self.deadline
        self.stop.set()

    def stop_deadline(self) -> float:
        if self.deadline is not None:
            return self.deadline
        return time.monotonic() + self.config.shutdown_timeout_s

    def _shut_down(self, workers: list[Worker]) -> int:
        """Let the workers commit what is acknowledged by the deadline, publish the final summary,
        close the producer. Returns how many records' outputs stay unacknowledged."""
        self.begin_stop()
        deadline = self.stop_deadline()
        for worker in workers:  # daemon threads: one stuck in a client call is left behind
            worker.join(timeout=max(0.0, deadline - time.monotonic()) + CLOSE_GRACE_S)
        if time.monotonic() < deadline:  # past it, the final snapshots could not be sent anyway
            self.publisher.settle()
            self.publisher.publish_summary(final=True)
            self.publisher.publish_metrics()
            self.publisher.flush(deadline)
        unacknowledged = self.stats.in_flight
        self.sender.close(timeout_s=0.0 if unacknowledged else max(0.0, deadline - time.monotonic()))
        if self.exporter:
            self.exporter.close()
        return unacknowledged

    def acknowledge(self, result) -> None:
        """A batch's outputs are all acknowledged: count it (a worker's Checkpointer calls this)."""
        self.stats.acknowledge(result)
        if self.exporter:
            self.exporter.acknowledge(result)

    def fail(self, description: str) -> None:
        """A worker hit a bug: report it and stop everything (outputs so far are still committed)."""
        self.failure = description
        print(f"error: a worker thread failed:\n{description}", file=sys.stderr, flush=True)
        self.begin_stop()

    def _on_signal(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            print("\nsecond interrupt: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        print(f"\n{signal.Signals(signum).name}: finishing the batch in flight, flushing, committing "
              f"(at most {self.config.shutdown_timeout_s:g}s; Ctrl+C again to exit at once)",
              file=sys.stderr, flush=True)
        self.begin_stop()

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
            stalled = self._not_writing(workers)
            if now >= next_health:
                next_health = now + HEALTH_EVERY_S
                down_since = self._check_health(now, down_since)
                if stalled and down_since is None:
                    self._warn_not_writing(stalled)
                self._check_assignments(workers, now)

    def _not_writing(self, workers: list[Worker]) -> float:
        """Seconds without an acknowledgement while outputs wait, once that passes
        ``NOT_WRITING_AFTER_S`` (else 0); kept in the stats for the line, metrics and /metrics."""
        stalled = max((w.checkpointer.stalled_for() for w in workers if w.checkpointer), default=0.0)
        self.stats.not_writing_s = stalled if stalled >= NOT_WRITING_AFTER_S else 0.0
        self.stats.producer_replacements = self.sender.replacements
        return self.stats.not_writing_s

    def _warn_not_writing(self, stalled: float) -> None:
        """The broker answers yet nothing is acknowledged: say so, and replace a producer that
        stays silent past its own delivery timeout (it should have failed by then)."""
        self.warn(f"not writing for {stalled:.0f}s: the outputs of {self.stats.in_flight:,} records are "
                  "unacknowledged while the broker answers")
        if stalled * 1000 >= self.config.delivery_timeout_ms + NOT_WRITING_AFTER_S * 1000:
            self.sender.replace(self.sender.generation, f"no acknowledgement for {stalled:.0f}s")

    def _check_assignments(self, workers: list[Worker], now: float) -> None:
        """A worker that never got an assignment is stuck joining the group: say so, with the cause."""
        for w in workers:
            if w.assigned_at is None and now - w.started_at >= NO_ASSIGNMENT_AFTER_S:
                self.warn(f"{w.name} has had no partition assignment for {now - w.started_at:.0f}s: "
                          f"still looking for the coordinator of group {self.config.group_id} or "
                          "waiting for the group to rebalance")

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
        state, stats = self.state, self.stats
        exporter = Exporter(lag=stats.lag, tracked_users=lambda: len(state.ips_by_user),
                            tracked_devices=lambda: len(state.users_by_device),
                            in_flight=lambda: stats.in_flight, not_writing=lambda: stats.not_writing_s,
                            replacements=lambda: stats.producer_replacements)
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
            delivery_timeout_ms=self.config.delivery_timeout_ms,
            request_timeout_ms=min(10_000, self.config.delivery_timeout_ms // 2),
            # A send() that cannot queue (no metadata while the broker is away) gives up this soon,
            # so a worker is never stuck longer than this in a client call (stops stay bounded).
            max_block_ms=5_000,
            reconnect_backoff_max_ms=2_000,
            bootstrap_timeout_ms=10_000,
        )

    def make_consumer(self, index: int):
        instance = self.config.group_instance_id
        return KafkaConsumer(
            group_instance_id=f"{instance}-{index}" if instance else None,
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
        self._start_offsets: dict = {}  # first offset read per partition since its assignment
        self._lag_at = 0.0
        self.started_at = time.monotonic()
        self.assigned_at: float | None = None  # monotonic time of the last partition assignment
        self.partitions = 0  # how many partitions this worker owns
        self.caught_up = False  # every owned partition acknowledged up to its high-water mark
        self.paused = False  # reading is paused: too much is unacknowledged

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
        self.checkpointer = Checkpointer(
            consumer, app.sender, config.commit_every_records, config.commit_interval_ms / 1000,
            app.warn, on_acked=app.acknowledge, on_resend=app.stats.count_resend,
            max_records=config.max_in_flight, max_bytes=config.max_in_flight_mib * 2**20)
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
                if worker.paused and assigned:  # new partitions wait like the others
                    consumer.pause(*assigned)

        # Knowing the topic's partitions before joining spares a first, empty assignment and
        # the rebalance that follows it (about 2 s at every start).
        try:
            consumer.partitions_for_topic(config.input_topic)
        except KafkaError as exc:  # the broker went away since the start-up check: join anyway
            app.warn(f"{self.name}: no metadata yet ({exc!r})")
        consumer.subscribe([config.input_topic], listener=Rebalance())
        try:
            self._loop(consumer)
            self.checkpointer.commit_all(app.stop_deadline())
        finally:
            timeout_s = min(CLOSE_GRACE_S, max(0.5, app.stop_deadline() - time.monotonic()))
            consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))

    def _loop(self, consumer) -> None:
        app, checkpointer = self.app, self.checkpointer
        max_records = app.config.max_poll_records
        while not app.stop.is_set():
            self._backpressure(consumer)
            try:
                polled = consumer.poll(timeout_ms=PAUSED_POLL_MS if self.paused else POLL_TIMEOUT_MS,
                                       max_records=max_records)
            except KafkaError as exc:  # e.g. the broker went away mid-request: wait, then go on
                app.warn(f"poll failed ({exc}); retrying")
                app.stop.wait(0.5)
                continue
            if polled:
                self._handle(polled)
            checkpointer.collect()
            checkpointer.maybe_commit()
            self._update_lag(consumer)

    def _backpressure(self, consumer) -> None:
        """Pause every partition while too much is unacknowledged; resume at half. Polling goes on
        while paused, so the group still sees this member and rebalances still reach it."""
        checkpointer = self.checkpointer
        if not self.paused and checkpointer.over_limit:
            self.paused = True
            consumer.pause(*consumer.assignment())
            self.app.warn(f"{self.name}: the outputs of {checkpointer.pending_records:,} records are "
                          "unacknowledged; reading paused until half of them are")
        elif self.paused and checkpointer.below_resume:
            self.paused = False
            consumer.resume(*consumer.paused())

    async def hand_over(self, consumer, revoked) -> None:
        """Before partitions go to another member: deliver what is in flight, then commit it."""
        checkpointer = self.checkpointer
        if not self.app.stop.is_set():  # when stopping, commit_all has drained already
            checkpointer.drain(min(time.monotonic() + REVOKE_DRAIN_S, self.app.stop_deadline()))
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
            self._start_offsets.pop(tp, None)

    def _handle(self, polled: dict) -> None:
        app = self.app
        started = time.perf_counter()
        records = [record for batch in polled.values() for record in batch]
        offsets = {}
        for tp, batch in polled.items():
            offsets[tp] = batch[-1].offset + 1
            self._start_offsets.setdefault(tp, batch[0].offset)
        result = process_batch(records, app.state, app.topology, time.time())
        self.checkpointer.send(offsets, result.outputs, result, result.consumed)
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
        """Records of this worker's partitions not yet acknowledged, from the last fetched
        high-water marks: what was read but not written still counts as lag."""

        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        lag, known = 0, True
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self.checkpointer.acknowledged_position(tp)
            if position is None:
                position = self._start_offsets.get(tp)
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
    return 1 if result.failed or result.unacknowledged else 0

