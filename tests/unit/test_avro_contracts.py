"""The Avro contracts (schemas/*.avsc) stay in step with the JSON Schema ones beside them, and real
pipeline outputs and generated events survive an Avro round trip unchanged."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from loginpipe.core import avro, contracts
from loginpipe.core.batch import LocalState as Aggregates
from loginpipe.core.batch import Topology, process_batch
from loginpipe.core.events import RawRecord
from loginpipe.core.privacy import Privacy
from loginpipe.core.records import Routes
from loginpipe.local.generator import EventGenerator

NOW = 1_800_000_000.0
PAIRS = [(contracts.INPUT_SCHEMA, avro.INPUT_SCHEMA), (contracts.OUTPUT_SCHEMA, avro.OUTPUT_SCHEMA)]
INT32_MAX = 2**31 - 1
AVRO_KINDS = {"string": "string", "enum": "string", "int": "integer", "long": "integer",
              "float": "number", "double": "number", "boolean": "boolean", "null": "null", "array": "array"}


def json_kinds(spec: dict[str, Any]) -> set[str]:
    """The JSON types a JSON Schema field allows; "number" stands for integers too."""
    if "anyOf" in spec:
        kinds = set().union(*(json_kinds(option) for option in spec["anyOf"]))
    elif "const" in spec:
        kinds = {type_name(spec["const"])}
    else:
        kind = spec["type"]
        kinds = set(kind) if isinstance(kind, list) else {kind}
    return _widened(kinds)


def type_name(value: object) -> str:
    return {str: "string", bool: "boolean", int: "integer", float: "number"}[type(value)]


def avro_branches(avro_type: Any, named: dict[str, dict]) -> list[Any]:
    """An Avro type as its union branches, named types looked up (enums declared earlier)."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    return [named.get(branch, branch) if isinstance(branch, str) else branch for branch in branches]


def avro_kind(branch: Any) -> str:
    return AVRO_KINDS[branch if isinstance(branch, str) else branch["type"]]


def _widened(kinds: set[str]) -> set[str]:
    return kinds - {"integer"} if "number" in kinds else kinds


def drift(json_schema: dict[str, Any], avro_schema: dict[str, Any]) -> list[str]:
    """How an Avro record schema differs from a JSON Schema object schema, field by field."""
    problems: list[str] = []
    properties = json_schema["properties"]
    fields = {field["name"]: field for field in avro_schema["fields"]}
    if list(properties) != list(fields):
        problems.append(f"fields differ: JSON {list(properties)} vs Avro {list(fields)}")
    named: dict[str, dict] = {}
    for name, field in fields.items():
        branches = avro_branches(field["type"], named)
        for branch in branches:
            if isinstance(branch, dict) and branch["type"] == "enum":
                named[branch["name"]] = branch
            if isinstance(branch, dict) and branch["type"] == "array" and isinstance(branch["items"], dict):
                named[branch["items"]["name"]] = branch["items"]
        if name in properties:
            problems.extend(f"{name}: {problem}" for problem in
                            _field_drift(properties[name], field, branches, named,
                                         name in json_schema["required"]))
    return problems


def _field_drift(spec: dict[str, Any], field: dict[str, Any], branches: list[Any],
                 named: dict[str, dict], required: bool) -> list[str]:
    problems = []
    kinds = _widened({avro_kind(branch) for branch in branches})
    if kinds != json_kinds(spec):
        problems.append(f"JSON allows {sorted(json_kinds(spec))}, Avro {sorted(kinds)}")
    if not required and "default" not in field:
        problems.append("optional in JSON, but no default in Avro")
    if "enum" in spec:
        symbols = [branch.get("symbols") for branch in branches if isinstance(branch, dict)]
        if symbols != [spec["enum"]]:
            problems.append(f"enum {spec['enum']} vs Avro {symbols}")
    if "const" in spec and field.get("default") != spec["const"]:
        problems.append(f"const {spec['const']!r}: the Avro default should be the same")
    if "items" in spec:
        arrays = [branch for branch in branches if isinstance(branch, dict) and branch["type"] == "array"]
        items = avro_branches(arrays[0]["items"], named) if arrays else []
        item_field = {"name": "items", "type": arrays[0]["items"]} if arrays else {}
        problems.extend(f"items: {p}" for p in _field_drift(spec["items"], item_field, items, named, True))
    if any(branch == "int" for branch in branches) and spec.get("maximum", INT32_MAX + 1) > INT32_MAX:
        problems.append("an Avro int, but JSON sets no maximum within 32 bits: use long")
    return problems


@pytest.mark.parametrize(("json_name", "avro_name"), PAIRS)
def test_the_avro_contract_matches_the_json_schema(json_name: str, avro_name: str) -> None:
    assert drift(contracts.load(json_name), json.loads(avro.contract_text(avro_name))) == []


@pytest.mark.parametrize(("json_name", "avro_name"), PAIRS)
def test_the_avro_contract_carries_the_same_version(json_name: str, avro_name: str) -> None:
    avro_schema = json.loads(avro.contract_text(avro_name))
    assert avro_schema["version"] == contracts.load(json_name)["x-version"]
    assert f"v{avro_schema['version']}" in avro_name


def _mutated(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(json.loads(avro.contract_text(avro.OUTPUT_SCHEMA)))
    fields = {field["name"]: field for field in schema["fields"]}
    change(schema, fields)
    return schema


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s, f: s["fields"].remove(f["region"]), "fields differ"),
    (lambda s, f: s["fields"].append({"name": "extra", "type": "string"}), "fields differ"),
    (lambda s, f: f["hour_of_day"].update(type="string"), "hour_of_day: JSON allows ['integer']"),
    (lambda s, f: f["local_hour_of_day"].update(type="int"), "local_hour_of_day: JSON allows"),
    (lambda s, f: f["privacy"].update(type=["null", "boolean"]), "privacy: JSON allows ['boolean']"),
    (lambda s, f: f["timestamp"].update(type=["long", "string"]), "timestamp: JSON allows"),
    (lambda s, f: f["region"]["type"]["symbols"].append("Moon"), "region: enum"),
    (lambda s, f: f["risk_factors"]["type"]["items"]["symbols"].pop(), "risk_factors: items: enum"),
    (lambda s, f: f["schema"].update(default="processed-login/v2"), "schema: const"),
    (lambda s, f: f["source_offset"].update(type="int"), "source_offset: an Avro int"),
])
def test_the_drift_check_notices_a_change(change: Any, expected: str) -> None:
    problems = drift(contracts.load(contracts.OUTPUT_SCHEMA), _mutated(change))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_the_drift_check_notices_an_optional_json_field_without_an_avro_default() -> None:
    json_schema = copy.deepcopy(contracts.load(contracts.INPUT_SCHEMA))
    json_schema["required"].remove("locale")
    problems = drift(json_schema, json.loads(avro.contract_text(avro.INPUT_SCHEMA)))
    assert problems == ["locale: optional in JSON, but no default in Avro"]


def _outputs(privacy: Privacy | None) -> list[dict[str, Any]]:
    generated = list(EventGenerator(seed=3, users=150, bad_ratio=0.1).generate(3000))
    records = [RawRecord("in", 0, i, 0, g.key, g.value) for i, g in enumerate(generated)]
    result = process_batch(records, Aggregates(), Topology(Routes("out", "dlq", privacy=privacy)), NOW)
    return [orjson.loads(o.value) for o in result.outputs if o.topic == "out"]


@pytest.mark.parametrize("privacy", [None, Privacy(b"k" * 32)], ids=["plain", "privacy"])
def test_real_outputs_round_trip_through_the_avro_contract(privacy: Privacy | None) -> None:
    schema = avro.contract(avro.OUTPUT_SCHEMA)
    outputs = _outputs(privacy)
    assert len(outputs) > 1500
    # the sample reaches every optional branch: a null local hour and a set one, risk factors or none
    assert {o["local_hour_of_day"] is None for o in outputs} == {True, False}
    assert {bool(o["risk_factors"]) for o in outputs} == {True, False}
    for output in outputs:
        assert avro.decode(schema, avro.encode(schema, output)) == output


def test_generated_events_round_trip_through_the_input_contract() -> None:
    schema = avro.contract(avro.INPUT_SCHEMA)
    events = [orjson.loads(g.value) for g in EventGenerator(seed=4, users=100, bad_ratio=0.0).generate(2000)]
    for event in events:
        assert avro.decode(schema, avro.encode(schema, event)) == event
    # a fraction timestamp and a numeric string keep their JSON types through the union
    for timestamp in (1694479551.25, "1694479551"):
        event = {**events[0], "timestamp": timestamp}
        assert avro.decode(schema, avro.encode(schema, event))["timestamp"] == timestamp
