"""The state this process holds, shared by its worker threads.

Each partition's store (``LoginState``, ``DeviceState``) belongs to the one worker that owns the
partition, and only that worker's thread changes it: no lock. What threads do share is the process
totals (the counts of every partition the process owns, which each processed record reports) and
the registry of stores the summaries read; ``SharedState`` takes its lock once per login batch and
once per assignment change, never per message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from loginpipe.kafka.base import TopicPartition
from loginpipe.state.stores import Counted, DeviceState, LoginState, ProcessTotals
from loginpipe.state.view import detailed_counts, summarize

T = TypeVar("T")


class SharedState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals = ProcessTotals()
        self.logins: dict[TopicPartition, LoginState] = {}
        self.devices: dict[TopicPartition, DeviceState] = {}
        self.restoring: dict[str, tuple[int, int]] = {}  # worker -> (records applied, to apply)

    def count(self, state: LoginState, batch: Sequence) -> list[Counted]:
        """``LoginState.count`` under the lock: once per batch."""
        with self._lock:
            return state.count(batch, self.totals)

    def adopt(self, tp: TopicPartition, state: LoginState | DeviceState) -> None:
        """A restored state starts serving: its counts join the process totals."""
        with self._lock:
            if isinstance(state, LoginState):
                self.logins[tp] = state
                self.totals.add(state)
            else:
                self.devices[tp] = state

    def drop(self, tp: TopicPartition) -> None:
        """A partition left this process: its counts leave the process totals."""
        with self._lock:
            state = self.logins.pop(tp, None)
            if state is not None:
                self.totals.add(state, sign=-1)
            self.devices.pop(tp, None)

    def summary(self, top: int = 5) -> dict:
        with self._lock:
            return summarize(self.totals, self.logins.values(), self.devices.values(), top)

    def counts(self) -> dict:
        with self._lock:
            return detailed_counts(self.totals, self.logins.values(), self.devices.values())

    def read_partitions(self, read: Callable[[LoginState | DeviceState], T]) -> dict[TopicPartition, T]:
        """``read`` of each partition's state, under the lock a login batch counts under: the
        summary topic's partition records (``read`` copies, so keeps the lock briefly)."""
        with self._lock:
            return {tp: read(state) for tp, state in [*self.logins.items(), *self.devices.items()]}

    # Read without the lock, as the Prometheus gauges do: a sum over a copy of the dict's values.
    def tracked_users(self) -> int:
        return sum(len(s.ips_by_user) for s in list(self.logins.values()))

    def tracked_devices(self) -> int:
        return sum(len(s.users_by_device) for s in list(self.devices.values()))

    def restore_progress(self) -> tuple[int, int]:
        """(changelog records applied, to apply) over every worker's restores under way."""
        progress = list(self.restoring.values())
        return sum(done for done, _ in progress), sum(total for _, total in progress)
