"""The benchmark's pure peer logic: ratios against the goals, the CPU split, the verdict on where
2 processes stop, the step counter, the report's new lines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loginpipe.benchmark.cli import count_announcements, selected_steps
from loginpipe.benchmark.peers import quix_accounting
from loginpipe.benchmark.process import cpu_split
from loginpipe.benchmark.report import add_ratios, markdown, peer_ratios, stop_verdict
from loginpipe.benchmark.steps import CLIENT_FLAG_RE


def run(label: str, kind: str, rate: float, rss: float = 100.0, client: str | None = None,
        processes: int = 1, threads: int = 1, **extra) -> dict:
    row = {"label": label, "kind": kind, "events_per_s": rate, "peak_rss_mib": rss, "mb_per_s": 1.0,
           "cpu_s_per_million": 10.0, "consumed": 1000, **extra}
    if client:
        row["client"] = client
    if kind == "pipeline":
        row.update(threads=threads, processes=processes, accounting_ok=True, processed=900, filtered=80,
                   dead_lettered=20)
    return row


def sample_runs() -> list[dict]:
    return [
        run("kafka-python consume-only", "consume-only", 200_000, client="kafka-python"),
        run("kafka-python pass-through", "pass-through", 40_000, client="kafka-python"),
        run("confluent-kafka pass-through", "pass-through", 120_000, client="confluent"),
        run("pipeline, 1 thread", "pipeline", 20_000, rss=300, client="kafka-python"),
        run("pipeline, 2 processes", "pipeline", 36_000, rss=250, client="kafka-python", processes=2),
        run("pipeline, 1 process, confluent", "pipeline", 50_000, rss=200, client="confluent"),
        run("Quix Streams 3.28.1 app", "quix", 8_000, rss=3_000, client="quixstreams"),
    ]


def test_pipeline_ratios_use_their_own_clients_baselines() -> None:
    runs = sample_runs()
    ratios = add_ratios(runs)
    single, two, confluent = (r for r in runs if r["kind"] == "pipeline")
    assert single["vs_pass_through"] == 0.5  # 20k over kafka-python's 40k
    assert confluent["vs_pass_through"] == round(50_000 / 120_000, 3)  # over confluent's own
    assert two["vs_one_process"] == 1.8 and "vs_one_process" not in confluent  # its own client's 1 process
    assert confluent["vs_consume_only"] == 0.25
    assert ratios["pipeline_t1c_vs_pass_through"] == confluent["vs_pass_through"]
    assert ratios["pipeline_p2_vs_one_process"] == 1.8


def test_a_confluent_kafka_client_name_counts_as_confluent() -> None:
    runs = [run("confluent-kafka pass-through", "pass-through", 100_000, client="confluent-kafka"),
            run("pipeline, 1 process, confluent", "pipeline", 50_000, client="confluent")]
    add_ratios(runs)
    assert runs[1]["vs_pass_through"] == 0.5


def test_peer_ratios_against_the_goals() -> None:
    by_name = {r["name"]: r for r in peer_ratios(sample_runs())}
    assert by_name["kafka-python pipeline ÷ kafka-python pass-through"]["value"] == 0.5
    assert by_name["kafka-python pipeline ÷ kafka-python pass-through"]["met"] is False
    assert by_name["confluent pipeline ÷ kafka-python pipeline"]["value"] == 2.5
    assert by_name["confluent pipeline ÷ kafka-python pipeline"]["met"] is True
    assert by_name["confluent pipeline ÷ Quix app"]["value"] == 6.25
    assert by_name["Quix app peak RSS ÷ kafka-python pipeline's"]["value"] == 10.0  # exactly the goal
    assert by_name["Quix app peak RSS ÷ kafka-python pipeline's"]["met"] is True
    assert by_name["Quix app peak RSS ÷ confluent pipeline's"]["value"] == 15.0
    assert by_name["2 processes ÷ 1 process, kafka-python"]["value"] == 1.8
    # no confluent run with 2 processes: that ratio is left out, not shown as 0
    assert "2 processes ÷ 1 process, confluent" not in by_name
    assert by_name["kafka-python pipeline ÷ Quix app"]["of"] == ["pipeline, 1 thread",
                                                                 "Quix Streams 3.28.1 app"]


def test_peer_ratios_skip_runs_that_did_not_happen() -> None:
    runs = [r for r in sample_runs() if r["kind"] != "quix"]
    names = {r["name"] for r in peer_ratios(runs)}
    assert not any("Quix" in name for name in names)
    assert "confluent pipeline ÷ confluent pass-through" in names
    assert peer_ratios([]) == []


def test_the_ratio_picks_the_one_thread_pipeline_not_the_two_thread_one() -> None:
    runs = [run("pipeline, 2 threads", "pipeline", 99_000, client="kafka-python", threads=2),
            run("pipeline, 1 thread", "pipeline", 20_000, client="kafka-python"),
            run("kafka-python pass-through", "pass-through", 40_000, client="kafka-python")]
    (ratio,) = peer_ratios(runs)
    assert ratio["value"] == 0.5


def test_cpu_split_shares_the_machine_between_run_broker_and_the_rest() -> None:
    split = cpu_split(wall_s=10.0, machine_cpu_s=18.0, run_cpu_s=12.0, broker_cpu_s=4.0, cores=2)
    assert split["machine_cores_busy"] == 1.8
    assert (split["run_cores_busy"], split["broker_cores_busy"], split["other_cores_busy"]) == (1.2, 0.4, 0.2)
    assert split["machine_busy_pct"] == 90.0
    unknown_broker = cpu_split(wall_s=10.0, machine_cpu_s=10.0, run_cpu_s=11.0, broker_cpu_s=None, cores=2)
    assert unknown_broker["broker_cores_busy"] is None
    assert unknown_broker["other_cores_busy"] == 0.0  # counters sampled apart: never below zero
    assert cpu_split(0.0, 1.0, 1.0, None, 2)["machine_busy_pct"] == 0.0


@pytest.mark.parametrize(("busy_pct", "expected"), [(95.0, "at the cores"), (60.0, "before the cores")])
def test_where_two_processes_stop(busy_pct: float, expected: str) -> None:
    runs = sample_runs()
    two = next(r for r in runs if r.get("processes") == 2)
    two["machine"] = {"machine_busy_pct": busy_pct, "machine_cores_busy": busy_pct / 50, "cores": 2,
                      "run_cores_busy": 1.0, "broker_cores_busy": 0.5, "other_cores_busy": 0.1}
    verdict = stop_verdict(runs)
    assert verdict is not None and expected in verdict and "the broker 0.50" in verdict
    assert stop_verdict(sample_runs()) is None  # no machine figures: no verdict


def test_quix_accounting_needs_every_record_counted_once_and_every_kept_one_written() -> None:
    row = {"consumed": 1000, "valid": 900, "filtered": 80, "invalid": 20, "outputs": 900,
           "output_records": 900}
    assert quix_accounting(row, 1000)
    assert not quix_accounting(row, 1001)  # a record never consumed
    assert not quix_accounting({**row, "invalid": 19}, 1000)  # a record not counted
    assert not quix_accounting({**row, "output_records": 899}, 1000)  # an output missing
    assert quix_accounting({**row, "output_records": 905}, 1000)  # at least once: duplicates allowed


def test_client_flag_is_told_apart_from_client_config() -> None:
    assert CLIENT_FLAG_RE.search("  --client {kafka-python,confluent}")
    assert CLIENT_FLAG_RE.search("[--client CLIENT]")
    assert not CLIENT_FLAG_RE.search("[--client-config FILE]")
    assert not CLIENT_FLAG_RE.search("--client_id")


def args(**overrides) -> SimpleNamespace:
    values = {"threads_list": [1, 2], "processes": 2, "with_confluent": False, "restore_users": 0,
              "only": None, "skip": []}
    return SimpleNamespace(**{**values, **overrides})


def test_step_counter_for_peers_alone_and_with_throughput() -> None:
    # peers alone: preload, kafka-python pass-through, pipeline 1 thread, 2 processes; confluent
    # pass-through, pipeline on confluent with 1 and 2 processes, the Quix app
    assert count_announcements(args(), ["peers"]) == 8
    assert count_announcements(args(processes=1), ["peers"]) == 6
    # throughput: preload, Java, consume-only, pass-through, 2 thread counts, 2 processes, restore
    assert count_announcements(args(), ["throughput"]) == 8
    assert count_announcements(args(with_confluent=True), ["throughput"]) == 9
    assert count_announcements(args(with_confluent=True), ["throughput", "peers"]) == 12
    assert selected_steps(args(only=["peers"])) == ["peers"]
    assert "peers" in selected_steps(args())


def test_markdown_shows_peers_ratios_and_accounting() -> None:
    runs = sample_runs()
    runs[-1].update(valid=900, filtered=80, invalid=20, outputs=900, output_records=900, accounting_ok=True)
    two = next(r for r in runs if r.get("processes") == 2)
    two.update(per_process=[{"process": 0, "consumed": 500}, {"process": 1, "consumed": 500}],
               group_events=900, machine={"machine_busy_pct": 97.0, "machine_cores_busy": 1.94, "cores": 2,
                                          "run_cores_busy": 1.5, "broker_cores_busy": 0.4,
                                          "other_cores_busy": 0.04, "load_average": [2.0, 1.5, 1.0]})
    report = {"run_id": "20260101-000000-abcd", "partial": True, "steps": ["peers"], "duration_s": 60.0,
              "settings": {"events": 1000, "partitions": 4}, "notes": [],
              "preload": {"value_bytes": 250_000, "events_per_s": 50_000.0},
              "machine": {"cpu_model": "cpu", "cores": 2, "memory_gib": 8, "python": "CPython 3.11",
                          "kafka": "4.2.0", "kafka_python": "3.0.12", "java": "17", "git": "abc",
                          "load_average_at_start": [1.0], "load_average_at_end": [2.0]},
              "runs": runs, "peer_ratios": peer_ratios(runs)}
    text = markdown(report)
    assert "| Quix Streams 3.28.1 app | 8,000 |" in text
    assert ("consumed 1,000 = kept 900 + filtered 80 + invalid, dropped 20; output topic 900; "
            "accounting ok") in text
    assert "| confluent pipeline ÷ Quix app | 6.25 | ≥ 4 | yes |" in text
    assert "| 2 processes ÷ 1 process, kafka-python | 1.80 | ≥ 1.8 | yes |" in text
    assert "| pipeline, 2 processes | 36,000 | 97 | 1.50 | 0.40 | 0.04 | 2.0, 1.5, 1.0 |" in text
    assert "so it stops at the cores" in text
