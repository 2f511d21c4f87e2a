"""The Prometheus endpoint (``--metrics-port``): the pipeline's counters, histograms and gauges
at ``http://host:port/metrics``, with the process, platform and garbage-collector collectors.

Counters and histograms are fed once per batch, never per message. Gauges (lag, state size)
are read when Prometheus scrapes, so they cost nothing in between. The metrics live in
registries of their own, owned by the ``Exporter``: nothing here is module-global.

Every ``loginpipe_*`` series carries two labels, added at scrape time: ``group`` (the consumer
group) and ``instance_id`` (which process of it). Not ``instance``: Prometheus gives every series
the scrape target's ``instance``, and renames a clashing label to ``exported_instance`` (or, with
``honor_labels``, lets ours replace the target's, and then ``up`` and the ``process_*`` series no
longer share an ``instance`` with ours). No ``_created`` series either: they double the series
count and no query here needs them.
"""

from __future__ import annotations

import copy
import os
import platform
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

import loginpipe
from loginpipe.core.batch import BatchResult
from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS
from loginpipe.core.filters import REASONS as FILTER_REASONS
from loginpipe.errors import UserError

NAMESPACE = "loginpipe"
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
# A quiet pipeline's p99 is tens of ms, a troubled one's seconds: fine steps below 0.25 s, where
# the SLO lives (histogram_quantile interpolates within a bucket), coarse ones up to a minute.
E2E_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0, 60.0)
KAFKA_CLIENT = "kafka-python"


class WeightedHistogram:
    """A histogram (collector) whose observations carry a weight: the worker samples at most a
    few hundred records' latencies per batch, each standing for ``weight`` records, and the count
    must be of records. ``prometheus_client``'s ``Histogram`` has no weight (observing each sample
    ``weight`` times would cost per record), and its ``observe`` takes a lock per call: ~150 µs
    for a batch's 200 samples, against ~30 µs here (one bisect per sample, one lock per batch),
    measured on the 2-core dev machine, where a full 2,000-record batch takes ~90 ms."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(buckets)
        self._bounds_ms = [b * 1000 for b in buckets]  # samples come in ms: no division per sample
        self._counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum_s = 0.0
        self._lock = threading.Lock()  # workers record from their own threads

    def observe_ms(self, samples_ms: Sequence[float], weight: int = 1) -> None:
        """Add ``samples_ms`` (milliseconds), each counted ``weight`` times. A negative latency
        (the producer's clock ahead of ours) counts as 0."""
        if not samples_ms:
            return
        bounds = self._bounds_ms
        slots = [bisect_left(bounds, ms) for ms in samples_ms]  # bisect_left: a bucket is "<= le"
        total_ms = sum(ms for ms in samples_ms if ms > 0)
        with self._lock:
            counts = self._counts
            for slot in slots:
                counts[slot] += weight
            self._sum_s += total_ms * weight / 1000

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, sum_s = list(self._counts), self._sum_s
        buckets, running = [], 0
        for bound, n in zip((*map(floatToGoString, self._bounds), "+Inf"), counts, strict=True):
            running += n
            buckets.append((bound, running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=sum_s)


class Labelled:
    """A collector: the metrics of ``registry`` with ``labels`` added to every series, and without
    the ``_created`` series. Done here, at scrape time, so that nothing depends on when
    ``prometheus_client`` was imported or on its process-wide switch (``disable_created_metrics``)."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.registry, self.labels = registry, dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            created = metric.name + "_created"
            labelled = copy.copy(metric)
            labelled.samples = [s._replace(labels={**self.labels, **s.labels})
                                for s in metric.samples if s.name != created]
            yield labelled


def instance_id(group_instance_id: str | None, process_index: str | None, host: str | None = None,
                pid: int | None = None) -> str:
    """This process's ``instance_id`` label: its ``--group-instance-id`` when given (a child of
    ``--processes`` gets its own, ending ``-pN``), else the host with the child's index (stable
    across restarts), else the host and pid."""
    if group_instance_id:
        return group_instance_id
    host = host or socket.gethostname()
    if process_index is not None:
        return f"{host}-p{process_index}"
    return f"{host}-{os.getpid() if pid is None else pid}"


def build_labels(client: str = KAFKA_CLIENT) -> dict[str, str]:
    """``client``: the Kafka client's distribution name (kafka-python, confluent-kafka)."""
    try:
        client_version = metadata.version(client)
    except metadata.PackageNotFoundError:
        client_version = "unknown"
    return {"version": loginpipe.__version__, "python": platform.python_version(),
            "kafka_client": client, "kafka_client_version": client_version}


class Exporter:
    """The pipeline's Prometheus metrics and the HTTP server that serves them. ``registry`` is
    what is served: the pipeline's own metrics, labelled with ``group`` and ``instance_id``
    (``instance``, default: ``instance_id(None, None)``), and the process, platform and GC
    collectors."""

    def __init__(self, lag: Callable[[], float], tracked_users: Callable[[], float],
                 tracked_devices: Callable[[], float], in_flight: Callable[[], float] = lambda: 0,
                 not_writing: Callable[[], float] = lambda: 0,
                 replacements: Callable[[], float] = lambda: 0,
                 restoring: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 group: str = "", instance: str | None = None, client: str = KAFKA_CLIENT) -> None:
        own = self._own = CollectorRegistry()
        self.registry = CollectorRegistry()
        labels = {"group": group, "instance_id": instance or instance_id(None, None)}
        self.registry.register(Labelled(own, labels))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r, ns = own, NAMESPACE
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
        self.end_to_end = WeightedHistogram(
            f"{ns}_end_to_end_latency_seconds", "Seconds from an input record's timestamp (set by its "
            "producer) to its output handed to the producer by the device step, i.e. observed at "
            "processing, before the broker acknowledges it (with exactly-once, read_committed readers "
            "see it only once its transaction commits). Processed records only; sampled per batch, "
            "each sample weighted by the records it stands for.", E2E_BUCKETS)
        r.register(self.end_to_end)
        self.transactions = Counter("transactions", "Exactly-once transactions, by outcome "
                                    "(committed, aborted).", ["outcome"], namespace=ns, registry=r)
        self.transaction_records = Counter("transaction_records", "Outputs written in committed "
                                           "transactions.", namespace=ns, registry=r)
        self.transaction_seconds = Histogram("transaction_commit_seconds", "Time to commit a "
                                             "transaction (offsets added, outputs flushed, committed).",
                                             namespace=ns, registry=r, buckets=BATCH_SECONDS_BUCKETS)
        build = build_labels(client)
        Gauge("build_info", "Always 1; the labels say what runs.", list(build), namespace=ns,
              registry=r).labels(**build).set(1)
        self._gauges(r, lag, tracked_users, tracked_devices, in_flight, not_writing, replacements, restoring)
        for reason in FILTER_REASONS:  # every series exists from the start, at 0
            self.filtered.labels(reason)
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome)
        self._server = None

    @staticmethod
    def _gauges(r: CollectorRegistry, lag: Callable[[], float], tracked_users: Callable[[], float],
                tracked_devices: Callable[[], float], in_flight: Callable[[], float],
                not_writing: Callable[[], float], replacements: Callable[[], float],
                restoring: Callable[[], tuple[int, int]]) -> None:
        """The gauges, read at scrape time."""
        ns = NAMESPACE
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

    def record(self, result: BatchResult, processing_s: float, e2e_ms: Sequence[float] = (),
               e2e_weight: int = 1) -> None:
        """Time one processed batch; ``e2e_ms`` are sampled records' end-to-end latencies, each
        standing for ``e2e_weight`` records."""
        self.batch_seconds.observe(processing_s)
        self.batch_size.observe(result.consumed)
        self.end_to_end.observe_ms(e2e_ms, e2e_weight)

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
        """Serve /metrics on ``port`` (0: any free one, see ``port``) in a daemon thread; a taken
        port is a UserError."""
        try:
            self._server, _ = start_http_server(port, address, registry=self.registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {address}:{port}: {exc.strerror}") from None

    @property
    def port(self) -> int | None:
        """The port served on, once ``serve`` ran."""
        return self._server.server_port if self._server else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
