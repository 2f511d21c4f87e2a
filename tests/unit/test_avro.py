"""The Confluent wire format and Avro bodies (loginpipe.core.avro), property-based."""

from __future__ import annotations

import json
import string

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loginpipe.core import avro

schema_ids = st.integers(0, avro.MAX_SCHEMA_ID)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
json_whitespace = st.text(alphabet=" \t\r\n", max_size=3)
SMALL = avro.parse({"type": "record", "name": "Small", "fields": [
    {"name": "name", "type": "string"},
    {"name": "count", "type": "long"},
    {"name": "note", "type": ["null", "string"], "default": None},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
]})
small_records = st.fixed_dictionaries({
    "name": st.text(), "count": st.integers(-(2**63), 2**63 - 1),
    "note": st.none() | st.text(), "tags": st.lists(st.text(max_size=5), max_size=3)})


@given(schema_ids, st.binary())
def test_frame_then_unframe_gives_back_the_id_and_body(schema_id: int, body: bytes) -> None:
    framed = avro.frame(schema_id, body)
    assert framed[0] == 0 and int.from_bytes(framed[1:5], "big") == schema_id
    assert avro.unframe(framed) == (schema_id, body)
    assert avro.looks_framed(framed)


@given(schema_ids, st.binary(max_size=8), st.data())
def test_a_frame_cut_inside_its_header_is_reported_as_truncated(schema_id: int, body: bytes,
                                                                 data: st.DataObject) -> None:
    framed = avro.frame(schema_id, body)
    cut = data.draw(st.integers(0, avro.HEADER.size - 1))
    with pytest.raises(avro.FrameError, match=f"truncated frame: {cut} bytes"):
        avro.unframe(framed[:cut])


@given(st.integers(1, 255), st.binary(min_size=4))
def test_a_wrong_magic_byte_is_named(first: int, rest: bytes) -> None:
    with pytest.raises(avro.FrameError, match=f"first byte {first:#04x}"):
        avro.unframe(bytes([first]) + rest)


@pytest.mark.parametrize("schema_id", [-1, avro.MAX_SCHEMA_ID + 1])
def test_an_id_beyond_four_unsigned_bytes_is_refused(schema_id: int) -> None:
    with pytest.raises(ValueError, match="4 unsigned bytes"):
        avro.frame(schema_id, b"")


@given(json_whitespace, json_values)
def test_json_is_never_taken_for_a_frame(padding: str, value: object) -> None:
    for text in (json.dumps(value), orjson.dumps(value).decode(), json.dumps(value, ensure_ascii=False)):
        assert not avro.looks_framed((padding + text).encode())


def test_an_empty_value_is_not_a_frame() -> None:
    assert not avro.looks_framed(b"")


@given(small_records)
def test_encode_then_decode_gives_back_the_record(record: dict) -> None:
    assert avro.decode(SMALL, avro.encode(SMALL, record)) == record


@given(small_records, st.data())
def test_every_truncated_body_fails_to_decode(record: dict, data: st.DataObject) -> None:
    body = avro.encode(SMALL, record)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(avro.DecodeError, match="truncated Avro body"):
        avro.decode(SMALL, body[:cut])


@given(small_records, st.binary(min_size=1, max_size=4))
def test_bytes_after_the_record_are_refused(record: dict, extra: bytes) -> None:
    with pytest.raises(avro.DecodeError, match=f"{len(extra)} bytes left over"):
        avro.decode(SMALL, avro.encode(SMALL, record) + extra)


@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_or_raise_decode_error_only(body: bytes) -> None:
    # Any other exception would escape a consumer's dead-letter path.
    try:
        record = avro.decode(SMALL, body)
    except avro.DecodeError:
        return
    assert set(record) == {"name", "count", "note", "tags"}


@pytest.mark.parametrize(("change", "message"), [
    ({"count": "7"}, "count"),
    ({"extra": 1}, "extra"),
    ({"tags": [1]}, "record does not fit"),
])
def test_a_record_that_breaks_the_schema_is_refused(change: dict, message: str) -> None:
    record = {"name": "a", "count": 1, "note": None, "tags": [], **change}
    with pytest.raises(avro.EncodeError, match=message):
        avro.encode(SMALL, record)


def test_a_missing_field_is_refused() -> None:
    with pytest.raises(avro.EncodeError):
        avro.encode(SMALL, {"name": "a", "note": None, "tags": []})


@given(st.text(alphabet=string.printable, max_size=20))
def test_text_is_utf8_on_the_wire(text: str) -> None:
    body = avro.encode(SMALL, {"name": text, "count": 0, "note": None, "tags": []})
    assert text.encode() in body
