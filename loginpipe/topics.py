"""Every topic the pipeline uses, in one list, and the command that creates them
(create_kafka_topic.py). The admin operations themselves are in ``kafka/admin.py``."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loginpipe.cli import EnvArgumentParser

INPUT_TOPIC = "user-login"
OUTPUT_TOPIC = "processed-user-login"
DLQ_TOPIC = "user-login-dlq"
FILTERED_TOPIC = "user-login-filtered"
SUMMARY_TOPIC = "user-login-summary"
METRICS_TOPIC = "pipeline-metrics"
DEFAULT_PARTITIONS = 4
DEFAULT_GROUP = "user-login-group"
REPARTITION_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    purpose: str
    partitions: int | None = None  # None: the --partitions value
    configs: dict[str, str] = field(default_factory=dict)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(INPUT_TOPIC, "raw login events, keyed by user_id"),
    # 'producer' keeps the pipeline's snappy batches as they were written.
    TopicSpec(OUTPUT_TOPIC, "validated, normalized, enriched events",
              configs={"compression.type": "producer"}),
    TopicSpec(DLQ_TOPIC, "rejected input: original bytes (privacy mode: encrypted), reason in headers",
              configs={"retention.ms": str(14 * 24 * 3600 * 1000)}),
    TopicSpec(FILTERED_TOPIC, "valid events filtered out (--filtered-topic), reason in a header",
              configs={"retention.ms": str(7 * 24 * 3600 * 1000)}),
    # Compacted: only the latest snapshot per pipeline instance matters. Segments roll every
    # 10 minutes so compaction keeps up (the active segment is never compacted); instances
    # silent for a week are deleted. One partition keeps every snapshot in order for a reader.
    TopicSpec(SUMMARY_TOPIC, "aggregation snapshots keyed by pipeline instance, and each partition's "
              "state keyed by partition (latest wins)",
              partitions=1, configs={"cleanup.policy": "compact,delete", "segment.ms": "600000",
                                     "min.cleanable.dirty.ratio": "0.1", "min.compaction.lag.ms": "60000",
                                     "retention.ms": str(7 * 24 * 3600 * 1000)}),
    TopicSpec(METRICS_TOPIC, "the pipeline's own health every few seconds",
              partitions=1, configs={"retention.ms": str(24 * 3600 * 1000)}),
)


@dataclass(frozen=True)
class InternalTopics:
    """The topics a consumer group keeps for itself, named from the group id so that two
    pipelines never share one; created by the consumer at start (and by this script for the
    default group) with the input's partition count."""

    changelog: str  # a LoginState per input partition (compacted)
    device_changelog: str  # a DeviceState per repartition partition (compacted)
    repartition: str  # counted logins keyed by device_id, read by the device step

    @classmethod
    def of(cls, group_id: str) -> InternalTopics:
        prefix = _topic_safe(group_id)
        return cls(f"{prefix}-aggregates-changelog", f"{prefix}-devices-changelog",
                   f"{prefix}-by-device-repartition")

    def specs(self) -> tuple[TopicSpec, ...]:
        compacted = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                     "segment.ms": str(3600 * 1000)}
        return (
            TopicSpec(self.changelog, "the login step's state (counts, IPs per user), per input partition",
                      configs=compacted),
            TopicSpec(self.device_changelog, "the device step's state (users per device)",
                      configs=compacted),
            # Read within seconds normally; kept a week so that a pipeline stopped for days loses
            # nothing it had not yet read (README, State).
            TopicSpec(self.repartition, "counted logins keyed by device_id, for the device step",
                      configs={"retention.ms": str(REPARTITION_RETENTION_MS),
                               "compression.type": "producer"}),
        )


def _topic_safe(group_id: str) -> str:
    """A group id as a topic-name prefix: legal characters only; when some had to be replaced, a
    short digest of the original keeps two such groups apart."""
    safe = re.sub(r"[^a-zA-Z0-9._-]", "_", group_id)[:180]
    if safe != group_id:
        safe += "-" + hashlib.sha256(group_id.encode()).hexdigest()[:8]
    return safe


def build_parser() -> EnvArgumentParser:
    # Imported here: the core imports this module for the topic names, and needs no CLI.
    from loginpipe.cli import EnvArgumentParser, add_bootstrap_argument, positive_int

    names = ", ".join(spec.name for spec in TOPICS)
    parser = EnvArgumentParser(
        prog="create_kafka_topic.py",
        description=f"Create every topic the pipeline uses: {names}, and the default group's own "
                    f"({DEFAULT_GROUP}-...; the consumer creates those itself for any group).")
    add_bootstrap_argument(parser)
    parser.add_env_argument("--partitions", env="PARTITIONS", type=positive_int,
                            default=DEFAULT_PARTITIONS, help="partitions per topic")
    parser.add_env_argument("--replication-factor", env="REPLICATION_FACTOR", type=positive_int,
                            default=1, help="replicas per partition")
    return parser


def main(argv: list[str] | None = None) -> int:
    from loginpipe.cli import connection_from_args
    from loginpipe.kafka.admin import ensure_topics

    args = build_parser().parse_args(argv)
    specs = TOPICS + InternalTopics.of(DEFAULT_GROUP).specs()
    results = ensure_topics(connection_from_args(args), specs, args.partitions, args.replication_factor)
    for result in results:
        print(result.describe())
    return 0 if all(r.ok for r in results) else 2
