"""Exactly-once on the in-memory Kafka: outputs and offsets commit together, an aborted
transaction leaves nothing behind (outputs, offsets or state), a fenced producer is replaced, a
hand-over commits first. The broker's own part (markers, read_committed, fencing of a frozen
member) is proven in tests/integration/test_exactly_once.py."""

from __future__ import annotations

from loginpipe.kafka.memory import MemoryCluster, MemoryTransactions
from loginpipe.topics import InternalTopics
from loginpipe.waiting import wait_until
from tests.unit.test_worker import INPUT, OUTPUT, Running, cluster, committed_all, feed, positions

__all__ = ["cluster"]  # the fixture, shared with test_worker

EXACTLY_ONCE = {"processing_guarantee": "exactly-once", "commit_interval_ms": 50}
REPARTITION = InternalTopics.of("user-login-group").repartition


def settled(cluster: MemoryCluster) -> bool:
    """Both steps committed everything: the input, and the repartition topic the device step reads."""
    return committed_all(cluster) and (cluster.committed_offsets("user-login-group", REPARTITION)
                                       == cluster.end_offsets(REPARTITION))


def drained(cluster: MemoryCluster, **settings):
    run = Running(cluster, stop_when_idle_s=0.5, **{**EXACTLY_ONCE, **settings})
    run.thread.join(timeout=60)
    assert run.result is not None, run.err.getvalue()
    return run


def test_outputs_and_offsets_commit_together_exactly_once(cluster) -> None:
    feed(cluster, 400)
    run = drained(cluster, max_poll_records=40)
    totals = run.result.totals
    assert totals.consumed == 400 == totals.processed + totals.filtered + totals.dead_lettered
    assert totals.transactions_committed >= 2 and totals.transactions_aborted == 0
    written = positions(cluster)
    assert len(written) == totals.processed + totals.dead_lettered and max(written.values()) == 1
    assert committed_all(cluster)
    assert cluster.transactions_committed == totals.transactions_committed
    assert "transactions: " in run.out.getvalue()


def test_nothing_is_visible_before_the_transaction_commits(cluster) -> None:
    feed(cluster, 300)
    run = Running(cluster, **{**EXACTLY_ONCE, "commit_interval_ms": 600_000, "commit_every_records": 10**6})
    assert wait_until(lambda: run.app.stats.read == 300, 10)
    assert cluster.records(OUTPUT) == [] and cluster.transactions_committed == 0
    assert set(cluster.committed_offsets("user-login-group", INPUT).values()) == {0}
    result = run.stop()  # the stop commits
    assert committed_all(cluster) and result.totals.consumed == 300
    assert max(positions(cluster).values()) == 1


def test_an_aborted_transaction_rolls_back_outputs_offsets_and_state(cluster) -> None:
    feed(cluster, 600, seed=4)
    clean = MemoryCluster()
    for name, partitions in cluster.topics.items():
        clean.create_topic(name, len(partitions))
    for record in cluster.records(INPUT):
        clean.produce(INPUT, record.value, record.key, record.partition)
    expected = drained(clean, max_poll_records=50).result

    cluster.fail_commits = 3
    run = drained(cluster, max_poll_records=50)
    totals = run.result.totals
    assert totals.transactions_aborted == 3, run.err.getvalue()
    assert "aborted" in run.err.getvalue()
    assert totals.consumed == 600 and run.result.unacknowledged == 0
    written = positions(cluster)
    assert len(written) == totals.processed + totals.dead_lettered and max(written.values()) == 1
    # the state was rebuilt from committed changelogs only: the answers are the clean run's
    assert run.result.aggregates == expected.aggregates
    assert totals.processed == expected.totals.processed


def test_a_fenced_producer_is_replaced_and_nothing_repeats(cluster) -> None:
    feed(cluster, 300, seed=5)
    run = Running(cluster, **{**EXACTLY_ONCE, "max_poll_records": 30, "group_instance_id": "a"})
    assert wait_until(lambda: run.app.stats.totals.consumed > 0, 10)
    zombie_killer = MemoryTransactions(cluster, "user-login-group-a-0")
    zombie_killer.init(1.0)  # a newer producer of the worker's id: the worker's is fenced
    feed(cluster, 300, seed=6)
    assert wait_until(lambda: settled(cluster), 20), run.err.getvalue()
    result = run.stop()
    assert result.totals.transactions_aborted >= 1 and "ProducerFenced" in run.err.getvalue()
    written = positions(cluster)
    assert max(written.values()) == 1
    assert len(written) == result.totals.processed + result.totals.dead_lettered


def test_a_hand_over_commits_the_open_transaction_first(cluster) -> None:
    feed(cluster, 1000, seed=2)
    first = Running(cluster, **{**EXACTLY_ONCE, "max_poll_records": 50})
    assert wait_until(lambda: first.app.stats.totals.consumed >= 200, 10)
    second = Running(cluster, **{**EXACTLY_ONCE, "max_poll_records": 50})
    feed(cluster, 1000, seed=3)
    assert wait_until(lambda: settled(cluster), 20), first.err.getvalue() + second.err.getvalue()
    results = [first.stop(), second.stop()]
    consumed = [r.totals.consumed for r in results]
    assert all(consumed), f"both members got partitions: {consumed}" + second.err.getvalue()
    assert sum(consumed) == 2000, consumed
    assert max(positions(cluster).values()) == 1


def test_an_outage_holds_the_open_transaction_and_it_commits_once_the_broker_is_back(cluster) -> None:
    feed(cluster, 200, seed=7)
    run = Running(cluster, **{**EXACTLY_ONCE, "max_poll_records": 20, "commit_interval_ms": 1500})
    assert wait_until(lambda: run.app.stats.read == 200, 10)
    cluster.set_available(False)  # before the checkpoint
    assert wait_until(lambda: "unreachable" in run.err.getvalue(), 10), run.err.getvalue()
    assert cluster.transactions_committed == 0 and cluster.records(OUTPUT) == []
    feed(cluster, 200, seed=8)
    cluster.set_available(True)
    assert wait_until(lambda: settled(cluster), 20), run.err.getvalue()
    result = run.stop()
    written = positions(cluster)
    assert max(written.values()) == 1
    assert len(written) == result.totals.processed + result.totals.dead_lettered
    assert result.totals.consumed == 400


def test_an_abort_of_both_steps_records_leaves_nothing_in_flight(cluster) -> None:
    feed(cluster, 300, seed=9)
    run = Running(cluster, **{**EXACTLY_ONCE, "max_poll_records": 30})
    assert wait_until(lambda: settled(cluster), 10)
    cluster.fail_commits_of = REPARTITION  # a transaction holding device-step records aborts
    feed(cluster, 300, seed=10)
    assert wait_until(lambda: settled(cluster) and run.app.stats.totals.transactions_aborted == 1, 20)
    result = run.stop()
    assert result.unacknowledged == 0 and run.app.stats.in_flight == 0
    assert result.totals.consumed == 600 and max(positions(cluster).values()) == 1


def test_an_expelled_member_commits_nothing_of_its_open_transaction_and_drops_its_states(cluster) -> None:
    feed(cluster, 300, seed=11)
    run = Running(cluster, **{**EXACTLY_ONCE, "max_poll_records": 30, "commit_interval_ms": 60_000,
                              "commit_every_records": 10**6})
    assert wait_until(lambda: run.app.stats.read == 300, 10)
    cluster.expel("user-login-group")
    assert wait_until(lambda: "expelled" in run.err.getvalue(), 10), run.err.getvalue()
    assert cluster.transactions_committed == 0, "the open transaction was committed after expulsion"
    assert wait_until(lambda: run.app.stats.totals.transactions_aborted == 1, 10), run.err.getvalue()
    # the abort gave the 300 reads back; they are read again after the rejoin
    assert wait_until(lambda: run.app.stats.read == 300 and run.app.stats.in_flight == 300, 10)
    result = run.stop()  # the stop commits them
    assert result.totals.consumed == 300 and max(positions(cluster).values()) == 1
