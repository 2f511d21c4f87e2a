"""Constants and small helpers shared by the benchmark's orchestrator and its child processes."""

from __future__ import annotations

import json
from pathlib import Path

from loginpipe.cli import positive_int
from loginpipe.errors import UserError

RESULT_PREFIX = "BENCH-RESULT "
MB = 1_000_000


def say(text: str) -> None:
    print(text, flush=True)


def emit_result(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl+C: children stopped, topics deleted


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


def make_log_dir(out_dir: Path, run_id: str) -> Path:
    """``out_dir/logs/run_id``, made now, so a bad path fails before the runs."""
    log_dir = out_dir / "logs" / run_id
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror}") from None
    return log_dir


def bootstrap_servers(given: str | None) -> str:
    """The broker to use: the one given, which must answer, or the local broker, started."""
    from loginpipe.local.broker import LocalBroker, broker_answers

    if given is None:
        broker = LocalBroker()
        say(f"kafka: {broker.start_or_reuse()}")
        return broker.bootstrap_servers
    if not broker_answers(given, timeout_s=5.0):
        raise UserError(f"cannot reach a Kafka broker at {given}; is it running? (make kafka-start)")
    return given
