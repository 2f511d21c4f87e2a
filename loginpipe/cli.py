"""Command-line plumbing shared by every entry point: flags with environment-variable twins,
converters whose names read well in argparse's errors, one-line errors for user mistakes.

Settings themselves live with what they configure (``config.py`` for the pipeline, each
command's module for its own); this module imports neither them nor the topic list."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from loginpipe.core.events import is_app_version
from loginpipe.errors import UserError
from loginpipe.kafka.settings import (
    DEFAULT_BOOTSTRAP,
    MECHANISMS,
    OFFSET_RESETS,
    PASSWORD_ENV,
    PROTOCOLS,
    Connection,
    build_connection,
)
from loginpipe.observe import logs

# The name a dispatcher ran this command under ("loginpipe consume"): parsers show it in their
# usage and errors instead of the script's own name (set once by loginpipe/__main__.py).
_invoked_as: str | None = None


def invoked_as(name: str | None) -> None:
    """Name every parser built from now on ``name`` (None: each parser's own ``prog``)."""
    global _invoked_as
    _invoked_as = name


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options may take their default from an environment variable,
    which has ``--log-level``/``--log-format`` (configured as soon as they are parsed), and whose
    usage errors are one line with a hint, not a usage block."""

    def __init__(self, *args: Any, add_logging: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        if _invoked_as and add_logging:  # a subcommand's parser keeps the name argparse gives it
            kwargs["prog"] = _invoked_as
        super().__init__(*args, **kwargs)
        self._logging = add_logging
        if add_logging:
            group = self.add_argument_group("logging")
            self.add_env_argument("--log-level", env="LOG_LEVEL", type=choice(logs.LEVELS),
                                  metavar="{" + ",".join(logs.LEVELS) + "}", default="INFO",
                                  help="the least severe log records shown", group=group)
            self.add_env_argument("--log-format", env="LOG_FORMAT", type=choice(logs.FORMATS),
                                  metavar="{text,json}", default="text",
                                  help="log records as text, or one JSON object per line", group=group)

    def add_env_argument(self, flag: str, *, env: str, default: Any = None,
                         type: Callable[[str], Any] = str, help: str = "",
                         group: argparse._ArgumentGroup | None = None, **kwargs: Any) -> None:
        """Add ``flag``; ``$env``, when set, replaces the default. Flags still win over env."""
        raw = os.environ.get(env)
        if raw is not None and raw != "":
            try:
                default = type(raw)
            except (TypeError, ValueError):
                self.error(f"environment variable {env}={raw!r} is not a valid {flag} value")
        help_text = f"{help} [env {env}]" if help else f"[env {env}]"
        (group or self).add_argument(flag, type=type, default=default, help=help_text, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        # Subcommands share their parent's logging flags rather than repeating them (a
        # subparser's defaults would overwrite what was given before the subcommand).
        kwargs.setdefault("parser_class", functools.partial(type(self), add_logging=False))
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> Any:
        parsed, rest = super().parse_known_args(args, namespace)
        if self._logging and getattr(parsed, "log_level", None):
            logs.configure(parsed.log_level, parsed.log_format)
        return parsed, rest

    def error(self, message: str) -> NoReturn:
        """One line and exit code 2 (argparse's), with where to look, instead of a usage block."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    """The cluster's address and every connection setting (TLS, SASL, a client properties file,
    the offset reset): the same flags, with the same environment twins, for every tool."""
    group = parser.add_argument_group(
        "connection", f"Flags override --client-config; the SASL password is read from ${PASSWORD_ENV} "
                      "or --sasl-password-file, never from a flag.")
    add = group.add_argument
    add("--bootstrap-servers", default=None, help="Kafka bootstrap servers, comma-separated host:port "
        f"(default {DEFAULT_BOOTSTRAP}) [env BOOTSTRAP_SERVERS]")
    add("--client-config", metavar="FILE", default=None,
        help="a Kafka client properties file (security.protocol, sasl.*, ssl.* with PEM files, "
             "bootstrap.servers), as Kafka's tools take with --command-config [env CLIENT_CONFIG]")
    add("--security-protocol", type=choice(PROTOCOLS), metavar="{" + ",".join(PROTOCOLS) + "}",
        default=None, help="default PLAINTEXT [env SECURITY_PROTOCOL]")
    add("--sasl-mechanism", type=choice(MECHANISMS), metavar="{" + ",".join(MECHANISMS) + "}",
        default=None, help="[env SASL_MECHANISM]")
    add("--sasl-username", default=None, help="[env SASL_USERNAME]")
    add("--sasl-password-file", metavar="FILE", default=None,
        help=f"read the SASL password from this file (or set ${PASSWORD_ENV}) [env SASL_PASSWORD_FILE]")
    add("--ssl-cafile", metavar="PEM", default=None,
        help="CA certificates to trust (default: the system's) [env SSL_CAFILE]")
    add("--ssl-certfile", metavar="PEM", default=None,
        help="mutual TLS: this client's certificate (chain) [env SSL_CERTFILE]")
    add("--ssl-keyfile", metavar="PEM", default=None, help="mutual TLS: its private key [env SSL_KEYFILE]")
    add("--offset-reset", type=choice(OFFSET_RESETS), metavar="{earliest,latest}", default=None,
        help="where a consumer group without committed offsets starts (default earliest) "
             "[env OFFSET_RESET]")



REGISTRY_ENV = "SCHEMA_REGISTRY_URL"


def add_registry_argument(parser: EnvArgumentParser, needed_for: str = "read framed Avro") -> None:
    """The schema registry's URL: the same flag and environment twin for every tool."""
    parser.add_env_argument(
        "--schema-registry-url", env=REGISTRY_ENV, default=None, metavar="URL",
        help=f"a Confluent-compatible schema registry's API, to {needed_for} (the local one: "
             "http://127.0.0.1:18081/apis/ccompat/v7, python -m loginpipe.registry start)")

# each connection flag's environment twin (read in connection_from_args, so that the flags, their
# twins and the properties file combine in one place: flag > env > file > default)
CONNECTION_ENV = {
    "bootstrap_servers": "BOOTSTRAP_SERVERS", "security_protocol": "SECURITY_PROTOCOL",
    "sasl_mechanism": "SASL_MECHANISM", "sasl_username": "SASL_USERNAME",
    "sasl_password_file": "SASL_PASSWORD_FILE", "ssl_cafile": "SSL_CAFILE", "ssl_certfile": "SSL_CERTFILE",
    "ssl_keyfile": "SSL_KEYFILE", "offset_reset": "OFFSET_RESET",
}
CONVERTERS = {"security_protocol": str.upper, "sasl_mechanism": str.upper, "offset_reset": str.lower}


def connection_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connection:
    """The connection the user asked for; a UserError naming what cannot work."""
    environ = os.environ if environ is None else environ
    flags = {}
    for name, env in CONNECTION_ENV.items():
        value = getattr(args, name, None)
        if value is None and environ.get(env):
            value = CONVERTERS.get(name, str)(environ[env])
        flags[name] = value
    config_file = getattr(args, "client_config", None) or environ.get("CLIENT_CONFIG") or None
    connection = build_connection(flags, environ, config_file)
    if connection.bootstrap_servers == "":
        raise UserError("--bootstrap-servers is empty")
    return connection


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """One of ``options``, case-insensitively (Kafka writes SASL_SSL, users may type sasl_ssl)."""
    def convert(text: str) -> str:
        for option in options:
            if text.lower() == option.lower():
                return option
        raise ValueError(text)
    convert.__name__ = "one of " + ", ".join(options)
    return convert


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main``; turn user errors and Ctrl+C into a one-line message and an exit code."""
    # Until a parser has read --log-level/--log-format, their environment twins decide.
    logs.configure(_env_choice("LOG_LEVEL", logs.LEVELS, "INFO"),
                   _env_choice("LOG_FORMAT", logs.FORMATS, "text"))
    try:
        return main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _env_choice(env: str, options: tuple[str, ...], default: str) -> str:
    value = os.environ.get(env, "")
    return next((o for o in options if o.lower() == value.lower()), default)
