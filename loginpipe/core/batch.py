"""The pure core: a batch of raw records and the current aggregations in, output records and
counts out. Knows nothing about Kafka clients, threads or time sources.

    parse/validate -> filter -> aggregate -> enrich + risk -> route
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from loginpipe.core.enrich import normalize_device_type
from loginpipe.core.events import MAX_FUTURE_SKEW_S, LoginEvent, RawRecord, parse_event
from loginpipe.core.filters import FilterRules, filter_reason
from loginpipe.core.records import (
    BatchTime,
    OutputRecord,
    Routes,
    dead_letter,
    filtered_record,
    processed_record,
)
from loginpipe.core.state import Aggregating


@dataclass(frozen=True)
class Topology:
    """What the core does with each record: which events it keeps, where records go, and how
    far ahead of our clock an event time may be."""

    routes: Routes = field(default_factory=Routes)
    filters: FilterRules = field(default_factory=FilterRules)
    max_future_skew_s: float = MAX_FUTURE_SKEW_S


@dataclass
class BatchResult:
    """What one batch produced. consumed == processed + filtered + dead_lettered, always."""

    outputs: list[OutputRecord] = field(default_factory=list)
    consumed: int = 0
    processed: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    reasons: Counter = field(default_factory=Counter)  # filter and dead-letter reasons
    risk_levels: Counter = field(default_factory=Counter)  # of the processed events


def process_batch(records: Sequence[RawRecord], state: Aggregating, topology: Topology,
                  now_s: float) -> BatchResult:
    """Run one batch through every step; ``state`` is updated once for the whole batch."""
    result = BatchResult(consumed=len(records))
    routes, rules, skew = topology.routes, topology.filters, topology.max_future_skew_s
    forward_filtered = routes.filtered_topic is not None
    outputs, reasons = result.outputs, result.reasons
    kept: list[tuple[RawRecord, LoginEvent, str]] = []
    for record in records:
        event = parse_event(record.value, now_s, skew)
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
    snapshots = state.apply([(event, device_type) for _, event, device_type in kept])
    batch_time = BatchTime(now_s)
    levels = []
    for (record, event, device_type), snapshot in zip(kept, snapshots, strict=True):
        output, level = processed_record(routes, record, event, device_type, snapshot, batch_time)
        outputs.append(output)
        levels.append(level)
    result.risk_levels.update(levels)
    result.processed = len(kept)
    result.filtered = result.consumed - result.processed - result.dead_lettered
    return result
