"""State the worker threads share. The core's ``Aggregates`` is plain data, without locks; here it
gets one: ``LockedAggregates`` takes it once per call, so once per batch in ``apply``, never per
message, and ``summary`` and ``counts`` are consistent copies."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from loginpipe.core.state import (
    DEFAULT_MAX_TRACKED_KEYS,
    DEFAULT_MAX_VALUES_PER_KEY,
    Aggregates,
    DistinctStore,
    Observed,
    Snapshot,
)


class LockedAggregates:
    """An ``Aggregates`` shared by threads: every call takes one lock once."""

    def __init__(self, max_tracked_keys: int = DEFAULT_MAX_TRACKED_KEYS,
                 max_values_per_key: int = DEFAULT_MAX_VALUES_PER_KEY,
                 aggregates: Aggregates | None = None) -> None:
        self.aggregates = aggregates or Aggregates(max_tracked_keys, max_values_per_key)
        self._lock = threading.Lock()

    def apply(self, batch: Sequence[tuple[Observed, str]]) -> list[Snapshot]:
        """``Aggregates.apply`` under the lock: once per batch."""
        with self._lock:
            return self.aggregates.apply(batch)

    def summary(self, top: int = 5) -> dict:
        with self._lock:
            return self.aggregates.summary(top)

    def counts(self) -> dict:
        with self._lock:
            return self.aggregates.counts()

    def tracked_users(self) -> int:
        with self._lock:
            return len(self.aggregates.ips_by_user)

    def tracked_devices(self) -> int:
        with self._lock:
            return len(self.aggregates.users_by_device)

    # Read without the lock, as the Prometheus gauges do (``len()`` of a store is one dict length).
    @property
    def ips_by_user(self) -> DistinctStore:
        return self.aggregates.ips_by_user

    @property
    def users_by_device(self) -> DistinctStore:
        return self.aggregates.users_by_device
