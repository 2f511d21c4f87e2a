"""The data contracts: the parser agrees with the input schema, outputs keep the output schema,
and the README's field tables are the schemas' own."""

from __future__ import annotations

import fastjsonschema
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from loginpipe.core import contracts, events
from loginpipe.core.batch import LocalState as Aggregates
from loginpipe.core.batch import Topology, process_batch
from loginpipe.core.events import LoginEvent, RawRecord, parse_unguarded
from loginpipe.core.privacy import Privacy
from loginpipe.core.records import Routes
from loginpipe.local.generator import EventGenerator
from tests.helpers import ROOT

NOW = 1_800_000_000.0
input_schema = contracts.validator(contracts.INPUT_SCHEMA)
output_schema = contracts.validator(contracts.OUTPUT_SCHEMA)
CLOCK_REASONS = {events.NEGATIVE_TIMESTAMP, events.FUTURE_TIMESTAMP}  # beyond what a schema can say


def schema_accepts(data: object) -> bool:
    try:
        input_schema(data)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def near_valid_values(name: str):
    """Values for one field: mostly plausible, often just wrong."""
    text = st.text(max_size=12) | st.text(alphabet="0123456789.: \n\t-abcdef", max_size=20)
    special = {
        "app_version": st.sampled_from(["2.3.0", "10.0.1", "1.2", "1.2.3\n", "a.b.c", "1.2.3.4"]),
        "ip": st.sampled_from(["1.2.3.4", "::1", "2001:db8::1", "256.1.1.1", "1.2.3", "010.1.1.1", ""]),
        "timestamp": st.sampled_from([1694479551, "1694479551", " 12 ", "-5", "1e5", "12.5", "", True]),
    }
    other = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
             | st.floats(allow_nan=False, allow_infinity=False))
    usual = special.get(name, st.text(min_size=1, max_size=8))
    return usual | text | other | st.lists(st.booleans(), max_size=2)


event_like = st.fixed_dictionaries(
    {}, optional={name: near_valid_values(name) for name in events.REQUIRED_FIELDS})


@settings(max_examples=1500)
@given(event_like)
def test_the_parser_accepts_exactly_what_the_input_schema_accepts(data: dict) -> None:
    result = parse_unguarded(orjson.dumps(data), NOW)  # no catch-all: a bug raises
    parser_accepts = isinstance(result, LoginEvent) or result.reason in CLOCK_REASONS
    assert parser_accepts == schema_accepts(data), result


@given(event_like)
def test_a_rejection_names_the_rule_the_schema_reports(data: dict) -> None:
    result = parse_unguarded(orjson.dumps(data), NOW)
    if not isinstance(result, LoginEvent):
        assert result.reason in events.REASONS
        assert result.detail != "rejected by the parser but valid by the schema"


def test_schemas_are_versioned_and_well_formed() -> None:
    for name, version in ((contracts.INPUT_SCHEMA, 1), (contracts.OUTPUT_SCHEMA, 1)):
        schema = contracts.load(name)
        assert schema["x-version"] == version and f"v{version}" in name
        assert schema["$id"].endswith(f"v{version}")
        assert set(schema["required"]) <= set(schema["properties"])
        assert all(spec.get("description") for spec in schema["properties"].values())
    output = contracts.load(contracts.OUTPUT_SCHEMA)
    assert output["properties"]["schema"]["const"] == contracts.OUTPUT_SCHEMA_ID


def test_every_output_record_keeps_the_output_schema_with_and_without_privacy() -> None:
    generated = list(EventGenerator(seed=2, users=200, bad_ratio=0.1).generate(4000))
    records = [RawRecord("in", 0, i, 0, g.key, g.value) for i, g in enumerate(generated)]
    for privacy in (None, Privacy(b"k" * 32)):
        topology = Topology(Routes("out", "dlq", privacy=privacy))
        result = process_batch(records, Aggregates(), topology, NOW)
        processed = [o for o in result.outputs if o.topic == "out"]
        assert len(processed) == result.processed > 2500
        for output in processed:
            output_schema(orjson.loads(output.value))


def test_readme_field_tables_are_rendered_from_the_schemas() -> None:
    readme = (ROOT / "README.md").read_text()
    assert contracts.render_readme(readme) == readme, \
        "README field tables are stale: python -m loginpipe.core.contracts --write README.md"
