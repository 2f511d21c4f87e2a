"""``broker start --secure``: SASL_SSL with SCRAM-SHA-512, ACLs, mutual TLS, and how kafka-python
3.0 fails when something is wrong (the exceptions the one-line error messages are built on)."""

from __future__ import annotations

import logging
import shlex
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)

from loginpipe.cli import run_cli
from loginpipe.kafka.properties import read_properties
from loginpipe.local.broker import (
    PROJECT_ROOT,
    LocalBroker,
    broker_answers,
    build_parser,
    free_port,
    kafka_version,
    main,
)
from loginpipe.local.secrets import (
    NOWRITE_USER,
    OUTPUT_TOPIC,
    PIPELINE_USER,
    Acl,
    acl_commands,
    client_settings,
    grant,
    local_broker_acls,
    pipeline_acls,
    without,
    write_expired_keystore,
    write_other_ca,
)
from loginpipe.waiting import wait_until
from tests.conftest import SecureKafka

pytestmark = pytest.mark.integration

REFUSAL_TIMEOUT_MS = 3000  # how long a refused client keeps trying before kafka-python gives up


@pytest.fixture
def kafka_logs(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """kafka-python's warnings and errors: where it names why a connection failed."""
    caplog.set_level(logging.WARNING, logger="kafka")
    return lambda: "\n".join(record.getMessage() for record in caplog.records)


def create_topics(secure_kafka: SecureKafka, *names: str) -> None:
    """As the admin: the pipeline's user may not create topics outside its prefixes."""
    with KafkaAdminClient(**secure_kafka.settings("admin")) as admin:
        admin.create_topics([NewTopic(name, 1, 1) for name in names])


def refusal(settings: dict[str, Any]) -> tuple[Exception, float]:
    """The exception a refused admin client raises, and after how many seconds."""
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        KafkaAdminClient(**settings, bootstrap_timeout_ms=REFUSAL_TIMEOUT_MS).close()
    return caught.value, time.monotonic() - started


def test_secrets_are_private_and_client_files_point_at_the_tls_listener(secure_kafka: SecureKafka) -> None:
    secrets_dir = secure_kafka.secrets_dir
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for private in ["ca-key.pem", "broker.pem", "client.properties", "admin.properties", "nowrite.properties",
                    "loginpipe.password", "loginpipe-keystore.pem"]:
        assert stat.S_IMODE((secrets_dir / private).stat().st_mode) == 0o600, private
    props = read_properties(str(secure_kafka.client_properties))
    assert props["bootstrap.servers"] == secure_kafka.bootstrap
    assert props["security.protocol"] == "SASL_SSL" and props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["ssl.truststore.type"] == "PEM"
    assert props["ssl.truststore.location"] == str(secure_kafka.ca_file.resolve())
    assert f'username="{PIPELINE_USER}" password="{secure_kafka.password}";' in props["sasl.jaas.config"]
    assert 'username="admin"' in read_properties(str(secure_kafka.admin_properties))["sasl.jaas.config"]
    # Passwords stay in the secrets folder: not in what start prints, nor in the broker's own config.
    message = secure_kafka.broker.start()
    assert message.startswith("already running at") and str(secure_kafka.client_properties) in message
    for password in (secure_kafka.password, secure_kafka.admin_password, secure_kafka.nowrite_password):
        assert password not in message and password not in secure_kafka.broker.properties_file.read_text()


def test_broker_certificate_names_127_0_0_1_and_localhost_and_comes_from_the_ca(
        secure_kafka: SecureKafka) -> None:
    ca = x509.load_pem_x509_certificate(secure_kafka.ca_file.read_bytes())
    cert = x509.load_pem_x509_certificates((secure_kafka.secrets_dir / "broker.pem").read_bytes())[0]
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]


def test_the_default_secrets_folder_is_ignored_by_git() -> None:
    result = subprocess.run(["git", "check-ignore", "-q", ".kafka/secrets/client.properties"],
                            cwd=PROJECT_ROOT, capture_output=True)
    assert result.returncode == 0


def test_pipeline_user_produces_and_consumes_over_sasl_ssl(secure_kafka: SecureKafka,
                                                           topic_name: Callable[[str], str]) -> None:
    topic, group = topic_name("secure"), topic_name("group")
    settings = secure_kafka.settings()
    with KafkaAdminClient(**settings) as admin:  # CREATE on the tests' "test-" prefix
        admin.create_topics([NewTopic(topic, 1, 1)])
    producer = KafkaProducer(**settings)  # idempotent by default: no cluster-wide ACL needed
    try:
        assert producer.send(topic, b"over tls").get(timeout=10).offset == 0
    finally:
        producer.close()
    consumer = KafkaConsumer(topic, **settings, group_id=group, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000)
    try:
        assert next(iter(consumer)).value == b"over tls"
        consumer.commit()
    finally:
        consumer.close()


def test_wrong_password_is_a_bootstrap_timeout_whose_cause_is_logged(
        secure_kafka: SecureKafka, kafka_logs: Callable[[], str]) -> None:
    error, seconds = refusal(secure_kafka.settings(sasl_plain_password="not-the-password"))
    # kafka-python 3.0.12 retries the login until bootstrap_timeout_ms (30 s by default) and then
    # raises a timeout; the SASL error itself only reaches the log.
    assert isinstance(error, KafkaTimeoutError)
    assert str(error) == f"KafkaTimeoutError: Unable to bootstrap from {secure_kafka.bootstrap}"
    assert seconds >= REFUSAL_TIMEOUT_MS / 1000  # it retried until the timeout: no fast failure
    # The broker answers a failed login with its error, then hangs up; kafka-python often sees only
    # the hang-up (in a fresh-clone run, every attempt did): either is what loginpipe reports as
    # "authentication failed" (loginpipe/kafka/failures.py).
    logs = kafka_logs()
    assert ("SaslAuthenticationFailedError: Authentication failed during authentication due to invalid "
            "credentials with SASL mechanism SCRAM-SHA-512") in logs or "socket disconnected" in logs, logs


def test_plaintext_client_on_the_tls_port_is_disconnected(secure_kafka: SecureKafka,
                                                          kafka_logs: Callable[[], str]) -> None:
    error, seconds = refusal({"bootstrap_servers": secure_kafka.bootstrap})
    assert isinstance(error, KafkaTimeoutError) and "Unable to bootstrap" in str(error)
    assert seconds < REFUSAL_TIMEOUT_MS / 1000 + 15  # no hang: the broker drops the non-TLS bytes at once
    assert "KafkaConnectionError: socket disconnected" in kafka_logs()


def test_a_ca_that_did_not_sign_the_broker_certificate_is_refused(secure_kafka: SecureKafka,
                                                                  kafka_logs: Callable[[], str]) -> None:
    other_ca = write_other_ca(secure_kafka.broker.secrets)
    error, _ = refusal(secure_kafka.settings(ssl_cafile=str(other_ca)))
    assert isinstance(error, KafkaTimeoutError)
    assert "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in kafka_logs()


def wait_for_acls(settings: dict[str, Any], topic: str) -> None:
    """New ACLs reach the broker's authorizer a moment after create_acls returns."""
    def described() -> bool:
        with KafkaAdminClient(**settings) as admin:
            return admin.describe_topics([topic])[0]["error_code"] == 0

    assert wait_until(described, 10.0, interval_s=0.2)


def test_missing_write_acl_fails_the_send_at_once(secure_kafka: SecureKafka,
                                                  topic_name: Callable[[str], str]) -> None:
    source, out, dlq, group = (topic_name(what) for what in ("in", "out", "dlq", "grp"))
    create_topics(secure_kafka, source, out, dlq)
    acls = without(pipeline_acls(group, source, (out, dlq)), "TOPIC", out, "WRITE")
    grant(secure_kafka.settings("admin"), f"User:{NOWRITE_USER}", acls)
    settings = secure_kafka.settings(NOWRITE_USER)
    wait_for_acls(settings, dlq)
    producer = KafkaProducer(**settings)
    try:
        assert producer.send(dlq, b"allowed").get(timeout=10).offset == 0
        started = time.monotonic()
        future = producer.send(out, b"denied")
        producer.flush(timeout=10)  # returns: the batch failed, it is not retried
        with pytest.raises(TopicAuthorizationFailedError, match=out):
            future.get(timeout=10)
        assert time.monotonic() - started < 2
    finally:
        producer.close()


def test_missing_create_acl_fails_create_topics(secure_kafka: SecureKafka) -> None:
    name = f"noacl-{uuid.uuid4().hex[:8]}"
    with KafkaAdminClient(**secure_kafka.settings()) as admin, \
            pytest.raises(TopicAuthorizationFailedError, match="Authorization failed"):
        admin.create_topics([NewTopic(name, 1, 1)])


def test_missing_group_acl_fails_the_poll(secure_kafka: SecureKafka,
                                          topic_name: Callable[[str], str]) -> None:
    topic = topic_name("nogroup")
    create_topics(secure_kafka, topic)
    group = f"other-{uuid.uuid4().hex[:8]}"  # outside the "test-" and pipeline group prefixes
    consumer = KafkaConsumer(topic, **secure_kafka.settings(), group_id=group)
    try:
        with pytest.raises(GroupAuthorizationFailedError, match=group):
            consumer.poll(timeout_ms=5000)
    finally:
        consumer.close()


def test_missing_read_acl_reads_nothing_and_only_logs(secure_kafka: SecureKafka,
                                                      topic_name: Callable[[str], str],
                                                      kafka_logs: Callable[[], str]) -> None:
    topic = f"noacl-{uuid.uuid4().hex[:8]}"
    create_topics(secure_kafka, topic)
    settings = secure_kafka.settings()
    with KafkaAdminClient(**settings) as admin:
        assert admin.describe_topics([topic])[0]["error_code"] == TopicAuthorizationFailedError.errno
    # Unlike the Java client, kafka-python's consumer raises nothing: it logs and returns no records.
    consumer = KafkaConsumer(topic, **settings, group_id=topic_name("group"), auto_offset_reset="earliest")
    try:
        assert consumer.poll(timeout_ms=2000) == {}
    finally:
        consumer.close()
    assert f"Topic {topic} is not authorized for this client" in kafka_logs()


def test_transactional_id_outside_the_group_prefix_is_refused(secure_kafka: SecureKafka,
                                                              topic_name: Callable[[str], str]) -> None:
    settings = secure_kafka.settings()
    allowed = KafkaProducer(**settings, transactional_id=topic_name("txn"))
    try:
        allowed.init_transactions()
    finally:
        allowed.close()
    refused = KafkaProducer(**settings, transactional_id=f"other-{uuid.uuid4().hex[:8]}", max_block_ms=5000)
    try:
        with pytest.raises(TransactionalIdAuthorizationFailedError):
            refused.init_transactions()
    finally:
        refused.close()


def test_mutual_tls_maps_the_certificate_to_the_same_user(secure_kafka: SecureKafka,
                                                          topic_name: Callable[[str], str],
                                                          kafka_logs: Callable[[], str]) -> None:
    secrets = secure_kafka.broker.secrets
    settings = client_settings(secrets.mtls_properties_file(PIPELINE_USER))
    assert settings["bootstrap_servers"] == secure_kafka.mtls_bootstrap
    topic = topic_name("mtls")
    with KafkaAdminClient(**settings) as admin:  # CN=loginpipe is User:loginpipe: its "test-" ACLs apply
        admin.create_topics([NewTopic(topic, 1, 1)])
    without_cert = {k: v for k, v in settings.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    assert isinstance(refusal(without_cert)[0], KafkaTimeoutError)
    assert "SSLV3_ALERT_BAD_CERTIFICATE" in kafka_logs()
    expired = str(write_expired_keystore(secrets, PIPELINE_USER))
    error, _ = refusal({**settings, "ssl_certfile": expired, "ssl_keyfile": expired})
    assert isinstance(error, KafkaTimeoutError)
    assert "SSLV3_ALERT_CERTIFICATE_UNKNOWN" in kafka_logs()


def test_pipeline_acls_are_least_privilege() -> None:
    acls = pipeline_acls()
    assert Acl("TOPIC", "user-login", "LITERAL", "READ") in acls
    assert Acl("TOPIC", "processed-user-login", "LITERAL", "WRITE") in acls
    assert not [a for a in acls if a.pattern == "LITERAL" and a.operation in ("CREATE", "DELETE", "ALTER")]
    assert not [a for a in acls if a.resource == "CLUSTER"]  # idempotence needs WRITE on a topic only
    assert not [a for a in acls if a.name == "user-login" and a.operation == "WRITE"]
    assert Acl("TOPIC", "user-login-group-", "PREFIXED", "CREATE") in acls  # the group's internal topics
    assert Acl("GROUP", "user-login-group", "PREFIXED", "READ") in acls
    assert Acl("TRANSACTIONAL_ID", "user-login-group-", "PREFIXED", "WRITE") in acls
    nowrite = local_broker_acls()[NOWRITE_USER]
    assert set(acls) - set(nowrite) == {Acl("TOPIC", OUTPUT_TOPIC, "LITERAL", "WRITE")}


def test_acl_commands_are_accepted_by_kafka_acls(secure_kafka: SecureKafka) -> None:
    principal = f"User:probe-{uuid.uuid4().hex[:8]}"
    acls = [Acl("TOPIC", "user-login", "LITERAL", "READ"), Acl("TOPIC", "user-login", "LITERAL", "DESCRIBE"),
            Acl("TRANSACTIONAL_ID", "user-login-group-", "PREFIXED", "WRITE")]
    lines = acl_commands(acls, principal, secure_kafka.bootstrap, str(secure_kafka.admin_properties))
    assert lines[0] == (f"kafka-acls.sh --bootstrap-server {secure_kafka.bootstrap} --command-config "
                        f"{secure_kafka.admin_properties} --add --allow-principal {principal} "
                        f"--operation Read --operation Describe --topic user-login")
    assert lines[1].endswith("--transactional-id user-login-group- --resource-pattern-type prefixed")
    libs = secure_kafka.broker.libs_dir
    for line in lines:
        args = shlex.split(line)[1:]
        result = subprocess.run(["java", "-cp", f"{libs}/*", "org.apache.kafka.tools.AclCommand", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    every = ACLFilter(principal, None, ACLOperation.ANY, ACLPermissionType.ANY,
                      ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY))
    with KafkaAdminClient(**secure_kafka.settings("admin")) as admin:
        found, _ = admin.describe_acls(every)
    assert sorted((a.resource_pattern.resource_name, a.operation.name) for a in found) == [
        ("user-login", "DESCRIBE"), ("user-login", "READ"), ("user-login-group-", "WRITE")]


def test_env_twins_turn_secure_mode_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURE_ONLY", "true")
    monkeypatch.setenv("KAFKA_SECURE_PORT", "39999")
    args = build_parser().parse_args(["start"])
    assert args.secure_only and args.secure_port == 39999 and not args.secure


def test_plain_broker_refuses_start_secure_then_gets_users_when_restarted_secure(
        tmp_path: Path, kafka_libs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "k"
    home.mkdir()
    (home / "libs").symlink_to(kafka_libs)  # the command line has no --libs
    plain = LocalBroker(home=home, port=free_port(), controller_port=free_port(), heap_mb=384)
    secure = LocalBroker(home=home, port=plain.port, controller_port=plain.controller_port, heap_mb=384,
                         secure=True, secure_port=free_port())
    args = ["--home", str(home), "--port", str(plain.port), "--controller-port", str(plain.controller_port),
            "--secure-port", str(secure.secure_port), "--heap-mb", "384"]
    try:
        assert main(["start", *args]) == 0
        capsys.readouterr()
        assert run_cli(lambda: main(["start", "--secure", *args])) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"error: the broker running at {plain.bootstrap_servers} (pid {plain.pid()}) "
                              "has no SASL_SSL listener: stop it first")
        plain.stop()
        # Storage formatted without users: they are created once the broker runs.
        assert "(SASL_SSL, SCRAM-SHA-512)" in secure.start()
        password = secure.secrets.password(PIPELINE_USER)
        assert "SASL_SSL" in secure.status() and secure.status().endswith("answering")
        secure.stop()
        secure.start()  # the same storage: the same secrets
        assert secure.secrets.password(PIPELINE_USER) == password
        assert broker_answers(secure.secure_bootstrap_servers,
                              settings=client_settings(secure.secrets.properties_file(PIPELINE_USER)))
    finally:
        plain.stop()


def test_secure_only_broker_has_no_plaintext_and_commits_transactions(
        tmp_path: Path, kafka_libs: Path, topic_name: Callable[[str], str]) -> None:
    broker = LocalBroker(home=tmp_path / "k", port=free_port(), controller_port=free_port(), heap_mb=384,
                         libs=kafka_libs, secure_only=True, secure_port=free_port())
    try:
        message = broker.start()
        expected = f"started Kafka {kafka_version()} at {broker.secure_bootstrap_servers} (SASL_SSL"
        assert message.startswith(expected)
        assert "PLAINTEXT" not in message
        assert not broker_answers(broker.bootstrap_servers, timeout_s=1.0)
        settings = client_settings(broker.secrets.properties_file(PIPELINE_USER))
        topic = topic_name("only")
        with KafkaAdminClient(**settings) as admin:
            admin.create_topics([NewTopic(topic, 1, 1)])
        # Commit markers travel over the inter-broker listener, which is SASL_SSL here.
        producer = KafkaProducer(**settings, transactional_id=topic_name("txn"))
        try:
            producer.init_transactions()
            producer.begin_transaction()
            producer.send(topic, b"committed")
            producer.commit_transaction()
        finally:
            producer.close()
        consumer = KafkaConsumer(topic, **settings, group_id=None, isolation_level="read_committed",
                                 auto_offset_reset="earliest", consumer_timeout_ms=10_000)
        try:
            assert next(iter(consumer)).value == b"committed"
        finally:
            consumer.close()
    finally:
        broker.stop()
