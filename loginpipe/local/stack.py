"""`make run`: the whole pipeline on one machine, in the foreground.

Starts the local broker (unless --bootstrap-servers points elsewhere), creates the topics,
starts the event generator and the dashboard in the background and the consumer in the
foreground. With --avro (make run AVRO=1) the local schema registry too, and Avro end to end.
Ctrl+C stops them all cleanly; the broker keeps running for the next run
(`make kafka-stop` stops it).
Flags not listed here are the consumer's (see `python create_kafka_consumer.py --help`); the
topics are created under the names they give.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from loginpipe import cli
from loginpipe.cli import (
    DEFAULT_BOOTSTRAP,
    REGISTRY_ENV,
    EnvArgumentParser,
    flag,
    non_negative_float,
    port_number,
    run_cli,
)
from loginpipe.config import PipelineConfig, build_pipeline_parser, pipeline_config
from loginpipe.kafka.admin import ensure_topics
from loginpipe.kafka.backends import make_backend
from loginpipe.kafka.settings import connection_env
from loginpipe.local.broker import LocalBroker, port_is_free
from loginpipe.local.registry import LocalRegistry
from loginpipe.observe import logs
from loginpipe.runtime.app import Application, tune_gc
from loginpipe.serde import require_avro
from loginpipe.topics import DEFAULT_PARTITIONS, TOPIC_FLAGS, pipeline_topics
from loginpipe.waiting import wait_until

DASHBOARD_START_S = 20.0


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="python -m loginpipe.local.stack", description=__doc__.splitlines()[0],
                               add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the consumer's")
    parser.add_env_argument("--rate", env="GENERATOR_RATE", type=non_negative_float, default=1000.0,
                            help="generator events per second (0: no generator)")
    parser.add_env_argument("--dashboard-port", env="DASHBOARD_PORT", type=port_or_zero, default=8501,
                            help="serve the live dashboard on this port (0: no dashboard)")
    parser.add_env_argument("--avro", env="AVRO", type=flag, default=False, nargs="?", const=True,
                            help="Avro end to end: start the local schema registry (unless "
                                 "--schema-registry-url names one), the generator writes framed Avro "
                                 "and the consumer writes it (--output-format avro)")
    return parser


def port_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else port_number(text)


port_or_zero.__name__ = "port number (1-65535, or 0)"


def start_dashboard(config, port: int) -> subprocess.Popen | None:
    """The dashboard in the background, on ``port`` unless it is 0 or taken; its output goes
    to a log file, whose tail is shown if it stops at once."""
    if port == 0:
        return None
    if not (config.summary_topic and config.metrics_topic):
        print("dashboard: not started (it reads the summary and metrics topics, which are off)", flush=True)
        return None
    if not port_is_free(port):
        print(f"dashboard: port {port} is taken; not started (--dashboard-port sets another)", flush=True)
        return None
    log_path = Path(tempfile.gettempdir()) / f"loginpipe-dashboard-{port}.log"
    with log_path.open("w") as log:
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "loginpipe.dashboard",
             "--port", str(port), "--group-id", config.group_id, "--summary-topic", config.summary_topic,
             "--metrics-topic", config.metrics_topic, "--output-topic", config.output_topic],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(config))
    if wait_until(lambda: dashboard.poll() is not None or not port_is_free(port), DASHBOARD_START_S) \
            and dashboard.poll() is not None:
        last = (log_path.read_text().strip().splitlines() or ["no output"])[-1]
        print(f"dashboard: did not start ({last}); log: {log_path}", flush=True)
        return None
    print(f"dashboard: http://localhost:{port}/ (pid {dashboard.pid}, log {log_path})", flush=True)
    return dashboard


def child_env(config: PipelineConfig) -> dict[str, str]:
    """The generator and the dashboard connect as the consumer does (flags, file or environment),
    and read and write Avro with its registry."""
    env = {**os.environ, **connection_env(config.connection)}
    if config.schema_registry_url:
        env[REGISTRY_ENV] = config.schema_registry_url
    return env


def with_avro(config: PipelineConfig) -> PipelineConfig:
    """--avro: the local registry started (unless the consumer's flags name one), Avro output."""
    require_avro("--avro")
    url = config.schema_registry_url
    if not url:
        registry = LocalRegistry()
        print(f"registry: {registry.start()}", flush=True)
        url = registry.url
    return dataclasses.replace(config, schema_registry_url=url, output_format="avro")


@contextlib.contextmanager
def named(prog: str) -> Iterator[None]:
    """Parsers built inside are named ``prog``: the consumer's flags are parsed here, and a mistake
    in them must name the command the user ran (the stack's name, or the dispatcher's), not
    create_kafka_consumer.py."""
    before = cli._invoked_as
    cli.invoked_as(before or prog)
    try:
        yield
    finally:
        cli.invoked_as(before)


def create_topics(config: PipelineConfig) -> None:
    """The pipeline's topics under the names the consumer uses; one too small is a warning (the
    consumer works with any partition count), on stderr."""
    specs = pipeline_topics({flag_name: getattr(config, flag_name) for flag_name in TOPIC_FLAGS})
    for result in ensure_topics(config.connection, specs, DEFAULT_PARTITIONS):
        if result.ok:
            print(f"topic {result.describe()}", flush=True)
        else:
            print(f"warning: topic {result.describe()}", file=sys.stderr, flush=True)


def relay(stream: IO[str]) -> None:
    """The generator's lines as log records: on a terminal they scroll above the consumer's live
    status block rather than break it."""
    log = logs.get("generator")
    with stream:
        for line in stream:
            if line.strip():
                (log.error if line.startswith("error:") else log.info)(line.rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, consumer_args = parser.parse_known_args(argv)
    with named(parser.prog):
        if args.help:
            parser.print_help()
            print()
            build_pipeline_parser().print_help()
            return 0
        config = pipeline_config(consumer_args)
    backend = make_backend(config.client)  # a missing client library: one line, before the broker starts
    if config.bootstrap_servers == DEFAULT_BOOTSTRAP:
        print(f"kafka: {LocalBroker().start_or_reuse()}", flush=True)
    create_topics(config)
    if args.avro:
        config = with_avro(config)
    generator = None
    if args.rate > 0:
        generator = subprocess.Popen([
            sys.executable, "-m", "loginpipe.local.generator",
            "--topic", config.input_topic, "--rate", str(args.rate), "--progress-every", "30",
            "--format", config.output_format,
        ], env=child_env(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=relay, args=(generator.stdout,), daemon=True, name="generator-output").start()
        print(f"generator: started (pid {generator.pid}), {args.rate:g} events/s", flush=True)
    dashboard = start_dashboard(config, args.dashboard_port)
    tune_gc()
    try:
        result = Application(config, backend=backend).run()
    finally:
        for child in (generator, dashboard):
            if child is not None:
                child.terminate()  # it also got the terminal's Ctrl+C; this covers other endings
                child.wait(timeout=30)
    if config.bootstrap_servers == DEFAULT_BOOTSTRAP:
        print("the local broker is still running; `make kafka-stop` stops it", flush=True)
    if args.avro:
        print("the local registry is still running; `make registry-stop` stops it", flush=True)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
