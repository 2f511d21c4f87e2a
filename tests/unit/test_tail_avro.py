"""``loginpipe tail`` and framed Avro values: decoded with the writer's schema from a (fake) registry
and shown with their schema id; without a registry, with an unknown id, bad bytes or a registry
that does not answer, shown as base64 with a note saying why, and the tail goes on."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from types import SimpleNamespace

import orjson
import pytest

from loginpipe import serde, tail
from loginpipe.core import avro
from loginpipe.registry_client import SchemaRegistryClient
from loginpipe.tail import fields, json_line, show, text_lines
from tests.fake_registry import FakeRegistry

EVENT = {"user_id": "u1", "app_version": "2.3.0", "device_type": "iOS", "ip": "1.2.3.4", "locale": "NY",
         "device_id": "d1", "timestamp": 1_700_000_000}
BLOB_SCHEMA = json.dumps({"type": "record", "name": "Blob", "fields": [
    {"name": "raw", "type": "bytes"}, {"name": "n", "type": "long"}]})


def record(value: bytes | None, offset: int = 3) -> SimpleNamespace:
    return SimpleNamespace(topic="user-login", partition=0, offset=offset, timestamp=1_795_538_072_518,
                           key=b"u1", value=value, headers=[])


def framed(schema_id: int, event: dict = EVENT, schema: str = avro.INPUT_SCHEMA) -> bytes:
    return avro.frame(schema_id, avro.encode(avro.contract(schema), event))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as fake:
        yield fake


def cache(registry: FakeRegistry, warnings: list[str] | None = None, clock: Clock | None = None
          ) -> serde.SchemaCache:
    return serde.SchemaCache(SchemaRegistryClient(registry.url, timeout_s=2.0),
                             (warnings if warnings is not None else []).append, retry_every_s=10.0,
                             clock=clock or Clock())


def test_a_framed_value_is_decoded_and_shown_with_its_schema_id(registry: FakeRegistry) -> None:
    schema_id = registry.register("user-login-value", avro.contract_text(avro.INPUT_SCHEMA))
    shown = fields(record(framed(schema_id)), cache(registry))
    assert (shown["value"], shown["value_format"], shown["schema_id"]) == (EVENT, "avro", schema_id)
    assert "note" not in shown
    assert text_lines(shown) == (
        f"partition 0 offset 3 2026-11-24T16:34:32.518Z key u1 schema-id {schema_id}\n"
        f"  {orjson.dumps(EVENT).decode()}\n")
    line = orjson.loads(json_line(shown))
    assert (line["value"], line["value_format"], line["schema_id"]) == (EVENT, "avro", schema_id)


def test_each_schema_is_asked_for_once(registry: FakeRegistry) -> None:
    schema_id = registry.register("user-login-value", avro.contract_text(avro.INPUT_SCHEMA))
    schemas = cache(registry)
    out = io.StringIO()
    assert show(iter([record(framed(schema_id), offset=i) for i in range(5)]), json_line, out, schemas) == 0
    assert [orjson.loads(line)["value"] for line in out.getvalue().splitlines()] == [EVENT] * 5
    assert registry.lookups == [schema_id]


def test_without_a_registry_a_framed_value_is_base64_with_a_note() -> None:
    value = framed(5)
    shown = fields(record(value))
    assert (shown["value"], shown["value_format"], shown["schema_id"]) == (
        base64.b64encode(value).decode(), "base64", 5)
    assert "give --schema-registry-url" in shown["note"]
    lines = text_lines(shown).splitlines()
    assert lines[0].endswith("key u1 schema-id 5")
    assert lines[1] == "  base64:" + base64.b64encode(value).decode()
    assert lines[2].startswith("  note: not decoded: framed Avro (schema id 5)")


@pytest.mark.parametrize(("make", "why"), [
    (lambda known: framed(2**31 - 1), "schema id 2147483647 is not an Avro schema in the registry"),
    (lambda known: framed(known)[:12], "truncated Avro body"),
    (lambda known: framed(known) + b"\x02", "left over"),
])
def test_a_value_the_registry_cannot_decode_is_base64_with_why(registry: FakeRegistry, make,
                                                               why: str) -> None:
    known = registry.register("user-login-value", avro.contract_text(avro.INPUT_SCHEMA))
    value = make(known)
    shown = fields(record(value), cache(registry))
    assert (shown["value"], shown["value_format"]) == (base64.b64encode(value).decode(), "base64")
    assert shown["note"].startswith("not decoded: ") and why in shown["note"]


def test_a_registry_that_does_not_answer_is_a_warning_and_the_tail_goes_on(registry: FakeRegistry) -> None:
    schema_id = registry.register("user-login-value", avro.contract_text(avro.INPUT_SCHEMA))
    warnings: list[str] = []
    clock = Clock()
    schemas = cache(registry, warnings, clock)
    registry.down = True
    out = io.StringIO()
    values = [framed(schema_id), b'{"plain": "json"}', framed(schema_id)]
    assert show(iter([record(v, offset=i) for i, v in enumerate(values)]), json_line, out, schemas) == 0
    shown = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [s["value_format"] for s in shown] == ["base64", "json", "base64"]
    assert shown[0]["note"] == "not decoded: the schema registry does not answer"
    assert len(warnings) == 1 and "does not answer" in warnings[0]  # not once per record
    registry.down = False
    clock.now += 10.0  # the retry pause is over
    back = fields(record(framed(schema_id)), schemas)
    assert (back["value"], back["value_format"]) == (EVENT, "avro")
    assert len(warnings) == 2 and "answers again" in warnings[1]


def test_json_and_short_binary_values_are_shown_as_before(registry: FakeRegistry) -> None:
    schemas = cache(registry)
    assert "schema_id" not in fields(record(b'{"a": 1}'), schemas)
    short = fields(record(b"\x00\xff"), schemas)  # too short to hold a schema id: not a frame
    assert (short["value"], short["value_format"]) == ("AP8=", "base64") and "schema_id" not in short
    assert registry.lookups == []


def test_bytes_in_an_avro_value_are_shown_as_base64(registry: FakeRegistry) -> None:
    schema_id = registry.register("blobs-value", BLOB_SCHEMA)
    value = avro.frame(schema_id, avro.encode(avro.parse(BLOB_SCHEMA), {"raw": b"\x00\xff", "n": 2}))
    shown = fields(record(value), cache(registry))
    assert orjson.loads(json_line(shown))["value"] == {"raw": "AP8=", "n": 2}
    assert text_lines(shown).splitlines()[1] == '  {"raw":"AP8=","n":2}'


def test_the_registry_flag_and_its_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tail.build_parser().parse_args(["t"]).schema_registry_url is None
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://r:1/apis/ccompat/v7")
    args = tail.build_parser().parse_args(["t"])
    assert args.schema_registry_url == "http://r:1/apis/ccompat/v7"
    schemas = tail.schema_cache(args.schema_registry_url)
    assert schemas is not None and schemas.client.url == "http://r:1/apis/ccompat/v7"
    assert tail.schema_cache(None) is None and tail.schema_cache("") is None
