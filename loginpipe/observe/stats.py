"""Throughput, latency, CPU, memory and lag, recorded per batch; shown as a live block on a
terminal or as compact lines elsewhere (observe/terminal.py), and taken as a dict for the metrics
topic (each of those readers has its own window).

What a person reads ("now", latency avg and p99, e2e p99) is over a sliding window of the last
``RECENT_S`` seconds of real time: the rate is the records of the batches in the window divided by
the time the window covers, never stretched, and a percentile always has the window's batches to
work on, however often it is shown.

Nothing here blocks: psutil's CPU figure is the non-blocking ``cpu_percent(interval=None)``
(the share since the previous call), and process readings are cached for half a second so a
snapshot every 100 messages at tens of thousands of messages a second costs next to nothing.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import psutil

from loginpipe.core.batch import BatchResult
from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS

MAX_SAMPLES = 50_000  # latency samples kept per metrics interval
RECENT_S = 5.0  # "now": the rate and the latencies of the last five seconds
# The sliding window's bound: at most this many batches, each with at most E2E_KEPT end-to-end
# samples (about 2,048 x 0.6 KB = 1.3 MB at worst). Past it the oldest batches leave early and
# the window covers less time, which the rate accounts for.
MAX_RECENT_BATCHES = 2048
E2E_KEPT = 16
# Sorting the window for the percentiles is the one cost that grows with it: done at most this
# often; the counts and the rate are kept up to date with every batch.
PERCENTILES_EVERY_S = 0.25
IDLE_REFRESH_S = 1.0  # a live block is refreshed this often even when no record arrives


class ProcessSampler:
    """CPU %, RSS and system memory % of this process, refreshed at most every ``max_age_s``."""

    def __init__(self, max_age_s: float = 0.5) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(interval=None)  # primes the counter; the first reading is 0.0
        self._max_age_s = max_age_s
        self._at = 0.0
        self._reading = (0.0, 0, 0.0)

    def read(self) -> tuple[float, int, float]:
        """(cpu_percent, rss_bytes, system_memory_percent)."""
        now = time.monotonic()
        if now - self._at >= self._max_age_s:
            self._at = now
            self._reading = (self._process.cpu_percent(interval=None),
                             self._process.memory_info().rss,
                             psutil.virtual_memory().percent)
        return self._reading


@dataclass
class Totals:
    consumed: int = 0
    processed: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    reasons: Counter = field(default_factory=Counter)
    resent: int = 0
    risk_levels: Counter = field(default_factory=Counter)
    published: int = 0  # processed records written by the device step (this process's)
    # exactly-once: transactions, the outputs of the committed ones, and their commit time
    transactions_committed: int = 0
    transactions_aborted: int = 0
    transaction_records: int = 0
    transaction_seconds: float = 0.0

    def add(self, result: BatchResult) -> None:
        self.consumed += result.consumed
        self.published += result.published
        self.processed += result.processed
        self.filtered += result.filtered
        self.dead_lettered += result.dead_lettered
        self.reasons.update(result.reasons)
        self.risk_levels.update(result.risk_levels)

    def copy(self) -> Totals:
        return dataclasses.replace(self, reasons=Counter(self.reasons), risk_levels=Counter(self.risk_levels))

    def transactions(self) -> str:
        """'12 committed (5,000 outputs, 80 ms on average), 1 aborted'; '' when none ran."""
        if not (self.transactions_committed or self.transactions_aborted):
            return ""
        n = max(1, self.transactions_committed)
        return (f"{self.transactions_committed:,} committed ({self.transaction_records / n:,.0f} outputs, "
                f"{1000 * self.transaction_seconds / n:,.0f} ms on average), "
                f"{self.transactions_aborted:,} aborted")


def weighted_percentile(samples: Sequence[tuple[float, int]], q: float) -> float:
    """The ``q`` quantile (0..1) of values given as (value, weight) pairs."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    target = q * sum(weight for _, weight in ordered)
    running = 0
    for value, weight in ordered:
        running += weight
        if running >= target:
            return value
    return ordered[-1][0]


class Window:
    """Batches seen since the metrics topic last took them."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.consumed = 0
        self.proc: list[tuple[float, int]] = []  # (batch processing seconds, records in it)
        # (ms from record timestamp to processed, records it stands for): records are sampled
        # per batch, so a sample of a big batch weighs more than one of a small batch.
        self.e2e: list[tuple[float, int]] = []

    def add(self, consumed: int, processing_s: float, e2e_ms: list[float], weight: int = 1) -> None:
        self.consumed += consumed
        self.proc.append((processing_s, consumed))
        self.e2e.extend([(ms, weight) for ms in e2e_ms])
        if len(self.e2e) > MAX_SAMPLES:  # a long interval must not grow without end
            del self.e2e[:-MAX_SAMPLES], self.proc[:-MAX_SAMPLES]

    def span(self, now: float) -> float:
        return max(now - self.start, 1e-9)


@dataclass(frozen=True, slots=True)
class Batch:
    at: float  # when it was polled (the stats clock): its records arrived since the previous poll
    records: int
    counted: int  # its records in the rate: all but the first batch's (which has no previous poll)
    processing_s: float
    e2e_ms: tuple[float, ...]  # sampled records' end-to-end latencies
    e2e_weight: int  # records each sample stands for


class Recent:
    """The batches of the last ``span_s`` seconds: the rate over the real time they cover, and
    the processing and end-to-end latencies of their records.

    A batch holds the records that arrived between the previous poll and its own, so the batches
    in the window account for the time since the poll before the oldest of them (``_before``).
    When that is before the window's start, the oldest batch is counted for the share of its
    interval inside the window; the first batch ever only marks where counting starts."""

    def __init__(self, span_s: float = RECENT_S, max_batches: int = MAX_RECENT_BATCHES) -> None:
        self.span_s = span_s
        self.max_batches = max_batches
        self._batches: deque[Batch] = deque()
        self._records = 0  # in the window, for the per-record latency average
        self._counted = 0  # in the window, for the rate
        self._busy = 0.0  # sum of processing seconds x records: the per-record average's numerator
        self._before: float | None = None  # the poll before the window's oldest batch
        self._percentiles: tuple[float | None, float | None] = (None, None)
        self._percentiles_at = -math.inf

    def add(self, done: float, records: int, processing_s: float, e2e_ms: Sequence[float],
            e2e_weight: int = 1) -> None:
        """A batch whose processing ended at ``done`` after ``processing_s``."""
        at = done - processing_s
        counted = records
        if self._before is None:
            self._before, counted = at, 0
        if len(e2e_ms) > E2E_KEPT:  # fewer samples of a big batch, each standing for more records
            step = math.ceil(len(e2e_ms) / E2E_KEPT)
            e2e_ms, e2e_weight = e2e_ms[::step], e2e_weight * step
        self._batches.append(Batch(at, records, counted, processing_s, tuple(e2e_ms), e2e_weight))
        self._records += records
        self._counted += counted
        self._busy += processing_s * records
        if len(self._batches) > self.max_batches:
            self._drop()

    def _drop(self) -> None:
        batch = self._batches.popleft()
        self._records -= batch.records
        self._counted -= batch.counted
        self._busy -= batch.processing_s * batch.records
        self._before = batch.at

    def expire(self, now: float) -> None:
        horizon = now - self.span_s
        while self._batches and self._batches[0].at <= horizon:
            self._drop()

    def rate(self, now: float) -> float | None:
        """Records per second over the real time the window covers (None before the second batch:
        the first only marks where counting starts)."""
        self.expire(now)
        if self._before is None or (len(self._batches) == 1 and not self._counted):
            return None
        horizon = now - self.span_s
        start, counted = self._before, float(self._counted)
        if start < horizon:
            if self._batches:  # the oldest batch's records arrived over (start, its poll]
                oldest = self._batches[0]
                counted -= oldest.counted * (horizon - start) / (oldest.at - start)
            start = horizon
        covered = now - start
        return counted / covered if covered > 0 else 0.0

    def latency_avg_ms(self, now: float) -> float | None:
        """Processing time of a record's batch, averaged per record (None: no record in the window)."""
        self.expire(now)
        return 1000 * max(0.0, self._busy) / self._records if self._records else None

    def percentiles(self, now: float) -> tuple[float | None, float | None]:
        """(processing p99 ms, end-to-end p99 ms) over the window, weighted per record, None
        without samples (end to end is measured at the device step only); recomputed at most
        every ``PERCENTILES_EVERY_S``."""
        self.expire(now)
        if now - self._percentiles_at >= PERCENTILES_EVERY_S:
            self._percentiles_at = now
            batches = list(self._batches)
            proc = [(b.processing_s, b.records) for b in batches if b.records]
            e2e = [(ms, b.e2e_weight) for b in batches for ms in b.e2e_ms]
            self._percentiles = (1000 * weighted_percentile(proc, 0.99) if proc else None,
                                 weighted_percentile(e2e, 0.99) if e2e else None)
        return self._percentiles


@dataclass(frozen=True)
class Snapshot:
    """What the terminal view and the compact lines show, taken at one moment."""

    time: float  # wall clock (epoch seconds), for the lines' timestamps
    elapsed_s: float  # since the stats began
    read: int  # records read (acknowledged or not)
    rate_now: float | None  # records per second over the last RECENT_S seconds (None: no basis yet)
    rate_avg: float  # since the start
    # None: nothing to measure in the window (no record; no record at the device step for e2e)
    latency_avg_ms: float | None  # batch processing time, per record, over the window
    latency_p99_ms: float | None
    e2e_p99_ms: float | None  # record timestamp to processed, over the window
    cpu_percent: float  # this process; 100 = one core
    rss_bytes: int
    memory_percent: float  # the machine's memory in use
    processed: int  # acknowledged
    filtered: int
    dead_lettered: int
    in_flight: int  # read, outputs not all acknowledged
    published: int
    lag: int
    exactly_once: bool = False
    transactions_committed: int = 0
    transactions_aborted: int = 0
    not_writing_s: float = 0.0
    restored: int = 0  # state restore under way: changelog records applied
    to_restore: int = 0  # of this many (0: no restore under way)


class View(Protocol):
    """Where snapshots go: a live block on a terminal, or lines (observe/terminal.py)."""

    live: bool  # a block redrawn in place (it wants a refresh while idle) rather than lines

    def show(self, snapshot: Snapshot) -> None: ...


class Stats:
    """Counts and latencies from every worker; one lock acquisition per batch."""

    def __init__(self, stats_every: int = 100, interval_s: float = 0.0, out: TextIO | None = None,
                 sampler: ProcessSampler | None = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True, metrics: bool = False, view: View | None = None,
                 wall: Callable[[], float] = time.time, exactly_once: bool = False) -> None:
        self.stats_every = stats_every
        self.interval_s = interval_s
        if view is None and enabled:
            from loginpipe.observe.terminal import LineView  # the terminal module needs this one

            view = LineView(out or sys.stdout)
        self.view = view
        self.sampler = sampler or ProcessSampler()
        self.clock = clock
        self.wall = wall
        self.enabled = enabled
        self.exactly_once = exactly_once
        self.totals = Totals()  # acknowledged: consumed == processed + filtered + dead_lettered
        self.read = 0  # records read, acknowledged or not
        self.not_writing_s = 0.0  # set by the supervisor: no acknowledgement for this long
        self.producer_replacements = 0  # set by the supervisor
        # (changelog records applied, to apply) of the state restores under way: set by the app
        self.restoring: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.started = clock()
        self.first_batch_at: float | None = None  # when the first batch arrived (before processing)
        self.last_record_at: float | None = None  # when the last batch was done
        self._lock = threading.Lock()
        self._lag: dict[str, int] = {}
        self._recent = Recent()  # for the view
        self._metrics = Window(self.started) if metrics else None  # for metrics()
        self._next_show_at = stats_every
        self._shown_at = self.started  # the last snapshot shown (time-based mode and idle refresh)

    def record(self, result: BatchResult, processing_s: float, e2e_ms: list[float],
               e2e_weight: int = 1) -> None:
        """Add one batch as read and processed (its counts wait for ``acknowledge``); show a
        snapshot when ``stats_every`` messages have passed. ``e2e_ms`` are sampled records'
        latencies, each standing for ``e2e_weight`` records."""
        now = self.clock()
        snapshot = None
        with self._lock:
            if self.first_batch_at is None:
                self.first_batch_at = now - processing_s
                if self._metrics:  # "now" rates leave out the group join
                    self._metrics.start = self.first_batch_at
                if self.interval_s > 0:
                    self._shown_at = self.first_batch_at
            self.read += result.consumed
            self.last_record_at = now
            if self.enabled:  # --quiet keeps no samples for the view
                self._recent.add(now, result.consumed, processing_s, e2e_ms, e2e_weight)
            if self._metrics:
                self._metrics.add(result.consumed, processing_s, e2e_ms, e2e_weight)
            if self.enabled and self.interval_s <= 0 and self.read >= self._next_show_at:
                snapshot = self._snapshot(now)
                self._next_show_at = (self.read // self.stats_every + 1) * self.stats_every
        if snapshot is not None:
            self.view.show(snapshot)

    def acknowledge(self, result: BatchResult) -> None:
        """Count a batch whose every output the broker has acknowledged: only now is it processed,
        filtered or dead-lettered in the totals (and in the view, summaries and metrics)."""
        with self._lock:
            self.totals.add(result)

    @property
    def in_flight(self) -> int:
        """Records read whose outputs are not all acknowledged yet."""
        return self.read - self.totals.consumed

    def tick(self) -> None:
        """Show a snapshot if ``interval_s`` has passed (time-based mode), or refresh a live block
        that nothing refreshed for ``IDLE_REFRESH_S`` (its rate falls to 0 when records stop, and
        "not writing" counts up); called by the main thread."""
        if not self.enabled:
            return
        now = self.clock()
        with self._lock:
            every = self.interval_s if self.interval_s > 0 else IDLE_REFRESH_S if self.view.live else 0.0
            if not every or now - self._shown_at < every:
                return
            snapshot = self._snapshot(now)
        self.view.show(snapshot)

    def final(self) -> None:
        """Show the last state (a live block's final frame, before the summary)."""
        if self.enabled and self.view.live:
            with self._lock:
                snapshot = self._snapshot(self.clock())
            self.view.show(snapshot)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot(self.clock())

    def totals_copy(self) -> Totals:
        with self._lock:
            return self.totals.copy()

    def metrics(self) -> dict:
        """The pipeline's health since the previous call, for the metrics topic; starts a new window."""
        now = self.clock()
        with self._lock:
            window, t = self._metrics or Window(now), self.totals
            if self._metrics:
                self._metrics = Window(now)
            totals = (t.consumed, t.processed, t.filtered, t.dead_lettered, t.resent, t.published)
            in_flight = self.read - t.consumed
        span = window.span(now)
        sizes = [n for _, n in window.proc]
        cpu, rss, mem = self.sampler.read()
        consumed, processed, filtered, dead_lettered, resent, published = totals
        return {
            "interval_s": round(span, 3),
            "messages_per_second": round(window.consumed / span, 1),
            "consumed_total": consumed,
            "processed_total": processed,
            "filtered_total": filtered,
            "dead_lettered_total": dead_lettered,
            "published_total": published,
            "transactions_committed_total": t.transactions_committed,
            "transactions_aborted_total": t.transactions_aborted,
            "transaction_records_avg": round(t.transaction_records / max(1, t.transactions_committed), 1),
            "transaction_ms_avg": round(1000 * t.transaction_seconds / max(1, t.transactions_committed), 1),
            "resent_total": resent,
            "in_flight": in_flight,
            "not_writing_s": round(self.not_writing_s, 1),
            "producer_replacements": self.producer_replacements,
            "consumer_lag": self.lag(),
            "batches": len(sizes),
            "batch_size_avg": round(sum(sizes) / len(sizes), 1) if sizes else 0.0,
            "batch_size_max": max(sizes, default=0),
            "processing_ms_avg": round(1000 * sum(s * n for s, n in window.proc) / max(1, sum(sizes)), 3),
            "processing_ms_p99": round(1000 * weighted_percentile(window.proc, 0.99), 3),
            "end_to_end_ms_p50": round(weighted_percentile(window.e2e, 0.50), 1),
            "end_to_end_ms_p95": round(weighted_percentile(window.e2e, 0.95), 1),
            "end_to_end_ms_p99": round(weighted_percentile(window.e2e, 0.99), 1),
            "end_to_end_ms_max": round(max((ms for ms, _ in window.e2e), default=0.0), 1),
            "restoring_records_done": self.restoring()[0],
            "restoring_records_total": self.restoring()[1],
            "cpu_percent": cpu,
            "rss_bytes": rss,
            "system_memory_percent": mem,
        }

    def transaction(self, committed: bool, records: int, seconds: float) -> None:
        """A transaction ended: committed with ``records`` outputs in ``seconds``, or aborted."""
        with self._lock:
            t = self.totals
            if committed:
                t.transactions_committed += 1
                t.transaction_records += records
                t.transaction_seconds += seconds
            else:
                t.transactions_aborted += 1

    def unread(self, n: int) -> None:
        """Records read in an aborted transaction: they will be read again."""
        with self._lock:
            self.read -= n

    def count_resend(self, n: int) -> None:
        with self._lock:
            self.totals.resent += n

    def set_lag(self, worker: str, lag: int) -> None:
        self._lag[worker] = lag  # one writer per key; a dict store is atomic under the GIL

    def lag(self) -> int:
        return sum(self._lag.values())

    def _snapshot(self, now: float) -> Snapshot:
        """The current state for the view; the caller holds the lock."""
        t, recent = self.totals, self._recent
        self._shown_at = now
        proc_p99, e2e_p99 = recent.percentiles(now)
        cpu, rss, mem = self.sampler.read()
        restored, to_restore = self.restoring()
        return Snapshot(
            time=self.wall(), elapsed_s=now - self.started, read=self.read, rate_now=recent.rate(now),
            rate_avg=self.read / max(now - self.started, 1e-9), latency_avg_ms=recent.latency_avg_ms(now),
            latency_p99_ms=proc_p99, e2e_p99_ms=e2e_p99, cpu_percent=cpu, rss_bytes=rss,
            memory_percent=mem, processed=t.processed, filtered=t.filtered, dead_lettered=t.dead_lettered,
            in_flight=self.read - t.consumed, published=t.published, lag=self.lag(),
            exactly_once=self.exactly_once, transactions_committed=t.transactions_committed,
            transactions_aborted=t.transactions_aborted, not_writing_s=self.not_writing_s,
            restored=restored, to_restore=to_restore)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def busy(self) -> float:
        """Seconds from the first batch's arrival to the end of the last one's processing."""
        if self.first_batch_at is None or self.last_record_at is None:
            return 0.0
        return self.last_record_at - self.first_batch_at


def format_summary(totals: Totals, elapsed_s: float, aggregates: dict, busy_s: float = 0.0,
                   in_flight: int = 0) -> str:
    """The final summary printed when the consumer stops. ``totals`` count acknowledged records;
    ``in_flight`` more were read whose outputs were never acknowledged (they are read again)."""
    def top(pairs: list[tuple[str, int]]) -> str:
        return ", ".join(f"{label} ({count:,})" for label, count in pairs) or "-"

    rate = totals.consumed / elapsed_s if elapsed_s > 0 else 0.0
    def by_count(reasons: dict) -> str:
        return ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])) or "-"

    dead = {r: n for r, n in totals.reasons.items() if r in DEAD_LETTER_REASONS}
    filtered = {r: n for r, n in totals.reasons.items() if r not in DEAD_LETTER_REASONS}
    return "\n".join([
        "=" * 24 + " summary " + "=" * 24,
        f"consumed {totals.consumed:,} in {elapsed_s:,.1f}s ({rate:,.0f} msg/s): "
        f"processed {totals.processed:,}, filtered {totals.filtered:,}, "
        f"dead-lettered {totals.dead_lettered:,}"
        + (f"; {in_flight:,} more read but not acknowledged (uncommitted: read again next start)"
           if in_flight else ""),
        f"top app versions: {top(aggregates['top_app_versions'])}",
        f"top locales:      {top(aggregates['top_locales'])}",
        f"device types:     {top(aggregates['device_types'])}",
        f"multi-IP users: {aggregates['multi_ip_users']:,}   shared devices: {aggregates['shared_devices']:,}"
        f"   (tracking {aggregates['tracked_users']:,} users, {aggregates['tracked_devices']:,} devices)",
        f"filtered by:      {by_count(filtered)}",
        f"dead-lettered by: {by_count(dead)}",
        f"outputs re-sent after a failed delivery: {totals.resent:,}",
        *([f"transactions: {totals.transactions()}"] if totals.transactions() else []),
        f"timing: first record to last processed in {busy_s:.3f}s",
    ])
