"""Registry-framed Avro through the pipeline: the core's parser and output on plain data, then the
real runtime on the in-memory Kafka with a fake registry (tests/fake_registry.py): Avro in and out
with exact accounting, the dead-letter reasons, schema lookups cached, and a registry outage that
puts records back and loses nothing. The same against the real registry and broker is in
tests/integration/test_avro_pipeline.py."""

from __future__ import annotations

import io
import json
import math
from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

fastavro = pytest.importorskip("fastavro")

from loginpipe import serde  # noqa: E402  (after the skip: these need fastavro)
from loginpipe.config import PipelineConfig  # noqa: E402
from loginpipe.core import avro, events  # noqa: E402
from loginpipe.core.batch import LocalState, Topology, process_batch  # noqa: E402
from loginpipe.core.events import LoginEvent, Rejection, parse_event, parse_unguarded  # noqa: E402
from loginpipe.core.records import REASON_HEADER, Routes  # noqa: E402
from loginpipe.errors import UserError  # noqa: E402
from loginpipe.kafka.memory import MemoryBackend, MemoryCluster  # noqa: E402
from loginpipe.local.generator import GOOD, EventGenerator  # noqa: E402
from loginpipe.runtime.app import Application  # noqa: E402
from loginpipe.waiting import wait_until  # noqa: E402
from tests.fake_registry import FakeRegistry  # noqa: E402
from tests.unit.test_worker import DLQ, INPUT, OUTPUT, Running, committed_all  # noqa: E402
from tests.unit.test_worker import cluster as cluster  # noqa: E402  (the fixture)

NOW = 1_700_000_000.0
INPUT_SCHEMA = avro.contract(avro.INPUT_SCHEMA)
UNKNOWN_ID = 999


def framed_event(schema_id: int, event: dict) -> bytes:
    return avro.frame(schema_id, avro.encode(INPUT_SCHEMA, event))


def good_events(n: int, seed: int = 3) -> list[dict]:
    generator = EventGenerator(seed=seed, users=100, bad_ratio=0.0)
    return [orjson.loads(g.value) for g in generator.generate(n, clock=lambda: NOW) if g.kind == GOOD]


def independent_read(value: bytes, schema_text: str) -> dict:
    """fastavro straight from the registered text, none of the project's own decoding."""
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(json.loads(schema_text)))


# -- the core ------------------------------------------------------------------------------------


def test_a_framed_event_parses_to_the_same_event_as_its_json() -> None:
    events_ = good_events(300)
    assert any(isinstance(e["timestamp"], str) for e in events_), "string timestamps are covered"
    for event in events_:
        as_json = parse_event(orjson.dumps(event), NOW)
        assert isinstance(as_json, LoginEvent)
        assert parse_event(framed_event(7, event), NOW, schemas={7: INPUT_SCHEMA}) == as_json


@pytest.mark.parametrize(("value", "schemas", "reason", "detail"), [
    (avro.frame(7, b""), None, events.UNKNOWN_SCHEMA_ID, "no schema registry is configured"),
    (avro.frame(UNKNOWN_ID, b"\x02a"), {7: INPUT_SCHEMA}, events.UNKNOWN_SCHEMA_ID, "schema id 999 is not"),
    (b"\x00\x00\x07", {7: INPUT_SCHEMA}, events.INVALID_AVRO, "truncated frame: 3 bytes"),
    ("cut", {7: INPUT_SCHEMA}, events.INVALID_AVRO, "truncated Avro body"),
    ("trailing", {7: INPUT_SCHEMA}, events.INVALID_AVRO, "bytes left over"),
    ({"ip": "not-an-ip"}, {7: INPUT_SCHEMA}, events.INVALID_IP, "not-an-ip"),
    ({"user_id": ""}, {7: INPUT_SCHEMA}, events.EMPTY_OR_LONG, "user_id has 0 characters"),
    ({"timestamp": math.nan}, {7: INPUT_SCHEMA}, events.INVALID_TIMESTAMP, "timestamp"),
    ({"timestamp": NOW + 10 * 86400}, {7: INPUT_SCHEMA}, events.FUTURE_TIMESTAMP, "after now"),
])
def test_framed_input_that_cannot_be_read_is_rejected_with_its_reason(value, schemas, reason, detail) -> None:
    good = framed_event(7, good_events(1)[0])
    if value == "cut":
        value = good[:-3]
    elif value == "trailing":
        value = good + b"\x02"
    elif isinstance(value, dict):
        value = framed_event(7, {**good_events(1)[0], **value})
    rejection = parse_unguarded(value, NOW, schemas=schemas)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, detail in rejection.detail) == (reason, True), rejection


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=120), schema_id=st.sampled_from([7, 8]))
def test_any_framed_bytes_give_an_event_or_a_named_reason(body: bytes, schema_id: int) -> None:
    """parse_unguarded (no catch-all) on arbitrary Avro bodies: a bug raises here."""
    result = parse_unguarded(avro.frame(schema_id, body), NOW, schemas={7: INPUT_SCHEMA})
    assert isinstance(result, LoginEvent) or result.reason in events.REASONS
    if schema_id == 8:
        assert result.reason == events.UNKNOWN_SCHEMA_ID


def test_avro_output_carries_the_same_record_as_json() -> None:
    records = [r for r in EventGenerator(seed=5, users=300, bad_ratio=0.05).generate(800, clock=lambda: NOW)]
    raw = [events.RawRecord(INPUT, i % 4, i, int(NOW * 1000), r.key, r.value) for i, r in enumerate(records)]
    writer = serde.AvroOutput(OUTPUT, 9, avro.contract(avro.OUTPUT_SCHEMA))
    as_json = process_batch(raw, LocalState(), Topology(Routes(partitions=4)), NOW)
    avro_routes = Routes(partitions=4, encode_output=writer.encode)
    as_avro = process_batch(raw, LocalState(), Topology(avro_routes), NOW)
    json_out = [o for o in as_json.outputs if o.topic == OUTPUT]
    avro_out = [o for o in as_avro.outputs if o.topic == OUTPUT]
    assert len(json_out) == len(avro_out) == as_json.published > 500
    text = avro.contract_text(avro.OUTPUT_SCHEMA)
    for j, a in zip(json_out, avro_out, strict=True):
        assert a.value[:5] == b"\x00\x00\x00\x00\x09" and a.key == j.key
        assert independent_read(a.value, text) == orjson.loads(j.value)
    # dead letters keep their input bytes whatever the output format
    assert [o.value for o in as_json.outputs if o.topic != OUTPUT] == [
        o.value for o in as_avro.outputs if o.topic != OUTPUT]


# -- the runtime, on the in-memory Kafka and a fake registry -------------------------------------


@pytest.fixture
def registry():
    with FakeRegistry() as registry:
        yield registry


def dead_letter_reasons(cluster: MemoryCluster) -> Counter:
    return Counter(dict(r.headers)[REASON_HEADER].decode() for r in cluster.records(DLQ))


def test_avro_and_json_in_avro_out_with_exact_accounting(cluster, registry) -> None:
    input_id = registry.register(serde.subject(INPUT), avro.contract_text(avro.INPUT_SCHEMA))
    generated = list(EventGenerator(seed=2, users=200, bad_ratio=0.05).generate(600))
    for i, g in enumerate(generated):  # every other good event as Avro, on the same topic
        value = framed_event(input_id, orjson.loads(g.value)) if g.kind == GOOD and i % 2 else g.value
        cluster.produce(INPUT, value, g.key)
    event = good_events(1)[0]
    cluster.produce(INPUT, framed_event(UNKNOWN_ID, event), b"u1")
    cluster.produce(INPUT, framed_event(input_id, event)[:-4], b"u2")
    cluster.produce(INPUT, framed_event(input_id, {**event, "ip": "not-an-ip"}), b"u3")
    run = Running(cluster, stop_when_idle_s=0.3, schema_registry_url=registry.url, output_format="avro")
    run.thread.join(timeout=30)
    totals = run.result.totals
    assert totals.consumed == 603 == totals.processed + totals.filtered + totals.dead_lettered
    reasons = dead_letter_reasons(cluster)
    assert reasons[events.UNKNOWN_SCHEMA_ID] == reasons[events.INVALID_AVRO] == 1
    assert reasons[events.INVALID_IP] >= 1 and sum(reasons.values()) == totals.dead_lettered
    output_id = registry.subjects[serde.subject(OUTPUT)][-1]
    assert registry.levels == {serde.subject(INPUT): "BACKWARD", serde.subject(OUTPUT): "BACKWARD"}
    outputs = cluster.records(OUTPUT)
    assert len(outputs) == totals.processed
    positions = Counter()
    for record in outputs:
        assert record.value[:5] == avro.frame(output_id, b"")
        value = independent_read(record.value, registry.schemas[output_id])
        positions[(value["source_partition"], value["source_offset"])] += 1
    assert max(positions.values()) == 1
    assert registry.lookups.count(input_id) == 1, "each schema is fetched once"
    assert registry.lookups.count(UNKNOWN_ID) == 1, "an unknown id is not asked again at once"
    assert committed_all(cluster)


def test_a_registry_outage_puts_framed_records_back_and_loses_nothing(cluster, registry) -> None:
    input_id = registry.register(serde.subject(INPUT), avro.contract_text(avro.INPUT_SCHEMA))
    events_ = good_events(120, seed=9)
    for event in events_[:60]:
        cluster.produce(INPUT, orjson.dumps(event), event["user_id"].encode())
    run = Running(cluster, schema_registry_url=registry.url)
    assert wait_until(lambda: committed_all(cluster), 10), run.err.getvalue()
    registry.down = True
    for event in events_[60:]:  # a schema id this pipeline has not looked up yet
        cluster.produce(INPUT, framed_event(input_id, event), event["user_id"].encode())
    assert wait_until(lambda: "does not answer" in run.err.getvalue(), 10)
    assert not committed_all(cluster), "records waiting for their schema are not committed"
    assert run.thread.is_alive()
    registry.down = False
    assert wait_until(lambda: committed_all(cluster), 15), run.err.getvalue()
    result = run.stop()
    totals = result.totals
    assert totals.consumed == len(events_) == totals.processed + totals.filtered
    assert totals.dead_lettered == 0 and "answers again" in run.err.getvalue()


def test_avro_output_without_a_registry_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--output-format avro needs --schema-registry-url"):
        PipelineConfig(output_format="avro")


def test_a_registry_that_never_answers_on_start_is_a_one_line_error(cluster, registry, monkeypatch) -> None:
    monkeypatch.setattr(serde, "START_WAIT_S", 0.3)
    monkeypatch.setattr(serde, "RETRY_EVERY_S", 0.1)
    registry.down = True
    config = PipelineConfig(quiet=True, connection="memory", summary_topic=None, metrics_topic=None,
                            schema_registry_url=registry.url)
    app = Application(config, out=io.StringIO(), err=io.StringIO(), backend=MemoryBackend(cluster))
    with pytest.raises(UserError, match="does not answer") as raised:
        app.run(install_signals=False)
    assert "\n" not in str(raised.value)
