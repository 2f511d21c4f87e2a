"""The ``loginpipe`` command (and ``python -m loginpipe``): one entry point for every tool.

    loginpipe run | consume | topics | generate | broker | registry | dashboard | query | dlq | bench | tail
    loginpipe --version

Each subcommand is a module's ``main(argv)``, imported only when it runs: ``--version`` and
``--help`` import none of them, and a subcommand pays only for its own imports.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import NamedTuple, TextIO

from loginpipe import __version__

PROG = "loginpipe"


class Subcommand(NamedTuple):
    module: str  # has main(argv: list[str] | None) -> int
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand("loginpipe.local.stack",
                      "the whole pipeline here: local broker, topics, generator, dashboard, consumer"),
    "consume": Subcommand("loginpipe.runtime.app", "the consumer group: user-login to processed-user-login"),
    "topics": Subcommand("loginpipe.topics", "create the pipeline's topics"),
    "generate": Subcommand("loginpipe.local.generator", "send synthetic login events"),
    "broker": Subcommand("loginpipe.local.broker", "a local Kafka broker: start, stop, status, logs, fetch"),
    "registry": Subcommand("loginpipe.registry", "a local schema registry (Confluent API): start, stop, "
                                                 "status, logs, fetch, reset; check or register a schema"),
    "dashboard": Subcommand("loginpipe.dashboard.cli",
                            "the live dashboard in a browser (loginpipe[dashboard])"),
    "query": Subcommand("loginpipe.query", "the group's exact totals, per user or per device"),
    "dlq": Subcommand("loginpipe.dlq", "decrypt a dead letter written in privacy mode"),
    "bench": Subcommand("loginpipe.benchmark.cli", "throughput, latency, guarantees and memory benchmark"),
    "tail": Subcommand("loginpipe.tail", "print a topic's records"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print_help(sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        print_help(sys.stdout)
        return 0
    if name in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    if name not in SUBCOMMANDS:
        return usage_error(f"{'unknown option' if name.startswith('-') else 'unknown command'} {name!r}"
                           + suggestion(name))
    return run_subcommand(name, rest)


def run_subcommand(name: str, argv: list[str]) -> int:
    """Run ``name``'s ``main(argv)`` as its own command would, its parsers named ``loginpipe NAME``."""
    from loginpipe import cli  # here, not at the top: --version and --help do without it

    module_name = SUBCOMMANDS[name].module
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # one of its dependencies is missing: an installation problem, shown in full
        print(f"{PROG}: error: '{PROG} {name}' is not part of this version ({__version__})", file=sys.stderr)
        return 1
    cli.invoked_as(f"{PROG} {name}")
    return cli.run_cli(lambda: module.main(argv))


def usage_error(message: str) -> int:
    print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
    return 2


def suggestion(name: str) -> str:
    close = difflib.get_close_matches(name.lstrip("-"), SUBCOMMANDS, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def print_help(stream: TextIO) -> None:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS...]", "", "Real-time login-event pipeline on Apache Kafka.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in SUBCOMMANDS.items()]
    lines += ["", "options:", "  -h, --help     show this help", f"  -V, --version  print {PROG}'s version",
              "", f"'{PROG} COMMAND --help' shows a command's flags."]
    print("\n".join(lines), file=stream)
