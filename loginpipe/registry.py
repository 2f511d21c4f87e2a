"""``python -m loginpipe.registry``: the local schema registry, and schema checks for any registry.

    python -m loginpipe.registry fetch|start|stop|status|logs|reset   # loginpipe.local.registry
    python -m loginpipe.registry check SCHEMA.avsc --subject SUBJECT [--level LEVEL]
    python -m loginpipe.registry register SCHEMA.avsc --subject SUBJECT

``check`` asks a Confluent-compatible registry (the local one unless ``--schema-registry-url`` or
``$SCHEMA_REGISTRY_URL`` names another) whether the schema would be accepted under the subject, and
says why not, in one line with an exit code a CI job can act on (``EPILOG``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

from loginpipe import cli
from loginpipe.local import registry as local
from loginpipe.registry_client import LEVELS, RegistryError, RegistryUnavailable, SchemaRegistryClient

PROG = "python -m loginpipe.registry"
LOCAL_URL = local.registry_url()
COMPATIBLE, REFUSED, USAGE, NO_REGISTRY = 0, 1, 2, 3
EPILOG = f"""exit codes of check and register:
  {COMPATIBLE}  compatible (check), registered (register)
  {REFUSED}  incompatible (check) or refused (register): one line naming the problem
  {USAGE}  a usage mistake: bad arguments, a schema file missing, not JSON or not Avro
  {NO_REGISTRY}  no registry answers at the URL, or it failed (HTTP 5xx, not a registry API)
the local registry's commands (fetch, start, stop, status, logs, reset) have their own --help;
status exits 3 when the registry is not running."""
# What each level demands, said in the line that reports a refusal.
RULES = {
    "BACKWARD": "the new schema must read data written with the old; added fields need defaults",
    "FORWARD": "the old schema must read data written with the new; only fields with defaults may "
               "be removed",
    "FULL": "each must read data written with the other; only fields with defaults may be added "
            "or removed",
}
LOCAL_HELP = {
    "fetch": "build the local registry once (Maven, about 2 minutes cold)",
    "start": "start it on 127.0.0.1 (idempotent; returns when its API answers)",
    "stop": "stop it (its schemas are kept in HOME/data)",
    "status": "is it running? (exit 3 when not)",
    "logs": "the last lines of its log",
    "reset": "stop it and delete every schema it stored (ids start at 1 again)",
}
NO_VERSIONS = (40401, 40402)  # Confluent's and Apicurio's codes for no such subject / version


class Failure(Exception):
    """A result other than success: the line to print and the exit code."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code
        self.line = line


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's table kept as written."""


def build_parser() -> cli.EnvArgumentParser:
    parser = cli.EnvArgumentParser(prog=PROG, epilog=EPILOG, description="The local schema registry, "
                                   "and schema checks against any Confluent-compatible registry.",
                                   formatter_class=_Help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=partial(cli.EnvArgumentParser, add_logging=False,
                                                          formatter_class=_Help))
    for name in LOCAL_HELP:  # parsed by loginpipe.local.registry (see main); listed for --help
        commands.add_parser(name, help=LOCAL_HELP[name])
    check = commands.add_parser("check", epilog=EPILOG, help="would the registry accept this schema?",
                                description="Ask the registry whether SCHEMA is compatible with the "
                                            "subject's latest version under the subject's level.")
    _schema_arguments(check, "check it against")
    check.add_argument("--level", type=cli.choice(LEVELS), metavar="LEVEL",
                       help="check under this level instead of the subject's (in a scratch subject "
                            "holding copies of its versions: the subject itself is untouched; "
                            f"one of {', '.join(LEVELS)})")
    check.set_defaults(run=check_command)
    register = commands.add_parser("register", epilog=EPILOG, help="register a schema, print its id",
                                   description="Register SCHEMA under the subject and print its id.")
    _schema_arguments(register, "register it with")
    register.set_defaults(run=register_command)
    return parser


def _schema_arguments(parser: cli.EnvArgumentParser, needed_for: str) -> None:
    parser.add_argument("schema", metavar="SCHEMA.avsc", help="an Avro schema (JSON) file")
    parser.add_argument("--subject", required=True, help="the subject, e.g. <topic>-value")
    cli.add_registry_argument(parser, needed_for)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _first_command(argv) in local.COMMANDS:
        return local.main(argv)  # the same flags, output and exit codes as there
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Failure as failure:
        print(failure.line, file=sys.stdout if failure.code == REFUSED else sys.stderr)
        return failure.code


def _first_command(argv: list[str]) -> str | None:
    """The first word naming a command: flags and their values never do (a subject may, later)."""
    known = {*local.COMMANDS, "check", "register"}
    return next((word for word in argv if word in known), None)


# ---------------------------------------------------------------- check and register

def check_command(args: argparse.Namespace) -> int:
    text = read_schema(args.schema)
    client = SchemaRegistryClient(args.schema_registry_url or LOCAL_URL)
    with answers_from(client, args.schema):
        latest = latest_version(client, args.subject)
        if latest is None:
            print(f"compatible: {args.subject} has no versions yet, so {args.schema} would be its first")
            return COMPATIBLE
        level = args.level or client.compatibility(args.subject)
        if args.level:
            ok, reasons = check_under(client, args.subject, text, args.level)
        else:
            ok, reasons = client.check_compatibility(args.subject, text)
    against = f"{args.subject} version {latest['version']} (id {latest['id']})"
    if ok:
        print(f"compatible: {args.schema} with {against} under {describe(level)}")
        return COMPATIBLE
    raise Failure(REFUSED, f"incompatible: {args.schema} with {against} under {describe(level, True)}: "
                           f"{summarize(reasons, text, latest['schema'])}{rule(level)}")


def register_command(args: argparse.Namespace) -> int:
    text = read_schema(args.schema)
    client = SchemaRegistryClient(args.schema_registry_url or LOCAL_URL)
    with answers_from(client, args.schema):
        try:
            schema_id = client.register(args.subject, text)
        except RegistryError as exc:
            if exc.status != 409:
                raise
            level = client.compatibility(args.subject)
            latest = latest_version(client, args.subject) or {"schema": "{}"}
            raise Failure(REFUSED, f"refused: {args.schema} under {args.subject} by "
                                   f"{describe(level, True)}: "
                                   f"{summarize([exc.message], text, latest['schema'])}{rule(level)}"
                          ) from None
    print(f"registered: {args.schema} under {args.subject} with id {schema_id}")
    return COMPATIBLE


def read_schema(path: str) -> str:
    """The file's text once it parses as JSON and (when fastavro is installed) as Avro."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise Failure(USAGE, f"error: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(USAGE, f"error: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Failure(USAGE, f"error: {path} is not JSON: {exc.msg} (line {exc.lineno}, "
                             f"column {exc.colno})") from None
    try:
        from fastavro.schema import parse_schema
    except ImportError:
        return text  # the avro extra is not installed: the registry judges the schema (HTTP 422)
    try:
        parse_schema(parsed, _write_hint=False)
    except Exception as exc:  # fastavro's parse errors share no base class
        raise Failure(USAGE, f"error: {path} is not a valid Avro schema: {_one_line(str(exc))}") from None
    return text


def latest_version(client: SchemaRegistryClient, subject: str) -> dict[str, Any] | None:
    """The subject's latest version; None when it has none."""
    try:
        return client.latest(subject)
    except RegistryError as exc:
        if exc.status == 404 and exc.error_code in NO_VERSIONS:
            return None
        raise


def check_under(client: SchemaRegistryClient, subject: str, text: str, level: str) -> tuple[bool, list[str]]:
    """``check_compatibility`` under ``level``: the Confluent API checks only under a subject's own
    level, and changing the real subject's would let other writers through meanwhile. So a scratch
    subject gets copies of the versions the level compares with (the latest, or all when
    transitive; a registry gives identical schemas their existing ids) and is deleted afterwards."""
    scratch = f"{subject}.loginpipe-check-{uuid.uuid4().hex[:12]}"
    numbers = client.versions(subject)
    if not level.endswith("_TRANSITIVE"):
        numbers = numbers[-1:]
    try:
        for n, number in enumerate(numbers):
            version = client.version(subject, number)
            client.register(scratch, version["schema"], version.get("schemaType", "AVRO"))
            if n == 0:  # Apicurio configures only subjects that exist; the copies must all go in
                client.set_compatibility(scratch, "NONE")
        client.set_compatibility(scratch, level)
        ok, reasons = client.check_compatibility(scratch, text)
    finally:
        _forget(client, scratch)
    return ok, [reason.replace(scratch, subject) for reason in reasons]


def _forget(client: SchemaRegistryClient, scratch: str) -> None:
    with suppress(RegistryError):  # best effort: a scratch subject left behind holds only copies
        client.delete_subject(scratch, permanent=True)


@contextmanager
def answers_from(client: SchemaRegistryClient, path: str) -> Iterator[None]:
    """Registry errors as one line and an exit code."""
    try:
        yield
    except RegistryUnavailable as exc:
        raise Failure(NO_REGISTRY, f"error: {exc.message}; start the local registry ({PROG} start) "
                                   f"or give --schema-registry-url") from None
    except RegistryError as exc:
        if exc.status == 422:
            raise Failure(USAGE, f"error: the registry finds {path} invalid: {exc.message}") from None
        if exc.status == 404:
            raise Failure(NO_REGISTRY, f"error: {client.url} does not answer like a Confluent-compatible "
                                       f"registry API (HTTP 404: {exc.message}); the local one is "
                                       f"{LOCAL_URL}") from None
        raise Failure(NO_REGISTRY, f"error: the registry at {client.url} failed: HTTP {exc.status}: "
                                   f"{exc.message}") from None


# ---------------------------------------------------------------- saying why

def describe(level: str | None, refused: bool = False) -> str:
    """The level in words. Apicurio reports NONE for a subject without a level of its own, though
    its global level applies: a refusal under "NONE" shows the report is not the rule applied."""
    if level is None or (level == "NONE" and refused):
        return "the registry's global level"
    if level == "NONE":
        return "level NONE as reported, or the registry's global level"
    return f"level {level}"


def rule(level: str | None) -> str:
    demand = RULES.get((level or "").removesuffix("_TRANSITIVE"))
    return f" ({level}: {demand})" if demand else ""


def summarize(reasons: list[str], new: str, old: str) -> str:
    """The registry's reasons in one line, field positions named ("/fields/13" -> "region")."""
    causes = [cause for reason in reasons for cause in _causes(reason)]
    if not causes:
        return "the registry gave no reason"
    names = _field_names(new, old)
    return "; ".join(_name_fields(cause, names) for cause in causes)


def _causes(reason: str) -> list[str]:
    """Apicurio: "Incompatible artifact: ... Causes: tenant at /fields/32, ..."; Confluent: one
    message per problem ("Incompatibility{type:T, location:L, message:M, ...}" or "{errorType:..,
    description:'...'}") plus messages restating the old schema and the level, dropped here."""
    if "Causes: " in reason:
        return [reason.split("Causes: ", 1)[1].strip()]
    described = re.search(r"description:\s*['\"](.+?)['\"],\s*additionalInfo", reason)
    if described:
        return [described.group(1)]
    typed = re.search(r"type:(\w+), location:([^,]+), message:([^,]+)", reason)
    if typed:
        kind, location, message = typed.groups()
        return [f"{message.strip()} at {location.strip()} ({kind})"]
    if re.match(r"\{(oldSchema|oldSchemaVersion|compatibility|validateFields)\b", reason):
        return []
    return [_one_line(reason)[:300]]


def _field_names(new: str, old: str) -> dict[int, str]:
    """Top-level field positions that name the same field in both schemas (a position the two
    disagree on is left as the registry said it: which schema it points into depends on the level)."""
    fields = [_fields(text) for text in (new, old)]
    return {i: a for i, (a, b) in enumerate(zip(*fields, strict=False)) if a == b}


def _fields(text: str) -> list[str]:
    try:
        schema = json.loads(text)
    except ValueError:
        return []
    fields = schema.get("fields") if isinstance(schema, dict) else None
    return [f.get("name", "?") for f in fields if isinstance(f, dict)] if isinstance(fields, list) else []


def _name_fields(cause: str, names: dict[int, str]) -> str:
    def name(match: re.Match[str]) -> str:
        field = names.get(int(match.group(2)))
        if field is None or cause.startswith(f"{field} "):  # unknown, or named already
            return match.group(1)
        return f"{match.group(1)} (field {field})"

    return re.sub(r"(/fields/(\d+)[\w/]*)", name, cause)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(argv: list[str] | None = None, name: str = PROG) -> int:
    """Run as a command named ``name`` (its parsers say so in usage lines and errors)."""
    cli.invoked_as(name)
    return cli.run_cli(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
