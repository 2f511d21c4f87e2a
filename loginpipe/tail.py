"""``loginpipe tail TOPIC``: a topic's records as they are, decoded, like ``kcat -C``.

    loginpipe tail processed-user-login                    # new records, as they arrive
    loginpipe tail user-login-dlq --from-beginning --count 5
    loginpipe tail user-login-group-aggregates-changelog --from-beginning --json

Each record with its partition, offset, timestamp, key and headers. Committed records only
(read_committed, as every reader of the project): what an aborted transaction wrote is not shown.
No consumer group: nothing is committed, nothing joins a group. Values: JSON as JSON, framed Avro
decoded with its writer's schema from the registry (``--schema-registry-url``; its schema id shown
beside it), other text as text, anything else base64; the changelog topics' records are also spelled out
(``state/changelog.py``); a dead letter sealed in privacy mode stays sealed (``loginpipe dlq
decrypt`` opens one).
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from itertools import islice
from typing import Any, Protocol, TextIO

import orjson

from loginpipe import cli, serde
from loginpipe.cli import (
    EnvArgumentParser,
    add_bootstrap_argument,
    add_registry_argument,
    connection_from_args,
    positive_int,
    run_cli,
)
from loginpipe.core.records import ENCRYPTED_HEADER
from loginpipe.observe import logs
from loginpipe.registry_client import RegistryUnavailable, SchemaRegistryClient
from loginpipe.state.changelog import COUNT_NAMES, DEVICE_PREFIX, FORGOTTEN_KEY, USER_PREFIX
from loginpipe.topics import plural

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl+C
CHANGELOG_SUFFIXES = ("-aggregates-changelog", "-devices-changelog")
QUOTED = ' "\\'  # a key or header value with one of these in it is shown quoted
QUOTED_NAME = QUOTED + "="  # a header's name too: a name=value pair splits at its first "="
# a distinct-values key's prefix, what it is, and what its values are
DISTINCT_KINDS = ((USER_PREFIX, "user", "distinct_ips"), (DEVICE_PREFIX, "device", "users"))
_KEEP = {ord("\\"): "\\\\"}  # a backslash is escaped, so an escaped character reads unambiguously
# A tail waits on the registry in the middle of a stream: short timeouts, and after a failure the
# values go on being shown undecoded this long before it is asked again.
REGISTRY_TIMEOUT_S = 2.0
REGISTRY_RETRY_S = 10.0


class Record(Protocol):
    """What is shown of a record (kafka-python's ConsumerRecord has these)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="python -m loginpipe.tail",
        description="Print a topic's committed records, decoded, with partition, offset, time, key and "
                    "headers, like kcat -C: new ones as they arrive, or from the beginning.",
        epilog="Text: a line per record (partition, offset, UTC time, key, headers), then its value "
               "indented. --json: one object per record with topic, partition, offset, timestamp "
               "(ms), time, key, key_format, headers, value and value_format (json: the value parsed; "
               "avro: framed Avro decoded, with schema_id; text; base64; null), note when there is "
               "something to say (an Avro value not decoded, and why), and for a changelog record "
               "what it means. A missing topic is one line and exit 1; Ctrl+C exits with 130.")
    parser.add_argument("topic", metavar="TOPIC", help="any topic (the pipeline's, its group's own, yours)")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at each partition's first record, not at its end")
    parser.add_argument("--count", type=positive_int, metavar="N", default=None,
                        help="stop after N records (unset: follow until Ctrl+C)")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    add_bootstrap_argument(parser)
    add_registry_argument(parser, "decode framed Avro values (without it they are shown as base64)")
    return parser


def schema_cache(url: str | None) -> serde.SchemaCache | None:
    """The writer schemas of framed values, from the registry at ``url`` (None: none given).
    Its outages are warnings on stderr: the tail goes on, showing values undecoded."""
    if not url:
        return None
    serde.require_avro("decoding framed Avro (--schema-registry-url)")
    log = logs.get("tail")

    def warn(message: str) -> None:
        log.warning(f"{message} (tail: Avro values are shown undecoded while it does not answer)"
                    if "does not answer" in message else message)

    return serde.SchemaCache(SchemaRegistryClient(url, timeout_s=REGISTRY_TIMEOUT_S), warn,
                             retry_every_s=REGISTRY_RETRY_S)


def main(argv: list[str] | None = None) -> int:
    from loginpipe.kafka.admin import follow_topic

    args = build_parser().parse_args(argv)
    connection = connection_from_args(args)
    schemas = schema_cache(args.schema_registry_url)
    render = json_line if args.json else text_lines

    def ready(partitions: int) -> None:
        if not args.from_beginning:  # says when a record written from now on will be shown
            logs.get("tail").info(f"following {args.topic} ({plural(partitions, 'partition')}) "
                                  "from its end; Ctrl+C stops")

    records = follow_topic(connection, args.topic, args.from_beginning, on_ready=ready)
    try:
        return show(islice(records, args.count), render, sys.stdout, schemas)
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        records.close()


def show(records: Iterator[Record], render: Callable[[dict[str, Any]], str], out: TextIO,
         schemas: serde.SchemaCache | None = None) -> int:
    """Write each record as it comes; a reader that went away (``| head``) ends it quietly."""
    try:
        for record in records:
            out.write(render(fields(record, schemas)))
            out.flush()
    except BrokenPipeError:
        # Python would complain flushing stdout again at exit: point it at nothing instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0


def fields(record: Record, schemas: serde.SchemaCache | None = None) -> dict[str, Any]:
    """Everything shown of one record, decoded, as JSON-ready values; framed Avro values with the
    writer schemas ``schemas`` finds (None: no registry, they stay base64)."""
    key, key_format = _text_or_base64(record.key)
    schema_id = serde.framed_id(record.value)
    notes = []
    if schema_id is None:
        value, value_format = decode_value(record.value)
    else:
        value, value_format, why = decode_avro(record.value, schemas)
        if why:
            notes.append(why)
    shown: dict[str, Any] = {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp": record.timestamp if record.timestamp >= 0 else None,
        "time": _iso(record.timestamp), "key": key, "key_format": key_format,
        "headers": _headers(record.headers or []), "value": value, "value_format": value_format,
    }
    if schema_id is not None:
        shown["schema_id"] = schema_id
    if record.topic.endswith(CHANGELOG_SUFFIXES):
        meaning = changelog_meaning(record.key, record.value)
        if meaning is not None:
            shown["changelog"] = meaning
    if any(name == ENCRYPTED_HEADER for name, _ in record.headers or []):
        notes.append(f"sealed in privacy mode; to open it: {_dlq_command()} --topic {record.topic} "
                     f"--partition {record.partition} --offset {record.offset}")
    if notes:
        shown["note"] = "; ".join(notes)
    return shown


def decode_value(value: bytes | None) -> tuple[Any, str | None]:
    """(the value, its format): parsed JSON, else UTF-8 text, else base64; (None, None) for null."""
    if value is None:
        return None, None
    try:
        return orjson.loads(value), "json"
    except orjson.JSONDecodeError:
        return _text_or_base64(value)


def decode_avro(value: bytes, schemas: serde.SchemaCache | None) -> tuple[Any, str, str | None]:
    """(the value, its format, why it is not decoded) of a framed value: decoded with its writer's
    schema, else base64 with the reason (no registry, an id it does not know, bytes that do not
    fit, a registry that does not answer)."""
    try:
        return serde.read_value(value, schemas), "avro", None
    except serde.UnreadableValue as exc:
        why = f"not decoded: {exc}"
    except RegistryUnavailable:
        why = "not decoded: the schema registry does not answer"
    return base64.b64encode(value).decode("ascii"), "base64", why


def changelog_meaning(key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    """A changelog record spelled out (the encoding is described in ``state/changelog.py``); None
    for a record that is not one of those."""
    if key is None:
        return None
    try:
        if key == FORGOTTEN_KEY:
            return {"kind": "forgotten", "keys_forgotten": orjson.loads(value)[0]}
        for prefix, kind, values in DISTINCT_KINDS:
            if key.startswith(prefix):
                if value is None:  # a tombstone: the memory bound forgot this key
                    return {"kind": kind, "key": key[2:].decode(), "forgotten": True}
                offset, name, *items = orjson.loads(value)
                return {"kind": kind, "key": key[2:].decode(), "name": name or None, values: len(items),
                        "offset": offset}
        store = COUNT_NAMES.get(key[1]) if key[:1] == b"c" and key[2:3] == b":" else None
        if store is not None and value is not None:
            count, offset = orjson.loads(value)
            return {"kind": "count", "store": store, "label": key[3:].decode(), "count": count,
                    "offset": offset}
    except (ValueError, TypeError, IndexError, AttributeError):  # not ours, or a newer version's
        return None
    return None


def _jsonable(value: Any) -> Any:
    """What orjson cannot write itself that an Avro value may hold: bytes and fixed (base64),
    decimals (as text: exact)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_dumps = partial(orjson.dumps, default=_jsonable)


def json_line(shown: dict[str, Any]) -> str:
    return _dumps(shown).decode() + "\n"


def text_lines(shown: dict[str, Any]) -> str:
    """``partition 0 offset 12 2026-11-24T10:00:00.123Z key u1 headers a=b`` (with ``schema-id 5``
    before the headers for a framed Avro value) then the value, indented; then what a changelog
    record means, or a note (how to open a sealed dead letter, why an Avro value is not decoded)."""
    head = [f"partition {shown['partition']}", f"offset {shown['offset']}", shown["time"] or "no timestamp",
            "key " + (_word(shown["key"]) if shown["key_format"] == "text" else
                      _shown(shown["key"], shown["key_format"]))]
    if "schema_id" in shown:
        head.append(f"schema-id {shown['schema_id']}")
    if shown["headers"]:
        pairs = [(name, v) for name, value in shown["headers"].items()
                 for v in (value if isinstance(value, list) else [value])]
        head.append("headers " + " ".join(f"{_word(name, QUOTED_NAME)}={_word(v)}" for name, v in pairs))
    lines = [" ".join(head), "  " + _shown(shown["value"], shown["value_format"])]
    if "changelog" in shown:
        lines.append("  changelog: " + " ".join(f"{k}={v}" for k, v in shown["changelog"].items()))
    if "note" in shown:
        lines.append("  note: " + shown["note"])
    return "\n".join(lines) + "\n"


def _shown(value: Any, value_format: str | None) -> str:
    if value_format is None:
        return "(null)"
    if value_format in ("json", "avro"):
        return _dumps(value).decode()
    if value_format == "base64":
        return "base64:" + value
    return _escaped(value)


def _escaped(text: str) -> str:
    """Text on one line: control characters (a newline in a value) as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text.translate(_KEEP))


def _word(text: str, special: str = QUOTED) -> str:
    """Text as one word: quoted (as a JSON string) when empty, or with a character of ``special``
    or a control character in it."""
    if text and text.isprintable() and not any(c in text for c in special):
        return text
    return orjson.dumps(text).decode()


def _text_or_base64(data: bytes | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _headers(headers: list[tuple[str, bytes]]) -> dict[str, Any]:
    """{name: value} (text, or "base64:..." for binary); a repeated name keeps every value, in a list."""
    shown: dict[str, Any] = {}
    for name, raw in headers:
        text, text_format = _text_or_base64(raw)
        value = f"base64:{text}" if text_format == "base64" else text
        if name in shown:
            before = shown[name]
            shown[name] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            shown[name] = value
    return shown


def _iso(timestamp_ms: int) -> str | None:
    if timestamp_ms < 0:
        return None
    seconds, millis = divmod(timestamp_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _dlq_command() -> str:
    """``loginpipe dlq decrypt`` when run as ``loginpipe tail``, else the module's own name."""
    invoked = cli._invoked_as
    words = [*invoked.split()[:-1], "dlq"] if invoked else ["python", "-m", "loginpipe.dlq"]
    return " ".join([*words, "decrypt"])


if __name__ == "__main__":
    sys.exit(run_cli(main))
