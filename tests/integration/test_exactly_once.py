"""Exactly-once mode (``--processing-guarantee exactly-once``) against a real broker.

The verdict, after each run: read back with ``isolation.level=read_committed``, the output,
dead-letter and filtered topics hold every input (partition, offset) exactly once, each in the
topic its record belongs in (kept events in the output, events that are not mobile in the filtered
topic, bad records in the dead-letter topic); and the group's state (``loginpipe.query`` totals and
per-key answers, from the changelogs) equals a recomputation from the input alone (test_state's,
with plain dicts and sets). What is proven:

1. Twenty SIGKILLs at seeded random moments of a two-process group (static members ``a`` and
   ``b``, each restarted at once) while input streams in: nothing lost, nothing twice, the state
   exact.
2. In that same run, a read_uncommitted reader sees what the killed processes' open transactions
   wrote (positions more than once): the isolation level is what keeps it out.
3. The broker is killed mid-transaction and started again, once as soon as the consumer notices
   and once after it gave up on its open transaction: it resumes by itself, exactly once.
4. A zombie (a member frozen past its session timeout while its partitions move on and input
   keeps arriving) is fenced when it wakes: its late transactions abort, nothing of them is seen.

Four runtime bugs these tests found were fixed; each keeps a deterministic regression test:
(A) an aborted transaction holding device-step records left the in-flight count negative, so a
clean stop exited 1; (B) an expelled member with dynamic membership committed its open
transaction anyway (duplicates under read_committed); (C) a member back from an expulsion reused
its stale state (counts lost); (D) kafka-python bumped the producer's epoch by itself after a
send error (a broker back near the transaction timeout), the broker aborted the open
transaction, and the commit that followed reported success (records lost, 3 runs in 11).
"""

from __future__ import annotations

import io
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaConnectionError

from loginpipe.config import EXACTLY_ONCE, PipelineConfig
from loginpipe.core.records import (
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    OutputRecord,
)
from loginpipe.kafka.admin import delete_topics, ensure_topics
from loginpipe.kafka.base import ClientError
from loginpipe.kafka.kafka_python import KafkaPythonBackend, KafkaPythonConsumer, KafkaPythonTransactions
from loginpipe.local.broker import LocalBroker, free_port
from loginpipe.local.generator import GOOD, EventGenerator
from loginpipe.runtime.app import Application
from loginpipe.topics import InternalTopics, TopicSpec
from loginpipe.waiting import wait_until
from tests.helpers import (
    PipelineTopics,
    committed_offsets,
    create_pipeline_topics,
    end_offsets,
    read_topic,
    start_consumer,
)
from tests.integration.test_state import (
    PARTITIONS,
    Expected,
    Feed,
    Workload,
    check_workload,
    group_members,
    make_workload,
    produce,
    query_mismatches,
    recompute,
)

pytestmark = pytest.mark.integration

EXACTLY_ONCE_FLAGS = ("--processing-guarantee", EXACTLY_ONCE, "--commit-interval-ms", "200")
EVENT_TIME = 1_700_000_000.0  # the generator's clock for its bad records: the same bytes every run
ABORTED = re.compile(r"transaction of [\d,]+ outputs aborted: (.*?); reading again")
TRANSACTIONS = re.compile(r"^transactions: [\d,]+ committed .*, ([\d,]+) aborted$", re.MULTILINE)
# Read from the JSON stats records of --log-format json (every figure; a text line has room for few)
COMMITTED_TXNS = re.compile(r'"transactions_committed":(\d+)')
IN_FLIGHT = re.compile(r'"in_flight":(-?\d+)')
FENCED = re.compile(r"UnknownMemberId|IllegalGeneration|FencedInstanceId|ProducerFenced|InvalidProducerEpoch")


# --- Fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def topics(bootstrap: str, topic_name) -> Iterator[PipelineTopics]:
    created = create_pipeline_topics(bootstrap, topic_name, partitions=PARTITIONS)
    yield created
    delete_topics(bootstrap, created.names)


@pytest.fixture
def group(bootstrap: str) -> Iterator[str]:
    """A group of the test's own; the internal topics the consumer creates for it go afterwards."""
    name = f"test-eos-{uuid.uuid4().hex[:8]}"
    yield name
    delete_topics(bootstrap, [spec.name for spec in InternalTopics.of(name).specs()])


@pytest.fixture
def broker(tmp_path: Path, kafka_libs: Path) -> Iterator[LocalBroker]:
    """A broker of the test's own, to kill."""
    own = LocalBroker(home=tmp_path / "kafka", port=free_port(), controller_port=free_port(),
                      heap_mb=384, libs=kafka_libs)
    own.start(quiet=True)
    yield own
    own.stop()


# --- The input, and where each record must land -----------------------------------------------------

def with_generated_bad_records(work: Workload, seed: int, count: int) -> Workload:
    """``work`` plus ``count`` of the generator's bad records at seeded places: every kind it makes
    (invalid JSON, not UTF-8, missing fields, wrong types, bad IPs, timestamps out of range,
    oversized records...), each a dead letter."""
    rng = random.Random(seed)
    records, sources = list(work.records), list(work.sources)
    for bad in EventGenerator(seed=seed, users=500, bad_ratio=1.0).generate(count, clock=lambda: EVENT_TIME):
        assert bad.kind != GOOD
        at = rng.randrange(len(records) + 1)
        records.insert(at, (bad.key, bad.value))
        sources.insert(at, None)
    return Workload(records, sources, work.users, work.devices)


def workload(seed: int, events: int, bad: int) -> tuple[Workload, Expected]:
    """Seeded logins (test_state's: multi-IP users, devices shared across input partitions, a share
    not mobile) with ``bad`` records mixed in (a quarter of them test_state's truncated JSON); and
    the state they must leave."""
    work = make_workload(seed=seed, users=3000, events=events, shared_devices=300, bad=bad // 4)
    work = with_generated_bad_records(work, seed, bad - bad // 4)
    expected = recompute(work.events)
    check_workload(work, expected)
    return work, expected


def destinations(bootstrap: str, topics: PipelineTopics, work: Workload) -> dict[tuple[int, int], str]:
    """Where each input position must land ('output', 'filtered' or 'dlq'), from the input topic
    read back and what each of its records is in the workload."""
    kind = {}
    for (_, value), source in zip(work.records, work.sources, strict=True):
        if source is None:
            kind[value] = "dlq"
        else:
            kind[value] = "output" if source["device_type"].lower() in ("android", "ios") else "filtered"
    inputs = read_topic(bootstrap, topics.input, len(work.records))
    assert len(inputs) == len(work.records)
    return {(r.partition, r.offset): kind[r.value] for r in inputs}


# --- Reading the results back -----------------------------------------------------------------------

def position(record, output_topic: str) -> tuple[int, int]:
    """The input position a record of the output, dead-letter or filtered topic stands for."""
    if record.topic == output_topic:
        value = orjson.loads(record.value)
        return value["source_partition"], value["source_offset"]
    headers = dict(record.headers)
    return int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER])


def landed(bootstrap: str, topics: PipelineTopics, isolation: str = "read_committed") -> dict[str, Counter]:
    """Per destination, how many times each input position is there."""
    found = {}
    for name, topic in (("output", topics.output), ("filtered", topics.filtered), ("dlq", topics.dlq)):
        records = read_topic(bootstrap, topic, 0, isolation=isolation)
        assert all(dict(r.headers)[SOURCE_TOPIC_HEADER] == topics.input.encode()
                   for r in records if r.topic != topics.output)
        found[name] = Counter(position(r, topics.output) for r in records)
    return found


def exactly_once_problems(found: dict[str, Counter], expected: dict[tuple[int, int], str]) -> list[str]:
    """Every way ``found`` differs from each input position once, in its own destination."""
    everywhere = Counter()
    for counts in found.values():
        everywhere.update(counts)
    missing = sorted(expected.keys() - everywhere.keys())
    twice = sorted(p for p, n in everywhere.items() if n > 1)
    unknown = sorted(everywhere.keys() - expected.keys())
    misplaced = sorted((p, name) for name, counts in found.items() for p in counts
                       if p in expected and expected[p] != name)
    problems = []
    for label, items in (("missing", missing), ("more than once", twice), ("not an input position", unknown),
                         ("in the wrong topic", misplaced)):
        if items:
            problems.append(f"{len(items):,} {label}, e.g. {items[:5]}")
    return problems


def isolation_evidence(bootstrap: str, topics: PipelineTopics, committed: dict[str, Counter]
                       ) -> tuple[int, int]:
    """(records, positions seen more than once) that read_uncommitted finds beyond read_committed."""
    uncommitted = landed(bootstrap, topics, isolation="read_uncommitted")
    extra = sum(map(Counter.total, uncommitted.values())) - sum(map(Counter.total, committed.values()))
    everywhere = Counter()
    for counts in uncommitted.values():
        everywhere.update(counts)
    return extra, sum(1 for n in everywhere.values() if n > 1)


class Landed:
    """A read_committed reader kept open on the output, dead-letter and filtered topics: the
    distinct input positions committed there so far, to wait on (the verdict reads afresh)."""

    def __init__(self, bootstrap: str, topics: PipelineTopics) -> None:
        self.output_topic = topics.output
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      isolation_level="read_committed")
        self.consumer.assign([TopicPartition(t, p) for t in (topics.output, topics.dlq, topics.filtered)
                              for p in range(PARTITIONS)])
        self.consumer.seek_to_beginning()
        self.positions: set[tuple[int, int]] = set()

    def count(self) -> int:
        for batch in self.consumer.poll(timeout_ms=300, max_records=50_000).values():
            self.positions.update(position(r, self.output_topic) for r in batch)
        return len(self.positions)

    def close(self) -> None:
        self.consumer.close()


# --- The consumer processes -------------------------------------------------------------------------

class Member:
    """One consumer command of the group (its own process, once started), restarted in place under
    the same name: with ``--group-instance-id`` the same static member and transactional ids. Keeps
    every life's logs."""

    def __init__(self, reaper: list, bootstrap: str, topics: PipelineTopics, group: str, log_dir: Path,
                 name: str, *flags: str) -> None:
        self.args = (reaper, bootstrap, topics, group, log_dir)
        self.name, self.flags = name, flags
        self.lives: list[tuple] = []

    def start(self) -> None:
        life = f"{self.name}-{len(self.lives)}"
        self.lives.append(start_consumer(*self.args, life, *EXACTLY_ONCE_FLAGS, *self.flags))

    @property
    def proc(self):
        return self.lives[-1][0]

    def stdout(self) -> str:
        return self.lives[-1][1].read_text()

    def stderr(self) -> str:
        return self.lives[-1][2].read_text()

    def last_stat(self, pattern: re.Pattern) -> int:
        """The last figure ``pattern`` finds on this life's stats lines (0 before the first)."""
        figures = pattern.findall(self.stdout())
        return int(figures[-1].replace(",", "")) if figures else 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGINT; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)

    def tail(self, chars: int = 2500) -> str:
        """The end of this life's stderr, and that of any earlier life with a traceback."""
        earlier = [f"--- {self.name}-{i} stderr:\n{err.read_text()[-chars:]}"
                   for i, (_, _, err) in enumerate(self.lives[:-1]) if "Traceback" in err.read_text()]
        last = f"--- {self.name}-{len(self.lives) - 1} stderr:\n{self.stderr()[-chars:]}"
        return "\n".join([*earlier, last])


def tails(*members: Member) -> str:
    return "\n" + "\n".join(m.tail() for m in members)


def join_one_by_one(bootstrap: str, group: str, members: list[Member], already: int = 0) -> None:
    """Start each member once the group is stable with the ones before (see test_state's
    ``drain_in_group``: two members joining at once can leave one stuck); ``already`` are in it."""
    for n, member in enumerate(members, already + 1):
        member.start()
        assert wait_until(lambda n=n: group_members(bootstrap, group) == n, 90, interval_s=0.3), \
            f"{member.name} never joined the group" + tails(member)


def wait_drained(bootstrap: str, topics: PipelineTopics, group: str, inputs: int, members: list[Member],
                 timeout_s: float = 150) -> None:
    """Until ``inputs`` distinct input positions have landed (read_committed) and the group's input
    offsets are at the input's end."""
    landed_so_far = Landed(bootstrap, topics)

    def drained() -> bool:
        return (landed_so_far.count() >= inputs
                and committed_offsets(bootstrap, group, topics.input) == end_offsets(bootstrap, topics.input))

    try:
        assert wait_until(drained, timeout_s, interval_s=0.5), \
            f"not drained: {landed_so_far.count():,} of {inputs:,} input positions landed" + tails(*members)
    finally:
        landed_so_far.close()


def stop_all(members: list[Member]) -> None:
    """SIGINT to every member at once (so none takes over a stopping one's partitions); each must
    stop cleanly."""
    for member in members:
        member.proc.send_signal(signal.SIGINT)
    for member in members:
        assert_stopped_cleanly(member, member.proc.wait(timeout=60))


def assert_stopped_cleanly(member: Member, code: int) -> None:
    """Exit code 0 after SIGINT, and no traceback."""
    assert code == 0, f"{member.name} exited {code} on SIGINT" + tails(member)
    assert "Traceback" not in member.stderr(), tails(member)


def assert_exactly_once(bootstrap: str, topics: PipelineTopics, work: Workload, members: list[Member]
                        ) -> dict[str, Counter]:
    """Each input position exactly once, in its destination (read_committed); what was found."""
    found = landed(bootstrap, topics)
    problems = exactly_once_problems(found, destinations(bootstrap, topics, work))
    assert not problems, "read_committed: " + "; ".join(problems) + tails(*members)
    return found


def assert_state_exact(bootstrap: str, group: str, work: Workload, expected: Expected, members: list[Member]
                       ) -> None:
    _, wrong = query_mismatches(bootstrap, group, work, expected)
    assert not wrong, f"{len(wrong)} state mismatches, the first: {wrong[:5]}" + tails(*members)


# --- 1 and 2. Twenty SIGKILLs -----------------------------------------------------------------------

PRELOAD, FEED_RATE = 30_000, 400
# (records streamed while killing, kills) per client: the confluent run repeats the experiment at
# half the length (30 s of stream, ten kills), which keeps make test within its 20 minutes.
STREAMED_AND_KILLS = {"kafka-python": (24_000, 20), "confluent": (12_000, 10)}


@pytest.mark.timeout(360)
def test_twenty_sigkills_leave_every_input_exactly_once_and_the_state_exact(
        bootstrap: str, topics: PipelineTopics, group: str, tmp_path: Path, reaper,
        kafka_client: str) -> None:
    """Two processes in one group, static members ``a`` and ``b``: a restarted member's producer
    (same transactional id) fences its predecessor's at once, aborting the transaction it left
    open, and the member takes its partitions back without a rebalance. 30k records preloaded,
    24k more streamed at 400/s while a seeded RNG SIGKILLs ``a`` or ``b`` every 0.8-4 s and
    restarts it at once. Then: exactly once, the state exact, and (2.) what the killed processes'
    open transactions wrote is in the log for a read_uncommitted reader. (On confluent: 12k
    streamed, ten kills.)"""
    streamed, kills_wanted = STREAMED_AND_KILLS[kafka_client]
    work, expected = workload(seed=31, events=PRELOAD + streamed - 1500, bad=1500)
    produce(bootstrap, topics.input, work.records[:PRELOAD])
    flags = ("--filtered-topic", topics.filtered, "--max-poll-records", "500", "--stats-interval", "2",
             "--client", kafka_client)
    members = [Member(reaper, bootstrap, topics, group, tmp_path, name, "--group-instance-id", name, *flags)
               for name in ("a", "b")]
    join_one_by_one(bootstrap, group, members)
    feed = Feed(bootstrap, topics.input, work.records, PRELOAD, rate=FEED_RATE)
    feed.start()
    rng = random.Random(32)
    kills = []  # (victim, input records sent so far, still streaming)
    try:
        for _ in range(kills_wanted):
            time.sleep(rng.uniform(0.8, 4.0))  # when to kill is the experiment, not a wait
            victim = rng.choice(members)
            kills.append((victim.name, feed.sent, feed.is_alive()))
            victim.kill()
            victim.start()
        feed.join(timeout=120)
    finally:
        feed.halt.set()
        feed.join(timeout=30)
    assert feed.error is None and feed.sent == len(work.records), feed.error
    assert all(streaming for *_, streaming in kills), f"the stream ended before the last kill: {kills}"

    wait_drained(bootstrap, topics, group, len(work.records), members)
    stop_all(members)
    found = assert_exactly_once(bootstrap, topics, work, members)
    assert_state_exact(bootstrap, group, work, expected, members)

    # 2. The isolation is what keeps the killed transactions' writes out.
    extra, repeated = isolation_evidence(bootstrap, topics, found)
    print(f"\n{kills_wanted} kills {dict(Counter(name for name, *_ in kills))}; {len(work.records):,} "
          f"inputs, each once read_committed; read_uncommitted: {extra:,} more records, {repeated:,} "
          "positions more than once")
    assert extra > 0 and repeated > 0, "read_uncommitted sees nothing aborted: the kills proved nothing"


# --- 3. The broker killed mid-transaction -----------------------------------------------------------

@pytest.mark.parametrize("restart_when", ["noticed", "aborted"])
def test_a_broker_killed_mid_transaction_and_restarted_loses_nothing_and_repeats_nothing(
        broker: LocalBroker, topic_name, tmp_path: Path, reaper, restart_when: str) -> None:
    """One process draining a backlog (a transaction is open nearly all the time); the broker is
    SIGKILLed, and started again ``restart_when``: 'noticed', as soon as the consumer says it is
    unreachable (the open transaction can still commit when it is back); 'aborted', once the
    consumer gave up on that transaction (its commit times out after 30 s: the next producer's
    init aborts it, and the state is rebuilt from the changelogs). More input arrives after.
    The consumer resumes by itself, and stops cleanly on SIGINT."""
    bootstrap = broker.bootstrap_servers
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=PARTITIONS)
    group = f"test-eos-outage-{uuid.uuid4().hex[:8]}"
    work, expected = workload(seed=41, events=29_000, bad=1000)
    backlog = 20_000
    produce(bootstrap, topics.input, work.records[:backlog])
    member = Member(reaper, bootstrap, topics, group, tmp_path, "alone", "--filtered-topic", topics.filtered,
                    "--max-poll-records", "200", "--stats-interval", "1")
    member.start()
    assert wait_until(lambda: sum(end_offsets(bootstrap, topics.output).values()) > 2000, 90), tails(member)
    broker.kill()
    if restart_when == "noticed":
        assert wait_until(lambda: "unreachable" in member.stderr(), 30), tails(member)
    else:
        assert wait_until(lambda: ABORTED.search(member.stderr()), 90), tails(member)
    assert member.proc.poll() is None, "the consumer stopped when the broker went away" + tails(member)
    broker.start(quiet=True)
    produce(bootstrap, topics.input, work.records[backlog:])

    wait_drained(bootstrap, topics, group, len(work.records), [member])
    assert_stopped_cleanly(member, member.stop())
    found = assert_exactly_once(bootstrap, topics, work, [member])
    assert_state_exact(bootstrap, group, work, expected, [member])
    summary = TRANSACTIONS.search(member.stdout())
    assert summary, member.stdout()[-2000:]
    if restart_when == "aborted":
        assert int(summary.group(1).replace(",", "")) >= 1, summary.group(0)
    extra, repeated = isolation_evidence(bootstrap, topics, found)
    print(f"\n{summary.group(0)}; aborts: {ABORTED.findall(member.stderr())}; read_uncommitted: {extra:,} "
          f"more records, {repeated:,} positions more than once")


# --- 4. A zombie ------------------------------------------------------------------------------------

def freeze_past_takeover(bootstrap: str, topics: PipelineTopics, group: str, zombie: Member,
                         survivor: Member) -> tuple[float, float]:
    """SIGSTOP the zombie; once the coordinator has expelled it (session timeout, 10 s) and the
    survivor has committed input beyond the offsets of that moment on every partition (so it
    serves the zombie's old partitions, and input that arrived meanwhile), SIGCONT it. Returns
    (seconds to the expulsion, seconds frozen)."""
    zombie.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    assert wait_until(lambda: group_members(bootstrap, group) == 1, 40, interval_s=0.3), \
        "the frozen member was never expelled" + tails(survivor)
    expelled_s = time.monotonic() - frozen_at
    at_expulsion = committed_offsets(bootstrap, group, topics.input)
    assert wait_until(lambda: all(offset > at_expulsion[p] for p, offset in
                                  committed_offsets(bootstrap, group, topics.input).items()), 30), \
        f"the survivor never took every partition over from {at_expulsion}" + tails(survivor)
    zombie.proc.send_signal(signal.SIGCONT)
    return expelled_s, time.monotonic() - frozen_at


@pytest.mark.timeout(300)
def test_a_frozen_member_woken_after_its_partitions_moved_is_fenced(
        bootstrap: str, topics: PipelineTopics, group: str, tmp_path: Path, reaper) -> None:
    """Two static members, input streaming. The zombie is frozen (SIGSTOP) mid-stream and woken
    (SIGCONT) once the survivor serves its partitions and the input that arrived meanwhile: it
    comes back with a transaction still open (the broker's transaction timeout, 15 s, has not
    passed) and outputs of partitions it no longer owns in hand. Its late commits are refused,
    its transactions abort, and nothing of them is seen.

    Static membership (``--group-instance-id``), and why: the transactional ids differ (each member
    has its own), so no ``init`` fences the zombie's producer; what fences it is the group metadata
    its offsets carry (KIP-447). A frozen static member is expelled at the session timeout just as
    a dynamic one, and its instance id goes with every commit: the coordinator refuses any commit
    of an instance that is not the current member. A dynamic member has no such id, and once
    kafka-python has reset its generation (-1, no member id) the broker checks nothing: there only
    the runtime's own abort of a lost assignment's transaction keeps the zombie's writes out (bug
    B, whose regression test freezes a dynamic member)."""
    work, expected = workload(seed=51, events=31_000, bad=1000)
    preload = 4000
    produce(bootstrap, topics.input, work.records[:preload])
    flags = ("--filtered-topic", topics.filtered, "--max-poll-records", "200", "--stats-interval", "1",
             "--log-format", "json")
    zombie, survivor = (Member(reaper, bootstrap, topics, group, tmp_path, name, "--group-instance-id", name,
                               *flags) for name in ("zombie", "survivor"))
    join_one_by_one(bootstrap, group, [zombie, survivor])
    feed = Feed(bootstrap, topics.input, work.records, preload, rate=600)
    feed.start()
    try:
        assert wait_until(lambda: zombie.last_stat(COMMITTED_TXNS) >= 5, 60), tails(zombie)
        expelled_s, frozen_s = freeze_past_takeover(bootstrap, topics, group, zombie, survivor)
        assert feed.is_alive(), "the stream ended while the zombie was frozen"
        aborted = wait_until(lambda: ABORTED.findall(zombie.stderr()), 60)
        assert aborted, "the zombie aborted no transaction after it woke" + tails(zombie)
        assert all(FENCED.search(reason) for reason in aborted), \
            f"the zombie's transactions aborted, but not all fenced: {aborted}" + tails(zombie)
        feed.join(timeout=120)
    finally:
        feed.halt.set()
        feed.join(timeout=30)
    assert feed.error is None and feed.sent == len(work.records), feed.error

    wait_drained(bootstrap, topics, group, len(work.records), [zombie, survivor])
    stop_all([zombie, survivor])
    found = assert_exactly_once(bootstrap, topics, work, [zombie, survivor])
    assert_state_exact(bootstrap, group, work, expected, [zombie, survivor])
    extra, repeated = isolation_evidence(bootstrap, topics, found)
    print(f"\nexpelled after {expelled_s:.1f}s, woken after {frozen_s:.1f}s; the zombie's aborts: {aborted}; "
          f"read_uncommitted: {extra:,} more records, {repeated:,} positions more than once")
    assert extra > 0, "read_uncommitted sees nothing the zombie wrote: was it ever fenced mid-transaction?"


# --- Bug A (fixed): an abort left the in-flight count negative --------------------------------------

class RefusingTransactions(KafkaPythonTransactions):
    """A transactional producer whose commit fails, as one the broker refuses, when ``refuse``
    says so for the offsets it is given."""

    def __init__(self, producer: KafkaPythonTransactions, refuse) -> None:
        super().__init__(producer._producer)
        self.refuse = refuse

    def commit(self, offsets: dict, group_metadata: object, timeout_s: float) -> None:
        if self.refuse(offsets):
            raise ClientError("refused by the test")
        super().commit(offsets, group_metadata, timeout_s)


class RefusesOneDeviceStepCommit(KafkaPythonBackend):
    """The real backend, but the first transaction holding offsets of the repartition topic (records
    the device step read) fails to commit: one abort, at a chosen moment."""

    def __init__(self, repartition_topic: str) -> None:
        self.repartition_topic = repartition_topic
        self.refused = 0

    def _refuse(self, offsets: dict) -> bool:
        if self.refused == 0 and any(tp.topic == self.repartition_topic for tp in offsets):
            self.refused += 1
            return True
        return False

    def transactional_producer(self, config, transactional_id: str) -> KafkaPythonTransactions:
        return RefusingTransactions(super().transactional_producer(config, transactional_id), self._refuse)


def test_an_aborted_transaction_with_device_step_records_leaves_nothing_in_flight(
        bootstrap: str, topics: PipelineTopics, group: str) -> None:
    """In-process, on the real backend with one commit refused: the abort is handled (exactly once,
    the state exact), and the run then stops with nothing unacknowledged (exit code 0). Before the
    fix, the rollback took the device step's records (never counted as read) off the records read:
    'the outputs of -1,760 records unacknowledged', exit code 1."""
    work, expected = workload(seed=61, events=3000, bad=100)
    produce(bootstrap, topics.input, work.records)
    backend = RefusesOneDeviceStepCommit(InternalTopics.of(group).repartition)
    config = PipelineConfig(connection=bootstrap, group_id=group, stop_when_idle_s=3.0, quiet=True,
                            processing_guarantee=EXACTLY_ONCE, commit_interval_ms=200,
                            **topics.config(filtered=True))
    err = io.StringIO()
    result = Application(config, out=io.StringIO(), err=err, backend=backend).run(install_signals=False)
    assert not result.failed, err.getvalue()
    assert backend.refused == 1 and result.totals.transactions_aborted == 1, err.getvalue()
    problems = exactly_once_problems(landed(bootstrap, topics), destinations(bootstrap, topics, work))
    assert not problems, "read_committed: " + "; ".join(problems) + err.getvalue()[-2000:]
    _, wrong = query_mismatches(bootstrap, group, work, expected)
    assert not wrong, wrong[:5]
    assert result.unacknowledged == 0, err.getvalue()[-1500:]


# --- Bug B (fixed): an expelled dynamic member committed its open transaction -----------------------

@pytest.mark.timeout(300)
def test_a_dynamic_member_expelled_mid_transaction_does_not_commit_it(
        bootstrap: str, topics: PipelineTopics, group: str, tmp_path: Path, reaper) -> None:
    """Deterministic: the zombie (dynamic membership) commits only when a rebalance or its stop
    makes it (``--commit-interval-ms 60000 --commit-every 1000000``), so the only commit it could
    try after waking is the rebalance's, once the client knows it was expelled (generation -1,
    no member id: a transactional offset commit the broker does not check). It is frozen as soon
    as its stats show input in its open transaction, and woken once the survivor serves every
    partition: the transaction is then about 12 s old, under the broker's 15 s timeout. It must
    abort it. Before the fix, kafka-python's on_partitions_lost reached the revoke path, which
    committed it: every record of it twice under read_committed (3,636 to 3,877 in 5 runs)."""
    work, expected = workload(seed=71, events=12_000, bad=300)
    common = ("--filtered-topic", topics.filtered, "--max-poll-records", "200")
    zombie = Member(reaper, bootstrap, topics, group, tmp_path, "zombie", *common, "--commit-interval-ms",
                    "60000", "--commit-every", "1000000", "--stats-every", "50", "--log-format", "json")
    survivor = Member(reaper, bootstrap, topics, group, tmp_path, "survivor", *common,
                      "--stats-interval", "1")
    join_one_by_one(bootstrap, group, [zombie, survivor])
    feed = Feed(bootstrap, topics.input, work.records, 0, rate=600)
    feed.start()
    try:
        assert wait_until(lambda: zombie.last_stat(IN_FLIGHT) > 0, 30), tails(zombie)
        freeze_past_takeover(bootstrap, topics, group, zombie, survivor)
        assert wait_until(lambda: group_members(bootstrap, group) == 2, 40, interval_s=0.3), \
            "the zombie never rejoined" + tails(zombie)
        assert ABORTED.search(zombie.stderr()), \
            "the zombie's open transaction was not aborted" + tails(zombie)
        assert_stopped_cleanly(zombie, zombie.stop())  # the survivor drains the rest alone
        feed.join(timeout=120)
    finally:
        feed.halt.set()
        feed.join(timeout=30)
    assert feed.error is None and feed.sent == len(work.records), feed.error
    wait_drained(bootstrap, topics, group, len(work.records), [zombie, survivor])
    assert_stopped_cleanly(survivor, survivor.stop())
    assert_exactly_once(bootstrap, topics, work, [zombie, survivor])
    assert_state_exact(bootstrap, group, work, expected, [zombie, survivor])


# --- Bug C (fixed): a member back from an expulsion reused its stale state --------------------------

class Freezable(KafkaPythonBackend):
    """The real backend, whose consumers can be frozen as by SIGSTOP (their heartbeats fail, so the
    coordinator expels the member at the session timeout, and their worker blocks in ``poll``)
    and thawed in a chosen order: heartbeats first, so that the client learns it was expelled
    (its generation reset) before the worker polls again."""

    def __init__(self) -> None:
        self.polling, self.heartbeating = threading.Event(), threading.Event()
        self.polling.set()
        self.heartbeating.set()
        self.consumers: list[KafkaPythonConsumer] = []

    def consumer(self, config, index: int) -> KafkaPythonConsumer:
        consumer = super().consumer(config, index)
        coordinator = consumer._consumer._coordinator  # private: where heartbeats are sent
        send_heartbeat, poll = coordinator._send_heartbeat_request, consumer.poll

        async def gated_heartbeat():
            if not self.heartbeating.is_set():
                raise KafkaConnectionError("frozen by the test")
            return await send_heartbeat()

        def gated_poll(timeout_ms: int, max_records: int) -> dict:
            self.polling.wait()
            return poll(timeout_ms, max_records)

        coordinator._send_heartbeat_request = gated_heartbeat
        consumer.poll = gated_poll
        self.consumers.append(consumer)
        return consumer

    def freeze(self) -> None:
        self.polling.clear()
        self.heartbeating.clear()

    def expelled(self) -> bool:
        """Every consumer knows it was expelled: its generation is reset (-1, no member id)."""
        return all(consumer.group_metadata().generation_id == -1 for consumer in self.consumers)


@pytest.mark.timeout(300)
def test_a_member_back_from_an_expulsion_does_not_reuse_its_stale_state(
        bootstrap: str, topics: PipelineTopics, group: str, tmp_path: Path, reaper) -> None:
    """Deterministic: the zombie runs in-process on a ``Freezable`` backend (static member
    ``zombie``), frozen idle (the input so far drained: it wakes with no transaction to abort, so
    no rollback rebuilds its states); the survivor (static member ``survivor``, a process) serves
    every partition while more input arrives; thawed heartbeats first, the zombie rejoins before
    it polls again and gets its own partitions back (the assignor orders static members by
    instance id); then the last part of the input. Before the fix, the states it held before the
    freeze served on from the survivor's offsets: 6,302 events counted of 7,481 (and in the
    zombie test above, with input streaming, 3 runs in 5 lost 199 to 201)."""
    work, expected = workload(seed=81, events=8700, bad=300)
    parts = (3000, 6000, len(work.records))
    survivor = Member(reaper, bootstrap, topics, group, tmp_path, "survivor",
                      "--group-instance-id", "survivor", "--filtered-topic", topics.filtered)
    backend = Freezable()
    config = PipelineConfig(connection=bootstrap, group_id=group, group_instance_id="zombie",
                            quiet=True, processing_guarantee=EXACTLY_ONCE, commit_interval_ms=200,
                            **topics.config(filtered=True))
    err = io.StringIO()
    zombie = Application(config, out=io.StringIO(), err=err, backend=backend)
    ran: list = []
    thread = threading.Thread(target=lambda: ran.append(zombie.run(install_signals=False)), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: group_members(bootstrap, group) == 1, 90, interval_s=0.3), err.getvalue()
        join_one_by_one(bootstrap, group, [survivor], already=1)
        produce(bootstrap, topics.input, work.records[:parts[0]])
        wait_drained(bootstrap, topics, group, parts[0], [survivor])
        backend.freeze()
        assert wait_until(lambda: group_members(bootstrap, group) == 1, 40, interval_s=0.3), \
            "the frozen member was never expelled" + tails(survivor)
        produce(bootstrap, topics.input, work.records[parts[0]:parts[1]])
        wait_drained(bootstrap, topics, group, parts[1], [survivor])
        backend.heartbeating.set()
        assert wait_until(backend.expelled, 30), "the zombie never learnt it was expelled"
        backend.polling.set()
        assert wait_until(lambda: group_members(bootstrap, group) == 2, 40, interval_s=0.3), \
            "the zombie never rejoined" + err.getvalue()
        produce(bootstrap, topics.input, work.records[parts[1]:])
        wait_drained(bootstrap, topics, group, parts[2], [survivor])
    finally:
        backend.polling.set()
        backend.heartbeating.set()
        zombie.begin_stop()
        thread.join(timeout=60)
    assert ran and not ran[0].failed, err.getvalue()
    assert_stopped_cleanly(survivor, survivor.stop())
    problems = exactly_once_problems(landed(bootstrap, topics), destinations(bootstrap, topics, work))
    assert not problems, "read_committed: " + "; ".join(problems) + tails(survivor) + err.getvalue()
    assert "expelled" in err.getvalue(), "the zombie never noticed it was expelled: " + err.getvalue()
    _, wrong = query_mismatches(bootstrap, group, work, expected)
    assert not wrong, f"{len(wrong)} state mismatches, the first: {wrong[:3]}" + err.getvalue()


# --- Bug D (fixed): kafka-python bumped the epoch itself, and the commit "succeeded" empty ---------

def bump_during_next_commit(producer: KafkaPythonTransactions) -> list[int]:
    """Make kafka-python bump the producer's epoch (KIP-360, what it does by itself after some send
    errors, e.g. a broker back near the transaction timeout) right after the next commit began,
    before its EndTxn is sent: the broker aborts the transaction, and kafka-python, seeing no
    transaction started any more, completes the commit without sending it. Returns a list that
    counts the bumps made."""
    manager = producer._producer._transaction_manager  # private: the client's transaction state
    begin_commit, bumps = manager.begin_commit, []

    def begin_commit_then_bump():
        if bumps:
            return begin_commit()
        producer.flush(10.0)  # the bump would wait for batches in flight, which wait for it
        before = manager.producer_id_and_epoch.epoch
        with manager._lock:  # the sender cannot take the EndTxn in between
            result = begin_commit()
            manager.bump_producer_id_and_epoch()
        bumps.append(1)
        producer._producer._sender.wakeup()
        bumped = wait_until(lambda: manager.producer_id_and_epoch.epoch != before, 20)
        assert bumped, "the epoch bump did not complete"
        return result

    manager.begin_commit = begin_commit_then_bump
    return bumps


def test_a_transaction_whose_epoch_was_bumped_reports_its_abort(bootstrap: str, topic_name) -> None:
    """On the real backend: records sent in a transaction, and the epoch bumped as it commits.
    The commit must fail (the broker aborted the transaction), and a read_committed reader sees
    none of the records; the next transaction on the same producer commits and is seen. Before
    the fix, the commit returned as if it had succeeded: the records were silently lost."""
    topic = topic_name("bumped")
    ensure_topics(bootstrap, [TopicSpec(topic, "test", 1)], partitions=1)
    producer = KafkaPythonBackend().transactional_producer(PipelineConfig(connection=bootstrap),
                                                          f"test-bump-{uuid.uuid4().hex[:6]}")
    try:
        producer.init(10.0)
        bumps = bump_during_next_commit(producer)
        producer.begin()
        lost = [OutputRecord(topic, None, b"aborted-%d" % i, partition=0) for i in range(20)]
        assert not any(delivery.failed() for delivery in producer.send_batch(lost))
        with pytest.raises(ClientError, match="epoch was bumped"):
            producer.commit({}, None, 10.0)
        assert bumps
        producer.begin()
        kept = [OutputRecord(topic, None, b"committed-%d" % i, partition=0) for i in range(5)]
        producer.send_batch(kept)
        producer.commit({}, None, 10.0)
    finally:
        producer.close(5.0)
    seen = [record.value for record in read_topic(bootstrap, topic, 25, isolation="read_committed")]
    assert seen == [record.value for record in kept]
    everything = read_topic(bootstrap, topic, 25, isolation="read_uncommitted")
    assert len(everything) == 25, "the aborted records never reached the log: the test proves nothing"


class BumpsOneEpoch(KafkaPythonBackend):
    """The real backend, but the epoch of the first transactional producer is bumped as its
    first transaction commits, input offsets and all."""

    def __init__(self) -> None:
        self.bumps: list[int] = []

    def transactional_producer(self, config, transactional_id: str) -> KafkaPythonTransactions:
        producer = super().transactional_producer(config, transactional_id)
        if not self.bumps:
            self.bumps = bump_during_next_commit(producer)
        return producer


def test_a_pipeline_whose_epoch_is_bumped_mid_transaction_loses_nothing(
        bootstrap: str, topics: PipelineTopics, group: str) -> None:
    """In-process on the real backend: one epoch bump under an open transaction (its offsets sent)
    is one abort and a rollback; every input lands exactly once and the state is exact. Before the
    fix the commit reported success and the transaction's input was never processed again."""
    work, expected = workload(seed=91, events=3000, bad=100)
    produce(bootstrap, topics.input, work.records)
    backend = BumpsOneEpoch()
    config = PipelineConfig(connection=bootstrap, group_id=group, stop_when_idle_s=3.0, quiet=True,
                            processing_guarantee=EXACTLY_ONCE, commit_interval_ms=200,
                            **topics.config(filtered=True))
    err = io.StringIO()
    result = Application(config, out=io.StringIO(), err=err, backend=backend).run(install_signals=False)
    assert not result.failed, err.getvalue()
    assert backend.bumps == [1] and result.totals.transactions_aborted == 1, err.getvalue()
    assert "epoch was bumped" in err.getvalue(), err.getvalue()
    problems = exactly_once_problems(landed(bootstrap, topics), destinations(bootstrap, topics, work))
    assert not problems, "read_committed: " + "; ".join(problems) + err.getvalue()[-2000:]
    _, wrong = query_mismatches(bootstrap, group, work, expected)
    assert not wrong, wrong[:5]
