"""A small run of the benchmark (python -m loginpipe.benchmark) against the session's broker.

Checks that every step runs, writes its results and cleans up after itself; no timing assertions.
The peers step's Quix Streams app needs its own virtual environment (about 150 MB, made on first
use): it is left out (--quix skip) unless BENCH_TEST_QUIX=1.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from loginpipe.kafka.admin import admin_client
from loginpipe.local import registry
from tests.helpers import run_cli

pytestmark = pytest.mark.integration

# Small: the test checks that every step runs and reports, not what it measures.
EVENTS = 10_000
RESTORE_USERS = 10_000
MEMORY_USERS = (5_000, 20_000)
WITH_QUIX = os.environ.get("BENCH_TEST_QUIX") == "1"
# The peers' confluent-kafka runs need it installed (the confluent extra); without it they are
# skipped with a note, which is checked too.
HAS_CONFLUENT = importlib.util.find_spec("confluent_kafka") is not None
# The avro step needs the local schema registry: built, its runs are tiny; not built (it would
# take Maven 2 minutes), the step is left out here. Its own test: test_benchmark_avro.py.
REGISTRY_BUILT = any((registry.DEFAULT_HOME / "app").glob(".complete-*"))


@pytest.mark.timeout(420 if WITH_QUIX else 300)
def test_small_benchmark_runs_every_step(bootstrap: str, tmp_path) -> None:
    result = run_cli(
        "-m", "loginpipe.benchmark", "--bootstrap-servers", bootstrap, "--events", str(EVENTS),
        "--latency-seconds", "5", "--latency-rate", "1000",
        "--memory-users", ",".join(map(str, MEMORY_USERS)),
        "--threads-list", "1", "--processes", "2", "--restore-users", str(RESTORE_USERS),
        "--guarantee-intervals", "100", "--guarantee-rounds", "1", "--guarantee-latency-seconds", "2",
        "--quix", "auto" if WITH_QUIX else "skip", "--out-dir", str(tmp_path),
        "--avro-micro-records", "1000", "--confluent-serializer", "skip",
        *([] if REGISTRY_BUILT else ["--skip", "avro"]),
        timeout_s=400 if WITH_QUIX else 280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    (written,) = tmp_path.glob("bench-*.json")
    report = json.loads(written.read_text())
    # A run of every step also writes latest.*; one that skips the avro step (no registry built)
    # writes bench-<time>.* only.
    prefix = "latest" if REGISTRY_BUILT else written.stem
    assert (tmp_path / f"{prefix}.md").read_text().startswith("# loginpipe benchmark")
    assert (tmp_path / f"{prefix}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| run | events/s |" in result.stdout  # the table is printed too
    assert "## State: changelogs, repartition, restore" in result.stdout
    assert all(row["accounting_ok"] for row in report["guarantees"]["summary"]), report["guarantees"]
    if REGISTRY_BUILT:  # JSON and Avro output on the same input, the Avro read back
        plain, framed = report["avro"]["runs"]
        assert plain["accounting_ok"] and framed["accounting_ok"], report["avro"]
        assert framed["read_failures"] == 0 and framed["compared_with_json"] > 0
        assert "## Avro output against JSON output" in result.stdout

    machine = report["machine"]
    for key in ("cpu_model", "cores", "memory_gib", "python", "kafka", "kafka_python", "java"):
        assert machine[key], key

    preload = report["preload"]
    assert preload["events"] == EVENTS
    assert preload["events_per_s"] > 0
    assert preload["value_bytes"] > 0

    runs = {run["kind"]: run for run in report["runs"]}
    assert set(runs) == {"java", "consume-only", "pass-through", "pipeline", *(["quix"] if WITH_QUIX else [])}
    for run in report["runs"]:
        assert run["consumed"] == EVENTS, run["label"]
        assert run["events_per_s"] > 0, run["label"]
        assert run["mb_per_s"] > 0, run["label"]
        assert run["cpu_s_per_million"] > 0, run["label"]
        assert run["peak_rss_mib"] > 0, run["label"]

    passes = [run for run in report["runs"] if run["kind"] == "pass-through"]
    clients = ["kafka-python", "confluent"] if HAS_CONFLUENT else ["kafka-python"]
    assert [run["client"] for run in passes] == clients
    for run in passes:
        assert run["output_records"] >= EVENTS and run["accounting_ok"], run["label"]
    pipelines = [run for run in report["runs"] if run["kind"] == "pipeline"]
    drains = [(run["threads"], run["processes"], run["client"]) for run in pipelines]
    confluent_drains = [(1, 1, "confluent"), (1, 2, "confluent")] if HAS_CONFLUENT else []
    assert drains == [(1, 1, "kafka-python"), (1, 2, "kafka-python"), *confluent_drains], report["notes"]
    if not HAS_CONFLUENT:
        assert any("confluent-kafka pass-through skipped" in note for note in report["notes"])
    for pipeline in pipelines:
        assert pipeline["accounting_ok"], pipeline["label"]
        assert pipeline["processed"] + pipeline["filtered"] + pipeline["dead_lettered"] == EVENTS
        # At-least-once: a re-sent output may be there twice, none may be missing.
        assert pipeline["output_records"] >= pipeline["processed"]
        assert pipeline["dlq_records"] >= pipeline["dead_lettered"]
        assert pipeline["vs_pass_through"] > 0
        assert pipeline["vs_consume_only"] > 0
        state = pipeline["state_topics"]
        # Every counted event goes through the repartition topic; the changelogs get a record per
        # changed key per batch.
        assert state["repartition"]["records"] >= pipeline["processed"]
        assert state["changelog"]["records"] > 0 and state["device_changelog"]["records"] > 0
        assert state["changelogs"]["bytes_per_event"] > 0
        machine = pipeline["machine"]  # where it stops: the cores over the run
        assert machine["cores"] >= 1 and machine["run_cores_busy"] > 0, pipeline["label"]
        assert machine["machine_cores_busy"] >= machine["other_cores_busy"]
    single, two = pipelines[:2]
    assert "vs_one_process" not in single
    assert two["vs_one_process"] > 0
    ratios = {ratio["name"]: ratio for ratio in report["peer_ratios"]}
    assert ratios["2 processes ÷ 1 process, kafka-python"]["value"] == round(
        two["events_per_s"] / single["events_per_s"], 3)
    assert "### Ratios in this run, against the goals" in result.stdout
    assert "### Where it stops" in result.stdout
    if HAS_CONFLUENT:
        assert ratios["confluent pipeline ÷ confluent pass-through"]["value"] > 0
    if WITH_QUIX:
        quix = runs["quix"]
        assert quix["accounting_ok"], quix
        assert quix["valid"] + quix["filtered"] + quix["invalid"] == EVENTS
        assert quix["output_records"] >= quix["valid"] > 0
        assert ratios["kafka-python pipeline ÷ Quix app"]["value"] > 0
    else:
        assert "Quix Streams app skipped (--quix skip)" in report["notes"]
    assert [p["process"] for p in two["per_process"]] == [0, 1]
    assert sum(p["consumed"] for p in two["per_process"]) == EVENTS
    assert two["group_events"] == two["processed"] == single["processed"]

    after_drain, query, synthetic = report["restore"]
    assert (after_drain["via"], query["via"], synthetic["via"]) == ("restorer", "query", "restorer")
    for restore in (after_drain, query):
        assert restore["events"] == single["processed"]  # the whole state came back
        assert restore["keys_per_s"] > 0
    assert synthetic["users"] == synthetic["devices"] == RESTORE_USERS
    assert synthetic["records"] >= 2 * RESTORE_USERS
    assert synthetic["seconds_per_million_users"] > 0
    assert synthetic["log_bytes_per_user"] > 0

    for key, client in (("latency", "kafka-python"), ("latency_confluent", "confluent")):
        latency = report[key]  # make test installs confluent-kafka: both clients are measured
        assert latency["client"] == client
        assert latency["produced"] == 5000
        assert latency["pipeline_consumed"] == 5000
        assert latency["outputs_joined"] > 0
        assert latency["outputs_unmatched"] == 0
        assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]

    for key, cap in (("uncapped", 10_000_000), ("default_cap", 1_000_000)):
        memory = report["memory"][key]
        assert memory["max_tracked_keys"] == cap
        points = memory["points"]
        assert points[-1]["users"] == MEMORY_USERS[-1]
        assert points[-1]["tracked_users"] == MEMORY_USERS[-1]
        assert all(point["rss_bytes"] > 0 for point in points)
    assert [p["users"] for p in report["memory"]["uncapped"]["points"]] == [0, *MEMORY_USERS]
    per_user = report["memory"]["bytes_per_user"]
    assert per_user["between_users"] == list(MEMORY_USERS)
    assert per_user["both"] > 0 and per_user["login"] > 0 and per_user["device"] > 0
    assert report["memory"]["login_only"]["points"][-1]["tracked_devices"] == 0
    assert report["memory"]["device_only"]["points"][-1]["tracked_users"] == 0

    admin = admin_client(bootstrap)
    try:
        leftovers = [t for t in admin.list_topics() if report["run_id"] in t]
    finally:
        admin.close()
    assert leftovers == [], "the benchmark's topics were not deleted"


@pytest.mark.timeout(200)
def test_peers_alone_run_on_their_own_preloaded_input(bootstrap: str, tmp_path) -> None:
    """--only peers (make bench-peers): the peers and the kafka-python runs they are compared with,
    nothing else; its own bench-<time>.{json,md,png}, latest.* untouched."""
    result = run_cli("-m", "loginpipe.benchmark", "--bootstrap-servers", bootstrap, "--events", "5000",
                     "--only", "peers", "--processes", "1", "--quix", "skip", "--out-dir", str(tmp_path),
                     timeout_s=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (json_path,) = tmp_path.glob("bench-*.json")
    assert json_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "latest.json").exists()
    report = json.loads(json_path.read_text())
    assert report["steps"] == ["peers"] and report["partial"]
    labels = [run["label"] for run in report["runs"]]
    expected = ["kafka-python pass-through", "confluent-kafka pass-through", "pipeline, 1 thread",
                "pipeline, 1 process, confluent"]
    assert labels == (expected if HAS_CONFLUENT else [expected[0], expected[2]]), report["notes"]
    assert all(run["consumed"] == 5000 and run["accounting_ok"] for run in report["runs"])
    assert "restore" not in report and "latency" not in report
    assert "[6/6] Quix Streams" in result.stdout  # every announced step counted, skipped ones too


def test_user_mistakes_are_one_line_errors(tmp_path) -> None:
    bad_flag = run_cli("-m", "loginpipe.benchmark", "--threads-list", "1,two", "--out-dir", str(tmp_path))
    assert bad_flag.returncode == 2
    assert "--threads-list" in bad_flag.stderr.splitlines()[-1]

    no_broker = run_cli("-m", "loginpipe.benchmark", "--bootstrap-servers", "127.0.0.1:1",
                        "--out-dir", str(tmp_path))
    assert no_broker.returncode == 1
    assert no_broker.stderr.strip().splitlines() == [
        "error: cannot reach a Kafka broker at 127.0.0.1:1; is it running, and on that port? (the local "
        "broker, make kafka-start, listens on 29092)"]
