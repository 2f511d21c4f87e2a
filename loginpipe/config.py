"""The consumer pipeline's settings: ``PipelineConfig``, its parser (every flag with an
environment-variable twin) and the privacy secret read from the environment. Built once from the
parsed flags, then passed down; nothing global holds them. The shared command-line plumbing
(the env-aware parser, converters, ``run_cli``) is in ``cli.py``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from loginpipe.cli import (
    EnvArgumentParser,
    add_bootstrap_argument,
    add_registry_argument,
    choice,
    connection_from_args,
    flag,
    non_negative_float,
    optional_topic,
    port_number,
    positive_float,
    positive_int,
    version_list,
)
from loginpipe.core.events import MAX_FUTURE_SKEW_S
from loginpipe.core.privacy import MIN_SECRET_BYTES, SECRET_ENV, Privacy
from loginpipe.errors import UserError
from loginpipe.kafka.backends import CLIENTS, KAFKA_PYTHON
from loginpipe.kafka.settings import Connection
from loginpipe.observe.terminal import VIEWS
from loginpipe.state.stores import DEFAULT_MAX_TRACKED_KEYS
from loginpipe.topics import (
    DEFAULT_GROUP,
    DLQ_TOPIC,
    FILTERED_TOPIC,
    INPUT_TOPIC,
    METRICS_TOPIC,
    OUTPUT_TOPIC,
    SUMMARY_TOPIC,
)

AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"
OUTPUT_FORMATS = ("json", "avro")
# Outputs of a transaction become readable when it commits, twice on their way (login step, then
# device step): measured p99 346 ms at 100 ms, 2.2 s at 1000 ms, at the same throughput (README).
EXACTLY_ONCE_COMMIT_INTERVAL_MS = 100


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of the consumer pipeline (create_kafka_consumer.py)."""

    # where the cluster is and how to connect (TLS, SASL, offset reset); a plain "host:port" string
    # is taken as a PLAINTEXT cluster there
    connection: Connection | str = field(default_factory=Connection)
    input_topic: str = INPUT_TOPIC
    output_topic: str = OUTPUT_TOPIC
    dlq_topic: str = DLQ_TOPIC
    group_id: str = DEFAULT_GROUP
    threads: int = 1  # fastest on this machine: see README "Threads and processes"
    processes: int = 1  # > 1: this command starts that many processes in the group
    stats_every: int = 100
    stats_interval_s: float = 0.0
    view: str = "auto"  # the stats: "live" block on a terminal, or "lines"; "auto": live on a terminal
    show_messages: bool = False
    stop_when_idle_s: float = 0.0
    max_poll_records: int = 2000
    commit_every_records: int = 10_000
    commit_interval_ms: int = 1000
    # Each event waits it twice (two hops); 1 rather than 5 took the latency run's p50 from 21 to
    # 15 ms on kafka-python, and 300k-event drains were the same speed at 1 and 5 on both clients
    # (a drain's batches fill before the linger is up).
    linger_ms: int = 1
    batch_size: int = 256 * 1024
    max_tracked_keys: int = DEFAULT_MAX_TRACKED_KEYS
    max_future_skew_s: float = MAX_FUTURE_SKEW_S
    quiet: bool = False
    privacy: Privacy | None = field(default=None, repr=False)  # None: privacy mode off
    max_age_s: float | None = None
    app_versions: frozenset[str] | None = None
    filtered_topic: str | None = None
    summary_topic: str | None = SUMMARY_TOPIC
    summary_every: int = 10_000
    summary_interval_s: float = 5.0
    metrics_topic: str | None = METRICS_TOPIC
    metrics_interval_s: float = 5.0
    metrics_port: int | None = None  # None: no Prometheus endpoint
    metrics_bind: str = "127.0.0.1"  # this machine only, unless asked (compose opens it on purpose)
    # A batch not acknowledged this long after it was queued fails; the producer is then replaced.
    delivery_timeout_ms: int = 30_000
    shutdown_timeout_s: float = 20.0  # Ctrl+C/SIGTERM: flush at most this long, then exit 1
    max_in_flight: int = 20_000  # unacknowledged outputs per worker before it pauses its input
    max_in_flight_mib: int = 32  # or this many MiB of them
    group_instance_id: str | None = None  # static membership: restarts in place skip a rebalance
    # exactly-once: each worker writes its outputs, state changes and input offsets in one Kafka
    # transaction per checkpoint (README, "Processing guarantees")
    processing_guarantee: str = AT_LEAST_ONCE
    client: str = KAFKA_PYTHON  # the Kafka client library (kafka.backends): kafka-python or confluent
    # A Confluent-compatible schema registry: the contracts are registered there on start and
    # framed Avro input is read with it. None: JSON only (framed input is dead-lettered).
    schema_registry_url: str | None = None
    output_format: str = "json"  # processed records as "json" or registry-framed "avro"

    def __post_init__(self) -> None:
        object.__setattr__(self, "connection", Connection.of(self.connection))
        if self.output_format == "avro" and not self.schema_registry_url:
            raise UserError("--output-format avro needs --schema-registry-url (the local registry: "
                            "python -m loginpipe.registry start, then "
                            "--schema-registry-url http://127.0.0.1:18081/apis/ccompat/v7)")

    @property
    def bootstrap_servers(self) -> str:
        return self.connection.bootstrap_servers

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == EXACTLY_ONCE


def build_pipeline_parser() -> EnvArgumentParser:
    defaults = PipelineConfig()
    parser = EnvArgumentParser(
        prog="create_kafka_consumer.py",
        description="Consume login events, validate, keep mobile logins, normalize, aggregate, and "
                    "publish enriched records (snappy batches); bad input goes to a dead-letter topic.",
        epilog="Ctrl+C or SIGTERM stops cleanly (finish the batch, flush, commit); a second Ctrl+C "
               "exits at once.")
    add_bootstrap_argument(parser)
    add = parser.add_env_argument
    add("--input-topic", env="INPUT_TOPIC", default=defaults.input_topic, help="topic to consume")
    add("--output-topic", env="OUTPUT_TOPIC", default=defaults.output_topic, help="enriched records")
    add("--dlq-topic", env="DLQ_TOPIC", default=defaults.dlq_topic, help="dead letters")
    add("--group-id", env="GROUP_ID", default=defaults.group_id, help="consumer group")
    add("--threads", env="THREADS", type=positive_int, default=defaults.threads,
        help="worker threads, each with its own consumer in the group")
    add("--processes", env="PROCESSES", type=positive_int, default=defaults.processes,
        help="processes in the group, each with its threads (Python threads share one core; "
             "processes add cores); Ctrl+C stops them all, and the group's summary is printed")
    add("--stats-every", env="STATS_EVERY", type=positive_int, default=defaults.stats_every,
        help="update the status block, or print a stats line, every N messages")
    add("--stats-interval", env="STATS_INTERVAL", type=non_negative_float, default=defaults.stats_interval_s,
        help="every S seconds instead (0: use --stats-every)")
    add("--view", env="STATS_VIEW", type=choice(VIEWS), metavar="{" + ",".join(VIEWS) + "}",
        default=defaults.view,
        help="live: a status block redrawn in place (needs a terminal); lines: one compact timestamped "
             "line each time (for pipes, files, Docker logs); auto: live when stdout is a terminal")
    add("--show-messages", env="SHOW_MESSAGES", type=flag, default=False, nargs="?", const=True,
        help="print every processed record")
    add("--stop-when-idle", env="STOP_WHEN_IDLE", type=non_negative_float, default=0.0,
        help="drain and exit once no record arrived for S seconds (0: run until stopped)")
    add("--max-poll-records", env="MAX_POLL_RECORDS", type=positive_int,
        default=defaults.max_poll_records, help="records per batch at most")
    add("--commit-every", env="COMMIT_EVERY", type=positive_int, default=defaults.commit_every_records,
        help="checkpoint after this many records")
    add("--commit-interval-ms", env="COMMIT_INTERVAL_MS", type=positive_int, default=None,
        help=f"or after this many milliseconds (default {defaults.commit_interval_ms}; "
             f"{EXACTLY_ONCE_COMMIT_INTERVAL_MS} with exactly-once, where it bounds end-to-end latency)")
    add("--linger-ms", env="LINGER_MS", type=int, default=defaults.linger_ms,
        help="producer linger before sending a batch")
    add("--batch-size", env="BATCH_SIZE", type=positive_int, default=defaults.batch_size,
        help="producer batch size in bytes")
    add("--max-tracked-keys", env="MAX_TRACKED_KEYS", type=positive_int,
        default=defaults.max_tracked_keys,
        help="users (and devices) remembered for distinct counts, across all partitions (each "
             "partition keeps its share; the least recently seen are forgotten first)")
    add("--delivery-timeout-ms", env="DELIVERY_TIMEOUT_MS", type=positive_int,
        default=defaults.delivery_timeout_ms,
        help="an output not acknowledged this long fails; the producer is replaced and it is sent again")
    add("--shutdown-timeout", env="SHUTDOWN_TIMEOUT", type=positive_float,
        default=defaults.shutdown_timeout_s,
        help="on Ctrl+C/SIGTERM, wait at most S seconds for acknowledgements, then exit 1 "
             "(what is unacknowledged stays uncommitted)")
    add("--max-in-flight", env="MAX_IN_FLIGHT", type=positive_int, default=defaults.max_in_flight,
        help="unacknowledged outputs per worker before it pauses reading (memory bound)")
    add("--max-in-flight-mib", env="MAX_IN_FLIGHT_MIB", type=positive_int,
        default=defaults.max_in_flight_mib, help="or MiB of them")
    add("--group-instance-id", env="GROUP_INSTANCE_ID", default=None,
        help="static group membership: a stable name per process (worker i adds '-i'); a restart "
             "in place gets its partitions back at once, but a stop leaves them idle for the session "
             "timeout (10 s); unset: dynamic membership")
    add("--processing-guarantee", env="PROCESSING_GUARANTEE", type=processing_guarantee,
        metavar="{at-least-once,exactly-once}", default=defaults.processing_guarantee,
        help="at-least-once: a crash may repeat outputs (the faster); exactly-once: outputs, state "
             "changes and offsets commit together in Kafka transactions (read outputs with "
             "isolation.level=read_committed)")
    add("--client", env="KAFKA_CLIENT", type=choice(CLIENTS), metavar="{" + ",".join(CLIENTS) + "}",
        default=defaults.client,
        help="the Kafka client library: kafka-python (always installed) or confluent (librdkafka, "
             "faster; pip install 'loginpipe[confluent]')")
    parser.add_argument("--quiet", action="store_true",
                        help="no status block, stats lines or start-up lines: only warnings, errors and the "
                             "final summary")

    add("--privacy", env="PRIVACY", type=flag, default=False, nargs="?", const=True,
        help=f"mask IPs and pseudonymize device ids in every output (key from ${SECRET_ENV})")
    add("--max-age", env="MAX_AGE", type=positive_float, default=None,
        help="filter events older than this many seconds (reason 'stale'); unset: any age")
    add("--app-versions", env="APP_VERSIONS", type=version_list, default=None,
        help="keep only these app versions, e.g. 2.3.0,2.4.0 (reason 'app_version'); unset: all")
    add("--filtered-topic", env="FILTERED_TOPIC", type=optional_topic, default=None, nargs="?",
        const=FILTERED_TOPIC, help=f"forward filtered events to this topic ({FILTERED_TOPIC} when "
                                   "given without a name); unset: they are only counted")
    add("--summary-topic", env="SUMMARY_TOPIC", type=optional_topic, default=defaults.summary_topic,
        help="publish aggregation snapshots here ('none': off)")
    add("--summary-every", env="SUMMARY_EVERY", type=positive_int, default=defaults.summary_every,
        help="publish a snapshot every N processed events")
    add("--summary-interval", env="SUMMARY_INTERVAL", type=positive_float,
        default=defaults.summary_interval_s, help="or every S seconds, whichever comes first")
    add("--metrics-topic", env="METRICS_TOPIC", type=optional_topic, default=defaults.metrics_topic,
        help="publish the pipeline's health here ('none': off)")
    add("--metrics-interval", env="METRICS_INTERVAL", type=positive_float,
        default=defaults.metrics_interval_s, help="every S seconds")
    add("--metrics-port", env="METRICS_PORT", type=port_number, default=None,
        help="serve Prometheus metrics at http://BIND:PORT/metrics (unset: off)")
    add("--metrics-bind", env="METRICS_BIND", default=defaults.metrics_bind,
        help="the address the metrics endpoint listens on (0.0.0.0: every interface)")
    add_registry_argument(parser, "register the input and output contracts on start and read "
                                  "framed Avro input")
    add("--output-format", env="OUTPUT_FORMAT", type=choice(OUTPUT_FORMATS),
        metavar="{" + ",".join(OUTPUT_FORMATS) + "}", default=defaults.output_format,
        help="processed records as JSON, or as Avro framed with the id the registry gave "
             "processed-login.v1.avsc (Confluent wire format)")
    return parser


def default_commit_interval(guarantee: str) -> int:
    return EXACTLY_ONCE_COMMIT_INTERVAL_MS if guarantee == EXACTLY_ONCE else PipelineConfig.commit_interval_ms


def processing_guarantee(text: str) -> str:
    if text not in (AT_LEAST_ONCE, EXACTLY_ONCE):
        raise ValueError(text)
    return text


def pipeline_config(argv: list[str] | None = None) -> PipelineConfig:
    """Build the pipeline's settings from flags and environment."""
    args = build_pipeline_parser().parse_args(argv)
    privacy = privacy_from_environment() if args.privacy else None
    return PipelineConfig(
        connection=connection_from_args(args), input_topic=args.input_topic,
        output_topic=args.output_topic, dlq_topic=args.dlq_topic, group_id=args.group_id,
        threads=args.threads, processes=args.processes, stats_every=args.stats_every,
        stats_interval_s=args.stats_interval, view=args.view,
        show_messages=bool(args.show_messages), stop_when_idle_s=args.stop_when_idle,
        max_poll_records=args.max_poll_records, commit_every_records=args.commit_every,
        commit_interval_ms=args.commit_interval_ms or default_commit_interval(args.processing_guarantee),
        linger_ms=args.linger_ms,
        batch_size=args.batch_size, max_tracked_keys=args.max_tracked_keys, quiet=args.quiet,
        privacy=privacy, max_age_s=args.max_age, app_versions=args.app_versions,
        filtered_topic=args.filtered_topic, summary_topic=args.summary_topic,
        summary_every=args.summary_every, summary_interval_s=args.summary_interval,
        metrics_topic=args.metrics_topic, metrics_interval_s=args.metrics_interval,
        metrics_port=args.metrics_port, metrics_bind=args.metrics_bind,
        delivery_timeout_ms=args.delivery_timeout_ms,
        shutdown_timeout_s=args.shutdown_timeout, max_in_flight=args.max_in_flight,
        max_in_flight_mib=args.max_in_flight_mib, group_instance_id=args.group_instance_id or None,
        processing_guarantee=args.processing_guarantee, client=args.client,
        schema_registry_url=args.schema_registry_url or None, output_format=args.output_format,
    )


def privacy_from_environment(environ: Mapping[str, str] | None = None,
                             needed_by: str = "--privacy") -> Privacy:
    """The privacy key from $PRIVACY_SECRET; a UserError when it is missing or short."""
    secret = (os.environ if environ is None else environ).get(SECRET_ENV, "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        state = "is not set" if not secret else f"has fewer than {MIN_SECRET_BYTES} bytes"
        raise UserError(f"{needed_by} needs a secret key: ${SECRET_ENV} {state} (e.g. export "
                        f"{SECRET_ENV}=$(python3 -c 'import secrets; print(secrets.token_hex(32))'))")
    return Privacy(secret.encode())
