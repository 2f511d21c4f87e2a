"""Helpers for integration tests: read a topic back from a real broker, run a CLI."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from loginpipe.config import PipelineConfig
from loginpipe.kafka.admin import ensure_topics
from loginpipe.local.generator import EventGenerator, Generated, make_producer, pace
from loginpipe.runtime.app import Application, RunResult
from loginpipe.topics import TopicSpec
from loginpipe.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0,
               isolation: str = "read_committed") -> list:
    """Every record of ``topic``, once its end offsets add up to ``expected`` at least (fails if
    they never do). read_committed, as every reader of the project: what an aborted transaction
    wrote is left out (and transaction markers take offsets, so records may be fewer)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             isolation_level=isolation)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"topic {topic} has no partitions"
        ends = wait_until(lambda: _ends_if_at_least(consumer, partitions, expected), timeout_s)
        assert ends, f"{topic}: fewer than {expected} records after {timeout_s}s"
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records.extend(batch)
        behind = {tp: end for tp, end in ends.items() if consumer.position(tp) < end}
        assert not behind, f"{topic}: not read to its end after {timeout_s}s: {behind}"
        return records
    finally:
        consumer.close()


def _ends_if_at_least(consumer: KafkaConsumer, partitions: list, expected: int) -> dict | None:
    ends = consumer.end_offsets(partitions)
    return ends if sum(ends.values()) >= expected else None


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The last stable offsets (read_committed): where a reader of committed data ends."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return {tp.partition: off for tp, off in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def run_cli(*args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run a command of this project (``python <args>``) from the repository root."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env=full_env)


@dataclass(frozen=True)
class PipelineTopics:
    """A test's own topics, so that tests never see each other's records on a shared broker."""

    input: str
    output: str
    dlq: str
    filtered: str
    summary: str
    metrics: str

    @property
    def names(self) -> list[str]:
        return [self.input, self.output, self.dlq, self.filtered, self.summary, self.metrics]

    def flags(self, filtered: bool = False) -> list[str]:
        flags = ["--input-topic", self.input, "--output-topic", self.output, "--dlq-topic", self.dlq,
                 "--summary-topic", self.summary, "--metrics-topic", self.metrics]
        return [*flags, "--filtered-topic", self.filtered] if filtered else flags

    def config(self, filtered: bool = False) -> dict:
        """The same, as PipelineConfig fields."""
        return {"input_topic": self.input, "output_topic": self.output, "dlq_topic": self.dlq,
                "summary_topic": self.summary, "metrics_topic": self.metrics,
                "filtered_topic": self.filtered if filtered else None}


def create_pipeline_topics(bootstrap: str, topic_name, partitions: int = 4) -> PipelineTopics:
    topics = PipelineTopics(*(topic_name(base) for base in ("in", "out", "dlq", "filtered", "summary",
                                                            "metrics")))
    specs = [TopicSpec(name, "test") for name in topics.names[:4]]
    specs += [TopicSpec(topics.summary, "test", 1), TopicSpec(topics.metrics, "test", 1)]
    ensure_topics(bootstrap, specs, partitions=partitions)
    return topics


def preload(bootstrap: str, topic: str, records: list[Generated], rate: float = 0) -> None:
    """Write generated records to ``topic`` (``rate`` per second, 0: at once); wait for all acks."""
    producer = make_producer(bootstrap)
    started = time.monotonic()
    try:
        for i, record in enumerate(records):
            producer.send(topic, key=record.key, value=record.value)
            if rate and i % 100 == 0:
                pace(started, i, rate)
        producer.flush()
    finally:
        producer.close()


def generated(n: int, seed: int, bad_ratio: float = 0.05, users: int = 2000) -> list[Generated]:
    return list(EventGenerator(seed=seed, users=users, bad_ratio=bad_ratio).generate(n))


def run_pipeline(bootstrap: str, topics: PipelineTopics, group: str, idle_s: float = 3.0,
                 filtered: bool = False, **overrides) -> RunResult:
    """Run the pipeline in this process until it has been idle for ``idle_s``."""
    config = PipelineConfig(connection=bootstrap, group_id=group, stop_when_idle_s=idle_s,
                            quiet=True, **{**topics.config(filtered), **overrides})
    return Application(config, out=io.StringIO(), err=io.StringIO()).run(install_signals=False)


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    # read_committed: waits while an open transaction holds the group's offsets (require_stable)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return {tp.partition: consumer.committed(tp) or 0 for tp in partitions}
    finally:
        consumer.close(autocommit=False)


def start_consumer(reaper: list, bootstrap: str, topics: PipelineTopics, group: str, log_dir: Path,
                   name: str, *extra: str, env: dict[str, str] | None = None
                   ) -> tuple[subprocess.Popen, Path, Path]:
    """create_kafka_consumer.py as a real process (added to ``reaper``), with its stdout and stderr."""
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    proc = subprocess.Popen(
        [sys.executable, "create_kafka_consumer.py", "--bootstrap-servers", bootstrap, "--group-id", group,
         *topics.flags(), *extra],
        cwd=ROOT, stdout=out.open("w"), stderr=err.open("w"), text=True, env={**os.environ, **(env or {})},
    )
    reaper.append(proc)
    return proc, out, err


SUMMARY = re.compile(r"consumed ([\d,]+) in [\d.,]+s \([\d,]+ msg/s\): processed ([\d,]+), "
                     r"filtered ([\d,]+), dead-lettered ([\d,]+)")


def summary_counts(text: str) -> tuple[int, int, int, int]:
    """(consumed, processed, filtered, dead_lettered) from a printed summary."""
    match = SUMMARY.search(text)
    assert match, f"no summary in output:\n{text[-2000:]}"
    return tuple(int(g.replace(",", "")) for g in match.groups())
