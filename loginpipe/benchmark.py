"""Benchmark: the pipeline's throughput against its ceilings, its latency and its memory per user.

    python -m loginpipe.benchmark            (or: make bench)

On fresh, uniquely named topics (deleted at the end), one step after the other:

1. preload N events with the generator library at full speed (its own rate is reported);
2. consume the same N events from the beginning, each run with its own consumer group:
   Kafka's Java ConsumerPerformance (the broker's ceiling), kafka-python consume-only,
   kafka-python pass-through (consume, produce the raw bytes with the pipeline's producer
   settings, commit only after acknowledgements: the ceiling for any pipeline on this client),
   optionally the same pass-through with confluent-kafka, then the pipeline per thread count;
3. end-to-end latency of the pipeline at a fixed offered load, joined record by record;
4. memory of the aggregations per distinct user, with and without the default key cap.

Python runs are timed alike: from the first record received to the last record done (the
pipeline's own "timing: first record to last processed" figure). The Java tool's rate is its
fetch time, which also leaves out the group join. CPU seconds and peak RSS of each child
process come from wait4(2). MB are 10^6 bytes of record values.

Results: bench-results/bench-<timestamp>.json, latest.json, latest.md and latest.png.
The internal subcommands preload, consume-only, pass-through and memory are the child
processes of those steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from loginpipe.broker import (
    DEFAULT_HOME,
    PROJECT_ROOT,
    LocalBroker,
    broker_answers,
    ensure_jars,
    kafka_version,
)
from loginpipe.config import (
    EnvArgumentParser,
    PipelineConfig,
    non_negative_float,
    pipeline_config,
    positive_int,
    run_cli,
)
from loginpipe.errors import UserError
from loginpipe.topics import TopicSpec, admin_client, delete_topics, ensure_topics
from loginpipe.waiting import wait_until

DEFAULT_OUT_DIR = PROJECT_ROOT / "bench-results"
RESULT_PREFIX = "BENCH-RESULT "
CHILD_COMMANDS = ("preload", "consume-only", "pass-through", "memory")
MB = 1_000_000
POLL_TIMEOUT_MS = 200
# The latency run produces once the pipeline's group has been Stable this long without a break.
GROUP_SETTLE_S = 3.0
SUMMARY_RE = re.compile(r"consumed ([\d,]+) in [\d.,]+s \([\d,]+ msg/s\): processed ([\d,]+), "
                        r"filtered ([\d,]+), dead-lettered ([\d,]+)")
TIMING_RE = re.compile(r"timing: first record to last processed in ([\d.]+)s")
RESENT_RE = re.compile(r"outputs re-sent after a failed delivery: ([\d,]+)")
GENERATOR_RE = re.compile(r"generator: sent ([\d,]+)(?:/[\d,]+)? events \(([\d,]+) events/s\)")


# ---------------------------------------------------------------------------------------------
# Child processes: output to files, CPU seconds and peak RSS from wait4(2)
# ---------------------------------------------------------------------------------------------

@dataclass
class ChildResult:
    name: str
    returncode: int
    wall_s: float
    cpu_s: float  # user + system
    peak_rss_kib: int  # ru_maxrss: KiB on Linux
    out_path: Path
    err_path: Path

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        text = (self.stdout + self.stderr).strip().splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def check(self) -> ChildResult:
        if self.returncode != 0:
            raise UserError(f"{self.name} exited with code {self.returncode}; output tail:\n{self.tail()}")
        return self

    def result_json(self) -> dict:
        """The last ``BENCH-RESULT {json}`` line that one of our own subcommands printed."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        raise UserError(f"{self.name} printed no result; output tail:\n{self.tail()}")


_LIVE: set[Child] = set()  # children still running, stopped on the way out


class Child:
    """One child process of a benchmark step."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path) -> None:
        self.name = name
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        self.out_path = log_dir / f"{slug}.out"
        self.err_path = log_dir / f"{slug}.err"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env)
        self.started = time.monotonic()
        self.result: ChildResult | None = None
        self._shown = ""
        _LIVE.add(self)

    def poll(self) -> ChildResult | None:
        """The result once the process has exited (reaping it), else None."""
        if self.result is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.result = ChildResult(self.name, self.proc.returncode, time.monotonic() - self.started,
                                      usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                                      self.out_path, self.err_path)
            _LIVE.discard(self)
        return self.result

    def wait(self, timeout_s: float, progress_every_s: float = 10.0) -> ChildResult:
        """Wait for the exit; echo the child's latest progress line now and then."""
        deadline = time.monotonic() + timeout_s
        next_progress = time.monotonic() + progress_every_s
        while (result := self.poll()) is None:
            now = time.monotonic()
            if now >= deadline:
                stopped = self.stop()
                raise UserError(f"{self.name} did not finish within {timeout_s:.0f}s; output tail:\n"
                                f"{stopped.tail() if stopped else '(still running)'}")
            if progress_every_s and now >= next_progress:
                next_progress = now + progress_every_s
                self._show_progress()
            time.sleep(0.05)
        return result

    def _show_progress(self) -> None:
        with contextlib.suppress(OSError):
            lines = [x for x in self.err_path.read_text(errors="replace").splitlines() if x.strip()]
            if lines and lines[-1] != self._shown:
                self._shown = lines[-1]
                say(f"      {self._shown.strip()}")

    def stop(self, grace_s: float = 15.0) -> ChildResult | None:
        """SIGTERM (a clean stop for our commands), SIGKILL after ``grace_s``."""
        if self.poll() is not None:
            return self.result
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        if wait_until(self.poll, grace_s, interval_s=0.05) is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            wait_until(self.poll, 5.0, interval_s=0.05)
        return self.result


def say(text: str) -> None:
    print(text, flush=True)


def emit_result(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def python_child(*args: str) -> list[str]:
    return [sys.executable, "-m", "loginpipe.benchmark", *args]


# ---------------------------------------------------------------------------------------------
# Internal subcommands (each runs as a child process of the benchmark)
# ---------------------------------------------------------------------------------------------

def cmd_preload(args) -> int:
    """Write ``--count`` generated events at full speed, like the generator CLI with --rate 0."""
    from loginpipe.generator import EventGenerator, make_producer

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


def cmd_consume_only(args) -> int:
    """A KafkaConsumer set up exactly like the pipeline's; poll in batches until N records."""
    import logging

    from loginpipe.app import Application, tune_gc

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    tune_gc()  # as the pipeline does, so the ceilings are measured on the same footing
    config = _child_pipeline_config(args)
    consumer = Application(config, out=io.StringIO()).make_consumer(0)
    started = time.monotonic()
    first = last = None
    count = 0
    progress = _Progress("consume-only", args.count)
    try:
        consumer.partitions_for_topic(args.topic)
        consumer.subscribe([args.topic])
        idle_since = time.monotonic()
        while count < args.count:
            polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=config.max_poll_records)
            now = time.monotonic()
            if not polled:
                if now - idle_since > args.idle_timeout:
                    raise _idle_error(args, count)
                continue
            if first is None:
                first = now
            for batch in polled.values():
                count += len(batch)
            last = idle_since = time.monotonic()
            progress(count)
    finally:
        consumer.close(autocommit=False)
    _print_timing(count, time.monotonic() - started, (last or 0.0) - (first or 0.0),
                  {"client": "kafka-python", "max_poll_records": config.max_poll_records})
    return 0


def cmd_pass_through(args) -> int:
    if args.client == "confluent":
        return _pass_through_confluent(args)
    return _pass_through_kafka_python(args)


def _pass_through_kafka_python(args) -> int:
    """Consume, produce the raw bytes with the pipeline's producer, commit after acknowledgements."""
    import logging

    from loginpipe.app import Application, tune_gc
    from loginpipe.checkpoint import Checkpointer
    from loginpipe.delivery import Sender
    from loginpipe.route import OutputRecord

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    tune_gc()  # as the pipeline does, so the ceilings are measured on the same footing
    config = _child_pipeline_config(args, args.output_topic)
    app = Application(config, out=io.StringIO())
    producer = app._make_producer()  # the pipeline's own producer settings (snappy, linger, acks=all, ...)
    sender = Sender(producer, app.warn, threading.Event())
    consumer = app.make_consumer(0)
    checkpointer = Checkpointer(consumer, sender, config.commit_every_records,
                                config.commit_interval_ms / 1000, app.warn)
    out_topic = args.output_topic
    started = time.monotonic()
    first = last = None
    count = 0
    progress = _Progress("pass-through", args.count)
    try:
        consumer.partitions_for_topic(args.topic)
        consumer.subscribe([args.topic])
        idle_since = time.monotonic()
        while count < args.count:
            polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=config.max_poll_records)
            now = time.monotonic()
            if polled:
                if first is None:
                    first = now
                # A copy keyed like its input goes to the input's partition number (the output
                # topic has as many), as the pipeline does: no murmur2 hashing in Python.
                outputs = [OutputRecord(out_topic, r.key, r.value, partition=r.partition)
                           for batch in polled.values() for r in batch]
                offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items()}
                futures = sender.send_all(outputs)
                checkpointer.track(offsets, outputs, futures, len(outputs))
                count += len(outputs)
                last = idle_since = time.monotonic()
                progress(count)
            elif now - idle_since > args.idle_timeout:
                raise _idle_error(args, count)
            checkpointer.maybe_commit()
        all_committed = checkpointer.commit_all(timeout_s=60.0)
        acked_at = time.monotonic()
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
    if not all_committed:
        raise UserError("some outputs were never acknowledged")
    _print_timing(count, time.monotonic() - started, (last or 0.0) - (first or 0.0),
                  {"client": "kafka-python", "first_to_all_acked_s": acked_at - (first or 0.0)})
    return 0


def _pass_through_confluent(args) -> int:
    """The same pass-through with confluent-kafka (librdkafka): commits follow delivery reports."""
    try:
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    except ImportError:
        raise UserError("confluent-kafka is not installed (pip install confluent-kafka)") from None

    config = _child_pipeline_config(args, args.output_topic)
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
    out_topic = args.output_topic
    pending: deque[list] = deque()  # [offsets, outstanding deliveries]
    failures: list = []

    def produce(msg, batch: list) -> None:
        def delivered(err, _msg) -> None:
            if err is not None:
                failures.append(err)
                produce(msg, batch)  # again, like the pipeline's Sender: nothing is dropped
            else:
                batch[1] -= 1

        while True:
            try:
                producer.produce(out_topic, value=msg.value(), key=msg.key(), partition=msg.partition(),
                                 on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.05)

    acked: dict = {}
    since_commit = 0
    last_commit = time.monotonic()

    def commit(force: bool = False) -> None:
        nonlocal since_commit, last_commit
        while pending and pending[0][1] == 0:
            acked.update(pending.popleft()[0])
        due = since_commit >= config.commit_every_records or \
            time.monotonic() - last_commit >= config.commit_interval_ms / 1000
        if acked and (due or force):
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in acked.items()],
                            asynchronous=False)
            acked.clear()
            since_commit, last_commit = 0, time.monotonic()

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
                batch = [{}, len(messages)]
                pending.append(batch)
                for m in messages:
                    batch[0][(m.topic(), m.partition())] = m.offset() + 1
                    produce(m, batch)
                count += len(messages)
                since_commit += len(messages)
                last = idle_since = time.monotonic()
                progress(count)
            elif now - idle_since > args.idle_timeout:
                raise _idle_error(args, count)
            producer.poll(0)
            commit()
        if producer.flush(60) != 0:
            raise UserError("some outputs were never acknowledged")
        acked_at = time.monotonic()
        commit(force=True)
    except KafkaException as exc:
        raise UserError(f"confluent-kafka: {exc}") from None
    finally:
        consumer.close()
    _print_timing(count, time.monotonic() - started, (last or 0.0) - (first or 0.0),
                  {"client": "confluent-kafka", "first_to_all_acked_s": acked_at - (first or 0.0),
                   "delivery_failures": len(failures)})
    return 0


_VERSIONS = ("2.3.0", "2.4.1", "2.2.0", "1.9.8", "3.0.0")
_LOCALES = ("CA", "NY", "TX", "FL", "WA", "GB", "DE")
_DEVICE_TYPES = ("android", "ios")


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
        )
        batch.append((event, _DEVICE_TYPES[i & 1]))
    return batch


def cmd_memory(args) -> int:
    """Feed Aggregates with distinct users; RSS at each point of ``--points``."""
    import gc
    import random

    import psutil

    from loginpipe.state import Aggregates

    process = psutil.Process()
    rng = random.Random(args.seed)
    state = Aggregates(max_tracked_keys=args.max_tracked_keys) if args.max_tracked_keys else Aggregates()
    gc.collect()
    points = [{"users": 0, "rss_bytes": process.memory_info().rss}]
    fed = 0
    started = time.monotonic()
    for target in args.points:
        while fed < target:
            n = min(20_000, target - fed)
            state.apply(synthetic_observations(n, rng))
            fed += n
        gc.collect()
        rss = process.memory_info().rss
        points.append({"users": fed, "rss_bytes": rss, "tracked_users": len(state.ips_by_user),
                       "tracked_devices": len(state.users_by_device)})
        print(f"memory: {fed:,} users, RSS {rss / 2**20:,.0f} MiB, tracking {len(state.ips_by_user):,}",
              file=sys.stderr, flush=True)
    emit_result({"max_tracked_keys": state.ips_by_user.max_keys, "points": points,
                 "seconds": time.monotonic() - started})
    return 0


def build_child_parser(command: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=f"python -m loginpipe.benchmark {command}",
                               description=f"internal step of the benchmark: {command}")
    if command == "memory":
        parser.add_argument("--points", type=int_list, required=True, help="distinct users to measure at")
        parser.add_argument("--max-tracked-keys", type=int, default=0, help="0: the Aggregates default")
        parser.add_argument("--seed", type=int, default=7)
        return parser
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
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
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly: consumers leave their group
    command, rest = argv[0], argv[1:]
    args = build_child_parser(command).parse_args(rest)
    handler: dict[str, Callable[[Any], int]] = {
        "preload": cmd_preload, "consume-only": cmd_consume_only,
        "pass-through": cmd_pass_through, "memory": cmd_memory,
    }
    return handler[command](args)


# ---------------------------------------------------------------------------------------------
# The benchmark itself
# ---------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise ValueError(text)
    return values


int_list.__name__ = "comma-separated list of positive integers"


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(text)
    return value


positive_float.__name__ = "positive number"


@dataclass
class Bench:
    """One benchmark run: settings, the topics and groups it made, the results so far."""

    args: Any
    bootstrap: str
    run_id: str
    log_dir: Path
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    step: int = 0
    steps: int = 0
    value_bytes: int = 0

    def name(self, suffix: str) -> str:
        return f"lpbench-{self.run_id}-{suffix}"

    def group(self, suffix: str) -> str:
        group = self.name(suffix)
        self.groups.append(group)
        return group

    def create_topics(self, *specs: TopicSpec) -> None:
        self.topics.extend(spec.name for spec in specs)
        for result in ensure_topics(self.bootstrap, list(specs), partitions=self.args.partitions):
            if result.status != "created":
                raise UserError(f"topic {result.describe()}: expected a fresh topic")

    def announce(self, text: str) -> None:
        self.step += 1
        say(f"[{self.step}/{self.steps}] {text}")

    def timeout_s(self, events: int) -> float:
        return max(180.0, events / 1500)

    def cleanup(self) -> None:
        """Stop children still running, delete the topics and groups this run made."""
        live = list(_LIVE)
        if live:  # after Ctrl+C they got the signal too: let them finish their clean stop first
            wait_until(lambda: all(child.poll() for child in live), 5.0, interval_s=0.05)
        for child in list(_LIVE):
            child.stop(grace_s=10.0)
        with contextlib.suppress(Exception):
            if self.topics:
                delete_topics(self.bootstrap, self.topics)
            if self.groups:
                self._delete_groups()

    def _delete_groups(self, timeout_s: float = 15.0) -> None:
        """A group is deleted once empty; a member that died unannounced stays until its session ends."""
        admin = admin_client(self.bootstrap)
        try:
            remaining = set(self.groups)

            def deleted() -> bool:
                admin.delete_groups(sorted(remaining))
                listed = {g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()}
                remaining.intersection_update(listed)
                return not remaining

            wait_until(deleted, timeout_s, interval_s=1.0)
        finally:
            admin.close()


def throughput_row(label: str, kind: str, consumed: int, seconds: float, child: ChildResult,
                   value_bytes: int, events: int, **extra: Any) -> dict:
    rate = consumed / seconds if seconds > 0 else 0.0
    return {
        "label": label, "kind": kind, "consumed": consumed, "seconds": round(seconds, 4),
        "events_per_s": round(rate, 1),
        "mb_per_s": round(value_bytes * (consumed / events) / seconds / MB, 3) if seconds > 0 else 0.0,
        "cpu_s": round(child.cpu_s, 3),
        "cpu_s_per_million": round(child.cpu_s / consumed * 1e6, 2) if consumed else None,
        "peak_rss_mib": round(child.peak_rss_kib / 1024, 1),
        "wall_s": round(child.wall_s, 2),
        **extra,
    }


def step_preload(bench: Bench, topic: str) -> dict:
    args = bench.args
    bench.announce(f"preload: {args.events:,} events at full speed into {topic} "
                   f"({args.partitions} partitions)")
    child = Child("preload", python_child(
        "preload", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--count", str(args.events),
        "--seed", str(args.seed)), bench.log_dir)
    result = child.wait(bench.timeout_s(args.events)).check()
    data = result.result_json()
    bench.value_bytes = data["value_bytes"]
    bad = sum(n for kind, n in data["kinds"].items() if kind != "good")
    say(f"      generator: {data['events_per_s']:,.0f} events/s ({data['seconds']:.1f}s); "
        f"{bench.value_bytes / MB:,.1f} MB of values, {bad:,} bad records "
        f"({bad / args.events:.1%})")
    data.update(cpu_s=round(result.cpu_s, 3), peak_rss_mib=round(result.peak_rss_kib / 1024, 1))
    return data


def step_java(bench: Bench, topic: str) -> dict | None:
    args = bench.args
    bench.announce("Kafka's Java ConsumerPerformance (the broker's ceiling)")
    if shutil.which("java") is None:
        say("      skipped: no 'java' on PATH")
        return None
    libs = ensure_jars(DEFAULT_HOME / "libs", quiet=True)
    cmd = ["java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ConsumerPerformance",
           "--bootstrap-server", bench.bootstrap, "--topic", topic, "--num-records", str(args.events),
           "--group", bench.group("java"), "--timeout", "60000"]
    result = Child("java ConsumerPerformance", cmd, bench.log_dir).wait(bench.timeout_s(args.events)).check()
    fields = parse_consumer_performance(result.stdout)
    try:
        consumed = int(float(fields["data.consumed.in.nMsg"]))
        fetch_s = float(fields["fetch.time.ms"]) / 1000
        rebalance_s = float(fields["rebalance.time.ms"]) / 1000
    except (KeyError, ValueError):
        raise UserError(f"unexpected ConsumerPerformance output:\n{result.tail()}") from None
    row = throughput_row("Java ConsumerPerformance", "java", consumed, fetch_s, result, bench.value_bytes,
                         args.events, tool_output=fields, group_join_s=rebalance_s)
    say(f"      {consumed:,} records: {row['events_per_s']:,.0f} events/s over its fetch time "
        f"{fetch_s:.2f}s (group join {rebalance_s:.2f}s left out)")
    return row


def parse_consumer_performance(text: str) -> dict[str, str]:
    """The header line and the value line ConsumerPerformance prints, as a dict."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("start.time"):
            header = [h.strip() for h in line.split(",")]
            values = [v.strip() for v in lines[i + 1].split(",")]
            if len(header) == len(values):
                return dict(zip(header, values, strict=True))
    raise UserError("ConsumerPerformance printed no result line:\n" + "\n".join(lines[-10:]))


def python_run(bench: Bench, label: str, kind: str, child: Child, **extra: Any) -> dict:
    """Wait for a Python consumer run and read its consumed count and first-to-last timing."""
    result = child.wait(bench.timeout_s(bench.args.events)).check()
    out = result.stdout
    consumed_match = SUMMARY_RE.search(out) or re.search(r"consumed ([\d,]+) in", out)
    timing = TIMING_RE.search(out)
    if not consumed_match or not timing:
        raise UserError(f"{label}: no summary in its output; tail:\n{result.tail()}")
    consumed = int(consumed_match.group(1).replace(",", ""))
    busy_s = float(timing.group(1))
    if kind != "pipeline":
        extra.update({k: v for k, v in result.result_json().items() if k not in ("consumed", "busy_s")})
    row = throughput_row(label, kind, consumed, busy_s, result, bench.value_bytes, bench.args.events, **extra)
    if kind == "pipeline":
        processed, filtered, dead = (int(g.replace(",", "")) for g in SUMMARY_RE.search(out).groups()[1:])
        resent = RESENT_RE.search(out)
        row.update(processed=processed, filtered=filtered, dead_lettered=dead,
                   resent=int(resent.group(1).replace(",", "")) if resent else None)
    say(f"      {consumed:,} records in {busy_s:.2f}s: {row['events_per_s']:,.0f} events/s, "
        f"{row['cpu_s_per_million']} CPU s per million, peak RSS {row['peak_rss_mib']:,.0f} MiB")
    return row


def step_consume_only(bench: Bench, topic: str) -> dict:
    args = bench.args
    bench.announce("kafka-python consume-only (the pipeline's consumer settings, no decoding)")
    child = Child("consume-only", python_child(
        "consume-only", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--count", str(args.events),
        "--group", bench.group("consume-only")), bench.log_dir)
    return python_run(bench, "kafka-python consume-only", "consume-only", child)


def step_pass_through(bench: Bench, topic: str, client: str) -> dict | None:
    args = bench.args
    label = f"{'confluent-kafka' if client == 'confluent' else client} pass-through"
    bench.announce(f"{label} (consume, produce raw bytes with the pipeline's producer settings, "
                   "commit after acks)")
    if client == "confluent":
        probe = subprocess.run([sys.executable, "-c", "import confluent_kafka"], capture_output=True)
        if probe.returncode != 0:
            say("      skipped: confluent-kafka does not import in this environment "
                "(pip install confluent-kafka to include it)")
            return None
    suffix = "pass" if client == "kafka-python" else "pass-confluent"
    out_topic = bench.name(f"{suffix}-out")
    bench.create_topics(TopicSpec(out_topic, "benchmark output", configs={"compression.type": "producer"}))
    child = Child(label, python_child(
        "pass-through", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--count", str(args.events),
        "--group", bench.group(suffix), "--output-topic", out_topic, "--client", client), bench.log_dir)
    row = python_run(bench, label, "pass-through", child)
    row["output_records"] = sum(end_offsets(bench.bootstrap, out_topic).values())
    return row


def step_pipeline(bench: Bench, topic: str, threads: int) -> dict:
    args = bench.args
    bench.announce(f"the pipeline, --threads {threads}")
    out, dlq = bench.name(f"t{threads}-out"), bench.name(f"t{threads}-dlq")
    bench.create_topics(TopicSpec(out, "benchmark output", configs={"compression.type": "producer"}),
                        TopicSpec(dlq, "benchmark dead letters"))
    cmd = [sys.executable, "create_kafka_consumer.py", "--bootstrap-servers", bench.bootstrap,
           "--input-topic", topic, "--output-topic", out, "--dlq-topic", dlq,
           "--group-id", bench.group(f"t{threads}"), "--threads", str(threads),
           "--stop-when-idle", "2", "--quiet"]
    row = python_run(bench, f"pipeline, {threads} thread{'s' if threads > 1 else ''}", "pipeline",
                     Child(f"pipeline t{threads}", cmd, bench.log_dir), threads=threads)
    row["output_records"] = sum(end_offsets(bench.bootstrap, out).values())
    row["dlq_records"] = sum(end_offsets(bench.bootstrap, dlq).values())
    row["accounting_ok"] = (row["consumed"] == args.events
                            and row["processed"] + row["filtered"] + row["dead_lettered"] == row["consumed"]
                            and row["output_records"] >= row["processed"]
                            and row["dlq_records"] >= row["dead_lettered"])
    say(f"      processed {row['processed']:,}, filtered {row['filtered']:,}, dead-lettered "
        f"{row['dead_lettered']:,}; output topic {row['output_records']:,}, dlq {row['dlq_records']:,}; "
        f"accounting {'ok' if row['accounting_ok'] else 'MISMATCH'}")
    return row


# --- latency ---------------------------------------------------------------------------------

def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> Iterator:
    """Every record of ``topic`` up to its current end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise UserError(f"could not read {topic} back within {timeout_s:.0f}s")
            for tp, batch in consumer.poll(timeout_ms=500, max_records=20_000).items():
                end = ends[tp]
                for record in batch:
                    if record.offset < end:
                        yield record
                if batch[-1].offset + 1 >= end:
                    remaining.discard(tp)
    finally:
        consumer.close()


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    if not ordered:
        return 0.0
    rank = max(1, int(-(-q * len(ordered) // 1)))  # ceil(q * n)
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class GroupJoin:
    seconds: float  # from the start of waiting until the group had been Stable for the settle time
    first_stable_s: float | None  # when it was first seen Stable with every member
    left_stable: int  # how often it left Stable again (a rebalance after the first one)


def wait_group_settled(bootstrap: str, group: str, members: int, pipeline: Child, timeout_s: float,
                       settle_s: float) -> GroupJoin:
    """Wait until ``group`` has been Stable with ``members`` members for ``settle_s`` seconds on end."""
    from kafka.errors import KafkaError

    admin = admin_client(bootstrap)
    started = time.monotonic()
    first_stable: float | None = None
    stable_since: float | None = None
    left = 0
    try:
        while True:
            now = time.monotonic()
            if pipeline.poll() is not None:
                raise UserError(f"the pipeline exited early; output tail:\n{pipeline.result.tail()}")
            if now - started > timeout_s:
                raise UserError(f"group {group} was not Stable with {members} member(s) "
                                f"within {timeout_s:.0f}s")
            try:
                info = admin.describe_groups([group])[group]
                stable = info.get("group_state") == "Stable" and len(info.get("members") or []) >= members
            except (KafkaError, KeyError):
                stable = False
            if stable:
                first_stable = first_stable or now
                stable_since = stable_since or now
                if now - stable_since >= settle_s:
                    return GroupJoin(now - started, first_stable - started, left)
            elif stable_since is not None:
                stable_since = None
                left += 1
            time.sleep(0.05)
    finally:
        admin.close()


def committed_total(admin, group: str, topic: str) -> int:
    from kafka.errors import KafkaError

    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:
        return -1
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def step_latency(bench: Bench) -> dict:
    args = bench.args
    threads = args.latency_threads
    count = max(1, round(args.latency_rate * args.latency_seconds))
    bench.announce(f"latency: the pipeline ({threads} thread{'s' if threads > 1 else ''}) with the generator "
                   f"at {args.latency_rate:,g} events/s for {args.latency_seconds:g}s ({count:,} events)")
    ts_type = {"log-append": "LogAppendTime", "create": "CreateTime"}[args.latency_timestamps]
    src, out, dlq = bench.name("lat-in"), bench.name("lat-out"), bench.name("lat-dlq")
    ts_config = {"message.timestamp.type": ts_type}
    bench.create_topics(
        TopicSpec(src, "latency input", configs=ts_config),
        TopicSpec(out, "latency output", configs={**ts_config, "compression.type": "producer"}),
        TopicSpec(dlq, "latency dead letters"))
    group = bench.group("lat")
    pipeline = Child("latency pipeline", [
        sys.executable, "create_kafka_consumer.py", "--bootstrap-servers", bench.bootstrap,
        "--input-topic", src, "--output-topic", out, "--dlq-topic", dlq, "--group-id", group,
        "--threads", str(threads), "--quiet"], bench.log_dir)
    join = wait_group_settled(bench.bootstrap, group, threads, pipeline, 90.0, GROUP_SETTLE_S)
    say(f"      pipeline group first Stable after {join.first_stable_s:.2f}s, left Stable {join.left_stable} "
        f"time(s), Stable for {GROUP_SETTLE_S:g}s on end after {join.seconds:.2f}s; producing")
    generator = Child("latency generator", [
        sys.executable, "-m", "loginpipe.generator", "--bootstrap-servers", bench.bootstrap, "--topic", src,
        "--count", str(count), "--rate", f"{args.latency_rate:g}", "--seed", str(args.seed + 1),
        "--progress-every", "10"], bench.log_dir)
    gen_result = generator.wait(args.latency_seconds * 3 + 60).check()
    gen_match = GENERATOR_RE.search(gen_result.stderr)
    achieved = float(gen_match.group(2).replace(",", "")) if gen_match else None
    # Drained once the group has committed every input offset (commits follow acknowledgements).
    admin = admin_client(bench.bootstrap)
    try:
        drained = wait_until(lambda: committed_total(admin, group, src) >= count or pipeline.poll(),
                             max(60.0, args.latency_seconds), interval_s=0.25)
    finally:
        admin.close()
    if pipeline.poll() is not None:
        raise UserError(f"the pipeline exited during the latency run; tail:\n{pipeline.result.tail()}")
    if not drained:
        say("      warning: the pipeline did not commit every input offset in time; stopping it anyway")
    result = pipeline.stop(grace_s=60.0)
    if result is None or result.returncode != 0:
        tail = result.tail() if result else "(still running)"
        raise UserError(f"the latency pipeline did not stop cleanly; tail:\n{tail}")
    summary = SUMMARY_RE.search(result.stdout)
    consumed = int(summary.group(1).replace(",", "")) if summary else None

    import orjson

    sent_at: dict[tuple[int, int], int] = {}
    for record in read_topic(bench.bootstrap, src):
        sent_at[(record.partition, record.offset)] = record.timestamp
    latencies: list[float] = []
    unmatched = 0
    out_ts_types: Counter = Counter()
    for record in read_topic(bench.bootstrap, out):
        fields = orjson.loads(record.value)
        start = sent_at.get((fields.get("source_partition"), fields.get("source_offset")))
        out_ts_types[record.timestamp_type] += 1
        if start is None:
            unmatched += 1
        else:
            latencies.append(record.timestamp - start)
    latencies.sort()
    row = {
        "threads": threads, "offered_rate": args.latency_rate, "seconds": args.latency_seconds,
        "produced": count, "generator_rate": achieved, "pipeline_consumed": consumed,
        "timestamps": ts_type, "input_records": len(sent_at), "outputs_joined": len(latencies),
        "outputs_unmatched": unmatched, "group_first_stable_s": round(join.first_stable_s or 0.0, 2),
        "group_left_stable": join.left_stable, "group_settled_s": round(join.seconds, 2),
        "p50_ms": quantile(latencies, 0.50), "p99_ms": quantile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else 0.0,
        "cpu_s": round(result.cpu_s, 3), "peak_rss_mib": round(result.peak_rss_kib / 1024, 1),
    }
    say(f"      {len(latencies):,} outputs joined to their inputs ({ts_type}): p50 {row['p50_ms']:,.0f} ms, "
        f"p99 {row['p99_ms']:,.0f} ms, max {row['max_ms']:,.0f} ms"
        + (f" (generator achieved {achieved:,.0f} events/s)" if achieved else ""))
    return row


# --- memory ----------------------------------------------------------------------------------

def step_memory(bench: Bench) -> dict:
    args = bench.args
    users = sorted(set(args.memory_users))
    top = users[-1]
    bench.announce(f"memory: Aggregates fed with {', '.join(f'{u:,}' for u in users)} distinct users "
                   "(each its own IP and device)")
    runs = {}
    plateau = sorted(set(users) | {top * k // 5 for k in range(1, 6)})
    for key, cap, points in (("uncapped", 10_000_000, users), ("default_cap", 0, plateau)):
        child = Child(f"memory {key}", python_child(
            "memory", "--points", ",".join(map(str, points)), "--max-tracked-keys", str(cap),
            "--seed", str(args.seed)), bench.log_dir)
        result = child.wait(max(300.0, top / 10_000)).check()
        data = result.result_json()
        previous = None
        for point in data["points"]:
            point["rss_mib"] = round(point["rss_bytes"] / 2**20, 1)
            if previous is not None:
                point["bytes_per_added_user"] = round(
                    (point["rss_bytes"] - previous["rss_bytes"]) / (point["users"] - previous["users"]), 1)
            previous = point
        data["peak_rss_mib"] = round(result.peak_rss_kib / 1024, 1)
        runs[key] = data
        last = data["points"][-1]
        say(f"      max_tracked_keys {data['max_tracked_keys']:,}: " + ", ".join(
            f"{p['users']:,} users {p['rss_mib']:,.0f} MiB" for p in data["points"][1:])
            + f" (tracking {last['tracked_users']:,} at the end)")
    return runs


# --- report ----------------------------------------------------------------------------------

def describe_machine() -> dict:
    import kafka
    import psutil

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    java = "not found"
    if shutil.which("java"):
        probe = subprocess.run(["java", "-version"], capture_output=True, text=True)
        java = ((probe.stderr or probe.stdout).strip().splitlines() or ["?"])[0]
    return {
        "cpu_model": cpu_model, "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kafka": kafka_version(), "kafka_python": kafka.__version__, "java": java,
        "git": _git_revision(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}" if head else "unknown"


def add_ratios(runs: list[dict]) -> dict:
    by_kind = {r["kind"]: r for r in runs if r["kind"] in ("consume-only", "pass-through")
               and r.get("client", "kafka-python") == "kafka-python"}
    ratios = {}
    for row in runs:
        if row["kind"] != "pipeline":
            continue
        for kind, key in (("pass-through", "vs_pass_through"), ("consume-only", "vs_consume_only")):
            base = by_kind.get(kind)
            if base and base["events_per_s"]:
                row[key] = round(row["events_per_s"] / base["events_per_s"], 3)
                ratios[f"pipeline_t{row['threads']}_{key}"] = row[key]
    return ratios


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    s = report["settings"]
    pre = report["preload"]
    m = report["machine"]
    lines = [
        f"# loginpipe benchmark {report['run_id']}",
        "",
        f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['python']}, Kafka {m['kafka']}, "
        f"kafka-python {m['kafka_python']}, {m['java']}; git {m['git']}",
        "",
        f"## Throughput: {s['events']:,} events, {s['partitions']} partitions, "
        f"{pre['value_bytes'] / MB:,.1f} MB of values",
        "",
        f"Preload (generator library, full speed): {pre['events_per_s']:,.0f} events/s.",
        "",
        "| run | events/s | MB/s | CPU s / M events | peak RSS MiB | ÷ pass-through | ÷ consume-only |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['label']} | {_num(r['events_per_s'])} | {_num(r['mb_per_s'], ',.1f')} | "
            f"{_num(r['cpu_s_per_million'], ',.1f')} | {_num(r['peak_rss_mib'])} | "
            f"{_num(r.get('vs_pass_through'), '.2f')} | {_num(r.get('vs_consume_only'), '.2f')} |")
    lines += ["", "Rates: Python runs from the first record received to the last record done; Java: "
              "ConsumerPerformance's fetch time (group join left out). CPU and peak RSS: the whole child "
              "process (start-up included; for the pipeline also its 2 s idle stop)."]
    for r in report["runs"]:
        if r["kind"] == "pipeline":
            lines.append(f"Pipeline {r['threads']} thread(s): consumed {r['consumed']:,} = processed "
                         f"{r['processed']:,} + filtered {r['filtered']:,} + dead-lettered "
                         f"{r['dead_lettered']:,}; accounting {'ok' if r['accounting_ok'] else 'MISMATCH'}.")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    lat = report.get("latency")
    if lat:
        lines += [
            "",
            f"## Latency: pipeline ({lat['threads']} threads), {lat['offered_rate']:,g} events/s offered for "
            f"{lat['seconds']:g}s",
            "",
            f"Input record's {lat['timestamps']} to output record's {lat['timestamps']}, joined on "
            f"source_partition/source_offset.",
            "",
            "| records joined | generator events/s | p50 ms | p99 ms | max ms |",
            "|---:|---:|---:|---:|---:|",
            f"| {lat['outputs_joined']:,} | {_num(lat['generator_rate'])} | {_num(lat['p50_ms'])} | "
            f"{_num(lat['p99_ms'])} | {_num(lat['max_ms'])} |",
        ]
    mem = report.get("memory")
    if mem:
        unc, cap = mem["uncapped"], mem["default_cap"]
        unc_by_users = {p["users"]: p for p in unc["points"]}
        cap_by_users = {p["users"]: p for p in cap["points"]}
        lines += [
            "",
            "## Memory: Aggregates, distinct users (each with its own IP and device id)",
            "",
            f"| users | RSS MiB (max_tracked_keys {unc['max_tracked_keys']:,}) | bytes per added user | "
            f"RSS MiB (default cap {cap['max_tracked_keys']:,}) | users tracked (default cap) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for users in sorted(set(unc_by_users) | set(cap_by_users)):
            u, c = unc_by_users.get(users, {}), cap_by_users.get(users, {})
            lines.append(
                f"| {users:,} | {_num(u.get('rss_mib'))} | {_num(u.get('bytes_per_added_user'))} | "
                f"{_num(c.get('rss_mib'))} | {_num(c.get('tracked_users'))} |")
    lines += ["", f"Total duration: {report['duration_s'] / 60:.1f} min ({report['duration_s']:.0f}s)."]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> bool:
    """events/s per run as a horizontal bar chart; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = [r["label"] for r in runs][::-1]
    rates = [r["events_per_s"] for r in runs][::-1]
    colors = ["#d62728" if r["kind"] == "pipeline" else "#1f77b4" if r["kind"] == "java" else "#7f7f7f"
              for r in runs][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(runs) + 1.6))
    bars = ax.barh(labels, rates, color=colors)
    top = max(rates) if rates else 1
    for bar, rate in zip(bars, rates, strict=True):
        ax.text(bar.get_width() * 1.08, bar.get_y() + bar.get_height() / 2, f"{rate:,.0f}",
                va="center", fontsize=9)
    # Log scale: the Java ceiling is ~30x the Python runs, which would be slivers on a linear axis.
    ax.set_xscale("log")
    ax.set_xlim(min(rates, default=top) / 2, top * 4)
    ax.set_xlabel("events/s, log scale (first record to last done; Java: fetch time)")
    m = report["machine"]
    ax.set_title(f"loginpipe: {report['settings']['events']:,} events, {report['settings']['partitions']} "
                 f"partitions\n{m['cores']} cores, Kafka {m['kafka']}, kafka-python {m['kafka_python']}",
                 fontsize=10)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(report: dict, out_dir: Path) -> list[Path]:
    stamp = report["run_id"].rsplit("-", 1)[0]
    text = json.dumps(report, indent=2, default=str) + "\n"
    paths = [out_dir / f"bench-{stamp}.json", out_dir / "latest.json", out_dir / "latest.md"]
    paths[0].write_text(text)
    paths[1].write_text(text)
    paths[2].write_text(markdown(report))
    png = out_dir / "latest.png"
    if chart(report, png):
        paths.append(png)
    else:
        report.setdefault("notes", []).append("no chart: matplotlib is not installed")
    return paths


def build_parser() -> EnvArgumentParser:
    defaults = PipelineConfig()
    parser = EnvArgumentParser(
        prog="python -m loginpipe.benchmark",
        description="Benchmark the pipeline against Kafka's Java consumer, kafka-python consume-only and "
                    "pass-through; end-to-end latency; memory per user. Results in bench-results/.")
    parser.add_env_argument("--bootstrap-servers", env="BOOTSTRAP_SERVERS", default=None,
                            help="use this broker; when unset, the local broker is started (127.0.0.1:29092)")
    parser.add_env_argument("--events", env="BENCH_EVENTS", type=positive_int, default=1_000_000,
                            help="events to preload and consume in each throughput run")
    parser.add_env_argument("--partitions", env="BENCH_PARTITIONS", type=positive_int, default=4,
                            help="partitions of the benchmark topics")
    parser.add_env_argument("--threads-list", env="BENCH_THREADS_LIST", type=int_list, default=[1, 2],
                            help="pipeline --threads values to run, comma-separated")
    parser.add_env_argument("--latency-rate", env="BENCH_LATENCY_RATE", type=positive_float, default=5000.0,
                            help="offered load of the latency run, events/s")
    parser.add_env_argument("--latency-seconds", env="BENCH_LATENCY_SECONDS", type=positive_float,
                            default=60.0, help="length of the latency run")
    parser.add_env_argument("--latency-threads", env="BENCH_LATENCY_THREADS", type=positive_int,
                            default=defaults.threads, help="pipeline --threads in the latency run")
    parser.add_env_argument("--latency-timestamps", env="BENCH_LATENCY_TIMESTAMPS", default="log-append",
                            choices=["log-append", "create"],
                            help="timestamp type of the latency topics: broker append time (in Kafka to "
                                 "out of Kafka) or producer create time (includes the generator's linger)")
    parser.add_env_argument("--memory-users", env="BENCH_MEMORY_USERS", type=int_list,
                            default=[100_000, 1_000_000, 5_000_000],
                            help="distinct users at which to measure memory, comma-separated")
    parser.add_argument("--with-confluent", action="store_true",
                        help="also run the pass-through with confluent-kafka, if it imports")
    parser.add_env_argument("--out-dir", env="BENCH_OUT_DIR", default=str(DEFAULT_OUT_DIR),
                            help="where results (and child process logs) go")
    parser.add_env_argument("--seed", env="BENCH_SEED", type=int, default=7, help="generator seed")
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl+C: children stopped, topics deleted


def run_benchmark(args) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    out_dir = Path(args.out_dir)
    log_dir = out_dir / "logs" / run_id
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror}") from None
    say(f"benchmark {run_id}: {args.events:,} events, {args.partitions} partitions, pipeline threads "
        f"{','.join(map(str, args.threads_list))}; logs in {log_dir}")
    if args.bootstrap_servers is None:
        broker = LocalBroker()
        say(f"kafka: {broker.start()}")
        bootstrap = broker.bootstrap_servers
    else:
        bootstrap = args.bootstrap_servers
        if not broker_answers(bootstrap, timeout_s=5.0):
            raise UserError(f"cannot reach a Kafka broker at {bootstrap}; is it running? (make kafka-start)")
    bench = Bench(args, bootstrap, run_id, log_dir)
    bench.steps = 5 + len(args.threads_list) + (1 if args.with_confluent else 0) + 1
    machine = describe_machine()
    report: dict = {"run_id": run_id, "machine": machine, "bootstrap_servers": bootstrap,
                    "settings": {k: v for k, v in vars(args).items() if k != "command"},
                    "pipeline_defaults": asdict(PipelineConfig()), "runs": [], "notes": []}
    try:
        source = bench.name("in")
        bench.create_topics(TopicSpec(source, "benchmark input"))
        report["input_topic"] = source
        report["preload"] = step_preload(bench, source)
        runs = report["runs"]
        java = step_java(bench, source)
        if java:
            runs.append(java)
        else:
            report["notes"].append("Java ConsumerPerformance skipped: no java on PATH")
        runs.append(step_consume_only(bench, source))
        runs.append(step_pass_through(bench, source, "kafka-python"))
        if args.with_confluent:
            row = step_pass_through(bench, source, "confluent")
            if row:
                runs.append(row)
            else:
                report["notes"].append("confluent-kafka pass-through skipped: it does not import")
        for threads in args.threads_list:
            runs.append(step_pipeline(bench, source, threads))
        report["ratios"] = add_ratios(runs)
        report["latency"] = step_latency(bench)
        report["memory"] = step_memory(bench)
    finally:
        if bench.topics or bench.groups:
            say("cleaning up: deleting the benchmark's topics and consumer groups")
        bench.cleanup()
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["duration_s"] = round(time.monotonic() - started, 1)
    bad = [r["label"] for r in report["runs"] if r["kind"] == "pipeline" and not r["accounting_ok"]]
    if bad:
        report["notes"].append(f"accounting mismatch in: {', '.join(bad)}")
    paths = write_outputs(report, out_dir)
    say("")
    say(markdown(report))
    say("results: " + ", ".join(str(p) for p in paths))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CHILD_COMMANDS:
        return run_child_command(argv)
    return run_benchmark(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
