"""An in-memory Kafka for unit tests of the runtime: topics, a consumer group, a producer whose
acknowledgements a test can hold, fail or let through, and an outage switch. It implements the
seam (``base.py``) the runtime uses, so the real worker loop, checkpoints, hand-overs and
shutdown run against it in milliseconds, with no broker.

What it models: partitions as lists, offsets, committed offsets per group, a group that splits
partitions evenly among its members and hands a partition over only after its old owner's
``revoking``/``handed_over`` ran (as Kafka's eager protocol does), pause/resume, high-water
marks, and transactions: a transactional producer's records reach the topics only when its
transaction commits, with its offsets, after the checks the broker makes (a newer producer of
the same id fences it; offsets of partitions the member no longer owns are refused), so every
reader here is a read_committed one. What it does not: replication, compression, timestamps
other than the producer's clock, the wire protocol.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loginpipe.errors import UserError
from loginpipe.kafka.base import ClientError, CommitRejected, Failed, NotQueued, RebalanceListener
from loginpipe.kafka.base import TopicPartition as TP


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


class Delivery:
    """One sent record's outcome, settled by the cluster."""

    __slots__ = ("exception", "is_done", "producer", "record")

    def __init__(self, record: tuple, producer: object) -> None:
        self.record = record
        self.producer = producer
        self.is_done = False
        self.exception: BaseException | None = None

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None


class MemoryCluster:
    """Topics and groups, shared by every client made from it. Thread-safe: one lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.topics: dict[str, list[list[Record]]] = {}
        self.committed: dict[tuple[str, TP], int] = {}
        self.available = True  # False: the broker is away (polls, commits and sends fail or wait)
        self.assigning = True  # False: groups hand out no partitions (a coordinator never found)
        self.holding = False  # True: sends wait for ``release`` (acknowledgements are late)
        self.producers_made = 0
        self.epochs: dict[str, int] = {}  # transactional id -> the newest producer's epoch
        self.fail_commits = 0  # the next this many transaction commits fail (a test's switch)
        self.fail_commits_of: str | None = None  # the next commit with offsets of this topic fails
        self.transactions_committed = 0
        self._pending: list[Delivery] = []
        self._members: dict[str, list[MemoryConsumer]] = {}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)

    # --- what tests call

    def create_topic(self, name: str, partitions: int) -> None:
        with self.lock:
            self.topics.setdefault(name, [[] for _ in range(partitions)])

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                partition: int | None = None, headers: list | None = None,
                timestamp_ms: int | None = None) -> Record:
        """Append a record at once (test input, and acknowledged sends)."""
        with self.lock:
            partitions = self.topics[topic]
            if partition is None:
                partition = hash(key) % len(partitions) if key is not None else 0
            log = partitions[partition]
            if timestamp_ms is None:
                timestamp_ms = int(self.clock() * 1000)
            record = Record(topic, partition, len(log), timestamp_ms, key, value, headers or [])
            log.append(record)
            self.changed.notify_all()
            return record

    def records(self, topic: str) -> list[Record]:
        with self.lock:
            return [r for log in self.topics[topic] for r in log]

    def end_offsets(self, topic: str) -> dict[TP, int]:
        with self.lock:
            return {TP(topic, p): len(log) for p, log in enumerate(self.topics[topic])}

    def committed_offsets(self, group: str, topic: str) -> dict[TP, int]:
        with self.lock:
            return {TP(topic, p): self.committed.get((group, TP(topic, p)), 0)
                    for p in range(len(self.topics[topic]))}

    def release(self) -> None:
        """Deliver every held send, in order (while available)."""
        with self.lock:
            self.holding = False
            self._deliver()

    def fail_pending(self, exception: BaseException) -> int:
        """Fail every unacknowledged send, as expired batches do; returns how many."""
        with self.lock:
            pending, self._pending = self._pending, []
            for delivery in pending:
                delivery.exception, delivery.is_done = exception, True
            self.changed.notify_all()
            return len(pending)

    def set_available(self, available: bool) -> None:
        with self.lock:
            self.available = available
            self._deliver()
            self.changed.notify_all()

    # --- what clients call

    def _send(self, record: tuple, producer: object) -> Delivery:
        delivery = Delivery(record, producer)
        self._pending.append(delivery)
        self._deliver()
        return delivery

    def _deliver(self) -> None:
        if self.holding or not self.available:
            return
        for delivery in self._pending:
            if not delivery.is_done:
                self.produce(*delivery.record)
                delivery.is_done = True
        self._pending = []
        self.changed.notify_all()

    def _join(self, group: str, member: MemoryConsumer) -> None:
        members = self._members.setdefault(group, [])
        members.append(member)
        self._rebalance(group)

    def _leave(self, group: str, member: MemoryConsumer) -> None:
        members = self._members.get(group, [])
        if member in members:
            members.remove(member)
            self._rebalance(group)

    def _rebalance(self, group: str) -> None:
        """Split each subscribed topic's partitions evenly, in member order; every member takes
        its new share at its next poll, after giving up what it loses."""
        members = self._members[group]
        for member in members:
            member.target = set()
        if not self.assigning:
            return
        for topic in sorted({t for m in members for t in m.topics}):
            subscribed = [m for m in members if topic in m.topics]
            for p in range(len(self.topics[topic])):
                subscribed[p % len(subscribed)].target.add(TP(topic, p))
        self.changed.notify_all()

    def expel(self, group: str) -> None:
        """Every member of ``group`` loses its partitions without a revoke at its next poll (as
        a member frozen past its session timeout does), then rejoins."""
        with self.lock:
            for member in self._members.get(group, []):
                member.expelled = True

    def _held_by_another(self, group: str, tp: TP, member: MemoryConsumer) -> bool:
        return any(tp in m.owned for m in self._members.get(group, []) if m is not member)


def _read(cluster: MemoryCluster, positions: dict[TP, int], partitions: list[TP], limit: int) -> dict:
    """Up to ``limit`` records from ``partitions``, in order, each from its position (advanced);
    the caller holds the cluster's lock."""
    polled: dict[TP, list[Record]] = {}
    for tp in partitions:
        start = positions[tp]
        batch = cluster.topics[tp.topic][tp.partition][start:start + limit]
        if batch:
            polled[tp] = batch
            positions[tp] = start + len(batch)
            limit -= len(batch)
        if limit <= 0:
            break
    return polled


class MemoryConsumer:
    def __init__(self, cluster: MemoryCluster, group: str, max_poll_records: int) -> None:
        self.cluster = cluster
        self.group = group
        self.max_poll_records = max_poll_records
        self.topics: tuple[str, ...] = ()
        self.listener: RebalanceListener | None = None
        self.target: set[TP] = set()  # what the group gave this member
        self.owned: set[TP] = set()  # what it holds now
        self.positions: dict[TP, int] = {}
        self._paused: set[TP] = set()
        self._joined = False
        self._told = False  # the listener heard of an assignment (an empty one counts)
        self.expelled = False  # the next poll loses every partition (MemoryCluster.expel)

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        with self.cluster.lock:
            self.topics, self.listener = tuple(topics), listener
            self.cluster._join(self.group, self)
            self._joined = True

    def warm_up(self, topic: str) -> None:
        if not self.cluster.available:
            raise ClientError("broker unavailable")

    def _rebalance_if_needed(self) -> None:
        cluster = self.cluster
        if self.expelled:
            self.expelled = False
            lost = sorted(self.owned)
            with cluster.lock:
                self.owned.clear()
                self.positions.clear()
                self._paused.clear()
                cluster.changed.notify_all()
            self.listener.lost(lost)
        lost = self.owned - self.target
        if lost:
            offsets = self.listener.revoking(sorted(lost))
            error = None
            with cluster.lock:
                try:
                    self._commit(offsets, check_owner=False)
                except ClientError as exc:
                    error = exc
                self.owned -= lost
                for tp in lost:
                    self.positions.pop(tp, None)
                    self._paused.discard(tp)
                cluster.changed.notify_all()
            self.listener.handed_over(offsets, error)
        gained = []
        with cluster.lock:
            for tp in sorted(self.target - self.owned):
                if not cluster._held_by_another(self.group, tp, self):
                    self.owned.add(tp)
                    self.positions[tp] = cluster.committed.get((self.group, tp), 0)
                    gained.append(tp)
        if gained or lost or (self.cluster.assigning and not self._told):
            self._told = True
            self.listener.assigned(sorted(self.owned))

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        cluster = self.cluster
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if not cluster.available:
                with cluster.lock:
                    cluster.changed.wait(max(0.0, deadline - time.monotonic()))
                raise ClientError("broker unavailable")
            if self.owned != self.target or self.expelled:
                self._rebalance_if_needed()
            with cluster.lock:
                polled = self._fetch(min(max_records, self.max_poll_records))
                remaining = deadline - time.monotonic()
                if polled or remaining <= 0:
                    return polled
                cluster.changed.wait(remaining)

    def _fetch(self, limit: int) -> dict:
        return _read(self.cluster, self.positions, sorted(self.owned - self._paused), limit)

    def commit(self, offsets: dict[TP, int], timeout_s: float) -> None:
        with self.cluster.lock:
            self._commit(offsets, check_owner=True)

    def _commit(self, offsets: dict[TP, int], check_owner: bool) -> None:
        if not offsets:
            return
        if not self.cluster.available:
            raise ClientError("coordinator unavailable")
        if check_owner and not set(offsets) <= self.owned:
            raise CommitRejected("partitions were reassigned")
        for tp, offset in offsets.items():
            self.cluster.committed[(self.group, TP(*tp))] = offset

    def assignment(self) -> set:
        return set(self.owned)

    def seek(self, tp, offset: int) -> None:
        self.positions[TP(*tp)] = offset

    def pause(self, partitions: Sequence) -> None:
        self._paused |= {TP(*tp) for tp in partitions}

    def resume(self, partitions: Sequence) -> None:
        self._paused -= {TP(*tp) for tp in partitions}

    def paused(self) -> set:
        return set(self._paused)

    def highwater(self, tp) -> int | None:
        with self.cluster.lock:
            return len(self.cluster.topics[tp.topic][tp.partition])

    def position(self, tp, timeout_ms: int) -> int | None:
        return self.positions.get(TP(*tp))

    def group_metadata(self) -> object:
        return self  # a commit's offsets are checked against what this member owns then

    def committed_offsets(self, partitions, timeout_s: float) -> dict:
        if not self.cluster.available:
            raise ClientError("coordinator unavailable")
        with self.cluster.lock:
            return {TP(*tp): self.cluster.committed.get((self.group, TP(*tp))) for tp in partitions}

    def seek_to_beginning(self, partitions) -> None:
        for tp in partitions:
            self.positions[TP(*tp)] = 0

    def membership(self) -> str:
        return "joined" if self.cluster.assigning else "no group coordinator found yet"

    def close(self, timeout_s: float) -> None:
        if not self._joined:
            return
        self._joined = False
        if self.owned and self.listener is not None:
            self.target = set()
            self._rebalance_if_needed()
        with self.cluster.lock:
            self.cluster._leave(self.group, self)


class MemoryReader:
    """Reads assigned partitions from their beginning, outside any group (restores)."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.positions: dict[TP, int] = {}
        self.polls = 0

    def assign(self, partitions: Sequence) -> None:
        self.positions = {TP(*tp): self.positions.get(TP(*tp), 0) for tp in partitions}

    def end_offsets(self, partitions: Sequence) -> dict:
        if not self.cluster.available:
            raise ClientError("broker unavailable")
        with self.cluster.lock:
            return {TP(*tp): len(self.cluster.topics[tp[0]][tp[1]]) for tp in partitions}

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if not self.cluster.available:
            raise ClientError("broker unavailable")
        self.polls += 1
        with self.cluster.lock:
            return _read(self.cluster, self.positions, list(self.positions), max_records)

    def position(self, tp) -> int | None:
        return self.positions.get(TP(*tp))

    def close(self) -> None:
        self.positions = {}


class MemoryProducer:
    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.closed = False
        self.refuse = False  # True: every send fails before it is queued

    def send_batch(self, records: Sequence) -> list:
        cluster = self.cluster
        with cluster.lock:
            if self.closed or self.refuse:
                return [Failed(NotQueued("producer closed" if self.closed else "refused"))] * len(records)
            return [cluster._send((r.topic, r.value, r.key, r.partition, r.headers, r.timestamp_ms), self)
                    for r in records]

    def flush(self, timeout_s: float) -> None:
        cluster = self.cluster
        deadline = time.monotonic() + timeout_s
        with cluster.lock:
            while any(not d.is_done for d in cluster._pending):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClientError("flush timed out")
                cluster.changed.wait(remaining)

    def close(self, timeout_s: float) -> None:
        """Closed at once: what it still held fails, as kafka-python's force close does."""
        cluster = self.cluster
        with cluster.lock:
            self.closed = True
            mine = [d for d in cluster._pending if d.producer is self]
            cluster._pending = [d for d in cluster._pending if d.producer is not self]
            for delivery in mine:
                delivery.exception, delivery.is_done = ClientError("producer closed"), True
            cluster.changed.notify_all()


class MemoryTransactions(MemoryProducer):
    """A transactional producer: sends wait in the open transaction, invisible until it commits."""

    def __init__(self, cluster: MemoryCluster, transactional_id: str) -> None:
        super().__init__(cluster)
        self.transactional_id = transactional_id
        self.epoch = -1
        self._open = False
        self._buffer: list[tuple] = []

    def init(self, timeout_s: float) -> None:
        cluster = self.cluster
        with cluster.lock:
            if not cluster.available:
                raise ClientError("coordinator unavailable")
            self.epoch = cluster.epochs.get(self.transactional_id, -1) + 1
            cluster.epochs[self.transactional_id] = self.epoch  # fences older producers of the id

    def begin(self) -> None:
        if self.epoch < 0:
            raise ClientError("init first")
        self._open, self._buffer = True, []

    def send_batch(self, records: Sequence) -> list:
        if self.closed or self.refuse or not self._open:
            return [Failed(NotQueued("not in a transaction"))] * len(records)
        deliveries = []
        for r in records:
            self._buffer.append((r.topic, r.value, r.key, r.partition, r.headers, r.timestamp_ms))
            delivery = Delivery(self._buffer[-1], self)
            delivery.is_done = True
            deliveries.append(delivery)
        return deliveries

    def flush(self, timeout_s: float) -> None:
        pass

    def commit(self, offsets: dict, group_metadata: object, timeout_s: float) -> None:
        cluster = self.cluster
        with cluster.lock:
            if not cluster.available:
                raise ClientError("coordinator unavailable")
            if self.closed or cluster.epochs.get(self.transactional_id) != self.epoch:
                raise ClientError("ProducerFencedError")
            member = group_metadata
            if offsets and not set(offsets) <= member.owned:
                raise ClientError("CommitFailedError: the group has moved on")
            if cluster.fail_commits > 0:
                cluster.fail_commits -= 1
                raise ClientError("injected commit failure")
            if cluster.fail_commits_of in {tp[0] for tp in offsets}:
                cluster.fail_commits_of = None
                raise ClientError("injected commit failure")
            for record in self._buffer:
                cluster.produce(*record)
            for tp, offset in offsets.items():
                cluster.committed[(member.group, TP(*tp))] = offset
            cluster.transactions_committed += 1
            self._open, self._buffer = False, []

    def close(self, timeout_s: float) -> None:
        self.closed, self._open, self._buffer = True, False, []  # what was open is aborted


class MemoryBackend:
    """Clients on one MemoryCluster. ``fail_producer_creation`` makes new producers fail to start."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.producers: list[MemoryProducer] = []
        self.fail_producer_creation = False

    def consumer(self, config, index: int) -> MemoryConsumer:
        return MemoryConsumer(self.cluster, config.group_id, config.max_poll_records)

    def producer(self, config) -> MemoryProducer:
        if self.fail_producer_creation or not self.cluster.available:
            raise ClientError("unable to bootstrap")
        self.producers.append(MemoryProducer(self.cluster))
        self.cluster.producers_made += 1
        return self.producers[-1]

    def transactional_producer(self, config, transactional_id: str) -> MemoryTransactions:
        if self.fail_producer_creation or not self.cluster.available:
            raise ClientError("unable to bootstrap")
        producer = MemoryTransactions(self.cluster, transactional_id)
        self.producers.append(producer)
        self.cluster.producers_made += 1
        return producer

    def reader(self, config) -> MemoryReader:
        return MemoryReader(self.cluster)

    def create_topics(self, connection: Any, specs: Sequence, partitions: int) -> None:
        for spec in specs:
            self.cluster.create_topic(spec.name, spec.partitions or partitions)

    def topic_partitions(self, connection: Any, names: Sequence[str]) -> dict[str, int]:
        if not self.cluster.available:
            raise UserError(f"no Kafka broker answers at {connection}")
        with self.cluster.lock:
            return {n: len(self.cluster.topics[n]) for n in names if n in self.cluster.topics}

    def missing_permissions(self, connection: Any, wanted: dict[str, list[str]]) -> list[str]:
        return []  # no ACLs in memory

    def start_group_at_end(self, connection: Any, group_id: str, topic: str) -> int:
        cluster = self.cluster
        with cluster.lock:
            unset = {tp: end for tp, end in cluster.end_offsets(topic).items()
                     if (group_id, tp) not in cluster.committed}
            cluster.committed.update({(group_id, tp): end for tp, end in unset.items()})
            return len(unset)

    def reachable(self, connection: Any) -> bool:
        return self.cluster.available
