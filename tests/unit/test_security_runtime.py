"""Secured clusters, without a broker: why a connection failed (from kafka-python's log lines),
a missing ACL found before the first record, and one refused later, each one line that stops the
run instead of a retry loop. The same against a real secure broker: tests/integration/
test_secure_pipeline.py."""

from __future__ import annotations

import io
import logging
import re

import pytest

from loginpipe.config import PipelineConfig
from loginpipe.errors import UserError
from loginpipe.kafka import failures
from loginpipe.kafka.memory import MemoryBackend, MemoryCluster
from loginpipe.kafka.settings import Connection
from loginpipe.runtime.app import Application
from loginpipe.waiting import wait_until
from tests.unit.test_worker import INPUT, Running, feed
from tests.unit.test_worker import cluster as cluster

SASL = Connection("kafka:9094", "SASL_SSL", "SCRAM-SHA-512", "alice", "s3cret-pw", "/ca.pem")


def logged(*lines: str) -> None:
    """What kafka-python logs while it fails to bootstrap."""
    failures.watch()
    failures.forget()
    for line in lines:
        logging.getLogger("kafka.net.manager").warning(line)


@pytest.mark.parametrize(("connection", "lines", "expected"), [
    (SASL, ["Bootstrap connection to bootstrap-0 failed: [Error 58] SaslAuthenticationFailedError: "
            "Authentication failed during authentication due to invalid credentials",
            "Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: socket disconnected"],
     "authentication failed at kafka:9094 over SASL_SSL (SCRAM-SHA-512, user alice)"),
    (SASL, ["Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: socket disconnected"],
     "authentication failed at kafka:9094 over SASL_SSL (SCRAM-SHA-512, user alice): the broker closed"),
    (Connection("kafka:9094"), ["Bootstrap connection to bootstrap-0 failed: InvalidReceiveError: "
                                "Invalid frame length: 352518912"],
     "TLS: the listener at kafka:9094 speaks TLS; this client does not"),
    (SASL, ["Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: Handshake failed: "
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"],
     "TLS: the broker's certificate at kafka:9094"),
    (SASL, ["Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: "
            "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate"],
     "TLS: the broker at kafka:9094 over SASL_SSL (SCRAM-SHA-512, user alice) refused this client's"),
    (Connection("kafka:9092"), ["Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: "
                                "111 ECONNREFUSED"], "cannot reach a Kafka broker at kafka:9092"),
    (Connection(), [], "cannot reach a Kafka broker at 127.0.0.1:29092 over PLAINTEXT; is it running? "
                       "(make kafka-start)"),
])
def test_a_failed_connection_is_explained_from_what_kafka_python_logged(connection, lines, expected) -> None:
    logged(*lines)
    text = failures.explain(connection, TimeoutError("Unable to bootstrap"))
    assert text.startswith(expected), text
    assert "\n" not in text and "s3cret-pw" not in text


def test_the_final_unable_to_bootstrap_line_does_not_hide_the_cause() -> None:
    logged("Bootstrap connection to bootstrap-0 failed: [Error 58] SaslAuthenticationFailedError: x",
           "Bootstrap failed: KafkaTimeoutError: Unable to bootstrap from kafka:9094")
    assert failures.explain(SASL, TimeoutError()).startswith("authentication failed")


def test_a_cause_from_an_earlier_client_is_forgotten() -> None:
    logged("Bootstrap connection to bootstrap-0 failed: [Error 58] SaslAuthenticationFailedError: x")
    failures.forget()
    assert failures.explain(Connection("kafka:9092"), TimeoutError()).startswith("cannot reach")


class Refusing(MemoryBackend):
    """An in-memory cluster whose authorizer refuses ``missing``."""

    def __init__(self, cluster: MemoryCluster, missing: list[str]) -> None:
        super().__init__(cluster)
        self.missing = missing
        self.asked: list[dict] = []

    def missing_permissions(self, connection, wanted: dict[str, list[str]]) -> list[str]:
        self.asked.append(wanted)
        return [m for m in self.missing if m.split(" topic ")[1] in wanted]


def test_a_missing_acl_stops_the_run_before_any_record(cluster: MemoryCluster) -> None:
    feed(cluster, 50)
    backend = Refusing(cluster, ["WRITE topic processed-user-login"])
    config = PipelineConfig(connection="memory", quiet=True, summary_topic=None, metrics_topic=None)
    app = Application(config, out=io.StringIO(), err=io.StringIO(), backend=backend)
    with pytest.raises(UserError) as refused:
        app.run(install_signals=False)
    assert str(refused.value).startswith("not authorized: this client may not WRITE topic "
                                         "processed-user-login")
    assert backend.asked[0][INPUT] == ["READ"]
    assert cluster.records("processed-user-login") == []


class TopicAuthorizationFailedError(Exception):
    """Named as Kafka's error 29 is, in every client."""


def test_a_write_refused_mid_run_stops_with_one_line_instead_of_retrying(cluster: MemoryCluster) -> None:
    feed(cluster, 100)
    cluster.holding = True  # acknowledgements wait: the refusal arrives for sends in flight
    run = Running(cluster)
    assert wait_until(lambda: cluster._pending, 10)
    cluster.fail_pending(TopicAuthorizationFailedError("[Error 29] TopicAuthorizationFailedError: out"))
    run.thread.join(timeout=30)
    assert run.result is not None and run.result.failed
    errors = [line.split(" ERROR   ", 1)[1] for line in run.err.getvalue().splitlines() if " ERROR " in line]
    # the first refused send may be an output, a dead letter or an internal (state) topic's record
    assert re.fullmatch(r"not authorized: writing to (processed-user-login|user-login-dlq|"
                        r"\S+-(by-device-repartition|changelog)) was "
                        r"refused \(\[Error 29\] TopicAuthorizationFailedError: out\)", errors[0]), errors
    # then only the stop's own report: what stays uncommitted is read again next time
    assert all("unacknowledged" in line for line in errors[1:]), errors
    assert "Traceback" not in run.err.getvalue()
    assert run.result.totals.resent == 0, "a refusal is not retried"


def test_offset_reset_latest_starts_a_new_group_at_the_end_of_its_input(cluster: MemoryCluster) -> None:
    """``--offset-reset latest``: what was in the input before the first start is skipped; what
    arrives after it is processed, the device step included (its repartition topic is read from
    its start whatever the setting)."""
    feed(cluster, 100, seed=1)
    run = Running(cluster, connection=Connection("memory", offset_reset="latest"))
    assert wait_until(lambda: run.app.stats.totals.consumed == 0 and run.app.topology is not None, 5)
    feed(cluster, 60, seed=2)
    assert wait_until(lambda: run.app.stats.totals.consumed == 60, 20), run.err.getvalue()
    result = run.stop()
    assert result.totals.consumed == 60
    assert len(cluster.records("processed-user-login")) == result.totals.processed > 0


def test_offset_reset_latest_keeps_a_group_s_committed_offsets(cluster: MemoryCluster) -> None:
    feed(cluster, 100, seed=1)
    first = Running(cluster, stop_when_idle_s=0.3)
    first.thread.join(timeout=30)
    feed(cluster, 40, seed=2)
    again = Running(cluster, connection=Connection("memory", offset_reset="latest"))
    assert wait_until(lambda: again.app.stats.totals.consumed == 40, 20), again.err.getvalue()
    assert again.stop().totals.consumed == 40
