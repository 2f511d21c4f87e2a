"""Avro end to end on the real broker and the real local registry (issue 17's "done when"):
the generator writes framed Avro, the consumer (a real process) reads it with JSON on the same
topic and writes framed Avro; every output carries a registered id and decodes with an independent
reader; bad Avro lands in the dead-letter topic with its reason; the registry stopped mid-run and
started again loses nothing. Run by ``make test-registry`` (pytest -m registry)."""

from __future__ import annotations

import io
import json
import signal
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from loginpipe import serde
from loginpipe.core import avro, events
from loginpipe.core.records import REASON_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER
from loginpipe.local.generator import GOOD, EventGenerator, make_producer
from loginpipe.local.registry import LocalRegistry
from loginpipe.registry_client import SchemaRegistryClient
from loginpipe.waiting import wait_until
from tests.helpers import (
    committed_offsets,
    create_pipeline_topics,
    end_offsets,
    read_topic,
    run_cli,
    start_consumer,
    summary_counts,
)

pytestmark = pytest.mark.registry
fastavro = pytest.importorskip("fastavro")


@pytest.fixture(scope="module")
def registry(private_registry: LocalRegistry) -> LocalRegistry:
    """Its own registry (tests/conftest.py): stopped and restarted mid-run below."""
    return private_registry


def framed(schema_id: int, event: dict) -> bytes:
    return avro.frame(schema_id, avro.encode(avro.contract(avro.INPUT_SCHEMA), event))


def independent_reader(client: SchemaRegistryClient) -> Callable[[bytes], dict]:
    """fastavro with each writer schema fetched by the id in the frame: none of our own decoding."""
    schemas: dict[int, dict] = {}

    def read(value: bytes) -> dict:
        assert value[0] == 0, "every output is framed"
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in schemas:
            schemas[schema_id] = fastavro.parse_schema(json.loads(client.schema_by_id(schema_id)))
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id])
    return read


def source(record) -> tuple[int, int]:
    headers = dict(record.headers)
    return int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER])


def test_avro_end_to_end_with_bad_input_dead_lettered(bootstrap, topic_name, registry, reaper,
                                                      tmp_path) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    client = SchemaRegistryClient(registry.url)
    generate = run_cli("-m", "loginpipe.local.generator", "--bootstrap-servers", bootstrap, "--topic",
                       topics.input, "--count", "3000", "--rate", "0", "--seed", "11", "--users", "500",
                       "--format", "avro", "--schema-registry-url", registry.url, timeout_s=120)
    assert generate.returncode == 0, generate.stderr
    input_id = client.latest(serde.subject(topics.input))["id"]
    # the three ways framed input goes wrong, and JSON on the same topic
    event = orjson.loads(next(g.value for g in EventGenerator(seed=1).generate(5) if g.kind == GOOD))
    producer = make_producer(bootstrap)
    for key, value in ((b"unknown", framed(2**31 - 1, event)), (b"truncated", framed(input_id, event)[:-5]),
                       (b"contract", framed(input_id, {**event, "ip": "999.1.1.1"})),
                       (b"json", orjson.dumps(event))):
        producer.send(topics.input, key=key, value=value)
    producer.flush()
    producer.close()
    total = sum(end_offsets(bootstrap, topics.input).values())
    assert total == 3004

    proc, out, err = start_consumer(reaper, bootstrap, topics, "avro-e2e", tmp_path, "consumer",
                                    "--schema-registry-url", registry.url, "--output-format", "avro",
                                    "--stop-when-idle", "3")
    assert proc.wait(timeout=180) == 0, err.read_text()[-2000:]
    consumed, processed, filtered, dead = summary_counts(out.read_text())
    assert consumed == total == processed + filtered + dead

    outputs = read_topic(bootstrap, topics.output, processed)
    assert len(outputs) == processed
    output_id = client.latest(serde.subject(topics.output))["id"]
    read = independent_reader(client)
    positions = Counter()
    for record in outputs:
        assert int.from_bytes(record.value[1:5], "big") == output_id
        value = read(record.value)
        positions[(value["source_partition"], value["source_offset"])] += 1
    assert len(positions) == processed and max(positions.values()) == 1

    letters = read_topic(bootstrap, topics.dlq, dead)
    by_key = {r.key: dict(r.headers)[REASON_HEADER].decode() for r in letters}
    assert by_key[b"unknown"] == events.UNKNOWN_SCHEMA_ID
    assert by_key[b"truncated"] == events.INVALID_AVRO
    assert by_key[b"contract"] == events.INVALID_IP
    assert b"json" not in by_key
    assert len({source(r) for r in letters}) == dead  # each dead letter once
    assert committed_offsets(bootstrap, "avro-e2e", topics.input) == end_offsets(bootstrap, topics.input)


def test_registry_stopped_mid_run_and_restarted_loses_nothing(bootstrap, topic_name, registry, reaper,
                                                              tmp_path) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    client = SchemaRegistryClient(registry.url)
    output = serde.register_contract(client, topics.input, avro.INPUT_SCHEMA, print)
    good = [g for g in EventGenerator(seed=21, users=300, bad_ratio=0.0).generate(1200) if g.kind == GOOD]
    before, after = good[:600], good[600:]
    producer = make_producer(bootstrap)
    for g in before:  # JSON first: the consumer has no reason to look a schema up yet
        producer.send(topics.input, key=g.key, value=g.value)
    producer.flush()
    group = "avro-outage"
    proc, out, err = start_consumer(reaper, bootstrap, topics, group, tmp_path, "consumer",
                                    "--schema-registry-url", registry.url)

    def in_end() -> bool:
        return committed_offsets(bootstrap, group, topics.input) == end_offsets(bootstrap, topics.input)
    assert wait_until(in_end, 90), err.read_text()[-2000:]

    registry.stop()
    for g in after:
        producer.send(topics.input, key=g.key, value=output.encode(orjson.loads(g.value)))
    producer.flush()
    producer.close()
    assert wait_until(lambda: "does not answer" in err.read_text(), 30), err.read_text()[-2000:]
    assert not in_end(), "records waiting for their schema are not committed"
    assert proc.poll() is None

    registry.start(quiet=True)  # the same data: the id is still there
    assert wait_until(in_end, 90), err.read_text()[-2000:]
    assert "answers again" in err.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, err.read_text()[-2000:]
    consumed, processed, filtered, dead = summary_counts(out.read_text())
    assert consumed == len(good) == processed + filtered and dead == 0
    assert len(read_topic(bootstrap, topics.output, processed)) == processed

