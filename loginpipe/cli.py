"""Command-line plumbing shared by every entry point: flags with environment-variable twins,
converters whose names read well in argparse's errors, one-line errors for user mistakes.

Settings themselves live with what they configure (``config.py`` for the pipeline, each
command's module for its own); this module imports neither them nor the topic list."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from loginpipe.core.events import is_app_version
from loginpipe.errors import UserError

DEFAULT_BOOTSTRAP = "127.0.0.1:29092"


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options may take their default from an environment variable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_env_argument(self, flag: str, *, env: str, default: Any = None,
                         type: Callable[[str], Any] = str, help: str = "", **kwargs: Any) -> None:
        """Add ``flag``; ``$env``, when set, replaces the default. Flags still win over env."""
        raw = os.environ.get(env)
        if raw is not None and raw != "":
            try:
                default = type(raw)
            except (TypeError, ValueError):
                self.error(f"environment variable {env}={raw!r} is not a valid {flag} value")
        help_text = f"{help} [env {env}]" if help else f"[env {env}]"
        self.add_argument(flag, type=type, default=default, help=help_text, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(text)
    return value


def version_list(text: str) -> frozenset[str]:
    """Comma-separated x.y.z versions."""
    versions = frozenset(v.strip() for v in text.split(",") if v.strip())
    if not versions or not all(is_app_version(v) for v in versions):
        raise ValueError(text)
    return versions


def optional_topic(text: str) -> str | None:
    """A topic name, or None for "none", "off" or empty: that output is disabled."""
    text = text.strip()
    return None if text.lower() in ("", "none", "off") else text


def flag(text: str) -> bool:
    """A boolean flag's value, from the command line or the environment."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


# argparse shows a converter's __name__ in its "invalid ... value" message.
positive_int.__name__ = "positive integer"
non_negative_float.__name__ = "non-negative number"
positive_float.__name__ = "positive number"
port_number.__name__ = "port number (1-65535)"
ratio.__name__ = "ratio between 0 and 1"
version_list.__name__ = "comma-separated list of x.y.z versions"
optional_topic.__name__ = "topic name or 'none'"
flag.__name__ = "boolean (true/false)"


def add_bootstrap_argument(parser: EnvArgumentParser) -> None:
    parser.add_env_argument("--bootstrap-servers", env="BOOTSTRAP_SERVERS", default=DEFAULT_BOOTSTRAP,
                            help="Kafka bootstrap servers, comma-separated host:port")


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main``; turn user errors and Ctrl+C into a one-line message and an exit code."""
    try:
        return main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
