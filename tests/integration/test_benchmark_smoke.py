"""A small run of the benchmark (python -m loginpipe.benchmark) against the session's broker.

Checks that every step runs, writes its results and cleans up after itself; no timing assertions.
"""

from __future__ import annotations

import json

import pytest

from loginpipe.kafka.admin import admin_client
from tests.helpers import run_cli

pytestmark = pytest.mark.integration

EVENTS = 20_000
RESTORE_USERS = 20_000


@pytest.mark.timeout(240)
def test_small_benchmark_runs_every_step(bootstrap: str, tmp_path) -> None:
    result = run_cli(
        "-m", "loginpipe.benchmark", "--bootstrap-servers", bootstrap, "--events", str(EVENTS),
        "--latency-seconds", "5", "--latency-rate", "1000", "--memory-users", "10000,50000",
        "--threads-list", "1", "--processes", "2", "--restore-users", str(RESTORE_USERS),
        "--guarantee-intervals", "100", "--guarantee-rounds", "1", "--guarantee-latency-seconds", "2",
        "--out-dir", str(tmp_path), timeout_s=220,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    report = json.loads((tmp_path / "latest.json").read_text())
    assert list(tmp_path.glob("bench-*.json"))
    assert (tmp_path / "latest.md").read_text().startswith("# loginpipe benchmark")
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| run | events/s |" in result.stdout  # the table is printed too
    assert "## State: changelogs, repartition, restore" in result.stdout
    assert all(row["accounting_ok"] for row in report["guarantees"]["summary"]), report["guarantees"]

    machine = report["machine"]
    for key in ("cpu_model", "cores", "memory_gib", "python", "kafka", "kafka_python", "java"):
        assert machine[key], key

    preload = report["preload"]
    assert preload["events"] == EVENTS
    assert preload["events_per_s"] > 0
    assert preload["value_bytes"] > 0

    runs = {run["kind"]: run for run in report["runs"]}
    assert set(runs) == {"java", "consume-only", "pass-through", "pipeline"}
    for run in report["runs"]:
        assert run["consumed"] == EVENTS, run["label"]
        assert run["events_per_s"] > 0, run["label"]
        assert run["mb_per_s"] > 0, run["label"]
        assert run["cpu_s_per_million"] > 0, run["label"]
        assert run["peak_rss_mib"] > 0, run["label"]

    assert runs["pass-through"]["output_records"] >= EVENTS
    pipelines = [run for run in report["runs"] if run["kind"] == "pipeline"]
    assert [(run["threads"], run["processes"]) for run in pipelines] == [(1, 1), (1, 2)]
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
    single, two = pipelines
    assert "vs_one_process" not in single
    assert two["vs_one_process"] > 0
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

    latency = report["latency"]
    assert latency["produced"] == 5000
    assert latency["pipeline_consumed"] == 5000
    assert latency["outputs_joined"] > 0
    assert latency["outputs_unmatched"] == 0
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]

    for key, cap in (("uncapped", 10_000_000), ("default_cap", 1_000_000)):
        memory = report["memory"][key]
        assert memory["max_tracked_keys"] == cap
        points = memory["points"]
        assert points[-1]["users"] == 50_000
        assert points[-1]["tracked_users"] == 50_000
        assert all(point["rss_bytes"] > 0 for point in points)
    assert [p["users"] for p in report["memory"]["uncapped"]["points"]] == [0, 10_000, 50_000]
    per_user = report["memory"]["bytes_per_user"]
    assert per_user["between_users"] == [10_000, 50_000]
    assert per_user["both"] > 0 and per_user["login"] > 0 and per_user["device"] > 0
    assert report["memory"]["login_only"]["points"][-1]["tracked_devices"] == 0
    assert report["memory"]["device_only"]["points"][-1]["tracked_users"] == 0

    admin = admin_client(bootstrap)
    try:
        leftovers = [t for t in admin.list_topics() if report["run_id"] in t]
    finally:
        admin.close()
    assert leftovers == [], "the benchmark's topics were not deleted"


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
