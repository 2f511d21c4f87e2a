"""Logging for every command: standard ``logging`` with levels and timestamps, as text for a
person or as one JSON object per line for a log collector (``--log-format json``).

Warnings and errors go through here; the final summary and a command's own answer (a status, a
table) stay plain prints, because they are the output rather than a log of it."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import orjson

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
ROOT = "loginpipe"


_format = "text"  # the format configure() set last


def timestamp(epoch: float) -> str:
    """``2026-11-24T10:00:00.123Z``: RFC 3339 in UTC, to the millisecond (sortable as text)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int((epoch % 1) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-24T10:00:00.123Z WARNING message``: UTC, sortable, one line."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{timestamp(record.created)} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, and any ``extra``
    fields a caller passed that are JSON-friendly."""

    RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": timestamp(record.created), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self.RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Logger:
    """Send the project's log records to ``stream`` (stderr by default) at ``level`` and above.
    Called again (a flag parsed after the environment), it replaces the previous handler."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "_loginpipe", False):
            logger.removeHandler(handler)
    global _format
    _format = fmt
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._loginpipe = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False  # kafka-python's own loggers stay out of our format and level
    return logger


def current_format() -> str:
    """The format configure() set last: "text" or "json"."""
    return _format


def formatter() -> logging.Formatter:
    """A formatter of the format configured last (text until configure() says otherwise)."""
    return JsonFormatter() if _format == "json" else TextFormatter()


def get(name: str) -> logging.Logger:
    """The logger for a part of the project (``loginpipe.<name>``)."""
    return logging.getLogger(f"{ROOT}.{name}")
