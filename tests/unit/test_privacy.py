"""Privacy mode: masked addresses, keyed device tokens, sealed dead letters, and nothing raw in
any record built."""

from __future__ import annotations

import base64
import random

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from loginpipe import dlq
from loginpipe.cli import run_cli
from loginpipe.config import privacy_from_environment
from loginpipe.core import events
from loginpipe.core.addresses import mask_ip
from loginpipe.core.batch import LocalState as Aggregates
from loginpipe.core.batch import Topology, process_batch
from loginpipe.core.events import RawRecord, Rejection, parse_unguarded
from loginpipe.core.privacy import (
    ENVELOPE_MAGIC,
    SECRET_ENV,
    EnvelopeError,
    NotAnEnvelope,
    Privacy,
    SourcePosition,
)
from loginpipe.core.records import (
    DETAIL_HEADER,
    ENCRYPTED_HEADER,
    GENERIC_DETAILS,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    Routes,
    dead_letter,
)
from loginpipe.errors import UserError
from loginpipe.local.generator import EventGenerator

KEY = Privacy(b"0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize(("ip", "masked"), [
    ("199.172.111.135", "199.172.111.0"),
    ("10.0.0.1", "10.0.0.0"),
    ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3:8d3::"),
    ("2001:db8::1", "2001:db8::"),
    ("::1", "::"),
    ("::ffff:1.2.3.4", "::"),
])
def test_masked_ip(ip: str, masked: str) -> None:
    assert mask_ip(ip) == masked


def test_device_token_is_stable_keyed_and_not_a_plain_hash() -> None:
    import hashlib

    token = KEY.device_token("593-47-5928")
    assert token == KEY.device_token("593-47-5928") and len(token) == 32
    assert token != KEY.device_token("593-47-5929")
    assert token != Privacy(b"another-secret-of-32-bytes-long!").device_token("593-47-5928")
    assert token not in hashlib.sha256(b"593-47-5928").hexdigest()


def test_privacy_needs_a_long_enough_secret() -> None:
    with pytest.raises(UserError, match=SECRET_ENV):
        privacy_from_environment({})
    with pytest.raises(UserError, match="fewer than 16 bytes"):
        privacy_from_environment({SECRET_ENV: "short"})
    assert privacy_from_environment({SECRET_ENV: "x" * 16}).secret == b"x" * 16


def raw_values(values) -> set[str]:
    """Every ip and device_id found in the input (an IP ending in .0 is its own masked form)."""
    found = set()
    for value in values:
        try:
            event = orjson.loads(value)
        except (orjson.JSONDecodeError, TypeError):
            continue
        if isinstance(event, dict):
            ip, device_id = event.get("ip"), event.get("device_id")
            if isinstance(ip, str) and len(ip) >= 7 and not ip.endswith(".0"):
                found.add(ip)
            if isinstance(device_id, str) and len(device_id) >= 6:
                found.add(device_id)
    return found


def _record_bytes(output) -> bytes:
    headers = b"".join(name.encode() + value for name, value in output.headers or [])
    return (output.key or b"") + (output.value or b"") + headers


def test_no_raw_ip_or_device_id_in_any_record_built_in_privacy_mode() -> None:
    generated = list(EventGenerator(seed=11, users=300, bad_ratio=0.2).generate(3000))
    records = [RawRecord("in", 0, i, 0, g.key, g.value) for i, g in enumerate(generated)]
    topology = Topology(Routes("out", "dlq", "filtered", privacy=KEY))
    result = process_batch(records, Aggregates(), topology, 1.8e9)
    assert result.processed and result.filtered and result.dead_lettered
    secrets = raw_values(g.value for g in generated)
    blob = b"\n".join(_record_bytes(o) for o in result.outputs)
    leaked = [s for s in secrets if s.encode() in blob]
    assert len(secrets) > 300 and leaked == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=30)


@given(st.binary(max_size=300) | json_values.map(orjson.dumps)
       | st.dictionaries(st.sampled_from(["ip", "device_id", "user_id", "timestamp"]), json_values)
       .map(orjson.dumps))
def test_privacy_mode_never_raises_on_any_input(value: bytes) -> None:
    result = process_batch([RawRecord("in", 0, 0, 0, b"k", value)], Aggregates(),
                           Topology(Routes("out", "dlq", "filtered", privacy=KEY)), 1.8e9)
    assert result.consumed == result.processed + result.filtered + result.dead_lettered == 1


def test_a_secret_missing_for_the_dlq_command_names_the_command() -> None:
    with pytest.raises(UserError, match=r"^decrypting a dead letter needs a secret key"):
        privacy_from_environment({}, needed_by="decrypting a dead letter")


def seal_one(key: bytes | None, value: bytes | None, privacy: Privacy = KEY, offset: int = 42):
    """The dead letter privacy mode builds for one rejected input record."""
    source = RawRecord("user-login", 3, offset, 0, key, value)
    return dead_letter(Routes("out", "dlq", privacy=privacy), source,
                       Rejection(events.INVALID_IP, f"ip {str(value)[:30]} fails"))


_NOT_UTF8 = bytes(range(256)) * 2


@pytest.mark.parametrize(("key", "value"), [
    (None, None), (b"", b""), (None, b""), (b"", None), (b"k", None), (None, b"v"),
    (b"\xff\xfe1.2.3.4", _NOT_UTF8), (b"user-7", b'{"ip": "1.2.3.4"}'),
    (b"big", random.Random(5).randbytes(100_000)),
])
def test_a_sealed_dead_letter_gives_back_the_original_key_and_value(key, value) -> None:
    out = seal_one(key, value)
    headers = dict(out.headers)
    assert out.topic == "dlq" and out.value.startswith(ENVELOPE_MAGIC)
    assert out.key == (None if key is None else KEY.token(key))
    assert headers[ENCRYPTED_HEADER] == b"aes-256-gcm/v1" and headers[REASON_HEADER] == b"invalid_ip"
    assert headers[SOURCE_OFFSET_HEADER] == b"42"
    opened = KEY.open(out.value)
    assert (opened.key, opened.value) == (key, value)  # None stays None, b"" stays b""
    assert opened.source == SourcePosition("user-login", 3, 42)
    assert opened.detail.startswith("ip ") and b"fails" not in headers[DETAIL_HEADER]


def test_the_key_token_is_the_device_token_of_the_same_bytes() -> None:
    assert KEY.token(b"593-47-5928").decode() == KEY.device_token("593-47-5928")


def test_the_same_input_seals_differently_each_time() -> None:
    first, second = seal_one(b"k", b"same"), seal_one(b"k", b"same")
    assert first.value != second.value and first.key == second.key
    assert KEY.open(first.value).value == KEY.open(second.value).value == b"same"


def test_another_secret_cannot_open_an_envelope() -> None:
    envelope = seal_one(b"k", b'{"ip": "1.2.3.4"}').value
    with pytest.raises(EnvelopeError, match="cannot be decrypted"):
        Privacy(b"another-secret-of-32-bytes-long!").open(envelope)


def test_any_altered_byte_or_a_cut_is_detected() -> None:
    envelope = seal_one(b"k", b'{"ip": "1.2.3.4", "device_id": "dev-1"}').value
    for at in range(len(ENVELOPE_MAGIC), len(envelope)):  # the position, nonce, ciphertext and tag
        altered = bytearray(envelope)
        altered[at] ^= 0x01
        with pytest.raises(EnvelopeError):
            KEY.open(bytes(altered))
    for size in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            KEY.open(envelope[:size])


def test_an_envelope_is_bound_to_its_source_position() -> None:
    """The clear part names the input record; pointing it at another offset breaks the tag."""
    envelope = seal_one(b"k", b"v", offset=42).value
    moved = envelope.replace(b"\x00" * 7 + b"\x2a", b"\x00" * 7 + b"\x2b", 1)
    assert moved != envelope
    with pytest.raises(EnvelopeError, match="cannot be decrypted"):
        KEY.open(moved)


def test_bytes_that_are_not_an_envelope_say_so() -> None:
    for data in (b"", b'{"ip": "1.2.3.4"}', b"LPDL\x02later version"):
        with pytest.raises(NotAnEnvelope, match=r"^not a loginpipe dead-letter envelope"):
            KEY.open(data)


def test_the_decrypt_command_writes_the_original_bytes(tmp_path, monkeypatch, capsysbinary) -> None:
    path = tmp_path / "letter.bin"
    path.write_bytes(seal_one(b"\xffkey", _NOT_UTF8).value)
    monkeypatch.setenv(SECRET_ENV, KEY.secret.decode())
    assert dlq.main(["decrypt", "--file", str(path), "--show-key"]) == 0
    assert capsysbinary.readouterr() == (_NOT_UTF8, b"key: b'\\xffkey'\n")
    assert dlq.main(["decrypt", "--file", str(path), "--json"]) == 0
    shown = orjson.loads(capsysbinary.readouterr().out)
    assert base64.b64decode(shown["key"]) == b"\xffkey" and base64.b64decode(shown["value"]) == _NOT_UTF8
    assert shown["source"] == {"topic": "user-login", "partition": 3, "offset": 42}
    path.write_bytes(seal_one(None, None).value)
    assert dlq.main(["decrypt", "--file", str(path), "--json"]) == 0
    assert orjson.loads(capsysbinary.readouterr().out)["key"] is None


@pytest.mark.parametrize(("secret", "alter", "error"), [
    ("another-secret-of-32-bytes-long!", False, "cannot be decrypted with this $PRIVACY_SECRET "
                                                "(another secret, or the envelope was altered)"),
    ("0123456789abcdef0123456789abcdef", True, "cannot be decrypted with this $PRIVACY_SECRET "
                                               "(another secret, or the envelope was altered)"),
    ("", False, "needs a secret key: $PRIVACY_SECRET is not set"),
])
def test_the_decrypt_command_fails_in_one_line(tmp_path, monkeypatch, capsys, secret, alter, error) -> None:
    envelope = bytearray(seal_one(b"k", b"v").value)
    envelope[-1] ^= alter
    path = tmp_path / "letter.bin"
    path.write_bytes(bytes(envelope))
    monkeypatch.setenv(SECRET_ENV, secret)
    assert run_cli(lambda: dlq.main(["decrypt", "--file", str(path)])) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and error in err and err.count("\n") == 1


def test_the_decrypt_command_refuses_an_envelope_moved_to_another_dead_letter(monkeypatch, capsys) -> None:
    letter = seal_one(b"k", b"v", offset=42)
    moved_headers = {**dict(letter.headers), SOURCE_OFFSET_HEADER: b"43"}
    monkeypatch.setattr(dlq, "fetch", lambda *args: (letter.value, moved_headers))
    monkeypatch.setenv(SECRET_ENV, KEY.secret.decode())
    assert run_cli(lambda: dlq.main(["decrypt", "--partition", "0", "--offset", "9"])) == 1
    assert "sealed for user-login partition 3 offset 42, but its headers name user-login/3/43: it was moved" \
        in capsys.readouterr().err


def test_every_dead_letter_reason_has_a_generic_detail() -> None:
    assert set(GENERIC_DETAILS) == set(events.REASONS)


def test_filtered_events_are_keyed_by_user_id_in_privacy_mode() -> None:
    value = orjson.dumps({"user_id": "u-1", "app_version": "2.3.0", "device_type": "web", "ip": "5.6.7.8",
                          "locale": "TX", "device_id": "dev-9", "timestamp": 1.7e9})
    record = RawRecord("in", 0, 0, 0, b"5.6.7.8", value)
    [out] = process_batch([record], Aggregates(), Topology(Routes("out", "dlq", "filtered", privacy=KEY)),
                          1.8e9).outputs
    assert out.topic == "filtered" and out.key == b"u-1"
    assert b"5.6.7.8" not in out.value and b"dev-9" not in out.value


# Personal data as it may turn up in bad input: addresses and device ids, under any name, at any
# depth, in lists, in the key. At least 7 characters: a shorter string could turn up by chance
# in 100 bytes of ciphertext and fail the search below for no fault of the code.
_ips = (st.ip_addresses(v=4) | st.ip_addresses(v=6)).map(str).filter(lambda ip: len(ip) >= 7)
_device_ids = st.uuids().map(str) | st.from_regex(r"[0-9]{3}-[0-9]{2}-[0-9]{4}", fullmatch=True)
_names = st.sampled_from(["ip", "IP", "device_id", "deviceId", "client", "event", "events", "addr",
                          "user_id", "timestamp", "device-id", ""])


@st.composite
def personal_bad_records(draw) -> tuple[list[str], bytes | None, bytes | None]:
    """(the personal strings used, key, value) of a record the parser rejects."""
    personal = draw(st.lists(_ips | _device_ids, min_size=1, max_size=4, unique=True))
    leaves = (st.sampled_from(personal) | st.none() | st.booleans() | st.integers(-1000, 1000)
              | st.text(alphabet="abc.:-", max_size=6))
    shape = draw(st.recursive(leaves, lambda children: st.lists(children, max_size=4)
                              | st.dictionaries(_names, children, max_size=5), max_leaves=25))
    # An event that nearly passes: the parser's detail would quote its invalid ip (a device id).
    event = {"user_id": "u-1", "app_version": draw(st.sampled_from(["2.3.0", "2.3.0", "2.3"])),
             "device_type": "ios", "ip": draw(st.sampled_from(personal)), "locale": "TX",
             "device_id": draw(st.sampled_from(personal)),
             "timestamp": draw(st.sampled_from([1.7e9, -5, 9e9, "soon"])), "client": shape}
    text = orjson.dumps(draw(st.sampled_from([event, event, shape, [event, shape], {"event": event}])))
    value = draw(st.sampled_from([text, text, text, b"\xff" + text, text[:-1], None, personal[0].encode()]))
    key = draw(st.none() | st.just(b"") | st.sampled_from(personal).map(str.encode) | st.binary(max_size=12))
    return personal, key, value


@given(personal_bad_records())
def test_no_shape_of_bad_record_leaks_into_a_dead_letter(case) -> None:
    personal, key, value = case
    rejection = parse_unguarded(value, 1.8e9)
    assume(isinstance(rejection, Rejection))
    out = dead_letter(Routes("out", "dlq", privacy=KEY), RawRecord("in", 1, 7, 0, key, value), rejection)
    blob = b"\n".join([out.key or b"", out.value, *(n.encode() + v for n, v in out.headers)])
    assert [s for s in personal if s.encode() in blob] == []
    opened = KEY.open(out.value)
    assert (opened.key, opened.value, opened.detail) == (key, value, rejection.detail)
