"""The consumer pipeline against a real broker: accounting, outputs, dead letters, aggregates,
compression, restarts, crashes, a shared group, Ctrl+C and broker trouble."""

from __future__ import annotations

import signal
import threading
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from loginpipe.core import contracts
from loginpipe.core.events import REASONS
from loginpipe.core.records import (
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
)
from loginpipe.kafka.admin import delete_topics
from loginpipe.local.broker import LocalBroker, free_port
from loginpipe.local.generator import GOOD, Generated
from loginpipe.state.stores import DEFAULT_MAX_VALUES_PER_KEY
from loginpipe.waiting import wait_until
from tests.helpers import (
    committed_offsets,
    create_pipeline_topics,
    end_offsets,
    generated,
    preload,
    read_topic,
    run_cli,
    run_pipeline,
    start_consumer,
    summary_counts,
)

pytestmark = pytest.mark.integration

output_schema = contracts.validator(contracts.OUTPUT_SCHEMA)


@pytest.fixture
def topics(bootstrap: str, topic_name):
    created = create_pipeline_topics(bootstrap, topic_name)
    yield created
    delete_topics(bootstrap, created.names)


def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


def is_kept(record: Generated) -> bool:
    """Independent of the pipeline's code: good and mobile, per the generator's own labels."""
    return record.kind == GOOD and orjson.loads(record.value)["device_type"].lower() in ("android", "ios")


def expected_positions(bootstrap: str, topic: str, records: list[Generated]) -> tuple[set, set, int]:
    """(positions that must be processed, positions that must be dead-lettered, filtered count)."""
    kind_of = {r.value: r for r in records}
    processed, dead, filtered = set(), set(), 0
    for record in read_topic(bootstrap, topic, len(records)):
        source = kind_of[record.value]
        if source.kind != GOOD:
            dead.add((record.partition, record.offset))
        elif is_kept(source):
            processed.add((record.partition, record.offset))
        else:
            filtered += 1
    return processed, dead, filtered


def output_positions(records) -> list[tuple[int, int]]:
    return [(r["source_partition"], r["source_offset"]) for r in (orjson.loads(x.value) for x in records)]


def dlq_positions(records) -> list[tuple[int, int]]:
    return [(int(dict(r.headers)[SOURCE_PARTITION_HEADER]), int(dict(r.headers)[SOURCE_OFFSET_HEADER]))
            for r in records]


def test_drain_accounts_for_every_record_and_aggregates_are_right(bootstrap: str, topics,
                                                                  kafka_client: str) -> None:
    records = generated(20_000, seed=5, bad_ratio=0.05)
    preload(bootstrap, topics.input, records)
    result = run_pipeline(bootstrap, topics, group(), threads=2, client=kafka_client)
    t = result.totals
    assert t.consumed == 20_000 == t.processed + t.filtered + t.dead_lettered
    assert t.dead_lettered == sum(1 for r in records if r.kind != GOOD)
    assert t.processed == sum(1 for r in records if is_kept(r))

    outputs = read_topic(bootstrap, topics.output, t.processed)
    assert len(outputs) == t.processed
    for record in outputs:
        value = orjson.loads(record.value)
        output_schema(value)  # raises when the record breaks the output contract
        assert value["device_type"] in ("android", "ios")
        assert record.key == value["user_id"].encode()
        # Where the Java-compatible murmur2 partitioner puts this key.
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 4

    inputs = {(r.partition, r.offset): r for r in read_topic(bootstrap, topics.input, 20_000)}
    dead = read_topic(bootstrap, topics.dlq, t.dead_lettered)
    assert len(dead) == t.dead_lettered
    bad_values = {r.value for r in records if r.kind != GOOD}
    for letter in dead:
        headers = dict(letter.headers)
        assert headers[REASON_HEADER].decode() in REASONS
        assert headers[SOURCE_TOPIC_HEADER].decode() == topics.input
        source = inputs[(int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER]))]
        assert letter.value == source.value and letter.key == source.key
        assert letter.value in bad_values

    # Independent recomputation from the generated input.
    ips, users, by_version, by_locale, by_type = (defaultdict(set), defaultdict(set), defaultdict(int),
                                                  defaultdict(int), defaultdict(int))
    for record in filter(is_kept, records):
        e = orjson.loads(record.value)
        ips[e["user_id"]].add(e["ip"])
        users[e["device_id"]].add(e["user_id"])
        by_version[e["app_version"]] += 1
        by_locale[e["locale"]] += 1
        by_type[e["device_type"].lower()] += 1
    agg = result.aggregates
    assert agg["multi_ip_users"] == sum(1 for s in ips.values() if len(s) > 1) > 0
    assert agg["shared_devices"] == sum(1 for s in users.values() if len(s) > 1) > 0
    assert dict(agg["device_types"]) == dict(by_type)
    assert dict(agg["top_app_versions"]) == dict(sorted(by_version.items(), key=lambda x: -x[1])[:5])
    assert dict(agg["top_locales"]).items() <= by_locale.items()
    assert agg["most_common_device_type"] == max(by_type, key=by_type.get)
    values = [orjson.loads(r.value) for r in outputs]
    max_ips, max_users = defaultdict(int), defaultdict(int)
    for v in values:
        max_ips[v["user_id"]] = max(max_ips[v["user_id"]], v["distinct_ips_for_user"])
        max_users[v["device_id"]] = max(max_users[v["device_id"]], v["users_on_device"])
        assert v["multi_ip_user"] == (v["distinct_ips_for_user"] > 1)
        assert v["shared_device"] == (v["users_on_device"] > 1)
    assert dict(max_ips) == {u: min(len(s), DEFAULT_MAX_VALUES_PER_KEY) for u, s in ips.items()}
    assert dict(max_users) == {d: min(len(s), DEFAULT_MAX_VALUES_PER_KEY) for d, s in users.items()}
    assert max(v["total_logins_for_version"] for v in values) == max(by_version.values())


def test_output_batches_are_snappy_on_the_broker(kafka, topics, kafka_client: str) -> None:
    if kafka.broker is None:
        pytest.skip("the reused broker's log files are not visible from here")
    preload(kafka.bootstrap, topics.input, generated(3000, seed=6, bad_ratio=0))
    result = run_pipeline(kafka.bootstrap, topics, group(), client=kafka_client)
    assert result.totals.processed > 2000
    dump = kafka.broker.dump_log_segments(topics.output)
    codecs = {line.split("compresscodec: ")[1].split()[0] for line in dump.splitlines()
              if "compresscodec: " in line}
    assert codecs == {"snappy"}, dump[:2000]


def test_restart_after_clean_stop_neither_repeats_nor_skips(bootstrap: str, topics) -> None:
    name = group()
    first = generated(3000, seed=7)
    preload(bootstrap, topics.input, first)
    one = run_pipeline(bootstrap, topics, name).totals
    assert one.consumed == 3000
    assert committed_offsets(bootstrap, name, topics.input) == end_offsets(bootstrap, topics.input)

    preload(bootstrap, topics.input, generated(2000, seed=8))
    two = run_pipeline(bootstrap, topics, name).totals
    assert two.consumed == 2000
    assert committed_offsets(bootstrap, name, topics.input) == end_offsets(bootstrap, topics.input)
    outputs = read_topic(bootstrap, topics.output, one.processed + two.processed)
    positions = output_positions(outputs)
    assert len(positions) == len(set(positions)) == one.processed + two.processed


def test_sigkill_mid_run_loses_nothing(bootstrap: str, topics, tmp_path: Path, reaper) -> None:
    records = generated(30_000, seed=9)
    preload(bootstrap, topics.input, records)
    must_process, must_dead_letter, _ = expected_positions(bootstrap, topics.input, records)
    name = group()
    proc, _, _ = start_consumer(reaper, bootstrap, topics, name, tmp_path, "killed",
                                "--max-poll-records", "200", "--commit-interval-ms", "200", "--quiet")
    try:
        assert wait_until(lambda: sum(end_offsets(bootstrap, topics.output).values()) > 3000, 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert sum(end_offsets(bootstrap, topics.output).values()) < len(must_process), "killed too late"

    proc, _, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "restarted",
                                  "--stop-when-idle", "4")
    assert proc.wait(timeout=180) == 0, err.read_text()
    outputs = output_positions(read_topic(bootstrap, topics.output, len(must_process)))
    dead = dlq_positions(read_topic(bootstrap, topics.dlq, len(must_dead_letter)))
    assert set(outputs) == must_process
    assert set(dead) == must_dead_letter
    duplicates = len(outputs) - len(set(outputs)) + len(dead) - len(set(dead))
    print(f"at-least-once: {duplicates} duplicate outputs after SIGKILL")
    assert committed_offsets(bootstrap, name, topics.input) == end_offsets(bootstrap, topics.input)


def test_two_processes_share_the_partitions(bootstrap: str, topics, tmp_path: Path, reaper) -> None:
    name = group()
    procs = [start_consumer(reaper, bootstrap, topics, name, tmp_path, f"member{i}", "--threads", "1",
                            "--stop-when-idle", "8", "--quiet") for i in range(2)]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        def members() -> int:
            try:
                info = admin.describe_groups([name])[name]
            except KafkaError:  # e.g. the group coordinator is not ready yet on a fresh broker
                return 0
            return len(info["members"]) if info["group_state"] == "Stable" else 0

        assert wait_until(lambda: members() == 2, 60), "both processes never joined the group"
    finally:
        admin.close()
    records = generated(10_000, seed=10)
    preload(bootstrap, topics.input, records)
    counts = []
    for proc, out, err in procs:
        assert proc.wait(timeout=120) == 0, err.read_text()
        counts.append(summary_counts(out.read_text()))
    assert all(c[0] > 0 for c in counts), counts
    assert sum(c[0] for c in counts) == 10_000
    assert sum(c[1] for c in counts) == sum(1 for r in records if is_kept(r))
    assert committed_offsets(bootstrap, name, topics.input) == end_offsets(bootstrap, topics.input)


def test_ctrl_c_stops_cleanly_with_offsets_committed(bootstrap: str, topics, tmp_path: Path, reaper) -> None:
    preload(bootstrap, topics.input, generated(40_000, seed=11))
    name = group()
    proc, out, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "interrupted",
                                    "--max-poll-records", "100", "--stats-every", "1000")
    assert wait_until(lambda: " msgs | " in out.read_text(), 60), err.read_text()  # a stats line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, err.read_text()
    consumed, processed, filtered, dead = summary_counts(out.read_text())
    assert consumed == processed + filtered + dead > 0
    assert "SIGINT: finishing the batch in flight" in err.read_text()
    assert sum(committed_offsets(bootstrap, name, topics.input).values()) == consumed
    assert "Traceback" not in err.read_text()


def test_unreachable_broker_at_start_is_one_line() -> None:
    result = run_cli("create_kafka_consumer.py", "--bootstrap-servers", f"127.0.0.1:{free_port()}",
                     timeout_s=40)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: cannot reach a Kafka broker")
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_topic_is_one_line(bootstrap: str, topic_name) -> None:
    result = run_cli("create_kafka_consumer.py", "--bootstrap-servers", bootstrap,
                     "--input-topic", topic_name("nope"))
    assert result.returncode == 1
    assert "not exist" in result.stderr and "Traceback" not in result.stderr


def test_broker_lost_mid_run_then_back_loses_nothing(tmp_path: Path, kafka_libs: Path, topic_name,
                                                     reaper) -> None:
    broker = LocalBroker(home=tmp_path / "kafka", port=free_port(), controller_port=free_port(),
                         heap_mb=384, libs=kafka_libs)
    broker.start(quiet=True)
    proc = None
    try:
        bootstrap = broker.bootstrap_servers
        topics = create_pipeline_topics(bootstrap, topic_name, partitions=2)
        name = group()
        before, after = generated(3000, seed=12), generated(3000, seed=13)
        preload(bootstrap, topics.input, before)
        proc, _, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "outage", "--quiet")

        def caught_up() -> bool:
            return committed_offsets(bootstrap, name, topics.input) == end_offsets(bootstrap, topics.input)

        assert wait_until(caught_up, 60)
        broker.stop()
        assert wait_until(lambda: "unreachable" in err.read_text(), 30), err.read_text()
        assert proc.poll() is None, "the consumer died with the broker"
        broker.start(quiet=True)
        preload(bootstrap, topics.input, after)
        assert wait_until(caught_up, 120), err.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, err.read_text()
        records = before + after
        must_process, must_dead_letter, _ = expected_positions(bootstrap, topics.input, records)
        outputs = read_topic(bootstrap, topics.output, len(must_process))
        dead = read_topic(bootstrap, topics.dlq, len(must_dead_letter))
        assert set(output_positions(outputs)) == must_process
        assert set(dlq_positions(dead)) == must_dead_letter
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()


def test_rebalance_commits_in_flight_work_before_giving_partitions_up(bootstrap: str, topics,
                                                                     tmp_path: Path, reaper,
                                                                     kafka_client: str) -> None:
    records = generated(30_000, seed=14)
    name = group()
    first = start_consumer(reaper, bootstrap, topics, name, tmp_path, "first", "--threads", "1",
                           "--stop-when-idle", "5", "--quiet", "--client", kafka_client)
    feeder = threading.Thread(target=preload, args=(bootstrap, topics.input, records, 5000))
    feeder.start()  # a steady stream, so the first member is busy when the second joins
    try:
        assert wait_until(lambda: sum(end_offsets(bootstrap, topics.output).values()) > 2000, 60)
        second = start_consumer(reaper, bootstrap, topics, name, tmp_path, "second", "--threads", "1",
                                "--stop-when-idle", "5", "--quiet", "--client", kafka_client)
    finally:
        feeder.join()
    counts = []
    for proc, out, err in (first, second):
        assert proc.wait(timeout=180) == 0, err.read_text()
        counts.append(summary_counts(out.read_text()))
    assert all(c[0] > 0 for c in counts), f"the second member never got partitions: {counts}"
    must_process, must_dead_letter, _ = expected_positions(bootstrap, topics.input, records)
    outputs = output_positions(read_topic(bootstrap, topics.output, len(must_process)))
    dead = dlq_positions(read_topic(bootstrap, topics.dlq, len(must_dead_letter)))
    assert set(outputs) == must_process and set(dead) == must_dead_letter
    # Committed at the hand-over, so the new owner started exactly where the old one stopped.
    assert len(outputs) == len(must_process) and len(dead) == len(must_dead_letter)
    assert sum(c[0] for c in counts) == len(records)


def test_second_ctrl_c_exits_at_once_when_the_first_cannot_finish(tmp_path: Path, kafka_libs: Path,
                                                                   topic_name, reaper) -> None:
    broker = LocalBroker(home=tmp_path / "kafka", port=free_port(), controller_port=free_port(),
                         heap_mb=384, libs=kafka_libs)
    broker.start(quiet=True)
    try:
        topics = create_pipeline_topics(broker.bootstrap_servers, topic_name, partitions=1)
        proc, out, err = start_consumer(reaper, broker.bootstrap_servers, topics, group(), tmp_path, "twice")
        assert wait_until(lambda: "Ctrl+C stops" in err.read_text(), 60), err.read_text()
        preload(broker.bootstrap_servers, topics.input, generated(200, seed=15))
        assert wait_until(lambda: " msgs | " in out.read_text(), 60), err.read_text()  # a stats line
        broker.stop()  # now a clean stop waits on a broker that is not there
        assert proc.poll() is None, err.read_text()
        proc.send_signal(signal.SIGINT)
        assert wait_until(lambda: "SIGINT: finishing" in err.read_text(), 30), err.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert "second interrupt: exiting now" in err.read_text()
    finally:
        broker.stop()
