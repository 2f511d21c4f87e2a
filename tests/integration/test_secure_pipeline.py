"""Issue 15 end to end on a secured cluster (the session's ``secure_kafka`` broker): the whole
pipeline over SASL_SSL (SCRAM-SHA-512) and over mutual TLS, every tool taking the same connection
flags; what a wrong password, a PLAINTEXT client on the TLS port, an untrusted CA and a missing
WRITE permission look like (one line, no traceback, within 30 s); and no password anywhere: not
in any command's output, stats line or help, nor in any record the pipeline wrote.

Every command runs as a real process with only the connection settings the test gives it (the
caller's BOOTSTRAP_SERVERS, CLIENT_CONFIG, ... are removed), and every output is kept for the
password check. Names start with ``test-``: the ``loginpipe`` user's ACLs cover that prefix.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from loginpipe.dashboard.feed import DashboardSettings, Feed
from loginpipe.dashboard.view import LIVE
from loginpipe.kafka.settings import Connection, build_connection, kafka_options
from loginpipe.local.generator import GOOD, EventGenerator
from loginpipe.local.secrets import (
    NOWRITE_USER,
    PIPELINE_USER,
    Secrets,
    grant,
    pipeline_acls,
    without,
    write_other_ca,
)
from loginpipe.topics import InternalTopics
from loginpipe.waiting import wait_until
from tests.conftest import SecureKafka
from tests.helpers import ROOT, PipelineTopics, create_pipeline_topics, summary_counts

pytestmark = pytest.mark.integration

FAIL_WITHIN_S = 30.0  # issue 15: a refused connection is reported within this
FAIL_TIMEOUT_S = 45.0  # a command that has not failed by then is killed (and the test fails)
RUN_TIMEOUT_S = 120.0  # a whole generator or consumer run
SEED_USERS, BAD_RATIO = 2000, 0.05
MOBILE = ("android", "ios")
# Every connection setting a command could pick up from the caller's environment.
CONNECTION_ENV = ("BOOTSTRAP_SERVERS", "CLIENT_CONFIG", "SECURITY_PROTOCOL", "SASL_MECHANISM",
                  "SASL_USERNAME", "SASL_PASSWORD", "SASL_PASSWORD_FILE", "SSL_CAFILE", "SSL_CERTFILE",
                  "SSL_KEYFILE", "OFFSET_RESET")


# --- Commands, and the password check over everything they print

@dataclass(frozen=True)
class Ran:
    args: tuple[str, ...]
    returncode: int | None  # None: killed at its timeout
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def name(self) -> str:
        return " ".join(self.args[:3])


class Commands:
    """Runs this project's commands (``python <args>`` from the repository root) and keeps what
    each printed, for the password check."""

    def __init__(self, secure_kafka: SecureKafka) -> None:
        self.passwords = {secure_kafka.user: secure_kafka.password,
                          secure_kafka.admin_user: secure_kafka.admin_password,
                          secure_kafka.nowrite_user: secure_kafka.nowrite_password}
        assert all(self.passwords.values()), "a user without a password: the leak check would prove nothing"
        self.ran: list[Ran] = []

    def run(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = FAIL_TIMEOUT_S) -> Ran:
        clean = {k: v for k, v in os.environ.items() if k not in CONNECTION_ENV}
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s, env={**clean, **(env or {})})
            ran = Ran(args, done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        except subprocess.TimeoutExpired as exc:  # killed; what it printed so far is still checked
            ran = Ran(args, None, _text(exc.stdout), _text(exc.stderr), time.monotonic() - started)
        self.ran.append(ran)
        assert not self.leaks([(f"the output of {ran.name}", ran.stdout + ran.stderr)])
        return ran

    def run_together(self, *commands: tuple[Sequence[str], dict[str, str] | None]) -> list[Ran]:
        """Several commands at once (each timed on its own): refusals wait on timeouts, not CPU."""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda command: self.run(*command[0], env=command[1]), commands))

    def leaks(self, blobs: Iterable[tuple[str, str | bytes]]) -> list[str]:
        """Where a password shows up, by user (never the password itself: pytest prints operands)."""
        found = []
        for where, blob in blobs:
            for user, password in self.passwords.items():
                needle = password.encode() if isinstance(blob, bytes) else password
                if needle in blob:
                    found.append(f"{user}'s password in {where}")
        return found

    def redact(self, text: str) -> str:
        for password in self.passwords.values():
            text = text.replace(password, "<password>")
        return text


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


@pytest.fixture(scope="module")
def commands(secure_kafka: SecureKafka) -> Commands:
    return Commands(secure_kafka)


def unique(base: str) -> str:
    return f"test-{base}-{uuid.uuid4().hex[:8]}"


def one_line_failure(commands: Commands, ran: Ran, *expected: str) -> str:
    """The contract of a refused command: a non-zero exit within 30 s, one non-empty line on
    stderr holding every ``expected`` word (case-insensitively), no traceback."""
    shown = f"{ran.name}: {commands.redact(ran.stderr)[-2000:]!r}"
    assert ran.returncode is not None, f"still running after {FAIL_TIMEOUT_S:g}s: {shown}"
    assert ran.returncode != 0, shown
    assert ran.elapsed_s < FAIL_WITHIN_S, f"took {ran.elapsed_s:.1f}s: {shown}"
    assert "Traceback" not in ran.stderr + ran.stdout, shown
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), shown
    for word in expected:
        assert word.lower() in lines[0].lower(), f"no {word!r} in {shown}"
    return lines[0]


# --- Reading back, as the loginpipe user

def read_all(connection: Connection, topic: str, timeout_s: float = 30.0) -> list:
    """Every committed record of ``topic`` up to its current end (the writers have stopped)."""
    consumer = KafkaConsumer(**kafka_options(connection), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", auto_offset_reset="earliest")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        records: list = []

        def at_end() -> bool:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records.extend(batch)
            return all(consumer.position(tp) >= end for tp, end in ends.items())

        assert wait_until(at_end, timeout_s, interval_s=0), f"{topic}: not read to its end in {timeout_s:g}s"
        return records
    finally:
        consumer.close()


def record_bytes(record) -> bytes:
    """Everything a record carries: key, value, header names and values."""
    headers = b"".join(name.encode() + (value or b"") for name, value in record.headers or ())
    return (record.key or b"") + b"\0" + (record.value or b"") + b"\0" + headers


def data_codecs(dump: str) -> set[str]:
    """The compression codecs of a DumpLogSegments listing's record batches (transaction markers,
    control batches, are never compressed: left out)."""
    return {line.split("compresscodec: ")[1].split()[0] for line in dump.splitlines()
            if "compresscodec: " in line and "isControl: true" not in line}


# --- One pipeline run: topics, generator, consumer, everything read back

@dataclass
class PipelineRun:
    connection: Connection
    flags: tuple[str, ...]  # the connection flags every command got
    topics: PipelineTopics
    group: str
    generated: int
    expected: tuple[int, int, int]  # (processed, filtered, dead-lettered), from the generator's own labels
    consumer: Ran
    counts: tuple[int, int, int, int]  # the consumer's summary: consumed, processed, filtered, dead-lettered
    records: dict[str, list] = field(default_factory=dict)  # every topic the run wrote, read back

    @property
    def internal_topics(self) -> tuple[str, ...]:
        internal = InternalTopics.of(self.group)
        return internal.changelog, internal.device_changelog, internal.repartition


def expected_counts(count: int, seed: int) -> tuple[int, int, int]:
    """What the pipeline must do with the generator's events, from the generator's labels alone
    (the same seed gives the same kinds and device types, whatever the clock)."""
    processed = filtered = dead = 0
    for record in EventGenerator(seed=seed, users=SEED_USERS, bad_ratio=BAD_RATIO).generate(count):
        if record.kind != GOOD:
            dead += 1
        elif orjson.loads(record.value)["device_type"].lower() in MOBILE:
            processed += 1
        else:
            filtered += 1
    return processed, filtered, dead


def run_pipeline(commands: Commands, connection: Connection, flags: Sequence[str], count: int, seed: int,
                 *consumer_flags: str) -> PipelineRun:
    topics = create_pipeline_topics(connection, unique)  # ensure_topics as the loginpipe user
    group = unique("secure-group")
    generator = commands.run("-m", "loginpipe.local.generator", *flags, "--topic", topics.input,
                             "--count", str(count), "--rate", "0", "--seed", str(seed),
                             "--users", str(SEED_USERS), "--bad-ratio", str(BAD_RATIO),
                             timeout_s=RUN_TIMEOUT_S)
    assert generator.returncode == 0, commands.redact(generator.stderr)
    consumer = commands.run("create_kafka_consumer.py", *flags, "--group-id", group,
                            *topics.flags(filtered=True), "--stop-when-idle", "3", *consumer_flags,
                            timeout_s=RUN_TIMEOUT_S)
    assert consumer.returncode == 0, commands.redact(consumer.stderr + consumer.stdout)[-3000:]
    run = PipelineRun(connection, tuple(flags), topics, group, count, expected_counts(count, seed), consumer,
                      summary_counts(consumer.stdout))
    for topic in (*topics.names, *run.internal_topics):
        run.records[topic] = read_all(connection, topic)
    return run


def assert_accounted(run: PipelineRun) -> None:
    consumed, processed, filtered, dead = run.counts
    assert consumed == run.generated == processed + filtered + dead
    assert (processed, filtered, dead) == run.expected
    topics, records = run.topics, run.records
    assert len(records[topics.input]) == run.generated
    assert (len(records[topics.output]), len(records[topics.filtered]), len(records[topics.dlq])) == \
        (processed, filtered, dead)
    outputs = [orjson.loads(r.value) for r in records[topics.output]]
    assert {o["device_type"] for o in outputs} <= set(MOBILE)
    assert all(r.key == o["user_id"].encode() for r, o in zip(records[topics.output], outputs, strict=True))


def query_totals(commands: Commands, run: PipelineRun) -> dict:
    ran = commands.run("-m", "loginpipe.query", *run.flags, "--group-id", run.group, "totals", "--json",
                       timeout_s=RUN_TIMEOUT_S)
    assert ran.returncode == 0, commands.redact(ran.stderr)
    return orjson.loads(ran.stdout)


@pytest.fixture(scope="module")
def sasl_connection(secure_kafka: SecureKafka) -> Connection:
    return build_connection({}, {}, str(secure_kafka.client_properties))


@pytest.fixture(scope="module")
def sasl_run(secure_kafka: SecureKafka, commands: Commands, sasl_connection: Connection) -> PipelineRun:
    """At least once, with stats lines (their text is checked for passwords too)."""
    return run_pipeline(commands, sasl_connection, ["--client-config", str(secure_kafka.client_properties)],
                        2000, 1501, "--stats-every", "500")


@pytest.fixture(scope="module", params=["kafka-python", "confluent"])
def exactly_once_run(secure_kafka: SecureKafka, commands: Commands, sasl_connection: Connection,
                     request: pytest.FixtureRequest) -> PipelineRun:
    """On both clients: SASL/SCRAM over TLS and transactions, each mapped to librdkafka's settings."""
    return run_pipeline(commands, sasl_connection, ["--client-config", str(secure_kafka.client_properties)],
                        2000, 1502, "--processing-guarantee", "exactly-once", "--quiet",
                        "--client", request.param)


@pytest.fixture(scope="module", params=["kafka-python", "confluent"])
def mtls_run(secure_kafka: SecureKafka, commands: Commands, request: pytest.FixtureRequest) -> PipelineRun:
    keystore = str(secure_kafka.broker.secrets.keystore(PIPELINE_USER))  # key and certificate in one PEM
    flags = {"bootstrap_servers": secure_kafka.mtls_bootstrap, "security_protocol": "SSL",
             "ssl_cafile": str(secure_kafka.ca_file), "ssl_certfile": keystore, "ssl_keyfile": keystore}
    connection = build_connection(flags, {})
    cli = [text for name, value in flags.items() for text in (f"--{name.replace('_', '-')}", value)]
    return run_pipeline(commands, connection, cli, 1000, 1503, "--quiet", "--client", request.param)


# --- 1. The pipeline over SASL_SSL, every tool with --client-config

def test_pipeline_over_sasl_ssl_accounts_for_every_event(sasl_run: PipelineRun,
                                                         secure_kafka: SecureKafka) -> None:
    assert_accounted(sasl_run)
    # the client config's listener, the SASL_SSL one
    assert f"at {secure_kafka.bootstrap} " in sasl_run.consumer.stderr
    assert " msgs | " in sasl_run.consumer.stdout  # stats lines


def test_outputs_over_sasl_ssl_are_snappy(sasl_run: PipelineRun, secure_kafka: SecureKafka) -> None:
    dump = secure_kafka.broker.dump_log_segments(sasl_run.topics.output)
    assert data_codecs(dump) == {"snappy"}, dump[:2000]
    # The small dead-letter and filtered streams are sent snappy too, but kafka-python sends a
    # batch uncompressed when snappy does not make it smaller (default_records._maybe_compress;
    # a batch of one record, in a fresh-clone run): some snappy batches, not only snappy ones.
    for topic in (sasl_run.topics.dlq, sasl_run.topics.filtered):
        dump = secure_kafka.broker.dump_log_segments(topic)
        assert "snappy" in data_codecs(dump), f"{topic}: {dump[:2000]}"


def test_dashboard_feed_reads_the_groups_summary_over_sasl_ssl(sasl_run: PipelineRun) -> None:
    topics = sasl_run.topics
    consumed, processed, filtered, dead = sasl_run.counts
    feed = Feed(DashboardSettings(sasl_run.connection, topics.summary, topics.metrics, topics.output,
                                  sasl_run.group)).start()
    try:
        def complete():
            view = feed.view()
            ok = (view.status == LIVE and view.summary is not None and view.recent
                  and view.summary["totals"].get("consumed") == consumed)
            return view if ok else None

        view = wait_until(complete, 30)
        assert view, feed.view()
    finally:
        feed.stop()
    totals = view.summary["totals"]
    assert (totals["processed"], totals["filtered"], totals["dead_lettered"]) == (processed, filtered, dead)
    assert view.metrics, "no metrics read from the metrics topic"
    assert {r["device_type"] for r in view.recent} <= set(MOBILE)  # sampled from the output topic


def test_query_totals_over_sasl_ssl_equal_the_processed_count(sasl_run: PipelineRun,
                                                              commands: Commands) -> None:
    assert query_totals(commands, sasl_run)["events"] == sasl_run.counts[1]


def test_topic_tool_over_sasl_ssl_with_the_admins_client_config(secure_kafka: SecureKafka,
                                                                commands: Commands) -> None:
    """The default topics: the loginpipe user may not create them, the admin may (twice: they exist)."""
    for _ in range(2):
        ran = commands.run("create_kafka_topic.py", "--client-config", str(secure_kafka.admin_properties),
                           timeout_s=RUN_TIMEOUT_S)
        assert ran.returncode == 0, commands.redact(ran.stderr)
    assert "processed-user-login: exists" in ran.stdout


def test_exactly_once_over_sasl_ssl(exactly_once_run: PipelineRun, secure_kafka: SecureKafka,
                                    commands: Commands) -> None:
    run = exactly_once_run
    assert_accounted(run)
    for topic in (run.topics.output, run.topics.dlq):
        dump = secure_kafka.broker.dump_log_segments(topic)
        assert "isTransactional: true" in dump, dump[:2000]
        assert data_codecs(dump) == {"snappy"}, f"{topic}: {dump[:2000]}"
    assert query_totals(commands, run)["events"] == run.counts[1]


# --- 2. The same over mutual TLS

def test_pipeline_over_mutual_tls(mtls_run: PipelineRun, commands: Commands) -> None:
    assert_accounted(mtls_run)
    assert query_totals(commands, mtls_run)["events"] == mtls_run.counts[1]


# --- 3-5. Refusals: one line, no traceback, within 30 s

def consumer_args(*connection: str, group: str | None = None) -> list[str]:
    """The consumer on topics of its own (they need not exist: the connection fails first)."""
    names = PipelineTopics(*(unique(base) for base in ("in", "out", "dlq", "filtered", "summary", "metrics")))
    return ["create_kafka_consumer.py", *connection, "--group-id", group or unique("group"), *names.flags(),
            "--stop-when-idle", "3", "--quiet"]


def query_args(*connection: str) -> list[str]:
    return ["-m", "loginpipe.query", *connection, "--group-id", unique("group"), "totals"]


def test_wrong_password_is_one_line_saying_authentication_failed(secure_kafka: SecureKafka,
                                                                  commands: Commands, tmp_path: Path) -> None:
    right = f'password="{secure_kafka.password}"'
    text = secure_kafka.client_properties.read_text()
    assert right in text
    wrong = tmp_path / "wrong.properties"
    wrong.write_text(text.replace(right, 'password="not-the-password"'))
    wrong.chmod(0o600)
    config = ("--client-config", str(wrong))
    flags = ("--bootstrap-servers", secure_kafka.bootstrap, "--security-protocol", "SASL_SSL",
             "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", PIPELINE_USER,
             "--ssl-cafile", str(secure_kafka.ca_file))
    results = commands.run_together(
        (consumer_args(*config), None),
        (["create_kafka_topic.py", *config], None),
        (query_args(*config), None),
        (consumer_args(*flags), {"SASL_PASSWORD": "not-the-password"}))
    for ran in results:
        one_line_failure(commands, ran, "authentication failed")


def test_plaintext_client_on_the_tls_listener_is_one_line_naming_tls(secure_kafka: SecureKafka,
                                                                     commands: Commands) -> None:
    plain = ("--bootstrap-servers", secure_kafka.bootstrap)
    results = commands.run_together((consumer_args(*plain), None),
                                    (["create_kafka_topic.py", *plain], None),
                                    (query_args(*plain), None))
    for ran in results:
        one_line_failure(commands, ran, "TLS")


def test_untrusted_broker_certificate_is_one_line_naming_the_certificate(secure_kafka: SecureKafka,
                                                                         commands: Commands,
                                                                         tmp_path: Path) -> None:
    other_ca = write_other_ca(Secrets(tmp_path))  # a CA that did not sign the broker's certificate
    flags = ("--client-config", str(secure_kafka.client_properties), "--ssl-cafile", str(other_ca))
    results = commands.run_together((consumer_args(*flags), None), (query_args(*flags), None))
    for ran in results:
        one_line_failure(commands, ran, "certificate")


def wait_for_acls(settings: dict, topic: str) -> None:
    """New ACLs reach the broker's authorizer a moment after create_acls returns."""
    def described() -> bool:
        with KafkaAdminClient(**settings) as admin:
            return admin.describe_topics([topic])[0]["error_code"] == 0

    assert wait_until(described, 15.0, interval_s=0.2), f"the ACLs on {topic} did not take effect"


def test_missing_write_permission_is_one_line_naming_the_topic(secure_kafka: SecureKafka, commands: Commands,
                                                               sasl_connection: Connection) -> None:
    topics = create_pipeline_topics(sasl_connection, unique)
    group = unique("nowrite-group")
    outputs = (topics.output, topics.dlq, topics.summary, topics.metrics)
    acls = without(pipeline_acls(group, topics.input, outputs), "TOPIC", topics.output, "WRITE")
    grant(secure_kafka.settings("admin"), f"User:{NOWRITE_USER}", acls)
    wait_for_acls(secure_kafka.settings(NOWRITE_USER), topics.output)
    # Input to process, so a pipeline without a permission check up front still tries to write.
    producer = KafkaProducer(**kafka_options(sasl_connection))
    try:
        for i in range(50):
            event = {"user_id": f"u{i}", "app_version": "2.3.0", "device_type": "android", "ip": "10.0.0.1",
                     "locale": "RU", "device_id": f"d{i}", "timestamp": int(time.time())}
            producer.send(topics.input, key=event["user_id"].encode(), value=orjson.dumps(event))
        producer.flush(timeout=10)
    finally:
        producer.close()
    ran = commands.run("create_kafka_consumer.py", "--client-config", str(secure_kafka.nowrite_properties),
                       "--group-id", group, *topics.flags(), "--stop-when-idle", "3", "--quiet")
    line = one_line_failure(commands, ran, "not authorized", "WRITE")
    assert re.search(rf"\b{re.escape(topics.output)}\b", line), line


# --- 6. No password anywhere

def test_no_password_in_any_output_record_or_help(secure_kafka: SecureKafka, commands: Commands,
                                                   sasl_run: PipelineRun, exactly_once_run: PipelineRun,
                                                   mtls_run: PipelineRun) -> None:
    """Last in the file: by now ``commands`` holds the output of every command the tests above ran."""
    stats = [line for line in sasl_run.consumer.stdout.splitlines() if " msgs | " in line]
    assert stats, "no stats lines to check"
    # --help prints defaults, some from the environment: the password's twin must not be one.
    secret_env = {"SASL_PASSWORD": secure_kafka.password, "SASL_USERNAME": PIPELINE_USER,
                  "CLIENT_CONFIG": str(secure_kafka.client_properties)}
    helps = commands.run_together(*((args, secret_env) for args in (
        ["create_kafka_consumer.py", "--help"], ["create_kafka_topic.py", "--help"],
        ["-m", "loginpipe.query", "--help"], ["-m", "loginpipe.local.generator", "--help"])))
    for ran in helps:
        assert ran.returncode == 0 and "--client-config" in ran.stdout, commands.redact(ran.stderr)
    blobs: list[tuple[str, str | bytes]] = [(f"the output of {ran.name}", ran.stdout + ran.stderr)
                                            for ran in commands.ran]
    blobs += [("a stats line", "\n".join(stats))]
    for run in (sasl_run, exactly_once_run, mtls_run):
        assert set(run.records) >= {*run.topics.names, *run.internal_topics}
        for topic, records in run.records.items():
            assert records, f"{topic}: nothing to check"
            blobs += [(f"a record of {topic}", b"\n".join(record_bytes(r) for r in records))]
    # and none was given it on its command line (where ps shows it): only by file or environment
    blobs += [(f"the arguments of {ran.name}", " ".join(ran.args)) for ran in commands.ran]
    assert not commands.leaks(blobs)
