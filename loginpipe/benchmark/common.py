"""Constants and small helpers shared by the benchmark's orchestrator and its child processes."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from loginpipe.cli import EnvArgumentParser, positive_int
from loginpipe.errors import UserError
from loginpipe.local.broker import PROJECT_ROOT

RESULT_PREFIX = "BENCH-RESULT "
MB = 1_000_000
DEFAULT_OUT_DIR = PROJECT_ROOT / "bench-results"


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


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative_int.__name__ = "non-negative integer"


def add_run_arguments(parser: EnvArgumentParser, events_help: str, partitions_help: str) -> None:
    """The flags every benchmark command has: broker, size, results folder, seed."""
    add = parser.add_env_argument
    add("--bootstrap-servers", env="BOOTSTRAP_SERVERS", default=None,
        help="use this broker; when unset, the local broker is started (127.0.0.1:29092)")
    add("--events", env="BENCH_EVENTS", type=positive_int, default=1_000_000, help=events_help)
    add("--partitions", env="BENCH_PARTITIONS", type=positive_int, default=4, help=partitions_help)
    add("--out-dir", env="BENCH_OUT_DIR", default=str(DEFAULT_OUT_DIR),
        help="where results (and child process logs) go")
    add("--seed", env="BENCH_SEED", type=int, default=7, help="generator seed")


def new_run(out_dir: str) -> tuple[str, Path]:
    """A run id (time and a random suffix) and its log folder, made now."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    return run_id, make_log_dir(Path(out_dir), run_id)


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
        from loginpipe.kafka.failures import unreachable_hint

        raise UserError(f"cannot reach a Kafka broker at {given}; {unreachable_hint(given)}")
    return given
