"""Shared fixtures. Integration tests get a real Kafka broker: the one at $BOOTSTRAP_SERVERS when
it answers, otherwise an isolated broker on free ports in a temporary folder, for this session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loginpipe.local.broker import DEFAULT_HOME, LocalBroker, broker_answers, ensure_jars, free_port


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """Kafka's jars, fetched once into the project's ignored .kafka folder."""
    return ensure_jars(DEFAULT_HOME / "libs", quiet=True)


@dataclass(frozen=True)
class KafkaUnderTest:
    bootstrap: str
    broker: LocalBroker | None  # None when reusing a broker whose files we cannot see


@pytest.fixture(scope="session")
def kafka(kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    """A real broker for the whole test session."""
    existing = os.environ.get("BOOTSTRAP_SERVERS")
    if existing and broker_answers(existing):
        local = LocalBroker()
        yield KafkaUnderTest(existing, local if local.is_running() and local.bootstrap_servers == existing
                             else None)
        return
    broker = LocalBroker(home=tmp_path_factory.mktemp("kafka"), port=free_port(),
                         controller_port=free_port(), heap_mb=512, libs=kafka_libs)
    broker.start(quiet=True)
    try:
        yield KafkaUnderTest(broker.bootstrap_servers, broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka: KafkaUnderTest) -> str:
    """Bootstrap servers of the session's real broker."""
    return kafka.bootstrap


@pytest.fixture
def topic_name() -> Callable[[str], str]:
    """Unique topic names, so tests never see each other's data on a reused broker."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"test-{base}-{suffix}"


@pytest.fixture
def reaper() -> Iterator[list]:
    """Processes a test starts; any still running at its end (a failed test) are killed."""
    processes: list = []
    yield processes
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
