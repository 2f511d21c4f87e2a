"""The internal subcommands, each a child process of a step: preload, consume-only, pass-through,
memory, changelog-lines, restore and visible."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from loginpipe.benchmark.common import emit_result, int_list, interrupt
from loginpipe.cli import EnvArgumentParser, non_negative_float, positive_int
from loginpipe.config import PipelineConfig, pipeline_config
from loginpipe.errors import UserError

CHILD_COMMANDS = ("preload", "consume-only", "pass-through", "memory", "changelog-lines", "restore",
                  "visible", "serializers")
POLL_TIMEOUT_MS = 200


# --- preload ---------------------------------------------------------------------------------

def cmd_preload(args) -> int:
    """Write ``--count`` generated events at full speed, like the generator CLI with --rate 0."""
    from loginpipe.local.generator import EventGenerator, make_producer

    producer = make_producer(args.bootstrap_servers)
    generator = EventGenerator(seed=args.seed, bad_ratio=args.bad_ratio)
    failures: list[BaseException] = []
    kinds: Counter = Counter()
    value_bytes = key_bytes = 0
    started = last_report = time.monotonic()
    try:
        for sent, record in enumerate(generator.generate(args.count), 1):
            future = producer.send(args.topic, key=record.key, value=record.value)
            if not failures:
                future.add_errback(failures.append)
            value_bytes += len(record.value)
            key_bytes += len(record.key)
            kinds[record.kind] += 1
            if sent % 5000 == 0 and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                print(f"preload: {sent:,}/{args.count:,} events "
                      f"({sent / (last_report - started):,.0f} events/s)", file=sys.stderr, flush=True)
            if failures:
                break
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise UserError(f"sending to {args.topic} failed: {failures[0]}")
    elapsed = time.monotonic() - started
    emit_result({"events": args.count, "seconds": elapsed, "events_per_s": args.count / elapsed,
                 "value_bytes": value_bytes, "key_bytes": key_bytes, "kinds": dict(kinds)})
    return 0


# --- consumer runs: shared pieces ------------------------------------------------------------

def _child_pipeline_config(args, output_topic: str | None = None) -> PipelineConfig:
    """The pipeline's own settings (flags and environment alike), for the same topics and group."""
    out = output_topic or args.topic
    return pipeline_config(["--bootstrap-servers", args.bootstrap_servers, "--input-topic", args.topic,
                            "--output-topic", out, "--dlq-topic", out, "--group-id", args.group,
                            "--quiet"])


def _print_timing(consumed: int, elapsed_s: float, busy_s: float, extra: dict) -> None:
    """The same figures the pipeline's summary prints, so the parent reads every run alike."""
    rate = consumed / elapsed_s if elapsed_s > 0 else 0.0
    print(f"consumed {consumed:,} in {elapsed_s:.1f}s ({rate:,.0f} msg/s)", flush=True)
    print(f"timing: first record to last processed in {busy_s:.3f}s", flush=True)
    emit_result({"consumed": consumed, "elapsed_s": elapsed_s, "busy_s": busy_s, **extra})


class _Progress:
    def __init__(self, label: str, total: int, every_s: float = 2.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.at = time.monotonic()

    def __call__(self, count: int) -> None:
        now = time.monotonic()
        if now - self.at >= self.every_s:
            self.at = now
            print(f"{self.label}: {count:,}/{self.total:,} records", file=sys.stderr, flush=True)


def _idle_error(args, count: int) -> UserError:
    return UserError(f"no records for {args.idle_timeout:g}s after {count:,} of {args.count:,}")


# --- consume-only ----------------------------------------------------------------------------

class _LoopTimes:
    """Record count, first and last record times and the idle limit of a child's poll loop."""

    def __init__(self, label: str, args) -> None:
        self.args = args
        self.started = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0
        self._idle_since = self.started
        self._progress = _Progress(label, args.count)

    def got(self, n: int, polled_at: float) -> None:
        """``n`` records arrived at ``polled_at`` and are done now."""
        if self.first is None:
            self.first = polled_at
        self.count += n
        self.last = self._idle_since = time.monotonic()
        self._progress(self.count)

    def check_idle(self) -> None:
        if time.monotonic() - self._idle_since > self.args.idle_timeout:
            raise _idle_error(self.args, self.count)

    @property
    def busy_s(self) -> float:
        return (self.last or 0.0) - (self.first or 0.0)


class _NoHandOver:
    """A benchmark child is the group's only member: rebalances hand nothing over."""

    def assigned(self, partitions) -> None:
        pass

    def revoking(self, partitions) -> dict:
        return {}

    def handed_over(self, offsets, error) -> None:
        pass

    def lost(self, partitions) -> None:
        pass


def cmd_consume_only(args) -> int:
    """A KafkaConsumer set up exactly like the pipeline's; poll in batches until N records."""
    import logging

    from loginpipe.kafka.kafka_python import KafkaPythonBackend
    from loginpipe.runtime.app import tune_gc

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    tune_gc()  # as the pipeline does, so the ceilings are measured on the same footing
    config = _child_pipeline_config(args)
    consumer = KafkaPythonBackend().consumer(config, 0)  # set up exactly like the pipeline's
    times = _LoopTimes("consume-only", args)
    try:
        consumer.warm_up(args.topic)
        consumer.subscribe([args.topic], _NoHandOver())
        while times.count < args.count:
            polled = consumer.poll(POLL_TIMEOUT_MS, config.max_poll_records)
            if polled:
                times.got(sum(len(batch) for batch in polled.values()), time.monotonic())
            else:
                times.check_idle()
    finally:
        consumer.close(10.0)
    _print_timing(times.count, time.monotonic() - times.started, times.busy_s,
                  {"client": "kafka-python", "max_poll_records": config.max_poll_records})
    return 0


# --- pass-through ----------------------------------------------------------------------------

def cmd_pass_through(args) -> int:
    if args.client == "confluent":
        return _pass_through_confluent(args)
    return _pass_through_kafka_python(args)


def _pass_through_kafka_python(args) -> int:
    """Consume, produce the raw bytes with the pipeline's producer, commit after acknowledgements."""
    import logging

    from loginpipe.core.records import OutputRecord
    from loginpipe.kafka.kafka_python import KafkaPythonBackend
    from loginpipe.runtime.app import tune_gc
    from loginpipe.runtime.checkpoint import Checkpointer
    from loginpipe.runtime.context import Warner
    from loginpipe.runtime.delivery import Sender

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    tune_gc()  # as the pipeline does, so the ceilings are measured on the same footing
    config = _child_pipeline_config(args, args.output_topic)
    backend, warn = KafkaPythonBackend(), Warner()
    # The pipeline's own producer settings (snappy, linger, acks=all, ...) and delivery path.
    sender = Sender(lambda: backend.producer(config), warn)
    consumer = backend.consumer(config, 0)
    checkpointer = Checkpointer(consumer, sender, config.commit_every_records,
                                config.commit_interval_ms / 1000, warn)
    out_topic = args.output_topic
    times = _LoopTimes("pass-through", args)
    try:
        consumer.warm_up(args.topic)
        consumer.subscribe([args.topic], _NoHandOver())
        while times.count < args.count:
            polled = consumer.poll(POLL_TIMEOUT_MS, config.max_poll_records)
            if polled:
                polled_at = time.monotonic()
                # A copy keyed like its input goes to the input's partition number (the output
                # topic has as many), as the pipeline does: no murmur2 hashing in Python.
                outputs = [OutputRecord(out_topic, r.key, r.value, partition=r.partition)
                           for batch in polled.values() for r in batch]
                offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items()}
                checkpointer.send(offsets, outputs, None, len(outputs))
                times.got(len(outputs), polled_at)
            else:
                times.check_idle()
            checkpointer.collect()
            checkpointer.maybe_commit()
        all_committed = checkpointer.commit_all(deadline=time.monotonic() + 60.0)
        acked_at = time.monotonic()
    finally:
        consumer.close(10.0)
        sender.close(timeout_s=10)
    if not all_committed:
        raise UserError("some outputs were never acknowledged")
    _print_timing(times.count, time.monotonic() - times.started, times.busy_s,
                  {"client": "kafka-python", "first_to_all_acked_s": acked_at - (times.first or 0.0)})
    return 0


def _confluent_clients(config: PipelineConfig) -> tuple[Any, Any]:
    """A confluent-kafka consumer and producer with the pipeline's group, topics and producer settings."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({
        "bootstrap.servers": config.bootstrap_servers, "group.id": config.group_id,
        "client.id": "loginpipe-bench-confluent", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 2 * 1024 * 1024, "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
    })
    producer = Producer({
        "bootstrap.servers": config.bootstrap_servers, "client.id": "loginpipe-bench-confluent",
        "acks": "all", "enable.idempotence": True, "compression.type": "snappy",
        "linger.ms": config.linger_ms, "batch.size": config.batch_size,
        "delivery.timeout.ms": 30_000, "request.timeout.ms": 10_000,
    })
    return consumer, producer


class _ConfluentRelay:
    """Produces a copy of each consumed message; commits a batch's offsets once all of it is delivered."""

    def __init__(self, consumer, producer, out_topic: str, config: PipelineConfig) -> None:
        self.consumer, self.producer, self.out_topic, self.config = consumer, producer, out_topic, config
        self.pending: deque[list] = deque()  # [offsets, outstanding deliveries]
        self.failures: list = []
        self.acked: dict = {}
        self.since_commit = 0
        self.last_commit = time.monotonic()

    def relay(self, messages: list) -> None:
        batch = [{}, len(messages)]
        self.pending.append(batch)
        for m in messages:
            batch[0][(m.topic(), m.partition())] = m.offset() + 1
            self.produce(m, batch)
        self.since_commit += len(messages)

    def produce(self, msg, batch: list) -> None:
        def delivered(err, _msg) -> None:
            if err is not None:
                self.failures.append(err)
                self.produce(msg, batch)  # again, like the pipeline's Sender: nothing is dropped
            else:
                batch[1] -= 1

        while True:
            try:
                self.producer.produce(self.out_topic, value=msg.value(), key=msg.key(),
                                      partition=msg.partition(), on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.05)

    def commit(self, force: bool = False) -> None:
        from confluent_kafka import TopicPartition

        while self.pending and self.pending[0][1] == 0:
            self.acked.update(self.pending.popleft()[0])
        due = self.since_commit >= self.config.commit_every_records or \
            time.monotonic() - self.last_commit >= self.config.commit_interval_ms / 1000
        if self.acked and (due or force):
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self.acked.items()],
                                 asynchronous=False)
            self.acked.clear()
            self.since_commit, self.last_commit = 0, time.monotonic()


def _pass_through_confluent(args) -> int:
    """The same pass-through with confluent-kafka (librdkafka): commits follow delivery reports."""
    try:
        from confluent_kafka import KafkaException
    except ImportError:
        raise UserError("confluent-kafka is not installed (pip install confluent-kafka)") from None

    config = _child_pipeline_config(args, args.output_topic)
    consumer, producer = _confluent_clients(config)
    relay = _ConfluentRelay(consumer, producer, args.output_topic, config)
    started = time.monotonic()
    first = last = None
    count = 0
    progress = _Progress("pass-through (confluent)", args.count)
    try:
        consumer.subscribe([args.topic])
        idle_since = time.monotonic()
        while count < args.count:
            messages = consumer.consume(num_messages=config.max_poll_records, timeout=POLL_TIMEOUT_MS / 1000)
            now = time.monotonic()
            messages = [m for m in messages if m.error() is None]
            if messages:
                if first is None:
                    first = now
                relay.relay(messages)
                count += len(messages)
                last = idle_since = time.monotonic()
                progress(count)
            elif now - idle_since > args.idle_timeout:
                raise _idle_error(args, count)
            producer.poll(0)
            relay.commit()
        if producer.flush(60) != 0:
            raise UserError("some outputs were never acknowledged")
        acked_at = time.monotonic()
        relay.commit(force=True)
    except KafkaException as exc:
        raise UserError(f"confluent-kafka: {exc}") from None
    finally:
        consumer.close()
    _print_timing(count, time.monotonic() - started, (last or 0.0) - (first or 0.0),
                  {"client": "confluent-kafka", "first_to_all_acked_s": acked_at - (first or 0.0),
                   "delivery_failures": len(relay.failures)})
    return 0


# --- memory ----------------------------------------------------------------------------------

_VERSIONS = ("2.3.0", "2.4.1", "2.2.0", "1.9.8", "3.0.0")
_LOCALES = ("CA", "NY", "TX", "FL", "WA", "GB", "DE")
_DEVICE_TYPES = ("android", "ios")


_EPOCH_S = 1_795_000_000.0


def synthetic_observations(count: int, rng) -> list[tuple[SimpleNamespace, str]]:
    """``count`` (event, device type) pairs of distinct users, each with its own device and IP."""
    batch = []
    for i in range(count):
        user = f"{rng.getrandbits(128):032x}"
        device = f"{rng.getrandbits(128):032x}"
        ip = rng.getrandbits(32)
        event = SimpleNamespace(
            app_version=_VERSIONS[i % 5], locale=_LOCALES[i % 7],
            user_id=f"{user[:8]}-{user[8:12]}-4{user[13:16]}-a{user[17:20]}-{user[20:]}",
            ip=f"{(ip >> 24) % 223 + 1}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}",
            device_id=f"{device[:8]}-{device[8:12]}-4{device[13:16]}-b{device[17:20]}-{device[20:]}",
            epoch_s=_EPOCH_S + i % 3600,  # an hour of logins, as a live stream has
        )
        batch.append((event, _DEVICE_TYPES[i & 1]))
    return batch


def _own_copy(text: str) -> str:
    """An equal string that is a separate object, as the device step holds a user id: it decodes
    it from a repartition record, so it shares nothing with the login step's key."""
    return text.encode().decode()


def cmd_memory(args) -> int:
    """Feed one partition's stores (a LoginState and a DeviceState, as one process owning every
    partition holds them; ``--stores`` login or device: only that one) with distinct users; RSS at
    each point of ``--points``."""
    import gc
    import random

    import psutil

    from loginpipe.state.changelog import device_changes, login_changes
    from loginpipe.state.stores import DEFAULT_MAX_TRACKED_KEYS, DeviceState, LoginState, ProcessTotals

    process = psutil.Process()
    rng = random.Random(args.seed)
    max_keys = args.max_tracked_keys or DEFAULT_MAX_TRACKED_KEYS
    logins, devices, totals = LoginState(0, max_keys), DeviceState(0, max_keys), ProcessTotals()
    feed_logins, feed_devices = args.stores in ("both", "login"), args.stores in ("both", "device")
    gc.collect()
    points = [{"users": 0, "rss_bytes": process.memory_info().rss}]
    fed = 0
    started = time.monotonic()
    for target in args.points:
        while fed < target:
            n = min(20_000, target - fed)
            batch = [(fed + i, event, device_type)
                     for i, (event, device_type) in enumerate(synthetic_observations(n, rng))]
            if feed_logins:
                logins.count(batch, totals)
                login_changes(logins, "changelog")  # what the pipeline writes, then lets go of
            if feed_devices:
                devices.count([(offset, event.device_id, _own_copy(event.user_id))
                               for offset, event, _ in batch])
                device_changes(devices, "changelog")
            del batch
            fed += n
        gc.collect()
        rss = process.memory_info().rss
        points.append({"users": fed, "rss_bytes": rss, "tracked_users": len(logins.ips_by_user),
                       "tracked_devices": len(devices.users_by_device)})
        print(f"memory ({args.stores}): {fed:,} users, RSS {rss / 2**20:,.0f} MiB, tracking "
              f"{len(logins.ips_by_user):,} users, {len(devices.users_by_device):,} devices",
              file=sys.stderr, flush=True)
    emit_result({"max_tracked_keys": logins.ips_by_user.max_keys, "stores": args.stores, "points": points,
                 "seconds": time.monotonic() - started})
    return 0


# --- state: a synthetic changelog, and restores ------------------------------------------------

def cmd_changelog_lines(args) -> int:
    """The changelog records of ``--users`` distinct users (each with its own IP and device), made
    by the pipeline's own code (its stores count them, its changelog code makes the records), as
    ``key<TAB>value`` lines for Kafka's console producer: the aggregates changelog's to
    ``--login-file``, the devices changelog's to ``--device-file``. The stores are uncapped, so
    nothing is forgotten (no tombstones): one record per user and per device, plus the counts."""
    import random

    from loginpipe.state.changelog import device_changes, login_changes
    from loginpipe.state.stores import DeviceState, LoginState, ProcessTotals

    rng = random.Random(args.seed)
    uncapped = 2 * args.users + 2
    logins, devices, totals = LoginState(0, uncapped), DeviceState(0, uncapped), ProcessTotals()
    written = 0
    counted = {"login": [0, 0], "device": [0, 0]}  # records, key and value bytes
    started = time.monotonic()
    progress = _Progress("changelog-lines", args.users)
    with open(args.login_file, "wb") as login_out, open(args.device_file, "wb") as device_out:
        while written < args.users:
            n = min(20_000, args.users - written)
            batch = [(written + i, event, device_type)
                     for i, (event, device_type) in enumerate(synthetic_observations(n, rng))]
            logins.count(batch, totals)
            devices.count([(offset, event.device_id, _own_copy(event.user_id)) for offset, event, _ in batch])
            for name, out, records in (("login", login_out, login_changes(logins, "changelog")),
                                       ("device", device_out, device_changes(devices, "changelog"))):
                lines = [r.key + b"\t" + r.value for r in records if r.value is not None]
                out.write(b"\n".join(lines) + b"\n")
                counted[name][0] += len(lines)
                counted[name][1] += sum(map(len, lines)) - len(lines)
            written += n
            progress(written)
    emit_result({"users": args.users, "devices": len(devices.users_by_device),
                 "login_records": counted["login"][0], "device_records": counted["device"][0],
                 "records": counted["login"][0] + counted["device"][0],
                 "key_value_bytes": counted["login"][1] + counted["device"][1],
                 "seconds": time.monotonic() - started})
    return 0


def cmd_restore(args) -> int:
    """Rebuild every partition's stores of ``--group`` from its changelogs, timed: ``--via
    restorer`` as a worker does when partitions are assigned to it (state/restore.py's Restorer,
    one worker owning every partition), ``--via query`` as ``python -m loginpipe.query`` does
    (``read_group_state``)."""
    import logging

    from loginpipe.kafka.admin import describe_partitions
    from loginpipe.state.stores import COUNTS
    from loginpipe.topics import InternalTopics

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    topics = InternalTopics.of(args.group)
    names = [topics.changelog, topics.device_changelog]
    partitions = describe_partitions(args.bootstrap_servers, names)
    if len(partitions) < 2:
        raise UserError(f"group {args.group} has no changelogs to restore")
    records = _records_in(args.bootstrap_servers, partitions)
    started = time.monotonic()
    if args.via == "query":
        from loginpipe.query import read_group_state

        logins, devices = read_group_state(args.bootstrap_servers, args.group)
    else:
        logins, devices = _restore_like_a_worker(args.bootstrap_servers, topics, partitions)
    seconds = time.monotonic() - started
    users = sum(len(s.ips_by_user) for s in logins)
    devices_n = sum(len(s.users_by_device) for s in devices)
    labels = sum(len(s.counts(name).counts) for s in logins for name in COUNTS)
    emit_result({"via": args.via, "seconds": seconds, "records": records, "users": users,
                 "devices": devices_n, "count_labels": labels, "keys": users + devices_n + labels,
                 "events": sum(s.events for s in logins)})
    return 0


def _records_in(bootstrap: str, partitions: dict[str, int]) -> int:
    """Records between the first and the end offsets of the topics (exact unless compacted)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for topic, n in partitions.items() for p in range(n)]
        firsts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return sum(ends[tp] - firsts[tp] for tp in tps)
    finally:
        consumer.close()


def _restore_like_a_worker(bootstrap: str, topics, partitions: dict[str, int]) -> tuple[list, list]:
    """The worker's restore (state/restore.py) of every partition at once, stepped until done."""
    from loginpipe.kafka.base import TopicPartition
    from loginpipe.kafka.kafka_python import KafkaPythonBackend
    from loginpipe.runtime.context import Warner
    from loginpipe.state.restore import Restorer
    from loginpipe.state.stores import DeviceState, LoginState

    backend = KafkaPythonBackend()
    config = PipelineConfig(connection=bootstrap)
    restorer = Restorer(lambda: backend.reader(config), Warner())
    logins = [LoginState(p) for p in range(partitions[topics.changelog])]
    devices = [DeviceState(p) for p in range(partitions[topics.device_changelog])]
    for topic, owner, states in ((topics.changelog, "input", logins),
                                 (topics.device_changelog, topics.repartition, devices)):
        for state in states:
            partition = state.partition
            restorer.add(TopicPartition(topic, partition), TopicPartition(owner, partition), state)
    try:
        while restorer.active:
            restorer.step(100)
    finally:
        restorer.close()
    return logins, devices


# --- visible: when outputs become readable ---------------------------------------------------

class _Finish:
    """SIGTERM: read on to the topic's end as it is then, and stop (the writer has stopped)."""

    def __init__(self) -> None:
        self.asked = False
        signal.signal(signal.SIGTERM, self._ask)

    def _ask(self, signum, frame) -> None:
        self.asked = True


def cmd_visible(args) -> int:
    """Tail ``--topic`` from its start as a read_committed reader sees it, writing each record's
    partition, offset and the wall-clock millisecond it was handed over (three int64 each) to
    ``--seen-file``. An exactly-once pipeline's output is visible only once its transaction commits,
    so this, not the record's append timestamp, is when a reader downstream can have it. Prints
    "visible: ready" once its positions are set; on SIGTERM reads to the end offsets of that moment
    and stops."""
    import logging
    from array import array

    from kafka import KafkaConsumer, TopicPartition

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    finish = _Finish()
    # fetch_max_wait_ms: the longest a fetch parks at the broker when nothing new is committed, so
    # the bound on how late a record can be seen for want of a wake-up.
    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap_servers, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             auto_offset_reset="earliest", fetch_max_wait_ms=100, max_poll_records=10_000)
    seen = array("q")
    try:
        numbers = sorted(consumer.partitions_for_topic(args.topic) or [])
        partitions = [TopicPartition(args.topic, p) for p in numbers]
        if not partitions:
            raise UserError(f"topic {args.topic} has no partitions (does it exist?)")
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        for tp in partitions:
            consumer.position(tp)  # resolved now, not at the first record
        print("visible: ready", file=sys.stderr, flush=True)
        _tail(consumer, partitions, seen, finish, args.finish_timeout)
    finally:
        consumer.close()
    with open(args.seen_file, "wb") as out:
        seen.tofile(out)
    emit_result({"records": len(seen) // 3})
    return 0


def _tail(consumer, partitions: list, seen, finish: _Finish, finish_timeout_s: float) -> None:
    """Poll, noting when each record arrives, until SIGTERM and then the end offsets of that moment."""
    ends: dict | None = None
    deadline = float("inf")
    while True:
        polled = consumer.poll(timeout_ms=50)
        now_ms = int(time.time() * 1000)  # the broker's timestamps are wall-clock ms too
        for tp, batch in polled.items():
            for record in batch:
                seen.extend((tp.partition, record.offset, now_ms))
        if finish.asked and ends is None:
            ends = consumer.end_offsets(partitions)  # the last stable offsets: committed data only
            deadline = time.monotonic() + finish_timeout_s
        # the position, not the last record: transaction markers take offsets too
        if ends is not None and all(consumer.position(tp) >= ends[tp] for tp in partitions):
            return
        if time.monotonic() > deadline:
            raise UserError(f"not at the end of {partitions[0].topic} {finish_timeout_s:g}s after the stop")


# --- serializers ---------------------------------------------------------------------------------

def cmd_serializers(args) -> int:
    """The serializer micro-measure (benchmark/serializers.py), in a process of its own: the
    confluent-kafka registry packages go on this process's import path only."""
    from loginpipe.benchmark.serializers import CONFLUENT_SR_DIR, ensure_confluent_sr, run_measure

    why = ensure_confluent_sr() if args.confluent == "auto" else "--confluent-serializer skip"
    if why is None:
        sys.path.append(str(CONFLUENT_SR_DIR))  # after ours: only what we lack comes from there
    result = run_measure(args.records, args.schema_registry_url, args.topic, args.seed, confluent=why is None)
    if why:
        result["notes"].append(f"confluent-kafka AvroSerializer left out: {why}")
    emit_result(result)
    return 0


# --- dispatch --------------------------------------------------------------------------------

def build_child_parser(command: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=f"python -m loginpipe.benchmark {command}",
                               description=f"internal step of the benchmark: {command}")
    if command == "memory":
        parser.add_argument("--points", type=int_list, required=True, help="distinct users to measure at")
        parser.add_argument("--max-tracked-keys", type=int, default=0, help="0: the default")
        parser.add_argument("--stores", choices=["both", "login", "device"], default="both",
                            help="the stores to feed")
        parser.add_argument("--seed", type=int, default=7)
        return parser
    if command == "changelog-lines":
        parser.add_argument("--users", type=positive_int, required=True)
        parser.add_argument("--login-file", required=True)
        parser.add_argument("--device-file", required=True)
        parser.add_argument("--seed", type=int, default=11)
        return parser
    if command == "serializers":
        parser.add_argument("--records", type=positive_int, required=True)
        parser.add_argument("--schema-registry-url", default=None)
        parser.add_argument("--topic", required=True, help="whose subject the contract is registered under")
        parser.add_argument("--confluent", choices=["auto", "skip"], default="auto")
        parser.add_argument("--seed", type=int, default=7)
        return parser
    parser.add_argument("--bootstrap-servers", required=True)
    if command == "restore":
        parser.add_argument("--group", required=True, help="the group whose changelogs to read")
        parser.add_argument("--via", choices=["restorer", "query"], default="restorer")
        return parser
    parser.add_argument("--topic", required=True)
    if command == "visible":
        parser.add_argument("--seen-file", required=True, help="where the (partition, offset, ms) go")
        parser.add_argument("--finish-timeout", type=non_negative_float, default=60.0,
                            help="seconds to reach the end after SIGTERM")
        return parser
    parser.add_argument("--count", type=positive_int, required=True)
    if command == "preload":
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--bad-ratio", type=float, default=0.02)
        return parser
    parser.add_argument("--group", required=True)
    parser.add_argument("--idle-timeout", type=non_negative_float, default=60.0)
    if command == "pass-through":
        parser.add_argument("--output-topic", required=True)
        parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    return parser


def run_child_command(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, interrupt)  # stop cleanly: consumers leave their group
    command, rest = argv[0], argv[1:]
    args = build_child_parser(command).parse_args(rest)
    handler: dict[str, Callable[[Any], int]] = {
        "preload": cmd_preload, "consume-only": cmd_consume_only,
        "pass-through": cmd_pass_through, "memory": cmd_memory,
        "changelog-lines": cmd_changelog_lines, "restore": cmd_restore, "visible": cmd_visible,
        "serializers": cmd_serializers,
    }
    return handler[command](args)
