"""Helpers for integration tests: read a topic back from a real broker, run a CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` from the beginning; fails unless ``expected`` arrive in time."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=1000, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records.extend(batch)
        assert len(records) >= expected, f"{topic}: {len(records)} records, expected {expected}"
        return records
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
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
