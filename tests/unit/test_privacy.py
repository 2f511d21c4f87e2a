"""Privacy mode: masked addresses, keyed device tokens, and nothing raw in any record built."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loginpipe.addresses import mask_ip
from loginpipe.errors import UserError
from loginpipe.events import RawRecord
from loginpipe.generator import EventGenerator
from loginpipe.pipeline import Topology, process_batch
from loginpipe.privacy import SECRET_ENV, Privacy
from loginpipe.route import Routes
from loginpipe.state import Aggregates

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
        Privacy.from_environment({})
    with pytest.raises(UserError, match="fewer than 16 bytes"):
        Privacy.from_environment({SECRET_ENV: "short"})
    assert Privacy.from_environment({SECRET_ENV: "x" * 16}).secret == b"x" * 16


def test_redaction_of_dead_letters() -> None:
    value = b'{"ip": "1.2.3.4", "device_id": "dev-1", "timestamp": "x"}'
    redacted = orjson.loads(KEY.redact_value(value))
    assert redacted == {"ip": "1.2.3.0", "device_id": KEY.device_token("dev-1"), "timestamp": "x"}
    assert orjson.loads(KEY.redact_value(b'{"ip": "not-an-ip", "device_id": 7}')) == {
        "ip": "<redacted>", "device_id": "<redacted>"}
    assert KEY.redact_value(b'{"ip": "1.2.3.4", "trunc') is None
    assert KEY.redact_value(b"\xff1.2.3.4") is None
    assert KEY.redact_text("ip '1.2.3' fails the schema's format rule") == \
        "ip '<redacted>' fails the schema's format rule"


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


def test_a_value_too_deep_to_write_back_is_dead_lettered_empty() -> None:
    deep = b'{"ip": "1.2.3.4", "a": ' + b"[" * 300 + b"]" * 300 + b"}"
    [out] = process_batch([RawRecord("in", 0, 0, 0, b"k", deep)], Aggregates(),
                          Topology(Routes("out", "dlq", privacy=KEY)), 1.8e9).outputs
    assert out.topic == "dlq" and out.value is None
    assert dict(out.headers)["dlq-redacted"] == b"true"


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
