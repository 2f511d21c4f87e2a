"""Committing input offsets only once the outputs derived from them are acknowledged.

One Checkpointer per worker (per KafkaConsumer). It sends each processed batch's outputs and
keeps the batch, in order, until the broker has acknowledged every one of them; only then do the
batch's counts reach the stats (``on_acked``) and its offsets become committable. Every
``every_records`` records or ``interval_s`` seconds the acknowledged prefix is committed. On a
rebalance or at shutdown, ``commit_all`` waits (up to a deadline) for what is pending, then commits.
A crash between a send and its commit means the batch is consumed again: duplicates are
possible, loss is not (at-least-once).

A failed delivery replaces the shared producer (``Sender.replace``); outputs sent by an older
producer and not acknowledged are sent again, in order, before anything new.

Memory is bounded by ``over_limit``: past ``max_records`` unacknowledged outputs (or
``max_bytes`` of them) the worker pauses its partitions until half of them are acknowledged.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loginpipe.core.records import OutputRecord
from loginpipe.kafka.base import (
    ClientError,
    CommitRejected,
    Consumer,
    NotAuthorized,
    NotQueued,
    is_authorization_failure,
)
from loginpipe.runtime.delivery import Sender

# Per worker. 20,000 outputs of ~0.9 kB are ~18 MB of values, plus the records the producer holds.
MAX_PENDING_RECORDS = 20_000
MAX_PENDING_BYTES = 32 * 2**20
# A commit while the broker is away would otherwise block for the consumer's request timeout
# (30 s); the loop has acknowledgements to collect and a stop to notice in the meantime.
COMMIT_TIMEOUT_S = 5.0


@dataclass
class _Pending:
    offsets: dict  # TopicPartition -> next offset to read
    records: Sequence[OutputRecord]
    futures: list
    counts: object  # what on_acked receives once every output is acknowledged (a BatchResult)
    consumed: int
    size: int  # bytes of keys and values
    generation: int  # the producer generation that sent the futures
    acked: int = 0  # futures[:acked] are acknowledged


def _size(records: Sequence[OutputRecord]) -> int:
    return sum(len(r.value or b"") + len(r.key or b"") for r in records)


class Checkpointer:
    """One worker's pending batches and the offsets they may commit once delivered."""

    def __init__(self, consumer: Consumer, sender: Sender, every_records: int, interval_s: float,
                 warn: Callable[[str], None], on_acked: Callable[[object], None] = lambda counts: None,
                 on_resend: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.monotonic,
                 max_records: int = MAX_PENDING_RECORDS, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.consumer = consumer
        self.sender = sender
        self.every_records = every_records
        self.interval_s = interval_s
        self.warn = warn
        self.on_acked = on_acked
        self.on_resend = on_resend
        self.clock = clock
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._pending: deque[_Pending] = deque()
        self._pending_count = 0
        self._pending_bytes = 0
        self._since_commit = 0
        self._last_commit = clock()
        self._progress_at = clock()  # last acknowledgement, or when the queue last became non-empty
        self._generation = sender.generation  # the newest producer generation this worker knows
        self._acked_offsets: dict = {}  # acknowledged, not yet committed
        self.committed: dict = {}  # last offsets committed, per TopicPartition

    def send(self, offsets: dict, records: Sequence[OutputRecord], counts: object, consumed: int) -> None:
        """Send one processed batch's outputs; ``offsets`` are committable once they all succeed."""
        self.collect()  # older outputs first: a replaced producer's leftovers go out before these
        generation = self.sender.generation  # read before sending: a race re-sends, never skips
        futures = self.sender.send_all(records)
        if not self._pending:
            self._progress_at = self.clock()
        size = _size(records)
        self._pending.append(_Pending(offsets, records, futures, counts, consumed, size, generation))
        self._pending_count += consumed
        self._pending_bytes += size
        self._since_commit += consumed

    def collect(self) -> None:
        """Take in acknowledgements (cheap: it looks only at futures not yet seen done)."""
        if self.sender.generation != self._generation:
            self._resend_stale()
        pending = self._pending
        while pending:
            batch = pending[0]
            futures, n = batch.futures, len(batch.futures)
            while batch.acked < n:
                future = futures[batch.acked]
                if not future.is_done:
                    return
                if future.exception is not None:
                    self._failed(batch, future.exception)
                    return
                batch.acked += 1
            pending.popleft()
            self._pending_count -= batch.consumed
            self._pending_bytes -= batch.size
            self._acked_offsets.update(batch.offsets)
            self._progress_at = self.clock()
            self.on_acked(batch.counts)

    def maybe_commit(self) -> None:
        """Commit the acknowledged prefix if a checkpoint is due; never waits."""
        if self._since_commit >= self.every_records or self.clock() - self._last_commit >= self.interval_s:
            self.collect()
            self._commit()

    def commit_all(self, deadline: float) -> bool:
        """Wait until ``deadline`` (clock time) for every pending output, then commit. False if
        some were still unacknowledged."""
        self.drain(deadline)
        self._commit(timeout_s=min(COMMIT_TIMEOUT_S, max(0.5, deadline - self.clock())))
        return not self._pending

    def drain(self, deadline: float) -> None:
        """Wait until ``deadline`` until every pending output is acknowledged."""
        self.collect()
        while self._pending and self.clock() < deadline:
            self.sender.flush(timeout_s=max(0.05, min(1.0, deadline - self.clock())))
            self.collect()

    @property
    def over_limit(self) -> bool:
        """True when so much is unacknowledged that the worker must stop reading."""
        return self._pending_count > self.max_records or self._pending_bytes > self.max_bytes

    @property
    def below_resume(self) -> bool:
        """True when enough was acknowledged to read again (half the limits: no flapping)."""
        return self._pending_count <= self.max_records // 2 and self._pending_bytes <= self.max_bytes // 2

    def stalled_for(self) -> float:
        """Seconds since an output was last acknowledged while some are pending; 0 when none are."""
        return self.clock() - self._progress_at if self._pending else 0.0

    def committable(self) -> dict:
        """Acknowledged, not yet committed offsets: partition -> next offset to read."""
        return dict(self._acked_offsets)

    def mark_committed(self, offsets: dict) -> None:
        """Record that ``offsets`` (from ``committable``) were committed by some other path."""
        for tp, offset in offsets.items():
            self.committed[tp] = offset
            if self._acked_offsets.get(tp) == offset:
                del self._acked_offsets[tp]

    def forget(self, partitions) -> None:
        """Drop offsets of partitions this consumer no longer owns (after a rebalance): their new
        owner commits them. Pending outputs are still delivered and counted."""
        gone = set(partitions)
        for tp in gone:
            self._acked_offsets.pop(tp, None)
            self.committed.pop(tp, None)
        for batch in self._pending:
            for tp in gone & batch.offsets.keys():
                del batch.offsets[tp]

    def acknowledged_position(self, tp) -> int | None:
        """The next offset of ``tp`` after everything acknowledged, if known."""
        return self._acked_offsets.get(tp, self.committed.get(tp))

    @property
    def pending_records(self) -> int:
        return self._pending_count

    def _failed(self, batch: _Pending, exc: BaseException) -> None:
        """A delivery failed: replace the producer (once for all workers), then send again every
        output that failed or that an older producer holds, in order."""
        if is_authorization_failure(exc):  # a missing ACL: another producer would be refused too
            raise NotAuthorized(f"writing to {batch.records[batch.acked].topic} was refused ({exc})")
        if not isinstance(exc, NotQueued):  # a producer that cannot queue is slow, not broken
            self.sender.replace(batch.generation, repr(exc))
        self.warn(f"delivery to {batch.records[batch.acked].topic} failed ({exc!r}); re-sending")
        self._resend_stale()

    def _resend_stale(self) -> None:
        """Send again, in order, every pending output that failed or that a replaced producer
        did not get acknowledged."""
        self._generation = generation = self.sender.generation
        resent = 0
        for batch in self._pending:
            futures, records, stale = batch.futures, batch.records, batch.generation != generation
            again = [i for i in range(batch.acked, len(futures))
                     if futures[i].failed() or (stale and not futures[i].succeeded())]
            if again:
                new = self.sender.send_all([records[i] for i in again])
                for i, future in zip(again, new, strict=True):
                    futures[i] = future
                resent += len(again)
            batch.generation = generation
        if resent:
            self.on_resend(resent)

    def _commit(self, timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        offsets = self.committable()
        if not offsets:
            if not self._pending:
                self._restart_interval()
            return  # still due: the next loop commits as soon as something is acknowledged
        try:
            self.consumer.commit(offsets, timeout_s)
        except CommitRejected:
            # The group moved on (this member was rebalanced out): the new owner of these
            # partitions starts from the last committed offsets, so records are repeated, not lost.
            self.warn("commit rejected after a rebalance; the new owner will re-read those records")
            self._acked_offsets.clear()
            return
        except ClientError as exc:
            self.warn(f"commit failed ({exc!r}); will retry")
            return
        self.mark_committed(offsets)
        self._restart_interval()

    def _restart_interval(self) -> None:
        self._last_commit = self.clock()
        self._since_commit = 0
