"""The Application: the shell around the pure core. It checks the topics, makes the shared producer
(``Sender``), the shared aggregations, stats and publisher, starts the workers with a ``Context``,
supervises them (health, stuck workers, not writing, idleness), handles signals, and shuts down
within a deadline.

    poll (kafka/) -> process_batch (core/) -> Sender (runtime/delivery) -> Checkpointer (commit)
                                           \\-> Stats -> Publisher (summary and metrics topics)

Threads overlap network waits but share one interpreter lock: to use more cores, run more
processes with the same group id and Kafka spreads the partitions over them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from loginpipe.config import PipelineConfig
from loginpipe.core.batch import Topology
from loginpipe.core.filters import FilterRules
from loginpipe.core.records import Routes
from loginpipe.errors import UserError
from loginpipe.kafka.backends import DISTRIBUTIONS, make_backend
from loginpipe.kafka.base import Backend, ClientError
from loginpipe.observe import logs
from loginpipe.observe.prometheus import Exporter, instance_id
from loginpipe.observe.publish import Publisher
from loginpipe.observe.stats import Stats, Totals, format_summary
from loginpipe.observe.terminal import LINE_WIDTH, LiveView, is_terminal, make_view
from loginpipe.runtime.context import Context, Shutdown, Warner
from loginpipe.runtime.delivery import Sender
from loginpipe.runtime.processes import INDEX_ENV, own_line_prefix
from loginpipe.runtime.shared import SharedState
from loginpipe.runtime.transactions import transactional_prefix
from loginpipe.runtime.worker import CLOSE_GRACE_S, Worker
from loginpipe.serde import SchemaCache, register_contract, require_avro, subject
from loginpipe.topics import InternalTopics, missing_topics_message, plural

HEALTH_EVERY_S = 5.0
NOT_WRITING_AFTER_S = 10.0  # no acknowledgement for this long while outputs wait: say so
NO_ASSIGNMENT_AFTER_S = 15.0  # a worker without partitions this long after its start: say so
GC_GEN0_THRESHOLD = 50_000


@dataclass
class RunResult:
    totals: Totals
    aggregates: dict
    elapsed_s: float
    busy_s: float  # first record to last processed
    failed: bool
    unacknowledged: int = 0  # records read whose outputs were never acknowledged (not committed)


class Application:
    def __init__(self, config: PipelineConfig, out: TextIO | None = None, err: TextIO | None = None,
                 backend: Backend | None = None, health_every_s: float = HEALTH_EVERY_S,
                 stuck_after_s: float = NO_ASSIGNMENT_AFTER_S) -> None:
        if backend is None:
            backend = make_backend(config.client)
        self.config = config
        self.backend = backend
        self.health_every_s = health_every_s
        self.stuck_after_s = stuck_after_s
        self.out = out or sys.stdout
        # Warnings and errors are log records (logger loginpipe.runtime), wherever logging sends
        # them; ``err`` (tests) receives this application's records as well.
        self.err = err
        self._tag = f"app-{id(self)}"  # on this application's records, so that ``err`` gets them
        self.log = logging.LoggerAdapter(logs.get("runtime"), {"_app": self._tag})
        self.warn = Warner(self.log)
        self.shutdown = Shutdown(config.shutdown_timeout_s, on_begin=self._stop_sending_at)
        self.state = SharedState()
        routes = Routes(config.output_topic, config.dlq_topic, config.filtered_topic,
                        privacy=config.privacy, internal=InternalTopics.of(config.group_id))
        # keep_partition and partitions: _check_topics
        filters = FilterRules(app_versions=config.app_versions, max_age_s=config.max_age_s)
        self.topology = Topology(routes, filters, config.max_future_skew_s)
        self.view = None if config.quiet else make_view(
            config.view, self.out, f"loginpipe · {config.input_topic} → {config.output_topic} · "
            f"group {config.group_id}", config.show_messages, LINE_WIDTH - len(own_line_prefix()),
            json=logs.current_format() == "json")
        self.stats = Stats(config.stats_every, config.stats_interval_s, enabled=not config.quiet,
                           metrics=config.metrics_topic is not None, view=self.view,
                           exactly_once=config.exactly_once)
        self.stats.restoring = self.state.restore_progress
        self.failure: str | None = None
        self.sender: Sender | None = None
        self.publisher: Publisher | None = None
        self.exporter: Exporter | None = None
        self.schemas: SchemaCache | None = None
        self._interrupts = 0

    def run(self, install_signals: bool = True) -> RunResult:
        """Run until stopped (signal, idle timeout or a worker failure); return the totals."""
        with self._logging_to_err():
            return self._run(install_signals)

    def _run(self, install_signals: bool) -> RunResult:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # broker trouble is reported by us
        self._check_topics()
        self._use_registry()
        if self.config.metrics_port:
            self.exporter = self._make_exporter()  # first: a taken port fails before any client exists
        try:
            self.sender = Sender(lambda: self.backend.producer(self.config), self.warn)
        except ClientError as exc:  # the broker went away since the topic check
            raise UserError(f"cannot start a producer at {self.config.bootstrap_servers}: {exc}") from None
        self.publisher = Publisher(self.config, self.state, self.stats, self.sender, self.warn)
        if install_signals:
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        share = max(1, self.config.max_tracked_keys // self.topology.routes.partitions)
        # --show-messages prints through the view: above the live block, if it is one
        out = self.view.out if self.view else self.out
        ctx = Context(self.config, self.backend, self.sender, self.state, self.topology, self.stats,
                      self.shutdown, self.warn, self.acknowledge, self.fail, share, out, self.exporter,
                      transactional_prefix(self.config.group_id, self.config.group_instance_id),
                      self.transaction, self.schemas)
        workers = [Worker(i, ctx) for i in range(self.config.threads)]
        for worker in workers:
            worker.start()
        if not self.config.quiet:
            self.log.info(f"consuming {self.config.input_topic} at {self.config.bootstrap_servers} with "
                          f"{len(workers)} thread(s) in group {self.config.group_id} ({self.config.client} "
                          "client); Ctrl+C stops")
        with self._showing():
            try:
                self._supervise(workers)
            finally:
                unacknowledged = self._shut_down(workers)
        result = RunResult(self.stats.totals, self.state.summary(), self.stats.elapsed(),
                           self.stats.busy(), self.failure is not None, unacknowledged)
        print(format_summary(result.totals, result.elapsed_s, result.aggregates, result.busy_s,
                             self.stats.in_flight), file=self.out, flush=True)
        if unacknowledged:
            self.log.error(f"stopped after {self.config.shutdown_timeout_s:g}s with the outputs of "
                           f"{unacknowledged:,} records unacknowledged (is the broker reachable?); their "
                           "input offsets stay uncommitted and are read again on the next start")
        return result

    @contextlib.contextmanager
    def _logging_to_err(self) -> Iterator[None]:
        """``err``, when given, receives this application's log records too (tests read them)."""
        if self.err is None:
            yield
            return
        handler = logging.StreamHandler(self.err)
        handler.setFormatter(logs.formatter())
        tag = self._tag
        handler.addFilter(lambda record: getattr(record, "_app", None) == tag)
        root = logging.getLogger(logs.ROOT)
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)

    @contextlib.contextmanager
    def _showing(self) -> Iterator[None]:
        """The live block (or nothing, for lines) while the pipeline runs; its last frame is drawn
        and the terminal given back before the summary, however the run ends."""
        if self.view is None:
            yield
            return
        self.view.start()
        try:
            yield
        finally:
            try:
                self.stats.final()
            finally:
                self.view.stop()

    def begin_stop(self) -> None:
        """Stop polling; everything still to do must be done by the shutdown's deadline."""
        self.shutdown.begin()

    def _stop_sending_at(self, deadline: float) -> None:
        if self.sender is not None:
            self.sender.sending_until = deadline

    def _shut_down(self, workers: list[Worker]) -> int:
        """Let the workers commit what is acknowledged by the deadline, publish the final summary,
        close the producer. Returns how many records' outputs stay unacknowledged."""
        self.begin_stop()
        deadline = self.shutdown.deadline()
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

    def transaction(self, committed: bool, records: int, seconds: float) -> None:
        """A worker's transaction ended (exactly-once)."""
        self.stats.transaction(committed, records, seconds)
        if self.exporter:
            self.exporter.transaction(committed, records, seconds)

    def fail(self, description: str, bug: bool = True) -> None:
        """A worker hit a bug (or, ``bug`` False, a refusal it cannot ride out, described in one
        line): report it and stop everything (outputs so far are still committed)."""
        if self.failure is None:
            text = f"a worker thread failed:\n{description}" if bug else description
            self.log.error(text)
        self.failure = description
        self.begin_stop()

    def _on_signal(self, signum, frame) -> None:
        live = isinstance(self.view, LiveView)
        if not live and is_terminal(sys.stderr):
            print(file=sys.stderr, flush=True)  # off the line where the terminal echoed ^C
        self._interrupts += 1
        if self._interrupts > 1:
            if live:
                self.view.stop()  # the cursor back, and the block's last frame left in place
            self.log.warning("second interrupt: exiting now")
            os._exit(130)
        self.log.info(f"{signal.Signals(signum).name}: finishing the batch in flight, flushing, committing "
                      f"(at most {self.config.shutdown_timeout_s:g}s; Ctrl+C again to exit at once)")
        self.begin_stop()

    def _supervise(self, workers: list[Worker]) -> None:
        idle_s = self.config.stop_when_idle_s
        next_health = time.monotonic() + self.health_every_s
        down_since: float | None = None
        while not self.shutdown.is_set():
            self.shutdown.event.wait(0.2)
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
                        self.log.info(f"no records for {idle_s:g}s: stopping")
                    return
            stalled = self._not_writing(workers)
            if now >= next_health:
                next_health = now + self.health_every_s
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
            if w.assigned_at is None and now - w.started_at >= self.stuck_after_s:
                self.warn(f"{w.name} has had no partition assignment for {now - w.started_at:.0f}s "
                          f"in group {self.config.group_id} ({w.membership()}); still trying")

    @staticmethod
    def _drained(workers: list[Worker]) -> bool:
        """Every worker caught up to its partitions' ends, everything delivered, some partition ours."""
        return (all(w.assigned_at is not None and w.caught_up and w.pending_records == 0 for w in workers)
                and any(w.partitions for w in workers))

    def _check_health(self, now: float, down_since: float | None) -> float | None:
        """Warn while no bootstrap server accepts connections; say when one does again."""
        if self.backend.reachable(self.config.connection):
            if down_since is not None:
                self.warn(f"broker at {self.config.bootstrap_servers} is reachable again after "
                          f"{now - down_since:.0f}s; resuming")
            return None
        down_since = down_since or now
        self.warn(f"broker at {self.config.bootstrap_servers} unreachable for {now - down_since:.0f}s; "
                  "waiting for it (nothing is lost: offsets are committed only after delivery)")
        return down_since

    def _check_topics(self) -> None:
        """Fail fast, with one line, when the broker or a topic is missing; create the group's own
        topics (changelogs, repartition) when they are missing, as Kafka Streams does."""
        config = self.config
        names = [config.input_topic, config.output_topic, config.dlq_topic,
                 *filter(None, [config.filtered_topic, config.summary_topic, config.metrics_topic])]
        self._check_permissions({config.input_topic: ["READ"]} | {name: ["WRITE"] for name in names[1:]})
        found = self.backend.topic_partitions(config.connection, names)
        missing = [name for name in names if name not in found]
        if missing:
            raise UserError(missing_topics_message(missing, config))
        partitions = found[config.input_topic]
        self._ensure_internal_topics(partitions)
        internal = self.topology.routes.internal.specs()
        self._check_permissions({spec.name: ["READ", "WRITE"] for spec in internal})
        if config.connection.offset_reset == "latest":
            started = self.backend.start_group_at_end(config.connection, config.group_id, config.input_topic)
            if started and not config.quiet:
                self.log.info(f"group {config.group_id} is new: it starts at the end of {config.input_topic} "
                              f"({plural(started, 'partition')}; --offset-reset latest)")
        same = partitions == found[config.output_topic]
        routes = dataclasses.replace(self.topology.routes, keep_partition=same, partitions=partitions)
        self.topology = dataclasses.replace(self.topology, routes=routes)

    def _use_registry(self) -> None:
        """--schema-registry-url: register both contracts under their topics' subjects (BACKWARD
        unless the subject has a level of its own), read framed input through a ``SchemaCache``,
        and with --output-format avro write processed records framed with the output's id."""
        config = self.config
        if not config.schema_registry_url:
            return
        from loginpipe.core import avro
        from loginpipe.registry_client import SchemaRegistryClient

        require_avro("--schema-registry-url")
        client = SchemaRegistryClient(config.schema_registry_url)
        stopping = self.shutdown.is_set
        source = register_contract(client, config.input_topic, avro.INPUT_SCHEMA, self.warn,
                                   stopping=stopping)
        output = register_contract(client, config.output_topic, avro.OUTPUT_SCHEMA, self.warn,
                                   stopping=stopping)
        self.schemas = SchemaCache(client, self.warn)
        if config.output_format == "avro":
            routes = dataclasses.replace(self.topology.routes, encode_output=output.encode)
            self.topology = dataclasses.replace(self.topology, routes=routes)
        if not config.quiet:
            self.log.info(f"schema registry {client.url}: {subject(config.input_topic)} id "
                          f"{source.schema_id}, {subject(config.output_topic)} id {output.schema_id}; "
                          f"processed records as {config.output_format}")

    def _check_permissions(self, wanted: dict[str, list[str]]) -> None:
        """A missing ACL is one line before the first record (README, Connecting to a secured cluster)."""
        missing = self.backend.missing_permissions(self.config.connection, wanted)
        if missing:
            user = self.config.connection.sasl_username or "this client"
            raise UserError(f"not authorized: {user} may not {', '.join(missing)} at "
                            f"{self.config.bootstrap_servers} (an ACL is missing; README, Connecting "
                            "to a secured cluster, lists them)")

    def _ensure_internal_topics(self, partitions: int) -> None:
        """The changelogs and the repartition topic need the input's partition count: partition p
        of each belongs with input partition p."""
        config, internal = self.config, self.topology.routes.internal
        specs = internal.specs()
        self.backend.create_topics(config.connection, specs, partitions)
        found = self.backend.topic_partitions(config.connection, [spec.name for spec in specs])
        wrong = {name: n for name, n in found.items() if n != partitions}
        if len(found) < len(specs) or wrong:
            detail = ", ".join(f"{name} has {n}" for name, n in wrong.items()) or "some are missing"
            raise UserError(f"the internal topics of group {config.group_id} must have "
                            f"{plural(partitions, 'partition')} like {config.input_topic}: {detail} "
                            "(delete them, or use another --group-id)")

    def _make_exporter(self) -> Exporter:
        state, stats = self.state, self.stats
        exporter = Exporter(lag=stats.lag, tracked_users=state.tracked_users,
                            tracked_devices=state.tracked_devices,
                            in_flight=lambda: stats.in_flight, not_writing=lambda: stats.not_writing_s,
                            replacements=lambda: stats.producer_replacements,
                            restoring=state.restore_progress, group=self.config.group_id,
                            instance=instance_id(self.config.group_instance_id, os.environ.get(INDEX_ENV)),
                            client=DISTRIBUTIONS[self.config.client])
        exporter.serve(self.config.metrics_port, self.config.metrics_bind)
        if not self.config.quiet:
            self.log.info(f"Prometheus metrics at "
                          f"http://{self.config.metrics_bind}:{self.config.metrics_port}/metrics")
        return exporter


def tune_gc() -> None:
    """Collect cycles less often, for the whole process (so the entry points call it, not
    Application): the default, every 700 container allocations, cost ~30% of the pipeline's CPU
    in the benchmark, and the pipeline makes few cycles (README, Performance)."""
    # The client library is loaded lazily (the Application takes any backend); load the default
    # one before the freeze, so its many module-level objects are frozen too.
    import loginpipe.kafka.kafka_python  # noqa: F401

    gc.freeze()  # what exists at start-up (modules, clients) is never garbage: skip it from now on
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


def main(argv: list[str] | None = None) -> int:
    from loginpipe.config import pipeline_config

    config = pipeline_config(argv)
    backend = make_backend(config.client)  # a missing client library: one line, before any child starts
    if config.processes > 1:
        from loginpipe.runtime.processes import run_processes

        return run_processes(config, argv)
    tune_gc()
    result = Application(config, backend=backend).run()
    return 1 if result.failed or result.unacknowledged else 0

