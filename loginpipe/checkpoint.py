"""Committing input offsets only once the outputs derived from them are acknowledged.

One Checkpointer per worker (per KafkaConsumer). Each processed batch is tracked with the
offsets it covers and the futures of its outputs. Every ``every_records`` records or
``interval_s`` seconds, the longest prefix of fully acknowledged batches is committed;
failed deliveries are re-sent first. On a rebalance or at shutdown, ``commit_all`` waits for
every pending output, then commits. A crash between a send and its commit means the batch is
consumed again: duplicates are possible, loss is not (at-least-once).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loginpipe.delivery import Sender
from loginpipe.route import OutputRecord

MAX_PENDING_RECORDS = 20_000  # past this the poll loop waits for acknowledgements (backpressure)


@dataclass
class _Pending:
    offsets: dict  # TopicPartition -> next offset to read
    records: Sequence[OutputRecord]
    futures: list
    count: int


class Checkpointer:
    """One worker's pending batches and the offsets they may commit once delivered."""

    def __init__(self, consumer, sender: Sender, every_records: int, interval_s: float,
                 warn: Callable[[str], None], on_resend: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.sender = sender
        self.every_records = every_records
        self.interval_s = interval_s
        self.warn = warn
        self.on_resend = on_resend
        self.clock = clock
        self._pending: deque[_Pending] = deque()
        self._pending_count = 0
        self._since_commit = 0
        self._last_commit = clock()
        self._acked_offsets: dict = {}  # acknowledged, not yet committed
        self.committed: dict = {}  # last offsets committed, per TopicPartition

    def track(self, offsets: dict, records: Sequence[OutputRecord], futures: list, count: int) -> None:
        """Register one processed batch: ``offsets`` are committable once ``futures`` succeed."""
        self._pending.append(_Pending(offsets, records, futures, count))
        self._pending_count += count
        self._since_commit += count

    def maybe_commit(self) -> None:
        """Commit the acknowledged prefix if a checkpoint is due; never waits unless backlogged."""
        due = (self._since_commit >= self.every_records
               or self.clock() - self._last_commit >= self.interval_s)
        if self._pending_count > MAX_PENDING_RECORDS:
            self.sender.flush(timeout_s=1.0)
            due = True
        if due:
            self._collect_acknowledged()
            self._commit()

    def commit_all(self, timeout_s: float = 30.0) -> bool:
        """Wait for every pending output, then commit. False if some were still unacknowledged."""
        self.drain(timeout_s)
        self._commit()
        return not self._pending

    def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` until every pending output is acknowledged."""
        deadline = self.clock() + timeout_s
        while self._pending and self.clock() < deadline:
            self.sender.flush(timeout_s=max(0.1, min(5.0, deadline - self.clock())))
            self._collect_acknowledged()
        if self._pending:
            self.warn(f"{self._pending_count:,} outputs still unacknowledged; their input offsets "
                      "stay uncommitted and will be consumed again")

    def committable(self) -> dict:
        """Acknowledged, not yet committed offsets, in the form KafkaConsumer.commit takes."""
        from kafka.structs import OffsetAndMetadata

        return {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._acked_offsets.items()}

    def mark_committed(self, offsets: dict) -> None:
        """Record that ``offsets`` (from ``committable``) were committed by some other path."""
        for tp, meta in offsets.items():
            self.committed[tp] = meta.offset
            if self._acked_offsets.get(tp) == meta.offset:
                del self._acked_offsets[tp]

    def forget(self, partitions) -> None:
        """Drop state for partitions this consumer no longer owns (after a rebalance)."""
        gone = set(partitions)
        for tp in gone:
            self._acked_offsets.pop(tp, None)
            self.committed.pop(tp, None)

    @property
    def pending_records(self) -> int:
        return self._pending_count

    def _collect_acknowledged(self) -> None:
        while self._pending:
            batch = self._pending[0]
            acked, resent = self.sender.settle(batch.records, batch.futures)
            if resent:
                self.on_resend(resent)
            if not acked:
                return
            self._pending.popleft()
            self._pending_count -= batch.count
            self._acked_offsets.update(batch.offsets)

    def _commit(self) -> None:
        from kafka.errors import CommitFailedError, KafkaError

        offsets = self.committable()
        if not offsets:
            if not self._pending:
                self._restart_interval()
            return  # still due: the next loop commits as soon as something is acknowledged
        try:
            self.consumer.commit(offsets)
        except CommitFailedError:
            # The group moved on (this member was rebalanced out): the new owner of these
            # partitions starts from the last committed offsets, so records are repeated, not lost.
            self.warn("commit rejected after a rebalance; the new owner will re-read those records")
            self._acked_offsets.clear()
            return
        except KafkaError as exc:
            self.warn(f"commit failed ({exc!r}); will retry")
            return
        self.mark_committed(offsets)
        self._restart_interval()

    def _restart_interval(self) -> None:
        self._last_commit = self.clock()
        self._since_commit = 0
