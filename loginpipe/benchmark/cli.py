"""The benchmark's command line: its flags, the order of its steps, and dispatch to ``compare`` and to
the child commands."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from loginpipe.benchmark.avro import (
    bench_registry,
    check_registry,
    forget_subjects,
    step_avro,
    step_serializers,
)
from loginpipe.benchmark.children import CHILD_COMMANDS, run_child_command
from loginpipe.benchmark.common import (
    add_run_arguments,
    bootstrap_servers,
    int_list,
    interrupt,
    new_run,
    non_negative_int,
    say,
)
from loginpipe.benchmark.compare import run_compare
from loginpipe.benchmark.guarantees import (
    COOLDOWN_S,
    DRAIN_EVENTS,
    LATENCY_SECONDS,
    WARMUP_S,
    step_guarantees,
)
from loginpipe.benchmark.peers import (
    DEFAULT_QUIX_VENV,
    QUIX_VERSION,
    confluent_missing,
    step_pipeline_confluent,
    step_quix,
)
from loginpipe.benchmark.report import add_ratios, describe_machine, markdown, peer_ratios, write_outputs
from loginpipe.benchmark.steps import (
    Bench,
    step_consume_only,
    step_java,
    step_latency,
    step_memory,
    step_pass_through,
    step_pipeline,
    step_pipeline_processes,
    step_preload,
    step_restore_drained,
    step_restore_synthetic,
)
from loginpipe.cli import EnvArgumentParser, add_registry_argument, positive_float, positive_int
from loginpipe.config import PipelineConfig
from loginpipe.errors import UserError
from loginpipe.topics import TopicSpec

# The benchmark's steps, in the order they run; --only and --skip choose among them. "peers" runs
# within "throughput" (on its preloaded input); alone, it preloads and runs the pipeline drains it
# is compared with. "avro" drains the same input with JSON and with Avro output (alone, it preloads).
STEPS = ("throughput", "peers", "avro", "restore", "latency", "guarantees", "memory")


def step_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(name not in STEPS for name in names):
        raise ValueError(text)
    return names


step_list.__name__ = f"comma-separated list of steps ({', '.join(STEPS)})"


def build_parser() -> EnvArgumentParser:
    defaults = PipelineConfig()
    parser = EnvArgumentParser(
        prog="python -m loginpipe.benchmark",
        description="Benchmark the pipeline against Kafka's Java consumer, kafka-python consume-only and "
                    "pass-through, with threads and with processes, and against its peers (confluent-kafka "
                    "pass-through, the pipeline on confluent-kafka, a Quix Streams app doing the same "
                    "job: --only peers, make bench-peers); what its state topics take per "
                    "event; how fast state is restored; end-to-end latency; memory per user. Results "
                    "in bench-results/.",
        epilog="python -m loginpipe.benchmark compare BEFORE [AFTER] compares the drain throughput of two "
               "versions of the code instead (see its --help).")
    add_run_arguments(parser, events_help="events to preload and consume in each throughput run",
                      partitions_help="partitions of the benchmark topics")
    parser.add_env_argument("--threads-list", env="BENCH_THREADS_LIST", type=int_list, default=[1, 2],
                            help="pipeline --threads values to run, comma-separated")
    parser.add_env_argument("--processes", env="BENCH_PROCESSES", type=positive_int, default=2,
                            help="also drain with the pipeline's --processes N (one thread each, one "
                                 "group); 1 skips it")
    parser.add_env_argument("--restore-users", env="BENCH_RESTORE_USERS", type=non_negative_int,
                            default=1_000_000,
                            help="distinct users in the synthetic changelog whose restore is timed; 0 skips")
    parser.add_env_argument("--latency-rate", env="BENCH_LATENCY_RATE", type=positive_float, default=5000.0,
                            help="offered load of the latency run, events/s")
    parser.add_env_argument("--latency-seconds", env="BENCH_LATENCY_SECONDS", type=positive_float,
                            default=60.0, help="length of the latency run")
    parser.add_env_argument("--latency-threads", env="BENCH_LATENCY_THREADS", type=positive_int,
                            default=defaults.threads, help="pipeline --threads in the latency run")
    parser.add_env_argument("--latency-timestamps", env="BENCH_LATENCY_TIMESTAMPS", default="log-append",
                            choices=["log-append", "create"],
                            help="timestamp type of the latency topics: broker append time (in Kafka to "
                                 "out of Kafka) or producer create time (includes the generator's linger)")
    parser.add_env_argument("--memory-users", env="BENCH_MEMORY_USERS", type=int_list,
                            default=[100_000, 1_000_000, 5_000_000],
                            help="distinct users at which to measure memory, comma-separated")
    parser.add_argument("--with-confluent", action="store_true",
                        help="also run the confluent-kafka pass-through when the peers step is left out "
                             "(the peers step runs it anyway)")
    parser.add_env_argument("--quix", env="BENCH_QUIX", choices=["auto", "skip"], default="auto",
                            help=f"the peers step's Quix Streams app: auto installs quixstreams"
                                 f"=={QUIX_VERSION} into --quix-venv on first use (about 150 MB), skip "
                                 "leaves it out")
    parser.add_env_argument("--quix-venv", env="BENCH_QUIX_VENV", default=str(DEFAULT_QUIX_VENV),
                            help="the Quix Streams app's own virtual environment (made when missing)")
    add_guarantees_arguments(parser)
    add_avro_arguments(parser)
    parser.add_env_argument("--only", env="BENCH_ONLY", type=step_list, default=None,
                            help=f"run only these steps, comma-separated, of: {', '.join(STEPS)} "
                                 "(throughput: preload, ceilings, pipeline drains, their state and "
                                 "restore; peers: the confluent-kafka pass-through, the pipeline on "
                                 "confluent-kafka, a Quix Streams app doing the same job, and alone "
                                 "(make bench-peers) the kafka-python pass-through and pipeline drains "
                                 "they are compared with; avro: the pipeline with JSON and with Avro "
                                 "output, and the serializers' cost per record; restore: the synthetic "
                                 "changelog's). The "
                                 "results then go to bench-<time>.{json,md,png} only: latest.* stays "
                                 "the last full run's")
    parser.add_env_argument("--skip", env="BENCH_SKIP", type=step_list, default=[],
                            help="run every step but these, comma-separated")
    return parser


def add_guarantees_arguments(parser: EnvArgumentParser) -> None:
    """The flags of the guarantees step (at-least-once against exactly-once)."""
    add = parser.add_env_argument
    add("--guarantee-events", env="BENCH_GUARANTEE_EVENTS", type=positive_int, default=None,
        help=f"events the guarantees step preloads and drains with each setting (default: "
             f"{DRAIN_EVENTS:,}, or --events when smaller)")
    add("--guarantee-intervals", env="BENCH_GUARANTEE_INTERVALS", type=int_list, default=[100, 1000],
        help="exactly-once --commit-interval-ms values to compare with at-least-once, comma-separated")
    add("--guarantee-rounds", env="BENCH_GUARANTEE_ROUNDS", type=positive_int, default=2,
        help="drains of the guarantees step's input per setting, the settings taking turns")
    add("--guarantee-latency-seconds", env="BENCH_GUARANTEE_LATENCY_SECONDS", type=positive_float,
        default=None, help=f"seconds measured in each latency run of the guarantees step, at "
                           f"--latency-rate, after {WARMUP_S:g}s and before {COOLDOWN_S:g}s more "
                           f"(default: {LATENCY_SECONDS:g}, or --latency-seconds when shorter)")
    add("--guarantee-latency-rounds", env="BENCH_GUARANTEE_LATENCY_ROUNDS", type=positive_int, default=1,
        help="latency runs per setting in the guarantees step, the settings taking turns")


def add_avro_arguments(parser: EnvArgumentParser) -> None:
    """The flags of the avro step (JSON against Avro output, the serializers' micro-measure)."""
    add_registry_argument(parser, needed_for="use for the avro step (default: the local registry when it "
                                             "answers on its port, else one started on a free port for "
                                             "the step and stopped after it)")
    parser.add_env_argument("--avro-rounds", env="BENCH_AVRO_ROUNDS", type=positive_int, default=1,
                            help="drains of the input with each output format, the formats taking "
                                 "turns; medians")
    parser.add_env_argument("--avro-micro-records", env="BENCH_AVRO_MICRO_RECORDS", type=positive_int,
                            default=50_000, help="processed records each serializer encodes in the avro "
                                                 "step's micro-measure")
    parser.add_env_argument("--confluent-serializer", env="BENCH_CONFLUENT_SERIALIZER",
                            choices=["auto", "skip"], default="auto",
                            help="the micro-measure's confluent-kafka AvroSerializer: auto installs its "
                                 "schema-registry packages (about 30 MB) into bench-results/peers/"
                                 "confluent-sr on first use, skip leaves it out")


def selected_steps(args) -> list[str]:
    """The steps to run, in the benchmark's order."""
    chosen = set(args.only or STEPS) - set(args.skip)
    return [step for step in STEPS if step in chosen]


def count_announcements(args, steps: list[str]) -> int:
    """How many numbered lines the chosen steps announce, for the [i/n] counter."""
    more = args.processes > 1
    full, peers = "throughput" in steps, "peers" in steps
    # confluent pass-through, the pipeline on confluent (1 process, and N), the Quix app
    peer_runs = 3 + more if peers else 0
    if full:  # preload, Java, consume-only, pass-through, each pipeline, restore after the drain
        drains = 5 + len(args.threads_list) + more + (bool(args.with_confluent) and not peers) + peer_runs
    else:  # peers alone: preload, kafka-python pass-through, pipeline 1 thread (and N processes)
        drains = 3 + more + peer_runs if peers else 0
    latency_runs = 1 + (confluent_missing() is None) if "latency" in steps else 0
    # the JSON and the Avro drain each round, the micro-measure; alone, a preload first
    avro = 2 * args.avro_rounds + 1 + (not full and not peers) if "avro" in steps else 0
    per_step = {"restore": int(args.restore_users > 0), "latency": latency_runs, "guarantees": 2, "memory": 1,
                "avro": avro}
    return drains + sum(per_step.get(step, 0) for step in steps)


def _new_report(args, run_id: str, bootstrap: str) -> dict:
    machine = describe_machine()
    return {"run_id": run_id, "machine": machine, "bootstrap_servers": bootstrap,
            "settings": {k: v for k, v in vars(args).items() if k != "command"},
            "pipeline_defaults": asdict(PipelineConfig()), "runs": [], "notes": []}


def _run_steps(bench: Bench, report: dict, steps: list[str]) -> None:
    """The chosen steps in turn, each adding its results to ``report``."""
    if "throughput" in steps or "peers" in steps:
        _throughput_steps(bench, report, full="throughput" in steps, peers="peers" in steps)
    if "avro" in steps:
        _avro_step(bench, report)
    if "restore" in steps and bench.args.restore_users:
        _restore_synthetic(bench, report)
    if "latency" in steps:
        report["latency"] = step_latency(bench)
        missing = confluent_missing()
        if missing is None:  # the same run on the confluent client, when it is installed
            report["latency_confluent"] = step_latency(bench, client="confluent")
        else:
            report["notes"].append(f"latency on the confluent client skipped: {missing}")
    if "guarantees" in steps:
        report["guarantees"] = step_guarantees(bench)
    if "memory" in steps:
        report["memory"] = step_memory(bench)


def _throughput_steps(bench: Bench, report: dict, full: bool, peers: bool) -> None:
    """Preload, then on that input: the ceilings, the pipeline drains and the restore of a drained
    group's state (``full``), the peers (``peers``). Peers alone: only the kafka-python runs they
    are compared with besides (pass-through, pipeline 1 thread and N processes)."""
    args = bench.args
    source = bench.name("in")
    bench.create_topics(TopicSpec(source, "benchmark input"))
    report["input_topic"] = source
    report["preload"] = step_preload(bench, source)
    runs, notes = report["runs"], report["notes"]
    if full:
        java = step_java(bench, source)
        if java:
            runs.append(java)
        else:
            notes.append("Java ConsumerPerformance skipped: no java on PATH")
        runs.append(step_consume_only(bench, source))
    runs.append(step_pass_through(bench, source, "kafka-python"))
    if peers or args.with_confluent:
        row = step_pass_through(bench, source, "confluent")
        if row:
            runs.append(row)
        else:
            notes.append("confluent-kafka pass-through skipped: it does not import (pip install "
                         "confluent-kafka)")
    for threads in args.threads_list if full else [1]:
        runs.append(step_pipeline(bench, source, threads))
    if args.processes > 1:
        runs.append(step_pipeline_processes(bench, source, args.processes))
    if peers:
        for processes in ([1, args.processes] if args.processes > 1 else [1]):
            row = step_pipeline_confluent(bench, source, processes, notes)
            if row:
                runs.append(row)
        row = step_quix(bench, source, notes)
        if row:
            runs.append(row)
    report["ratios"] = add_ratios(runs)
    report["peer_ratios"] = peer_ratios(runs)
    if full:
        pipelines = [r for r in runs if r["kind"] == "pipeline"]
        drained = next((r for r in pipelines if r["threads"] == 1 and r["processes"] == 1), pipelines[0])
        report["restore"] = step_restore_drained(bench, drained["group"])


def _avro_step(bench: Bench, report: dict) -> None:
    """JSON against Avro output on the throughput step's input (preloaded now when it did not run),
    then the serializers' micro-measure, with one registry for both."""
    source = report.get("input_topic")
    if source is None:
        source = bench.name("in")
        bench.create_topics(TopicSpec(source, "benchmark input"))
        report["input_topic"] = source
        report["preload"] = step_preload(bench, source)
    with bench_registry(bench.args.schema_registry_url, bench.log_dir) as registry:
        try:
            report["avro"] = step_avro(bench, source, registry, report["notes"])
            report["avro"]["serializers"] = step_serializers(bench, registry)
        finally:
            forget_subjects(registry, bench.name(""))


def _restore_synthetic(bench: Bench, report: dict) -> None:
    row = step_restore_synthetic(bench, bench.args.restore_users)
    if row:
        report.setdefault("restore", []).append(row)
    else:
        report["notes"].append("synthetic restore skipped: no java on PATH (its console producer)")


def _finish(report: dict, started: float, out_dir: Path) -> int:
    """Complete the report, write and print it; 1 when a pipeline run's accounting did not add up."""
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["duration_s"] = round(time.monotonic() - started, 1)
    bad = [r["label"] for r in report["runs"] if r.get("accounting_ok") is False]
    bad += [f"guarantees, {r['label']}" for r in report.get("guarantees", {}).get("summary", [])
            if not r["accounting_ok"]]
    bad += [r["label"] for r in report.get("avro", {}).get("runs", []) if r.get("accounting_ok") is False]
    if bad:
        report["notes"].append(f"accounting mismatch in: {', '.join(bad)}")
    paths = write_outputs(report, out_dir)
    say("")
    say(markdown(report))
    say("results: " + ", ".join(str(p) for p in paths))
    return 1 if bad else 0


def run_benchmark(args) -> int:
    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    steps = selected_steps(args)
    if not steps:
        raise UserError("--only and --skip leave no step to run")
    if "avro" in steps and args.schema_registry_url:
        check_registry(args.schema_registry_url)  # before the runs, not after the throughput step
    run_id, log_dir = new_run(args.out_dir)
    say(f"benchmark {run_id}: {args.events:,} events, {args.partitions} partitions, pipeline threads "
        f"{','.join(map(str, args.threads_list if 'throughput' in steps else [1]))}"
        + (f" and {args.processes} processes" if args.processes > 1 and {"throughput", "peers"} & set(steps)
           else "")
        + (f"; steps {', '.join(steps)}" if steps != list(STEPS) else "")
        + f"; logs in {log_dir}")
    bootstrap = bootstrap_servers(args.bootstrap_servers)
    bench = Bench(args, bootstrap, run_id, log_dir)
    bench.steps = count_announcements(args, steps)
    report = _new_report(args, run_id, bootstrap)
    report.update(steps=steps, partial=steps != list(STEPS))
    try:
        _run_steps(bench, report, steps)
    finally:
        if bench.topics or bench.groups:
            say("cleaning up: deleting the benchmark's topics and consumer groups")
        bench.cleanup()
    return _finish(report, started, Path(args.out_dir))


def build_compare_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="python -m loginpipe.benchmark compare",
        description="Drain throughput, CPU and peak RSS of two versions of the code (git refs or the "
                    "working tree), each from its own copy, taking turns on one preloaded topic; medians. "
                    "Results in bench-results/compare-<run>.{json,md}; exit code 1 when a run failed.",
        epilog="example: python -m loginpipe.benchmark compare HEAD~1 --events 200000 --rounds 3")
    parser.add_argument("before", metavar="BEFORE", help="git ref of the baseline version")
    parser.add_argument("after", metavar="AFTER", nargs="?", default=None,
                        help="git ref of the version to compare; when left out, the working tree as it is "
                             "on disk, uncommitted changes included")
    add_run_arguments(parser, events_help="events to preload and drain in each run",
                      partitions_help="partitions of the input, output and dead-letter topics")
    parser.add_env_argument("--rounds", env="BENCH_ROUNDS", type=positive_int, default=3,
                            help="rounds; each drains the input once with each version")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CHILD_COMMANDS:
        return run_child_command(argv)
    if argv and argv[0] == "compare":
        return run_compare(build_compare_parser().parse_args(argv[1:]))
    return run_benchmark(build_parser().parse_args(argv))
