"""User mistakes on the command line are one line and an exit code, before any broker is needed
(moved from tests/integration: none of these talks to Kafka)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import run_cli


def test_wrong_flag_is_one_line() -> None:
    result = run_cli("create_kafka_consumer.py", "--threads", "0")
    assert result.returncode == 2
    assert "invalid positive integer value: '0'" in result.stderr and "Traceback" not in result.stderr


def test_privacy_mode_without_a_secret_is_a_one_line_error() -> None:
    result = run_cli("create_kafka_consumer.py", "--privacy", env={"PRIVACY_SECRET": ""})
    assert result.returncode == 1
    assert result.stderr.startswith("error: --privacy needs a secret key: $PRIVACY_SECRET is not set")
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_app_versions_flag_is_one_line() -> None:
    result = run_cli("create_kafka_consumer.py", "--app-versions", "2.3,latest")
    assert result.returncode == 2
    assert "invalid comma-separated list of x.y.z versions value" in result.stderr
    assert "Traceback" not in result.stderr


def test_create_topics_rejects_a_bad_flag_without_traceback() -> None:
    result = run_cli("create_kafka_topic.py", "--partitions", "0")
    assert result.returncode == 2
    assert "invalid positive integer value: '0'" in result.stderr
    assert "Traceback" not in result.stderr


def test_broker_status_exit_code_when_stopped(tmp_path: Path) -> None:
    result = run_cli("-m", "loginpipe.local.broker", "status", "--home", str(tmp_path / "none"))
    assert result.returncode == 3
    assert result.stdout.strip() == "not running"
    bad = run_cli("-m", "loginpipe.local.broker", "launch")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr


# --- Issue 16's rough edges: every usage mistake is one line naming the command that was run.

def one_usage_line(result, prog: str) -> str:
    """The single stderr line of a usage error (exit 2, with the --help hint); fails otherwise."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith(f"(see {prog} --help)"), lines
    return lines[0]


@pytest.mark.parametrize(("args", "prog"), [
    (("create_kafka_consumer.py", "--max-poll-records", "many"), "create_kafka_consumer.py"),
    (("create_kafka_topic.py", "--replication-factor", "-1"), "create_kafka_topic.py"),
    (("-m", "loginpipe.local.broker", "status", "--heap-mb", "lots"), "python -m loginpipe.local.broker"),
    (("-m", "loginpipe.local.stack", "--rate", "fast"), "python -m loginpipe.local.stack"),
    (("-m", "loginpipe.local.generator", "--count", "-5"), "python -m loginpipe.local.generator"),
    (("-m", "loginpipe.dashboard", "--refresh", "0"), "python -m loginpipe.dashboard"),
    (("-m", "loginpipe.query", "--timeout", "soon", "totals"), "python -m loginpipe.query"),
    (("-m", "loginpipe.dlq", "decrypt", "--offset", "last"), "python -m loginpipe.dlq decrypt"),
    (("-m", "loginpipe.tail", "some-topic", "--count", "0"), "python -m loginpipe.tail"),
    (("-m", "loginpipe", "consume", "--threads", "two"), "loginpipe consume"),
    (("-m", "loginpipe", "tail", "--json"), "loginpipe tail"),  # no TOPIC
])
def test_a_bad_flag_value_is_one_line_with_a_help_hint(args: tuple[str, ...], prog: str) -> None:
    one_usage_line(run_cli(*args), prog)


BROKER = "python -m loginpipe.local.broker"


STACK = "python -m loginpipe.local.stack"


@pytest.mark.parametrize(("args", "prog", "flag"), [
    (("-m", "loginpipe.local.broker", "start"), BROKER, "--port"),
    (("-m", "loginpipe.local.broker", "start"), BROKER, "--controller-port"),
    (("-m", "loginpipe.local.broker", "start"), BROKER, "--secure-port"),
    (("-m", "loginpipe.local.broker", "start"), BROKER, "--mtls-port"),
    (("-m", "loginpipe.dashboard",), "python -m loginpipe.dashboard", "--port"),
    (("-m", "loginpipe.local.stack",), STACK, "--dashboard-port"),
    (("create_kafka_consumer.py",), "create_kafka_consumer.py", "--metrics-port"),
])
@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_every_port_flag_takes_only_a_port_number(args: tuple[str, ...], prog: str, flag: str, port: str,
                                                  tmp_path: Path) -> None:
    home = ("--home", str(tmp_path)) if prog == BROKER else ()  # never the running broker's
    line = one_usage_line(run_cli(*args, f"{flag}={port}", *home), prog)
    assert f"argument {flag}: invalid port number" in line


def test_a_port_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    result = run_cli("-m", "loginpipe.local.broker", "start", "--home", str(tmp_path),
                     env={"KAFKA_PORT": "99999"})
    assert "KAFKA_PORT='99999' is not a valid --port value" in one_usage_line(result, BROKER)


def test_two_listeners_on_one_port_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("-m", "loginpipe.local.broker", "start", "--home", str(tmp_path), "--port", "29500",
                     "--controller-port", "29500")
    assert "--port and --controller-port are both 29500" in one_usage_line(result, BROKER)
    assert not (tmp_path / "server.properties").exists()


def test_a_port_taken_by_another_program_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = run_cli("-m", "loginpipe.local.broker", "start", "--home", str(tmp_path),
                         "--port", str(port))
        dashboard = run_cli("-m", "loginpipe.dashboard", "--port", str(port))
    for result in (broker, dashboard):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert broker.stderr.startswith(f"error: port {port} is already in use by another program")
    assert dashboard.stderr.startswith(f"error: port {port} is taken")


def test_the_stack_names_itself_in_errors_about_the_consumers_flags() -> None:
    """The stack parses the consumer's flags too: a mistake there names the command that was run."""
    bogus = one_usage_line(run_cli("-m", "loginpipe.local.stack", "--bogus"), STACK)
    assert "unrecognized arguments: --bogus" in bogus
    threads = one_usage_line(run_cli("-m", "loginpipe.local.stack", "--threads", "0"), STACK)
    assert "argument --threads: invalid positive integer value: '0'" in threads
    one_usage_line(run_cli("-m", "loginpipe", "run", "--bogus"), "loginpipe run")
    assert "create_kafka_consumer.py" not in run_cli("-m", "loginpipe.local.stack", "--help").stdout
