"""The benchmark's avro step against the session's broker and the real local registry: a small
``--only avro`` run drains the same input with JSON and with Avro output, reads every sampled Avro
output back independently, and cleans up; the registry it starts for itself is its own and is
stopped after. Skipped where the registry is not built (python -m loginpipe.local.registry fetch).
No timing assertions."""

from __future__ import annotations

import json

import pytest

from loginpipe.benchmark.avro import bench_registry
from loginpipe.local import registry
from loginpipe.local.broker import free_port
from loginpipe.registry_client import SchemaRegistryClient
from tests.helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.registry]

EVENTS = 4_000


def registry_built() -> bool:
    app = registry.DEFAULT_HOME / "app"
    return (app / "quarkus-run.jar").is_file() and any(app.glob(".complete-*"))


needs_registry = pytest.mark.skipif(not registry_built(), reason="the local registry is not built")


@needs_registry
def test_bench_starts_a_registry_of_its_own_and_stops_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(registry, "DEFAULT_PORT", free_port())  # none to reuse there: it starts one
    pid_file = registry.DEFAULT_HOME / "registry.pid"
    users_pid = pid_file.read_text() if pid_file.exists() else None
    with bench_registry(None, tmp_path) as found:
        assert found.url is not None, found.how
        assert found.how.startswith("started Apicurio Registry"), found.how
        assert registry.api_answers(found.url)
        url = found.url
    assert not registry.api_answers(url)
    # the checkout's own registry (if any) was neither replaced nor stopped
    assert (pid_file.read_text() if pid_file.exists() else None) == users_pid


@needs_registry
@pytest.mark.timeout(300)
def test_small_avro_step_compares_the_formats_and_reads_avro_back(bootstrap: str, tmp_path) -> None:
    result = run_cli("-m", "loginpipe.benchmark", "--bootstrap-servers", bootstrap, "--only", "avro",
                     "--events", str(EVENTS), "--avro-micro-records", "500", "--confluent-serializer", "skip",
                     "--out-dir", str(tmp_path), timeout_s=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert not (tmp_path / "latest.json").exists()  # a partial run leaves latest.* alone
    avro = report["avro"]
    plain, framed = avro["runs"]
    assert (plain["output_format"], framed["output_format"]) == ("json", "avro")
    for row in (plain, framed):
        assert row["accounting_ok"], row
        assert row["consumed"] == EVENTS == row["processed"] + row["filtered"] + row["dead_lettered"]
        assert row["sampled"] == row["output_records"] == row["processed"]  # fewer than the sample size
        assert row["read_failures"] == 0
        assert 0 < row["snappy_bytes_per_record"] < row["value_bytes_per_record"]
    assert framed["processed"] == plain["processed"]  # the same input, the same split
    assert framed["schema_ids"] == [framed["registered_schema_id"]]
    assert framed["compared_with_json"] == framed["processed"] and framed["content_mismatches"] == 0
    assert framed["value_bytes_per_record"] < plain["value_bytes_per_record"]
    assert avro["ratios"]["value_bytes_per_record"] == round(
        framed["value_bytes_per_record"] / plain["value_bytes_per_record"], 3)
    names = [row["serializer"] for row in avro["serializers"]["rows"]]
    assert names == ["orjson.dumps (the JSON output)", "fastavro schemaless_writer",
                     "fastavro, strict and framed (core/avro.py, serde.AvroOutput)"]
    assert "## Avro output against JSON output" in result.stdout
    # the subjects it registered are gone from the registry it used
    url = avro["registry_url"]
    if registry.api_answers(url):  # still running: the checkout's own, or one given
        ours = f"lpbench-{report['run_id']}"
        assert not [s for s in SchemaRegistryClient(url).subjects() if s.startswith(ours)]
