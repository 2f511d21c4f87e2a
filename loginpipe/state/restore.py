"""Rebuilding a partition's state from its changelog when the partition is assigned.

A worker pauses a newly assigned partition, hands its state here, and calls ``step`` once per loop:
each call reads one chunk of the changelogs, so the worker keeps polling (the group keeps it as a
member, its other partitions keep flowing) while a restore runs, and the stats line can say how
far it is. A state is done when the reader's position reaches the changelog's end offset taken
when its restore began: nothing else writes that changelog partition while this worker owns the
partition it belongs to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from loginpipe.kafka.base import ClientError, Reader, TopicPartition
from loginpipe.state.changelog import finish_restore, restore_device, restore_login
from loginpipe.state.stores import DeviceState, LoginState

CHUNK_RECORDS = 20_000  # per step: about 20-40 ms of applying, so the loop stays responsive
STALL_S = 30.0  # no progress this long while the changelog says there is more: give up waiting


@dataclass
class _Task:
    state: LoginState | DeviceState
    owner: TopicPartition  # the input or repartition partition the state belongs to
    end: int | None = None  # the changelog's end offset when the restore began
    applied: int = 0
    progress_at: float = 0.0  # clock time of the last records applied (or of the start)


class Restorer:
    """The restores one worker has under way."""

    def __init__(self, make_reader: Callable[[], Reader], warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._make_reader = make_reader
        self._reader: Reader | None = None
        self.warn = warn
        self.clock = clock
        self._tasks: dict[TopicPartition, _Task] = {}  # by changelog partition
        self._assigned: set[TopicPartition] = set()
        self.restored_records = 0  # applied since this worker started (for the rate in the README)

    def add(self, changelog: TopicPartition, owner: TopicPartition, state: LoginState | DeviceState) -> None:
        self._tasks[changelog] = _Task(state, owner, progress_at=self.clock())

    def cancel(self, owners: set[TopicPartition]) -> None:
        """Stop restoring states whose partitions were revoked meanwhile."""
        for changelog in [c for c, task in self._tasks.items() if task.owner in owners]:
            del self._tasks[changelog]
        self._release()

    def _release(self) -> None:
        """Let the reader go of partitions no restore reads any more: one that comes back later
        must be read again from its beginning, not from where the old restore stopped."""
        if self._reader is not None and self._assigned != set(self._tasks):
            self._assigned = set(self._tasks)
            self._reader.assign(sorted(self._assigned))

    @property
    def active(self) -> bool:
        return bool(self._tasks)

    def progress(self) -> tuple[int, int]:
        """(changelog records applied, records to apply at most) over the restores under way; at
        least 1 to apply while any runs (its end may not be known yet)."""
        done = sum(t.applied for t in self._tasks.values())
        total = sum(max(t.end or 0, t.applied) for t in self._tasks.values())
        return done, max(total, done + 1) if self._tasks else 0

    def step(self, timeout_ms: int = 100) -> list[TopicPartition]:
        """Apply one chunk; return the owners whose state is now complete."""
        if not self._tasks:
            return []
        try:
            return self._step(timeout_ms)
        except ClientError as exc:  # the broker went away: the next loop tries again
            self.warn(f"restoring state: {exc}; retrying")
            return []

    def _step(self, timeout_ms: int) -> list[TopicPartition]:
        reader = self._reader or self._make_reader()
        self._reader = reader
        wanted = set(self._tasks)
        if wanted != self._assigned:
            reader.assign(sorted(wanted))
            self._assigned = wanted
        fresh = [c for c, task in self._tasks.items() if task.end is None]
        if fresh:
            for changelog, end in reader.end_offsets(fresh).items():
                self._tasks[changelog].end = end
        done = [c for c, task in self._tasks.items() if task.end == 0]
        if len(done) < len(self._tasks):
            self._apply(reader.poll(timeout_ms, CHUNK_RECORDS))
            done += self._finished(reader, set(done))
        owners = [self._finish(changelog) for changelog in done]
        self._release()
        return owners

    def _apply(self, polled: dict) -> None:
        now = self.clock()
        for tp, records in polled.items():
            task = self._tasks.get(TopicPartition(tp.topic, tp.partition))
            if task is None:
                continue
            apply = restore_login if isinstance(task.state, LoginState) else restore_device
            state = task.state
            for record in records:
                if record.key is not None:
                    apply(state, record.key, record.value)
            task.applied += len(records)
            task.progress_at = now
            self.restored_records += len(records)

    def _finished(self, reader: Reader, skip: set) -> list[TopicPartition]:
        done = []
        now = self.clock()
        for changelog, task in self._tasks.items():
            if changelog in skip:
                continue
            position = reader.position(changelog)
            if position is not None and position >= task.end:
                done.append(changelog)
            elif now - task.progress_at >= STALL_S:
                self.warn(f"restoring {task.owner.topic}[{task.owner.partition}]: no progress for "
                          f"{STALL_S:.0f}s at offset {position} of {task.end}; going on with what was read")
                done.append(changelog)
        return done

    def _finish(self, changelog: TopicPartition) -> TopicPartition:
        task = self._tasks.pop(changelog)
        finish_restore(task.state)
        return task.owner

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
