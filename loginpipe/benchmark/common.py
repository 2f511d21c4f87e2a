"""Constants and small helpers shared by the benchmark's orchestrator and its child processes."""

from __future__ import annotations

import json

from loginpipe.config import positive_int

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
