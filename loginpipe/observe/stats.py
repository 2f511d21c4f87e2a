"""Throughput, latency, CPU, memory and lag, recorded per batch; printed as one line, and
taken as a dict for the metrics topic (each of those two readers has its own window).

Nothing here blocks: psutil's CPU figure is the non-blocking ``cpu_percent(interval=None)``
(the share since the previous call), and process readings are cached for half a second so a
line every 100 messages at tens of thousands of messages a second costs next to nothing.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import psutil

from loginpipe.core.batch import BatchResult
from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS

MAX_SAMPLES = 50_000  # latency samples kept per stats interval
MIN_RATE_SPAN_S = 0.2


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


def weighted_percentile(samples: list[tuple[float, int]], q: float) -> float:
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
    """Batches seen since a reader last took them: stats lines and the metrics topic each have one."""

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
        # Two batches landing milliseconds apart would make a meaningless rate.
        return max(now - self.start, MIN_RATE_SPAN_S)


class Stats:
    """Counts and latencies from every worker; one lock acquisition per batch."""

    def __init__(self, stats_every: int = 100, interval_s: float = 0.0, out: TextIO | None = None,
                 sampler: ProcessSampler | None = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True, metrics: bool = False) -> None:
        self.stats_every = stats_every
        self.interval_s = interval_s
        self.out = out or sys.stdout
        self.sampler = sampler or ProcessSampler()
        self.clock = clock
        self.enabled = enabled
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
        self._window = Window(self.started)  # for stats lines
        self._metrics = Window(self.started) if metrics else None  # for metrics()
        self._next_line_at = stats_every

    def record(self, result: BatchResult, processing_s: float, e2e_ms: list[float],
               e2e_weight: int = 1) -> None:
        """Add one batch as read and processed (its counts wait for ``acknowledge``); print a line
        when ``stats_every`` messages have passed. ``e2e_ms`` are sampled records' latencies, each
        standing for ``e2e_weight`` records."""
        now = self.clock()
        with self._lock:
            if self.first_batch_at is None:
                self.first_batch_at = now - processing_s
                # "now" rates leave out the group join
                self._window.start = self.first_batch_at
                if self._metrics:
                    self._metrics.start = self.first_batch_at
            self.read += result.consumed
            self.last_record_at = now
            if self.enabled:  # --quiet keeps no samples for lines
                self._window.add(result.consumed, processing_s, e2e_ms, e2e_weight)
            if self._metrics:
                self._metrics.add(result.consumed, processing_s, e2e_ms, e2e_weight)
            due = self.enabled and self.interval_s <= 0 and self.read >= self._next_line_at
            if due:
                line = self._line(now)
                self._next_line_at = (self.read // self.stats_every + 1) * self.stats_every
        if due:
            print(line, file=self.out, flush=True)

    def acknowledge(self, result: BatchResult) -> None:
        """Count a batch whose every output the broker has acknowledged: only now is it processed,
        filtered or dead-lettered in the totals (and in the stats line, summaries and metrics)."""
        with self._lock:
            self.totals.add(result)

    @property
    def in_flight(self) -> int:
        """Records read whose outputs are not all acknowledged yet."""
        return self.read - self.totals.consumed

    def tick(self) -> None:
        """Print a line if ``interval_s`` has passed (time-based mode); called by the main thread."""
        if not self.enabled or self.interval_s <= 0:
            return
        now = self.clock()
        with self._lock:
            if now - self._window.start < self.interval_s:
                return
            line = self._line(now)
        print(line, file=self.out, flush=True)

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

    def _line(self, now: float) -> str:
        """Format the current line and start a new interval; the caller holds the lock."""
        t, window = self.totals, self._window
        span = window.span(now)
        overall = self.read / max(now - self.started, 1e-9)
        proc_total = sum(w for _, w in window.proc) or 1
        proc_avg_ms = 1000 * sum(s * w for s, w in window.proc) / proc_total
        proc_p99_ms = 1000 * weighted_percentile(window.proc, 0.99)
        e2e_p99 = weighted_percentile(window.e2e, 0.99)
        cpu, rss, mem = self.sampler.read()
        line = (f"[stats] {self.read:,} msgs | {window.consumed / span:,.0f} msg/s now, "
                f"{overall:,.0f} avg | latency avg {proc_avg_ms:.2f} ms p99 {proc_p99_ms:.2f} ms, "
                f"e2e p99 {e2e_p99:,.0f} ms | cpu {cpu:.0f}% rss {rss / 2**20:,.0f} MiB mem {mem:.0f}% | "
                f"processed {t.processed:,} filtered {t.filtered:,} dlq {t.dead_lettered:,} "
                f"in flight {self.read - t.consumed:,} | published {t.published:,} | lag {self.lag():,}")
        if t.transactions_committed or t.transactions_aborted:
            line += f" | txn {t.transactions_committed:,} ok {t.transactions_aborted:,} aborted"
        if self.not_writing_s:
            line += f" | not writing for {self.not_writing_s:.0f}s"
        restored, to_restore = self.restoring()
        if to_restore:
            line += f" | restoring state: {restored:,} of {to_restore:,} records"
        self._window = Window(now)
        return line

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
