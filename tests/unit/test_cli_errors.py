"""User mistakes on the command line are one line and an exit code, before any broker is needed
(moved from tests/integration: none of these talks to Kafka)."""

from __future__ import annotations

from pathlib import Path

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
