"""Shared fixtures. Integration tests get a real Kafka broker: the one at $BOOTSTRAP_SERVERS when
it answers, otherwise an isolated broker on free ports in a temporary folder, for this session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loginpipe.local.broker import DEFAULT_HOME, LocalBroker, broker_answers, ensure_jars, free_port
from loginpipe.local.secrets import ADMIN_USER, NOWRITE_USER, PIPELINE_USER, client_settings


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


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The tests that prove delivery run on both clients (--client): the default, kafka-python,
    and confluent-kafka (librdkafka)."""
    return request.param


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


@dataclass(frozen=True)
class SecureKafka:
    """The session's secure broker: SASL_SSL (SCRAM-SHA-512) beside PLAINTEXT, plus mutual TLS.
    Passwords are kept out of repr, so no assertion message shows them."""

    broker: LocalBroker
    bootstrap: str  # SASL_SSL
    plaintext_bootstrap: str  # PLAINTEXT, whose anonymous user is a super user
    mtls_bootstrap: str  # SSL with client certificates
    secrets_dir: Path
    ca_file: Path
    client_properties: Path  # the pipeline's user
    admin_properties: Path
    nowrite_properties: Path
    user: str = PIPELINE_USER
    admin_user: str = ADMIN_USER
    nowrite_user: str = NOWRITE_USER
    password: str = field(default="", repr=False)
    admin_password: str = field(default="", repr=False)
    nowrite_password: str = field(default="", repr=False)

    def settings(self, user: str = PIPELINE_USER, **overrides: Any) -> dict[str, Any]:
        """kafka-python keyword arguments for ``user`` over SASL_SSL."""
        return {**client_settings(self.broker.secrets.properties_file(user)), **overrides}


@pytest.fixture(scope="session")
def secure_kafka(kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """An isolated secure broker (start --secure --mtls) on free ports, for the whole session."""
    broker = LocalBroker(home=tmp_path_factory.mktemp("secure-kafka"), port=free_port(),
                         controller_port=free_port(), heap_mb=512, libs=kafka_libs, secure=True,
                         secure_port=free_port(), mtls_port=free_port())
    broker.start(quiet=True)
    try:
        secrets = broker.secrets
        yield SecureKafka(
            broker=broker, bootstrap=broker.secure_bootstrap_servers,
            plaintext_bootstrap=broker.bootstrap_servers, mtls_bootstrap=str(broker.mtls_bootstrap_servers),
            secrets_dir=secrets.dir, ca_file=secrets.ca_file,
            client_properties=secrets.properties_file(PIPELINE_USER),
            admin_properties=secrets.properties_file(ADMIN_USER),
            nowrite_properties=secrets.properties_file(NOWRITE_USER),
            password=secrets.password(PIPELINE_USER), admin_password=secrets.password(ADMIN_USER),
            nowrite_password=secrets.password(NOWRITE_USER))
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A schema registry of the module's own (its own home, data and free port, the checkout's
    build shared), so a test may stop and restart it and the checkout's registry is never touched;
    built first if need be (about 2 minutes cold). Stopped at the end."""
    from loginpipe.local.registry import DEFAULT_HOME as REGISTRY_HOME
    from loginpipe.local.registry import LocalRegistry, ensure_built

    ensure_built(REGISTRY_HOME, quiet=True)
    home = tmp_path_factory.mktemp("registry")
    (home / "app").symlink_to(REGISTRY_HOME / "app")
    registry = LocalRegistry(home=home, port=free_port())
    registry.start(quiet=True)
    yield registry
    registry.stop()
