"""The pure core: a batch of raw records and the state of their partition in, output records and
state changes out. Knows nothing about Kafka clients, threads or time sources.

Two steps, because the input is keyed by user_id and devices are not:

    login step (an input partition):  parse/validate -> filter -> count (LoginState) -> repartition
    device step (a repartition partition):  count users per device (DeviceState) -> enrich, risk -> route

``process_logins`` and ``process_devices`` are what the runtime runs on each polled batch;
``process_batch`` runs both in one go, with the repartition in memory, for tests and benchmarks
of the core alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from loginpipe.core.enrich import normalize_device_type
from loginpipe.core.events import MAX_FUTURE_SKEW_S, LoginEvent, RawRecord, Schemas, parse_event
from loginpipe.core.filters import FilterRules, filter_reason
from loginpipe.core.records import (
    DEVICE_ID,
    USER_ID,
    BatchTime,
    OutputRecord,
    Routes,
    dead_letter,
    filtered_record,
    processed_record,
    read_repartitioned,
    repartition_record,
)
from loginpipe.state import changelog
from loginpipe.state.stores import (
    DEFAULT_MAX_TRACKED_KEYS,
    Counted,
    DeviceState,
    LoginState,
    ProcessTotals,
)
from loginpipe.state.view import detailed_counts, summarize


@dataclass(frozen=True)
class Topology:
    """What the core does with each record: which events it keeps, where records go, and how
    far ahead of our clock an event time may be."""

    routes: Routes = field(default_factory=Routes)
    filters: FilterRules = field(default_factory=FilterRules)
    max_future_skew_s: float = MAX_FUTURE_SKEW_S


@dataclass
class BatchResult:
    """What one batch produced. For the login step consumed == processed + filtered +
    dead_lettered, always; the device step consumes none of the input (its records were counted
    as processed by the login step) and publishes ``published`` records."""

    outputs: list[OutputRecord] = field(default_factory=list)  # changelog records included
    consumed: int = 0
    processed: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    published: int = 0
    reasons: Counter = field(default_factory=Counter)  # filter and dead-letter reasons
    risk_levels: Counter = field(default_factory=Counter)  # of the published records

    def absorb(self, step: BatchResult, outputs: bool = True) -> None:
        """Add another step's result to this one (several partitions' steps make one batch)."""
        if outputs:
            self.outputs.extend(step.outputs)
        self.consumed += step.consumed
        self.processed += step.processed
        self.filtered += step.filtered
        self.dead_lettered += step.dead_lettered
        self.published += step.published
        self.reasons.update(step.reasons)
        self.risk_levels.update(step.risk_levels)


class Counting(Protocol):
    """Counts a login batch into its partition's state: ``LoginState.count`` bound to the process
    totals, or the runtime's locked wrapper around it."""

    def __call__(self, state: LoginState, batch: Sequence[tuple[int, LoginEvent, str]]) -> list[Counted]: ...


def process_logins(records: Sequence[RawRecord], state: LoginState, count: Counting,
                   topology: Topology, now_s: float, schemas: Schemas = None) -> BatchResult:
    """The login step over records of one input partition, in offset order. ``schemas``: the
    writer schemas of the batch's framed Avro records, by id (None: no registry)."""
    result = BatchResult(consumed=len(records))
    routes, rules, skew = topology.routes, topology.filters, topology.max_future_skew_s
    forward_filtered = routes.filtered_topic is not None
    outputs, reasons = result.outputs, result.reasons
    kept: list[tuple[RawRecord, LoginEvent, str]] = []
    for record in records:
        event = parse_event(record.value, now_s, skew, schemas)
        if not isinstance(event, LoginEvent):
            outputs.append(dead_letter(routes, record, event))
            reasons[event.reason] += 1
            result.dead_lettered += 1
            continue
        device_type = normalize_device_type(event.device_type)
        reason = filter_reason(rules, device_type, event.app_version, event.epoch_s, now_s)
        if reason is not None:
            reasons[reason] += 1
            if forward_filtered:
                outputs.append(filtered_record(routes, record, event, reason))
            continue
        kept.append((record, event, device_type))
    counted = count(state, [(record.offset, event, device_type) for record, event, device_type in kept])
    for (record, event, device_type), values in zip(kept, counted, strict=True):
        outputs.append(repartition_record(routes, record, event, device_type, values))
    outputs.extend(changelog.login_changes(state, routes.internal.changelog))
    result.processed = len(kept)
    result.filtered = result.consumed - result.processed - result.dead_lettered
    return result


def process_devices(records: Sequence[RawRecord], state: DeviceState, topology: Topology,
                    now_s: float) -> BatchResult:
    """The device step over records of one repartition partition, in offset order."""
    result = BatchResult()
    routes = topology.routes
    logins = [read_repartitioned(record.value) for record in records]
    users = state.count([(record.offset, login[DEVICE_ID], login[USER_ID])
                         for record, login in zip(records, logins, strict=True)])
    batch_time = BatchTime(now_s)
    outputs, levels = result.outputs, []
    for login, users_on_device in zip(logins, users, strict=True):
        output, level = processed_record(routes, login, users_on_device, batch_time)
        outputs.append(output)
        levels.append(level)
    outputs.extend(changelog.device_changes(state, routes.internal.device_changelog))
    result.risk_levels.update(levels)
    result.published = len(records)
    return result


class LocalState:
    """Every partition's state in one object, for ``process_batch``: what one process owning every
    partition holds."""

    def __init__(self, max_tracked_keys: int = DEFAULT_MAX_TRACKED_KEYS) -> None:
        self.max_tracked_keys = max_tracked_keys
        self.totals = ProcessTotals()
        self.logins: dict[int, LoginState] = {}
        self.devices: dict[int, DeviceState] = {}

    def login(self, partition: int) -> LoginState:
        if partition not in self.logins:
            self.logins[partition] = LoginState(partition, self.max_tracked_keys)
        return self.logins[partition]

    def device(self, partition: int) -> DeviceState:
        if partition not in self.devices:
            self.devices[partition] = DeviceState(partition, self.max_tracked_keys)
        return self.devices[partition]

    def count(self, state: LoginState, batch) -> list[Counted]:
        return state.count(batch, self.totals)

    def summary(self) -> dict:
        return summarize(self.totals, self.logins.values(), self.devices.values())

    def counts(self) -> dict:
        return detailed_counts(self.totals, self.logins.values(), self.devices.values())


def process_batch(records: Sequence[RawRecord], state: LocalState, topology: Topology,
                  now_s: float, schemas: Schemas = None) -> BatchResult:
    """Both steps over a batch (of any partitions), the repartition done in memory: the outputs
    are the dead letters, filtered and processed records; changelog records are left out."""
    result = BatchResult()  # each step's counts are added in
    internal = topology.routes.internal
    by_partition: dict[int, list[RawRecord]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)
    repartitioned: dict[int, list[RawRecord]] = {}
    for partition, batch in by_partition.items():
        step = process_logins(batch, state.login(partition), state.count, topology, now_s, schemas)
        for output in step.outputs:
            if output.topic == internal.repartition:
                into = repartitioned.setdefault(output.partition, [])
                into.append(RawRecord(output.topic, output.partition, len(into), 0, output.key, output.value))
            elif output.topic != internal.changelog:
                result.outputs.append(output)
        result.absorb(step, outputs=False)
    for partition, batch in repartitioned.items():
        step = process_devices(batch, state.device(partition), topology, now_s)
        result.outputs.extend(o for o in step.outputs if o.topic != internal.device_changelog)
        result.absorb(step, outputs=False)
    return result


