"""The pure core: a batch of raw records and the current aggregations in, output records and
counts out. Knows nothing about Kafka clients, threads or time sources.

    parse/validate -> filter -> enrich -> aggregate -> route
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from loginpipe.enrich import normalize_device_type
from loginpipe.events import MAX_FUTURE_SKEW_S, LoginEvent, RawRecord, parse_event
from loginpipe.filters import filter_reason
from loginpipe.route import OutputRecord, Routes, dead_letter, processed_record
from loginpipe.state import Aggregates


@dataclass
class BatchResult:
    """What one batch produced. consumed == processed + filtered + dead_lettered, always."""

    outputs: list[OutputRecord] = field(default_factory=list)
    consumed: int = 0
    processed: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    reasons: Counter = field(default_factory=Counter)  # filter and dead-letter reasons


def process_batch(records: Sequence[RawRecord], state: Aggregates, routes: Routes, now_s: float,
                  max_future_skew_s: float = MAX_FUTURE_SKEW_S) -> BatchResult:
    """Run one batch through every step; ``state`` is updated once for the whole batch."""
    result = BatchResult(consumed=len(records))
    outputs = result.outputs
    kept: list[tuple[RawRecord, LoginEvent, str]] = []
    for record in records:
        event = parse_event(record.value, now_s, max_future_skew_s)
        if not isinstance(event, LoginEvent):
            outputs.append(dead_letter(routes, record, event))
            result.reasons[event.reason] += 1
            continue
        device_type = normalize_device_type(event.device_type)
        reason = filter_reason(device_type)
        if reason is not None:
            result.reasons[reason] += 1
            continue
        kept.append((record, event, device_type))
    snapshots = state.apply([(event, device_type) for _, event, device_type in kept])
    for (record, event, device_type), snapshot in zip(kept, snapshots, strict=True):
        outputs.append(processed_record(routes, record, event, device_type, snapshot))
    result.processed = len(kept)
    result.dead_lettered = len(outputs) - len(kept)
    result.filtered = result.consumed - result.processed - result.dead_lettered
    return result
