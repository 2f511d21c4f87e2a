"""The benchmark's report: machine description, ratios, markdown, chart, and the files they go to."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from loginpipe.benchmark.common import MB
from loginpipe.local.broker import PROJECT_ROOT, kafka_version


def describe_machine() -> dict:
    import kafka
    import psutil

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    java = "not found"
    if shutil.which("java"):
        probe = subprocess.run(["java", "-version"], capture_output=True, text=True)
        java = ((probe.stderr or probe.stdout).strip().splitlines() or ["?"])[0]
    return {
        "cpu_model": cpu_model, "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kafka": kafka_version(), "kafka_python": kafka.__version__, "java": java,
        "git": _git_revision(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}" if head else "unknown"


def client_of(row: dict) -> str:
    """A run's Kafka client, one name each: "kafka-python" (the default), "confluent", "quixstreams"."""
    client = row.get("client", "kafka-python")
    return "confluent" if client == "confluent-kafka" else client


def pipeline_key(row: dict) -> str:
    """A pipeline run's short name: t<threads>, or p<processes> for a --processes run; "c" after
    it on the confluent client."""
    processes = row.get("processes", 1)
    key = f"p{processes}" if processes > 1 else f"t{row['threads']}"
    return key + ("c" if client_of(row) == "confluent" else "")


def add_ratios(runs: list[dict]) -> dict:
    """Each pipeline run's rate over its own client's pass-through, kafka-python's consume-only,
    and its own client's 1-process 1-thread pipeline."""
    pass_through = {client_of(r): r for r in runs if r["kind"] == "pass-through"}
    consume_only = next((r for r in runs if r["kind"] == "consume-only"), None)
    pipelines = [r for r in runs if r["kind"] == "pipeline"]
    single = {client_of(r): r for r in reversed(pipelines)
              if r["threads"] == 1 and r.get("processes", 1) == 1}
    ratios = {}
    for row in pipelines:
        client = client_of(row)
        for base, key in ((pass_through.get(client), "vs_pass_through"), (consume_only, "vs_consume_only"),
                          (single.get(client), "vs_one_process")):
            if base and base["events_per_s"] and base is not row:
                row[key] = round(row["events_per_s"] / base["events_per_s"], 3)
                ratios[f"pipeline_{pipeline_key(row)}_{key}"] = row[key]
    return ratios


# The ratios issue 14 sets goals for: (name, numerator, denominator, measure, goal: met at or above
# it). A run is picked by (kind, client, processes); "events" compares events/s, "rss" peak RSS.
_KP, _CF, _QX = ("pipeline", "kafka-python", 1), ("pipeline", "confluent", 1), ("quix", "quixstreams", 1)
_KP2, _CF2 = ("pipeline", "kafka-python", 2), ("pipeline", "confluent", 2)
_KP_PASS, _CF_PASS = ("pass-through", "kafka-python", 1), ("pass-through", "confluent", 1)
PEER_RATIOS = (
    ("kafka-python pipeline ÷ kafka-python pass-through", _KP, _KP_PASS, "events", 0.8),
    ("confluent pipeline ÷ kafka-python pipeline", _CF, _KP, "events", 2.0),
    ("confluent pipeline ÷ confluent pass-through", _CF, _CF_PASS, "events", 0.5),
    ("kafka-python pipeline ÷ Quix app", _KP, _QX, "events", 4.0),
    ("confluent pipeline ÷ Quix app", _CF, _QX, "events", 4.0),
    ("Quix app peak RSS ÷ kafka-python pipeline's", _QX, _KP, "rss", 10.0),
    ("Quix app peak RSS ÷ confluent pipeline's", _QX, _CF, "rss", 10.0),
    ("2 processes ÷ 1 process, kafka-python", _KP2, _KP, "events", 1.8),
    ("2 processes ÷ 1 process, confluent", _CF2, _CF, "events", 1.8),
)


def _pick(runs: list[dict], kind: str, client: str, processes: int) -> dict | None:
    """The run of that kind, client and process count (a pipeline: with 1 thread per process)."""
    return next((r for r in runs if r["kind"] == kind and client_of(r) == client
                 and r.get("processes", 1) == processes and r.get("threads", 1) == 1), None)


def peer_ratios(runs: list[dict]) -> list[dict]:
    """The PEER_RATIOS whose two runs are both in ``runs``: value, goal and whether it is met."""
    measures = {"events": "events_per_s", "rss": "peak_rss_mib"}
    ratios = []
    for name, top, bottom, measure, goal in PEER_RATIOS:
        a, b = _pick(runs, *top), _pick(runs, *bottom)
        if not a or not b or not b[measures[measure]]:
            continue
        value = round(a[measures[measure]] / b[measures[measure]], 3)
        ratios.append({"name": name, "value": value, "goal": goal, "measure": measure,
                       "met": value >= goal, "of": [a["label"], b["label"]]})
    return ratios


# --- markdown --------------------------------------------------------------------------------

def _num(value: float | None, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = _header(report)
    if report.get("preload") and report["runs"]:
        lines += _throughput_section(report)
    else:  # no throughput step: the load and the notes it would have shown
        lines += ["", _load_line(report["machine"]), *(f"Note: {note}" for note in report.get("notes", []))]
    if report.get("avro"):
        lines += _avro_section(report["avro"])
    if any(r.get("state_topics") for r in report["runs"]) or report.get("restore"):
        lines += _state_section(report)
    for key in ("latency", "latency_confluent"):
        if report.get(key):
            lines += _latency_section(report[key])
    if report.get("guarantees"):
        lines += _guarantees_section(report["guarantees"])
    if report.get("memory"):
        lines += _memory_section(report["memory"])
    lines += ["", f"Total duration: {report['duration_s'] / 60:.1f} min ({report['duration_s']:.0f}s)."]
    return "\n".join(lines) + "\n"


def _machine_line(m: dict) -> str:
    return (f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['python']}, "
            f"Kafka {m['kafka']}, kafka-python {m['kafka_python']}, {m['java']}; git {m['git']}")


def _header(report: dict) -> list[str]:
    """The title and the machine; which steps ran, when not all of them."""
    lines = [f"# loginpipe benchmark {report['run_id']}", "", _machine_line(report["machine"])]
    if report.get("partial"):
        lines += ["", f"Steps run: {', '.join(report['steps'])} (the others were left out)."]
    return lines


def _load_line(m: dict) -> str:
    start, end = (", ".join(map(str, m.get(f"load_average_at_{when}", []))) for when in ("start", "end"))
    return f"The machine's load average at the start: {start}; at the end: {end}."


def _throughput_section(report: dict) -> list[str]:
    """The throughput table with its notes."""
    s = report["settings"]
    pre = report["preload"]
    lines = [
        "",
        f"## Throughput: {s['events']:,} events, {s['partitions']} partitions, "
        f"{pre['value_bytes'] / MB:,.1f} MB of values",
        "",
        f"Preload (generator library, full speed): {pre['events_per_s']:,.0f} events/s.",
        "",
        "| run | events/s | MB/s | CPU s / M events | peak RSS MiB | ÷ pass-through, same client "
        "| ÷ consume-only | ÷ pipeline, 1 thread, same client |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['label']} | {_num(r['events_per_s'])} | {_num(r['mb_per_s'], ',.1f')} | "
            f"{_num(r['cpu_s_per_million'], ',.1f')} | {_num(r['peak_rss_mib'])} | "
            f"{_num(r.get('vs_pass_through'), '.2f')} | {_num(r.get('vs_consume_only'), '.2f')} | "
            f"{_num(r.get('vs_one_process'), '.2f')} |")
    lines += ["", "Rates: Python runs from the first record received to the last record done (with "
              "--processes: the longest process's span, the processes' records added up); Java: "
              "ConsumerPerformance's fetch time (group join left out). CPU and peak RSS: the whole child "
              "process (start-up included; for the pipeline also its 2 s idle stop; with --processes: "
              "CPU of every process, RSS of the largest). " + _load_line(report["machine"])]
    for r in report["runs"]:
        if r["kind"] in ("pass-through", "quix") and "accounting_ok" in r:
            lines.append(_peer_accounting(r))
        if r["kind"] != "pipeline":
            continue
        ok = "ok" if r["accounting_ok"] else "MISMATCH"
        if r.get("processes", 1) > 1:
            split = " + ".join(f"p{p['process']} {p['consumed']:,}" for p in r["per_process"])
            lines.append(f"{r['label'].capitalize()}: consumed {r['consumed']:,} ({split}) = "
                         f"processed {r['processed']:,} + filtered {r['filtered']:,} + dead-lettered "
                         f"{r['dead_lettered']:,}; the group's changelogs count {_num(r['group_events'])} "
                         f"events; accounting {ok}.")
        else:
            lines.append(f"{r['label'].capitalize()}: consumed {r['consumed']:,} = processed "
                         f"{r['processed']:,} + filtered {r['filtered']:,} + dead-lettered "
                         f"{r['dead_lettered']:,}; accounting {ok}.")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return lines + _ratios_section(report.get("peer_ratios") or []) + _cpu_split_section(report["runs"])


def _peer_accounting(r: dict) -> str:
    ok = "ok" if r["accounting_ok"] else "MISMATCH"
    if r["kind"] == "quix":
        return (f"{r['label']}: consumed {r['consumed']:,} = kept {r['valid']:,} + filtered "
                f"{r['filtered']:,} + invalid, dropped {r['invalid']:,}; output topic "
                f"{r['output_records']:,}; accounting {ok}.")
    return (f"{r['label'].capitalize()}: consumed {r['consumed']:,}, output topic {r['output_records']:,}; "
            f"accounting {ok}.")


def _ratios_section(ratios: list[dict]) -> list[str]:
    """The ratios issue 14 sets goals for, those whose two runs ran."""
    if not ratios:
        return []
    lines = ["", "### Ratios in this run, against the goals", "",
             "| ratio | value | goal | met |", "|---|---:|---:|---|"]
    for r in ratios:
        goal = f"≥ {r['goal']:g}" if r["measure"] == "events" else f"≥ {r['goal']:g} (≤ 1/{r['goal']:g})"
        lines.append(f"| {r['name']} | {r['value']:.2f} | {goal} | {'yes' if r['met'] else 'no'} |")
    return [*lines, "", "events/s over events/s, first record to last done; RSS: peak RSS of each run's "
                        "process (with --processes: the largest process's)."]


def _cpu_split_section(runs: list[dict]) -> list[str]:
    """Where a run stops: the machine's cores over each run, split into the run, the broker and the rest."""
    rows = [r for r in runs if r.get("machine")]
    if not rows:
        return []
    cores = rows[0]["machine"]["cores"]
    lines = ["", f"### Where it stops: the {cores} cores during each run", "",
             "Average cores busy over the run's whole life (start-up and idle stop included), from the "
             "machine's CPU counters: the run (every process of it), the broker, and everything else "
             "(other programs on the machine).", "",
             "| run | events/s | machine busy % | run cores | broker cores | other cores "
             "| load average at end |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r["machine"]
        lines.append(f"| {r['label']} | {_num(r['events_per_s'])} | {_num(m['machine_busy_pct'], '.0f')} | "
                     f"{_num(m['run_cores_busy'], '.2f')} | {_num(m['broker_cores_busy'], '.2f')} | "
                     f"{_num(m['other_cores_busy'], '.2f')} | {', '.join(map(str, m['load_average']))} |")
    verdict = stop_verdict(runs)
    return lines + (["", verdict] if verdict else [])


def stop_verdict(runs: list[dict]) -> str | None:
    """One line on the 2-process run: does it stop at the cores (the machine near saturation) or
    before them?"""
    two = next((r for r in runs if r["kind"] == "pipeline" and r.get("processes", 1) > 1
                and client_of(r) == "kafka-python" and r.get("machine")), None)
    if two is None:
        return None
    m = two["machine"]
    ceiling = "at the cores" if m["machine_busy_pct"] >= 90 else "before the cores"
    broker = "" if m["broker_cores_busy"] is None else f", the broker {m['broker_cores_busy']:.2f}"
    return (f"{two['label'].capitalize()}: the machine was {m['machine_busy_pct']:.0f} % busy "
            f"({m['machine_cores_busy']:.2f} of {m['cores']} cores: the pipeline {m['run_cores_busy']:.2f}"
            f"{broker}, the rest {m['other_cores_busy']:.2f}), so it stops {ceiling}: "
            + ("more processes would only share the same cores." if ceiling == "at the cores" else
               "the cores were not all busy, so CPU alone does not limit it."))


def _avro_section(avro: dict) -> list[str]:
    """JSON against Avro output: the two drains, their bytes per record, the ratios, the read-back,
    and the serializers' micro-measure."""
    lines = ["", "## Avro output against JSON output", ""]
    if avro.get("skipped"):
        return [*lines, f"Skipped: {avro['skipped']}."]
    runs, ratios = avro["runs"], avro["ratios"]
    lines += [
        f"The pipeline (kafka-python, 1 thread) drained the same input with --output-format json and "
        f"with avro, {avro.get('rounds', 1)} time(s) each (schema registry: {avro['registry']}). Bytes "
        f"per processed record, from the first round's outputs: the mean value of "
        f"{avro['sample_records']:,} outputs read back (spread over the partitions), the same values "
        f"compressed with snappy in {avro['snappy_chunk'] // 1024} KiB chunks (as a producer batch is), "
        "and the output log on disk per output record (the pipeline's own snappy batches, keys and "
        "batch overhead included).",
        "",
        "| output | events/s | CPU s / M events | peak RSS MiB | bytes / value | after snappy | "
        "log bytes / record | accounting |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    # (figure, format): the columns after the output's name
    columns = (("events_per_s", ",.0f"), ("cpu_s_per_million", ",.1f"), ("peak_rss_mib", ",.0f"),
               ("value_bytes_per_record", ",.1f"), ("snappy_bytes_per_record", ",.1f"),
               ("output_log_bytes_per_record", ",.1f"))
    for r in runs:
        figures = " | ".join(_num(r[key], spec) for key, spec in columns)
        lines.append(f"| {r['output_format']} | {figures} | {'ok' if r['accounting_ok'] else 'MISMATCH'} |")
    lines.append("| Avro ÷ JSON | " + " | ".join(_num(ratios[key], ".2f") for key, _ in columns) + " | |")
    if avro.get("rounds", 1) > 1:
        lines += ["", f"{avro['rounds']} rounds, the formats taking turns: medians of events/s and CPU, the "
                      "largest peak RSS. Events/s by round: " + "; ".join(
                          f"{r['output_format']} " + " / ".join(_num(v) for v in r["events_per_s_by_round"])
                          for r in runs) + "."]
    for r in runs:
        lines += ["", f"{r['label'].capitalize()}: consumed {r['consumed']:,} = processed "
                      f"{r['processed']:,} + filtered {r['filtered']:,} + dead-lettered "
                      f"{r['dead_lettered']:,}; output topic {r['output_records']:,}."]
        if r["output_format"] == "avro":
            lines[-1] += (
                f" Read back independently (fastavro, the schema fetched by the frame's id): "
                f"{r['sampled']:,} outputs, {r['read_failures']:,} failed; schema ids {r['schema_ids']} "
                f"(registered under the output's subject: {r['registered_schema_id']}); "
                f"{r['compared_with_json']:,} compared with the JSON run's output for the same input, "
                f"{r['content_mismatches']:,} differ in a per-event field.")
    micro = avro.get("serializers")
    if micro:
        from loginpipe.benchmark.serializers import table

        lines += ["", "### Serializers, per record", "", *table(micro)]
    return lines


def _state_section(report: dict) -> list[str]:
    """The state topics' records and bytes per input event, and the restore rates."""
    lines = ["", "## State: changelogs, repartition, restore", ""]
    rows = [r for r in report["runs"] if r.get("state_topics")]
    if rows:
        lines += [
            "Per input event (bad and filtered ones included), after each drain, before any "
            "compaction: what was written. Bytes: the logs on disk (snappy batches as the pipeline "
            "writes them), from the broker's DescribeLogDirs.",
            "",
            "| run | changelog records | changelog bytes | aggregates / devices changelog bytes | "
            "repartition records | repartition bytes | output bytes |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            st = r["state_topics"]
            lines.append(
                f"| {r['label']} | {st['changelogs']['records_per_event']:.3f} | "
                f"{st['changelogs']['bytes_per_event']:,.1f} | {st['changelog']['bytes_per_event']:,.1f} / "
                f"{st['device_changelog']['bytes_per_event']:,.1f} | "
                f"{st['repartition']['records_per_event']:.3f} | "
                f"{st['repartition']['bytes_per_event']:,.1f} | "
                f"{st['output']['bytes_per_event']:,.1f} |")
    restores = report.get("restore") or []
    if restores:
        lines += [
            "",
            "Restore: every partition's stores rebuilt from the changelogs in one process, as a worker "
            "does when partitions are assigned to it (state/restore.py) or as `python -m loginpipe.query` "
            "does (read_group_state). Keys: users + devices + count labels restored.",
            "",
            "| changelog | how | records | keys | seconds | keys/s | records/s | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in restores:
            how = "worker (Restorer)" if r["via"] == "restorer" else "query (read_group_state)"
            lines.append(f"| {r['label']} | {how} | {r['records']:,} | {r['keys']:,} | {r['seconds']:,.2f} | "
                         f"{_num(r['keys_per_s'])} | {_num(r['records_per_s'])} | "
                         f"{_num(r['peak_rss_mib'])} |")
        for r in restores:
            if "users_written" in r:
                lines += ["", f"Synthetic changelog of {r['users_written']:,} users (each with its own IP "
                              f"and device): {r['log_bytes'] / MB:,.1f} MB on disk, "
                              f"{r['log_bytes_per_user']:,.1f} bytes per user; a worker restores it in "
                              f"{r['seconds']:,.1f}s, {r['seconds_per_million_users']:,.1f}s per million "
                              "users."]
    return lines


def _latency_section(lat: dict) -> list[str]:
    return [
        "",
        f"## Latency: pipeline ({lat['threads']} threads, {lat.get('client', 'kafka-python')} client), "
        f"{lat['offered_rate']:,g} events/s offered for "
        f"{lat['seconds']:g}s",
        "",
        f"Input record's {lat['timestamps']} to output record's {lat['timestamps']}, joined on "
        f"source_partition/source_offset.",
        "",
        "| records joined | generator events/s | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|",
        f"| {lat['outputs_joined']:,} | {_num(lat['generator_rate'])} | {_num(lat['p50_ms'])} | "
        f"{_num(lat['p99_ms'])} | {_num(lat['max_ms'])} |",
    ]


def _guarantees_section(g: dict) -> list[str]:
    """At-least-once against exactly-once: drain and latency tables, ratios to at-least-once."""
    rows = g["summary"]
    lines = [
        "",
        "## Processing guarantees: at-least-once against exactly-once, by checkpoint interval",
        "",
        f"The same input in the same run: {g['events']:,} events ({g['value_bytes'] / MB:,.1f} MB of values) "
        f"preloaded once and drained {g['rounds']} time(s) with each setting, the settings taking turns "
        "(every other round in reverse); medians, ÷: over at-least-once's median. Checkpoint: "
        f"--commit-interval-ms as shown, or --commit-every {g['commit_every']:,} records (input and "
        "repartition records), whichever comes first; a transaction is one checkpoint. Machine CPU: "
        "the whole machine's use during the run, all cores (the run itself, the broker, and anything "
        f"else). Load average at the step's start {', '.join(map(str, g['load_average_at_start']))}, "
        f"at its end {', '.join(map(str, g['load_average_at_end']))}.",
        "",
        "| setting | events/s by round | events/s | ÷ | CPU s / M events | ÷ | peak RSS MiB | "
        "transactions | outputs / transaction | commit ms | machine CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {' / '.join(_num(v) for v in r['events_per_s_by_round'])} | "
            f"{_num(r['events_per_s'])} | {_num(r['vs_alo_events_per_s'], '.2f')} | "
            f"{_num(r['cpu_s_per_million'], ',.1f')} | {_num(r['vs_alo_cpu'], '.2f')} | "
            f"{_num(r['peak_rss_mib'])} | {_num(r['transactions'])} | {_num(r['transaction_outputs'])} | "
            f"{_num(r['commit_ms'])} | {_num(r['drain_machine_pct'])} |")
    return lines + _guarantees_latency(g)


def _guarantees_latency(g: dict) -> list[str]:
    lines = [
        "",
        f"Latency at {g['latency_rate']:,g} events/s offered, the same seed each time, {g['threads']} "
        f"thread(s), {g['latency_rounds']} round(s) (the settings taking turns; medians): inputs of "
        f"{g['latency_seconds']:g}s, after "
        f"{g['warmup_s']:g}s of warm-up (the pipeline's first batches are slow) and before "
        f"{g['cooldown_s']:g}s more (so their checkpoints close as at a steady rate, not on an idle "
        f"input); whole run: every input. From the input record's {g['timestamps']} to: visible, when a "
        "read_committed reader tailing the output topic was handed the output (what a consumer "
        f"downstream sees); appended, the output record's own {g['timestamps']} (written, but with "
        "exactly-once not readable before its transaction commits). Ms between commits: the run's "
        "length over its transactions.",
        "",
        "| setting | visible p50 ms | visible p99 ms | p99 ÷ | visible p99, whole run | appended p50 ms | "
        "appended p99 ms | ms between commits | machine CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in g["summary"]:
        lines.append(
            f"| {r['label']} | {_num(r['visible_p50_ms'])} | {_num(r['visible_p99_ms'])} | "
            f"{_num(r['vs_alo_p99'], '.2f')} | {_num(r['visible_p99_whole_run_ms'])} | "
            f"{_num(r['appended_p50_ms'])} | {_num(r['appended_p99_ms'])} | "
            f"{_num(r['latency_ms_per_transaction'])} | {_num(r['latency_machine_pct'])} |")
    bad = [r["label"] for r in g["summary"] if not r["accounting_ok"]]
    unseen = sum(r["outputs_unseen"] for r in g["summary"])
    if unseen:  # the reader stops at the end offsets, so it should have been handed every output
        lines += ["", f"Note: {unseen:,} outputs had no visible time or no input to join (see the JSON)."]
    lines += ["", "Drains' accounting (outputs and dead letters read back read_committed: as many as "
                  "processed and dead-lettered with exactly-once, at least as many with at-least-once): "
                  + (f"MISMATCH in {', '.join(bad)}." if bad else "ok in every drain.")]
    return lines


def _memory_section(mem: dict) -> list[str]:
    unc, cap = mem["uncapped"], mem["default_cap"]
    unc_by_users = {p["users"]: p for p in unc["points"]}
    cap_by_users = {p["users"]: p for p in cap["points"]}
    lines = [
        "",
        "## Memory: one partition's stores (users and devices), distinct users "
        "(each with its own IP and device id)",
        "",
        f"| users | RSS MiB (max_tracked_keys {unc['max_tracked_keys']:,}) | bytes per added user | "
        f"RSS MiB (default cap {cap['max_tracked_keys']:,}) | users tracked (default cap) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for users in sorted(set(unc_by_users) | set(cap_by_users)):
        u, c = unc_by_users.get(users, {}), cap_by_users.get(users, {})
        lines.append(
            f"| {users:,} | {_num(u.get('rss_mib'))} | {_num(u.get('bytes_per_added_user'))} | "
            f"{_num(c.get('rss_mib'))} | {_num(c.get('tracked_users'))} |")
    per = mem.get("bytes_per_user")
    if per:
        low, high = per["between_users"]
        lines += ["", f"Bytes per distinct user, RSS added between {low:,} and {high:,} users: both stores "
                      f"{_num(per['both'])} (the login store alone {_num(per['login'])}: the user's key "
                      f"and IPs; the device store alone {_num(per['device'])}: the device's key and its "
                      "users' keys)."]
    return lines


def compare_markdown(report: dict) -> str:
    """A comparison of two versions: each round's events/s per version, the medians and their ratio."""
    s, summary = report["settings"], report["summary"]
    rounds = range(1, s["rounds"] + 1)
    lines = [
        f"# loginpipe drain comparison {report['run_id']}",
        "",
        _machine_line(report["machine"]),
        "",
        f"{s['events']:,} events ({report['preload']['value_bytes'] / MB:,.1f} MB of values), "
        f"{s['partitions']} partitions, {s['rounds']} round(s), the versions taking turns; rates from "
        "the first record received to the last one done, CPU and peak RSS of the whole process.",
        "",
        "| version | code | " + " | ".join(f"round {i} events/s" for i in rounds)
        + " | median events/s | median CPU s | peak RSS MiB |",
        "|---|---|" + "---:|" * (len(rounds) + 3),
    ]
    for label in ("before", "after"):
        row = summary[label]
        by_round = ("failed" if v is None else _num(v) for v in row["events_per_s_by_round"])
        lines.append(f"| {label} | {row['code']} | " + " | ".join(by_round)
                     + f" | {_num(row['median_events_per_s'])} | {_num(row['median_cpu_s'], ',.1f')} | "
                     f"{_num(row['peak_rss_mib'])} |")
    ratio, cpu = summary["ratio_after_before"], summary["cpu_ratio_after_before"]
    lines.append("")
    if ratio is None:
        lines.append("after ÷ before: no ratio (a version has no successful run).")
    else:
        lines.append(f"after ÷ before, median events/s: {ratio:.3f} ({ratio - 1:+.1%})"
                     + (f"; median CPU s: {cpu:.3f} ({cpu - 1:+.1%})" if cpu else "") + ".")
    for run in report["runs"]:
        if run.get("error"):
            lines.append(f"Round {run['round']}, {run['version']}: failed: {run['error']}")
    lines += ["", f"Total duration: {report['duration_s'] / 60:.1f} min ({report['duration_s']:.0f}s)."]
    return "\n".join(lines) + "\n"


# --- chart and files -------------------------------------------------------------------------

def _bar_color(run: dict) -> str:
    """The pipeline red (orange on confluent-kafka), Java blue, the Quix app green, the rest grey."""
    if run["kind"] == "pipeline":
        return "#ff7f0e" if client_of(run) == "confluent" else "#d62728"
    return {"java": "#1f77b4", "quix": "#2ca02c"}.get(run["kind"], "#7f7f7f")


def chart(report: dict, path: Path) -> bool:
    """events/s per run as a horizontal bar chart; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = [r["label"] for r in runs][::-1]
    rates = [r["events_per_s"] for r in runs][::-1]
    colors = [_bar_color(r) for r in runs][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(runs) + 1.6))
    bars = ax.barh(labels, rates, color=colors)
    top = max(rates) if rates else 1
    for bar, rate in zip(bars, rates, strict=True):
        ax.text(bar.get_width() * 1.08, bar.get_y() + bar.get_height() / 2, f"{rate:,.0f}",
                va="center", fontsize=9)
    # Log scale: the Java ceiling is ~30x the Python runs, which would be slivers on a linear axis.
    ax.set_xscale("log")
    ax.set_xlim(min(rates, default=top) / 2, top * 4)
    ax.set_xlabel("events/s, log scale (first record to last done; Java: fetch time)")
    m = report["machine"]
    ax.set_title(f"loginpipe: {report['settings']['events']:,} events, {report['settings']['partitions']} "
                 f"partitions\n{m['cores']} cores, Kafka {m['kafka']}, kafka-python {m['kafka_python']}",
                 fontsize=10)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(report: dict, out_dir: Path) -> list[Path]:
    """bench-<time>.json, and latest.{json,md,png}; a run of some steps only (--only, --skip) writes
    bench-<time>.{json,md} (and .png when it has throughput runs) instead, so latest.* stays the
    last full run's."""
    stamp = report["run_id"].rsplit("-", 1)[0]
    text = json.dumps(report, indent=2, default=str) + "\n"
    if report.get("partial"):
        paths = [out_dir / f"bench-{stamp}.json", out_dir / f"bench-{stamp}.md"]
        paths[0].write_text(text)
        paths[1].write_text(markdown(report))
        png = out_dir / f"bench-{stamp}.png"
        if report["runs"] and chart(report, png):  # e.g. --only peers: its own chart
            paths.append(png)
        return paths
    paths = [out_dir / f"bench-{stamp}.json", out_dir / "latest.json", out_dir / "latest.md"]
    paths[0].write_text(text)
    paths[1].write_text(text)
    paths[2].write_text(markdown(report))
    png = out_dir / "latest.png"
    if chart(report, png):
        paths.append(png)
    else:
        report.setdefault("notes", []).append("no chart: matplotlib is not installed")
    return paths
