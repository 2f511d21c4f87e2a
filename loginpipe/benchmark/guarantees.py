"""The guarantees step: at-least-once against exactly-once at several checkpoint intervals, on the
same data in the same run.

Drains: one input of ``--guarantee-events`` events is preloaded once; each round drains it once per
setting (at-least-once, then exactly-once at each ``--guarantee-intervals`` value), each drain with
a fresh group and fresh output topics. The settings take turns, and every other round runs them
in reverse, so that drift in the machine's load (another job on the broker, the page cache) falls
on all of them alike; medians are reported.

Latency: per setting, the pipeline with the generator at ``--latency-rate``, the same seed each
time; the inputs of ``--guarantee-latency-seconds`` after a warm-up count (see Window). Two
latencies per output record, from the input record's timestamp: when the output was appended to
its topic (its own timestamp, as the latency step measures), and when a read_committed reader
tailing the output topic was handed it (the ``visible`` child). Without transactions the two
differ by a fetch; with them an output is readable only once its transaction commits, so only the
second is the latency a consumer downstream sees.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from loginpipe.benchmark.common import say
from loginpipe.benchmark.process import Child
from loginpipe.benchmark.steps import (
    SUMMARY_RE,
    Bench,
    drain_and_stop,
    drain_command,
    input_timestamps,
    latency_topics,
    pipeline_topics,
    preload,
    produce_at_rate,
    python_child,
    python_run,
    quantile,
    read_topic,
    snapshot_topic_flags,
    start_latency_pipeline,
    timestamp_type,
)
from loginpipe.config import AT_LEAST_ONCE, EXACTLY_ONCE, PipelineConfig
from loginpipe.errors import UserError
from loginpipe.topics import TopicSpec
from loginpipe.waiting import wait_until

TRANSACTIONS_RE = re.compile(r"transactions: ([\d,]+) committed \(([\d,]+) outputs, ([\d,]+) ms on "
                             r"average\), ([\d,]+) aborted")
READER_READY = "visible: ready"
# The defaults of --guarantee-events and --guarantee-latency-seconds (or --events and
# --latency-seconds when smaller): what fits in a few minutes on 2 cores.
DRAIN_EVENTS = 150_000
LATENCY_SECONDS = 10.0
# A latency run produces this long before and after the seconds it measures (see Window).
WARMUP_S = 3.0
COOLDOWN_S = 3.0


@dataclass(frozen=True)
class Setting:
    """One way to run the pipeline: its processing guarantee and checkpoint interval."""

    guarantee: str
    interval_ms: int

    @property
    def key(self) -> str:
        return "alo" if self.guarantee == AT_LEAST_ONCE else f"eos{self.interval_ms}"

    @property
    def label(self) -> str:
        if self.guarantee == AT_LEAST_ONCE:
            return AT_LEAST_ONCE
        return f"{EXACTLY_ONCE}, {self.interval_ms:,} ms"

    def flags(self) -> tuple[str, ...]:
        return ("--processing-guarantee", self.guarantee, "--commit-interval-ms", str(self.interval_ms))


def settings_of(args) -> list[Setting]:
    """At-least-once with the default interval (it only spaces offset commits there), then
    exactly-once at each interval asked for."""
    default = PipelineConfig().commit_interval_ms
    return [Setting(AT_LEAST_ONCE, default), *(Setting(EXACTLY_ONCE, ms) for ms in args.guarantee_intervals)]


def in_turns(settings: list[Setting], rounds: int) -> list[tuple[int, Setting]]:
    """(round, setting) in the order to run them: every other round reversed, so that no setting
    always runs first (on a cooler broker) or last."""
    order = []
    for round_no in range(1, rounds + 1):
        turn = settings if round_no % 2 else settings[::-1]
        order.extend((round_no, setting) for setting in turn)
    return order


class MachineBusy:
    """The whole machine's CPU use from its making to ``stop``, in percent of all cores: what the
    run itself used plus anything else running (another job on the shared broker, say)."""

    def __init__(self) -> None:
        import psutil

        psutil.cpu_percent(None)  # starts the interval the next call measures
        self.load_1m = round(os.getloadavg()[0], 2)

    def stop(self) -> float:
        import psutil

        return round(psutil.cpu_percent(None), 1)


# --- drains ----------------------------------------------------------------------------------

def count_records(bootstrap: str, topic: str) -> int:
    """Records a read_committed reader gets from ``topic``: with transactions, end offsets also
    count the commit markers, so only reading tells outputs exactly."""
    return sum(1 for _ in read_topic(bootstrap, topic))


def parse_transactions(text: str) -> dict | None:
    """The pipeline summary's transactions line (exactly-once only), as numbers."""
    match = TRANSACTIONS_RE.search(text)
    if not match:
        return None
    committed, outputs, ms, aborted = (int(g.replace(",", "")) for g in match.groups())
    return {"committed": committed, "outputs_avg": outputs, "commit_ms_avg": ms, "aborted": aborted}


def drain_accounting(row: dict, setting: Setting, events: int) -> bool:
    """Every input event consumed and counted once; outputs and dead letters as many as counted
    (exactly-once), or at least as many (at-least-once: a re-sent output may be there twice)."""
    if row["consumed"] != events or row["processed"] is None:
        return False
    if row["processed"] + row["filtered"] + row["dead_lettered"] != row["consumed"]:
        return False
    if setting.guarantee == EXACTLY_ONCE:
        return row["output_records"] == row["processed"] and row["dlq_records"] == row["dead_lettered"]
    return row["output_records"] >= row["processed"] and row["dlq_records"] >= row["dead_lettered"]


def drain(bench: Bench, source: str, data: dict, setting: Setting, round_no: int) -> dict:
    """One drain of the step's input with ``setting``: rate, CPU, transactions, accounting."""
    tag = f"g-{setting.key}-r{round_no}"
    out, dlq = pipeline_topics(bench, tag)
    group = bench.group(tag)
    cmd = drain_command(bench, source, out, dlq, group, *snapshot_topic_flags(bench, tag), *setting.flags())
    busy = MachineBusy()
    say(f"      round {round_no}, {setting.label}:")
    child = Child(f"guarantees {tag}", cmd, bench.log_dir)
    row = python_run(bench, setting.label, "pipeline", child, events=data["events"],
                     value_bytes=data["value_bytes"], setting=setting.key, guarantee=setting.guarantee,
                     interval_ms=setting.interval_ms, round=round_no, group=group, load_1m=busy.load_1m)
    row["machine_busy_pct"] = busy.stop()
    row["transactions"] = parse_transactions(child.result.stdout)
    row["output_records"] = count_records(bench.bootstrap, out)
    row["dlq_records"] = count_records(bench.bootstrap, dlq)
    row["accounting_ok"] = drain_accounting(row, setting, data["events"])
    txn = row["transactions"]
    say(f"      output {row['output_records']:,}, dlq {row['dlq_records']:,} records (read_committed) "
        f"for processed {row['processed']:,}, dead-lettered {row['dead_lettered']:,}: accounting "
        f"{'ok' if row['accounting_ok'] else 'MISMATCH'}"
        + (f"; {txn['committed']:,} transactions of {txn['outputs_avg']:,} outputs, commit "
           f"{txn['commit_ms_avg']} ms, {txn['aborted']} aborted" if txn else "")
        + f"; machine CPU {row['machine_busy_pct']:.0f}%")
    return row


# --- latency ---------------------------------------------------------------------------------

def start_reader(bench: Bench, topic: str, tag: str, seen_file: Path) -> Child:
    """The read_committed reader tailing ``topic`` (children.py's ``visible``)."""
    return Child(f"guarantees {tag} reader", python_child(
        "visible", "--bootstrap-servers", bench.bootstrap, "--topic", topic, "--seen-file", str(seen_file)),
        bench.log_dir)


def wait_reader_ready(reader: Child, timeout_s: float = 60.0) -> None:
    """Until the reader's positions are set (it then sees every output from the first)."""
    def ready() -> bool:
        if reader.poll() is not None:
            raise UserError(f"the visibility reader exited early; tail:\n{reader.result.tail()}")
        return READER_READY in reader.err_path.read_text(errors="replace")

    if not wait_until(ready, timeout_s, interval_s=0.1):
        raise UserError(f"the visibility reader was not ready within {timeout_s:.0f}s")


def finish_reader(reader: Child, seen_file: Path) -> dict[tuple[int, int], int]:
    """Stop the reader (it reads to the end first) and load when it saw each output, by
    (partition, offset); the file is removed."""
    result = reader.stop(grace_s=90.0)
    if result is None or result.returncode != 0:
        raise UserError(f"the visibility reader failed; tail:\n{result.tail() if result else '(running)'}")
    seen = array("q")
    with seen_file.open("rb") as src:
        seen.frombytes(src.read())
    seen_file.unlink()
    return {(seen[i], seen[i + 1]): seen[i + 2] for i in range(0, len(seen), 3)}


@dataclass(frozen=True)
class Window:
    """The inputs whose latencies count, in ms after the first input's timestamp. Before it the
    pipeline is still catching up with the start (its first batches take hundreds of ms, for a
    second or more with exactly-once); after it the input stops, so the last checkpoint closes on
    its interval rather than its record count, unlike at a steady rate."""

    start_ms: float
    end_ms: float


def join_both(bootstrap: str, src: str, out: str, seen: dict[tuple[int, int], int], window: Window) -> dict:
    """Per output record, joined to its input on source_partition/source_offset: appended (output
    timestamp − input timestamp) and visible (when the reader got it − input timestamp), in ms;
    percentiles of the inputs in ``window``, and of every input."""
    import orjson

    sent_at = input_timestamps(bootstrap, src)
    first = min(sent_at.values(), default=0)
    appended: list[float] = []
    visible: list[float] = []
    every: list[float] = []  # visible, the whole run
    by_second: dict[int, list[float]] = {}  # visible, by the input's second: shows a passing stall
    unmatched = unseen = 0
    for record in read_topic(bootstrap, out):
        fields = orjson.loads(record.value)
        start = sent_at.get((fields.get("source_partition"), fields.get("source_offset")))
        at = seen.get((record.partition, record.offset))
        if start is None:
            unmatched += 1
            continue
        if at is None:
            unseen += 1
            continue
        every.append(at - start)
        by_second.setdefault(int((start - first) // 1000), []).append(at - start)
        if window.start_ms <= start - first < window.end_ms:
            appended.append(record.timestamp - start)
            visible.append(at - start)
    for values in (appended, visible, every):
        values.sort()
    return {"inputs": len(sent_at), "outputs_joined": len(every), "outputs_measured": len(visible),
            "outputs_unmatched": unmatched, "outputs_unseen": unseen, **percentiles("visible", visible),
            **percentiles("appended", appended), "visible_p99_whole_run_ms": quantile(every, 0.99),
            "visible_max_whole_run_ms": every[-1] if every else 0.0,
            "visible_p99_by_second_ms": [quantile(sorted(by_second[s]), 0.99) for s in sorted(by_second)]}


def percentiles(prefix: str, ordered: list[float]) -> dict:
    return {f"{prefix}_p50_ms": quantile(ordered, 0.50), f"{prefix}_p99_ms": quantile(ordered, 0.99),
            f"{prefix}_max_ms": ordered[-1] if ordered else 0.0}


def latency_run(bench: Bench, setting: Setting, round_no: int, seconds: float) -> dict:
    """The pipeline with ``setting`` at the offered load for the warm-up, ``seconds`` measured
    and the cool-down; its appended and visible latencies."""
    tag = f"g-lat-{setting.key}-r{round_no}"
    say(f"      round {round_no}, {setting.label}:")
    count = max(1, round(bench.args.latency_rate * (WARMUP_S + seconds + COOLDOWN_S)))
    src, out, dlq = latency_topics(bench, tag)
    group = bench.group(tag)
    seen_file = bench.log_dir / f"{tag}-seen.bin"
    reader = start_reader(bench, out, tag, seen_file)  # before the pipeline: no output is missed
    pipeline, _ = start_latency_pipeline(bench, src, out, dlq, group, tag, setting.flags())
    wait_reader_ready(reader)
    busy = MachineBusy()
    achieved = produce_at_rate(bench, src, count, tag)
    result = drain_and_stop(bench, pipeline, group, src, count)
    machine_busy = busy.stop()
    window = Window(1000 * WARMUP_S, 1000 * (WARMUP_S + seconds))
    figures = join_both(bench.bootstrap, src, out, finish_reader(reader, seen_file), window)
    summary = SUMMARY_RE.search(result.stdout)
    row = {"setting": setting.key, "label": setting.label, "guarantee": setting.guarantee,
           "interval_ms": setting.interval_ms, "round": round_no, "produced": count,
           "generator_rate": achieved,
           "pipeline_consumed": int(summary.group(1).replace(",", "")) if summary else None,
           **figures, "transactions": parse_transactions(result.stdout), "cpu_s": round(result.cpu_s, 3),
           "machine_busy_pct": machine_busy, "load_1m": busy.load_1m}
    committed = (row["transactions"] or {}).get("committed")
    offered_ms = 1000 * count / bench.args.latency_rate
    # the offered period over the transactions: the checkpoint interval the run really had
    row["ms_per_transaction"] = round(offered_ms / committed) if committed else None
    say_latency(row)
    return row


def say_latency(row: dict) -> None:
    say(f"      visible p50 {row['visible_p50_ms']:,.0f} ms, p99 {row['visible_p99_ms']:,.0f} ms (whole run "
        f"{row['visible_p99_whole_run_ms']:,.0f}); appended p50 {row['appended_p50_ms']:,.0f} ms, p99 "
        f"{row['appended_p99_ms']:,.0f} ms; {row['outputs_measured']:,} of {row['outputs_joined']:,} "
        f"outputs measured, {row['outputs_unseen']:,} not seen by the reader; machine CPU "
        f"{row['machine_busy_pct']:.0f}%")


# --- the step --------------------------------------------------------------------------------

def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def summarize_setting(setting: Setting, drains: list[dict], latencies: list[dict]) -> dict:
    """The medians of one setting's drains and latency runs."""
    txns = [r["transactions"] for r in drains if r.get("transactions")]

    def median_of(rows: list[dict], key: str) -> float | None:
        return _median([r[key] for r in rows])

    return {
        "setting": setting.key, "label": setting.label, "guarantee": setting.guarantee,
        "interval_ms": setting.interval_ms,
        "events_per_s_by_round": [r["events_per_s"] for r in drains],
        **{key: median_of(drains, key) for key in ("events_per_s", "cpu_s_per_million", "peak_rss_mib")},
        "transactions": _median([t["committed"] for t in txns]),
        "transaction_outputs": _median([t["outputs_avg"] for t in txns]),
        "commit_ms": _median([t["commit_ms_avg"] for t in txns]),
        "accounting_ok": all(r["accounting_ok"] for r in drains),
        "outputs_unseen": sum(r["outputs_unseen"] + r["outputs_unmatched"] for r in latencies),
        "drain_machine_pct": median_of(drains, "machine_busy_pct"),
        "latency_machine_pct": median_of(latencies, "machine_busy_pct"),
        "latency_ms_per_transaction": median_of(latencies, "ms_per_transaction"),
        **{key: median_of(latencies, key) for key in (
            "visible_p50_ms", "visible_p99_ms", "visible_max_ms", "appended_p50_ms", "appended_p99_ms",
            "visible_p99_whole_run_ms")},
    }


def summarize(settings: list[Setting], drains: list[dict], latencies: list[dict]) -> list[dict]:
    """Per setting: the medians of its rounds, and their ratios to at-least-once's medians."""
    rows = [summarize_setting(setting, [r for r in drains if r["setting"] == setting.key],
                              [r for r in latencies if r["setting"] == setting.key]) for setting in settings]
    base = rows[0]
    for row in rows:
        row["vs_alo_events_per_s"] = _ratio(row["events_per_s"], base["events_per_s"])
        row["vs_alo_cpu"] = _ratio(row["cpu_s_per_million"], base["cpu_s_per_million"])
        row["vs_alo_p99"] = _ratio(row["visible_p99_ms"], base["visible_p99_ms"])
    return rows


def step_guarantees(bench: Bench) -> dict:
    """Preload once, drain it with every setting in turns, then a latency run per setting in turns."""
    args = bench.args
    settings = settings_of(args)
    events = args.guarantee_events or min(DRAIN_EVENTS, args.events)
    seconds = args.guarantee_latency_seconds or min(LATENCY_SECONDS, args.latency_seconds)
    started, load_start = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    bench.announce(f"guarantees: preload {events:,} events, drain them {args.guarantee_rounds} time(s) with "
                   + ", ".join(s.label for s in settings) + " in turns")
    source = bench.name("g-in")
    bench.create_topics(TopicSpec(source, "guarantees input"))
    data = preload(bench, source, events, "guarantees preload")
    drains = [drain(bench, source, data, setting, r)
              for r, setting in in_turns(settings, args.guarantee_rounds)]
    bench.announce(f"guarantees: latency at {args.latency_rate:,g} events/s, {seconds:g}s measured after "
                   f"{WARMUP_S:g}s and before {COOLDOWN_S:g}s more, per setting, "
                   f"{args.guarantee_latency_rounds} round(s) in turns")
    latencies = [latency_run(bench, setting, r, seconds)
                 for r, setting in in_turns(settings, args.guarantee_latency_rounds)]
    return {
        "events": events, "value_bytes": data["value_bytes"], "rounds": args.guarantee_rounds,
        "latency_rounds": args.guarantee_latency_rounds, "latency_rate": args.latency_rate,
        "latency_seconds": seconds, "warmup_s": WARMUP_S, "cooldown_s": COOLDOWN_S,
        "threads": args.latency_threads, "timestamps": timestamp_type(args),
        "commit_every": PipelineConfig().commit_every_records, "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.monotonic() - started, 1),
        "summary": summarize(settings, drains, latencies), "drains": drains, "latency": latencies,
    }
