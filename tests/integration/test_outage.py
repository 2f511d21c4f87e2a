"""Broker outages against a real, killed broker: the producer is replaced after a failed delivery,
nothing is lost, memory stays bounded, the stats never claim more than was written, and a stop
during an outage is bounded and says what stays unacknowledged.

``SOAK_OUTAGES`` and ``SOAK_OUTAGE_S`` (default 5 outages of 60 s) size the long test."""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import orjson
import psutil
import pytest
from kafka import KafkaProducer

from loginpipe.core.records import SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER
from loginpipe.kafka.kafka_python import KafkaPythonProducer
from loginpipe.local.broker import LocalBroker, free_port
from loginpipe.local.generator import EventGenerator
from loginpipe.waiting import wait_until
from tests.helpers import (
    committed_offsets,
    create_pipeline_topics,
    end_offsets,
    preload,
    read_topic,
    start_consumer,
    summary_counts,
)

pytestmark = pytest.mark.integration

SOAK_OUTAGES = int(os.environ.get("SOAK_OUTAGES", "5"))
SOAK_OUTAGE_S = float(os.environ.get("SOAK_OUTAGE_S", "60"))
SOAK_EVENTS_PER_ROUND = 40_000  # five rounds: a 200k-event drain
# The consumer's stated bound (README, "Broker trouble"): 1 worker, default in-flight limits.
RSS_BOUND_MIB = 256
# The soak's consumer logs JSON: its stats records hold every figure (a text line has room for few).
STATS = re.compile(r'"processed":(\d+),"filtered":(\d+),"dead_lettered":(\d+),"in_flight":-?\d+,'
                   r'"published":(\d+)')


def group() -> str:
    return f"test-outage-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker(tmp_path: Path, kafka_libs: Path):
    """A broker of the test's own, to kill."""
    own = LocalBroker(home=tmp_path / "kafka", port=free_port(), controller_port=free_port(),
                      heap_mb=384, libs=kafka_libs)
    own.start(quiet=True)
    yield own
    own.stop()


class Feeder:
    """Sends generated events at ``rate`` per second from a thread, through a producer of its own
    that is dropped at ``stop`` (a record it could not write is simply not in the input topic:
    the test compares outputs with what the input topic holds)."""

    def __init__(self, bootstrap: str, topic: str, seed: int, rate: float) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, delivery_timeout_ms=8000,
                                      request_timeout_ms=4000, max_block_ms=2000)
        self.topic, self.rate, self.sent = topic, rate, 0
        self.events = EventGenerator(seed=seed, users=3000, bad_ratio=0.05).generate(10**9)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stopped.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due and not self.stopped.is_set():
                record = next(self.events)
                with contextlib.suppress(Exception):  # the broker is gone: never written
                    self.producer.send(self.topic, key=record.key, value=record.value)
                self.sent += 1
            self.stopped.wait(0.01)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        KafkaPythonProducer(self.producer).close(5.0)


class Watcher:
    """Samples the consumer's RSS and the stats lines it prints (with when they were seen)."""

    def __init__(self, proc, out: Path) -> None:
        self.process = psutil.Process(proc.pid)
        self.out = out
        self.max_rss = 0
        self.claims: list[tuple[float, int, int]] = []  # (seen at, epoch ms; published; dead-lettered)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen = 0
        while not self.stopped.wait(0.25):
            try:
                self.max_rss = max(self.max_rss, self.process.memory_info().rss)
            except psutil.Error:
                return
            lines = self.out.read_text().splitlines()
            now_ms = time.time() * 1000
            for line in lines[seen:]:
                match = STATS.search(line)
                if match:
                    _, _, dead, published = (int(g.replace(",", "")) for g in match.groups())
                    self.claims.append((now_ms, published, dead))
            seen = len(lines)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def written_at(records) -> list[float]:
    """Sorted times (ms) at which each record reached its topic, repeats included: the stats count
    every acknowledged output, and at-least-once writes some twice after an outage (a repartition
    record sent again is processed again), so distinct positions would undercount what was written."""
    return sorted(r.timestamp for r in records)


def output_position(record) -> tuple[int, int]:
    value = orjson.loads(record.value)
    return value["source_partition"], value["source_offset"]


def header_position(record) -> tuple[int, int]:
    headers = dict(record.headers)
    return int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER])


def assert_nothing_lost(bootstrap: str, topics, err: Path) -> tuple[list, list]:
    """Every input position is in the output, dead-letter or filtered topic."""
    inputs = {(r.partition, r.offset) for r in read_topic(bootstrap, topics.input, 1)}
    found = {}
    for topic, position in ((topics.output, output_position), (topics.dlq, header_position),
                            (topics.filtered, header_position)):
        records = read_topic(bootstrap, topic, 0) if sum(end_offsets(bootstrap, topic).values()) else []
        found[topic] = records
        inputs -= {position(r) for r in records}
    assert not inputs, f"{len(inputs)} input records never reached an output topic\n{err.read_text()[-3000:]}"
    return found[topics.output], found[topics.dlq]


def test_expired_batches_replace_the_producer_and_nothing_is_lost(broker, topic_name, tmp_path: Path,
                                                                  reaper) -> None:
    bootstrap = broker.bootstrap_servers
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=2)
    name = group()
    # A linger of 1 s keeps about a second of outputs in the producer when the broker is killed
    # (with the default 5 ms, a loaded machine could kill it with nothing in flight: no expiry).
    proc, _, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "expiry", "--quiet",
                                  "--delivery-timeout-ms", "3000", "--linger-ms", "1000",
                                  "--filtered-topic", topics.filtered)
    feeder = Feeder(bootstrap, topics.input, seed=41, rate=2000)
    try:
        assert wait_until(lambda: sum(end_offsets(bootstrap, topics.output).values()) > 1000, 60), \
            err.read_text()
        broker.kill()  # outputs in flight: their batches expire after 3 s
    finally:
        feeder.stop()
    assert wait_until(lambda: "replacing it" in err.read_text(), 30), err.read_text()
    broker.start(quiet=True)

    def caught_up() -> bool:
        return committed_offsets(bootstrap, name, topics.input) == end_offsets(bootstrap, topics.input)

    assert wait_until(caught_up, 120), err.read_text()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, err.read_text()
    assert_nothing_lost(bootstrap, topics, err)


def test_sigterm_during_an_outage_is_bounded_and_says_what_stays_unacknowledged(
        broker, topic_name, tmp_path: Path, reaper) -> None:
    bootstrap = broker.bootstrap_servers
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=1)
    # A long linger keeps the outputs unacknowledged for a while, so the kill finds some in flight.
    proc, out, err = start_consumer(reaper, bootstrap, topics, group(), tmp_path, "term",
                                    "--shutdown-timeout", "4", "--stats-every", "500",
                                    "--linger-ms", "15000", "--delivery-timeout-ms", "60000")
    feeder = Feeder(bootstrap, topics.input, seed=42, rate=3000)
    try:
        assert wait_until(lambda: " msgs | " in out.read_text(), 60), err.read_text()  # a stats line
        broker.kill()
    finally:
        feeder.stop()
    proc.send_signal(signal.SIGTERM)
    # The stated bound: --shutdown-timeout, plus up to 10 s to close the clients.
    code = proc.wait(timeout=4 + 10 + 5)
    text = err.read_text()
    assert code == 1, text
    lines = [line for line in text.splitlines() if " ERROR   stopped after 4s with" in line]
    assert len(lines) == 1 and "stay uncommitted" in lines[0], text
    assert "Traceback" not in text
    assert "more read but not acknowledged" in out.read_text()


@pytest.mark.soak
@pytest.mark.timeout(60 + SOAK_OUTAGES * (SOAK_OUTAGE_S + 240))
def test_repeated_broker_kills_during_a_drain_lose_nothing_and_memory_stays_bounded(
        broker, topic_name, tmp_path: Path, reaper) -> None:
    bootstrap = broker.bootstrap_servers
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=4)
    name = group()
    proc, out, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "soak", "--stats-interval",
                                    "1", "--filtered-topic", topics.filtered, "--log-format", "json")
    watcher = Watcher(proc, out)

    def caught_up() -> bool:
        ends = end_offsets(bootstrap, topics.input)
        return sum(ends.values()) > 0 and committed_offsets(bootstrap, name, topics.input) == ends

    try:
        for outage in range(SOAK_OUTAGES):
            feeder = Feeder(bootstrap, topics.input, seed=100 + outage, rate=4000)
            try:
                # Kill while the stream flows: the consumer holds unacknowledged outputs.
                assert wait_until(lambda f=feeder: f.sent >= SOAK_EVENTS_PER_ROUND, 60), "the feeder is stuck"
                broker.kill()
            finally:
                feeder.stop()
            assert wait_until(lambda: "unreachable" in err.read_text(), 30), err.read_text()
            assert not wait_until(lambda: proc.poll() is not None, SOAK_OUTAGE_S), err.read_text()
            broker.start(quiet=True)
            assert wait_until(caught_up, 180), f"outage {outage + 1}: no resume\n{err.read_text()[-3000:]}"
        preload(bootstrap, topics.input, list(EventGenerator(seed=7, bad_ratio=0.05).generate(5000)))
        assert wait_until(caught_up, 120), err.read_text()[-3000:]
    finally:
        watcher.stop()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, err.read_text()[-3000:]
    consumed, processed, filtered, dead = summary_counts(out.read_text())
    # Records the feeder sent as the broker died never reached the input topic: most did.
    assert consumed == processed + filtered + dead > 0.8 * SOAK_EVENTS_PER_ROUND * SOAK_OUTAGES

    outputs, dead_letters = assert_nothing_lost(bootstrap, topics, err)
    assert watcher.max_rss < RSS_BOUND_MIB * 2**20, f"peak RSS {watcher.max_rss / 2**20:.0f} MiB"
    # Never more published than written: each claim against what had reached the topics by then.
    written = written_at(outputs)
    dead_written = written_at(dead_letters)
    assert len(watcher.claims) > 50
    for seen_ms, published_claim, dead_claim in watcher.claims:
        assert published_claim <= bisect.bisect_right(written, seen_ms), (seen_ms, published_claim)
        assert dead_claim <= bisect.bisect_right(dead_written, seen_ms), (seen_ms, dead_claim)
    print(f"\npeak RSS {watcher.max_rss / 2**20:.0f} MiB over {SOAK_OUTAGES} outages of {SOAK_OUTAGE_S:g}s; "
          f"{consumed:,} consumed; replacements: {err.read_text().count('replacing it')}")
