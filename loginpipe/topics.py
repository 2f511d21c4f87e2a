"""Every topic the pipeline uses, in one list, and the command that creates them
(create_kafka_topic.py, ``loginpipe topics``), under the default names or the user's own. The
admin operations themselves are in ``kafka/admin.py``."""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from loginpipe.kafka.settings import DEFAULT_BOOTSTRAP

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


# The topic flags of the consumer, with the names they default to here, in command-line order.
TOPIC_FLAGS: dict[str, str] = {
    "input_topic": INPUT_TOPIC, "output_topic": OUTPUT_TOPIC, "dlq_topic": DLQ_TOPIC,
    "filtered_topic": FILTERED_TOPIC, "summary_topic": SUMMARY_TOPIC, "metrics_topic": METRICS_TOPIC,
}
PARTITION_MISMATCH_EXIT = 3  # an existing topic has fewer partitions than asked (documented in --help)


def plural(count: int, word: str) -> str:
    """``1 partition``, ``4 partitions``: a count in a message, with its noun agreeing."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def pipeline_topics(names: Mapping[str, str | None] | None = None) -> tuple[TopicSpec, ...]:
    """``TOPICS`` with the given names ({"input_topic": "x", ...}, as ``TOPIC_FLAGS``): each keeps its
    purpose, partitions and configs; a name that is None is left out (that output is off)."""
    names = names or {}
    renamed = []
    for flag_name, spec in zip(TOPIC_FLAGS, TOPICS, strict=True):
        name = names.get(flag_name, spec.name)
        if name is not None:
            renamed.append(replace(spec, name=name))
    return tuple(renamed)


def create_command(bootstrap_servers: str | None = None, **names: str | None) -> str:
    """The command that creates the pipeline's topics under these names (keywords of
    ``TOPIC_FLAGS``; None or a default name adds no flag), for hints: "create it with: ...".
    Named as the user ran this program: ``loginpipe topics`` under the dispatcher, else the script."""
    from loginpipe import cli

    invoked = cli._invoked_as
    words = [*invoked.split()[:-1], "topics"] if invoked else ["python", "create_kafka_topic.py"]
    if bootstrap_servers and bootstrap_servers != DEFAULT_BOOTSTRAP:
        words += ["--bootstrap-servers", bootstrap_servers]
    for flag_name, name in names.items():
        if flag_name not in TOPIC_FLAGS:
            raise TypeError(f"unknown topic flag {flag_name}")
        if name is not None and name != TOPIC_FLAGS[flag_name]:
            words += ["--" + flag_name.replace("_", "-"), name]
    return shlex.join(words)


def missing_topics_message(missing: Sequence[str], settings: Any) -> str:
    """One line for topics that do not exist: which, where, and the command that creates them with
    the names ``settings`` (a ``PipelineConfig``, or anything with its topic and bootstrap
    attributes) uses."""
    names = {flag_name: getattr(settings, flag_name, None) for flag_name in TOPIC_FLAGS}
    command = create_command(getattr(settings, "bootstrap_servers", None), **names)
    which = f"topic {missing[0]} does not" if len(missing) == 1 else f"topics {', '.join(missing)} do not"
    it = "it" if len(missing) == 1 else "them"
    return f"{which} exist at {getattr(settings, 'bootstrap_servers', DEFAULT_BOOTSTRAP)}; " \
           f"create {it} with: {command}"


def build_parser() -> EnvArgumentParser:
    # Imported here: the core imports this module for the topic names, and needs no CLI.
    from loginpipe.cli import EnvArgumentParser, add_bootstrap_argument, optional_topic, positive_int

    parser = EnvArgumentParser(
        prog="create_kafka_topic.py",
        description="Create the topics the pipeline uses, under the names the consumer is given (the "
                    "same flags and environment variables as create_kafka_consumer.py), and the "
                    "group's own topics (GROUP-aggregates-changelog, GROUP-devices-changelog, "
                    "GROUP-by-device-repartition; the consumer also creates those itself). Topics "
                    "that exist are left as they are.",
        epilog=f"Exit status: 0 when every topic exists with at least the partitions asked; "
               f"{PARTITION_MISMATCH_EXIT} when an existing topic has fewer (one line each on stderr: "
               f"delete it, or add partitions); 1 when the broker cannot be reached or creation "
               f"fails; 2 for a usage error.")
    add_bootstrap_argument(parser)
    group = parser.add_argument_group("topic names", "'none' skips an optional topic")
    add = parser.add_env_argument
    add("--input-topic", env="INPUT_TOPIC", default=INPUT_TOPIC, help="raw login events", group=group)
    add("--output-topic", env="OUTPUT_TOPIC", default=OUTPUT_TOPIC, help="enriched records", group=group)
    add("--dlq-topic", env="DLQ_TOPIC", default=DLQ_TOPIC, help="dead letters", group=group)
    add("--filtered-topic", env="FILTERED_TOPIC", type=optional_topic, default=FILTERED_TOPIC,
        help="filtered events (the consumer's --filtered-topic)", group=group)
    add("--summary-topic", env="SUMMARY_TOPIC", type=optional_topic, default=SUMMARY_TOPIC,
        help="aggregation snapshots", group=group)
    add("--metrics-topic", env="METRICS_TOPIC", type=optional_topic, default=METRICS_TOPIC,
        help="the pipeline's health", group=group)
    add("--group-id", env="GROUP_ID", default=DEFAULT_GROUP, help="the consumer group whose own "
        "topics are created too ('none': not those)", type=optional_topic, group=group)
    parser.add_env_argument("--partitions", env="PARTITIONS", type=positive_int,
                            default=DEFAULT_PARTITIONS, help="partitions per topic (the summary and "
                            "metrics topics always have 1)")
    parser.add_env_argument("--replication-factor", env="REPLICATION_FACTOR", type=positive_int,
                            default=1, help="replicas per partition")
    return parser


def main(argv: list[str] | None = None) -> int:
    from loginpipe.cli import connection_from_args
    from loginpipe.kafka.admin import ensure_topics

    args = build_parser().parse_args(argv)
    specs = pipeline_topics({flag_name: getattr(args, flag_name) for flag_name in TOPIC_FLAGS})
    if args.group_id is not None:
        specs += InternalTopics.of(args.group_id).specs()
    results = ensure_topics(connection_from_args(args), specs, args.partitions, args.replication_factor)
    for result in results:
        if result.ok:
            print(result.describe(), flush=True)
        else:
            print(f"error: {result.describe()}", file=sys.stderr, flush=True)
    return 0 if all(r.ok for r in results) else PARTITION_MISMATCH_EXIT
