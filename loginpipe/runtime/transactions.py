"""Exactly-once: one Kafka transaction per checkpoint, per worker.

In ``--processing-guarantee exactly-once`` mode each worker has its own transactional producer
(``transactional_id`` from the group, the instance and the worker). Between two checkpoints
everything a batch produces goes into the open transaction: processed records, dead letters,
filtered records, changelog and repartition records; at the checkpoint the input offsets join it
(with the consumer's group metadata, so the broker refuses them from a member the group has moved
on from) and it commits. Readers with ``isolation.level=read_committed`` see all of it or none.

Any failure (a send that cannot be queued or fails, a commit refused or not finished in time, a
fenced producer) aborts: the producer is closed and a new one is made with the same id, whose
``init`` aborts the open transaction on the broker (or waits for the commit that was under way).
The worker then rolls back (``on_rollback``): it drops every partition's state, rebuilds it from
the changelogs (which hold committed transactions only) and reads again from the committed
offsets. No change from an aborted transaction survives in memory.

It offers the Checkpointer's interface, so the worker loop is the same in both modes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from loginpipe.core.records import OutputRecord
from loginpipe.kafka.base import (
    ClientError,
    Consumer,
    NotAuthorized,
    TransactionalProducer,
    is_authorization_failure,
)

# A commit waits this long for the broker at most (then the transaction aborts, or, when the
# broker decided already, init of the next producer waits for its outcome).
COMMIT_TIMEOUT_S = 30.0
INIT_TIMEOUT_S = 5.0


def transactional_prefix(group_id: str, instance: str | None) -> str:
    """``<group>-<instance>``: stable with ``--group-instance-id`` (a restarted worker fences the
    producer of its previous life at once); otherwise unique to this start (a dead predecessor's
    open transaction is then aborted by the broker after the transaction timeout)."""
    return f"{group_id}-{instance or 'run-' + uuid.uuid4().hex[:8]}"


class Transactions:
    """One worker's transactions; the interface of ``Checkpointer``."""

    def __init__(self, consumer: Consumer, make_producer: Callable[[], TransactionalProducer],
                 every_records: int, interval_s: float, warn: Callable[[str], None],
                 on_committed: Callable[[object], None], on_rollback: Callable[[int], None],
                 on_transaction: Callable[[bool, int, float], None],
                 clock: Callable[[], float] = time.monotonic, max_records: int = 20_000) -> None:
        self.consumer = consumer
        self.make_producer = make_producer
        self.every_records = every_records
        self.interval_s = interval_s
        self.warn = warn
        self.on_committed = on_committed  # each batch's counts, once its transaction committed
        self.on_rollback = on_rollback  # records read in an aborted transaction: read them again
        self.on_transaction = on_transaction  # (committed, records in it, seconds it took)
        self.clock = clock
        self.max_records = max_records
        self.producer: TransactionalProducer | None = None
        self.committed: dict = {}  # last offsets committed, per TopicPartition
        self._reset()
        self._committing_since: float | None = None

    def _reset(self) -> None:
        self._open = False
        self._offsets: dict = {}
        self._counts: list = []
        self._consumed = 0
        self._records = 0
        self._futures: list = []  # the last delivery of each batch: failures show there first
        self._broken: str | None = None  # why the open transaction can only abort
        self._begun_at = self.clock()

    # --- the producer

    def ready(self) -> bool:
        """A producer with its transactional id registered (a new one after an abort); False
        while the broker does not answer."""
        if self.producer is not None:
            return True
        try:
            producer = self.make_producer()
        except ClientError as exc:
            self.warn(f"cannot create a transactional producer yet ({exc}); will retry")
            return False
        try:
            producer.init(INIT_TIMEOUT_S)
        except ClientError as exc:
            producer.close(0.0)
            self.warn(f"cannot start transactions yet ({exc}); will retry")
            return False
        self.producer = producer
        return True

    # --- the Checkpointer's interface

    def send(self, offsets: dict, records: Sequence[OutputRecord], counts: object, consumed: int) -> None:
        """Add one processed batch to the open transaction (beginning one if none is)."""
        if not self._open:
            self._begin()
        self._offsets.update(offsets)
        self._counts.append(counts)
        self._consumed += consumed
        self._records += len(records)
        if self._broken or not records:
            return
        deliveries = self.producer.send_batch(records)
        if deliveries[-1].failed():  # not even queued: the transaction cannot be complete
            self._broken = f"an output could not be sent ({deliveries[-1].exception})"
        else:
            self._futures.append(deliveries)

    def _begin(self) -> None:
        self._reset()
        self._open = True
        if self.producer is None:
            self._broken = "no transactional producer"
            return
        try:
            self.producer.begin()
        except ClientError as exc:
            self._broken = f"begin failed ({exc})"

    def collect(self) -> None:
        """Nothing to collect: a transaction's outputs count once it commits."""

    def maybe_commit(self) -> None:
        if self._open and (self._consumed >= self.every_records or self._records >= self.max_records
                           or self.clock() - self._begun_at >= self.interval_s):
            self.commit(self.clock() + COMMIT_TIMEOUT_S)

    def commit(self, deadline: float) -> bool:
        """Commit the open transaction by ``deadline``; on any failure abort it and roll back."""
        if not self._open:
            return True
        started = self._committing_since = self.clock()
        try:
            reason = self._broken or self._failed_delivery()
            if reason is None:
                try:
                    self.producer.commit(self._offsets, self.consumer.group_metadata(),
                                         max(0.5, deadline - started))
                except ClientError as exc:
                    reason = f"commit failed ({exc})"
            if reason is not None:
                self._abort(reason)
                return False
            for counts in self._counts:
                self.on_committed(counts)
            self.committed.update(self._offsets)
            self.on_transaction(True, self._records, self.clock() - started)
            self._reset()
            return True
        finally:
            self._committing_since = None

    def _failed_delivery(self) -> str | None:
        for deliveries in self._futures:
            for delivery in deliveries:
                if delivery.failed():
                    if is_authorization_failure(delivery.exception):  # aborting again cannot help
                        raise NotAuthorized(f"an output was refused ({delivery.exception})")
                    return f"an output failed ({delivery.exception})"
        return None

    def abort(self, reason: str) -> None:
        """Abort the open transaction (if any) and roll back, committing nothing of it."""
        if self._open:
            self._abort(reason)

    def _abort(self, reason: str) -> None:
        """Close the producer (the next one aborts what it left open) and roll back the worker."""
        self.warn(f"transaction of {self._records:,} outputs aborted: {reason}; reading again from "
                  "the last commit, with the state restored to match")
        if self.producer is not None:
            self.producer.close(0.0)
            self.producer = None
        # what the stats counted as read: the login step's records (a BatchResult's ``consumed``),
        # not the device step's, which ``_consumed`` includes
        unread, records = sum(counts.consumed for counts in self._counts), self._records
        self._reset()
        self.on_rollback(unread)  # first: once an abort is counted, its reads are given back
        self.on_transaction(False, records, 0.0)

    def commit_all(self, deadline: float) -> bool:
        return self.commit(deadline)

    def drain(self, deadline: float) -> None:
        """Before a rebalance: commit (the offsets go with the transaction)."""
        self.commit(deadline)

    def abandon(self) -> None:
        """Stopping with the transaction unfinished: close at once; the broker aborts it."""
        if self.producer is not None:
            self.producer.close(0.0)
            self.producer = None

    @property
    def over_limit(self) -> bool:
        return False  # a large transaction commits early instead (maybe_commit)

    @property
    def below_resume(self) -> bool:
        return True

    def stalled_for(self) -> float:
        since = self._committing_since
        return self.clock() - since if since is not None else 0.0

    def committable(self) -> dict:
        return {}  # offsets are committed inside the transactions

    def mark_committed(self, offsets: dict) -> None:
        self.committed.update(offsets)

    def forget(self, partitions) -> None:
        for tp in partitions:
            self.committed.pop(tp, None)

    def acknowledged_position(self, tp) -> int | None:
        """With no transaction open, everything read is committed: the consumer's position, which
        (unlike the last record's offset + 1) is past the transaction markers that follow it."""
        if not self._open:
            position = self.consumer.position(tp, 100)
            if position is not None:
                return position
        return self.committed.get(tp)

    @property
    def pending_records(self) -> int:
        return self._consumed
