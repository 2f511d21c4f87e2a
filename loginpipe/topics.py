"""Every topic the pipeline uses, in one list, and an idempotent way to create them."""

from __future__ import annotations

from dataclasses import dataclass, field

from loginpipe.errors import UserError

INPUT_TOPIC = "user-login"
OUTPUT_TOPIC = "processed-user-login"
DLQ_TOPIC = "user-login-dlq"
FILTERED_TOPIC = "user-login-filtered"
SUMMARY_TOPIC = "user-login-summary"
METRICS_TOPIC = "pipeline-metrics"
DEFAULT_PARTITIONS = 4


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
    TopicSpec(SUMMARY_TOPIC, "aggregation snapshots, keyed by pipeline instance (latest wins)",
              partitions=1, configs={"cleanup.policy": "compact,delete", "segment.ms": "600000",
                                     "min.cleanable.dirty.ratio": "0.1", "min.compaction.lag.ms": "60000",
                                     "retention.ms": str(7 * 24 * 3600 * 1000)}),
    TopicSpec(METRICS_TOPIC, "the pipeline's own health every few seconds",
              partitions=1, configs={"retention.ms": str(24 * 3600 * 1000)}),
)


@dataclass(frozen=True)
class TopicResult:
    name: str
    status: str  # "created", "exists" or "too-few-partitions"
    partitions: int
    wanted: int

    @property
    def ok(self) -> bool:
        return self.status != "too-few-partitions"

    def describe(self) -> str:
        if self.status == "too-few-partitions":
            return (f"{self.name}: exists with {self.partitions} partitions, fewer than the "
                    f"{self.wanted} asked (delete it, or add partitions with kafka-topics --alter)")
        return f"{self.name}: {self.status} ({self.partitions} partitions)"


def admin_client(bootstrap_servers: str, timeout_s: float = 8.0):
    """A KafkaAdminClient, or a UserError naming the broker when none answers in ``timeout_s``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=1000,
            client_id="loginpipe-admin",
        )
    except (KafkaError, OSError) as exc:
        raise UserError(f"cannot reach a Kafka broker at {bootstrap_servers} "
                        f"({type(exc).__name__}); is it running? (make kafka-start)") from None


def ensure_topics(bootstrap_servers: str, specs: tuple[TopicSpec, ...] | list[TopicSpec] = TOPICS,
                  partitions: int = DEFAULT_PARTITIONS, replication_factor: int = 1) -> list[TopicResult]:
    """Create the topics that are missing; report the ones that exist."""
    from kafka.errors import KafkaError

    admin = admin_client(bootstrap_servers)
    try:
        existing = _partition_counts(admin, [s.name for s in specs])
        missing = {
            s.name: {"num_partitions": s.partitions or partitions,
                     "replication_factor": replication_factor, "configs": s.configs}
            for s in specs if s.name not in existing
        }
        if missing:
            admin.create_topics(missing, timeout_ms=10_000, wait_for_metadata=True)
    except KafkaError as exc:
        raise UserError(f"topic creation failed: {exc}") from None
    finally:
        admin.close()
    results = []
    for spec in specs:
        wanted = spec.partitions or partitions
        if spec.name in missing:
            results.append(TopicResult(spec.name, "created", wanted, wanted))
        else:
            have = existing[spec.name]
            status = "exists" if have >= wanted else "too-few-partitions"
            results.append(TopicResult(spec.name, status, have, wanted))
    return results


def _partition_counts(admin, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    counts = {}
    for topic in admin.describe_topics(names):
        if topic.get("error_code", 0) == 0:
            counts[topic["name"]] = len(topic["partitions"])
    return counts


def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    """Delete topics (used by tests and the benchmark to clean up after themselves)."""
    admin = admin_client(bootstrap_servers)
    try:
        admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)
    finally:
        admin.close()


def build_parser():
    from loginpipe.config import EnvArgumentParser, add_bootstrap_argument, positive_int

    names = ", ".join(spec.name for spec in TOPICS)
    parser = EnvArgumentParser(prog="create_kafka_topic.py",
                               description=f"Create every topic the pipeline uses: {names}.")
    add_bootstrap_argument(parser)
    parser.add_env_argument("--partitions", env="PARTITIONS", type=positive_int,
                            default=DEFAULT_PARTITIONS, help="partitions per topic")
    parser.add_env_argument("--replication-factor", env="REPLICATION_FACTOR", type=positive_int,
                            default=1, help="replicas per partition")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = ensure_topics(args.bootstrap_servers, TOPICS, args.partitions, args.replication_factor)
    for result in results:
        print(result.describe())
    return 0 if all(r.ok for r in results) else 2
