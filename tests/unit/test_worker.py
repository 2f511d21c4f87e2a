"""The real runtime (Application, workers, checkpoints, delivery, hand-over, shutdown) on the
in-memory Kafka: no broker, each test in about a second. What only a broker can show (the
client's own behaviour, snappy on disk, a killed broker) is in tests/integration."""

from __future__ import annotations

import io
import threading
from collections import Counter

import orjson
import pytest

from loginpipe.config import PipelineConfig
from loginpipe.core.records import SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER
from loginpipe.errors import UserError
from loginpipe.kafka.base import ClientError
from loginpipe.kafka.memory import MemoryBackend, MemoryCluster
from loginpipe.local.generator import EventGenerator
from loginpipe.runtime.app import Application, RunResult
from loginpipe.waiting import wait_until

INPUT, OUTPUT, DLQ = "user-login", "processed-user-login", "user-login-dlq"


@pytest.fixture
def cluster() -> MemoryCluster:
    cluster = MemoryCluster()
    for name, partitions in ((INPUT, 4), (OUTPUT, 4), (DLQ, 4)):
        cluster.create_topic(name, partitions)
    return cluster


def feed(cluster: MemoryCluster, n: int, seed: int = 1) -> None:
    for record in EventGenerator(seed=seed, users=200, bad_ratio=0.1).generate(n):
        cluster.produce(INPUT, record.value, record.key)


class Running:
    """An Application on the in-memory cluster, run on a thread of the test's."""

    def __init__(self, cluster: MemoryCluster, stuck_after_s: float = 15.0,
                 backend: MemoryBackend | None = None, **settings) -> None:
        self.backend = backend or MemoryBackend(cluster)
        settings = {"summary_topic": None, "metrics_topic": None, "connection": "memory", **settings}
        config = PipelineConfig(quiet=True, **settings)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.app = Application(config, out=self.out, err=self.err, backend=self.backend,
                               health_every_s=0.1, stuck_after_s=stuck_after_s)
        self.result: RunResult | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.app.run(install_signals=False)

    def stop(self) -> RunResult:
        self.app.begin_stop()
        self.thread.join(timeout=30)
        assert self.result is not None, "the application did not stop"
        return self.result


def positions(cluster: MemoryCluster) -> Counter:
    """How often each input (partition, offset) reached the output or dead-letter topic."""
    found: Counter = Counter()
    for record in cluster.records(OUTPUT):
        value = orjson.loads(record.value)
        found[(value["source_partition"], value["source_offset"])] += 1
    for record in cluster.records(DLQ):
        headers = dict(record.headers)
        found[(int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER]))] += 1
    return found


def committed_all(cluster: MemoryCluster, group: str = "user-login-group") -> bool:
    return cluster.committed_offsets(group, INPUT) == cluster.end_offsets(INPUT)


def test_records_flow_to_outputs_and_every_offset_is_committed(cluster) -> None:
    feed(cluster, 400)
    run = Running(cluster, stop_when_idle_s=0.3)
    run.thread.join(timeout=30)
    result = run.result
    totals = result.totals
    assert totals.consumed == 400 == totals.processed + totals.filtered + totals.dead_lettered
    assert totals.dead_lettered > 10 and totals.filtered > 10
    assert len(cluster.records(OUTPUT)) == totals.processed
    assert len(cluster.records(DLQ)) == totals.dead_lettered
    assert max(positions(cluster).values()) == 1
    written = positions(cluster)
    assert len(written) == totals.processed + totals.dead_lettered
    assert committed_all(cluster) and result.unacknowledged == 0


def test_nothing_is_counted_or_committed_before_the_outputs_are_acknowledged(cluster) -> None:
    cluster.holding = True
    feed(cluster, 300)
    run = Running(cluster)
    assert wait_until(lambda: run.app.stats.read == 300, 10)
    assert run.app.stats.totals.consumed == 0 and run.app.stats.in_flight == 300
    assert set(cluster.committed_offsets("user-login-group", INPUT).values()) == {0}
    assert cluster.records(OUTPUT) == []
    cluster.release()
    assert wait_until(lambda: committed_all(cluster), 10)
    result = run.stop()
    assert result.totals.consumed == 300 and result.unacknowledged == 0


def test_a_failed_delivery_replaces_the_producer_and_nothing_is_lost(cluster) -> None:
    cluster.holding = True
    feed(cluster, 300)
    run = Running(cluster)
    assert wait_until(lambda: run.app.stats.read == 300, 10)
    assert cluster.fail_pending(ClientError("Expiring 40 record(s): 30000 ms has passed")) > 0
    assert wait_until(lambda: len(run.backend.producers) == 2, 10), run.err.getvalue()
    cluster.release()
    assert wait_until(lambda: committed_all(cluster), 10), run.err.getvalue()
    result = run.stop()
    assert "replacing it" in run.err.getvalue()
    totals = result.totals
    assert totals.consumed == 300 and totals.resent > 0
    written = positions(cluster)
    assert len(written) == totals.processed + totals.dead_lettered and max(written.values()) == 1


def test_backpressure_pauses_reading_and_resumes(cluster) -> None:
    cluster.holding = True
    feed(cluster, 500)
    run = Running(cluster, max_in_flight=50, max_poll_records=20)
    assert wait_until(lambda: "reading paused" in run.err.getvalue(), 10)
    read = run.app.stats.read
    assert 50 < read <= 50 + 20, "it stops reading within one batch of the limit"
    assert not wait_until(lambda: run.app.stats.read > read, 0.5), "paused: nothing more is read"
    cluster.release()
    assert wait_until(lambda: committed_all(cluster), 10)
    assert run.stop().totals.consumed == 500


def test_revoked_partitions_are_handed_over_without_duplicates(cluster) -> None:
    feed(cluster, 1000, seed=2)
    first = Running(cluster, max_poll_records=50)
    assert wait_until(lambda: first.app.stats.totals.consumed >= 200, 10)
    second = Running(cluster, max_poll_records=50)
    feed(cluster, 1000, seed=3)
    assert wait_until(lambda: committed_all(cluster), 20)
    results = [first.stop(), second.stop()]
    assert all(r.totals.consumed > 0 for r in results), "both members got partitions"
    assert sum(r.totals.consumed for r in results) == 2000
    assert max(positions(cluster).values()) == 1, "the new owner started where the old one stopped"


def test_an_outage_warns_and_the_worker_resumes_by_itself(cluster) -> None:
    feed(cluster, 100)
    run = Running(cluster)
    assert wait_until(lambda: committed_all(cluster), 10)
    cluster.set_available(False)
    feed(cluster, 100, seed=4)
    assert wait_until(lambda: "unreachable" in run.err.getvalue(), 10)
    assert run.thread.is_alive()
    cluster.set_available(True)
    assert wait_until(lambda: committed_all(cluster), 10), run.err.getvalue()
    result = run.stop()
    assert "reachable again" in run.err.getvalue() and result.totals.consumed == 200


def test_shutdown_waits_for_acknowledgements_then_commits(cluster) -> None:
    cluster.holding = True
    feed(cluster, 200)
    run = Running(cluster)
    assert wait_until(lambda: run.app.stats.read == 200, 10)
    run.app.begin_stop()
    cluster.release()
    result = run.stop()
    assert result.unacknowledged == 0 and committed_all(cluster)


def test_a_stop_that_cannot_finish_is_bounded_and_commits_nothing_unacknowledged(cluster) -> None:
    cluster.holding = True
    feed(cluster, 200)
    run = Running(cluster, shutdown_timeout_s=0.5)
    assert wait_until(lambda: run.app.stats.read == 200, 10)
    result = run.stop()
    assert result.unacknowledged == 200
    assert set(cluster.committed_offsets("user-login-group", INPUT).values()) == {0}
    assert " ERROR   stopped after 0.5s with the outputs of 200 records unacknowledged" in run.err.getvalue()


def test_a_worker_that_never_gets_partitions_says_so(cluster) -> None:
    cluster.assigning = False
    feed(cluster, 10)
    run = Running(cluster, stuck_after_s=0.3)
    assert wait_until(lambda: "no partition assignment" in run.err.getvalue(), 10)
    assert "no group coordinator found yet" in run.err.getvalue()
    cluster.assigning = True
    run.stop()


def test_a_producer_that_cannot_start_is_a_one_line_user_error(cluster) -> None:
    backend = MemoryBackend(cluster)
    backend.fail_producer_creation = True
    config = PipelineConfig(connection="memory", quiet=True, summary_topic=None, metrics_topic=None)
    app = Application(config, out=io.StringIO(), err=io.StringIO(), backend=backend)
    with pytest.raises(UserError, match="cannot start a producer at memory"):
        app.run(install_signals=False)
