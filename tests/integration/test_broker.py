"""The local broker's start/stop/status against real Kafka processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loginpipe.errors import UserError
from loginpipe.local.broker import LocalBroker, broker_answers, free_port

pytestmark = pytest.mark.integration


def make_broker(home: Path, libs: Path) -> LocalBroker:
    return LocalBroker(home=home, port=free_port(), controller_port=free_port(), heap_mb=384, libs=libs)


def test_start_status_already_running_stop(tmp_path: Path, kafka_libs: Path) -> None:
    broker = make_broker(tmp_path / "k", kafka_libs)
    assert broker.status() == "not running"
    try:
        message = broker.start()
        assert message.startswith("started Kafka 4.") and broker.bootstrap_servers in message
        assert broker_answers(broker.bootstrap_servers)
        assert broker.status().startswith(f"running at {broker.bootstrap_servers}")
        assert broker.start().startswith(f"already running at {broker.bootstrap_servers}")
        assert broker.log_file.exists() and broker.pid_file.exists()
    finally:
        stopped = broker.stop()
    assert stopped.startswith("stopped")
    assert broker.status() == "not running"
    assert not broker.pid_file.exists()
    assert not broker_answers(broker.bootstrap_servers, timeout_s=1.0)
    assert broker.stop() == "not running"


def test_port_taken_by_another_program_is_named(tmp_path: Path, kafka_libs: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = LocalBroker(home=tmp_path / "k", port=port, controller_port=free_port(), libs=kafka_libs)
        with pytest.raises(UserError, match=f"port {port} is already in use"):
            broker.start()
    assert not broker.is_running()


def test_stale_pid_file_is_not_mistaken_for_a_running_broker(tmp_path: Path, kafka_libs: Path) -> None:
    broker = make_broker(tmp_path / "k", kafka_libs)
    broker.home.mkdir(parents=True)
    broker.pid_file.write_text("1\n")  # pid 1 exists but is not our broker
    assert not broker.is_running()
    assert broker.status() == "not running"


def test_start_or_reuse_uses_a_kafka_already_on_the_port(tmp_path: Path, kafka_libs: Path, kafka) -> None:
    port = int(kafka.bootstrap.rpartition(":")[2])
    other = LocalBroker(home=tmp_path / "other", port=port, controller_port=free_port(), libs=kafka_libs)
    assert other.start_or_reuse() == f"a Kafka broker already answers at 127.0.0.1:{port}: using it"
    assert not other.is_running()
