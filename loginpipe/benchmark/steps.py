"""The benchmark's steps (preload, Java, consume-only, pass-through, pipeline with threads and with
processes, state topics, restore, latency, memory), Bench."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loginpipe.benchmark.common import MB, say
from loginpipe.benchmark.process import Child, ChildResult, MachineUsage, stop_live_children
from loginpipe.errors import UserError
from loginpipe.kafka.admin import admin_client, delete_topics, ensure_topics
from loginpipe.local.broker import DEFAULT_HOME, ensure_jars
from loginpipe.topics import InternalTopics, TopicSpec
from loginpipe.waiting import wait_until

# The latency run produces once the pipeline's group has been Stable this long without a break.
GROUP_SETTLE_S = 3.0
IDLE_STOP_S = 2  # a drain's --stop-when-idle: the pipeline exits this long after the input is drained
SUMMARY_RE = re.compile(r"consumed ([\d,]+) in [\d.,]+s \([\d,]+ msg/s\): processed ([\d,]+), "
                        r"filtered ([\d,]+), dead-lettered ([\d,]+)")
TIMING_RE = re.compile(r"timing: first record to last processed in ([\d.]+)s")
RESENT_RE = re.compile(r"outputs re-sent after a failed delivery: ([\d,]+)")
GENERATOR_RE = re.compile(r"generator: sent ([\d,]+)(?:/[\d,]+)? events \(([\d,]+) events/s\)")
# --processes N: each process's lines come prefixed "[p<i>] "; the group's summary is the parent's.
PROCESS_SUMMARY_RE = re.compile(r"^\[p(\d+)\] " + SUMMARY_RE.pattern, re.MULTILINE)
PROCESS_TIMING_RE = re.compile(r"^\[p(\d+)\] " + TIMING_RE.pattern, re.MULTILINE)
PROCESS_RESENT_RE = re.compile(r"^\[p(\d+)\] " + RESENT_RE.pattern, re.MULTILINE)
GROUP_EVENTS_RE = re.compile(r"^group summary \(all \d+ processes, from the changelogs\):\s*\n"
                             r"events:\s+([\d,]+)", re.MULTILINE)


def python_child(*args: str) -> list[str]:
    return [sys.executable, "-m", "loginpipe.benchmark", *args]


@dataclass
class Bench:
    """One benchmark run: settings, the topics and groups it made, the results so far."""

    args: Any
    bootstrap: str
    run_id: str
    log_dir: Path
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    step: int = 0
    steps: int = 0
    value_bytes: int = 0

    def name(self, suffix: str) -> str:
        return f"lpbench-{self.run_id}-{suffix}"

    def group(self, suffix: str) -> str:
        """A consumer group of this run; its own topics (changelogs, repartition), which the
        pipeline creates, are deleted with the run's."""
        group = self.name(suffix)
        self.groups.append(group)
        internal = InternalTopics.of(group)
        self.topics.extend([internal.changelog, internal.device_changelog, internal.repartition])
        return group

    def create_topics(self, *specs: TopicSpec) -> None:
        self.topics.extend(spec.name for spec in specs)
        for result in ensure_topics(self.bootstrap, list(specs), partitions=self.args.partitions):
            if result.status != "created":
                raise UserError(f"topic {result.describe()}: expected a fresh topic")

    def announce(self, text: str) -> None:
        self.step += 1
        say(f"[{self.step}/{self.steps}] {text}")

    def timeout_s(self, events: int) -> float:
        return max(180.0, events / 1500)

    def cleanup(self) -> None:
        """Stop children still running, delete the topics and groups this run made."""
        stop_live_children(grace_s=10.0)
        with contextlib.suppress(Exception):
            if self.topics:
                delete_topics(self.bootstrap, self.topics)
            if self.groups:
                self._delete_groups()

    def _delete_groups(self, timeout_s: float = 15.0) -> None:
        """A group is deleted once empty; a member that died unannounced stays until its session ends."""
        admin = admin_client(self.bootstrap)
        try:
            remaining = set(self.groups)

            def deleted() -> bool:
                admin.delete_groups(sorted(remaining))
                listed = {g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()}
                remaining.intersection_update(listed)
                return not remaining

            wait_until(deleted, timeout_s, interval_s=1.0)
        finally:
            admin.close()


# --- throughput ------------------------------------------------------------------------------

def throughput_row(label: str, kind: str, consumed: int, seconds: float, child: ChildResult,
                   value_bytes: int, events: int, **extra: Any) -> dict:
    rate = consumed / seconds if seconds > 0 else 0.0
    return {
        "label": label, "kind": kind, "consumed": consumed, "seconds": round(seconds, 4),
        "events_per_s": round(rate, 1),
        "mb_per_s": round(value_bytes * (consumed / events) / seconds / MB, 3) if seconds > 0 else 0.0,
        "cpu_s": round(child.cpu_s, 3),
        "cpu_s_per_million": round(child.cpu_s / consumed * 1e6, 2) if consumed else None,
        "peak_rss_mib": round(child.peak_rss_kib / 1024, 1),
        "wall_s": round(child.wall_s, 2),
        **extra,
    }


def step_preload(bench: Bench, topic: str) -> dict:
    args = bench.args
    bench.announce(f"preload: {args.events:,} events at full speed into {topic} "
                   f"({args.partitions} partitions)")
    data = preload(bench, topic, args.events)
    bench.value_bytes = data["value_bytes"]
    return data


def preload(bench: Bench, topic: str, count: int, name: str = "preload") -> dict:
    """Write ``count`` generated events (the run's seed) into ``topic`` at full speed; the
    generator's figures."""
    child = Child(name, python_child(
        "preload", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--count", str(count),
        "--seed", str(bench.args.seed)), bench.log_dir)
    result = child.wait(bench.timeout_s(count)).check()
    data = result.result_json()
    bad = sum(n for kind, n in data["kinds"].items() if kind != "good")
    say(f"      generator: {data['events_per_s']:,.0f} events/s ({data['seconds']:.1f}s); "
        f"{data['value_bytes'] / MB:,.1f} MB of values, {bad:,} bad records ({bad / count:.1%})")
    data.update(cpu_s=round(result.cpu_s, 3), peak_rss_mib=round(result.peak_rss_kib / 1024, 1))
    return data


def step_java(bench: Bench, topic: str) -> dict | None:
    args = bench.args
    bench.announce("Kafka's Java ConsumerPerformance (the broker's ceiling)")
    if shutil.which("java") is None:
        say("      skipped: no 'java' on PATH")
        return None
    libs = ensure_jars(DEFAULT_HOME / "libs", quiet=True)
    cmd = ["java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ConsumerPerformance",
           "--bootstrap-server", bench.bootstrap, "--topic", topic, "--num-records", str(args.events),
           "--group", bench.group("java"), "--timeout", "60000"]
    result = Child("java ConsumerPerformance", cmd, bench.log_dir).wait(bench.timeout_s(args.events)).check()
    fields = parse_consumer_performance(result.stdout)
    try:
        consumed = int(float(fields["data.consumed.in.nMsg"]))
        fetch_s = float(fields["fetch.time.ms"]) / 1000
        rebalance_s = float(fields["rebalance.time.ms"]) / 1000
    except (KeyError, ValueError):
        raise UserError(f"unexpected ConsumerPerformance output:\n{result.tail()}") from None
    row = throughput_row("Java ConsumerPerformance", "java", consumed, fetch_s, result, bench.value_bytes,
                         args.events, tool_output=fields, group_join_s=rebalance_s)
    say(f"      {consumed:,} records: {row['events_per_s']:,.0f} events/s over its fetch time "
        f"{fetch_s:.2f}s (group join {rebalance_s:.2f}s left out)")
    return row


def parse_consumer_performance(text: str) -> dict[str, str]:
    """The header line and the value line ConsumerPerformance prints, as a dict."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("start.time"):
            header = [h.strip() for h in line.split(",")]
            values = [v.strip() for v in lines[i + 1].split(",")]
            if len(header) == len(values):
                return dict(zip(header, values, strict=True))
    raise UserError("ConsumerPerformance printed no result line:\n" + "\n".join(lines[-10:]))


def python_run(bench: Bench, label: str, kind: str, child: Child, events: int | None = None,
               value_bytes: int | None = None, **extra: Any) -> dict:
    """Wait for a Python consumer run and read its consumed count and first-to-last timing. The
    input holds ``events`` records with ``value_bytes`` of values (unset: the run's main input)."""
    events = events or bench.args.events
    value_bytes = bench.value_bytes if value_bytes is None else value_bytes
    result = child.wait(bench.timeout_s(events)).check()
    out = result.stdout
    counts = SUMMARY_RE.search(out)
    consumed_match = counts or re.search(r"consumed ([\d,]+) in", out)  # older summaries: no split
    timing = TIMING_RE.search(out)
    if not consumed_match or not timing:
        raise UserError(f"{label}: no summary in its output; tail:\n{result.tail()}")
    consumed = int(consumed_match.group(1).replace(",", ""))
    busy_s = float(timing.group(1))
    if kind != "pipeline":
        extra.update({k: v for k, v in result.result_json().items() if k not in ("consumed", "busy_s")})
    row = throughput_row(label, kind, consumed, busy_s, result, value_bytes, events, **extra)
    if kind == "pipeline":
        processed, filtered, dead = ((int(g.replace(",", "")) for g in counts.groups()[1:]) if counts
                                     else (None, None, None))
        resent = RESENT_RE.search(out)
        row.update(processed=processed, filtered=filtered, dead_lettered=dead,
                   resent=int(resent.group(1).replace(",", "")) if resent else None)
    say(f"      {consumed:,} records in {busy_s:.2f}s: {row['events_per_s']:,.0f} events/s, "
        f"{row['cpu_s_per_million']} CPU s per million, peak RSS {row['peak_rss_mib']:,.0f} MiB")
    return row


def step_consume_only(bench: Bench, topic: str) -> dict:
    args = bench.args
    bench.announce("kafka-python consume-only (the pipeline's consumer settings, no decoding)")
    child = Child("consume-only", python_child(
        "consume-only", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--count", str(args.events),
        "--group", bench.group("consume-only")), bench.log_dir)
    return python_run(bench, "kafka-python consume-only", "consume-only", child)


def step_pass_through(bench: Bench, topic: str, client: str) -> dict | None:
    args = bench.args
    label = f"{'confluent-kafka' if client == 'confluent' else client} pass-through"
    bench.announce(f"{label} (consume, produce raw bytes with the pipeline's producer settings, "
                   "commit after acks)")
    if client == "confluent":
        probe = subprocess.run([sys.executable, "-c", "import confluent_kafka"], capture_output=True)
        if probe.returncode != 0:
            say("      skipped: confluent-kafka does not import in this environment "
                "(pip install confluent-kafka to include it)")
            return None
    suffix = "pass" if client == "kafka-python" else "pass-confluent"
    out_topic = bench.name(f"{suffix}-out")
    bench.create_topics(TopicSpec(out_topic, "benchmark output", configs={"compression.type": "producer"}))
    child = Child(label, python_child(
        "pass-through", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--count", str(args.events),
        "--group", bench.group(suffix), "--output-topic", out_topic, "--client", client), bench.log_dir)
    row = python_run(bench, label, "pass-through", child)
    row["client"] = client  # the child says "confluent-kafka": one name per client in every row
    row["output_records"] = sum(end_offsets(bench.bootstrap, out_topic).values())
    # every input record copied (at least once: a re-sent one may be there twice)
    row["accounting_ok"] = row["consumed"] == args.events and row["output_records"] >= row["consumed"]
    say(f"      output topic {row['output_records']:,}; "
        f"accounting {'ok' if row['accounting_ok'] else 'MISMATCH'}")
    return row


def snapshot_topic_flags(bench: Bench, suffix: str) -> list[str]:
    """The run's own summary and metrics topics: the pipeline publishes both by default, and a
    benchmark measures the pipeline as users run it."""
    summary, metrics = bench.name(f"{suffix}-summary"), bench.name(f"{suffix}-metrics")
    bench.create_topics(TopicSpec(summary, "benchmark summary", partitions=1),
                        TopicSpec(metrics, "benchmark metrics", partitions=1))
    return ["--summary-topic", summary, "--metrics-topic", metrics]


def pipeline_topics(bench: Bench, suffix: str) -> tuple[str, str]:
    """A drain's own output and dead-letter topics, fresh."""
    out, dlq = bench.name(f"{suffix}-out"), bench.name(f"{suffix}-dlq")
    bench.create_topics(TopicSpec(out, "benchmark output", configs={"compression.type": "producer"}),
                        TopicSpec(dlq, "benchmark dead letters"))
    return out, dlq


def drain_command(bench: Bench, topic: str, out: str, dlq: str, group: str, *flags: str) -> list[str]:
    """create_kafka_consumer.py draining ``topic`` from the start with a fresh group, then stopping
    when idle. Besides ``flags``, only flags that every version of it has: a compared version runs
    its own copy of this script."""
    return [sys.executable, "create_kafka_consumer.py", "--bootstrap-servers", bench.bootstrap,
            "--input-topic", topic, "--output-topic", out, "--dlq-topic", dlq, "--group-id", group,
            *flags, "--stop-when-idle", str(IDLE_STOP_S), "--quiet"]


def check_accounting(bench: Bench, row: dict, out: str, dlq: str, events: int | None = None) -> None:
    """Add the output and dead-letter topics' record counts to a drain's row, and whether every
    one of the input's ``events`` (unset: the run's main input) is accounted for (a summary
    without the split counts: by the consumed count only). Counts are end offsets: exact for
    at-least-once topics, one too many per transaction marker for exactly-once ones."""
    row["output_records"] = sum(end_offsets(bench.bootstrap, out).values())
    row["dlq_records"] = sum(end_offsets(bench.bootstrap, dlq).values())
    counted = row["processed"] is not None
    row["accounting_ok"] = (row["consumed"] == (events or bench.args.events) and (
        not counted or (row["processed"] + row["filtered"] + row["dead_lettered"] == row["consumed"]
                        and row["output_records"] >= row["processed"]
                        and row["dlq_records"] >= row["dead_lettered"])))
    split = (f"processed {row['processed']:,}, filtered {row['filtered']:,}, dead-lettered "
             f"{row['dead_lettered']:,}; " if counted else "")
    say(f"      {split}output topic {row['output_records']:,}, dlq {row['dlq_records']:,}; "
        f"accounting {'ok' if row['accounting_ok'] else 'MISMATCH'}")


CLIENT_FLAG_RE = re.compile(r"--client(?![-\w])")  # --client, not --client-config


def client_label(client: str) -> str:
    """How a run's label names its Kafka client: nothing for the default (kafka-python)."""
    return "" if client == "kafka-python" else f", {client}"


def client_suffix(client: str) -> str:
    return "" if client == "kafka-python" else "c"


def client_flags(client: str) -> list[str]:
    """The pipeline's flags choosing ``client``: none for the default, so older versions run too."""
    return [] if client == "kafka-python" else ["--client", client]


def step_pipeline(bench: Bench, topic: str, threads: int, client: str = "kafka-python") -> dict:
    threads_text = f"{threads} thread{'s' if threads > 1 else ''}"
    label = (f"pipeline, {threads_text}" if client == "kafka-python"
             else f"pipeline, 1 process{client_label(client)}" if threads == 1
             else f"pipeline, {threads_text}{client_label(client)}")
    suffix = f"t{threads}{client_suffix(client)}"
    bench.announce(f"the pipeline, --threads {threads}"
                   + (f" --client {client}" if client_flags(client) else ""))
    out, dlq = pipeline_topics(bench, suffix)
    group = bench.group(suffix)
    cmd = drain_command(bench, topic, out, dlq, group, *snapshot_topic_flags(bench, suffix),
                        "--threads", str(threads), *client_flags(client))
    usage = MachineUsage.start(bench.bootstrap)
    row = python_run(bench, label, "pipeline", Child(f"pipeline {suffix}", cmd, bench.log_dir),
                     threads=threads, processes=1, group=group, client=client)
    row["machine"] = usage.finish(row["cpu_s"])
    check_accounting(bench, row, out, dlq)
    row["state_topics"] = state_topic_usage(bench, group, out)
    return row


def step_pipeline_processes(bench: Bench, topic: str, processes: int, client: str = "kafka-python") -> dict:
    """The pipeline with ``--processes N`` (one thread each, one group) on the same input: the
    rate over the longest process's first-to-last-record span, the processes' counts added up."""
    bench.announce(f"the pipeline, --processes {processes} (1 thread each, one group)"
                   + (f" --client {client}" if client_flags(client) else ""))
    suffix = f"p{processes}{client_suffix(client)}"
    out, dlq = pipeline_topics(bench, suffix)
    group = bench.group(suffix)
    cmd = drain_command(bench, topic, out, dlq, group, *snapshot_topic_flags(bench, suffix),
                        "--threads", "1", "--processes", str(processes), *client_flags(client))
    usage = MachineUsage.start(bench.bootstrap)
    child = Child(f"pipeline {suffix}", cmd, bench.log_dir)
    result = child.wait(bench.timeout_s(bench.args.events)).check()
    per = parse_process_summaries(result.stdout, processes, result.tail())
    consumed = sum(p["consumed"] for p in per)
    busy_s = max(p["busy_s"] for p in per)
    group_events = GROUP_EVENTS_RE.search(result.stdout)
    row = throughput_row(f"pipeline, {processes} processes{client_label(client)}", "pipeline", consumed,
                         busy_s, result, bench.value_bytes, bench.args.events, threads=1, processes=processes,
                         group=group, client=client,
                         processed=sum(p["processed"] for p in per), filtered=sum(p["filtered"] for p in per),
                         dead_lettered=sum(p["dead_lettered"] for p in per),
                         resent=sum(p["resent"] or 0 for p in per), per_process=per,
                         group_events=int(group_events.group(1).replace(",", "")) if group_events else None)
    row["machine"] = usage.finish(row["cpu_s"])
    say(f"      {consumed:,} records (" + " + ".join(f"p{p['process']} {p['consumed']:,}" for p in per)
        + f"), the longest process {busy_s:.2f}s: {row['events_per_s']:,.0f} events/s, "
        f"{row['cpu_s_per_million']} CPU s per million (all processes), peak RSS "
        f"{row['peak_rss_mib']:,.0f} MiB (the largest process)")
    check_accounting(bench, row, out, dlq)
    # The group's events, read back from its changelogs, are the events counted: the processed ones.
    if row["group_events"] != row["processed"]:
        row["accounting_ok"] = False
        say(f"      MISMATCH: the group's changelogs count {row['group_events']} events, the processes "
            f"processed {row['processed']:,}")
    else:
        say(f"      the group's changelogs count {row['group_events']:,} events = processed")
    row["state_topics"] = state_topic_usage(bench, group, out)
    return row


def parse_process_summaries(out: str, processes: int, tail: str) -> list[dict]:
    """Each process's summary counts and first-to-last-record time, from ``--processes`` output."""
    timings = {int(m.group(1)): float(m.group(2)) for m in PROCESS_TIMING_RE.finditer(out)}
    resent = {int(m.group(1)): int(m.group(2).replace(",", "")) for m in PROCESS_RESENT_RE.finditer(out)}
    per = []
    for m in PROCESS_SUMMARY_RE.finditer(out):
        index = int(m.group(1))
        consumed, processed, filtered, dead = (int(g.replace(",", "")) for g in m.groups()[1:])
        per.append({"process": index, "consumed": consumed, "processed": processed, "filtered": filtered,
                    "dead_lettered": dead, "busy_s": timings.get(index, 0.0), "resent": resent.get(index)})
    if sorted(p["process"] for p in per) != list(range(processes)) or len(timings) != processes:
        raise UserError(f"--processes {processes}: not every process printed its summary; tail:\n{tail}")
    return sorted(per, key=lambda p: p["process"])


# --- state: the group's own topics, restore ------------------------------------------------------

def log_sizes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Bytes on disk of each topic's log (every segment, index files left out), from the brokers'
    DescribeLogDirs; a partition on several brokers (replicas) is counted once, at its largest."""
    admin = admin_client(bootstrap)
    try:
        answers = admin.describe_log_dirs(topics)
    finally:
        admin.close()
    largest: dict[tuple[str, int], int] = {}
    for broker in answers:
        for log_dir in broker.get("log_dirs", []):
            for topic in log_dir.get("topics", []):
                for part in topic.get("partitions", []):
                    key = (topic["name"], part["partition_index"])
                    largest[key] = max(largest.get(key, 0), part["partition_size"])
    sizes = dict.fromkeys(topics, 0)
    for (name, _), size in largest.items():
        if name in sizes:
            sizes[name] += size
    return sizes


def state_topic_usage(bench: Bench, group: str, output_topic: str) -> dict:
    """Records and bytes on disk per input event of the group's two changelogs and its repartition
    topic after a drain (before any compaction: what was written), the output topic's beside them."""
    internal = InternalTopics.of(group)
    roles = {"changelog": internal.changelog, "device_changelog": internal.device_changelog,
             "repartition": internal.repartition, "output": output_topic}
    sizes = log_sizes(bench.bootstrap, list(roles.values()))
    events = bench.args.events
    usage: dict[str, Any] = {}
    for role, topic in roles.items():
        records = sum(end_offsets(bench.bootstrap, topic).values())
        usage[role] = {"topic": topic, "records": records, "bytes": sizes[topic],
                       "records_per_event": round(records / events, 4),
                       "bytes_per_event": round(sizes[topic] / events, 2)}
    both = [usage["changelog"], usage["device_changelog"]]
    usage["changelogs"] = {"records": sum(u["records"] for u in both), "bytes": sum(u["bytes"] for u in both),
                           "records_per_event": round(sum(u["records"] for u in both) / events, 4),
                           "bytes_per_event": round(sum(u["bytes"] for u in both) / events, 2)}
    rep, logs = usage["repartition"], usage["changelogs"]
    say(f"      changelogs: {logs['records_per_event']:.3f} records and {logs['bytes_per_event']:,.1f} bytes "
        f"per input event ({logs['records']:,} records, {logs['bytes'] / MB:,.1f} MB); repartition: "
        f"{rep['records_per_event']:.3f} records, {rep['bytes_per_event']:,.1f} bytes per event; output: "
        f"{usage['output']['bytes_per_event']:,.1f} bytes per event")
    return usage


def restore_run(bench: Bench, group: str, via: str, label: str, timeout_s: float) -> dict:
    """Rebuild ``group``'s stores from its changelogs in a child (``--via restorer``: as a worker;
    ``query``: as the query command); its rate in keys and records per second."""
    child = Child(f"restore {label} {via}", python_child(
        "restore", "--bootstrap-servers", bench.bootstrap, "--group", group, "--via", via), bench.log_dir)
    result = child.wait(timeout_s).check()
    data = result.result_json()
    seconds = data["seconds"]
    row = {"label": label, "group": group, **data,
           "keys_per_s": round(data["keys"] / seconds, 1) if seconds > 0 else None,
           "records_per_s": round(data["records"] / seconds, 1) if seconds > 0 else None,
           "cpu_s": round(result.cpu_s, 3), "peak_rss_mib": round(result.peak_rss_kib / 1024, 1)}
    say(f"      {label}, {'a worker' if via == 'restorer' else 'the query'}: {data['records']:,} records, "
        f"{data['users']:,} users + {data['devices']:,} devices + {data['count_labels']:,} counts in "
        f"{seconds:.2f}s: {row['keys_per_s']:,.0f} keys/s ({row['records_per_s']:,.0f} records/s), "
        f"peak RSS {row['peak_rss_mib']:,.0f} MiB")
    return row


def step_restore_drained(bench: Bench, group: str) -> list[dict]:
    """Rebuild a drained group's state from its changelogs: as a worker restarting, as the query."""
    bench.announce(f"restore: the state of {group} from its changelogs, as a worker and as the query")
    return [restore_run(bench, group, via, "after the drain", 300.0) for via in ("restorer", "query")]


def console_producer(bench: Bench, topic: str, lines: Path) -> Child:
    """Kafka's console producer writing ``key<TAB>value`` lines to ``topic``, placed by key hash,
    snappy batches as the pipeline's producer writes them."""
    libs = ensure_jars(DEFAULT_HOME / "libs", quiet=True)
    cmd = ["java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ConsoleProducer",
           "--bootstrap-server", bench.bootstrap, "--topic", topic,
           "--reader-property", "parse.key=true", "--reader-property", "key.separator=\t",
           "--command-property", "acks=all", "--command-property", "compression.type=snappy",
           "--command-property", "linger.ms=20", "--command-property", "batch.size=262144"]
    return Child(f"console producer {topic}", cmd, bench.log_dir, stdin_path=lines)


def step_restore_synthetic(bench: Bench, users: int) -> dict | None:
    """Write the changelogs of ``users`` distinct users (the pipeline's own records) into a fresh
    pair of changelog topics, then time a worker's restore of them."""
    bench.announce(f"restore: a changelog of {users:,} distinct users (each with its own IP and device), "
                   "rebuilt as a worker does")
    if shutil.which("java") is None:
        say("      skipped: no 'java' on PATH (Kafka's console producer writes the changelog)")
        return None
    group = bench.name("restore")
    internal = InternalTopics.of(group)
    bench.create_topics(*(spec for spec in internal.specs() if spec.name != internal.repartition))
    with tempfile.TemporaryDirectory(prefix="loginpipe-bench-") as tmp:
        login_lines, device_lines = Path(tmp) / "login.txt", Path(tmp) / "device.txt"
        made = Child("changelog lines", python_child(
            "changelog-lines", "--users", str(users), "--login-file", str(login_lines),
            "--device-file", str(device_lines), "--seed", str(bench.args.seed)), bench.log_dir)
        data = made.wait(max(300.0, users / 2000)).check().result_json()
        started = time.monotonic()
        for topic, lines in ((internal.changelog, login_lines), (internal.device_changelog, device_lines)):
            console_producer(bench, topic, lines).wait(max(300.0, users / 2000)).check()
        written_s = time.monotonic() - started
    sizes = log_sizes(bench.bootstrap, [internal.changelog, internal.device_changelog])
    written = sum(sum(end_offsets(bench.bootstrap, t).values()) for t in sizes)
    if written != data["records"]:
        raise UserError(f"the console producer wrote {written:,} changelog records of {data['records']:,}")
    on_disk = sum(sizes.values())
    say(f"      {data['records']:,} records ({on_disk / MB:,.1f} MB on disk, {on_disk / users:,.1f} bytes "
        f"per user) made in {data['seconds']:.1f}s, written in {written_s:.1f}s")
    row = restore_run(bench, group, "restorer", f"{users:,} users", max(300.0, users / 1000))
    row.update(users_written=users, log_bytes=on_disk, log_bytes_per_user=round(on_disk / users, 1),
               seconds_per_million_users=round(row["seconds"] * 1_000_000 / users, 2))
    say(f"      a worker restores {users:,} users in {row['seconds']:.1f}s "
        f"({row['seconds_per_million_users']:.1f}s per million users)")
    return row


# --- latency ---------------------------------------------------------------------------------

def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    # read_committed: the last stable offset, the end a read_committed reader stops at
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> Iterator:
    """Every record of ``topic`` up to its current end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    # read_committed: an exactly-once pipeline's outputs count once their transaction committed
    # (on at-least-once topics, which hold no transactions, it reads the same records)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", max_partition_fetch_bytes=4 * 1024 * 1024,
                             fetch_max_bytes=16 * 1024 * 1024)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise UserError(f"could not read {topic} back within {timeout_s:.0f}s")
            for tp, batch in consumer.poll(timeout_ms=500, max_records=20_000).items():
                end = ends[tp]
                for record in batch:
                    if record.offset < end:
                        yield record
            # the position, not the last record: transaction markers take offsets too
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    if not ordered:
        return 0.0
    rank = max(1, int(-(-q * len(ordered) // 1)))  # ceil(q * n)
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class GroupJoin:
    seconds: float  # from the start of waiting until the group had been Stable for the settle time
    first_stable_s: float | None  # when it was first seen Stable with every member
    left_stable: int  # how often it left Stable again (a rebalance after the first one)


def wait_group_settled(bootstrap: str, group: str, members: int, pipeline: Child, timeout_s: float,
                       settle_s: float) -> GroupJoin:
    """Wait until ``group`` has been Stable with ``members`` members for ``settle_s`` seconds on end."""
    from kafka.errors import KafkaError

    admin = admin_client(bootstrap)
    started = time.monotonic()
    first_stable: float | None = None
    stable_since: float | None = None
    left = 0
    try:
        while True:
            now = time.monotonic()
            if pipeline.poll() is not None:
                raise UserError(f"the pipeline exited early; output tail:\n{pipeline.result.tail()}")
            if now - started > timeout_s:
                raise UserError(f"group {group} was not Stable with {members} member(s) "
                                f"within {timeout_s:.0f}s")
            try:
                info = admin.describe_groups([group])[group]
                stable = info.get("group_state") == "Stable" and len(info.get("members") or []) >= members
            except (KafkaError, KeyError):
                stable = False
            if stable:
                first_stable = first_stable or now
                stable_since = stable_since or now
                if now - stable_since >= settle_s:
                    return GroupJoin(now - started, first_stable - started, left)
            elif stable_since is not None:
                stable_since = None
                left += 1
            time.sleep(0.05)
    finally:
        admin.close()


def committed_total(admin, group: str, topic: str) -> int:
    from kafka.errors import KafkaError

    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:
        return -1
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def start_latency_pipeline(bench: Bench, src: str, out: str, dlq: str, group: str,
                            name: str = "latency", flags: tuple[str, ...] = ()) -> tuple[Child, GroupJoin]:
    """The pipeline on the latency topics (with ``flags`` besides), once its group has settled (so
    no rebalance skews latency); ``name`` tells its log files and snapshot topics apart."""
    threads = bench.args.latency_threads
    pipeline = Child(f"{name} pipeline", [
        sys.executable, "create_kafka_consumer.py", "--bootstrap-servers", bench.bootstrap,
        "--input-topic", src, "--output-topic", out, "--dlq-topic", dlq, "--group-id", group,
        *snapshot_topic_flags(bench, name), "--threads", str(threads), *flags, "--quiet"], bench.log_dir)
    join = wait_group_settled(bench.bootstrap, group, threads, pipeline, 90.0, GROUP_SETTLE_S)
    say(f"      pipeline group first Stable after {join.first_stable_s:.2f}s, left Stable {join.left_stable} "
        f"time(s), Stable for {GROUP_SETTLE_S:g}s on end after {join.seconds:.2f}s; producing")
    return pipeline, join


def produce_at_rate(bench: Bench, src: str, count: int, name: str = "latency") -> float | None:
    """Run the generator at the offered load; the rate it achieved, if it printed one."""
    args = bench.args
    generator = Child(f"{name} generator", [
        sys.executable, "-m", "loginpipe.local.generator", "--bootstrap-servers", bench.bootstrap,
        "--topic", src,
        "--count", str(count), "--rate", f"{args.latency_rate:g}", "--seed", str(args.seed + 1),
        "--progress-every", "10"], bench.log_dir)
    gen_result = generator.wait(count / args.latency_rate * 3 + 60).check()
    gen_match = GENERATOR_RE.search(gen_result.stderr)
    return float(gen_match.group(2).replace(",", "")) if gen_match else None


def drain_and_stop(bench: Bench, pipeline: Child, group: str, src: str, count: int) -> ChildResult:
    """Let the pipeline finish the input, then stop it; its result."""
    # Drained once the group has committed every input offset (commits follow acknowledgements).
    admin = admin_client(bench.bootstrap)
    try:
        drained = wait_until(lambda: committed_total(admin, group, src) >= count or pipeline.poll(),
                             max(60.0, bench.args.latency_seconds), interval_s=0.25)
    finally:
        admin.close()
    if pipeline.poll() is not None:
        raise UserError(f"the pipeline exited during the latency run; tail:\n{pipeline.result.tail()}")
    if not drained:
        say("      warning: the pipeline did not commit every input offset in time; stopping it anyway")
    result = pipeline.stop(grace_s=60.0)
    if result is None or result.returncode != 0:
        tail = result.tail() if result else "(still running)"
        raise UserError(f"the latency pipeline did not stop cleanly; tail:\n{tail}")
    return result


def input_timestamps(bootstrap: str, src: str) -> dict[tuple[int, int], int]:
    """Each input record's timestamp (ms), by partition and offset."""
    return {(record.partition, record.offset): record.timestamp for record in read_topic(bootstrap, src)}


def join_latencies(bootstrap: str, src: str, out: str) -> tuple[list[float], int, int]:
    """Output minus input timestamp per output record, joined on source_partition/source_offset.

    Returns the latencies in ascending order, the outputs without an input and the input count.
    """
    import orjson

    sent_at = input_timestamps(bootstrap, src)
    latencies: list[float] = []
    unmatched = 0
    for record in read_topic(bootstrap, out):
        fields = orjson.loads(record.value)
        start = sent_at.get((fields.get("source_partition"), fields.get("source_offset")))
        if start is None:
            unmatched += 1
        else:
            latencies.append(record.timestamp - start)
    latencies.sort()
    return latencies, unmatched, len(sent_at)


def timestamp_type(args) -> str:
    return {"log-append": "LogAppendTime", "create": "CreateTime"}[args.latency_timestamps]


def latency_topics(bench: Bench, prefix: str) -> tuple[str, str, str]:
    """Fresh input, output and dead-letter topics of a latency run, timestamped as
    --latency-timestamps says."""
    src, out, dlq = bench.name(f"{prefix}-in"), bench.name(f"{prefix}-out"), bench.name(f"{prefix}-dlq")
    ts_config = {"message.timestamp.type": timestamp_type(bench.args)}
    bench.create_topics(
        TopicSpec(src, "latency input", configs=ts_config),
        TopicSpec(out, "latency output", configs={**ts_config, "compression.type": "producer"}),
        TopicSpec(dlq, "latency dead letters"))
    return src, out, dlq


def step_latency(bench: Bench, client: str = "kafka-python") -> dict:
    args = bench.args
    threads = args.latency_threads
    count = max(1, round(args.latency_rate * args.latency_seconds))
    who = f"{threads} thread{'s' if threads > 1 else ''}{client_label(client)}"
    bench.announce(f"latency: the pipeline ({who}) with the generator at {args.latency_rate:,g} events/s "
                   f"for {args.latency_seconds:g}s "
                   f"({count:,} events)")
    ts_type = timestamp_type(args)
    name = "lat" + client_suffix(client)
    src, out, dlq = latency_topics(bench, name)
    group = bench.group(name)
    pipeline, join = start_latency_pipeline(bench, src, out, dlq, group,
                                            name="latency" + client_suffix(client),
                                            flags=tuple(client_flags(client)))
    achieved = produce_at_rate(bench, src, count)
    result = drain_and_stop(bench, pipeline, group, src, count)
    summary = SUMMARY_RE.search(result.stdout)
    consumed = int(summary.group(1).replace(",", "")) if summary else None
    latencies, unmatched, inputs = join_latencies(bench.bootstrap, src, out)
    row = {
        "client": client, "threads": threads, "offered_rate": args.latency_rate,
        "seconds": args.latency_seconds,
        "produced": count, "generator_rate": achieved, "pipeline_consumed": consumed,
        "timestamps": ts_type, "input_records": inputs, "outputs_joined": len(latencies),
        "outputs_unmatched": unmatched, "group_first_stable_s": round(join.first_stable_s or 0.0, 2),
        "group_left_stable": join.left_stable, "group_settled_s": round(join.seconds, 2),
        "p50_ms": quantile(latencies, 0.50), "p99_ms": quantile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else 0.0,
        "cpu_s": round(result.cpu_s, 3), "peak_rss_mib": round(result.peak_rss_kib / 1024, 1),
    }
    say(f"      {len(latencies):,} outputs joined to their inputs ({ts_type}): p50 {row['p50_ms']:,.0f} ms, "
        f"p99 {row['p99_ms']:,.0f} ms, max {row['max_ms']:,.0f} ms"
        + (f" (generator achieved {achieved:,.0f} events/s)" if achieved else ""))
    return row


# --- memory ----------------------------------------------------------------------------------

def _add_rss_per_user(points: list[dict]) -> None:
    """RSS in MiB at each point, and bytes per user added since the previous point."""
    previous = None
    for point in points:
        point["rss_mib"] = round(point["rss_bytes"] / 2**20, 1)
        if previous is not None:
            point["bytes_per_added_user"] = round(
                (point["rss_bytes"] - previous["rss_bytes"]) / (point["users"] - previous["users"]), 1)
        previous = point


def step_memory(bench: Bench) -> dict:
    args = bench.args
    users = sorted(set(args.memory_users))
    top = users[-1]
    listed = ", ".join(f"{u:,}" for u in users)
    bench.announce(f"memory: a partition's stores fed with {listed} distinct users "
                   "(each its own IP and device)")
    runs = {}
    plateau = sorted(set(users) | {top * k // 5 for k in range(1, 6)})
    # Each store alone, between the two smallest points: what a user costs in each.
    apart = users[:2]
    for key, cap, points, stores in (("uncapped", 10_000_000, users, "both"),
                                     ("default_cap", 0, plateau, "both"),
                                     ("login_only", 10_000_000, apart, "login"),
                                     ("device_only", 10_000_000, apart, "device")):
        child = Child(f"memory {key}", python_child(
            "memory", "--points", ",".join(map(str, points)), "--max-tracked-keys", str(cap),
            "--stores", stores, "--seed", str(args.seed)), bench.log_dir)
        result = child.wait(max(300.0, top / 10_000)).check()
        data = result.result_json()
        _add_rss_per_user(data["points"])
        data["peak_rss_mib"] = round(result.peak_rss_kib / 1024, 1)
        runs[key] = data
        last = data["points"][-1]
        say(f"      {stores} store(s), max_tracked_keys {data['max_tracked_keys']:,}: " + ", ".join(
            f"{p['users']:,} users {p['rss_mib']:,.0f} MiB" for p in data["points"][1:])
            + f" (tracking {last['tracked_users']:,} users, {last['tracked_devices']:,} devices at the end)")
    runs["bytes_per_user"] = bytes_per_user(runs, apart)
    per = runs["bytes_per_user"]
    low, high = per["between_users"]
    say(f"      bytes per distinct user between {low:,} and {high:,} users: both stores "
        f"{per['both']:,.0f} (login {per['login']:,.0f}, device {per['device']:,.0f})")
    return runs


def bytes_per_user(runs: dict, apart: list[int]) -> dict:
    """RSS added per user between the points ``apart`` (or from none to the one point), per store."""
    def slope(points: list[dict]) -> float | None:
        by_users = {p["users"]: p["rss_bytes"] for p in points}
        low, high = (apart[0], apart[-1]) if len(apart) > 1 else (0, apart[0])
        if low not in by_users or high not in by_users or high == low:
            return None
        return round((by_users[high] - by_users[low]) / (high - low), 1)

    return {"between_users": apart if len(apart) > 1 else [0, apart[0]],
            "both": slope(runs["uncapped"]["points"]), "login": slope(runs["login_only"]["points"]),
            "device": slope(runs["device_only"]["points"])}
