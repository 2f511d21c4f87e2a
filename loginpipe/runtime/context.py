"""What every worker shares, handed to it once: no worker holds the Application itself.

The Application builds one ``Context``; workers read their settings, clients and sinks from it
and report through its callbacks. The Application reads the workers' public state (assignment,
pending outputs) to supervise them; nothing points back the other way.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from loginpipe.config import PipelineConfig
from loginpipe.core.batch import Topology
from loginpipe.kafka.base import Backend
from loginpipe.observe import logs
from loginpipe.observe.prometheus import Exporter
from loginpipe.observe.stats import Stats
from loginpipe.runtime.delivery import Sender
from loginpipe.runtime.shared import SharedState
from loginpipe.serde import SchemaCache


class Warner:
    """Logs warnings (level WARNING, logger ``loginpipe.runtime`` unless given another), each
    distinct message at most once every ``every_s`` seconds: a broker away for a minute is a line
    every few seconds, not one per poll."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter | None = None,
                 every_s: float = 5.0) -> None:
        self.log = log or logs.get("runtime")
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def __call__(self, message: str) -> None:
        key = message[:40]  # the start names the warning: figures further on do not make another
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.every_s:
            self._last[key] = now
            self.log.warning(message)


class Shutdown:
    """The stop signal and its deadline: once begun, everything left must be done by ``deadline``."""

    def __init__(self, timeout_s: float, on_begin: Callable[[float], None] = lambda deadline: None) -> None:
        self.timeout_s = timeout_s
        self.event = threading.Event()
        self._deadline: float | None = None
        self._on_begin = on_begin

    def begin(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s
            self._on_begin(self._deadline)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def deadline(self) -> float:
        """When a stop must be done: the real one once begun, else as if it began now."""
        return self._deadline if self._deadline is not None else time.monotonic() + self.timeout_s


@dataclass
class Context:
    config: PipelineConfig
    backend: Backend
    sender: Sender
    state: SharedState  # the process totals and the registry of partition states
    topology: Topology
    stats: Stats
    shutdown: Shutdown
    warn: Callable[[str], None]
    acknowledge: Callable[[object], None]  # a batch whose every output is acknowledged
    fail: Callable[..., None]  # (description, bug=True): a worker hit a bug or a refusal: stop everything
    state_keys_per_partition: int  # each partition store's share of --max-tracked-keys
    out: TextIO = field(default_factory=lambda: sys.stdout)
    exporter: Exporter | None = None
    transactional_prefix: str = ""  # exactly-once: worker i's transactional id is "<prefix>-<i>"
    transaction: Callable[[bool, int, float], None] = lambda committed, records, seconds: None
    schemas: SchemaCache | None = None  # --schema-registry-url: writer schemas of framed input, by id
