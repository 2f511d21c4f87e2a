"""The kafka-python backend: the measured client settings, and kafka-python's ways (async rebalance
listeners on its IO thread, futures, a close that raises) turned into the seam's (``base.py``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from loginpipe.kafka.admin import AdminOperations
from loginpipe.kafka.base import (
    ClientError,
    CommitRejected,
    Failed,
    NotAuthorized,
    NotQueued,
    RebalanceListener,
    TopicPartition,
    is_authorization_failure,
)
from loginpipe.kafka.settings import kafka_options
from loginpipe.topics import InternalTopics

FORCE_CLOSE_JOIN_S = 5.0
# While this member rejoins its group, a poll waits this long at least (see _unstick_rejoin):
# long enough for the other members to rejoin, short enough to notice a stop soon.
REJOIN_POLL_MS = 3_000  # a force-closed I/O thread ends within milliseconds; never wait longer
# Exactly-once: the broker aborts a transaction left open this long (a killed or frozen worker's),
# so readers and the partitions' next owner wait at most this long for it. Well above a
# checkpoint interval and a commit's duration (README, "Processing guarantees").
TRANSACTION_TIMEOUT_MS = 15_000


class KafkaPythonBackend(AdminOperations):
    """Clients with the settings chosen by measurement (README, Performance)."""

    def consumer(self, config, index: int) -> KafkaPythonConsumer:
        instance = config.group_instance_id
        try:
            return KafkaPythonConsumer(KafkaConsumer(
                **kafka_options(config.connection),
                group_id=config.group_id,
                group_instance_id=f"{instance}-{index}" if instance else None,
                client_id=f"loginpipe-worker-{index}",
                enable_auto_commit=False,
                # always: "latest" sets a new group's input offsets before the start
                # (Application._start_offsets); the repartition topic must be read from its start
                auto_offset_reset="earliest",
                max_poll_records=config.max_poll_records,
                fetch_max_wait_ms=100,
                max_partition_fetch_bytes=2 * 1024 * 1024,
                # Short, so a killed member's partitions move to the survivors within seconds.
                session_timeout_ms=10_000,
                heartbeat_interval_ms=1_000,  # a rebalance is noticed at the next heartbeat
                reconnect_backoff_max_ms=2_000,
                bootstrap_timeout_ms=10_000,
                # Exactly-once: read only committed transactions (of the repartition topic), and
                # fetch committed offsets only once no transaction holds them (require_stable).
                isolation_level="read_committed" if config.exactly_once else "read_uncommitted",
            ))
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc

    def producer(self, config) -> KafkaPythonProducer:
        try:
            producer = KafkaProducer(**_producer_settings(config), client_id="loginpipe-pipeline",
                                     delivery_timeout_ms=config.delivery_timeout_ms)
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc
        announce_topics(producer, produced_topics(config))
        return KafkaPythonProducer(producer)

    def transactional_producer(self, config, transactional_id: str) -> KafkaPythonTransactions:
        try:
            producer = KafkaProducer(
                **_producer_settings(config),
                client_id=f"loginpipe-{transactional_id}",
                transactional_id=transactional_id,
                # A transaction never outlives a broker outage half-sent: the broker aborts what
                # stays open this long, and the worker starts again from the last commit.
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                delivery_timeout_ms=max(config.delivery_timeout_ms, TRANSACTION_TIMEOUT_MS),
            )
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc
        announce_topics(producer, produced_topics(config))
        return KafkaPythonTransactions(producer)

    def reader(self, config) -> KafkaPythonReader:
        try:
            return KafkaPythonReader(KafkaConsumer(
                **kafka_options(config.connection),
                group_id=None,
                client_id="loginpipe-restore",
                enable_auto_commit=False,
                # what an aborted transaction wrote is not state (and without transactions this
                # reads the same records)
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 * 1024 * 1024,
                fetch_max_wait_ms=100,
                reconnect_backoff_max_ms=2_000,
                bootstrap_timeout_ms=10_000,
            ))
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc


def _refused(exc: BaseException, text: str) -> Exception:
    """What a failed client call raises: NotAuthorized for a missing ACL (retrying cannot help),
    ClientError, which the runtime rides out, for anything else."""
    return NotAuthorized(str(exc)) if is_authorization_failure(exc) else ClientError(text)


def _producer_settings(config) -> dict:
    """What both producers share: the connection and the measured batching (README, Performance)."""
    return dict(
        **kafka_options(config.connection),
        acks="all",
        enable_idempotence=True,
        compression_type="snappy",
        linger_ms=config.linger_ms,
        batch_size=config.batch_size,
        request_timeout_ms=min(10_000, config.delivery_timeout_ms // 2),
        # A send() that cannot queue (no metadata while the broker is away) gives up this soon,
        # so a worker is never stuck longer than this in a client call.
        max_block_ms=5_000,
        reconnect_backoff_max_ms=2_000,
        bootstrap_timeout_ms=10_000,
    )


def produced_topics(config) -> list[str]:
    """The topics the pipeline's records go to (the publisher's summary and metrics topics are
    left out: they are written off the hot path)."""
    internal = InternalTopics.of(config.group_id)
    topics = [config.output_topic, config.dlq_topic, config.filtered_topic,
              internal.repartition, internal.changelog, internal.device_changelog]
    return [topic for topic in topics if topic]


def announce_topics(producer: KafkaProducer, topics: Sequence[str]) -> None:
    """Have the producer's I/O thread fetch these topics' metadata now, in the background.

    kafka-python learns a topic's partitions on its first send, and that send() waits for them:
    about 100 ms per topic (a metadata request after its retry backoff). The first batches write
    to five topics, so the first records of a run were held up ~430 ms, and the backlog that
    built meanwhile took ~2 s to clear (measured: the p99 of a 30 s latency run, 385-400 ms, came
    from those first seconds). The producer asks for the metadata of every topic it was told of in
    one request, while the group is still forming. ``Sender.add_topic`` is private: read
    defensively; without it the first sends wait as before. It never blocks and never fails."""
    add_topic = getattr(getattr(producer, "_sender", None), "add_topic", None)
    if add_topic is None:
        return
    for topic in topics:
        with contextlib.suppress(Exception):  # e.g. an invalid name: its first send says so
            add_topic(topic)


def _kafka_tps(partitions) -> list[KafkaTopicPartition]:
    return [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]


class KafkaPythonConsumer:
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        consumer = self._consumer

        class Rebalance(AsyncConsumerRebalanceListener):
            # kafka-python 3 runs these on the consumer's IO thread, where a blocking commit is
            # refused: hence the async listener and an awaited commit_async. Waiting for the
            # producer's acknowledgements is fine here: they arrive on the producer's own thread.
            async def on_partitions_revoked(self, revoked):
                offsets = listener.revoking([TopicPartition(*tp) for tp in revoked])
                error = None
                if offsets:
                    try:
                        await consumer.commit_async(_offsets(offsets))
                    except KafkaError as exc:
                        error = ClientError(repr(exc))
                listener.handed_over(offsets, error)

            async def on_partitions_assigned(self, assigned):
                listener.assigned([TopicPartition(*tp) for tp in assigned])

            # kafka-python's default would call on_partitions_revoked: a commit (of offsets and,
            # exactly-once, of the open transaction) for partitions another member has now.
            async def on_partitions_lost(self, lost):
                listener.lost([TopicPartition(*tp) for tp in lost])

        consumer.subscribe(list(topics), listener=Rebalance())

    def warm_up(self, topic: str) -> None:
        try:
            self._consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if self._rejoining():  # see _unstick_rejoin: wait for the join, or it is thrown away
            timeout_ms = max(timeout_ms, REJOIN_POLL_MS)
        self._unpark_resumed()
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:  # e.g. the broker went away mid-request
            raise _refused(exc, str(exc)) from exc
        self._unstick_rejoin()
        return polled

    def _unpark_resumed(self) -> None:
        """Work around a kafka-python 3.0.12 hang of a paused-then-resumed partition.

        Records fetched for a partition that is paused before they are returned are parked; on
        resume they come back only when the fetcher's in-line slot is ``None``. But a drained
        slot keeps its (empty, falsy) record set rather than ``None``, so the parked records stay
        parked, and a parked partition is never fetched again: it is stuck for good, with lag and
        no error. We pause partitions to restore their state (and after every abort), so this hit
        the exactly-once broker-restart tests about one run in three. Clearing an emptied slot
        is what the client's own fetch loop does for a falsy one (``if not
        self._next_partition_records``); the attribute is private and read defensively."""
        unpark_resumed(self._consumer)

    def _rejoining(self) -> bool:
        return bool(getattr(getattr(self._consumer, "_coordinator", None), "rejoining", False))

    def _unstick_rejoin(self) -> None:
        """Work around two kafka-python 3.0.12 hangs around a rejoin that outlives a poll.

        1. A join that completes while no poll awaits it is thrown away: the next poll sees the
           task done and sends a new JoinGroup, which rebalances the whole group again, and so on
           (members spin with no partitions). So while a rejoin is under way, ``poll`` waits up to
           ``REJOIN_POLL_MS``, long enough for the other members to rejoin.
        2. A leader whose rejoin was asked for only because its metadata changed (every new
           leader's first assignment is taken before the topic's metadata arrives) ends up
           ``rejoining`` with ``need_rejoin()`` False once the join finishes in the background: it
           never completes the join, no assignment arrives, heartbeats stay off. Java's client
           fixed the same in KAFKA-9815 by asking for the rejoin explicitly; so do we.

        The flags are private, read defensively; both states are abnormal by definition (the
        client clears ``rejoining`` and the rejoin request together when a join completes)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or not getattr(coordinator, "rejoining", False):
            return
        try:
            if not coordinator.need_rejoin():
                coordinator.request_rejoin()
        except Exception:
            return

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        try:
            self._consumer.commit(_offsets(offsets), timeout_ms=int(timeout_s * 1000))
        except CommitFailedError as exc:
            raise CommitRejected(repr(exc)) from exc
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc

    def assignment(self) -> set:
        return self._consumer.assignment()

    def seek(self, tp, offset: int) -> None:
        self._consumer.seek(KafkaTopicPartition(tp.topic, tp.partition), offset)

    def pause(self, partitions) -> None:
        self._consumer.pause(*_kafka_tps(partitions))

    def resume(self, partitions) -> None:
        self._consumer.resume(*_kafka_tps(partitions))

    def paused(self) -> set:
        return self._consumer.paused()

    def highwater(self, tp) -> int | None:
        return self._consumer.highwater(tp)

    def position(self, tp, timeout_ms: int) -> int | None:
        try:
            return self._consumer.position(tp, timeout_ms=timeout_ms)
        except KafkaError:  # it may need the broker, which may be away: unknown for now
            return None

    def membership(self) -> str:
        # kafka-python keeps this on its (private) coordinator; read defensively, for a warning only.
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None:
            return "state unknown"
        if coordinator.coordinator_unknown():
            return "no group coordinator found yet"
        return f"coordinator found, member {str(getattr(coordinator, 'state', '?')).lower()}"

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def committed_offsets(self, partitions, timeout_s: float) -> dict:
        """The group's committed offsets (None: none yet); waits while a transaction holds them."""
        try:
            return {tp: self._consumer.committed(KafkaTopicPartition(tp.topic, tp.partition),
                                                 timeout_ms=int(timeout_s * 1000))
                    for tp in partitions}
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc

    def seek_to_beginning(self, partitions) -> None:
        self._consumer.seek_to_beginning(*_kafka_tps(partitions))

    def close(self, timeout_s: float) -> None:
        with contextlib.suppress(KafkaError):
            self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))


def _offsets(offsets: dict[TopicPartition, int]) -> dict:
    return {KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1)
            for tp, offset in offsets.items()}


class KafkaPythonReader:
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    def assign(self, partitions) -> None:
        """Partitions kept keep their position (kafka-python preserves it); new ones start at the
        beginning."""
        tps = _kafka_tps(partitions)
        fresh = [tp for tp in tps if tp not in self._consumer.assignment()]
        self._consumer.assign(tps)
        if fresh:
            self._consumer.seek_to_beginning(*fresh)

    def end_offsets(self, partitions) -> dict:
        try:
            ends = self._consumer.end_offsets(_kafka_tps(partitions))
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        try:
            return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise _refused(exc, str(exc)) from exc

    def position(self, tp) -> int | None:
        try:
            return self._consumer.position(KafkaTopicPartition(tp.topic, tp.partition), timeout_ms=1000)
        except KafkaError:
            return None

    def close(self) -> None:
        with contextlib.suppress(KafkaError):
            self._consumer.close(autocommit=False, timeout_ms=1000)


class KafkaPythonProducer:
    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer

    def send_batch(self, records: Sequence) -> list:
        """Queue every record; return their futures, in order. A record that cannot even be queued
        (no metadata or a full buffer for max_block_ms; a closed producer) gets a failed delivery,
        and so do the rest of the batch: the caller sends them again."""
        send = self._producer.send
        futures = []
        try:
            for r in records:  # the hot loop: one call per record, nothing else
                futures.append(send(r.topic, value=r.value, key=r.key, headers=r.headers,
                                    partition=r.partition, timestamp_ms=r.timestamp_ms))
        # RuntimeError: another thread closed this producer meanwhile (Sender.replace), and
        # kafka-python's closed network loop refuses the send ("NetworkSelector closed!").
        except (KafkaError, RuntimeError) as exc:
            if is_authorization_failure(exc):  # a topic this user may not even describe
                raise NotAuthorized(str(exc)) from exc
            failed = Failed(NotQueued(repr(exc)))
            futures.extend(failed for _ in range(len(records) - len(futures)))
        return futures

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except (KafkaError, RuntimeError) as exc:  # RuntimeError: closed meanwhile (see send_batch)
            raise _refused(exc, repr(exc)) from exc

    def close(self, timeout_s: float) -> None:
        producer = self._producer
        if timeout_s > 0:
            try:
                producer.close(timeout=timeout_s)
                return
            except KafkaError:
                pass
        # kafka-python's close() flushes first and raises when that flush times out, before it
        # stops its I/O thread (close() without a timeout hangs): stop the thread first, then close.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(FORCE_CLOSE_JOIN_S)
        with contextlib.suppress(KafkaError):
            producer.close(timeout=0)


class KafkaPythonTransactions(KafkaPythonProducer):
    """A transactional producer: kafka-python's transaction calls with deadlines (its own wait
    for ever), every failure a ClientError. The caller never retries a failed transaction on the
    same producer: it closes it and makes a new one, whose ``init`` aborts what was left open."""

    def init(self, timeout_s: float) -> None:
        try:
            self._producer.init_transactions()  # waits up to max_block_ms, then may be called again
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc

    _begun_as: tuple | None = None

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaError as exc:
            raise _refused(exc, repr(exc)) from exc
        self._begun_as = self._producer_id_and_epoch()

    def _producer_id_and_epoch(self) -> tuple:
        ids = self._producer._transaction_manager.producer_id_and_epoch
        return ids.producer_id, ids.epoch

    def _check_epoch(self) -> None:
        """kafka-python 3 bumps the producer's epoch by itself after some send errors (KIP-360):
        the broker then aborts the open transaction, and the producer goes on as if none were
        open, so a later commit "succeeds" with nothing in it. A changed id or epoch since
        ``begin`` therefore means this transaction was aborted."""
        if self._begun_as is not None and self._producer_id_and_epoch() != self._begun_as:
            raise ClientError("the producer's epoch was bumped after a send error, "
                              "which aborted the transaction")

    def commit(self, offsets: dict, group_metadata: object, timeout_s: float) -> None:
        """Add ``offsets`` to the open transaction and commit it; ClientError when it fails or
        does not finish within ``timeout_s`` (its outcome is then the broker's to decide)."""
        manager, deadline = self._producer._transaction_manager, time.monotonic() + timeout_s
        try:
            self._check_epoch()
            if offsets:
                self._wait(manager.send_offsets_to_transaction(_offsets(offsets), group_metadata), deadline)
                self._check_epoch()
            self._wait(manager.begin_commit(), deadline)
        except (KafkaError, RuntimeError) as exc:  # RuntimeError: closed meanwhile (see send_batch)
            raise _refused(exc, repr(exc)) from exc
        # The commit waited for every record of the transaction first, so a bump caused by one
        # of them has happened by now; none of a later transaction's records has been sent yet.
        self._check_epoch()

    def _wait(self, result, deadline: float) -> None:
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=max(1, int((deadline - time.monotonic()) * 1000))):
            raise ClientError("the transaction did not complete in time")


def unpark_resumed(consumer: KafkaConsumer) -> bool:
    """Free the fetcher's emptied in-line slot when records of resumed partitions are parked
    (``KafkaPythonConsumer._unpark_resumed``); True when it did."""
    fetcher = getattr(consumer, "_fetcher", None)
    in_line = getattr(fetcher, "_next_partition_records", None)
    if in_line is not None and not in_line and getattr(fetcher, "_paused_partition_records", None):
        fetcher._next_partition_records = None
        return True
    return False
