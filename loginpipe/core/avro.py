"""The Confluent wire format and Avro bodies, pure (no registry, no Kafka).

A framed value is the magic byte 0, the writer's schema id as 4 big-endian bytes, then the
record's Avro binary encoding without any container header (what Confluent's serializers,
Apicurio's ccompat API and every Confluent-compatible tool read and write).

JSON and framed Avro can share a topic: ``looks_framed`` tells them apart by the first byte. JSON
text (RFC 8259: UTF-8) starts with ``{``, another value or whitespace, and may hold no raw control
character, so a value starting with byte 0 is never JSON.

The Avro contracts are ``schemas/*.avsc``, the twins of the JSON Schema files beside them.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro

MAGIC = 0
HEADER = struct.Struct(">BI")  # magic byte, schema id
MAX_SCHEMA_ID = 2**32 - 1
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
INPUT_SCHEMA = "login-event.v1.avsc"
OUTPUT_SCHEMA = "processed-login.v1.avsc"

ParsedSchema = dict[str, Any]  # what fastavro.parse_schema returns


class FrameError(ValueError):
    """A value that is not a complete Confluent frame (too short, or the wrong magic byte)."""


class EncodeError(ValueError):
    """A record that does not fit the schema it is written with."""


class DecodeError(ValueError):
    """An Avro body that does not decode with the schema it names (truncated, trailing or bad bytes)."""


def frame(schema_id: int, body: bytes) -> bytes:
    """``body`` framed for the wire with the id the registry gave its writer's schema."""
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} does not fit the 4 unsigned bytes of the wire format")
    return HEADER.pack(MAGIC, schema_id) + body


def unframe(value: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body) of a framed value; FrameError saying what is wrong otherwise."""
    if len(value) < HEADER.size:
        raise FrameError(f"truncated frame: {len(value)} bytes, but the magic byte and schema id "
                         f"alone take {HEADER.size}")
    magic, schema_id = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise FrameError(f"not a Confluent frame: first byte {magic:#04x}, not the magic byte {MAGIC:#04x}")
    return schema_id, bytes(value[HEADER.size:])


def looks_framed(value: bytes) -> bool:
    """True when ``value`` is meant as framed Avro rather than JSON (it may still be truncated)."""
    return len(value) > 0 and value[0] == MAGIC


def parse(schema: str | dict) -> ParsedSchema:
    """An Avro schema (its JSON text, as the registry returns it, or the loaded dict) for fastavro."""
    return fastavro.parse_schema(json.loads(schema) if isinstance(schema, str) else schema)


@functools.cache
def contract(name: str) -> ParsedSchema:
    """One of the project's own Avro contracts (INPUT_SCHEMA, OUTPUT_SCHEMA), parsed once."""
    return parse(contract_text(name))


def contract_text(name: str) -> str:
    """A contract's text, as it is registered."""
    return (SCHEMA_DIR / name).read_text()


def encode(schema: ParsedSchema, record: dict[str, Any]) -> bytes:
    """``record``'s Avro body; EncodeError when it does not fit ``schema``. Fields the schema lacks
    are refused too: dropping them quietly would lose data."""
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(out, schema, record, strict=True)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # fastavro says which field when it can: "an integer is required on field hour_of_day"
        raise EncodeError(f"record does not fit the schema: {exc}") from exc
    return out.getvalue()


def decode(schema: ParsedSchema, body: bytes) -> dict[str, Any]:
    """The record in ``body``, written with ``schema``; DecodeError when the bytes do not fit it."""
    source = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(source, schema)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError, OverflowError) as exc:
        # fastavro signals running out of bytes as EOFError or, inside a number, IndexError: having
        # read to the end is what tells a truncated body from a union or enum index out of range,
        # a negative length or text that is not UTF-8.
        if source.tell() >= len(body):
            raise DecodeError(f"truncated Avro body: the schema needs more than its {len(body)} bytes") \
                from exc
        raise DecodeError(f"Avro body does not fit the schema: {type(exc).__name__}: {exc}") from exc
    left = len(body) - source.tell()
    if left:
        # A record decodes from a prefix of these bytes: the writer used another schema.
        raise DecodeError(f"{left} bytes left over after the record: not written with this schema")
    if not isinstance(record, dict):
        raise DecodeError(f"the schema describes a {type(record).__name__}, not a record")
    return record
