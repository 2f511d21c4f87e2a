"""The Prometheus endpoint (``--metrics-port``): the pipeline's counters, histograms and gauges
at ``http://host:port/metrics``.

Counters and histograms are fed once per batch, never per message. Gauges (lag, state size)
are read when Prometheus scrapes, so they cost nothing in between. The metrics live in a
registry of their own, owned by the ``Exporter``: nothing here is module-global.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from loginpipe.core.batch import BatchResult
from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS
from loginpipe.core.filters import REASONS as FILTER_REASONS
from loginpipe.errors import UserError

NAMESPACE = "loginpipe"
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)


class Exporter:
    """The pipeline's Prometheus metrics and the HTTP server that serves them."""

    def __init__(self, lag: Callable[[], float], tracked_users: Callable[[], float],
                 tracked_devices: Callable[[], float], in_flight: Callable[[], float] = lambda: 0,
                 not_writing: Callable[[], float] = lambda: 0,
                 replacements: Callable[[], float] = lambda: 0,
                 restoring: Callable[[], tuple[int, int]] = lambda: (0, 0)) -> None:
        self.registry = CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.consumed = Counter("records_consumed", "Records read from the input topic whose outputs "
                                "are acknowledged (the rest are in_flight_records).",
                                namespace=ns, registry=r)
        self.processed = Counter("records_processed", "Valid, kept events counted in the state and "
                                 "passed on to the device step.", namespace=ns, registry=r)
        self.published = Counter("records_published", "Processed records written to the output topic "
                                 "by this process's device step.", namespace=ns, registry=r)
        self.filtered = Counter("records_filtered", "Valid events filtered out, by reason.", ["reason"],
                                namespace=ns, registry=r)
        self.dead_lettered = Counter("records_dead_lettered", "Invalid records sent to the dead-letter "
                                     "topic, by reason.", ["reason"], namespace=ns, registry=r)
        self.batch_seconds = Histogram("batch_processing_seconds", "Time a batch spends in the pipeline, "
                                       "from poll to outputs handed to the producer.",
                                       namespace=ns, registry=r, buckets=BATCH_SECONDS_BUCKETS)
        self.batch_size = Histogram("batch_size_records", "Records per polled batch.",
                                    namespace=ns, registry=r, buckets=BATCH_SIZE_BUCKETS)
        self.transactions = Counter("transactions", "Exactly-once transactions, by outcome "
                                    "(committed, aborted).", ["outcome"], namespace=ns, registry=r)
        self.transaction_records = Counter("transaction_records", "Outputs written in committed "
                                           "transactions.", namespace=ns, registry=r)
        self.transaction_seconds = Histogram("transaction_commit_seconds", "Time to commit a "
                                             "transaction (offsets added, outputs flushed, committed).",
                                             namespace=ns, registry=r, buckets=BATCH_SECONDS_BUCKETS)
        Gauge("consumer_lag_records", "Records behind the input partitions' high-water marks.",
              namespace=ns, registry=r).set_function(lag)
        Gauge("in_flight_records", "Records read whose outputs the broker has not acknowledged yet.",
              namespace=ns, registry=r).set_function(in_flight)
        Gauge("not_writing_seconds", "Seconds without an acknowledgement while outputs are pending "
              "(0 when writing).", namespace=ns, registry=r).set_function(not_writing)
        Gauge("producer_replacements", "Times the producer was replaced after it stopped delivering.",
              namespace=ns, registry=r).set_function(replacements)
        Gauge("state_tracked_users", "Users remembered for distinct-IP counts.",
              namespace=ns, registry=r).set_function(tracked_users)
        Gauge("state_tracked_devices", "Devices remembered for distinct-user counts.",
              namespace=ns, registry=r).set_function(tracked_devices)
        Gauge("state_restore_records_remaining", "Changelog records still to apply before newly "
              "assigned partitions are served (0 when no restore runs).",
              namespace=ns, registry=r).set_function(lambda: max(0, restoring()[1] - restoring()[0]))
        for reason in FILTER_REASONS:  # every series exists from the start, at 0
            self.filtered.labels(reason)
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome)
        self._server = None

    def record(self, result: BatchResult, processing_s: float) -> None:
        """Time one processed batch."""
        self.batch_seconds.observe(processing_s)
        self.batch_size.observe(result.consumed)

    def acknowledge(self, result: BatchResult) -> None:
        """Count one batch whose outputs are all acknowledged."""
        self.consumed.inc(result.consumed)
        self.processed.inc(result.processed)
        self.published.inc(result.published)
        for reason, n in result.reasons.items():
            family = self.dead_lettered if reason in DEAD_LETTER_REASONS else self.filtered
            family.labels(reason).inc(n)

    def transaction(self, committed: bool, records: int, seconds: float) -> None:
        self.transactions.labels("committed" if committed else "aborted").inc()
        if committed:
            self.transaction_records.inc(records)
            self.transaction_seconds.observe(seconds)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve /metrics on ``port`` in a daemon thread; a taken port is a UserError."""
        try:
            self._server, _ = start_http_server(port, address, registry=self.registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {address}:{port}: {exc.strerror}") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
