"""The generator's --format avro: good events framed with the registered id and decoded back by an
independent reader (the contract and core.avro), Avro's own bad kinds each meeting its dead-letter
reason, JSON unchanged, and the command line's one-line errors (no broker needed)."""

from __future__ import annotations

import io
import sys
from collections import Counter

import orjson
import pytest

from loginpipe import serde
from loginpipe.cli import run_cli
from loginpipe.core import avro
from loginpipe.core.events import LoginEvent, Rejection, parse_event
from loginpipe.local import generator
from loginpipe.local.generator import (
    AVRO_BAD_KINDS,
    BAD_KINDS,
    GOOD,
    UNKNOWN_SCHEMA_ID,
    EventGenerator,
    GeneratorConfig,
    avro_output,
)
from tests.fake_registry import FakeRegistry

NOW = 1_700_000_000.0
SCHEMA_ID = 7
INPUT = avro.contract(avro.INPUT_SCHEMA)
OUTPUT = serde.AvroOutput("t", SCHEMA_ID, INPUT)
# what the pipeline's core says of each Avro kind, the registry knowing SCHEMA_ID only
EXPECTED_REASONS = {"truncated_avro": "invalid_avro", "unknown_schema_id": "unknown_schema_id",
                    "avro_invalid_ip": "invalid_ip", "avro_invalid_app_version": "invalid_app_version"}


def records(seed: int, n: int, output: serde.AvroOutput | None = OUTPUT, **kwargs) -> list:
    return list(EventGenerator(seed=seed, users=500, avro=output, **kwargs).generate(n, clock=lambda: NOW))


def test_good_events_are_framed_with_the_registered_id_and_decode_with_the_contract() -> None:
    goods = [r for r in records(1, 3000, bad_ratio=0.0)]
    assert {r.kind for r in goods} == {GOOD}
    timestamps = Counter()
    for record in goods:
        schema_id, body = avro.unframe(record.value)
        assert schema_id == SCHEMA_ID
        event = avro.decode(INPUT, body)
        assert record.key == event["user_id"].encode()
        assert isinstance(parse_event(record.value, NOW, schemas={SCHEMA_ID: INPUT}), LoginEvent)
        timestamps[type(event["timestamp"])] += 1
    assert timestamps[int] > 0 and timestamps[str] > 0  # both branches of the union are written


def test_avro_events_are_the_json_events_of_the_same_seed() -> None:
    as_json = records(2, 2000, output=None, bad_ratio=0.0)
    as_avro = records(2, 2000, bad_ratio=0.0)
    assert [orjson.loads(j.value) for j in as_json] == [avro.decode(INPUT, a.value[5:]) for a in as_avro]


def test_json_stays_the_default_and_never_writes_an_avro_kind() -> None:
    generated = records(3, 20_000, output=None, bad_ratio=0.5)
    assert {r.kind for r in generated} == {GOOD, *BAD_KINDS}
    assert not any(r.value[:1] == b"\x00" for r in generated)
    with pytest.raises(ValueError, match="AvroOutput"):
        EventGenerator(seed=1, users=10).bad_value("truncated_avro", NOW)


def test_every_bad_kind_occurs_and_each_avro_kind_meets_its_dead_letter_reason() -> None:
    bad = [r for r in records(4, 20_000, bad_ratio=0.5) if r.kind != GOOD]
    assert {r.kind for r in bad} == {*BAD_KINDS, *AVRO_BAD_KINDS}
    schemas = {SCHEMA_ID: INPUT}
    for record in bad:
        verdict = parse_event(record.value, NOW, schemas=schemas)
        assert isinstance(verdict, Rejection), record
        if record.kind in AVRO_BAD_KINDS:
            assert verdict.reason == EXPECTED_REASONS[record.kind], (record, verdict)
        else:
            assert record.value[:1] != b"\x00"  # the JSON kinds stay JSON


def test_avro_bad_kinds_are_bad_in_the_way_they_say() -> None:
    bad = [r for r in records(5, 20_000, bad_ratio=0.5) if r.kind in AVRO_BAD_KINDS]
    for record in bad:
        schema_id, body = avro.unframe(record.value)
        if record.kind == "truncated_avro":
            assert schema_id == SCHEMA_ID
            with pytest.raises(avro.DecodeError, match="truncated"):
                avro.decode(INPUT, body)
        elif record.kind == "unknown_schema_id":
            assert schema_id == UNKNOWN_SCHEMA_ID
            avro.decode(INPUT, body)  # the body itself is fine: only its id is unknown
        elif record.kind == "avro_invalid_ip":
            assert avro.decode(INPUT, body)["ip"] == "not-an-ip"
        else:
            assert avro.decode(INPUT, body)["app_version"] == "x"


def config(url: str | None, topic: str = "logins") -> GeneratorConfig:
    return GeneratorConfig("127.0.0.1:1", topic, 10, 0.0, 1, 0.0, 10, value_format="avro",
                           schema_registry_url=url)


def test_the_input_contract_is_registered_under_the_topics_subject() -> None:
    out = io.StringIO()
    with FakeRegistry() as registry:
        output = avro_output(config(registry.url), out)
        assert output is not None and output.topic == "logins"
        assert registry.subjects == {"logins-value": [output.schema_id]}
        assert registry.levels == {"logins-value": "BACKWARD"}
        assert orjson.loads(registry.schemas[output.schema_id]) == orjson.loads(
            avro.contract_text(avro.INPUT_SCHEMA))
    assert out.getvalue() == f"generator: writing Avro, schema id {output.schema_id} (logins-value)\n"
    assert avro_output(GeneratorConfig("x", "t", 1, 0.0, 1, 0.0, 1)) is None  # json: nothing asked


def test_avro_without_a_registry_url_is_a_usage_error(capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    with pytest.raises(SystemExit) as stopped:
        generator.main(["--format", "avro", "--count", "1"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--format avro needs --schema-registry-url" in err[0]


def test_an_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        generator.main(["--format", "xml"])
    assert stopped.value.code == 2 and "--format" in capsys.readouterr().err


def test_the_format_has_an_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATOR_FORMAT", "AVRO")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://r:1/apis/ccompat/v7")
    args = generator.build_parser().parse_args([])
    assert (args.format, args.schema_registry_url) == ("avro", "http://r:1/apis/ccompat/v7")


def test_avro_without_fastavro_is_one_line_naming_the_extra(capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastavro", None)  # import fastavro fails, as when not installed
    code = run_cli(lambda: generator.main(["--format", "avro", "--schema-registry-url", "http://r:1"]))
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --format avro needs fastavro: {serde.AVRO_EXTRA}"]
