"""``python -m loginpipe.dashboard``: flags (with environment twins) and the Streamlit server."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from loginpipe import serde
from loginpipe.cli import (
    EnvArgumentParser,
    add_bootstrap_argument,
    add_registry_argument,
    connection_from_args,
    optional_topic,
    port_number,
    positive_float,
    run_cli,
)
from loginpipe.dashboard.feed import DashboardSettings
from loginpipe.errors import UserError
from loginpipe.local.broker import port_is_free
from loginpipe.topics import METRICS_TOPIC, OUTPUT_TOPIC, SUMMARY_TOPIC

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501


def needed_topic(text: str) -> str:
    """A topic name; "none" (which turns the pipeline's snapshots off) cannot feed a dashboard."""
    topic = optional_topic(text)
    if topic is None:
        raise ValueError(text)
    return topic


needed_topic.__name__ = "topic name (the pipeline must publish it: not 'none')"


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="python -m loginpipe.dashboard",
        description="A live dashboard of the pipeline: reads the summary, metrics and output topics "
                    "and serves a page that refreshes by itself.")
    add_bootstrap_argument(parser)
    add = parser.add_env_argument
    # The pipeline's own variables, so one environment sets both; the dashboard needs both topics.
    add("--summary-topic", env="SUMMARY_TOPIC", type=needed_topic, default=SUMMARY_TOPIC,
        help="the pipeline's snapshots")
    add("--metrics-topic", env="METRICS_TOPIC", type=needed_topic, default=METRICS_TOPIC,
        help="the pipeline's health")
    add("--output-topic", env="OUTPUT_TOPIC", default=OUTPUT_TOPIC, help="processed records (sampled)")
    add("--group-id", env="DASHBOARD_GROUP_ID", default=None,
        help="show this pipeline consumer group only (unset: every group)")
    add("--refresh", env="DASHBOARD_REFRESH", type=positive_float, default=2.0,
        help="seconds between redraws")
    add("--port", env="DASHBOARD_PORT", type=port_number, default=DEFAULT_PORT, help="HTTP port")
    add("--address", env="DASHBOARD_ADDRESS", default="127.0.0.1",
        help="address to listen on (0.0.0.0 in a container)")
    add_registry_argument(parser, "read processed records written as Avro")
    return parser


def settings_of(args) -> DashboardSettings:
    return DashboardSettings(connection_from_args(args), args.summary_topic, args.metrics_topic,
                             args.output_topic, args.group_id, args.refresh, args.schema_registry_url)


def dashboard_settings(argv: list[str]) -> DashboardSettings:
    """The page's settings, from the arguments Streamlit hands the script."""
    return settings_of(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    connection_from_args(args)  # a connection setting that cannot work fails here, in one line
    if args.schema_registry_url:
        serde.require_avro("reading Avro records (--schema-registry-url)")
    if importlib.util.find_spec("streamlit") is None:
        raise UserError("streamlit is not installed: pip install -r requirements-dashboard.txt")
    if not port_is_free(args.port, "127.0.0.1" if args.address == "0.0.0.0" else args.address):
        raise UserError(f"port {args.port} is taken; choose another with --port")
    page_args = list(argv)  # the page parses the same flags (port and address unused there)
    print(f"dashboard: http://{'localhost' if args.address in ('0.0.0.0', '127.0.0.1') else args.address}"
          f":{args.port}/ (Ctrl+C stops)", flush=True)
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.port", str(args.port), "--server.address", args.address,
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer", "--", *page_args]
    try:
        os.execv(sys.executable, command)
    except OSError as exc:
        raise UserError(f"cannot start streamlit: {exc.strerror}") from None
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(run_cli(main))
