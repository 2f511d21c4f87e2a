"""The confluent-kafka backend (librdkafka): the same measured settings as ``kafka_python.py`` under
librdkafka's names, and librdkafka's ways turned into the seam's (``base.py``).

What differs from kafka-python, and how it is bridged:
- Rebalance callbacks run inside ``poll``/``consume``, on the calling (worker) thread, where a
  synchronous commit is allowed: revoke -> ``revoking``, commit, ``handed_over``.
- Records are ``Message`` objects with methods; the core reads attributes, so each is copied into a
  ``Record`` tuple (one C-level tuple build per record).
- Delivery reports run only inside ``poll``/``flush``: a small thread per producer polls.
- Admin work (topics, ACL checks, start offsets) stays with the kafka-python functions of
  ``admin.py``: kafka-python is always installed, and those calls are rare.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as ConfluentTopicPartition

from loginpipe.kafka.admin import AdminOperations
from loginpipe.kafka.base import (
    ClientError,
    CommitRejected,
    Failed,
    NotAuthorized,
    NotQueued,
    RebalanceListener,
    TopicPartition,
)
from loginpipe.kafka.settings import Connection

# the same as kafka_python.py's: see there why
TRANSACTION_TIMEOUT_MS = 15_000
MAX_BLOCK_S = 5.0  # a full queue: wait this long for room before failing the rest of a batch
FULL_QUEUE_POLL_S = 0.05
DELIVERY_POLL_S = 0.1  # the delivery thread's wait: a report is seen within this long
STATS_INTERVAL_MS = 5_000  # the group's join state, for the stuck-worker warning
# librdkafka's logs go to this logger: under "kafka", which the runtime quiets as kafka-python's
LOGGER = "kafka.librdkafka"

AUTHORIZATION_CODES = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})
# A commit refused because the group moved on (kafka-python's CommitFailedError).
REJECTED_COMMIT_CODES = frozenset({
    KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST, KafkaError.STALE_MEMBER_EPOCH,
})


class Record(NamedTuple):
    """One consumed record with the attributes the core reads (``RawRecord``'s shape)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes | None


def confluent_options(where: str | Connection) -> dict[str, Any]:
    """librdkafka's settings for the connection (every client: consumer, producer)."""
    connection = Connection.of(where)
    options: dict[str, Any] = {"bootstrap.servers": connection.bootstrap_servers,
                               "security.protocol": connection.security_protocol}
    if connection.uses_sasl:
        options.update({"sasl.mechanism": connection.sasl_mechanism,
                        "sasl.username": connection.sasl_username,
                        "sasl.password": connection.sasl_password})
    if connection.uses_tls:
        # no CA file: the system's trust store, which librdkafka's bundled OpenSSL finds by probing
        options["ssl.ca.location"] = connection.ssl_cafile or "probe"
        if connection.ssl_certfile:
            options["ssl.certificate.location"] = connection.ssl_certfile
            options["ssl.key.location"] = connection.ssl_keyfile
        if connection.ssl_key_password is not None:
            options["ssl.key.password"] = connection.ssl_key_password
        checked = "https" if connection.ssl_check_hostname else "none"
        options["ssl.endpoint.identification.algorithm"] = checked
    return options


def _common(config, client_id: str) -> dict[str, Any]:
    return {**confluent_options(config.connection), "client.id": client_id,
            "reconnect.backoff.max.ms": 2_000, "logger": logging.getLogger(LOGGER)}


def consumer_options(config, index: int) -> dict[str, Any]:
    """The group member's settings: kafka_python.py's, by librdkafka's names."""
    instance = config.group_instance_id
    options = {
        **_common(config, f"loginpipe-worker-{index}"),
        "group.id": config.group_id,
        # only explicit commits: no auto commit, and no offsets stored behind our back
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # see kafka_python.py
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 2 * 1024 * 1024,
        # what librdkafka fetches ahead, per consumer: bounds memory (its default is 64 MiB)
        "queued.max.messages.kbytes": 32 * 1024,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        # eager, as kafka-python's: the runtime expects every rebalance to revoke everything, and
        # a group may mix both clients
        "partition.assignment.strategy": "range,roundrobin",
        "isolation.level": "read_committed" if config.exactly_once else "read_uncommitted",
        "statistics.interval.ms": STATS_INTERVAL_MS,
    }
    if instance:
        options["group.instance.id"] = f"{instance}-{index}"
    return options


def producer_options(config, client_id: str) -> dict[str, Any]:
    """What both producers share: the connection and the measured batching."""
    return {
        **_common(config, client_id),
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "snappy",
        "linger.ms": config.linger_ms,
        "batch.size": config.batch_size,
        "message.timeout.ms": config.delivery_timeout_ms,
        "request.timeout.ms": min(10_000, config.delivery_timeout_ms // 2),
        # Java's (and kafka-python's) partitioner for keyed records: a key lands on the same
        # partition whichever client wrote it
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 256 * 1024,
    }


def transactional_options(config, transactional_id: str) -> dict[str, Any]:
    return {**producer_options(config, f"loginpipe-{transactional_id}"),
            "transactional.id": transactional_id,
            # the broker aborts a transaction left open this long (see kafka_python.py)
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            # librdkafka refuses a record timeout longer than the transaction's
            "message.timeout.ms": min(config.delivery_timeout_ms, TRANSACTION_TIMEOUT_MS)}


def reader_options(config) -> dict[str, Any]:
    return {
        **_common(config, "loginpipe-restore"),
        # librdkafka wants a group id even for assign(); this one never joins or commits
        "group.id": f"loginpipe-restore-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",  # what an aborted transaction wrote is not state
        "auto.offset.reset": "earliest",
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "fetch.wait.max.ms": 100,
    }


def client_error(exc: BaseException) -> Exception:
    """The seam's exception for a librdkafka failure: NotAuthorized for a missing ACL, CommitRejected
    when the group moved on, ClientError otherwise."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(error, KafkaError):
        return ClientError(repr(exc))
    return error_of(error)


def error_of(error: KafkaError) -> Exception:
    code, text = error.code(), f"{error.name()}: {error.str()}"
    if code in AUTHORIZATION_CODES:
        return NotAuthorized(text)
    if code in REJECTED_COMMIT_CODES:
        return CommitRejected(text)
    return ClientError(text)


def _tps(partitions) -> list[ConfluentTopicPartition]:
    return [ConfluentTopicPartition(tp.topic, tp.partition) for tp in partitions]


def _offsets(offsets: dict[TopicPartition, int]) -> list[ConfluentTopicPartition]:
    return [ConfluentTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]


def _known(offset: int) -> int | None:
    return offset if offset >= 0 else None  # librdkafka's OFFSET_INVALID etc. are negative


def adapt(messages: Sequence[Message]) -> tuple[dict[TopicPartition, list[Record]], KafkaError | None]:
    """Records by partition, in order; messages carrying an error (partition EOF, a transient fetch
    error) are no records: the first such error is returned beside them."""
    polled: dict[TopicPartition, list[Record]] = {}
    error = None
    last_key: tuple | None = None
    batch: list[Record] = []
    for m in messages:  # the hot loop: one tuple per record
        if m.error() is not None:
            error = error or m.error()
            continue
        topic, partition = m.topic(), m.partition()
        if (topic, partition) != last_key:
            last_key = (topic, partition)
            batch = polled.setdefault(TopicPartition(topic, partition), [])
        batch.append(Record(topic, partition, m.offset(), m.timestamp()[1], m.key(), m.value()))
    return polled, error


class ConfluentBackend(AdminOperations):
    """Clients with kafka_python.py's measured settings (README, Performance), on librdkafka;
    administration on kafka-python (``AdminOperations``)."""

    def consumer(self, config, index: int) -> ConfluentConsumer:
        try:
            return ConfluentConsumer(consumer_options(config, index))
        except KafkaException as exc:
            raise client_error(exc) from exc

    def producer(self, config) -> ConfluentProducer:
        try:
            return ConfluentProducer(Producer(producer_options(config, "loginpipe-pipeline")))
        except KafkaException as exc:
            raise client_error(exc) from exc

    def transactional_producer(self, config, transactional_id: str) -> ConfluentTransactions:
        try:
            return ConfluentTransactions(Producer(transactional_options(config, transactional_id)))
        except KafkaException as exc:
            raise client_error(exc) from exc

    def reader(self, config) -> ConfluentReader:
        try:
            return ConfluentReader(Consumer(reader_options(config)))
        except KafkaException as exc:
            raise client_error(exc) from exc


class ConfluentConsumer:
    """A group member. Not thread-safe beyond what the seam asks: one worker thread uses it."""

    def __init__(self, options: dict[str, Any], make: Callable[[dict], Any] = Consumer) -> None:
        self._state = "not joined yet"
        self._consumer = make({**options, "stats_cb": self._on_stats, "error_cb": self._on_error})
        self._paused: set[TopicPartition] = set()  # librdkafka cannot list them
        self._closing = False
        self._last_error: KafkaError | None = None
        self._denied: Exception | None = None  # an authorization failure seen beside records
        self._seeks: dict[TopicPartition, int] = {}  # seeks librdkafka could not take yet (seek)
        self._starts: dict[TopicPartition, int] = {}  # where partitions start (position)

    # callbacks: librdkafka runs them inside poll/consume, on the worker's thread

    def _on_stats(self, text: str) -> None:
        with contextlib.suppress(ValueError, TypeError):
            group = json.loads(text).get("cgrp") or {}
            self._state = f"group {group.get('state', '?')}, join {group.get('join_state', '?')}"

    def _on_error(self, error: KafkaError) -> None:
        self._last_error = error

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        consumer = self._consumer

        def on_assign(_: Consumer, partitions: list) -> None:
            if self._closing:
                return
            consumer.assign(partitions)
            owned = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
            # a new assignment starts unpaused, as kafka-python's: the listener pauses what waits
            self._paused.clear()
            self._seeks.clear()
            self._starts.clear()
            if partitions:
                consumer.resume(partitions)
            listener.assigned(owned)

        def on_revoke(_: Consumer, partitions: list) -> None:
            revoked = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
            if self._closing:  # close() leaves the group; the worker committed before it
                return
            # a lost assignment goes to on_lost instead: librdkafka calls this one only when given none
            offsets = listener.revoking(revoked)
            error = None
            if offsets:
                try:
                    consumer.commit(offsets=_offsets(offsets), asynchronous=False)
                except KafkaException as exc:
                    mapped = client_error(exc)
                    error = mapped if isinstance(mapped, ClientError) else ClientError(str(mapped))
            listener.handed_over(offsets, error)
            self._paused.clear()
            self._seeks.clear()
            self._starts.clear()

        def on_lost(_: Consumer, partitions: list) -> None:
            self._paused.clear()
            self._seeks.clear()
            self._starts.clear()
            if not self._closing:  # nothing committed: another member may own them already
                listener.lost([TopicPartition(tp.topic, tp.partition) for tp in partitions])

        try:
            consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        except KafkaException as exc:
            raise client_error(exc) from exc

    def warm_up(self, topic: str) -> None:
        try:
            self._consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise client_error(exc) from exc

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if self._denied is not None:
            denied, self._denied = self._denied, None
            raise denied
        consumer = self._consumer
        try:
            if self._seeks:
                self._apply_seeks()
            # consume() waits for a full batch or the timeout: wait for the first record only,
            # then take what is already fetched
            first = consumer.poll(timeout_ms / 1000)
            if first is None:
                return {}
            messages = [first]
            if max_records > 1:
                messages.extend(consumer.consume(max_records - 1, 0))
        except KafkaException as exc:
            raise client_error(exc) from exc
        polled, error = adapt(messages)
        for tp in self._seeks.keys() & polled.keys():
            del polled[tp]  # read from before a seek not taken yet: read again after it
        if error is not None and error.code() in AUTHORIZATION_CODES:
            if not polled:
                raise NotAuthorized(f"{error.name()}: {error.str()}")
            self._denied = NotAuthorized(f"{error.name()}: {error.str()}")  # after these are handled
        return polled

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        # librdkafka's synchronous commit has no timeout of its own: it ends within its request
        # timeout (socket.timeout.ms)
        try:
            self._consumer.commit(offsets=_offsets(offsets), asynchronous=False)
        except KafkaException as exc:
            raise client_error(exc) from exc

    def assignment(self) -> set:
        try:
            return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        except KafkaException:
            return set()

    def seek(self, tp, offset: int) -> None:
        """librdkafka refuses to seek a partition it is not fetching yet (just assigned, its
        start offset still being looked up): such a seek waits in ``_seeks`` and is applied at a
        later poll; the partition's records are dropped until then (they would be read again)."""
        key = TopicPartition(tp.topic, tp.partition)
        self._seeks.pop(key, None)
        self._starts.pop(key, None)
        if offset >= 0:
            self._starts[key] = offset
        if not self._seek_now(key, offset):
            self._seeks[key] = offset

    def _seek_now(self, tp: TopicPartition, offset: int) -> bool:
        try:
            self._consumer.seek(ConfluentTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError._STATE:
                return False
            raise client_error(exc) from exc
        return True

    def _apply_seeks(self) -> None:
        for tp, offset in list(self._seeks.items()):
            if self._seek_now(tp, offset):
                del self._seeks[tp]

    def pause(self, partitions) -> None:
        if partitions:
            self._consumer.pause(_tps(partitions))
            self._paused.update(TopicPartition(tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions) -> None:
        if partitions:
            self._consumer.resume(_tps(partitions))
            self._paused.difference_update(TopicPartition(tp.topic, tp.partition) for tp in partitions)

    def paused(self) -> set:
        return set(self._paused)

    def highwater(self, tp) -> int | None:
        # the high-water mark of the last fetch response: no request
        try:
            _, high = self._consumer.get_watermark_offsets(
                ConfluentTopicPartition(tp.topic, tp.partition), cached=True)
        except KafkaException:
            return None
        return _known(high)

    def position(self, tp, timeout_ms: int) -> int | None:
        """librdkafka knows a position only once a record of the partition was consumed; before
        that it is where the partition starts (kafka-python's answer): the seek, else the group's
        committed offset, else (auto.offset.reset earliest) the log start. Looked up once."""
        key = TopicPartition(tp.topic, tp.partition)
        try:
            [found] = self._consumer.position([ConfluentTopicPartition(tp.topic, tp.partition)])
            if found.offset >= 0:
                return found.offset
            if key not in self._starts:
                self._starts[key] = self._start_of(key, timeout_ms / 1000)
        except KafkaException:
            return None  # the broker may be away: unknown for now
        return self._starts[key]

    def _start_of(self, tp: TopicPartition, timeout_s: float) -> int:
        wanted = ConfluentTopicPartition(tp.topic, tp.partition)
        [committed] = self._consumer.committed([wanted], timeout=timeout_s)
        if committed.offset >= 0:
            return committed.offset
        low, _ = self._consumer.get_watermark_offsets(wanted, timeout=timeout_s)
        return low

    def membership(self) -> str:
        owned = len(self.assignment())
        words = f"{self._state}, {owned} partition(s) assigned"
        if self._last_error is not None:
            words += f", last client error {self._last_error.name()}"
        return words

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def committed_offsets(self, partitions, timeout_s: float) -> dict:
        """With read_committed, librdkafka asks for stable offsets: waits while a transaction
        holds them."""
        try:
            found = self._consumer.committed(_tps(partitions), timeout=timeout_s)
        except KafkaException as exc:
            raise client_error(exc) from exc
        return {TopicPartition(tp.topic, tp.partition): _known(tp.offset) for tp in found}

    def seek_to_beginning(self, partitions) -> None:
        for tp in partitions:
            self.seek(tp, OFFSET_BEGINNING)

    def close(self, timeout_s: float) -> None:
        """Leaves the group (static members do not: their partitions wait for them); no commit."""
        self._closing = True
        _close_within(self._consumer.close, timeout_s)


def _close_within(close: Callable[[], None], timeout_s: float) -> None:
    """``close`` has no timeout of its own and may wait for a broker that is away: run it on a
    daemon thread and return after ``timeout_s`` at most."""
    def run() -> None:
        with contextlib.suppress(KafkaException, RuntimeError):
            close()

    thread = threading.Thread(target=run, name="librdkafka-close", daemon=True)
    thread.start()
    thread.join(max(0.1, timeout_s))


class ConfluentReader:
    """A consumer outside any group (its group id is never joined or committed to)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._assigned: set[TopicPartition] = set()

    def assign(self, partitions) -> None:
        """Kept partitions keep their position; new ones start at their beginning."""
        wanted = {TopicPartition(tp.topic, tp.partition) for tp in partitions}
        gone, fresh = self._assigned - wanted, wanted - self._assigned
        try:
            if gone:
                self._consumer.incremental_unassign(_tps(sorted(gone)))
            if fresh:
                starts = [ConfluentTopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)
                          for tp in sorted(fresh)]
                self._consumer.incremental_assign(starts)
        except KafkaException as exc:
            raise client_error(exc) from exc
        self._assigned = wanted

    def end_offsets(self, partitions) -> dict:
        ends = {}
        try:
            for tp in partitions:
                _, high = self._consumer.get_watermark_offsets(
                    ConfluentTopicPartition(tp.topic, tp.partition), timeout=10)
                ends[TopicPartition(tp.topic, tp.partition)] = high
        except KafkaException as exc:
            raise client_error(exc) from exc
        return ends

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        try:
            messages = self._consumer.consume(max_records, timeout_ms / 1000)
        except KafkaException as exc:
            raise client_error(exc) from exc
        polled, error = adapt(messages)
        if error is not None and error.code() in AUTHORIZATION_CODES and not polled:
            raise NotAuthorized(f"{error.name()}: {error.str()}")
        return polled

    def position(self, tp) -> int | None:
        try:
            [found] = self._consumer.position([ConfluentTopicPartition(tp.topic, tp.partition)])
        except KafkaException:
            return None
        return _known(found.offset)

    def close(self) -> None:
        _close_within(self._consumer.close, 1.0)


class Delivery:
    """One record's outcome, set by librdkafka's delivery report (on the delivery thread)."""

    __slots__ = ("exception", "is_done")

    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None

    def report(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.exception = error_of(error)
        self.is_done = True

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None


class ConfluentProducer:
    """Thread-safe, as librdkafka's producer is; a thread serves its delivery reports."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="librdkafka-deliveries", daemon=True)
        self._poller.start()

    def _serve(self) -> None:
        """Delivery reports run only inside poll/flush: while the workers are busy elsewhere,
        this thread runs them (it waits inside librdkafka, without the GIL)."""
        poll, stopped = self._producer.poll, self._stop.is_set
        while not stopped():
            with contextlib.suppress(KafkaException, RuntimeError):
                poll(DELIVERY_POLL_S)

    def send_batch(self, records: Sequence) -> list:
        """Queue every record; return their deliveries, in order. A record that cannot be queued
        (a full queue for MAX_BLOCK_S, a refused record) fails, and so do the rest of the batch."""
        produce = self._producer.produce
        deliveries: list = []
        try:
            for r in records:  # the hot loop: one call per record, nothing else
                delivery = Delivery()
                partition = r.partition
                try:
                    produce(r.topic, r.value, r.key, partition=-1 if partition is None else partition,
                            on_delivery=delivery.report, timestamp=r.timestamp_ms or 0, headers=r.headers)
                except BufferError:
                    self._produce_when_room(r, delivery)
                deliveries.append(delivery)
        except (KafkaException, BufferError, RuntimeError) as exc:
            mapped = client_error(exc) if isinstance(exc, KafkaException) else ClientError(repr(exc))
            if isinstance(mapped, NotAuthorized):
                raise mapped from exc
            failed = Failed(NotQueued(str(mapped)))
            deliveries.extend(failed for _ in range(len(records) - len(deliveries)))
        self._producer.poll(0)  # run the reports that are due
        return deliveries

    def _produce_when_room(self, r, delivery: Delivery) -> None:
        """The queue is full: serve reports (which frees room) and try again until MAX_BLOCK_S."""
        deadline = time.monotonic() + MAX_BLOCK_S
        while True:
            self._producer.poll(FULL_QUEUE_POLL_S)
            try:
                self._producer.produce(
                    r.topic, r.value, r.key, partition=-1 if r.partition is None else r.partition,
                    on_delivery=delivery.report, timestamp=r.timestamp_ms or 0, headers=r.headers)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise

    def flush(self, timeout_s: float) -> None:
        try:
            remaining = self._producer.flush(timeout_s)
        except (KafkaException, RuntimeError) as exc:
            raise ClientError(repr(exc)) from exc
        if remaining:
            raise ClientError(f"{remaining} record(s) not delivered within {timeout_s:g}s")

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued within ``timeout_s``; fail whatever is left (its deliveries get
        an error). Never raises."""
        producer = self._producer
        self._stop.set()
        try:
            if timeout_s <= 0 or producer.flush(timeout_s):
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.flush(0)  # runs the purged records' reports
        except (KafkaException, RuntimeError):
            pass
        self._poller.join(DELIVERY_POLL_S * 5)


class ConfluentTransactions(ConfluentProducer):
    """librdkafka's transaction calls, each with a deadline; every failure (retriable, abortable or
    fatal) a ClientError: the caller closes this producer and makes a new one with the same id."""

    def init(self, timeout_s: float) -> None:
        self._call(lambda: self._producer.init_transactions(timeout_s))

    def begin(self) -> None:
        self._call(self._producer.begin_transaction)

    def commit(self, offsets: dict, group_metadata: object, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if offsets:
            self._call(lambda: self._producer.send_offsets_to_transaction(
                _offsets(offsets), group_metadata, max(0.001, deadline - time.monotonic())))
        self._call(lambda: self._producer.commit_transaction(max(0.001, deadline - time.monotonic())))

    @staticmethod
    def _call(call: Callable[[], object]) -> None:
        try:
            call()
        except KafkaException as exc:
            raise client_error(exc) from exc
        except RuntimeError as exc:  # closed meanwhile
            raise ClientError(repr(exc)) from exc
