"""The real local schema registry: built (once) and started with its command in a home of its own,
schemas registered, read back by id, kept across a restart, and evolved under BACKWARD (and FULL)
compatibility as ``python -m loginpipe.registry check`` reports it. By hand: pytest -m registry -s
(the first build takes about 2 minutes and 200 MB of Maven downloads; later runs start in seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loginpipe.core import avro
from loginpipe.local.broker import free_port
from loginpipe.local.registry import DEFAULT_HOME, registry_url
from loginpipe.registry_client import RegistryError, SchemaRegistryClient
from loginpipe.topics import OUTPUT_TOPIC

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[2]
SUBJECT = f"{OUTPUT_TOPIC}-value"


def registry_command(*args: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "loginpipe.registry", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    print(f"registry {' '.join(args)}: {time.monotonic() - started:.1f}s\n{result.stdout}{result.stderr}")
    return result


@dataclass(frozen=True)
class Running:
    home: Path
    port: int

    @property
    def url(self) -> str:
        return registry_url(self.port)

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return registry_command(*args, "--home", str(self.home), "--port", str(self.port))


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A registry of the tests' own (home and free port: the checkout's, if it runs, is left alone),
    started by its command from the checkout's build and stopped at the end."""
    fetched = registry_command("fetch")
    assert fetched.returncode == 0, fetched.stderr
    home = tmp_path_factory.mktemp("registry")
    (home / "app").symlink_to(DEFAULT_HOME / "app")  # built once, shared
    running = Running(home, free_port())
    started = running.command("start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started Apicurio Registry")
    try:
        again = running.command("start")
        assert (again.returncode, again.stdout.split(" (pid")[0]) == (0, f"already running at {running.url}")
        yield running
    finally:
        stopped = running.command("stop")
        assert stopped.returncode == 0 and stopped.stdout.startswith("stopped"), stopped
    status = running.command("status")
    assert (status.returncode, status.stdout.strip()) == (3, "not running")


@pytest.fixture(scope="module")
def url(local: Running) -> str:
    return local.url


@pytest.fixture
def client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient(url)


def test_the_processed_schema_is_registered_with_backward_compatibility(client: SchemaRegistryClient) -> None:
    assert client.set_compatibility(SUBJECT, "BACKWARD") == "BACKWARD"
    assert client.compatibility(SUBJECT) == "BACKWARD"
    text = avro.contract_text(avro.OUTPUT_SCHEMA)
    schema_id = client.register(SUBJECT, text)
    assert client.register(SUBJECT, text) == schema_id  # the same schema again: the same id
    assert SUBJECT in client.subjects()
    fetched = client.schema_by_id(schema_id)
    assert json.loads(fetched) == json.loads(text)
    assert client.latest(SUBJECT)["id"] == schema_id


def test_a_framed_record_is_read_back_through_the_registry(client: SchemaRegistryClient) -> None:
    schema_id = client.register(SUBJECT, avro.contract_text(avro.OUTPUT_SCHEMA))
    record = {
        "user_id": "u1", "app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": "TX",
        "device_id": "d1", "timestamp": 1694479551, "login_time": "2023-09-12T00:45:51Z",
        "day_of_week": "Tuesday", "hour_of_day": 0, "local_hour_of_day": 19,
        "processed_timestamp": "2023-09-12T00:45:52.000Z", "processing_delay_seconds": 1.0,
        "region": "South", "app_version_major": 2, "app_version_minor": 3, "app_version_patch": 0,
        "total_logins_for_version": 1, "total_logins_from_locale": 1, "total_logins_for_device_type": 1,
        "distinct_ips_for_user": 1, "multi_ip_user": False, "users_on_device": 1, "shared_device": False,
        "most_common_device_type": "ios", "risk_score": 10, "risk_level": "low",
        "risk_factors": ["private_ip"], "privacy": False, "source_partition": 0, "source_offset": 42,
        "schema": "processed-login/v1",
    }
    value = avro.frame(schema_id, avro.encode(avro.contract(avro.OUTPUT_SCHEMA), record))
    read_id, body = avro.unframe(value)
    assert avro.decode(avro.parse(client.schema_by_id(read_id)), body) == record


def test_backward_compatibility_accepts_an_optional_field_and_refuses_a_required_one(
        client: SchemaRegistryClient) -> None:
    subject = f"evolution-{uuid.uuid4().hex[:8]}-value"  # fresh: deletes in Apicurio are soft
    client.set_compatibility(subject, "BACKWARD")
    v1 = json.loads(avro.contract_text(avro.OUTPUT_SCHEMA))
    first = client.register(subject, json.dumps(v1))
    country = {"name": "country", "type": ["null", "string"], "default": None}
    optional = {**v1, "fields": [*v1["fields"], country]}
    required = {**v1, "fields": [*v1["fields"], {"name": "tenant", "type": "string"}]}
    assert client.is_compatible(subject, json.dumps(optional))
    assert not client.is_compatible(subject, json.dumps(required))
    second = client.register(subject, json.dumps(optional))
    assert second != first
    with pytest.raises(RegistryError) as refusal:
        client.register(subject, json.dumps(required))
    assert refusal.value.status == 409 and "tenant" in refusal.value.message
    assert client.latest(subject)["id"] == second
    client.delete_subject(subject, permanent=True)
    assert subject not in client.subjects()


def test_schemas_and_their_ids_survive_a_restart(local: Running, client: SchemaRegistryClient) -> None:
    subject = f"restart-{uuid.uuid4().hex[:8]}-value"
    text = avro.contract_text(avro.OUTPUT_SCHEMA)
    before = client.register(subject, text)
    assert local.command("stop").stdout.startswith("stopped")
    assert (local.home / "data").is_dir()
    assert local.command("start").stdout.startswith("started")
    assert json.loads(client.schema_by_id(before)) == json.loads(text)  # old framed records still decode
    assert client.register(subject, text) == before
    other = client.register(f"{subject}-2", json.dumps({"type": "record", "name": "R", "fields": []}))
    assert other > before  # ids do not start again at 1


# ---------------------------------------------------------------- the check command

def check(local: Running, schema: Path, subject: str, *more: str) -> subprocess.CompletedProcess:
    return registry_command("check", str(schema), "--subject", subject, "--schema-registry-url", local.url,
                            *more)


def test_the_check_command_applies_the_real_rule_of_each_level(local: Running, client: SchemaRegistryClient,
                                                               tmp_path: Path) -> None:
    subject = f"check-{uuid.uuid4().hex[:8]}-value"
    client.set_compatibility(subject, "BACKWARD")
    v1 = json.loads(avro.contract_text(avro.OUTPUT_SCHEMA))
    first = client.register(subject, json.dumps(v1))
    against = f"{subject} version 1 (id {first})"
    files = {
        "optional": {**v1, "fields": [*v1["fields"], {"name": "country", "type": ["null", "string"],
                                                       "default": None}]},
        "required": {**v1, "fields": [*v1["fields"], {"name": "tenant", "type": "string"}]},
        "removed": {**v1, "fields": [f for f in v1["fields"] if f["name"] != "region"]},
    }
    path = {name: tmp_path / f"{name}.avsc" for name in files}
    for name, schema in files.items():
        path[name].write_text(json.dumps(schema))

    optional = check(local, path["optional"], subject)
    assert (optional.returncode, optional.stdout) == (
        0, f"compatible: {path['optional']} with {against} under level BACKWARD\n")
    required = check(local, path["required"], subject)
    assert (required.returncode, required.stdout) == (
        1, f"incompatible: {path['required']} with {against} under level BACKWARD: tenant at /fields/32 "
           "(BACKWARD: the new schema must read data written with the old; added fields need defaults)\n")
    # The example, removing a required field, is accepted under BACKWARD (the new schema
    # still reads old data, skipping the field); FORWARD and FULL refuse it (old readers need it).
    assert check(local, path["removed"], subject).returncode == 0
    removed_full = check(local, path["removed"], subject, "--level", "FULL")
    assert (removed_full.returncode, removed_full.stdout) == (
        1, f"incompatible: {path['removed']} with {against} under level FULL: region at /fields/13 (FULL: "
           "each must read data written with the other; only fields with defaults may be added or removed)\n")
    assert client.compatibility(subject) == "BACKWARD"  # --level left the subject alone
    assert not [s for s in client.subjects() if "loginpipe-check" in s]  # and its scratch copy gone
    client.set_compatibility(subject, "FORWARD")
    refused = registry_command("register", str(path["removed"]), "--subject", subject,
                               "--schema-registry-url", local.url)
    assert (refused.returncode, refused.stdout) == (
        1, f"refused: {path['removed']} under {subject} by level FORWARD: region at /fields/13 (FORWARD: "
           "the old schema must read data written with the new; only fields with defaults may be removed)\n")
    registered = registry_command("register", str(path["optional"]), "--subject", subject,
                                  "--schema-registry-url", local.url)
    assert registered.returncode == 0
    latest = client.latest(subject)
    assert registered.stdout == f"registered: {path['optional']} under {subject} with id {latest['id']}\n"
