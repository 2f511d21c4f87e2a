"""Operator command for dead letters written in privacy mode: decrypt one back to the input record.

    PRIVACY_SECRET=... python -m loginpipe.dlq decrypt --partition 0 --offset 42 > original.bin
    PRIVACY_SECRET=... python -m loginpipe.dlq decrypt --file envelope.bin --json

In privacy mode a dead letter's value is an envelope (``loginpipe/core/privacy.py``) holding the input
record's key and value, byte for byte, and the full rejection detail; only the holder of
$PRIVACY_SECRET can open it. By default the original value goes to stdout as raw bytes.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

import orjson

from loginpipe.cli import EnvArgumentParser, add_bootstrap_argument, connection_from_args, run_cli
from loginpipe.config import privacy_from_environment
from loginpipe.core.privacy import SECRET_ENV, EnvelopeError, NotAnEnvelope, Privacy, Sealed, SourcePosition
from loginpipe.core.records import (
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
)
from loginpipe.errors import UserError
from loginpipe.topics import DLQ_TOPIC

FETCH_TIMEOUT_S = 15.0


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="python -m loginpipe.dlq", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    decrypt = commands.add_parser(
        "decrypt", help="decrypt one dead letter written in privacy mode",
        description=f"Decrypt one dead letter written in privacy mode, with the secret in ${SECRET_ENV}: "
                    "read it from the dead-letter topic (--partition and --offset) or from a file "
                    "holding its value's raw bytes (--file). Writes the original value's bytes to "
                    "stdout (nothing for a null value).",
        epilog="--json prints {\"key\", \"value\", \"detail\", \"reason\", \"source\"} on one line, key "
               "and value base64-encoded (null when the input's was null). A wrong secret or an "
               "altered envelope is one line on stderr and exit 1.")
    add_bootstrap_argument(decrypt)
    add = decrypt.add_env_argument
    add("--topic", env="DLQ_TOPIC", default=DLQ_TOPIC, help="the dead-letter topic")
    add("--partition", env="DLQ_PARTITION", type=int, default=None, help="the dead letter's partition")
    add("--offset", env="DLQ_OFFSET", type=int, default=None, help="the dead letter's offset")
    add("--file", env="DLQ_FILE", type=Path, default=None,
        help="read the envelope from this file (a dead letter's value, raw bytes) instead of Kafka")
    output = decrypt.add_mutually_exclusive_group()
    output.add_argument("--show-key", action="store_true",
                        help="also write the original key to stderr, as a Python bytes literal")
    output.add_argument("--json", action="store_true",
                        help="print key, value (base64), detail, reason and source as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.file is not None and (args.partition is not None or args.offset is not None):
        raise UserError("decrypt: give either --file or --partition and --offset, not both")
    if args.file is None and (args.partition is None or args.offset is None):
        raise UserError("decrypt: give --partition and --offset of the dead letter (or --file)")
    privacy = privacy_from_environment(needed_by="decrypting a dead letter")
    sealed, reason = _from_file(privacy, args.file) if args.file else _from_kafka(privacy, args)
    _write(sealed, reason, args.json, args.show_key, sys.stdout.buffer, sys.stderr)
    return 0


def _from_file(privacy: Privacy, path: Path) -> tuple[Sealed, str | None]:
    """An envelope saved as raw bytes; its reason is not in it (a header carried it)."""
    return _open(privacy, _read_file(path), str(path)), None


def _from_kafka(privacy: Privacy, args: argparse.Namespace) -> tuple[Sealed, str | None]:
    """The dead letter at --partition/--offset of --topic, and its dlq-reason."""
    where = f"{args.topic} partition {args.partition} offset {args.offset}"
    envelope, headers = fetch(connection_from_args(args), args.topic, args.partition, args.offset)
    sealed = _open(privacy, envelope, where)
    _check_position(sealed.source, headers, where)
    return sealed, headers.get(REASON_HEADER, b"").decode("utf-8", "replace") or None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _open(privacy: Privacy, envelope: bytes | None, where: str) -> Sealed:
    """The envelope opened, or a one-line UserError saying why not."""
    if envelope is None:
        raise UserError(f"{where} has a null value: not an encrypted dead letter")
    try:
        return privacy.open(envelope)
    except NotAnEnvelope:
        raise UserError(f"{where} is not an encrypted dead letter (no LPDL v1 prefix; "
                        "written without --privacy?)") from None
    except EnvelopeError:
        raise UserError(f"{where} cannot be decrypted with this ${SECRET_ENV} "
                        "(another secret, or the envelope was altered)") from None


def _check_position(source: SourcePosition, headers: dict[str, bytes], where: str) -> None:
    """The envelope's authenticated source must be the one the record's headers name: an
    envelope copied onto another dead letter is refused, not decrypted under the wrong name."""
    named = (headers.get(SOURCE_TOPIC_HEADER, b"").decode("utf-8", "replace"),
             headers.get(SOURCE_PARTITION_HEADER, b"").decode("utf-8", "replace"),
             headers.get(SOURCE_OFFSET_HEADER, b"").decode("utf-8", "replace"))
    if named != (source.topic, str(source.partition), str(source.offset)):
        raise UserError(f"{where}: its envelope was sealed for {source.topic} partition {source.partition} "
                        f"offset {source.offset}, but its headers name {'/'.join(named)}: it was moved")


def fetch(bootstrap: str, topic: str, partition: int, offset: int) -> tuple[bytes | None, dict[str, bytes]]:
    """The value and headers of the one record at ``topic``/``partition``/``offset``."""
    # Imported here: kafka-python takes a while to import, and --file needs none of it.
    from loginpipe.kafka.admin import read_record

    record = read_record(bootstrap, topic, partition, offset, FETCH_TIMEOUT_S)
    return record.value, record.headers


def _write(sealed: Sealed, reason: str | None, as_json: bool, show_key: bool,
           out: BinaryIO, err: TextIO) -> None:
    if as_json:
        out.write(orjson.dumps({
            "key": _b64(sealed.key), "value": _b64(sealed.value), "detail": sealed.detail,
            "reason": reason, "source": {"topic": sealed.source.topic, "partition": sealed.source.partition,
                                         "offset": sealed.source.offset},
        }) + b"\n")
    else:
        if show_key:
            print(f"key: {sealed.key!r}", file=err)
        if sealed.value is None:
            print("(the value was null)", file=err)
        else:
            out.write(sealed.value)
    out.flush()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


if __name__ == "__main__":
    sys.exit(run_cli(main))
