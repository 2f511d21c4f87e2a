"""The generator writes Avro through a real registry to a real broker, and ``loginpipe tail`` reads it
back decoded: every record in the order written, good events with the registered schema id, each
bad kind shown for what it is. The registry: one of the module's own (tests/conftest.py), on a free
port (pytest -m registry)."""

from __future__ import annotations

import orjson
import pytest

from loginpipe import serde
from loginpipe.core import avro
from loginpipe.local.generator import GOOD, UNKNOWN_SCHEMA_ID, EventGenerator
from loginpipe.local.registry import LocalRegistry
from loginpipe.registry_client import SchemaRegistryClient
from tests.helpers import run_cli
from tests.integration.test_tail import topic as topic  # the fixture: one partition, in order

pytestmark = [pytest.mark.integration, pytest.mark.registry]

COUNT = 400
SEED = 5
USERS = 500
BAD_RATIO = 0.3


@pytest.fixture(scope="module")
def registry(private_registry: LocalRegistry) -> str:
    return private_registry.url


def test_generated_avro_is_read_back_decoded_by_tail(bootstrap: str, registry: str, topic: str) -> None:
    generated = run_cli("-m", "loginpipe.local.generator", "--bootstrap-servers", bootstrap, "--topic", topic,
                        "--format", "avro", "--schema-registry-url", registry, "--count", str(COUNT),
                        "--rate", "0", "--seed", str(SEED), "--users", str(USERS),
                        "--bad-ratio", str(BAD_RATIO), timeout_s=120)
    assert generated.returncode == 0, generated.stderr
    schema_id = SchemaRegistryClient(registry).latest(serde.subject(topic))["id"]
    assert f"writing Avro, schema id {schema_id} ({topic}-value)" in generated.stderr

    shown = tail(bootstrap, topic, "--schema-registry-url", registry)
    # The kinds and keys do not depend on the clock: the library with the same seed says what was sent.
    output = serde.AvroOutput(topic, schema_id, avro.contract(avro.INPUT_SCHEMA))
    sent = list(EventGenerator(seed=SEED, users=USERS, bad_ratio=BAD_RATIO, avro=output).generate(COUNT))
    assert [s["key"].encode() for s in shown] == [r.key for r in sent]
    kinds = {r.kind for r in sent}
    assert {GOOD, "truncated_avro", "unknown_schema_id", "avro_invalid_ip", "invalid_json"} <= kinds
    for line, record in zip(shown, sent, strict=True):
        check(line, record.kind, schema_id)


def test_without_a_registry_tail_shows_avro_as_base64_with_a_note(bootstrap: str, registry: str,
                                                                  topic: str) -> None:
    generated = run_cli("-m", "loginpipe.local.generator", "--bootstrap-servers", bootstrap, "--topic", topic,
                        "--format", "avro", "--schema-registry-url", registry, "--count", "3", "--rate", "0",
                        "--bad-ratio", "0", "--users", "10", timeout_s=120)
    assert generated.returncode == 0, generated.stderr
    result = run_cli("-m", "loginpipe.tail", "--bootstrap-servers", bootstrap, topic, "--from-beginning",
                     "--count", "3", env={"SCHEMA_REGISTRY_URL": ""}, timeout_s=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 9  # the head, the value, the note: for each record
    assert all(head.split(" schema-id ")[1].isdigit() for head in lines[0::3])
    assert all(value.startswith("  base64:AAAA") for value in lines[1::3])  # the magic byte, a small id
    assert all("give --schema-registry-url" in note for note in lines[2::3])


def tail(bootstrap: str, topic: str, *args: str) -> list[dict]:
    result = run_cli("-m", "loginpipe.tail", "--bootstrap-servers", bootstrap, topic, "--from-beginning",
                     "--count", str(COUNT), "--json", *args, timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the registry answered: no warning
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def check(line: dict, kind: str, schema_id: int) -> None:
    """One record as tail showed it, for the kind the generator wrote."""
    if kind in (GOOD, "avro_invalid_ip", "avro_invalid_app_version"):
        assert (line["value_format"], line["schema_id"]) == ("avro", schema_id), line
        if kind == GOOD:  # a bad record's key is some other user's
            assert line["value"]["user_id"] == line["key"]
        assert set(line["value"]) == {"user_id", "app_version", "device_type", "ip", "locale", "device_id",
                                      "timestamp"}
        if kind == "avro_invalid_ip":
            assert line["value"]["ip"] == "not-an-ip"
        elif kind == "avro_invalid_app_version":
            assert line["value"]["app_version"] == "x"
    elif kind == "unknown_schema_id":
        assert (line["value_format"], line["schema_id"]) == ("base64", UNKNOWN_SCHEMA_ID), line
        assert f"schema id {UNKNOWN_SCHEMA_ID} is not an Avro schema" in line["note"]
    elif kind == "truncated_avro":
        assert (line["value_format"], line["schema_id"]) == ("base64", schema_id), line
        assert "truncated Avro body" in line["note"]
    else:  # the JSON kinds stay JSON (or text, or bytes that are neither)
        assert "schema_id" not in line and line["value_format"] in ("json", "text", "base64"), line
