"""The real local schema registry: built (once) and started with its command, schemas registered,
read back by id and evolved under BACKWARD compatibility. By hand: pytest -m registry -s (the first
build takes about 2 minutes and 200 MB of Maven downloads; later runs start in seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loginpipe.core import avro
from loginpipe.local.broker import free_port
from loginpipe.local.registry import LocalRegistry, registry_url
from loginpipe.registry_client import RegistryError, SchemaRegistryClient
from loginpipe.topics import OUTPUT_TOPIC

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[2]
SUBJECT = f"{OUTPUT_TOPIC}-value"


def registry_command(*args: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "loginpipe.local.registry", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    print(f"registry {' '.join(args)}: {time.monotonic() - started:.1f}s\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A registry started by its command on a free port, stopped at the end; or the checkout's own
    when it already runs (left running)."""
    running = LocalRegistry()
    if running.pid() is not None:
        yield registry_url(running.running_port() or running.port)
        return
    port = str(free_port())
    fetched = registry_command("fetch")
    assert fetched.returncode == 0, fetched.stderr
    started = registry_command("start", "--port", port)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started Apicurio Registry")
    try:
        again = registry_command("start", "--port", port)
        assert (again.returncode, again.stdout.split(" (pid")[0]) == (
            0, f"already running at http://127.0.0.1:{port}/apis/ccompat/v7")
        yield f"http://127.0.0.1:{port}/apis/ccompat/v7"
    finally:
        stopped = registry_command("stop")
        assert stopped.returncode == 0 and stopped.stdout.startswith("stopped"), stopped
    status = registry_command("status")
    assert (status.returncode, status.stdout.strip()) == (3, "not running")


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
